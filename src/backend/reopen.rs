//! A backend file whose descriptor can be closed and is opened again on its next use.
//!
//! Every read-write fd of a regular file is one: it is closed at the file's last close
//! (the daemon holds a backend file only while it needs it) and by the [`FdPool`] past
//! its mark while the file is open but idle, and opened again (from the inode) on the
//! next call. A file unlinked through the mount while open is pinned: nothing could open
//! it again.

use super::{BackendFile, Whence};
use crate::fdpool::{Evict, FdPool, Slot};
use crate::lock::{Mutex, Rank};
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

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
    /// The pool the descriptor is counted in (`None`: not pooled, tests).
    pool: Option<Arc<FdPool>>,
    me: Weak<Reopening>,
    /// Used since the pool's last sweep passed.
    used: AtomicBool,
    /// Never closed by the pool (unlinked through the mount while open).
    pinned: AtomicBool,
    /// The errno a close of a parked descriptor reported (0: none), answered to the next
    /// call: NFS reports write-back errors at close, and a file the pool closed while its
    /// application still has it open must not lose one.
    deferred: Arc<AtomicI32>,
}

/// One open descriptor, counted in `live` (and the pool) until dropped, when it is
/// closed and what the close reported is kept in `deferred`.
struct Open {
    file: Option<Box<dyn BackendFile>>,
    live: Arc<AtomicU64>,
    deferred: Arc<AtomicI32>,
    _slot: Option<Slot>,
}

impl Open {
    fn file(&self) -> &dyn BackendFile {
        self.file.as_deref().expect("open until dropped")
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(f) = self.file.take()
            && let Err(e) = f.close()
        {
            tracing::warn!(error = %e, "the backend reported an error at close: answered to the file's next call");
            self.deferred
                .store(e.raw_os_error().unwrap_or(libc::EIO), Relaxed);
        }
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

impl Evict for Reopening {
    fn evict(&self) -> bool {
        !self.pinned.load(Relaxed) && self.park()
    }

    fn take_used(&self) -> bool {
        self.used.swap(false, Relaxed)
    }
}

impl Reopening {
    /// `first` is the file already open; `open` opens it again after a park; `live`
    /// counts open descriptors; `pool`, if any, may close it while idle.
    pub fn new(
        first: Box<dyn BackendFile>,
        open: Opener,
        live: Arc<AtomicU64>,
        pool: Option<Arc<FdPool>>,
    ) -> Arc<Self> {
        let this = Arc::new_cyclic(|me| Self {
            inner: Mutex::new(Rank::BackendFd, None),
            open,
            live,
            pool,
            me: me.clone(),
            used: AtomicBool::new(true),
            pinned: AtomicBool::new(false),
            deferred: Arc::new(AtomicI32::new(0)),
        });
        // Counted once it exists (a sweep may look at it at once).
        let first = this.counted(first);
        *this.inner.lock() = Some(first);
        this
    }

    /// `file` with its place in the counts.
    fn counted(&self, file: Box<dyn BackendFile>) -> Arc<Open> {
        self.used.store(true, Relaxed);
        self.live.fetch_add(1, Relaxed);
        let slot = self.pool.as_ref().map(|p| {
            let me: Weak<dyn Evict> = self.me.clone();
            p.opened(me)
        });
        Arc::new(Open {
            file: Some(file),
            live: self.live.clone(),
            deferred: self.deferred.clone(),
            _slot: slot,
        })
    }

    /// Closes the descriptor (once no call is using it); the next call opens it again.
    /// `true` if one was open.
    pub fn park(&self) -> bool {
        let closed = self.inner.lock().take();
        closed.is_some()
    }

    /// Keeps the descriptor open until the node goes (the pool may not close it): the
    /// file was unlinked through the mount while open. Opens it first if parked.
    ///
    /// # Errors
    /// The reopen's.
    pub fn pin(&self) -> io::Result<()> {
        self.pinned.store(true, Relaxed);
        self.ensure_open()
    }

    /// No descriptor is open.
    pub fn is_parked(&self) -> bool {
        self.inner.lock().is_none()
    }

    /// Opens the descriptor now if it is parked: an application's open opens the backend
    /// file then, not at its first read or write, so that the file stays held (and
    /// readable) if its name is removed while it is open, and a backend with its own
    /// cache revalidates it at the open (close-to-open).
    ///
    /// # Errors
    /// The reopen's (`ENOENT` if the file is gone).
    pub fn ensure_open(&self) -> io::Result<()> {
        self.with(|_| Ok(()))
    }

    /// [`BackendFile::identity`] of the open descriptor; `None` while parked (no open).
    pub fn open_identity(&self) -> Option<io::Result<(u64, u64)>> {
        let cur = self.inner.lock().clone();
        cur.map(|o| o.file().identity())
    }

    /// Takes the error a close reported since the last call, if any.
    pub fn take_deferred(&self) -> io::Result<()> {
        match self.deferred.swap(0, Relaxed) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&dyn BackendFile) -> io::Result<R>) -> io::Result<R> {
        self.take_deferred()?;
        self.used.store(true, Relaxed);
        let cur = self.inner.lock().clone();
        let open = match cur {
            Some(o) => o,
            None => {
                let fresh = self.counted((self.open)()?);
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
        f(open.file())
    }
}

impl BackendFile for Reopening {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.with(|b| b.read_at(buf, off))
    }
    fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
        self.with(|b| b.write_all_at(bufs, off))
    }
    fn write_direct_at(&self, buf: &[u8], off: u64) -> io::Result<bool> {
        self.with(|b| b.write_direct_at(buf, off))
    }
    fn release_direct(&self) {
        // Parked: nothing open, nothing to release.
        let cur = self.inner.lock().clone();
        if let Some(o) = cur {
            o.file().release_direct();
        }
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
            None,
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

    /// A file whose close reports ENOSPC (NFS reports write-back errors at close).
    struct FailsAtClose(Arc<MemFile>);

    impl BackendFile for FailsAtClose {
        fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
            self.0.read_at(buf, off)
        }
        fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
            self.0.write_all_at(bufs, off)
        }
        fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
            self.0.punch_hole(off, len)
        }
        fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
            self.0.allocate(mode, off, len)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.set_len(len)
        }
        fn sync(&self, datasync: bool) -> io::Result<()> {
            self.0.sync(datasync)
        }
        fn size(&self) -> io::Result<u64> {
            self.0.size()
        }
        fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>> {
            self.0.seek(off, whence)
        }
        fn close(self: Box<Self>) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
    }

    #[test]
    fn an_error_a_close_reports_is_answered_to_the_next_call_once() {
        let file = Arc::new(MemFile::new());
        let f2 = file.clone();
        let r = Reopening::new(
            Box::new(FailsAtClose(file.clone())),
            Box::new(move || Ok(Box::new(FailsAtClose(f2.clone())))),
            Arc::new(AtomicU64::new(0)),
            None,
        );
        r.write_all_at(&[IoSlice::new(b"abc")], 0).unwrap();
        assert!(r.evict(), "the pool closes the idle descriptor");
        let e = r.sync(false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "fsync hears of it");
        r.sync(false).unwrap();
        assert_eq!(r.size().unwrap(), 3);
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
            None,
        );
        r.park();
        assert_eq!(r.size().unwrap_err().raw_os_error(), Some(libc::EMFILE));
        assert_eq!(live.load(Relaxed), 0);
        fail.store(false, Relaxed);
        assert_eq!(r.size().unwrap(), 0);
        assert_eq!(live.load(Relaxed), 1);
    }
}
