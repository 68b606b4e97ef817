//! The inode table: one `O_PATH` fd per backing inode, keyed by `(st_dev, st_ino)`, with
//! FUSE lookup counts. Hard links share one entry; an unlinked file stays reachable
//! through its fd while the kernel holds it.
//!
//! FUSE node ids are the backing inode numbers, so `st_ino` is stable across remounts.
//! The root is node 1; a backing inode numbered 1 on the root's device takes the root's
//! own backing number (a swap, so ids stay unique). Inodes of other devices (mounts
//! below the backing directory) get synthetic ids from 2^63 up.

use crate::ids::Ino;
use crate::lock::{Mutex, Rank, RwLock};
use crate::node::FileNode;
pub use crate::node::Stamp;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// An inode's `O_PATH` fd, held (see [`Inode::fd`]).
pub struct PathFd(Arc<OwnedFd>);

impl AsFd for PathFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A directory's stamps at its last listings taken when it had been unchanged for a
/// while (a later change then moves the stamp).
#[derive(Default, Clone, Copy)]
pub struct Listed {
    /// The last such listing read from the backend.
    pub read: Option<Stamp>,
    /// The last such listing the kernel was asked to cache (`FOPEN_CACHE_DIR`).
    pub cached: Option<Stamp>,
}

/// One backing inode.
pub struct Inode {
    /// FUSE node id (= `st_ino` shown to users).
    pub ino: Ino,
    /// `(st_dev, st_ino)` on the backing filesystem.
    pub key: (u64, u64),
    /// `st_mode & S_IFMT`.
    pub kind: u32,
    /// The `O_PATH` fd. Rank `InodeFd` (a leaf, held only to clone or swap the fd): each
    /// lookup of the same file swaps in its own fresh fd (see
    /// [`InodeTable::insert_lookup`]).
    fd: Mutex<Arc<OwnedFd>>,
    lookups: AtomicU64,
    /// Sparse state, for regular files once opened. Rank `FileSlot` (a leaf).
    file: Mutex<Option<Arc<FileNode>>>,
    /// The backend said this file has no `security.capability` xattr. The kernel asks
    /// for it before every write; the answer is remembered until the xattr is set or
    /// removed through the mount.
    pub no_caps: std::sync::atomic::AtomicBool,
    /// What is known of a directory's listings (see `SparseFs::opendir`). Rank
    /// `DirStamps` (a leaf).
    pub listed: Mutex<Listed>,
    /// FUSE generation: raised when the id goes to a file of another kind under the same
    /// backing inode number (see [`InodeTable::insert_lookup`]).
    pub generation: u64,
    /// The ctime of the last stat the table saw of it (seconds, nanoseconds): a lookup
    /// showing another is checked for being another file.
    seen: (AtomicI64, AtomicI64),
}

impl Inode {
    /// The `O_PATH` fd (a reference that stays valid while held).
    pub fn fd(&self) -> PathFd {
        PathFd(self.fd.lock().clone())
    }

    /// Puts `fd` in place of the `O_PATH` fd; returns the old one (to be closed by the
    /// caller, outside any lock).
    fn repair(&self, fd: OwnedFd) -> Arc<OwnedFd> {
        std::mem::replace(&mut *self.fd.lock(), Arc::new(fd))
    }

    /// The sparse state, if the file was opened.
    pub fn node(&self) -> Option<Arc<FileNode>> {
        self.file.lock().clone()
    }

    /// Installs `node` unless another thread did first; returns the node in place and
    /// whether it is `node`. (Nodes are built without the slot's lock: building one
    /// calls the backend.)
    pub fn install(&self, node: Arc<FileNode>) -> (Arc<FileNode>, bool) {
        let mut slot = self.file.lock();
        match &*slot {
            Some(n) => (n.clone(), false),
            None => {
                *slot = Some(node.clone());
                (node, true)
            }
        }
    }

