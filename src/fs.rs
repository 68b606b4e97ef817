//! The filesystem core: every FUSE operation as a method returning `io::Result`, in
//! terms of backing inodes, handles and sparse file engines. No fuser types here; the
//! adapter decodes requests and sends replies.

use crate::backend::counting::Counting;
use crate::backend::fd::FdFile;
use crate::backend::reopen::Reopening;
use crate::backend::{BackendFile, Caps, Whence, probe};
use crate::file::{Depth, Geometry, SparseFile};
pub use crate::inodes::PassToken;
use crate::inodes::{FileNode, Inode, InodeTable, stamp_of};
use crate::lock::{Condvar, Mutex, Rank, RwLock};
use crate::node::{NodeState, OpenPlan, Record};
use crate::stats::{Stats, Trigger};
use crate::sys::{self, DirEntry, DirSnapshot};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// What a mount is made of (validated by the CLI).
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// The backing directory.
    pub backing: PathBuf,
    /// Block and write sizes.
    pub geo: Geometry,
    /// Dirty bytes across all files before writers flush.
    pub max_dirty: u64,
    /// Age after which dirty data is flushed in the background.
    pub dirty_age: Duration,
    /// Switch fsuid/fsgid so created files belong to the caller (daemon is root).
    pub creds: bool,
    /// The uid that may read the stats xattr besides root (the mount's owner).
    pub owner: u32,
    /// Where extent maps are persisted.
    pub map_store: MapStore,
    /// Keep written pages in the kernel's page cache for every open (`--cache-writes`);
    /// by default opens that cannot read back what they write bypass it.
    pub cache_writes: bool,
    /// Serve qualifying read-only opens by kernel passthrough (when the adapter can).
    pub passthrough: bool,
    /// Let the kernel keep directory listings while the backend shows them unchanged.
    pub dir_cache: bool,
    /// Test hooks (`SPARSEFS_DEBUG_HOOKS=1`): setting [`WEDGE_XATTR`] on an open file
    /// wedges its engine lock for good, to test what a wedged daemon does.
    pub debug_hooks: bool,
}

/// With `debug_hooks`: setting this xattr on an open file makes a thread take the file's
/// engine lock and never release it.
pub const WEDGE_XATTR: &str = "user.sparsefs.debug.wedge";

/// How the kernel may cache a directory listing (see [`SparseFs::opendir`]).
#[derive(Clone, Copy, Debug)]
pub struct DirCache {
    /// Cache what is read now (`FOPEN_CACHE_DIR`).
    pub cache: bool,
    /// The cached listing is current (`FOPEN_KEEP_CACHE`).
    pub keep: bool,
}

/// Seconds a directory must have been unchanged before a listing of it may be served
/// from the kernel's cache later (two of a coarse timestamp's ticks).
const SETTLED: i64 = 2;

/// Registers a backend file (an fd open for reading) with the kernel for passthrough
/// and returns the registration (the adapter's type).
pub type MakeToken<'a> = &'a dyn Fn(std::os::fd::BorrowedFd<'_>) -> io::Result<PassToken>;

/// An open handle and, for a passthrough handle, the backing file to answer with.
pub struct Opened {
    /// The handle.
    pub fh: u64,
    /// The backing file registration of a passthrough handle.
    pub passthrough: Option<PassToken>,
}

pub use crate::persist::MapStore;

pub use crate::persist::{Loaded, MAP_XATTR, Persist, SIDECAR_DIR};

/// The virtual xattr on the mount root that carries the live counters (JSON). Hidden
/// from listxattr; readable by the mount's owner and root only; never stored.
pub const STATS_XATTR: &str = "user.sparsefs.stats";

/// Setting this xattr on an open file asks the daemon to scan part of it for zero blocks
/// (`sparsefs scan` through a mount). Value: `OFFSET LENGTH` or `OFFSET LENGTH dig`. The
/// kernel lets only callers with write access set a `user.` xattr.
pub const SCAN_XATTR: &str = "user.sparsefs.scan";

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// An open handle.
enum Handle {
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

/// Attribute changes of a setattr.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// chmod
    pub mode: Option<u32>,
    /// chown uid
    pub uid: Option<u32>,
    /// chown gid
    pub gid: Option<u32>,
    /// truncate
    pub size: Option<u64>,
    /// atime: `None` keep, `Some(None)` now, `Some(Some(t))` set
    pub atime: Option<Option<libc::timespec>>,
    /// mtime, as atime
    pub mtime: Option<Option<libc::timespec>>,
}

/// The caller of an operation.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// uid
    pub uid: u32,
    /// gid
    pub gid: u32,
}

/// Lock ranks (see [`crate::lock`]): the handle table, the dirty set and the wake-up
/// mutex are leaves, taken briefly and released before anything else is locked (the
/// dirty set under a file's engine).
struct Shared {
    cfg: FsConfig,
    caps: Caps,
    stats: Arc<Stats>,
    inodes: InodeTable,
    /// Rank `Handles`, a leaf.
    handles: RwLock<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Files with unflushed data, for the flusher. Rank `DirtySet`, a leaf (taken under
    /// a file's engine).
    dirty: Mutex<HashMap<u64, Arc<FileNode>>>,
    stop: AtomicBool,
    frozen: AtomicBool,
    wake: Condvar,
    /// Rank `Wake`, a leaf.
    wake_lock: Mutex<()>,
    /// Tells the kernel to drop an inode's cached attributes (set by the mount).
    invalidate_attrs: std::sync::OnceLock<AttrInvalidator>,
    /// Read-write fds of regular files open now (see [`Reopening`]).
    data_fds: Arc<AtomicU64>,
    /// Past this many, a file's fd is closed at its last release (an eighth of the fd
    /// limit: the rest is for the one `O_PATH` fd per inode and open directories).
    data_fd_budget: u64,
}

/// Drops the kernel's cached attributes of a FUSE inode.
pub type AttrInvalidator = Box<dyn Fn(u64) + Send + Sync>;

/// One `fstatat` of a name about to be unlinked or renamed (see `SparseFs::child`).
#[derive(Default)]
struct Child {
    /// Its inode, if known with sparse state.
    known: Option<Arc<Inode>>,
    /// Its backing inode number (regular files only).
    ino: Option<u64>,
    /// Its backing inode number if this is its only link and maps are stored.
    last_link: Option<u64>,
    /// Its link count (regular files only).
    nlink: libc::nlink_t,
}

/// The sparsefs filesystem core.
pub struct SparseFs {
    sh: Arc<Shared>,
    /// Rank `Flusher`, a leaf.
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A stat with its FUSE id and generation.
#[derive(Clone, Copy)]
pub struct Entry {
    /// The FUSE id.
    pub ino: u64,
    /// The FUSE generation of the id (see [`crate::inodes::InodeTable::insert_lookup`]).
    pub generation: u64,
    /// The attributes.
    pub attr: libc::stat,
}

impl Entry {
    fn of(inode: &Inode, attr: libc::stat) -> Self {
        Self {
            ino: inode.ino,
            generation: inode.generation,
            attr,
        }
    }
}

impl SparseFs {
    /// Opens the backing directory and probes what it really does.
    ///
    /// # Errors
    /// The backing directory cannot be opened.
    pub fn new(cfg: FsConfig, stats: Arc<Stats>) -> io::Result<Self> {
        let c = std::ffi::CString::new(cfg.backing.as_os_str().as_encoded_bytes())
            .map_err(|_| errno(libc::EINVAL))?;
        // SAFETY: c is a valid C string; the fd is owned at once.
        let root = File::from(sys_open_path(&c)?);
        let root: OwnedFd = root.into();
        let st = sys::fstat(root.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        let Probed {
            caps,
            reopen_unlinked,
        } = probe_dir(root.as_fd());
        info!(
            punch = caps.punch,
            seek = caps.seek,
            reopen_unlinked,
            "backend probed"
        );
        if cfg.passthrough && !reopen_unlinked {
            info!(
                "the backend cannot reopen a file unlinked while open (GlusterFS): kernel passthrough is off, reads go through the daemon"
            );
        }
        let inodes = InodeTable::new(root, &st);
        let cfg = FsConfig {
            passthrough: cfg.passthrough && reopen_unlinked,
            ..cfg
        };
        Ok(Self {
            sh: Arc::new(Shared {
                cfg,
                caps,
                stats,
                inodes,
                handles: RwLock::new(Rank::Handles, HashMap::new()),
                next_fh: AtomicU64::new(1),
                dirty: Mutex::new(Rank::DirtySet, HashMap::new()),
                stop: AtomicBool::new(false),
                frozen: AtomicBool::new(false),
                wake: Condvar::new(),
                wake_lock: Mutex::new(Rank::Wake, ()),
                invalidate_attrs: std::sync::OnceLock::new(),
                data_fds: Arc::new(AtomicU64::new(0)),
                data_fd_budget: (sys::nofile_limit() / 8).max(64),
            }),
            flusher: Mutex::new(Rank::Flusher, None),
        })
    }

    /// What the probe found.
    pub fn caps(&self) -> Caps {
        self.sh.caps
    }

    /// The mount's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.sh.stats
    }

