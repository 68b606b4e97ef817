//! The thin fuser adapter: decodes each request, calls the core ([`SparseFs`]), replies,
//! and logs errors. The only module that sees fuser's `Request`/`Reply` types.

use crate::fs::{Caller, Fh, Ino, MakeToken, Opened, PassToken, SetAttr, SparseFs};
use crate::metrics::FuseOp;
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
                $crate::metrics::note_error(code);
                $reply.error(Errno::from_i32(code));
            }
            None => {
                error!(op = $op, "error without errno: {}", e);
                $crate::metrics::note_error(libc::EIO);
                $reply.error(Errno::EIO);
            }
        }
    }};
}

mod convert;
// After `fail!`: macros are visible to the modules declared below them.
mod dirplus;

use convert::*;

/// Adapts [`SparseFs`] to fuser.
pub struct Adapter {
    fs: Arc<SparseFs>,
    /// Largest FUSE write (and read) request asked of the kernel.
    max_write: u32,
}

impl Adapter {
    /// Wraps the core (FUSE requests of at most 1 MiB).
    pub fn new(fs: Arc<SparseFs>) -> Self {
        Self {
            fs,
            max_write: 1 << 20,
        }
    }

    /// Asks the kernel for requests of up to `bytes` (it also caps them at
    /// `fs.fuse.max_pages_limit` pages).
    pub fn max_write(mut self, bytes: u32) -> Self {
        self.max_write = bytes;
        self
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
                    self.fs.set_passthrough(false);
                    tracing::info!(error = %e, "kernel passthrough unavailable: every read goes through the daemon");
                }
                Err(e)
            }
        }
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

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(self.max_write);
        let _ = config.set_max_readahead(128 << 10);
        // Kernel passthrough (read-only opens of dense files, see SparseFs::open): needs
        // a stacking depth of 1 (the backend may not itself be a stacked filesystem).
        if self.fs.passthrough_wanted()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.fs.set_passthrough(true);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Lookup);
        match self.fs.lookup(Ino(parent.0), name) {
            Ok(e) => reply.entry(&TTL, &attr(&e.attr), Generation(e.generation)),
            Err(e) => fail!("lookup", reply, e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Forget);
        self.fs.forget(Ino(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Getattr);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Setattr);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Readlink);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Mknod);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Mkdir);
        match self.fs.mkdir(Ino(parent.0), name, mode, umask, caller(req)) {
            Ok(e) => reply.entry(&TTL, &attr(&e.attr), Generation(e.generation)),
            Err(e) => fail!("mkdir", reply, e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Unlink);
        match self.fs.unlink(Ino(parent.0), name) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("unlink", reply, e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Rmdir);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Symlink);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Rename);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Link);
        match self.fs.link(Ino(ino.0), Ino(newparent.0), newname) {
            Ok(e) => reply.entry(&TTL, &attr(&e.attr), Generation(e.generation)),
            Err(e) => fail!("link", reply, e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Open);
        let fl = open_flags(flags);
        let r = {
            // Registration needs this request's reply; the core decides whether to ask.
            let make = |fd: BorrowedFd<'_>| self.open_backing(fd, |fd| reply.open_backing(fd));
            self.fs.open(Ino(ino.0), fl, Some(&make as MakeToken<'_>))
        };
        match r {
            Ok(o) => match backing(&o) {
                Some(b) => reply.opened_passthrough(FileHandle(o.fh.0), FopenFlags::empty(), b),
                None => {
                    let mut f = self.fopen(fl);
                    if o.keep_cache {
                        f |= FopenFlags::FOPEN_KEEP_CACHE;
                    }
                    reply.opened(FileHandle(o.fh.0), f)
                }
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Read);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Write);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Flush);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Release);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Fsync);
        match self.fs.fsync(Fh(fh.0), datasync) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("fsync", reply, e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Opendir);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Readdir);
        // More than a reply holds (a page of short names), so that a reply is full.
        match self.fs.readdir(Fh(fh.0), offset as usize, 512) {
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
        reply: ReplyDirectoryPlus,
    ) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Readdirplus);
        self.send_dir_plus(ino, fh, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Releasedir);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Fsyncdir);
        match self.fs.fsyncdir(Ino(ino.0), datasync) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("fsyncdir", reply, e),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Statfs);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Setxattr);
        match self.fs.setxattr(Ino(ino.0), name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => fail!("setxattr", reply, e),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Getxattr);
        match self.fs.getxattr(Ino(ino.0), name, size, caller(req)) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => fail!("getxattr", reply, e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Listxattr);
        match self.fs.listxattr(Ino(ino.0), size) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => fail!("listxattr", reply, e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Removexattr);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Ioctl);
        crate::metrics::note_error(libc::ENOTTY);
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _t = self.fs.stats().fuse.timer(FuseOp::Access);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Create);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Fallocate);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::Lseek);
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
        let _t = self.fs.stats().fuse.timer(FuseOp::CopyFileRange);
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
