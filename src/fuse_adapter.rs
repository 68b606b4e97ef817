//! The thin fuser adapter: decodes each request, calls the core ([`SparseFs`]), replies,
//! and logs errors. The only module that sees fuser's `Request`/`Reply` types.

use crate::fs::{Caller, Fh, Ino, MakeToken, Opened, PassToken, SetAttr, SparseFs};
use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, error};

const TTL: Duration = Duration::from_secs(1);

/// Logs a failed operation and replies with its errno. Errors without an errno are bugs.
macro_rules! fail {
    ($op:expr, $reply:expr, $e:expr) => {{
        let e: io::Error = $e;
        match e.raw_os_error() {
            Some(code) => {
                if code == libc::EMFILE || code == libc::ENFILE {
                    warn_fd_limit();
                }
                debug!(op = $op, errno = code, "{}", e);
                $reply.error(Errno::from_i32(code));
            }
            None => {
                error!(op = $op, "error without errno: {}", e);
                $reply.error(Errno::EIO);
            }
        }
    }};
}

/// Adapts [`SparseFs`] to fuser.
pub struct Adapter {
    fs: Arc<SparseFs>,
    /// The kernel granted FUSE passthrough and registering backing files works.
    passthrough: std::sync::atomic::AtomicBool,
}

impl Adapter {
    /// Wraps the core.
    pub fn new(fs: Arc<SparseFs>) -> Self {
        Self {
            fs,
            passthrough: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Registers a backend file with the kernel for a passthrough open. Without the
    /// privilege (the ioctl needs CAP_SYS_ADMIN) passthrough is off for the mount.
    fn open_backing(
        &self,
        fd: BorrowedFd<'_>,
        reg: impl FnOnce(BorrowedFd<'_>) -> io::Result<BackingId>,
    ) -> io::Result<PassToken> {
        match reg(fd) {
            Ok(b) => Ok(Arc::new(b)),
            Err(e) => {
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOTTY)
                ) {
                    self.passthrough
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(error = %e, "kernel passthrough unavailable: every read goes through the daemon");
                }
                Err(e)
            }
        }
    }
}

/// The backing file registration behind a passthrough handle.
fn backing(o: &Opened) -> Option<&BackingId> {
    o.passthrough
        .as_ref()
        .and_then(|t| t.downcast_ref::<BackingId>())
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs((-sec) as u64) + Duration::from_nanos(nsec as u64)
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dt_kind(dt: u8) -> FileType {
    match dt {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn attr(st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: time(st.st_ctime, st.st_ctime_nsec),
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The attributes given for `.`/`..` and vanished entries (no lookup is taken).
fn dot_stat(dt: u8) -> libc::stat {
    let mut st = crate::sys::zeroed_stat();
    st.st_mode = (dt as u32) << 12;
    st
}

fn ts(t: Option<TimeOrNow>) -> Option<Option<libc::timespec>> {
    t.map(|t| match t {
        TimeOrNow::Now => None,
        TimeOrNow::SpecificTime(st) => Some(match st.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if n < 0 {
                    s -= 1;
                    n += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: s,
                    tv_nsec: n,
                }
            }
        }),
    })
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn open_flags(flags: OpenFlags) -> i32 {
    flags.0
}

/// Warns (at most every 10 s) that the daemon ran out of file descriptors: every inode
/// the kernel remembers holds one, so huge trees need a higher limit.
fn warn_fd_limit() {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        tracing::warn!(
            "out of file descriptors (one per inode in use): raise the daemon's RLIMIT_NOFILE \
             (LimitNOFILE= in systemd, fs.nr_open for root) or vm.vfs_cache_pressure"
        );
    }
}

impl Adapter {
    /// Open-reply flags of a file open: see [`SparseFs::bypass_page_cache`].
    fn fopen(&self, flags: i32) -> FopenFlags {
        if self.fs.bypass_page_cache(flags) {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }
}

/// Entries in the first readdirplus reply of a listing: `.` and `..` only.
const RDPLUS_FIRST_BATCH: usize = 2;

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(128 << 10);
        // Kernel passthrough (read-only opens of dense files, see SparseFs::open): needs
        // a stacking depth of 1 (the backend may not itself be a stacked filesystem).
        if self.fs.passthrough_wanted()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // readdirplus when the kernel finds it useful (ls -l), plain readdir otherwise
        // (ls -f of a huge directory); directory operations may run in parallel.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Direct-I/O opens (write-only streams) stay coherent with mmap users: the
            // kernel writes dirty mapped pages back before a direct write.
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.fs.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(Ino(parent.0), name) {
            Ok(e) => reply.entry(&TTL, &attr(&e.attr), Generation(e.generation)),
            Err(e) => fail!("lookup", reply, e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(Ino(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(Ino(ino.0)) {
            Ok(st) => reply.attr(&TTL, &attr(&st)),
            Err(e) => fail!("getattr", reply, e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: ts(atime),
            mtime: ts(mtime),
        };
        match self.fs.setattr(Ino(ino.0), a) {
            Ok(st) => reply.attr(&TTL, &attr(&st)),
            Err(e) => fail!("setattr", reply, e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(t.as_encoded_bytes()),
            Err(e) => fail!("readlink", reply, e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self
            .fs
            .mknod(Ino(parent.0), name, mode, umask, rdev, caller(req))
        {
            Ok(e) => reply.entry(&TTL, &attr(&e.attr), Generation(e.generation)),
            Err(e) => fail!("mknod", reply, e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.fs.mkdir(Ino(parent.0), name, mode, umask, caller(req)) {
            Ok(e) => reply.entry(&TTL, &attr(&e.attr), Generation(e.generation)),
            Err(e) => fail!("mkdir", reply, e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.unlink(Ino(parent.0), name) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("unlink", reply, e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.rmdir(Ino(parent.0), name) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("rmdir", reply, e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self
            .fs
            .symlink(Ino(parent.0), link_name, target, caller(req))
        {
            Ok(e) => reply.entry(&TTL, &attr(&e.attr), Generation(e.generation)),
            Err(e) => fail!("symlink", reply, e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .fs
            .rename(Ino(parent.0), name, Ino(newparent.0), newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => fail!("rename", reply, e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.fs.link(Ino(ino.0), Ino(newparent.0), newname) {
            Ok(e) => reply.entry(&TTL, &attr(&e.attr), Generation(e.generation)),
            Err(e) => fail!("link", reply, e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fl = open_flags(flags);
        let r = {
            let make = |fd: BorrowedFd<'_>| self.open_backing(fd, |fd| reply.open_backing(fd));
            let pt = self.passthrough.load(std::sync::atomic::Ordering::Relaxed);
            self.fs
                .open(Ino(ino.0), fl, pt.then_some(&make as MakeToken<'_>))
        };
        match r {
            Ok(o) => match backing(&o) {
                Some(b) => reply.opened_passthrough(FileHandle(o.fh.0), FopenFlags::empty(), b),
                None => reply.opened(FileHandle(o.fh.0), self.fopen(fl)),
            },
            Err(e) => fail!("open", reply, e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(Fh(fh.0), offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => fail!("read", reply, e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        wf: WriteFlags,
        flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let clear_setid = wf.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self
            .fs
            .write(Ino(ino.0), Fh(fh.0), offset, data, flags.0, clear_setid)
        {
            Ok(w) => {
                reply.written(w.n);
                if let Some(then) = w.then {
                    then.run();
                }
            }
            Err(e) => fail!("write", reply, e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.fs.flush(Fh(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("flush", reply, e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.release(Fh(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => {
                error!(fh = fh.0, error = %e, "flush at release failed");
                fail!("release", reply, e)
            }
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsync(Fh(fh.0), datasync) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("fsync", reply, e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(Ino(ino.0)) {
            Ok((fh, c)) => {
                let mut f = FopenFlags::empty();
                if c.cache {
                    f |= FopenFlags::FOPEN_CACHE_DIR;
                }
                if c.keep {
                    f |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                reply.opened(FileHandle(fh.0), f)
            }
            Err(e) => fail!("opendir", reply, e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(Fh(fh.0)) {
            Ok(entries) => {
                for (i, e) in entries.iter_from(offset as usize) {
                    if reply.add(INodeNo(e.ino), (i + 1) as u64, dt_kind(e.kind), e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => fail!("readdir", reply, e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.fs.readdir(Fh(fh.0)) {
            Ok(entries) => {
                // The kernel (READDIRPLUS_AUTO) asks for the first batch of every listing
                // with attributes, also for `ls -f` or `find` that never look at them, and
                // each costs a backend lookup (0.4 ms per cold inode here; a round trip on
                // a networked backend). So the first reply carries only `.` and `..`; the
                // kernel then asks with attributes only once the caller stats entries
                // while reading (it sets FUSE_I_ADVISE_RDPLUS on lookups).
                let limit = if offset == 0 {
                    RDPLUS_FIRST_BATCH
                } else {
                    usize::MAX
                };
                let mut sent = 0usize;
                for (i, e) in entries.iter_from(offset as usize).take(limit) {
                    let looked = match self.fs.lookup_entry(Ino(ino.0), &e) {
                        Ok(l) => l,
                        // Never an entry with made-up attributes: stop the batch here
                        // (the kernel asks again from this entry) or fail it if empty.
                        Err(err) if sent == 0 => {
                            fail!("readdirplus", reply, err);
                            return;
                        }
                        Err(_) => break,
                    };
                    let is_dot = e.name == "." || e.name == "..";
                    let (node, generation, st) = match &looked {
                        Some(l) => (l.ino.0, l.generation, attr(&l.attr)),
                        // `.`/`..` carry no attributes the kernel uses.
                        None if is_dot => {
                            let mut a = attr(&dot_stat(e.kind));
                            a.ino = INodeNo(e.ino);
                            (0, 0, a)
                        }
                        // Vanished since the snapshot: left out.
                        None => continue,
                    };
                    if reply.add(
                        INodeNo(node),
                        (i + 1) as u64,
                        e.name,
                        &TTL,
                        &st,
                        Generation(generation),
                    ) {
                        // Did not fit: the kernel never saw it, so undo its lookup.
                        if looked.is_some() {
                            self.fs.forget(Ino(node), 1);
                        }
                        break;
                    }
                    sent += 1;
                }
                reply.ok();
            }
            Err(e) => fail!("readdirplus", reply, e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(Fh(fh.0));
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsyncdir(Ino(ino.0), datasync) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("fsyncdir", reply, e),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs(Ino(ino.0)) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => fail!("statfs", reply, e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.fs.setxattr(Ino(ino.0), name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("setxattr", reply, e),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(Ino(ino.0), name, size, caller(req)) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => fail!("getxattr", reply, e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(Ino(ino.0), size) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => fail!("listxattr", reply, e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.removexattr(Ino(ino.0), name) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("removexattr", reply, e),
        }
    }

    /// No ioctl is passed on: ENOTTY, as a local file answers the ioctls that reach a
    /// filesystem (Python's `open` asks TCGETS of every file it opens; fuser's default
    /// answers ENOSYS and logs a warning each time).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(Ino(ino.0), mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("access", reply, e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .fs
            .create(Ino(parent.0), name, mode, umask, flags, caller(req))
        {
            Ok((en, o)) => match backing(&o) {
                Some(b) => reply.created_passthrough(
                    &TTL,
                    &attr(&en.attr),
                    Generation(en.generation),
                    FileHandle(o.fh.0),
                    FopenFlags::empty(),
                    b,
                ),
                None => reply.created(
                    &TTL,
                    &attr(&en.attr),
                    Generation(en.generation),
                    FileHandle(o.fh.0),
                    self.fopen(flags),
                ),
            },
            Err(e) => fail!("create", reply, e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.fs.fallocate(Fh(fh.0), offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("fallocate", reply, nosys_to_notsup(e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(Fh(fh.0), offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => fail!("lseek", reply, nosys_to_notsup(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self.fs.copy_file_range(
            Fh(fh_in.0),
            offset_in,
            Ino(ino_out.0),
            Fh(fh_out.0),
            offset_out,
            len,
        ) {
            Ok(n) => reply.written(n),
            Err(e) => fail!("copy_file_range", reply, nosys_to_notsup(e)),
        }
    }
}

/// ENOSYS would switch the operation off for the whole mount: never send it.
fn nosys_to_notsup(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ENOSYS) {
        io::Error::from_raw_os_error(libc::EOPNOTSUPP)
    } else {
        e
    }
}