    /// The sparse block size.
    pub fn block(&self) -> u64 {
        self.sh.cfg.geo.block
    }

    /// Starts the background flusher (dirty age and global dirty limit).
    pub fn start(&self) {
        let sh = self.sh.clone();
        let h = std::thread::Builder::new()
            .name("sparsefs-flush".into())
            .spawn(move || flusher(&sh))
            .expect("spawn flusher");
        *self.flusher.lock() = Some(h);
    }

    /// Refuses further writes with `EIO` (the daemon is exiting while files are still
    /// open: nothing may be acknowledged that the final flush would miss).
    pub fn freeze(&self) {
        self.sh.frozen.store(true, Relaxed);
    }

    /// Stops the flusher and flushes every file (unmount). Returns the files whose data
    /// could not be written.
    pub fn shutdown(&self) -> usize {
        self.sh.stop.store(true, Relaxed);
        self.sh.wake.notify_all();
        let flusher = self.flusher.lock().take();
        if let Some(h) = flusher {
            let _ = h.join();
        }
        let mut failed = 0;
        for node in self.sh.inodes.nodes() {
            if let Err(e) = node.with_engine(|e, _| e.flush(Depth::Full, Trigger::Unmount)) {
                error!(error = %e, "flush at unmount failed: data of a file could not be written");
                failed += 1;
            }
        }
        let s = &self.sh.stats;
        info!(
            app_write_bytes = s.app_write_bytes.load(Relaxed),
            backend_write_bytes = s.bytes(crate::stats::Op::Write),
            backend_writes = s.calls(crate::stats::Op::Write),
            zero_bytes_elided = s.zero_bytes_elided.load(Relaxed),
            punches = s.calls(crate::stats::Op::Punch),
            failed_files = failed,
            "unmount summary"
        );
        failed
    }

    fn inode(&self, ino: u64) -> io::Result<Arc<Inode>> {
        self.sh.inodes.get(ino)
    }

    /// The stat of an inode, with size and blocks from its sparse state.
    fn stat_of(&self, inode: &Inode) -> io::Result<libc::stat> {
        Ok(self.sparse_stat(inode, sys::fstat(inode.fd().as_fd())?))
    }

    /// `st` (a stat of the inode's backing file) with the inode number, block size, and
    /// size, times and blocks from its sparse state where that is trusted (see
    /// [`NodeState::stat_view`]). Reads the node's state only: never waits for a flush.
    fn sparse_stat(&self, inode: &Inode, mut st: libc::stat) -> libc::stat {
        st.st_ino = inode.ino;
        st.st_blksize = self.sh.cfg.geo.block as _;
        let view = inode
            .node()
            .and_then(|n| n.with_state(|s| s.stat_view(&stamp_of(&st))));
        if let Some(v) = view {
            st.st_size = v.size as i64;
            if let Some(t) = v.written
                && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
            {
                let (s, ns) = (d.as_secs() as i64, d.subsec_nanos() as i64);
                if (s, ns) > (st.st_mtime, st.st_mtime_nsec) {
                    (st.st_mtime, st.st_mtime_nsec) = (s, ns);
                }
                if (s, ns) > (st.st_ctime, st.st_ctime_nsec) {
                    (st.st_ctime, st.st_ctime_nsec) = (s, ns);
                }
            }
            if v.exact {
                st.st_blocks = v.blocks as i64;
            } else if v.dirty {
                st.st_blocks = st.st_blocks.max(v.blocks as i64);
            }
        }
        st
    }

    fn entry(&self, fd: OwnedFd) -> io::Result<(Arc<Inode>, libc::stat)> {
        // One stat serves the table (dev, ino) and the reply: a round trip each on a
        // networked backend.
        let st = sys::fstat(fd.as_fd())?;
        let key = (st.st_dev, st.st_ino);
        let inode = self
            .sh
            .inodes
            .insert_lookup(fd, &st, |node| same_file(key, node));
        let st = self.sparse_stat(&inode, st);
        Ok((inode, st))
    }

    /// lookup(2): a name in a directory. Raises the lookup count.
    ///
    /// # Errors
    /// `ENOENT`, `EINVAL` for names that are not one component, `ENAMETOOLONG`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Entry> {
        if parent == 1 && name == SIDECAR_DIR {
            return Err(errno(libc::ENOENT));
        }
        let dir = self.inode(parent)?;
        let c = sys::component(name)?;
        let fd = sys::openat(dir.fd().as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let (inode, st) = self.entry(fd)?;
        Ok(Entry::of(&inode, st))
    }

    /// Drops lookups.
    pub fn forget(&self, ino: u64, n: u64) {
        self.sh.inodes.forget(ino, n);
    }

    /// getattr.
    ///
    /// # Errors
    /// `ESTALE` for unknown inodes.
    pub fn getattr(&self, ino: u64) -> io::Result<libc::stat> {
        let inode = self.inode(ino)?;
        self.stat_of(&inode)
    }

    fn node(&self, inode: &Arc<Inode>) -> io::Result<Arc<FileNode>> {
        Ok(self.node_with(inode, None, None)?.0)
    }

