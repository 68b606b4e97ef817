//! A backend file whose descriptor can be closed while nobody has the file open, and is
//! opened again on its next use.
//!
//! The daemon holds one `O_PATH` fd per inode the kernel remembers; keeping a read-write
//! fd as well for every file ever opened doubles that. A daemon held to 20,000 fds (root
//! in a container without CAP_SYS_RESOURCE cannot raise its hard limit) failed with
//! EMFILE creating 10,000 files that stayed cached. Parking keeps the fd of files in use
//! (no extra open per open for a working set) and closes idle ones past a budget.

use super::{BackendFile, Whence};
use crate::lock::{Mutex, Rank};
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Opens the backend file again (a reopen of the inode's `O_PATH` fd).
pub type Opener = Box<dyn Fn() -> io::Result<Box<dyn BackendFile>> + Send + Sync>;

/// See the module docs.
pub struct Reopening {
    /// Rank `BackendFd`, a leaf: the slot is only swapped under it; calls run on a clone
    /// of the file taken out of it, opens and closes happen outside it (a parked file's
    /// descriptor closes when the last call using it ends).
    inner: Mutex<Option<Arc<Open>>>,
    open: Opener,
    /// Descriptors open through every `Reopening` sharing it.
    live: Arc<AtomicU64>,
}

/// One open descriptor, counted in `live` until dropped.
struct Open {
    file: Box<dyn BackendFile>,
    live: Arc<AtomicU64>,
}

impl Open {
    fn new(file: Box<dyn BackendFile>, live: &Arc<AtomicU64>) -> Arc<Self> {
        live.fetch_add(1, Relaxed);
        Arc::new(Self {
            file,
            live: live.clone(),
        })
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Relaxed);
    }
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
        Self {
            inner: Mutex::new(Rank::BackendFd, Some(Open::new(first, &live))),
            open,
            live,
        }
    }

    /// Closes the descriptor (once no call is using it); the next call opens it again.
    /// `true` if one was open.
    pub fn park(&self) -> bool {
        let closed = self.inner.lock().take();
        closed.is_some()
    }

    /// No descriptor is open.
    pub fn is_parked(&self) -> bool {
        self.inner.lock().is_none()
    }

    /// [`BackendFile::identity`] of the open descriptor; `None` while parked (no open).
    pub fn open_identity(&self) -> Option<io::Result<(u64, u64)>> {
        let cur = self.inner.lock().clone();
        cur.map(|o| o.file.identity())
    }

    fn with<R>(&self, f: impl FnOnce(&dyn BackendFile) -> io::Result<R>) -> io::Result<R> {
        let cur = self.inner.lock().clone();
        let open = match cur {
            Some(o) => o,
            None => {
                let fresh = Open::new((self.open)()?, &self.live);
                // Another caller may have reopened meanwhile: keep one (the other closes
                // when dropped here, unlocked).
                let mut slot = self.inner.lock();
                let (kept, spare) = match &*slot {
                    Some(o) => (o.clone(), Some(fresh)),
                    None => {
                        *slot = Some(fresh.clone());
                        (fresh, None)
                    }
                };
                drop(slot);
                drop(spare);
                kept
            }
        };
        f(&*open.file)
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
    fn identity(&self) -> io::Result<(u64, u64)> {
        self.with(|b| b.identity())
    }
    fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>> {
        self.with(|b| b.seek(off, whence))
    }
    fn allocated(&self) -> io::Result<Option<u64>> {
        self.with(|b| b.allocated())
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
