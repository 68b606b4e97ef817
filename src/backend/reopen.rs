//! A backend file whose descriptor can be closed while nobody has the file open, and is
//! opened again on its next use.
//!
//! The daemon holds one `O_PATH` fd per inode the kernel remembers; keeping a read-write
//! fd as well for every file ever opened doubles that. A daemon held to 20,000 fds (root
//! in a container without CAP_SYS_RESOURCE cannot raise its hard limit) failed with
//! EMFILE creating 10,000 files that stayed cached. Parking keeps the fd of files in use
//! (no extra open per open for a working set) and closes idle ones past a budget.

use super::{BackendFile, Whence};
use parking_lot::{RwLock, RwLockWriteGuard};
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Opens the backend file again (a reopen of the inode's `O_PATH` fd).
pub type Opener = Box<dyn Fn() -> io::Result<Box<dyn BackendFile>> + Send + Sync>;

/// See the module docs.
pub struct Reopening {
    inner: RwLock<Option<Box<dyn BackendFile>>>,
    open: Opener,
    /// Descriptors open through every `Reopening` sharing it.
    live: Arc<AtomicU64>,
}

impl std::fmt::Debug for Reopening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopening")
            .field("parked", &self.is_parked())
            .finish()
    }
}

impl Reopening {
    /// `first` is the file already open; `open` opens it again after a park; `live`
    /// counts open descriptors.
    pub fn new(first: Box<dyn BackendFile>, open: Opener, live: Arc<AtomicU64>) -> Self {
        live.fetch_add(1, Relaxed);
        Self {
            inner: RwLock::new(Some(first)),
            open,
            live,
        }
    }

    /// Closes the descriptor; the next call opens it again. `true` if one was open.
    pub fn park(&self) -> bool {
        let closed = self.inner.write().take();
        if closed.is_some() {
            self.live.fetch_sub(1, Relaxed);
        }
        closed.is_some()
    }

    /// No descriptor is open.
    pub fn is_parked(&self) -> bool {
        self.inner.read().is_none()
    }

    fn with<R>(&self, f: impl FnOnce(&dyn BackendFile) -> io::Result<R>) -> io::Result<R> {
        {
            let g = self.inner.read();
            if let Some(b) = g.as_deref() {
                return f(b);
            }
        }
        let mut g = self.inner.write();
        if g.is_none() {
            *g = Some((self.open)()?);
            self.live.fetch_add(1, Relaxed);
        }
        let g = RwLockWriteGuard::downgrade(g);
        f(g.as_deref().expect("opened above"))
    }
}

impl Drop for Reopening {
    fn drop(&mut self) {
        if self.inner.get_mut().is_some() {
            self.live.fetch_sub(1, Relaxed);
        }
    }
}

impl BackendFile for Reopening {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.with(|b| b.read_at(buf, off))
    }
    fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
        self.with(|b| b.write_all_at(bufs, off))
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        self.with(|b| b.punch_hole(off, len))
    }
    fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        self.with(|b| b.allocate(mode, off, len))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|b| b.set_len(len))
    }
    fn sync(&self, datasync: bool) -> io::Result<()> {
        self.with(|b| b.sync(datasync))
    }
    fn size(&self) -> io::Result<u64> {
        self.with(|b| b.size())
    }
    fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>> {
        self.with(|b| b.seek(off, whence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::mem::MemFile;

    #[test]
    fn a_parked_file_opens_again_on_its_next_call_and_keeps_its_bytes() {
        let file = Arc::new(MemFile::new());
        let opens = Arc::new(AtomicU64::new(0));
        let live = Arc::new(AtomicU64::new(0));
        let (f2, o2) = (file.clone(), opens.clone());
        let r = Reopening::new(
            Box::new(file.clone()),
            Box::new(move || {
                o2.fetch_add(1, Relaxed);
                Ok(Box::new(f2.clone()))
            }),
            live.clone(),
        );
        r.write_all_at(&[IoSlice::new(b"abc")], 10).unwrap();
        assert_eq!(live.load(Relaxed), 1);
        assert!(r.park());
        assert!(!r.park(), "parked twice");
        assert_eq!(live.load(Relaxed), 0);
        assert!(r.is_parked());
        let mut buf = [0u8; 3];
        assert_eq!(r.read_at(&mut buf, 10).unwrap(), 3);
        assert_eq!(&buf, b"abc");
        assert_eq!(r.size().unwrap(), 13);
        assert_eq!(opens.load(Relaxed), 1, "one reopen for both calls");
        assert_eq!(live.load(Relaxed), 1);
        drop(r);
        assert_eq!(live.load(Relaxed), 0);
    }

    #[test]
    fn a_failed_reopen_is_the_callers_error_and_the_next_call_tries_again() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f2 = fail.clone();
        let live = Arc::new(AtomicU64::new(0));
        let r = Reopening::new(
            Box::new(MemFile::new()),
            Box::new(move || {
                if f2.load(Relaxed) {
                    Err(io::Error::from_raw_os_error(libc::EMFILE))
                } else {
                    Ok(Box::new(MemFile::new()))
                }
            }),
            live.clone(),
        );
        r.park();
        assert_eq!(r.size().unwrap_err().raw_os_error(), Some(libc::EMFILE));
        assert_eq!(live.load(Relaxed), 0);
        fail.store(false, Relaxed);
        assert_eq!(r.size().unwrap(), 0);
        assert_eq!(live.load(Relaxed), 1);
    }
}