    /// The file's node, made now (with `data`, an open fd of the file, if given; else a
    /// reopen of the inode's `O_PATH` fd) if it has none; `true` if made now (its stamp is
    /// fresh). `known`: a stat of the file known to be current (it was just made or
    /// emptied), taken instead of a fresh one. The node is built without any lock (it
    /// takes backend calls); of two racing builders one installs its node and the other's
    /// is dropped.
    fn node_with(
        &self,
        inode: &Arc<Inode>,
        data: Option<OwnedFd>,
        known: Option<&libc::stat>,
    ) -> io::Result<(Arc<FileNode>, bool)> {
        if let Some(n) = inode.node() {
            return Ok((n, false));
        }
        if inode.kind != libc::S_IFREG {
            return Err(errno(libc::EINVAL));
        }
        let fd = match data {
            Some(fd) => fd,
            None => reopen_data(inode)?,
        };
        let stats = self.sh.stats.clone();
        let wrap = move |fd: OwnedFd| -> Box<dyn BackendFile> {
            Box::new(Counting::new(FdFile::new(File::from(fd)), stats.clone()))
        };
        let first = wrap(fd);
        // The reopen holds the inode weakly: the inode owns the node, not the other way.
        let weak = Arc::downgrade(inode);
        let data = Arc::new(Reopening::new(
            first,
            Box::new(move || {
                let inode = weak.upgrade().ok_or_else(|| errno(libc::ESTALE))?;
                Ok(wrap(reopen_data(&inode)?))
            }),
            self.sh.data_fds.clone(),
        ));
        let backend: Box<dyn BackendFile> = Box::new(data.clone());
        let (geo, caps, stats) = (self.sh.cfg.geo, self.sh.caps, self.sh.stats.clone());
        let (mut engine, st) = match known {
            Some(st) => (
                SparseFile::open_sized(backend, st.st_size as u64, geo, caps, stats),
                *st,
            ),
            None => (
                SparseFile::open(backend, geo, caps, stats)?,
                sys::fstat_fresh(inode.fd().as_fd())?,
            ),
        };
        let record = self.load_map(inode, &mut engine, &st);
        let state = NodeState::new(stamp_of(&st), st.st_mode, record, engine.view());
        let node = Arc::new(FileNode::new(engine, state, data));
        Ok(inode.install(node))
    }

    /// Close-to-open: when nobody has the file open, a fresh stat of the backend that
    /// shows another stamp than the one last known to match means the file changed
    /// outside this mount: its sparse state is dropped and its stored map loaded again.
    /// Called inside the node's open transition (opens of the file wait; stat does not).
    fn refresh_if_stale(&self, inode: &Inode, node: &FileNode) -> io::Result<()> {
        let Some(ticket) = node.with_state(|s| (s.opens() == 0).then(|| s.stamp_ticket())) else {
            return Ok(());
        };
        let st = sys::fstat_fresh(inode.fd().as_fd())?;
        let now = stamp_of(&st);
        node.with_state(|s| s.saw_mode(st.st_mode));
        if !node.with_state(|s| s.stale(&now)) {
            return Ok(());
        }
        node.with_engine(|e, state| {
            // Checked again under the engine: a truncate by path may have run meanwhile.
            if !state.with(|s| s.stale(&now)) {
                return Ok(());
            }
            debug!(
                ino = inode.ino,
                "backing file changed outside the mount: map dropped"
            );
            e.reset_from_backend()?;
            let record = self.load_map(inode, e, &st);
            state.with(|s| s.refreshed(ticket, now, record));
            Ok(())
        })
    }

    fn persist(&self) -> io::Result<Persist<'_>> {
        Ok(Persist::new(
            self.sh.inodes.root_fd(),
            self.sh.cfg.map_store,
        ))
    }

    /// Loads a persisted map for a clean file of unknown layout (see [`Persist::load`]).
    /// Returns the record state found.
    fn load_map(&self, inode: &Inode, e: &mut SparseFile, st: &libc::stat) -> Record {
        if self.sh.cfg.map_store == MapStore::None || e.size() == 0 || e.exact() {
            return Record::None;
        }
        let Ok(p) = self.persist() else {
            return Record::None;
        };
        match p.load(inode.fd().as_fd(), st) {
            Loaded::None => Record::None,
            Loaded::Stale => {
                debug!(
                    ino = inode.ino,
                    "persisted extent map is stale (file changed since): file treated as data"
                );
                Record::Stored
            }
            Loaded::Refused(err) => {
                warn!(ino = inode.ino, error = %err, "persisted extent map refused: file treated as data");
                Record::Stored
            }
            Loaded::Map(data) => {
                debug!(
                    ino = inode.ino,
                    extents = data.len(),
                    "persisted extent map loaded"
                );
                e.adopt_map(data);
                Record::Stored
            }
        }
    }

    /// Persists a clean file's exact map; a file without holes has a record that may
    /// exist (`replaces`) removed. Returns whether a record exists now (`None`: the store
    /// failed, one may). Failures only cost the knowledge, never correctness: logged.
    fn store_map(&self, inode: &Inode, e: &SparseFile, replaces: bool) -> Option<bool> {
        if self.sh.cfg.map_store == MapStore::None {
            return Some(false);
        }
        if !e.exact() || e.is_dirty() {
            return Some(replaces);
        }
        let Ok(p) = self.persist() else {
            return Some(replaces);
        };
        if e.index_data().total() >= e.size() {
            if replaces {
                p.remove(inode.fd().as_fd());
            }
            return Some(false);
        }
        match p.store(inode.fd().as_fd(), e.index_data()) {
            Ok(()) => Some(true),
            Err(err) => {
                warn!(ino = inode.ino, error = %err, "extent map not persisted");
                None
            }
        }
    }

    /// A name that may be created through the mount (the sidecar directory may not).
    fn name_ok(&self, parent: u64, name: &OsStr) -> io::Result<std::ffi::CString> {
        if parent == 1 && name == SIDECAR_DIR {
            return Err(errno(libc::EPERM));
        }
        sys::component(name)
    }

    /// Flushes a file for close and, if it changed through the mount, stores its map
    /// (under the engine: the record is the engine's map) and records its stamp.
    fn close_flush(&self, inode: &Inode, node: &FileNode) -> io::Result<()> {
        let changed = node.with_engine(|e, state| {
            e.flush(Depth::Full, Trigger::Close)?;
            let Some(replaces) = state.with(|s| s.take_store()) else {
                return Ok::<_, io::Error>(false);
            };
            let exists = self.store_map(inode, e, replaces);
            state.with(|s| s.stored(exists));
            Ok(true)
        })?;
        if changed {
            self.record_stamp(inode, node);
        }
        Ok(())
    }

    /// Truncates a file through its engine.
    fn truncate_node(&self, node: &FileNode, size: u64) -> io::Result<()> {
        node.change(|e, state| {
            if e.size() != size || e.is_dirty() {
                state.with(|s| s.changed());
            }
            e.truncate(size)
        })
    }

    /// What unlink and rename need to know of `name` in `dir`, from one `fstatat` (a
    /// round trip on a networked backend): its known inode with sparse state, if any
    /// (operations that change its ctime re-record its stamp afterwards, so that our own
    /// changes never make its map look stale), and its inode number if it is a regular
    /// file whose only link this is (removing the name ends the file and its stored map).
    fn child(&self, dir: &Inode, name: &std::ffi::CStr) -> Child {
        let Ok(st) = sys::fstatat_nofollow(dir.fd().as_fd(), name) else {
            return Child::default();
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Child::default();
        }
        let known = self
            .sh
            .inodes
            .ino_for(st.st_dev, st.st_ino)
            .and_then(|ino| self.sh.inodes.get(ino).ok())
            .filter(|i| i.key == (st.st_dev, st.st_ino) && i.node().is_some());
        let last_link = (self.sh.cfg.map_store != MapStore::None
            && st.st_nlink == 1
            && st.st_dev == self.sh.inodes.root_key().0)
            .then_some(st.st_ino);
        Child {
            known,
            ino: Some(st.st_ino),
            last_link,
            nlink: st.st_nlink,
        }
    }

    /// Drops the sidecar record of a file whose last link was removed through the mount.
    fn forget_record(&self, ino: Option<u64>) {
        if let (Some(ino), Ok(p)) = (ino, self.persist()) {
            p.forget_ino(ino);
        }
    }

    fn restamp(&self, inode: Option<Arc<Inode>>) {
        if let Some(i) = inode
            && let Some(n) = i.node()
        {
            self.record_stamp(&i, &n);
        }
    }

