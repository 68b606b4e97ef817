//! The filesystem core: every FUSE operation as a method returning `io::Result`, in
//! terms of backing inodes, handles and sparse file engines. No fuser types here; the
//! adapter decodes requests and sends replies.

mod attr;
mod data;
pub use data::{AfterWrite, Written};
mod dir;
mod flusher;
pub use flusher::per_file_limit;
mod freshness;
mod handles;
mod namespace;
mod open;
mod xattr;

use crate::backend::counting::Counting;
use crate::backend::fd::FdFile;
use crate::backend::meta::{Counted, MetaBackend, SysMeta};
use crate::backend::reopen::Reopening;
use crate::backend::{BackendFile, Caps, Whence, probe};
use crate::fdpool::FdPool;
use crate::file::{Depth, Geometry, SparseFile};
pub use crate::ids::{Fh, Ino};
pub use crate::inodes::HandleMode;
use crate::inodes::{Anchoring, Found, Inode, InodeTable};
use crate::lock::{Condvar, Mutex, Rank, RwLock};
pub use crate::node::PassToken;
use crate::node::{FileNode, NodeState, OpenPlan, Record, stamp_of};
use crate::stats::{Stats, Trigger};
use crate::sys::{self, DirEntry, DirSnapshot};
use handles::{Handle, HandleTable, Listing, ListingFd};
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
    /// How inodes are anchored (`-o inode_handles=`).
    pub inode_handles: HandleMode,
    /// The pool's high-water mark (`None`: from the fd limit, see [`FdPool::for_limit`]).
    pub fd_high: Option<u64>,
    /// Window writes through `O_DIRECT` (`--direct-writes`): `Some(true)` wherever the
    /// probe found it working; `None` (auto) and `Some(false)`: never (see
    /// docs/tuning.md for why auto is off).
    pub direct_writes: Option<bool>,
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

/// Registers a backend file (an fd open for reading) with the kernel for passthrough
/// and returns the registration (the adapter's type).
pub type MakeToken<'a> = &'a dyn Fn(std::os::fd::BorrowedFd<'_>) -> io::Result<PassToken>;

/// An open handle and, for a passthrough handle, the backing file to answer with.
pub struct Opened {
    /// The handle.
    pub fh: Fh,
    /// The backing file registration of a passthrough handle.
    pub passthrough: Option<PassToken>,
    /// The kernel may keep its page cache of the file (`FOPEN_KEEP_CACHE`): the open
    /// found the file unchanged since the cache was last dropped.
    pub keep_cache: bool,
}

pub use crate::persist::MapStore;

pub use crate::persist::{Loaded, MAP_XATTR, Persist, SIDECAR_DIR, Witness};

/// The virtual xattr on the mount root that carries the live counters (JSON). Hidden
/// from listxattr; readable by the mount's owner and root only; never stored.
pub const STATS_XATTR: &str = "user.sparsefs.stats";

/// Setting this xattr on an open file asks the daemon to scan part of it for zero blocks
/// (`sparsefs scan` through a mount). Value: `OFFSET LENGTH` or `OFFSET LENGTH dig`. The
/// kernel lets only callers with write access set a `user.` xattr.
pub const SCAN_XATTR: &str = "user.sparsefs.scan";

/// Reading this xattr on an open regular file answers its data runs from the mount's
/// index, at sparse-block granularity, as SEEK_DATA/SEEK_HOLE would (`sparsefs send`
/// through a mount). The name carries where to start: `user.sparsefs.runs@OFFSET`. The
/// value is text: a first line `SIZE NEXT`, then one `START END` line per run that ends
/// after OFFSET; NEXT is where to ask again, SIZE when the list is complete (a reply
/// stays under 64 KiB). Never stored, never listed.
pub const RUNS_XATTR: &str = "user.sparsefs.runs@";

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
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
    /// Every metadata call on the backend (counted).
    meta: Arc<dyn MetaBackend>,
    caps: Caps,
    stats: Arc<Stats>,
    inodes: InodeTable,
    handles: HandleTable,
    /// Files with unflushed data, for the flusher. Rank `DirtySet`, a leaf (taken under
    /// a file's engine).
    dirty: Mutex<HashMap<Ino, Arc<FileNode>>>,
    stop: AtomicBool,
    frozen: AtomicBool,
    wake: Condvar,
    /// Rank `Wake`, a leaf.
    wake_lock: Mutex<()>,
    /// Kernel passthrough is in use (see [`SparseFs::set_passthrough`]).
    passthrough: AtomicBool,
    /// Tells the kernel to drop an inode's cached attributes (set by the mount).
    invalidate_attrs: std::sync::OnceLock<AttrInvalidator>,
    /// Stored maps carry the files' birth identities (the backing's file handles name
    /// the same file on every mount; see [`crate::persist`]).
    births: bool,
    /// The backing is a FUSE filesystem: `O_PATH` fds do not hold its files (see
    /// `SparseFs::park_idle`).
    fuse_backing: bool,
    /// When a removal last found no sidecar directory of stored maps (ms since
    /// `started`; 0: not known), see `SparseFs::forget_record`.
    sidecar_absent_at: AtomicU64,
    /// The sidecar directory, kept open between uses for a short while.
    sidecar: crate::persist::SidecarDir,
    /// The names looked up last (what a removal that follows needs of them).
    recent: namespace::RecentNames,
    started: std::time::Instant,
}