    fn new(ino: Ino, st: &libc::stat, fd: OwnedFd, lookups: u64, generation: u64) -> Self {
        Self {
            ino,
            key: (st.st_dev, st.st_ino),
            kind: st.st_mode & libc::S_IFMT,
            fd: Mutex::new(Rank::InodeFd, Arc::new(fd)),
            lookups: AtomicU64::new(lookups),
            file: Mutex::new(Rank::FileSlot, None),
            no_caps: std::sync::atomic::AtomicBool::new(false),
            listed: Mutex::new(Rank::DirStamps, Listed::default()),
            generation,
            seen: (
                AtomicI64::new(st.st_ctime),
                AtomicI64::new(st.st_ctime_nsec),
            ),
        }
    }

    /// Whether `st` (a stat under the same backing inode number) shows the last ctime seen.
    fn seen_as(&self, st: &libc::stat) -> bool {
        self.seen.0.load(Relaxed) == st.st_ctime && self.seen.1.load(Relaxed) == st.st_ctime_nsec
    }

    fn saw(&self, st: &libc::stat) {
        self.seen.0.store(st.st_ctime, Relaxed);
        self.seen.1.store(st.st_ctime_nsec, Relaxed);
    }
}

#[derive(Default)]
struct Maps {
    by_ino: HashMap<Ino, Arc<Inode>>,
    by_key: HashMap<(u64, u64), Ino>,
}

/// All inodes the kernel knows about.
pub struct InodeTable {
    root_path: PathFd,
    /// Rank `InodeTable`: only an inode's file slot is taken under it. Inodes leaving
    /// the table are dropped after it is released (dropping one closes its fds).
    maps: RwLock<Maps>,
    root_key: (u64, u64),
    next_synthetic: AtomicU64,
}

impl InodeTable {
    /// A table holding the root.
    pub fn new(root_fd: OwnedFd, root: &libc::stat) -> Self {
        let key = (root.st_dev, root.st_ino);
        let inode = Arc::new(Inode::new(Ino::ROOT, root, root_fd, 1 << 40, 0));
        let root_path = inode.fd();
        let mut maps = Maps::default();
        maps.by_ino.insert(Ino::ROOT, inode.clone());
        maps.by_key.insert(key, Ino::ROOT);
        Self {
            root_path,
            maps: RwLock::new(Rank::InodeTable, maps),
            root_key: key,
            next_synthetic: AtomicU64::new(1 << 63),
        }
    }

    /// The FUSE id a backing `(dev, ino)` gets (also used for readdir's `d_ino`).
    pub fn ino_for(&self, dev: u64, ino: u64) -> Option<Ino> {
        if dev != self.root_key.0 {
            return self.maps.read().by_key.get(&(dev, ino)).copied();
        }
        Some(Ino(if ino == self.root_key.1 {
            1
        } else if ino == 1 {
            self.root_key.1
        } else {
            ino
        }))
    }

