//! The real backend: positional syscalls on an open file descriptor. The only module of
//! the data path with `unsafe`.

use super::{BackendFile, Whence};
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// A backing file opened read-write (or read-only for files the daemon cannot write).
#[derive(Debug)]
pub struct FdFile {
    file: File,
}

impl FdFile {
    /// Wraps an open file.
    pub fn new(file: File) -> Self {
        Self { file }
    }
}

fn retry<T>(mut f: impl FnMut() -> isize, map: impl Fn(isize) -> T) -> io::Result<T> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(map(r));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl BackendFile for FdFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
        let mut bufs: Vec<&[u8]> = bufs
            .iter()
            .map(|b| &**b)
            .filter(|b| !b.is_empty())
            .collect();
        let mut off = off;
        while !bufs.is_empty() {
            let iov: Vec<libc::iovec> = bufs
                .iter()
                .take(libc::UIO_MAXIOV as usize)
                .map(|b| libc::iovec {
                    iov_base: b.as_ptr() as *mut _,
                    iov_len: b.len(),
                })
                .collect();
            let fd = self.file.as_raw_fd();
            let n = retry(
                // SAFETY: iov points at live slices borrowed for the duration of the call.
                || unsafe { libc::pwritev(fd, iov.as_ptr(), iov.len() as i32, off as i64) },
                |n| n as usize,
            )?;
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

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        self.allocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    }

    fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        retry(
            // SAFETY: plain syscall on an fd we own.
            || unsafe { libc::fallocate(fd, mode, off as i64, len as i64) } as isize,
            |_| (),
        )
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync(&self, datasync: bool) -> io::Result<()> {
        if datasync {
            self.file.sync_data()
        } else {
            self.file.sync_all()
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>> {
        let w = match whence {
            Whence::Data => libc::SEEK_DATA,
            Whence::Hole => libc::SEEK_HOLE,
        };
        let fd = self.file.as_raw_fd();
        // SAFETY: plain syscall on an fd we own; the offset is positional for this answer
        // only (no other user of this fd relies on its file offset).
        let r = unsafe { libc::lseek(fd, off as i64, w) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}