/// Drops the kernel's cached attributes of a FUSE inode.
pub type AttrInvalidator = Box<dyn Fn(Ino) + Send + Sync>;

/// One `fstatat` of a name about to be unlinked or renamed (see `SparseFs::child`).
#[derive(Default)]
struct Child {
    /// Its inode, if known with sparse state.
    known: Option<Arc<Inode>>,
    /// Its inode, if the kernel knows it (any kind).
    inode: Option<Arc<Inode>>,
    /// Its inode if it is not a directory, and whether this is its last name: what the
    /// daemon lets go of before removing the name.
    held: Option<(Arc<Inode>, bool)>,
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
    pub ino: Ino,
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
            mut caps,
            reopen_unlinked,
        } = probe_dir(root.as_fd());
        // O_DIRECT window writes only when asked for (`--direct-writes always`): they win
        // on a FUSE client (one O_DIRECT write goes as several requests at once, buffered
        // writes of a file one after another: 9x on GlusterFS with a 2000 µs brick), but
        // sharded GlusterFS lost a shard of a stream written that way, and failed such
        // writes with ENOENT/ENODATA now and then (docs/tuning.md). No backing is known
        // where they are safe, so `auto` leaves them off.
        caps.direct = caps.direct && cfg.direct_writes.unwrap_or(false);
        info!(
            punch = caps.punch,
            seek = caps.seek,
            direct_writes = caps.direct,
            reopen_unlinked,
            "backend probed"
        );
        if cfg.passthrough && !reopen_unlinked {
            info!(
                "the backend cannot reopen a file unlinked while open (GlusterFS): kernel passthrough is off, reads go through the daemon"
            );
        }
        let pool = match cfg.fd_high {
            Some(high) => FdPool::with_marks(high, high * 3 / 4),
            None => FdPool::for_limit(sys::nofile_limit()),
        };
        let meta: Arc<dyn MetaBackend> =
            Arc::new(Counted::new(SysMeta, stats.clone()).with_relief(pool.clone()));
        let key = (st.st_dev, st.st_ino);
        let births = sys::handles_outlive_the_mount(root.as_fd());
        let (anchoring, why) =
            Anchoring::probe(meta.clone(), pool.clone(), root, key, cfg.inode_handles)?;
        match why {
            None => info!(
                fd_high = pool.high(),
                "inodes anchored by file handle; backend fds pooled"
            ),
            Some(why) => info!(
                fd_high = pool.high(),
                "inodes anchored by name ({why}; file handles need CAP_DAC_READ_SEARCH and a backend that exports them); backend fds pooled"
            ),
        }
        let inodes = InodeTable::new(anchoring, &st);
        let cfg = FsConfig {
            passthrough: cfg.passthrough && reopen_unlinked,
            ..cfg
        };
        Ok(Self {
            sh: Arc::new(Shared {
                cfg,
                meta,
                caps,
                stats,
                inodes,
                handles: HandleTable::default(),
                dirty: Mutex::new(Rank::DirtySet, HashMap::new()),
                stop: AtomicBool::new(false),
                frozen: AtomicBool::new(false),
                wake: Condvar::new(),
                wake_lock: Mutex::new(Rank::Wake, ()),
                passthrough: AtomicBool::new(false),
                invalidate_attrs: std::sync::OnceLock::new(),
                births,
                fuse_backing: !births,
                sidecar_absent_at: AtomicU64::new(0),
                sidecar: Default::default(),
                recent: Default::default(),
                started: std::time::Instant::now(),
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
            .spawn(move || flusher::flusher(&sh))
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
        // An empty sidecar directory is not left behind (see `Persist::prune`).
        if self.sh.cfg.map_store != MapStore::None
            && let Ok(p) = self.persist()
        {
            p.prune();
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

    fn inode(&self, ino: Ino) -> io::Result<Arc<Inode>> {
        self.sh.inodes.get(ino)
    }

    /// Installs how to drop the kernel's cached attributes of an inode: used when an
    /// open loads a stored map, so that the `st_blocks` the kernel holds from the lookup
    /// (the backend's allocation) give way to the map's (cp decides on the `fstat` after
    /// its open whether to look for holes).
    pub fn set_attr_invalidator(&self, f: AttrInvalidator) {
        let _ = self.sh.invalidate_attrs.set(f);
    }

    /// Whether the mount asks for kernel passthrough (`--no-passthrough` not given, and the
    /// probe found the backend can reopen files unlinked while open).
    pub fn passthrough_wanted(&self) -> bool {
        self.sh.cfg.passthrough
    }

    /// The one switch of kernel passthrough: on when the mount wants it, the probe found
    /// the backend fit, and the kernel granted it (the adapter says so at init); off for
    /// good when registering a backing file is refused (no `CAP_SYS_ADMIN`).
    pub fn set_passthrough(&self, on: bool) {
        let on = on && self.sh.cfg.passthrough;
        self.sh.passthrough.store(on, Relaxed);
    }
}

fn sys_open_path(c: &std::ffi::CStr) -> io::Result<OwnedFd> {
    let cwd = std::fs::File::open(".").map(OwnedFd::from)?;
    let _ = cwd.as_raw_fd();
    sys::openat(cwd.as_fd(), c, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// An aligned `O_DIRECT` write of a pattern at 64 KiB, read back through the ordinary
/// descriptor: the backend takes such writes and shows them at once.
fn probe_direct(f: &FdFile) -> bool {
    let mut buf = sys::AlignedBuf::zeroed(8192);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    if !matches!(f.write_direct_at(&buf, 65536), Ok(true)) {
        return false;
    }
    let mut back = vec![0u8; 8192];
    matches!(f.read_at(&mut back, 65536), Ok(8192)) && back[..] == buf[..]
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

/// What the filesystem of directory `dir` really does with punch and SEEK_DATA, found
/// as a mount finds it (a scratch file written, punched, sought and removed). Nothing
/// is trusted where no scratch file can be made.
pub fn probe_caps(dir: std::os::fd::BorrowedFd<'_>) -> Caps {
    probe_dir(dir).caps
}

fn probe_dir(root: std::os::fd::BorrowedFd<'_>) -> Probed {
    // A name of its own per probe: two threads of one process (send of several files),
    // or two nodes whose processes share a pid, probing one directory must not collide
    // (a probe that cannot make its file assumes the backend can do nothing).
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut made = None;
    for _ in 0..8 {
        let n = PROBES.fetch_add(1, Relaxed);
        let name = std::ffi::CString::new(format!(".sparsefs-probe.{}.{n}", std::process::id()))
            .expect("no NUL");
        match sys::openat(
            root,
            &name,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            0o600,
        ) {
            Ok(fd) => {
                made = Some((name, fd));
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(_) => break,
        }
    }
    let Some((name, fd)) = made else {
        warn!(
            "cannot create a probe file in the backing directory: assuming no punch and no SEEK_DATA"
        );
        return Probed {
            caps: Caps::default(),
            reopen_unlinked: false,
        };
    };
    let f = FdFile::new(File::from(fd));
    let mut caps = probe(&f);
    caps.direct = probe_direct(&f);
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

#[cfg(test)]
mod tests;