    /// Records the backend's current stamp as "known to match". The stat runs without
    /// any lock; of racing recorders the one that asked last wins (see
    /// [`NodeState::stamp_ticket`]).
    fn record_stamp(&self, inode: &Inode, node: &FileNode) {
        let ticket = node.with_state(|s| s.stamp_ticket());
        if let Ok(st) = sys::fstat_fresh(inode.fd().as_fd()) {
            node.with_state(|s| s.record_stamp(ticket, stamp_of(&st)));
        }
    }

    /// setattr: chmod, chown, truncate, utimens. A regular file is flushed first so that
    /// times set now are not moved by a later flush.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn setattr(&self, ino: u64, a: SetAttr) -> io::Result<libc::stat> {
        let inode = self.inode(ino)?;
        let is_reg = inode.kind == libc::S_IFREG;
        let node = if is_reg && (a.size.is_some() || inode.node().is_some()) {
            Some(self.node(&inode)?)
        } else {
            None
        };
        if let Some(n) = &node {
            n.transition(|n| self.refresh_if_stale(&inode, n))?;
            if let Some(size) = a.size {
                self.truncate_node(n, size)?;
            } else {
                n.with_engine(|e, _| e.flush(Depth::Full, Trigger::Sync))?;
            }
        } else if a.size.is_some() {
            return Err(errno(if inode.kind == libc::S_IFDIR {
                libc::EISDIR
            } else {
                libc::EINVAL
            }));
        }
        if let Some(mode) = a.mode
            && inode.kind != libc::S_IFLNK
        {
            sys::chmod(inode.fd().as_fd(), mode & 0o7777)?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            sys::chown(
                inode.fd().as_fd(),
                a.uid.unwrap_or(u32::MAX),
                a.gid.unwrap_or(u32::MAX),
            )?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let ts = |t: Option<Option<libc::timespec>>| match t {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(None) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(Some(t)) => t,
            };
            sys::utimens(
                inode.fd().as_fd(),
                &[ts(a.atime), ts(a.mtime)],
                inode.kind == libc::S_IFLNK,
            )?;
        }
        if let Some(n) = &node {
            self.record_stamp(&inode, n);
        }
        let st = self.stat_of(&inode)?;
        if let Some(n) = &node {
            n.with_state(|s| s.saw_mode(st.st_mode));
        }
        Ok(st)
    }

    /// Clears the set-id bits a write by an unprivileged caller clears. The kernel leaves
    /// that to us for uncached (direct-I/O) writes (`FUSE_WRITE_KILL_SUIDGID`), and the
    /// backend would not do it: the daemon writes with `CAP_FSETID`.
    fn clear_setid(&self, inode: &Inode, node: &FileNode) -> io::Result<()> {
        let st = sys::fstat(inode.fd().as_fd())?;
        let bits = crate::node::setid_to_clear(st.st_mode);
        if bits != 0 {
            sys::chmod(inode.fd().as_fd(), st.st_mode & 0o7777 & !bits)?;
            self.record_stamp(inode, node);
            if let Some(f) = self.sh.invalidate_attrs.get() {
                f(inode.ino);
            }
        }
        node.with_state(|s| s.setid_cleared());
        Ok(())
    }

    /// readlink.
    ///
    /// # Errors
    /// `EINVAL` if not a symlink.
    pub fn readlink(&self, ino: u64) -> io::Result<OsString> {
        sys::readlink(self.inode(ino)?.fd().as_fd())
    }

    /// Runs a creating operation as the caller (so the new node belongs to them), and
    /// looks the result up.
    fn create_as(
        &self,
        parent: &Inode,
        name: &OsStr,
        who: Caller,
        f: impl Fn(&std::ffi::CStr) -> io::Result<()>,
    ) -> io::Result<(Arc<Inode>, libc::stat)> {
        let (i, st, _) = self.create_as_with(parent, name, who, |c| f(c).map(|()| None))?;
        Ok((i, st))
    }

    /// [`Self::create_as`] for an operation that may return an open fd of what it made
    /// (create): the inode's `O_PATH` fd is then reopened from it through /proc (no
    /// second lookup of the name on the backend, and no race with a rename).
    fn create_as_with(
        &self,
        parent: &Inode,
        name: &OsStr,
        who: Caller,
        f: impl Fn(&std::ffi::CStr) -> io::Result<Option<OwnedFd>>,
    ) -> io::Result<(Arc<Inode>, libc::stat, Option<OwnedFd>)> {
        let c = self.name_ok(parent.ino, name)?;
        let made = {
            let _ids = self
                .sh
                .cfg
                .creds
                .then(|| sys::FsIds::switch(who.uid, who.gid));
            f(&c)?
        };
        let fd = match &made {
            Some(m) => sys::reopen(m.as_fd(), libc::O_PATH)?,
            None => sys::openat(parent.fd().as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?,
        };
        let (i, st) = self.entry(fd)?;
        Ok((i, st, made))
    }

    /// mknod (regular files, fifos, sockets, devices).
    ///
    /// # Errors
    /// The backend's errno (`EEXIST`, `EPERM`, ...).
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        who: Caller,
    ) -> io::Result<Entry> {
        let dir = self.inode(parent)?;
        let (i, st) = self.create_as(&dir, name, who, |c| {
            sys::mknodat(dir.fd().as_fd(), c, mode & !umask, rdev as u64)
        })?;
        Ok(Entry::of(&i, st))
    }