    /// Finds an inode by FUSE id.
    ///
    /// # Errors
    /// `ESTALE` for an id the table does not hold.
    pub fn get(&self, ino: Ino) -> std::io::Result<Arc<Inode>> {
        self.maps
            .read()
            .by_ino
            .get(&ino)
            .cloned()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESTALE))
    }

    /// Returns the inode for `fd`/`st` with its lookup count raised by one.
    ///
    /// A backing inode number identifies a file only while the file exists, and an
    /// `O_PATH` fd does not keep it existing, or even reachable, on every backend: on a
    /// path-based FUSE backend (bindfs, any libfuse high-level filesystem) an `O_PATH` fd
    /// follows the name it was opened by and dies when that name goes, though the file
    /// may live on under another name; a number freed there, or by another node of a
    /// parallel filesystem, comes back as another file. So a known entry takes `fd`, the
    /// fd of this lookup (live for sure), in place of its own. Its sparse state is the
    /// one thing that must never pass to another file: when the ctime moved and nobody
    /// has the file open, `same` (called without the table's lock: it asks the backend)
    /// says whether the node's data fd still holds this file; if not, the node is dropped
    /// and the next open builds one for the file the number now names. (An open file's
    /// data fd keeps the file, and so its number.) A file of another kind under a known
    /// number gets a new kernel inode: the next generation, inheriting the lookups the
    /// kernel will forget through the id.
    pub fn insert_lookup(
        &self,
        fd: OwnedFd,
        st: &libc::stat,
        same: impl FnOnce(&FileNode) -> bool,
    ) -> Arc<Inode> {
        let key = (st.st_dev, st.st_ino);
        let kind = st.st_mode & libc::S_IFMT;
        let known = {
            let m = self.maps.read();
            m.by_key
                .get(&key)
                .and_then(|ino| m.by_ino.get(ino))
                .cloned()
        };
        let idle = |i: &Inode| i.node().filter(|n| n.with_state(|s| s.opens() == 0));
        let other = known
            .as_ref()
            .filter(|k| k.kind == kind && !k.seen_as(st))
            .and_then(|k| idle(k))
            .is_some_and(|n| !same(&n));
        let mut m = self.maps.write();
        if let Some(ino) = m.by_key.get(&key)
            && let Some(i) = m.by_ino.get(ino)
        {
            let old = i.clone();
            if old.kind == kind || old.ino == Ino::ROOT {
                old.lookups.fetch_add(1, Relaxed);
                old.saw(st);
                old.no_caps.store(false, Relaxed);
                let checked = known.as_ref().is_some_and(|k| Arc::ptr_eq(k, &old));
                let dropped = (other && checked && idle(&old).is_some())
                    .then(|| old.file.lock().take())
                    .flatten();
                let replaced = (old.ino != Ino::ROOT).then(|| old.repair(fd));
                drop(m);
                if dropped.is_some() {
                    tracing::debug!(
                        ino = old.ino.0,
                        "inode number now names another file: sparse state dropped"
                    );
                }
                drop(dropped);
                drop(replaced);
                return old;
            }
            let inode = Arc::new(Inode::new(
                old.ino,
                st,
                fd,
                old.lookups.load(Relaxed) + 1,
                old.generation + 1,
            ));
            m.by_ino.insert(old.ino, inode.clone());
            drop(m);
            drop(old);
            return inode;
        }
        let ino = Ino(if key.0 == self.root_key.0 {
            if key.1 == 1 { self.root_key.1 } else { key.1 }
        } else {
            self.next_synthetic.fetch_add(1, Relaxed)
        });
        let inode = Arc::new(Inode::new(ino, st, fd, 1, 0));
        m.by_ino.insert(ino, inode.clone());
        m.by_key.insert(key, ino);
        inode
    }

    /// Drops `n` lookups; the inode leaves the table at zero (open handles keep their
    /// own reference).
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == Ino::ROOT {
            return;
        }
        let gone = {
            let mut m = self.maps.write();
            let Some(i) = m.by_ino.get(&ino) else { return };
            let left = i.lookups.load(Relaxed).saturating_sub(n);
            i.lookups.store(left, Relaxed);
            if left > 0 {
                return;
            }
            let key = i.key;
            if m.by_key.get(&key) == Some(&ino) {
                m.by_key.remove(&key);
            }
            m.by_ino.remove(&ino)
        };
        // Closing its fds (a round trip on some backends) happens here, unlocked.
        drop(gone);
    }

    /// Every regular-file node with sparse state (for flush-all).
    pub fn nodes(&self) -> Vec<Arc<FileNode>> {
        self.maps
            .read()
            .by_ino
            .values()
            .filter_map(|i| i.node())
            .collect()
    }

    /// `(st_dev, st_ino)` of the backing root.
    pub fn root_key(&self) -> (u64, u64) {
        self.root_key
    }

    /// The root's `O_PATH` fd (the backing directory; never repaired).
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root_path.as_fd()
    }

    /// Number of inodes held.
    pub fn len(&self) -> usize {
        self.maps.read().by_ino.len()
    }

    /// True if only the root is held.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }
}
