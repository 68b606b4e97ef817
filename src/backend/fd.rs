//! The real backend: positional syscalls on an open file descriptor (through the `sys`
//! wrappers; no `unsafe` here), retried on EINTR and continued when short.
#![forbid(unsafe_code)]

use super::{BackendFile, Whence};
use crate::sys;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsFd;

/// A backing file opened read-write (or read-only for files the daemon cannot write).
pub struct FdFile {
    file: File,
    /// Rank `DirectFd`, a leaf held only to clone or swap: the `O_DIRECT` descriptor of
    /// the window writes in flight ([`BackendFile::write_direct_at`]), opened at the
    /// first and closed by [`BackendFile::release_direct`] once they are done (one
    /// descriptor for a whole stream: opens and closes of it between the writes made
    /// sharded GlusterFS fail writes with ENOENT/ENODATA now and then).
    direct: crate::lock::Mutex<Option<std::sync::Arc<std::os::fd::OwnedFd>>>,
    #[cfg(test)]
    chaos: Option<std::sync::Arc<Chaos>>,
}

impl std::fmt::Debug for FdFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdFile").field("file", &self.file).finish()
    }
}

/// Injected syscall misbehaviour, for the engine's unit tests: every `eintr_every`-th
/// syscall fails with EINTR before reaching the kernel, and every `short_every`-th read or
/// write moves only part of its bytes (as NFS, FUSE and network clients may). The retry
/// loops must hide both from the engine. Not in production builds.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Chaos {
    /// Period of injected EINTR (0: never).
    pub eintr_every: u64,
    /// Period of injected short reads/writes (0: never).
    pub short_every: u64,
    calls: std::sync::atomic::AtomicU64,
    /// EINTRs injected so far.
    pub eintrs: std::sync::atomic::AtomicU64,
    /// Short transfers injected so far.
    pub shorts: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl Chaos {
    /// Chaos with the given periods.
    pub fn new(eintr_every: u64, short_every: u64) -> Self {
        Self {
            eintr_every,
            short_every,
            ..Self::default()
        }
    }

    /// Syscalls seen so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn tick(&self) -> (bool, bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.calls.fetch_add(1, Relaxed) + 1;
        let eintr = self.eintr_every > 0 && n.is_multiple_of(self.eintr_every);
        let short = !eintr && self.short_every > 0 && n.is_multiple_of(self.short_every);
        if eintr {
            self.eintrs.fetch_add(1, Relaxed);
        }
        if short {
            self.shorts.fetch_add(1, Relaxed);
        }
        (eintr, short)
    }
}

impl FdFile {
    /// Wraps an open file.
    pub fn new(file: File) -> Self {
        Self {
            file,
            direct: crate::lock::Mutex::new(crate::lock::Rank::DirectFd, None),
            #[cfg(test)]
            chaos: None,
        }
    }

    /// Wraps an open file whose syscalls misbehave as `chaos` says (tests).
    #[cfg(test)]
    pub fn with_chaos(file: File, chaos: std::sync::Arc<Chaos>) -> Self {
        Self {
            file,
            direct: crate::lock::Mutex::new(crate::lock::Rank::DirectFd, None),
            chaos: Some(chaos),
        }
    }

    /// The injected misbehaviour, if any.
    #[cfg(test)]
    pub fn chaos(&self) -> Option<&Chaos> {
        self.chaos.as_deref()
    }

    /// (inject EINTR, inject a short transfer) for the next syscall.
    #[cfg(test)]
    fn tick(&self) -> (bool, bool) {
        self.chaos.as_deref().map_or((false, false), Chaos::tick)
    }

    #[cfg(not(test))]
    fn tick(&self) -> (bool, bool) {
        (false, false)
    }