    /// mkdir.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        who: Caller,
    ) -> io::Result<Entry> {
        let dir = self.inode(parent)?;
        let (i, st) = self.create_as(&dir, name, who, |c| {
            sys::mkdirat(dir.fd().as_fd(), c, mode & !umask & 0o7777)
        })?;
        Ok(Entry::of(&i, st))
    }

    /// symlink.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        who: Caller,
    ) -> io::Result<Entry> {
        let dir = self.inode(parent)?;
        let (i, st) = self.create_as(&dir, name, who, |c| {
            sys::symlinkat(target.as_os_str(), dir.fd().as_fd(), c)
        })?;
        Ok(Entry::of(&i, st))
    }

    /// unlink.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let dir = self.inode(parent)?;
        let c = sys::component(name)?;
        let child = self.child(&dir, &c);
        sys::unlinkat(dir.fd().as_fd(), &c, 0)?;
        // The last name of a file: nothing can open it again, so its stamp no longer
        // matters; its stored record is dropped unless this mount knows it has none.
        let unrecorded = child
            .known
            .as_ref()
            .and_then(|i| i.node())
            .is_some_and(|n| !n.with_state(|s| s.recorded()));
        if child.nlink > 1 {
            self.restamp(child.known);
        }
        if !unrecorded {
            self.forget_record(child.last_link);
        }
        Ok(())
    }

    /// rmdir.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let dir = self.inode(parent)?;
        sys::unlinkat(dir.fd().as_fd(), &sys::component(name)?, libc::AT_REMOVEDIR)
    }

    /// rename / renameat2 (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    ///
    /// # Errors
    /// The backend's errno.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        let a = self.inode(parent)?;
        let b = self.inode(newparent)?;
        let (on, nn) = (
            self.name_ok(parent, name)?,
            self.name_ok(newparent, newname)?,
        );
        let moved = self.child(&a, &on);
        let target = self.child(&b, &nn);
        sys::renameat2(a.fd().as_fd(), &on, b.fd().as_fd(), &nn, flags)?;
        self.restamp(moved.known);
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.restamp(target.known);
        } else if target.ino != moved.ino {
            // The target's name is gone (a rename onto another name of the same file
            // replaces nothing).
            self.forget_record(target.last_link);
        }
        Ok(())
    }

    /// link.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> io::Result<Entry> {
        let inode = self.inode(ino)?;
        let dir = self.inode(newparent)?;
        let c = self.name_ok(newparent, newname)?;
        sys::link(inode.fd().as_fd(), dir.fd().as_fd(), &c)?;
        self.restamp(Some(inode.clone()));
        let fd = sys::openat(dir.fd().as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let (i, st) = self.entry(fd)?;
        Ok(Entry::of(&i, st))
    }

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.sh.next_fh.fetch_add(1, Relaxed);
        self.sh.handles.write().insert(fh, h);
        fh
    }

    /// Opens a handle of a regular file, as one transition of its node (see
    /// [`FileNode::transition`]): the staleness check, the choice between an ordinary
    /// and a passthrough handle (and a joining writer's bypass), and the count.
    fn open_node(
        &self,
        inode: &Arc<Inode>,
        flags: i32,
        data: Option<OwnedFd>,
        make: Option<MakeToken<'_>>,
        known: Option<&libc::stat>,
    ) -> io::Result<Opened> {
        let (node, made) = self.node_with(inode, data, known)?;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let qualifies =
            make.is_some() && self.sh.cfg.passthrough && !writable && flags & libc::O_DIRECT == 0;
        let token = node.transition(|node| -> io::Result<Option<PassToken>> {
            if !made {
                self.refresh_if_stale(inode, node)?;
            }
            let token = match node.with_state(|s| s.plan_open(writable, qualifies)) {
                OpenPlan::Ordinary => None,
                OpenPlan::Join { token, bypass } => {
                    if bypass {
                        node.with_engine(|e, state| -> io::Result<()> {
                            e.flush(Depth::Full, Trigger::Sync)?;
                            e.reset_from_backend()?;
                            state.with(|s| s.bypass());
                            Ok(())
                        })?;
                    }
                    if writable {
                        self.sh.stats.passthrough_writers.fetch_add(1, Relaxed);
                    }
                    Some(token)
                }
                OpenPlan::Passthrough => {
                    let make = make.expect("qualifies only with a registrar");
                    match sys::reopen(inode.fd().as_fd(), libc::O_RDONLY).and_then(|fd| make(fd.as_fd())) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            debug!(ino = inode.ino, error = %e, "passthrough refused: ordinary open");
                            None
                        }
                    }
                }
            };
            node.with_state(|s| s.opened(token.clone()));
            Ok(token)
        })?;
        if token.is_some() {
            self.sh.stats.passthrough_opens.fetch_add(1, Relaxed);
        }
        // A stored map just loaded: the kernel's attributes from the lookup show the
        // backend's allocation, not the map's (cp decides on the fstat after its open).
        if made
            && node.with_state(|s| s.recorded() && s.view().exact)
            && let Some(f) = self.sh.invalidate_attrs.get()
        {
            f(inode.ino);
        }
        let fh = self.new_fh(Handle::File {
            inode: inode.clone(),
            node,
            flags,
            pt: token.is_some(),
        });
        Ok(Opened {
            fh,
            passthrough: token,
        })
    }

    /// open. `O_DIRECT` and other flags stay with the handle; the backend fd is shared
    /// per inode and opened without them.
    ///
    /// # Errors
    /// `EISDIR`, the backend's errno.
    ///
    /// `make` registers a backend file for kernel passthrough (the adapter's part); when
    /// given and the open qualifies (see `passthrough_ok`), or the file already has
    /// passthrough handles, the result carries the token to answer with.
    pub fn open(&self, ino: u64, flags: i32, make: Option<MakeToken<'_>>) -> io::Result<Opened> {
        let inode = self.inode(ino)?;
        match inode.kind {
            libc::S_IFREG => self.open_node(&inode, flags, None, make, None),
            libc::S_IFDIR => Err(errno(libc::EISDIR)),
            _ => Err(errno(libc::ENXIO)),
        }
    }

    /// Installs how to drop the kernel's cached attributes of an inode: used when an
    /// open loads a stored map, so that the `st_blocks` the kernel holds from the lookup
    /// (the backend's allocation) give way to the map's (cp decides on the `fstat` after
    /// its open whether to look for holes).
    pub fn set_attr_invalidator(&self, f: AttrInvalidator) {
        let _ = self.sh.invalidate_attrs.set(f);
    }

    /// Whether the mount asks for kernel passthrough (`--no-passthrough` not given).
    pub fn passthrough_wanted(&self) -> bool {
        self.sh.cfg.passthrough
    }

    /// Whether an open with these flags (as the kernel sends them: `create` keeps
    /// `O_CREAT`/`O_EXCL`, `open` has neither) bypasses the kernel's page cache
    /// (`FOPEN_DIRECT_IO`). Without the writeback cache every written page is still
    /// copied into the page cache and kept there, which halves write throughput and fills
    /// memory with pages of streams nobody reads back (measured: `cp --sparse=never` of
    /// 2 GiB 2.2-3.1 s cached, 1.05-1.2 s uncached). So: `O_WRONLY` opens (they cannot
    /// read or mmap), and `O_RDWR` creates with `O_EXCL` (a new temporary file:
    /// `mkstemp`, rsync's receiver). The kernel keeps other opens coherent: it writes
    /// back dirty mmap pages before a direct write and invalidates the cached pages it
    /// covers after it (`FUSE_DIRECT_IO_ALLOW_MMAP`, requested at init).
    pub fn bypass_page_cache(&self, flags: i32) -> bool {
        if self.sh.cfg.cache_writes {
            return false;
        }
        let excl = libc::O_CREAT | libc::O_EXCL;
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => true,
            libc::O_RDWR => flags & excl == excl,
            _ => false,
        }
    }

    /// create (+ open).
    ///
    /// # Errors
    /// The backend's errno.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        who: Caller,
    ) -> io::Result<(Entry, Opened)> {
        let dir = self.inode(parent)?;
        let excl = flags & libc::O_EXCL;
        let trunc = flags & libc::O_TRUNC;
        // The fd that created the file becomes its data fd (no close and reopen: an
        // open round trip on a networked backend). O_TRUNC is the backend's too, so that
        // the file is empty when it is looked at.
        let (inode, st, made) = self.create_as_with(&dir, name, who, |c| {
            sys::openat(
                dir.fd().as_fd(),
                c,
                libc::O_CREAT | libc::O_RDWR | libc::O_NOFOLLOW | excl | trunc,
                mode & !umask & 0o7777,
            )
            .map(Some)
        })?;
        if inode.kind != libc::S_IFREG {
            self.forget(inode.ino, 1);
            return Err(errno(libc::EEXIST));
        }
        // A file this create made (O_EXCL) or emptied (O_TRUNC) is what the stat just
        // taken shows: its sparse state needs no stat of its own (one or two round trips
        // per created file on a networked backend).
        let known = (excl != 0 || trunc != 0).then_some(&st);
        // No new passthrough for a writable open, but one of a file (an existing file, by
        // a name the kernel had not looked up) that has passthrough handles must join them.
        let opened = self.open_node(&inode, flags, made, None, known)?;
        if trunc != 0 {
            let node = self.node(&inode)?;
            self.truncate_node(&node, 0)?;
        }
        let st = match known {
            Some(st) if st.st_size == 0 => self.sparse_stat(&inode, *st),
            _ => self.stat_of(&inode)?,
        };
        Ok((Entry::of(&inode, st), opened))
    }

    fn file(&self, fh: u64) -> io::Result<(Arc<Inode>, Arc<FileNode>, i32)> {
        match self.sh.handles.read().get(&fh) {
            Some(Handle::File {
                inode, node, flags, ..
            }) => Ok((inode.clone(), node.clone(), *flags)),
            _ => Err(errno(libc::EBADF)),
        }
    }

    /// read: holes known to the index are zeros without backend I/O.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn read(&self, fh: u64, off: u64, size: u32) -> io::Result<Vec<u8>> {
        let (_, node, _) = self.file(fh)?;
        node.read(|e| e.read(off, size as usize))
    }

    /// write: buffered in the file's coalescer; `O_SYNC`/`O_DSYNC` handles flush and
    /// sync before returning.
    ///
    /// # Errors
    /// An error of this or an earlier background flush of the file.
    ///
    /// Returns the bytes taken and whether backend writes are ready to run: the adapter
    /// replies first and then calls [`Self::after_write`], so the backend write overlaps
    /// the application's next write (an error there is returned by the file's next
    /// write, close or fsync).
    pub fn write(
        &self,
        ino: u64,
        fh: u64,
        off: u64,
        data: &[u8],
        flags: i32,
        clear_setid: bool,
    ) -> io::Result<(u32, bool)> {
        let (inode, node, hflags) = self.file(fh)?;
        let flags = flags | hflags;
        if self.sh.frozen.load(Relaxed) {
            return Err(errno(libc::EIO));
        }
        if clear_setid && node.with_state(|s| s.setid()) {
            self.clear_setid(&inode, &node)?;
        }
        let pending = node.change(|e, state| {
            state.with(|s| s.changed());
            let pending = e.buffer(off, data)?;
            if flags & libc::O_DSYNC != 0 {
                let depth = if flags & libc::O_SYNC == libc::O_SYNC {
                    Depth::Sync
                } else {
                    Depth::DataSync
                };
                e.flush(depth, Trigger::Fsync)?;
            } else if self.sh.stats.dirty_bytes.load(Relaxed) > self.sh.cfg.max_dirty {
                e.flush(Depth::Data, Trigger::DirtyLimit)?;
            }
            if e.is_dirty() {
                self.sh.dirty.lock().insert(ino, node.clone());
            }
            // A bypassed file's change is flushed whole by `change` (only copy_file_range
            // writes through the engine of one): nothing is left for after the reply.
            Ok(pending && !state.with(|s| s.bypassed()))
        })?;
        Ok((data.len() as u32, pending))
    }

    /// Runs the backend writes a [`Self::write`] found ready, after its reply.
    pub fn after_write(&self, fh: u64) {
        if let Ok((_, node, _)) = self.file(fh) {
            node.with_engine(|e, _| e.run_pending_deferred());
        }
    }

    /// flush (each close of a descriptor): everything reaches the backend, so errors
    /// reach close(2).
    ///
    /// # Errors
    /// The backend's errno, or one kept from a background flush.
    pub fn flush(&self, fh: u64) -> io::Result<()> {
        let (inode, node, _) = self.file(fh)?;
        self.close_flush(&inode, &node)
    }

    /// release (last close of an open): flushes and forgets the handle.
    ///
    /// # Errors
    /// The backend's errno (not seen by close(2); logged).
    pub fn release(&self, fh: u64) -> io::Result<()> {
        let h = self.sh.handles.write().remove(&fh);
        let Some(Handle::File {
            inode, node, pt, ..
        }) = h
        else {
            return Ok(());
        };
        // The stamp is recorded where this mount changes the file (close_flush of a
        // changed file, setattr, the end of a bypass), not again here: a round trip per
        // close, and a record now could cover another node's change made since.
        let r = self.close_flush(&inode, &node);
        node.transition(|node| {
            let rel = node.with_state(|s| s.released(pt));
            if rel.end_bypass && self.end_bypass(node) {
                self.record_stamp(&inode, node);
            }
            if rel.last && r.is_ok() {
                self.park_if_over_budget(node);
            }
        });
        r
    }

    /// Ends the bypass of a file whose passthrough handles are all closed (the kernel
    /// released its files before telling us): its engine takes the backend's size and an
    /// unknown map again (what passthrough writers did is not known; reads and SEEK_DATA
    /// of it then ask the backend). Returns whether it worked (the stamp is then to be
    /// recorded); if not, the file stays bypassed and the next release tries again.
    fn end_bypass(&self, node: &FileNode) -> bool {
        node.with_engine(|e, state| {
            let synced = e
                .flush(Depth::Full, Trigger::Close)
                .and_then(|()| e.reset_from_backend());
            match synced {
                Ok(()) => {
                    state.with(|s| s.bypass_ended());
                    true
                }
                Err(err) => {
                    warn!(error = %err, "file written through passthrough: state not refreshed");
                    false
                }
            }
        })
    }

    /// Closes an idle file's read-write fd when more than the budget are open (it is
    /// opened again on its next use): a working set keeps its fds, a tree of many files
    /// written once does not hold two fds per file. Called in the file's last-close
    /// transition, so no open races it.
    fn park_if_over_budget(&self, node: &FileNode) {
        if self.sh.data_fds.load(Relaxed) <= self.sh.data_fd_budget {
            return;
        }
        let idle = node.with_state(|s| s.opens() == 0 && !s.view().dirty);
        if idle && node.data.park() {
            self.sh.stats.data_fds_parked.fetch_add(1, Relaxed);
        }
    }

    /// fsync / fdatasync: flushed data and the backend file are synced.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn fsync(&self, fh: u64, datasync: bool) -> io::Result<()> {
        let (_, node, _) = self.file(fh)?;
        let depth = if datasync {
            Depth::DataSync
        } else {
            Depth::Sync
        };
        node.with_engine(|e, _| e.flush(depth, Trigger::Fsync))
    }

    /// lseek SEEK_DATA / SEEK_HOLE from the extent index.
    ///
    /// # Errors
    /// `ENXIO` past the last data (SEEK_DATA) or at/after EOF; `EINVAL` for other whence.
    pub fn lseek(&self, fh: u64, off: i64, whence: i32) -> io::Result<i64> {
        let (_, node, _) = self.file(fh)?;
        if off < 0 {
            return Err(errno(libc::ENXIO));
        }
        let w = match whence {
            libc::SEEK_DATA => Whence::Data,
            libc::SEEK_HOLE => Whence::Hole,
            _ => return Err(errno(libc::EINVAL)),
        };
        node.change(|e, _| e.seek(off as u64, w))?
            .map(|x| x as i64)
            .ok_or_else(|| errno(libc::ENXIO))
    }

    /// fallocate: mode 0 / KEEP_SIZE passed through; PUNCH_HOLE and ZERO_RANGE made
    /// real through the index (punch where the backend truly punches, else zeros).
    ///
    /// # Errors
    /// `EOPNOTSUPP` for unsupported modes (never `ENOSYS`), the backend's errno.
    pub fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> io::Result<()> {
        let (_, node, _) = self.file(fh)?;
        node.change(|e, state| {
            state.with(|s| s.changed());
            self.fallocate_engine(e, off, len, mode)
        })
    }

    fn fallocate_engine(
        &self,
        e: &mut SparseFile,
        off: u64,
        len: u64,
        mode: i32,
    ) -> io::Result<()> {
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            if !keep || mode & !(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) != 0 {
                return Err(errno(libc::EOPNOTSUPP));
            }
            e.make_zero(off, len, true)
        } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            e.make_zero(off, len, keep)
        } else if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            Err(errno(libc::EOPNOTSUPP))
        } else {
            e.allocate(mode, off, len)
        }
    }

    /// copy_file_range through the sparse engines: zeros in the source stay holes.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        ino_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> io::Result<u32> {
        let len = len.min(1 << 30);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(1 << 20) as u32;
            let data = self.read(fh_in, off_in + done, n)?;
            if data.is_empty() {
                break;
            }
            if self
                .write(ino_out, fh_out, off_out + done, &data, 0, false)?
                .1
            {
                self.after_write(fh_out);
            }
            done += data.len() as u64;
        }
        Ok(done as u32)
    }

    /// opendir. Returns the handle and how the kernel may cache the listing: `cache`
    /// (`FOPEN_CACHE_DIR`) once the backend shows the directory with the stamp (size,
    /// mtime, ctime) of a listing already read (so a tree listed once, by find or rsync,
    /// does not pay for filling the cache), `keep` (`FOPEN_KEEP_CACHE`: the kernel's cached
    /// listing may be used) when the kernel was asked to cache a listing of that same
    /// stamp. Only listings taken when the directory had been unchanged for [`SETTLED`]
    /// count (see [`Self::readdir`]). Changes through this mount move the mtime (and the
    /// kernel drops its cache itself); another node's change moves the backend's mtime
    /// and ctime, seen by the fresh stat here; with `--no-dir-cache` nothing is cached.
    ///
    /// # Errors
    /// `ENOTDIR`, the backend's errno.
    pub fn opendir(&self, ino: u64) -> io::Result<(u64, DirCache)> {
        let inode = self.inode(ino)?;
        if inode.kind != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        // The stat is only for the cache decision (a round trip on a networked backend).
        let stamp = if self.sh.cfg.dir_cache {
            stamp_of(&sys::fstat_fresh(inode.fd().as_fd())?)
        } else {
            Default::default()
        };
        let seen = *inode.listed.lock();
        let cache = DirCache {
            cache: self.sh.cfg.dir_cache && seen.read == Some(stamp),
            keep: self.sh.cfg.dir_cache && seen.cached == Some(stamp),
        };
        if cache.keep {
            self.sh.stats.dir_cache_kept.fetch_add(1, Relaxed);
        }
        let fh = self.new_fh(Handle::Dir {
            inode,
            stamp,
            cache: cache.cache,
            entries: Arc::new(Mutex::new(Rank::DirSnapshot, None)),
        });
        Ok((fh, cache))
    }

    /// The snapshot entries of a directory handle: one per handle, taken at its first
    /// readdir. The stamp taken at opendir is recorded (as read, and as cached when the
    /// handle asked the kernel to cache) when the directory had then been unchanged for
    /// [`SETTLED`]: a change in the same timestamp tick as the stamp would otherwise go
    /// unseen.
    ///
    /// # Errors
    /// `EBADF`, the backend's errno.
    pub fn readdir(&self, fh: u64) -> io::Result<Arc<DirSnapshot>> {
        let (inode, stamp, cache, slot) = match self.sh.handles.read().get(&fh) {
            Some(Handle::Dir {
                inode,
                stamp,
                cache,
                entries,
            }) => (inode.clone(), *stamp, *cache, entries.clone()),
            _ => return Err(errno(libc::EBADF)),
        };
        let mut slot = slot.lock();
        if let Some(e) = &*slot {
            return Ok(e.clone());
        }
        let mut entries = DirSnapshot::default();
        entries.push(inode.ino, libc::DT_DIR, b".");
        entries.push(inode.ino, libc::DT_DIR, b"..");
        let dev = inode.key.0;
        sys::read_dir_into(inode.fd().as_fd(), &mut entries, |ino, name| {
            if inode.ino == 1 && name == SIDECAR_DIR.as_bytes() {
                return None;
            }
            Some(self.sh.inodes.ino_for(dev, ino).unwrap_or(ino))
        })?;
        self.sh.stats.dir_listings.fetch_add(1, Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // stamp: (size, mtime s, mtime ns, ctime s, ctime ns)
        if self.sh.cfg.dir_cache && stamp.1.max(stamp.3) + SETTLED <= now {
            let mut seen = inode.listed.lock();
            seen.read = Some(stamp);
            if cache {
                seen.cached = Some(stamp);
            }
        }
        let e = Arc::new(entries);
        *slot = Some(e.clone());
        Ok(e)
    }

    /// readdirplus support: looks an entry of a snapshot up (raising its lookup count,
    /// as the kernel expects for every entry it is given with attributes). `Ok(None)` for
    /// `.` and `..` (not looked up: the kernel skips them) and for an entry that vanished
    /// since the snapshot (`ENOENT`: leave it out). Other errors (`EMFILE`, `EACCES`,
    /// the backend's) are returned: the entry must not be sent with made-up attributes.
    ///
    /// # Errors
    /// The lookup's errno other than `ENOENT`.
    pub fn lookup_entry(&self, dir: u64, e: &DirEntry<'_>) -> io::Result<Option<Entry>> {
        if e.name == "." || e.name == ".." {
            return Ok(None);
        }
        match self.lookup(dir, e.name) {
            Ok(entry) => Ok(Some(entry)),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// releasedir.
    pub fn releasedir(&self, fh: u64) {
        self.sh.handles.write().remove(&fh);
    }

    /// fsyncdir.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> io::Result<()> {
        let inode = self.inode(ino)?;
        let d = sys::reopen(inode.fd().as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        sys::fsync(d.as_fd(), datasync)
    }

    /// statfs of the backing filesystem.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn statfs(&self, ino: u64) -> io::Result<libc::statvfs> {
        sys::statvfs(self.inode(ino)?.fd().as_fd())
    }

    fn xattr_ok(&self, inode: &Inode) -> io::Result<()> {
        if inode.kind == libc::S_IFREG || inode.kind == libc::S_IFDIR {
            Ok(())
        } else {
            Err(errno(libc::EPERM))
        }
    }

    /// getxattr. On the root, [`STATS_XATTR`] answers the live counters to the owner
    /// and root (`EACCES` to anyone else).
    ///
    /// # Errors
    /// `ENODATA`, `ERANGE`, `ENOTSUP`, `EACCES`.
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32, who: Caller) -> io::Result<Vec<u8>> {
        if ino == 1 && name == STATS_XATTR {
            if who.uid != 0 && who.uid != self.sh.cfg.owner {
                return Err(errno(libc::EACCES));
            }
            let v = self.sh.stats.to_json().into_bytes();
            if size != 0 && (size as usize) < v.len() {
                return Err(errno(libc::ERANGE));
            }
            return Ok(v);
        }
        let inode = self.inode(ino)?;
        if (inode.kind != libc::S_IFREG && inode.kind != libc::S_IFDIR) || name == MAP_XATTR {
            return Err(errno(libc::ENODATA));
        }
        let caps = name == "security.capability";
        if caps && inode.no_caps.load(Relaxed) {
            return Err(errno(libc::ENODATA));
        }
        let c = std::ffi::CString::new(name.as_encoded_bytes()).map_err(|_| errno(libc::EINVAL))?;
        let r = sys::getxattr(inode.fd().as_fd(), &c, size as usize);
        if caps && matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENODATA)) {
            inode.no_caps.store(true, Relaxed);
        }
        r
    }

    /// listxattr.
    ///
    /// # Errors
    /// `ERANGE`.
    pub fn listxattr(&self, ino: u64, size: u32) -> io::Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        if inode.kind != libc::S_IFREG && inode.kind != libc::S_IFDIR {
            return Ok(Vec::new());
        }
        // Our own map xattr is not listed: fetch the whole list and filter it.
        let n = sys::listxattr(inode.fd().as_fd(), 0)?.len();
        let all = sys::listxattr(inode.fd().as_fd(), n.max(1))?;
        let hidden = format!("{MAP_XATTR}\0");
        let mut out = Vec::with_capacity(all.len());
        for item in all.split_inclusive(|&b| b == 0) {
            if item != hidden.as_bytes() {
                out.extend_from_slice(item);
            }
        }
        if size != 0 && (size as usize) < out.len() {
            return Err(errno(libc::ERANGE));
        }
        if size == 0 {
            return Ok(vec![0; out.len()]);
        }
        Ok(out)
    }

    /// setxattr.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let inode = self.inode(ino)?;
        self.xattr_ok(&inode)?;
        inode.no_caps.store(false, Relaxed);
        if name == STATS_XATTR || name == MAP_XATTR {
            return Err(errno(libc::EPERM));
        }
        if name == SCAN_XATTR {
            return self.scan_request(&inode, value);
        }
        if name == WEDGE_XATTR && self.sh.cfg.debug_hooks {
            let node = inode.node().ok_or_else(|| errno(libc::EBADF))?;
            warn!(
                ino = inode.ino,
                "debug hook: wedging the file's engine lock for good"
            );
            std::thread::Builder::new()
                .name("sparsefs-wedge".into())
                .spawn(move || {
                    node.with_engine(|_, _| {
                        loop {
                            std::thread::park()
                        }
                    })
                })?;
            return Ok(());
        }
        let c = std::ffi::CString::new(name.as_encoded_bytes()).map_err(|_| errno(libc::EINVAL))?;
        sys::setxattr(inode.fd().as_fd(), &c, value, flags)?;
        self.restamp(Some(inode));
        Ok(())
    }

    /// A [`SCAN_XATTR`] request: scans a range of an open regular file for zero blocks
    /// (the engine reads the backend; the found blocks become known holes, persisted at
    /// close like any map change).
    fn scan_request(&self, inode: &Inode, value: &[u8]) -> io::Result<()> {
        let text = std::str::from_utf8(value).map_err(|_| errno(libc::EINVAL))?;
        let mut it = text.split_ascii_whitespace();
        let num = |x: Option<&str>| x.and_then(|v| v.parse::<u64>().ok());
        let (Some(off), Some(len)) = (num(it.next()), num(it.next())) else {
            return Err(errno(libc::EINVAL));
        };
        let dig = match it.next() {
            None => false,
            Some("dig") => true,
            Some(_) => return Err(errno(libc::EINVAL)),
        };
        if inode.kind != libc::S_IFREG {
            return Err(errno(libc::EINVAL));
        }
        // Only through an open file: its sparse state exists while it is open.
        let node = inode.node().ok_or_else(|| errno(libc::EBADF))?;
        let changed = node.change(|e, state| {
            let found = e.scan_zeros(off, len, dig)?;
            // Punching moves the file's ctime: the map is stored again at close, with a
            // fresh stamp, or the next mount would find it stale.
            if found > 0 || dig {
                state.with(|s| s.scanned());
            }
            Ok(found > 0 || dig)
        })?;
        // st_blocks now follows the learned map: the kernel's cached attributes (taken
        // before the scan, for up to their TTL) would still show the backend's.
        if changed && let Some(f) = self.sh.invalidate_attrs.get() {
            f(inode.ino);
        }
        Ok(())
    }

    /// removexattr.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> io::Result<()> {
        if name == MAP_XATTR {
            return Err(errno(libc::EPERM));
        }
        let inode = self.inode(ino)?;
        self.xattr_ok(&inode)?;
        inode.no_caps.store(false, Relaxed);
        let c = std::ffi::CString::new(name.as_encoded_bytes()).map_err(|_| errno(libc::EINVAL))?;
        sys::removexattr(inode.fd().as_fd(), &c)?;
        self.restamp(Some(inode));
        Ok(())
    }

    /// access (only reached without default_permissions).
    ///
    /// # Errors
    /// `EACCES`.
    pub fn access(&self, ino: u64, mask: i32) -> io::Result<()> {
        let inode = self.inode(ino)?;
        if inode.kind == libc::S_IFLNK {
            return Ok(());
        }
        sys::access(inode.fd().as_fd(), mask)
    }
}

