//! The open-handle table: what each handle the kernel holds refers to.

use super::*;

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
        /// The snapshot, taken at the first readdir (not at all when the kernel answers
        /// from its cache). Rank `DirSnapshot`, held across the backend listing.
        entries: Arc<Mutex<Option<Arc<DirSnapshot>>>>,
    },
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
    ) -> io::Result<(
        Arc<Inode>,
        crate::inodes::Stamp,
        bool,
        Arc<Mutex<Option<Arc<DirSnapshot>>>>,
    )> {
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
