//! The inode table: backing inodes keyed by `(st_dev, st_ino)`, with FUSE lookup counts.
//! Hard links share one entry.
//!
//! An inode is anchored by a file handle where the backend makes them
//! (`name_to_handle_at`; reopened with `open_by_handle_at`), else by its last name (the
//! parent inode and the name, checked against `(st_dev, st_ino)` when reopened). Its
//! `O_PATH` fd is a cache in the [`FdPool`]: closed past the pool's mark, opened again on
//! the next use. So the daemon holds no fd per inode the kernel remembers (it ran out of
//! fds past ~4,090 inodes at a limit of 4,096).
//!
//! FUSE node ids are the backing inode numbers, so `st_ino` is stable across remounts.
//! The root is node 1; a backing inode numbered 1 on the root's device takes the root's
//! own backing number (a swap, so ids stay unique). Inodes of other devices (mounts
//! below the backing directory) get synthetic ids from 2^63 up.

use crate::backend::meta::MetaBackend;
use crate::fdpool::{Evict, FdPool, Pin, Slot};
use crate::ids::Ino;
use crate::lock::{Mutex, Rank, RwLock};
use crate::node::FileNode;
pub use crate::node::Stamp;
use crate::sys::FileHandle;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

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

/// What every inode needs to open its `O_PATH` fd again.
pub struct Anchoring {
    /// The metadata seam (counted backend calls).
    pub meta: Arc<dyn MetaBackend>,
    /// The pool the `O_PATH` fds are kept in.
    pub pool: Arc<FdPool>,
    /// The backing root's `O_PATH` fd.
    root: Arc<OwnedFd>,
    /// The backing root opened for reading: the mount fd of `open_by_handle_at` (which
    /// refuses an `O_PATH` fd).
    mount: Option<OwnedFd>,
    /// The root's mount id, when inodes are anchored by handle (`None`: by name only).
    handles: Option<u64>,
    /// The backing's handles carry the inode number where a stat can check it
    /// ([`FileHandle::ino32`]): a lookup takes a handle and a stat by name, with no fd.
    ino32: bool,
}

/// What a lookup found a file by: an fd of it, or (where inodes are anchored by handle)
/// nothing open: its handle, taken by name and checked against the stat
/// ([`Anchoring::lookup_without_fd`]); `None` where the caller saw the inode known and
/// unchanged.
pub enum Found {
    /// An `O_PATH` fd of the file, fresh from this lookup.
    Fd(OwnedFd),
    /// No fd: the file's handle, if taken.
    Handle(Option<FileHandle>),
}

/// How inodes are anchored (`-o inode_handles=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HandleMode {
    /// By handle where the backend makes handles and the daemon may open them (probed
    /// at mount), else by name.
    #[default]
    Auto,
    /// By handle; the mount fails where that does not work.
    Always,
    /// By name.
    Never,
}

