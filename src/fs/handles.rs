//! The open-handle table: what each handle the kernel holds refers to.

use super::*;
use std::sync::atomic::AtomicUsize;

/// An open handle.
pub(super) enum Handle {
    File {
        inode: Arc<Inode>,
        node: Arc<FileNode>,
        flags: i32,
        /// A kernel passthrough handle.
        pt: bool,
    },
    Dir {
        inode: Arc<Inode>,
        /// The directory's stamp at opendir.
        stamp: crate::inodes::Stamp,
        /// The kernel was asked to cache the listing.
        cache: bool,
        /// The listing, read as the kernel asks for it (not at all when the kernel
        /// answers from its cache). Rank `DirSnapshot`, held across the backend listing.
        entries: Arc<Mutex<Listing>>,
    },
}

/// A directory handle's listing: the entries read so far, in order (their indices are
/// the offsets the kernel is given, stable for the handle's life), and the backend
/// directory open for reading until its end is reached.
#[derive(Default)]
pub(crate) struct Listing {
    pub(super) snap: Arc<DirSnapshot>,
    pub(super) dir: Option<ListingFd>,
    pub(super) started: bool,
    pub(super) done: bool,
}

/// Listings of the process holding their backend directory open between requests.
static LISTINGS_OPEN: AtomicUsize = AtomicUsize::new(0);

/// At most this many listings hold a backend fd between requests (a listing started past
/// it is read whole at once, as a reader that opens many directories and reads none to
/// its end must not run the daemon out of fds).
pub(super) const MAX_OPEN_LISTINGS: usize = 64;

/// The backend fd of a listing in progress (counted in [`LISTINGS_OPEN`]).
pub(crate) struct ListingFd(std::os::fd::OwnedFd);

impl ListingFd {
    /// `fd`, counted; past [`MAX_OPEN_LISTINGS`] it is handed back (`Err`) uncounted.
    pub(super) fn hold(fd: std::os::fd::OwnedFd) -> Result<Self, std::os::fd::OwnedFd> {
        if LISTINGS_OPEN.fetch_add(1, Relaxed) >= MAX_OPEN_LISTINGS {
            LISTINGS_OPEN.fetch_sub(1, Relaxed);
            return Err(fd);
        }
        Ok(Self(fd))
    }

    pub(super) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }
}

impl Drop for ListingFd {
    fn drop(&mut self) {
        LISTINGS_OPEN.fetch_sub(1, Relaxed);
    }
}

/// Every open handle, by id. Its lock (rank `Handles`) is a leaf, held for one map
/// operation.
pub(super) struct HandleTable {
    map: RwLock<HashMap<Fh, Handle>>,
    next: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        Self {
            map: RwLock::new(Rank::Handles, HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl HandleTable {
    /// Registers `h` under a new id.
    pub(super) fn insert(&self, h: Handle) -> Fh {
        let fh = Fh(self.next.fetch_add(1, Relaxed));
        self.map.write().insert(fh, h);
        fh
    }

    /// The inode, node and open flags of a file handle.
    ///
    /// # Errors
    /// `EBADF` for an unknown id or a directory handle.
    pub(super) fn file(&self, fh: Fh) -> io::Result<(Arc<Inode>, Arc<FileNode>, i32)> {
        match self.map.read().get(&fh) {
            Some(Handle::File {
                inode, node, flags, ..
            }) => Ok((inode.clone(), node.clone(), *flags)),
            _ => Err(errno(libc::EBADF)),
        }
    }

    /// A directory handle's inode, stamp at opendir, cache decision and snapshot slot.
    ///
    /// # Errors
    /// `EBADF` for an unknown id or a file handle.
    #[allow(clippy::type_complexity)]
    pub(super) fn dir(
        &self,
        fh: Fh,
    ) -> io::Result<(Arc<Inode>, crate::inodes::Stamp, bool, Arc<Mutex<Listing>>)> {
        match self.map.read().get(&fh) {
            Some(Handle::Dir {
                inode,
                stamp,
                cache,
                entries,
            }) => Ok((inode.clone(), *stamp, *cache, entries.clone())),
            _ => Err(errno(libc::EBADF)),
        }
    }

    /// Forgets a handle; returns it (dropped by the caller, outside the lock).
    pub(super) fn remove(&self, fh: Fh) -> Option<Handle> {
        self.map.write().remove(&fh)
    }
}