    /// Runs one syscall attempt until it is not interrupted (network filesystems return
    /// EINTR when a signal arrives during a call). `f(short)`: `short` asks a test to
    /// move only part of the bytes.
    fn retry<T>(&self, mut f: impl FnMut(bool) -> io::Result<T>) -> io::Result<T> {
        loop {
            let (eintr, short) = self.tick();
            if eintr {
                continue;
            }
            match f(short) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

impl BackendFile for FdFile {
    fn close(self: Box<Self>) -> io::Result<()> {
        sys::close(self.file.into())
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let _io = crate::lock::io("pread");
        let fd = self.file.as_fd();
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let n = self.retry(|short| {
                let len = if short {
                    rest.len().div_ceil(2)
                } else {
                    rest.len()
                };
                sys::pread_once(fd, &mut rest[..len], off + done as u64)
            })?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
        let _io = crate::lock::io("pwrite");
        let mut bufs: Vec<&[u8]> = bufs
            .iter()
            .map(|b| &**b)
            .filter(|b| !b.is_empty())
            .collect();
        let mut off = off;
        let fd = self.file.as_fd();
        while !bufs.is_empty() {
            let iov: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            let n = self.retry(|short| {
                if short {
                    // Half of the first buffer only, as a short write would.
                    let half = IoSlice::new(&bufs[0][..bufs[0].len().div_ceil(2)]);
                    return sys::pwritev_once(fd, &[half], off);
                }
                sys::pwritev_once(fd, &iov, off)
            })?;
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            off += n as u64;
            let mut left = n;
            while left > 0 {
                if bufs[0].len() <= left {
                    left -= bufs[0].len();
                    bufs.remove(0);
                } else {
                    bufs[0] = &bufs[0][left..];
                    left = 0;
                }
            }
        }
        Ok(())
    }

    fn write_direct_at(&self, buf: &[u8], off: u64) -> io::Result<bool> {
        let _io = crate::lock::io("pwrite O_DIRECT");
        let held = self.direct.lock().clone();
        let dfd = match held {
            Some(fd) => fd,
            None => {
                let fd = match sys::reopen(self.file.as_fd(), libc::O_WRONLY | libc::O_DIRECT) {
                    Ok(fd) => std::sync::Arc::new(fd),
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EINVAL | libc::EACCES | libc::EPERM | libc::EOPNOTSUPP)
                        ) =>
                    {
                        return Ok(false);
                    }
                    Err(e) => return Err(e),
                };
                // Another writer may have opened one meanwhile: keep one (the spare
                // closes when dropped here, unlocked).
                let mut slot = self.direct.lock();
                let kept = slot.get_or_insert_with(|| fd.clone()).clone();
                drop(slot);
                kept
            }
        };
        let mut done = 0usize;
        while done < buf.len() {
            let r = self.retry(|_| {
                sys::pwritev_once(
                    dfd.as_fd(),
                    &[IoSlice::new(&buf[done..])],
                    off + done as u64,
                )
            });
            let n = match r {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
                Ok(n) => n,
                // Refused (an alignment the backend wants larger): the ordinary way.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && done == 0 => return Ok(false),
                Err(e) => return Err(e),
            };
            done += n;
            if done < buf.len() && !done.is_multiple_of(4096) {
                // A short write left an unaligned rest: the ordinary way.
                self.write_all_at(&[IoSlice::new(&buf[done..])], off + done as u64)?;
                break;
            }
        }
        Ok(true)
    }

    fn release_direct(&self) {
        let fd = self.direct.lock().take();
        drop(fd);
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        let _io = crate::lock::io("punch");
        self.allocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    }

    fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        let _io = crate::lock::io("fallocate");
        let fd = self.file.as_fd();
        self.retry(|_| sys::fallocate_once(fd, mode, off, len))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let _io = crate::lock::io("ftruncate");
        let fd = self.file.as_fd();
        self.retry(|_| sys::ftruncate_once(fd, len))
    }

    fn sync(&self, datasync: bool) -> io::Result<()> {
        let _io = crate::lock::io("fsync");
        let fd = self.file.as_fd();
        self.retry(|_| sys::fsync_once(fd, datasync))
    }

    fn size(&self) -> io::Result<u64> {
        // Fresh from the backend, not a client's attribute cache: the engine takes the
        // size only when it starts over (first open, a file changed elsewhere).
        Ok(sys::fstat_fresh(self.file.as_fd())?.st_size as u64)
    }

    fn identity(&self) -> io::Result<(u64, u64)> {
        let st = sys::fstat_fresh(self.file.as_fd())?;
        Ok((st.st_dev, st.st_ino))
    }

    fn allocated(&self) -> io::Result<Option<u64>> {
        let st = sys::fstat_fresh(self.file.as_fd())?;
        Ok(Some(st.st_blocks as u64 * 512))
    }

    fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>> {
        let _io = crate::lock::io("lseek");
        let w = match whence {
            Whence::Data => libc::SEEK_DATA,
            Whence::Hole => libc::SEEK_HOLE,
        };
        // The offset is positional for this answer only (no other user of this fd
        // relies on its file offset).
        use std::os::fd::AsRawFd;
        match sys::lseek(self.file.as_raw_fd(), off as i64, w) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