impl Anchoring {
    /// Probes whether inodes can be anchored by handle under `root`: a handle of the root
    /// itself, opened back (needs `CAP_DAC_READ_SEARCH` in the initial namespace).
    /// Returns the anchoring and a line saying why handles are off, if they are.
    ///
    /// # Errors
    /// `mode` is [`HandleMode::Always`] and handles do not work here.
    pub fn probe(
        meta: Arc<dyn MetaBackend>,
        pool: Arc<FdPool>,
        root: OwnedFd,
        root_key: (u64, u64),
        mode: HandleMode,
    ) -> io::Result<(Self, Option<String>)> {
        let mut mount = None;
        let mut ino32 = false;
        let found = (mode != HandleMode::Never).then(|| {
            // A FUSE backing (bindfs, GlusterFS's client) makes handles of its node ids:
            // they open back only while its kernel side caches the inode (without export
            // support) and name two links of one file differently. The root, always
            // cached, would pass the probe; its files would not.
            if !crate::sys::handles_outlive_the_mount(root.as_fd()) {
                return Err(io::Error::other(
                    "a FUSE backing: its handles are node ids, valid only while cached",
                ));
            }
            let m = meta.reopen(root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
            let (h, mnt) = meta.name_to_handle(root.as_fd())?;
            ino32 = h.ino32().is_some_and(|i| u64::from(i) == root_key.1);
            let back = meta.open_by_handle(m.as_fd(), &h, libc::O_PATH)?;
            let st = meta.fstat(back.as_fd())?;
            if (st.st_dev, st.st_ino) != root_key {
                return Err(io::Error::from_raw_os_error(libc::ESTALE));
            }
            mount = Some(m);
            Ok(mnt)
        });
        let (handles, why) = match found {
            None => (None, Some("inode_handles=never".to_string())),
            Some(Ok(mnt)) => (Some(mnt), None),
            Some(Err(e)) => {
                if mode == HandleMode::Always {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "inode_handles=always, but file handles do not work on the backing directory: {e}"
                        ),
                    ));
                }
                (None, Some(format!("file handles do not work here ({e})")))
            }
        };
        Ok((
            Self {
                meta,
                pool,
                root: Arc::new(root),
                mount: if handles.is_some() { mount } else { None },
                ino32: ino32 && handles.is_some(),
                handles,
            },
            why,
        ))
    }

    /// Whether inodes are anchored by handle.
    pub fn by_handle(&self) -> bool {
        self.handles.is_some()
    }

    /// Whether a lookup may find a file without opening it: inodes are anchored by
    /// handle, and a handle taken by name can be checked against a stat taken by the same
    /// name (both name the same inode number), so the two calls need no fd to agree.
    pub fn lookup_without_fd(&self) -> bool {
        self.ino32
    }

    /// The handle of `name` in `dir`, taken by name, if it is of the file `st` (a stat of
    /// the same name) shows and on the backing root's mount; `None` otherwise (the name
    /// was replaced between the two calls, another mount, no handle): the caller then
    /// opens the name.
    pub fn handle_by_name(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        st: &libc::stat,
    ) -> Option<FileHandle> {
        let root_mnt = self.handles?;
        match self.meta.name_to_handle_at(dir, name) {
            Ok((h, mnt)) if mnt == root_mnt && h.ino32().map(u64::from) == Some(st.st_ino) => {
                Some(h)
            }
            _ => None,
        }
    }
}

/// An inode's cached `O_PATH` fd and what anchors it.
struct FdSlot {
    /// The fd, with its place in the pool's count.
    fd: Option<(Arc<OwnedFd>, Held)>,
    /// Its last name: the parent and the name (for a reopen where there is no handle).
    name: Option<(Arc<Inode>, CString)>,
    /// The last name was removed through the mount while nobody had it open.
    detached: bool,
    /// Never closed by the pool (the root; a file unlinked through the mount while open).
    pinned: bool,
}