fn sys_open_path(c: &std::ffi::CStr) -> io::Result<OwnedFd> {
    let cwd = std::fs::File::open(".").map(OwnedFd::from)?;
    let _ = cwd.as_raw_fd();
    sys::openat(cwd.as_fd(), c, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// Probes the backing directory with a scratch file that is unlinked at once.
/// What the probe of the backing directory found (see [`probe_dir`]).
struct Probed {
    caps: Caps,
    /// A file unlinked while open can be opened again through its fd (`/proc/self/fd`).
    /// GlusterFS answers ESTALE; the kernel's passthrough opens do exactly that (each
    /// passthrough open reopens the registered backing file), so an open that races an
    /// unlink, or an open through /proc of an unlinked file, would fail with EIO there.
    reopen_unlinked: bool,
}

fn probe_dir(root: std::os::fd::BorrowedFd<'_>) -> Probed {
    let name =
        std::ffi::CString::new(format!(".sparsefs-probe.{}", std::process::id())).expect("no NUL");
    let Ok(fd) = sys::openat(
        root,
        &name,
        libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
        0o600,
    ) else {
        warn!(
            "cannot create a probe file in the backing directory: assuming no punch and no SEEK_DATA"
        );
        return Probed {
            caps: Caps::default(),
            reopen_unlinked: false,
        };
    };
    let f = FdFile::new(File::from(fd));
    let caps = probe(&f);
    let path = sys::openat(root, &name, libc::O_PATH | libc::O_NOFOLLOW, 0);
    let _ = sys::unlinkat(root, &name, 0);
    let reopen_unlinked = path
        .and_then(|p| sys::reopen(p.as_fd(), libc::O_RDONLY))
        .is_ok();
    drop(f);
    Probed {
        caps,
        reopen_unlinked,
    }
}

fn flusher(sh: &Shared) {
    let tick = (sh.cfg.dirty_age / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    while !sh.stop.load(Relaxed) {
        {
            let mut g = sh.wake_lock.lock();
            sh.wake.wait_for(&mut g, tick);
        }
        let now = Instant::now();
        let over = sh.stats.dirty_bytes.load(Relaxed) > sh.cfg.max_dirty;
        let nodes: Vec<(u64, Arc<FileNode>)> = sh
            .dirty
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (ino, node) in nodes {
            node.with_engine(|e, _| {
                let old = e
                    .dirty_since()
                    .is_some_and(|t| now.duration_since(t) >= sh.cfg.dirty_age);
                if old || over {
                    if over {
                        e.flush_background(Trigger::DirtyLimit, Duration::ZERO);
                    } else {
                        e.flush_background(Trigger::Age, sh.cfg.dirty_age);
                    }
                }
                if e.dirty_since().is_none() {
                    sh.dirty.lock().remove(&ino);
                }
            });
        }
    }
}

/// Whether an idle file node's data fd still holds the file its backing inode number
/// names (asked when a lookup shows another ctime under that number; see
/// `InodeTable::insert_lookup`). A parked node (no fd) has nothing of another file to
/// write to: it reopens from the inode's fd, which each lookup refreshes.
fn same_file(key: (u64, u64), node: &FileNode) -> bool {
    match node.data.open_identity() {
        Some(id) => matches!(id, Ok(k) if k == key),
        None => true,
    }
}

/// A read-write fd of a regular file from its `O_PATH` fd (read-only where the daemon may
/// not write it).
fn reopen_data(inode: &Inode) -> io::Result<OwnedFd> {
    sys::reopen(inode.fd().as_fd(), libc::O_RDWR)
        .or_else(|_| sys::reopen(inode.fd().as_fd(), libc::O_RDONLY))
}