/// How an open fd is counted.
enum Held {
    Pooled(#[allow(dead_code)] Slot),
    Pinned(#[allow(dead_code)] Pin),
    Root,
}

/// One backing inode.
pub struct Inode {
    /// FUSE node id (= `st_ino` shown to users).
    pub ino: Ino,
    /// `(st_dev, st_ino)` on the backing filesystem.
    pub key: (u64, u64),
    /// `st_mode & S_IFMT`.
    pub kind: u32,
    /// Its file handle, where inodes are anchored by handle and this one has one.
    handle: Option<FileHandle>,
    /// Rank `InodeFd` (a leaf, held only to clone, swap or take the fd and the name):
    /// see [`Inode::fd`]. Each lookup of the same file swaps in its own fresh fd (see
    /// [`InodeTable::insert_lookup`]).
    slot: Mutex<FdSlot>,
    /// Used since the pool's last sweep passed (the clock's flag).
    used: AtomicBool,
    anchoring: Arc<Anchoring>,
    me: Weak<Inode>,
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

impl Evict for Inode {
    fn evict(&self) -> bool {
        let old = {
            let mut s = self.slot.lock();
            if s.pinned || s.fd.is_none() {
                return false;
            }
            s.fd.take()
        };
        drop(old);
        true
    }

    fn take_used(&self) -> bool {
        self.used.swap(false, Relaxed)
    }
}

impl Inode {
    /// The `O_PATH` fd (a reference that stays valid while held), opened again if the pool
    /// closed it: by handle, or by the last name (the file found there must be this one).
    ///
    /// # Errors
    /// `ENOENT` once the file was removed through the mount ([`Inode::detach`]); `ESTALE`
    /// where the handle or the name no longer leads to this file; the backend's errno.
    pub fn fd(&self) -> io::Result<PathFd> {
        self.used.store(true, Relaxed);
        let name = {
            let s = self.slot.lock();
            if let Some((fd, _)) = &s.fd {
                return Ok(PathFd(fd.clone()));
            }
            if s.detached {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            s.name.clone()
        };
        let a = &self.anchoring;
        let fd = match (&self.handle, name) {
            (Some(h), _) => {
                let m = a.mount.as_ref().map_or(a.root.as_fd(), |m| m.as_fd());
                a.meta.open_by_handle(m, h, libc::O_PATH)?
            }
            (None, Some((parent, name))) => {
                let fd = a.meta.openat(
                    parent.fd()?.as_fd(),
                    &name,
                    libc::O_PATH | libc::O_NOFOLLOW,
                    0,
                )?;
                let st = a.meta.fstat(fd.as_fd())?;
                if (st.st_dev, st.st_ino) != self.key {
                    return Err(io::Error::from_raw_os_error(libc::ESTALE));
                }
                fd
            }
            (None, None) => return Err(io::Error::from_raw_os_error(libc::ESTALE)),
        };
        Ok(PathFd(self.install(fd, false)))
    }

    /// Installs `fd` as the cached `O_PATH` fd (counted in the pool) unless one is there
    /// and `replace` is false; returns the fd in place. An fd replaced is closed after the
    /// lock is released.
    fn install(&self, fd: OwnedFd, replace: bool) -> Arc<OwnedFd> {
        let fd = Arc::new(fd);
        {
            let s = self.slot.lock();
            if let Some((cur, _)) = &s.fd
                && !replace
            {
                return cur.clone();
            }
        }
        // Counted before it is installed (the pool may sweep now; this inode is marked
        // used, so the sweep passes it over).
        self.used.store(true, Relaxed);
        let held = if self.ino == Ino::ROOT {
            Held::Root
        } else {
            let me: Weak<dyn Evict> = self.me.clone();
            Held::Pooled(self.anchoring.pool.opened(me))
        };
        let mut s = self.slot.lock();
        let held = match held {
            Held::Pooled(slot) if s.pinned => {
                drop(slot);
                Held::Pinned(self.anchoring.pool.pin())
            }
            h => h,
        };
        let old = match &s.fd {
            Some((cur, _)) if !replace => {
                let cur = cur.clone();
                drop(s);
                return cur;
            }
            _ => s.fd.replace((fd.clone(), held)),
        };
        s.detached = false;
        drop(s);
        drop(old);
        fd
    }

    /// Remembers `name` in `parent` as the file's last name (its anchor where there are no
    /// handles).
    pub fn named(&self, parent: &Arc<Inode>, name: &CStr) {
        if self.ino == Ino::ROOT {
            return;
        }
        let old = self
            .slot
            .lock()
            .name
            .replace((parent.clone(), name.to_owned()));
        drop(old);
    }

    /// Lets go of the `O_PATH` fd before the file's last name is removed through the
    /// mount while nobody has it open: an fd held on a name makes an NFS client rename the
    /// file to `.nfsXXXX` instead of removing it (silly rename), and keeps the directory
    /// from being removed. Afterwards the inode answers `ENOENT` until a lookup finds the
    /// file again ([`Inode::reattach`] if the removal failed). The fd closes here unless
    /// a call in flight still holds it (it closes when that call ends). Not the root.
    pub fn detach(&self) {
        if self.ino != Ino::ROOT {
            let old = {
                let mut s = self.slot.lock();
                s.detached = true;
                s.fd.take()
            };
            drop(old);
        }
    }

    /// A lookup without an fd found this file again (its handle, checked by the lookup,
    /// still opens it): it answers again instead of `ENOENT`.
    fn revive(&self) {
        self.slot.lock().detached = false;
    }

    /// Takes the lookup's fd, or (a lookup without one) leaves the cached fd in place.
    fn found(&self, found: Option<OwnedFd>) {
        match found {
            Some(fd) => {
                self.install(fd, true);
            }
            None => self.revive(),
        }
    }

    /// Takes `fd` (a fresh `O_PATH` fd of this very file) after a removal that failed.
    pub fn reattach(&self, fd: OwnedFd) {
        self.install(fd, true);
    }

    /// Keeps the `O_PATH` fd open for good (out of the pool's reach): the file's last name
    /// was removed through the mount while it is open, so nothing could open it again.
    /// Call while the fd is open (after [`Inode::fd`]).
    pub fn pin(&self) {
        let mut s = self.slot.lock();
        if s.pinned {
            return;
        }
        s.pinned = true;
        if let Some((_, held)) = &mut s.fd
            && matches!(held, Held::Pooled(_))
        {
            *held = Held::Pinned(self.anchoring.pool.pin());
        }
    }

    /// Whether this inode is anchored by a file handle.
    pub fn has_handle(&self) -> bool {
        self.handle.is_some()
    }

    /// Whether it is pinned (unlinked through the mount while open: nothing could find
    /// it again).
    pub fn is_pinned(&self) -> bool {
        self.slot.lock().pinned
    }

    /// Whether the file this inode named may be gone, so that its number, found again by a
    /// lookup of `now` (parent and name), may name another file (asked where inodes have no
    /// handle and the ctime moved). Where an fd is cached: whether a fresh fstat of it
    /// fails with ENOENT/ESTALE or shows another number. Where none is: a lookup of the
    /// inode's last name is this very question; another name is checked by opening the
    /// last name again, and counts as gone unless it still leads to this number (a hard
    /// link, or the same file renamed through the mount). When unsure, gone: a new node
    /// id for a file the kernel knew costs a cache, the same id for another file gives
    /// it the other file's pages and names.
    fn file_gone(&self, now: Option<(&Arc<Inode>, &CStr)>) -> bool {
        let (fd, last) = {
            let s = self.slot.lock();
            (s.fd.as_ref().map(|(fd, _)| fd.clone()), s.name.clone())
        };
        let meta = &self.anchoring.meta;
        let shows_other = |st: io::Result<libc::stat>| match st {
            Ok(st) => (st.st_dev, st.st_ino) != self.key,
            Err(e) => matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)),
        };
        if let Some(fd) = fd {
            let gone = shows_other(meta.fstat_fresh(fd.as_fd()));
            tracing::debug!(
                ino = self.ino.0,
                gone,
                "number found again: its cached fd asked"
            );
            return gone;
        }
        let Some((parent, name)) = last else {
            return false;
        };
        if let Some((p, n)) = now
            && Arc::ptr_eq(&parent, p)
            && name.as_c_str() == n
        {
            return false;
        }
        let gone = match parent.fd() {
            Ok(pfd) => shows_other(
                meta.openat(pfd.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .and_then(|fd| meta.fstat_fresh(fd.as_fd())),
            ),
            Err(_) => true,
        };
        tracing::debug!(ino = self.ino.0, gone, last = ?name, "number found again under another name: its last name asked");
        gone
    }

    /// Its file handle, where it is anchored by one.
    pub fn handle(&self) -> Option<&FileHandle> {
        self.handle.as_ref()
    }

    /// The sparse state, if the file was opened.
    pub fn node(&self) -> Option<Arc<FileNode>> {
        self.file.lock().clone()
    }

    /// Installs `node` unless another thread did first; returns the node in place and
    /// whether it is `node`. (Nodes are built without the slot's lock: building one
    /// calls the backend.)
    pub fn install_node(&self, node: Arc<FileNode>) -> (Arc<FileNode>, bool) {
        let mut slot = self.file.lock();
        match &*slot {
            Some(n) => (n.clone(), false),
            None => {
                *slot = Some(node.clone());
                (node, true)
            }
        }
    }

    /// A new inode without an fd (installed by the caller once the table is unlocked).
    fn new(
        ino: Ino,
        st: &libc::stat,
        handle: Option<FileHandle>,
        anchoring: &Arc<Anchoring>,
        lookups: u64,
        generation: u64,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            ino,
            key: (st.st_dev, st.st_ino),
            kind: st.st_mode & libc::S_IFMT,
            handle,
            slot: Mutex::new(
                Rank::InodeFd,
                FdSlot {
                    fd: None,
                    name: None,
                    detached: false,
                    pinned: ino == Ino::ROOT,
                },
            ),
            used: AtomicBool::new(true),
            anchoring: anchoring.clone(),
            me: me.clone(),
            lookups: AtomicU64::new(lookups),
            file: Mutex::new(Rank::FileSlot, None),
            no_caps: std::sync::atomic::AtomicBool::new(false),
            listed: Mutex::new(Rank::DirStamps, Listed::default()),
            generation,
            seen: (
                AtomicI64::new(st.st_ctime),
                AtomicI64::new(st.st_ctime_nsec),
            ),
        })
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
    /// Rank `InodeTable`: only an inode's file slot and fd slot are taken under it (never
    /// the pool: fds are installed after it is released). Inodes leaving the table are
    /// dropped after it is released (dropping one closes its fds).
    maps: RwLock<Maps>,
    root_key: (u64, u64),
    next_synthetic: AtomicU64,
    anchoring: Arc<Anchoring>,
    /// The most inodes held since the last [`InodeTable::take_peak`] (raised at every
    /// insertion: a burst of lookups and forgets between two looks is not missed).
    peak: std::sync::atomic::AtomicUsize,
}

impl InodeTable {
    /// A table holding the root (whose fd is the anchoring's root).
    pub fn new(anchoring: Anchoring, root: &libc::stat) -> Self {
        let key = (root.st_dev, root.st_ino);
        let anchoring = Arc::new(anchoring);
        let inode = Inode::new(Ino::ROOT, root, None, &anchoring, 1 << 40, 0);
        inode.slot.lock().fd = Some((anchoring.root.clone(), Held::Root));
        let root_path = PathFd(anchoring.root.clone());
        let mut maps = Maps::default();
        maps.by_ino.insert(Ino::ROOT, inode.clone());
        maps.by_key.insert(key, Ino::ROOT);
        Self {
            root_path,
            maps: RwLock::new(Rank::InodeTable, maps),
            root_key: key,
            next_synthetic: AtomicU64::new(1 << 63),
            anchoring,
            peak: std::sync::atomic::AtomicUsize::new(1),
        }
    }

    /// How inodes are anchored, and the pool their fds are in.
    pub fn anchoring(&self) -> &Anchoring {
        &self.anchoring
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
        name: Option<(&Arc<Inode>, &CStr)>,
        same: impl FnOnce(&FileNode) -> bool,
    ) -> Arc<Inode> {
        self.insert_found(Found::Fd(fd), st, name, same)
            .expect("a lookup with an fd always finds its inode")
    }

    /// Whether `st` shows a known handle-anchored inode of the same kind, unchanged since
    /// the table last saw it (a lookup then needs no handle: [`Found::Handle`] `None`).
    pub fn known_unchanged(&self, st: &libc::stat) -> bool {
        let m = self.maps.read();
        m.by_key
            .get(&(st.st_dev, st.st_ino))
            .and_then(|ino| m.by_ino.get(ino))
            .is_some_and(|k| {
                k.handle.is_some()
                    && k.ino != Ino::ROOT
                    && k.kind == st.st_mode & libc::S_IFMT
                    && k.seen_as(st)
            })
    }

    /// [`Self::insert_lookup`] for a lookup that found the file by `found`. Returns `None`
    /// where a lookup without an fd brought no handle but one is needed (a new inode, or
    /// the known one changed meanwhile): the caller looks up with an fd instead.
    pub fn insert_found(
        &self,
        found: Found,
        st: &libc::stat,
        name: Option<(&Arc<Inode>, &CStr)>,
        same: impl FnOnce(&FileNode) -> bool,
    ) -> Option<Arc<Inode>> {
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
        // A new inode's handle, taken before the table is locked (a call to the backend);
        // also asked where a known handle-anchored number shows another ctime: a handle
        // is the file's identity (it holds the inode's generation), so another handle
        // under the number is another file that got it (reused), which gets a new inode.
        let new = known.as_ref().is_none_or(|k| k.kind != kind);
        let ask = new
            || known
                .as_ref()
                .is_some_and(|k| k.handle.is_some() && !k.seen_as(st));
        let (fd, handle) = match found {
            Found::Fd(fd) => {
                let handle = match self.anchoring.handles {
                    Some(root_mnt) if ask => match self.anchoring.meta.name_to_handle(fd.as_fd()) {
                        Ok((h, mnt)) if mnt == root_mnt => Some(h),
                        _ => None,
                    },
                    _ => None,
                };
                (Some(fd), handle)
            }
            Found::Handle(h) => {
                if ask && h.is_none() {
                    return None;
                }
                (None, h.filter(|_| ask))
            }
        };
        // Another file under a known number (see below: it gets a node id of its own).
        // Told by the handle where inodes have one; else, where the ctime moved, by the
        // old inode's own fd: on a backing where an O_PATH fd does not hold the file
        // (FUSE, NFS), another client's removal frees the number and a fresh fstat of
        // that fd fails.
        let reborn = !new
            && known.as_ref().is_some_and(|k| match (&k.handle, &handle) {
                (Some(old), Some(new)) => old != new,
                _ => !k.seen_as(st) && k.ino != Ino::ROOT && k.file_gone(name),
            });
        let named = |i: &Inode| {
            if let Some((parent, n)) = name {
                i.named(parent, n);
            }
        };
        let mut m = self.maps.write();
        if let Some(ino) = m.by_key.get(&key)
            && let Some(i) = m.by_ino.get(ino)
        {
            let old = i.clone();
            let checked = known.as_ref().is_some_and(|k| Arc::ptr_eq(k, &old));
            if reborn && checked && old.ino != Ino::ROOT {
                // Another file under a number the kernel still holds for the old one:
                // the new file gets a node id of its own (a synthetic number), so a
                // cached dentry of the old file's name cannot reach it, and the old inode
                // stays as it is until the kernel forgets it (its requests fail as the
                // backend fails them for a removed file). No generation bump: the kernel
                // would fail with EIO every request on its inode of that number,
                // including a concurrent lookup's reply of the new file.
                let ino = Ino(self.next_synthetic.fetch_add(1, Relaxed));
                let inode = Inode::new(ino, st, handle, &self.anchoring, 1, 0);
                named(&inode);
                m.by_ino.insert(ino, inode.clone());
                m.by_key.insert(key, ino);
                self.peak.fetch_max(m.by_ino.len(), Relaxed);
                drop(m);
                tracing::debug!(
                    old = old.ino.0,
                    new = ino.0,
                    "inode number now names another file: a node id of its own"
                );
                inode.found(fd);
                return Some(inode);
            }
            if old.kind == kind || old.ino == Ino::ROOT {
                if !old.seen_as(st) {
                    let was = old
                        .slot
                        .lock()
                        .name
                        .as_ref()
                        .map(|(p, n)| (p.ino.0, n.clone()));
                    tracing::debug!(
                        ino = old.ino.0,
                        was = ?was,
                        now = ?name.map(|(p, n)| (p.ino.0, n.to_owned())),
                        "KEPT with another ctime"
                    );
                }
                old.lookups.fetch_add(1, Relaxed);
                old.saw(st);
                old.no_caps.store(false, Relaxed);
                named(&old);
                let dropped = (other && checked && idle(&old).is_some())
                    .then(|| old.file.lock().take())
                    .flatten();
                drop(m);
                if dropped.is_some() {
                    tracing::debug!(
                        ino = old.ino.0,
                        "inode number now names another file: sparse state dropped"
                    );
                }
                drop(dropped);
                if old.ino != Ino::ROOT {
                    old.found(fd);
                }
                return Some(old);
            }
            let inode = Inode::new(
                old.ino,
                st,
                handle,
                &self.anchoring,
                old.lookups.load(Relaxed) + 1,
                old.generation + 1,
            );
            named(&inode);
            m.by_ino.insert(old.ino, inode.clone());
            drop(m);
            drop(old);
            inode.found(fd);
            return Some(inode);
        }
        // The backing number, unless the kernel still holds it for another file (one
        // that gave its number up: see the synthetic node ids above).
        let ino = Some(key.1)
            .filter(|_| key.0 == self.root_key.0)
            .map(|n| Ino(if n == 1 { self.root_key.1 } else { n }))
            .filter(|i| !m.by_ino.contains_key(i))
            .unwrap_or_else(|| Ino(self.next_synthetic.fetch_add(1, Relaxed)));
        let inode = Inode::new(ino, st, handle, &self.anchoring, 1, 0);
        named(&inode);
        m.by_ino.insert(ino, inode.clone());
        m.by_key.insert(key, ino);
        self.peak.fetch_max(m.by_ino.len(), Relaxed);
        drop(m);
        inode.found(fd);
        Some(inode)
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

    /// The most inodes held since the last call, which starts the count again from
    /// `now` (the number held now).
    pub fn take_peak(&self, now: usize) -> usize {
        self.peak.swap(now, Relaxed).max(now)
    }

    /// The most inodes held since the last [`Self::take_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Relaxed)
    }

    /// Gives back the maps' spare capacity once the kernel has forgotten most of what they
    /// grew to hold (a hash map never shrinks by itself: after a walk of 1,000,000 files
    /// and `drop_caches` it kept room for all of them). Rehashes what is left under the
    /// write lock, so only where under a quarter of the room is used. Returns whether
    /// it shrank.
    pub fn shrink(&self) -> bool {
        let mut m = self.maps.write();
        if m.by_ino.capacity() < 4 * m.by_ino.len().max(1024) {
            return false;
        }
        m.by_ino.shrink_to_fit();
        m.by_key.shrink_to_fit();
        true
    }
}
