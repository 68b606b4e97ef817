//! The metadata seam: every name, stat, xattr and directory call sparsefs makes on the
//! backend goes through [`MetaBackend`], as every data call goes through
//! [`super::BackendFile`]. [`SysMeta`] is the real one (the `sys` wrappers); [`Counted`]
//! counts each call by kind into [`Stats`], so tests assert a per-operation budget of
//! backend round trips (a create, a lookup, an unlink) without a mount, and `sparsefs
//! stats` shows them.
#![forbid(unsafe_code)]

use crate::fdpool::FdPool;
use crate::stats::{MetaOp, Stats};
use crate::sys::{self, DirSnapshot};
use std::ffi::{CStr, OsStr, OsString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

/// Metadata operations on the backend. Errors are the backend's own, untouched. The
/// calls that are not round trips to the backend (a reopen of a file already open
/// through `/proc`, an `O_PATH` open, closes) are listed here too, so that budgets count
/// what strace counts.
pub trait MetaBackend: Send + Sync {
    /// openat(2) of one name. Errors: `ENOENT`, `EEXIST`, `EACCES`, ...
    fn openat(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        flags: i32,
        mode: u32,
    ) -> io::Result<OwnedFd>;
    /// An open of `/proc/self/fd/N` (a reopen of an `O_PATH` or open fd).
    fn reopen(&self, fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd>;
    /// name_to_handle_at(2) of an fd: its file handle and mount id (see
    /// [`sys::name_to_handle`]). Errors: `EOPNOTSUPP`, `EOVERFLOW`.
    fn name_to_handle(&self, fd: BorrowedFd<'_>) -> io::Result<(sys::FileHandle, u64)>;
    /// name_to_handle_at(2) of one name in `dir` (no fd opened; a final symlink not
    /// followed). Errors: `ENOENT`, `EOPNOTSUPP`, `EOVERFLOW`.
    fn name_to_handle_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> io::Result<(sys::FileHandle, u64)>;
    /// open_by_handle_at(2). Errors: `ESTALE`, `EPERM`.
    fn open_by_handle(
        &self,
        mount: BorrowedFd<'_>,
        h: &sys::FileHandle,
        flags: i32,
    ) -> io::Result<OwnedFd>;
    /// fstat(2) (may be answered from a client's attribute cache).
    fn fstat(&self, fd: BorrowedFd<'_>) -> io::Result<libc::stat>;
    /// statx(2) with `AT_STATX_FORCE_SYNC`: fresh from the backend.
    fn fstat_fresh(&self, fd: BorrowedFd<'_>) -> io::Result<libc::stat>;
    /// fstatat(2) of one name, not following a final symlink.
    fn fstatat(&self, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat>;
    /// mkdirat(2).
    fn mkdirat(&self, dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()>;
    /// mknodat(2).
    fn mknodat(&self, dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()>;
    /// symlinkat(2).
    fn symlinkat(&self, target: &OsStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()>;
    /// readlink of an `O_PATH` fd.
    fn readlink(&self, fd: BorrowedFd<'_>) -> io::Result<OsString>;
    /// unlinkat(2).
    fn unlinkat(&self, dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()>;
    /// renameat2(2).
    fn renameat2(
        &self,
        od: BorrowedFd<'_>,
        on: &CStr,
        nd: BorrowedFd<'_>,
        nn: &CStr,
        flags: u32,
    ) -> io::Result<()>;
    /// A hard link of an `O_PATH` fd.
    fn link(&self, fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()>;
    /// chmod of an `O_PATH` fd.
    fn chmod(&self, fd: BorrowedFd<'_>, mode: u32) -> io::Result<()>;
    /// chown of an `O_PATH` fd (`u32::MAX`: unchanged).
    fn chown(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()>;
    /// utimensat of an `O_PATH` fd.
    fn utimens(
        &self,
        fd: BorrowedFd<'_>,
        times: &[libc::timespec; 2],
        is_symlink: bool,
    ) -> io::Result<()>;
    /// access(2) of an `O_PATH` fd.
    fn access(&self, fd: BorrowedFd<'_>, mask: i32) -> io::Result<()>;
    /// fstatvfs(2).
    fn statvfs(&self, fd: BorrowedFd<'_>) -> io::Result<libc::statvfs>;
    /// fsync(2) of an open fd (directories).
    fn fsync(&self, fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()>;
    /// The next entries of a directory open for reading (see [`sys::read_dir_chunk`]);
    /// `false` at its end.
    fn read_dir_chunk(
        &self,
        dir: BorrowedFd<'_>,
        out: &mut DirSnapshot,
        keep: &mut dyn FnMut(u64, &[u8]) -> Option<u64>,
    ) -> io::Result<bool>;
    /// getxattr (size 0: the size only).
    fn getxattr(&self, fd: BorrowedFd<'_>, name: &CStr, size: usize) -> io::Result<Vec<u8>>;
    /// listxattr (size 0: the size only).
    fn listxattr(&self, fd: BorrowedFd<'_>, size: usize) -> io::Result<Vec<u8>>;
    /// setxattr.
    fn setxattr(&self, fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32)
    -> io::Result<()>;
    /// removexattr.
    fn removexattr(&self, fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()>;
}

/// The real backend: the `sys` wrappers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SysMeta;

impl MetaBackend for SysMeta {
    fn openat(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        flags: i32,
        mode: u32,
    ) -> io::Result<OwnedFd> {
        sys::openat(dir, name, flags, mode)
    }
    fn reopen(&self, fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
        sys::reopen(fd, flags)
    }
    fn name_to_handle(&self, fd: BorrowedFd<'_>) -> io::Result<(sys::FileHandle, u64)> {
        sys::name_to_handle(fd)
    }
    fn name_to_handle_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> io::Result<(sys::FileHandle, u64)> {
        sys::name_to_handle_of(dir, name)
    }
    fn open_by_handle(
        &self,
        mount: BorrowedFd<'_>,
        h: &sys::FileHandle,
        flags: i32,
    ) -> io::Result<OwnedFd> {
        sys::open_by_handle(mount, h, flags)
    }
    fn fstat(&self, fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
        sys::fstat(fd)
    }
    fn fstat_fresh(&self, fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
        sys::fstat_fresh(fd)
    }
    fn fstatat(&self, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
        sys::fstatat_nofollow(dir, name)
    }
    fn mkdirat(&self, dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
        sys::mkdirat(dir, name, mode)
    }
    fn mknodat(&self, dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
        sys::mknodat(dir, name, mode, rdev)
    }
    fn symlinkat(&self, target: &OsStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        sys::symlinkat(target, dir, name)
    }
    fn readlink(&self, fd: BorrowedFd<'_>) -> io::Result<OsString> {
        sys::readlink(fd)
    }
    fn unlinkat(&self, dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
        sys::unlinkat(dir, name, flags)
    }
    fn renameat2(
        &self,
        od: BorrowedFd<'_>,
        on: &CStr,
        nd: BorrowedFd<'_>,
        nn: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        sys::renameat2(od, on, nd, nn, flags)
    }
    fn link(&self, fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        sys::link(fd, dir, name)
    }
    fn chmod(&self, fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
        sys::chmod(fd, mode)
    }
    fn chown(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
        sys::chown(fd, uid, gid)
    }
    fn utimens(
        &self,
        fd: BorrowedFd<'_>,
        times: &[libc::timespec; 2],
        is_symlink: bool,
    ) -> io::Result<()> {
        sys::utimens(fd, times, is_symlink)
    }
    fn access(&self, fd: BorrowedFd<'_>, mask: i32) -> io::Result<()> {
        sys::access(fd, mask)
    }
    fn statvfs(&self, fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
        sys::statvfs(fd)
    }
    fn fsync(&self, fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
        sys::fsync(fd, datasync)
    }
    fn read_dir_chunk(
        &self,
        dir: BorrowedFd<'_>,
        out: &mut DirSnapshot,
        keep: &mut dyn FnMut(u64, &[u8]) -> Option<u64>,
    ) -> io::Result<bool> {
        sys::read_dir_chunk(dir, out, keep)
    }
    fn getxattr(&self, fd: BorrowedFd<'_>, name: &CStr, size: usize) -> io::Result<Vec<u8>> {
        sys::getxattr(fd, name, size)
    }
    fn listxattr(&self, fd: BorrowedFd<'_>, size: usize) -> io::Result<Vec<u8>> {
        sys::listxattr(fd, size)
    }
    fn setxattr(
        &self,
        fd: BorrowedFd<'_>,
        name: &CStr,
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        sys::setxattr(fd, name, value, flags)
    }
    fn removexattr(&self, fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        sys::removexattr(fd, name)
    }
}

/// Counts every call of `inner` by kind (and its errors) into [`Stats`]; with a pool, an
/// open that fails with `EMFILE`/`ENFILE` has the pool close idle fds and is tried once
/// more (nothing was opened or created by the failed call: the kernel takes the fd
/// number before it looks up the name).
pub struct Counted<M> {
    inner: M,
    stats: Arc<Stats>,
    pool: Option<Arc<FdPool>>,
}

impl<M> Counted<M> {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: M, stats: Arc<Stats>) -> Self {
        Self {
            inner,
            stats,
            pool: None,
        }
    }

    /// Opens that run out of fds ask `pool` to close idle ones and try again once.
    #[must_use]
    pub fn with_relief(mut self, pool: Arc<FdPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    fn count<T>(&self, op: MetaOp, r: io::Result<T>) -> io::Result<T> {
        self.stats.meta_call(op, r.is_ok());
        r
    }

    /// `open` counted as `op`, tried once more after the pool's relief on `EMFILE`.
    fn opening(&self, op: MetaOp, open: impl Fn() -> io::Result<OwnedFd>) -> io::Result<OwnedFd> {
        let r = open();
        if let (Err(e), Some(pool)) = (&r, &self.pool)
            && matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
            && pool.relieve()
        {
            self.stats.meta_call(op, false);
            return self.count(op, open());
        }
        self.count(op, r)
    }
}

impl<M: MetaBackend> MetaBackend for Counted<M> {
    fn openat(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        flags: i32,
        mode: u32,
    ) -> io::Result<OwnedFd> {
        self.opening(MetaOp::Open, || self.inner.openat(dir, name, flags, mode))
    }
    fn reopen(&self, fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
        self.opening(MetaOp::Reopen, || self.inner.reopen(fd, flags))
    }
    fn name_to_handle(&self, fd: BorrowedFd<'_>) -> io::Result<(sys::FileHandle, u64)> {
        self.count(MetaOp::Handle, self.inner.name_to_handle(fd))
    }
    fn name_to_handle_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> io::Result<(sys::FileHandle, u64)> {
        self.count(MetaOp::Handle, self.inner.name_to_handle_at(dir, name))
    }
    fn open_by_handle(
        &self,
        mount: BorrowedFd<'_>,
        h: &sys::FileHandle,
        flags: i32,
    ) -> io::Result<OwnedFd> {
        self.opening(MetaOp::Handle, || {
            self.inner.open_by_handle(mount, h, flags)
        })
    }
    fn fstat(&self, fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
        self.count(MetaOp::Stat, self.inner.fstat(fd))
    }
    fn fstat_fresh(&self, fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
        self.count(MetaOp::Stat, self.inner.fstat_fresh(fd))
    }
    fn fstatat(&self, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
        self.count(MetaOp::Stat, self.inner.fstatat(dir, name))
    }
    fn mkdirat(&self, dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
        self.count(MetaOp::Create, self.inner.mkdirat(dir, name, mode))
    }
    fn mknodat(&self, dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
        self.count(MetaOp::Create, self.inner.mknodat(dir, name, mode, rdev))
    }
    fn symlinkat(&self, target: &OsStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        self.count(MetaOp::Create, self.inner.symlinkat(target, dir, name))
    }
    fn readlink(&self, fd: BorrowedFd<'_>) -> io::Result<OsString> {
        self.count(MetaOp::Readlink, self.inner.readlink(fd))
    }
    fn unlinkat(&self, dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
        self.count(MetaOp::Unlink, self.inner.unlinkat(dir, name, flags))
    }
    fn renameat2(
        &self,
        od: BorrowedFd<'_>,
        on: &CStr,
        nd: BorrowedFd<'_>,
        nn: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.count(MetaOp::Rename, self.inner.renameat2(od, on, nd, nn, flags))
    }
    fn link(&self, fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        self.count(MetaOp::Create, self.inner.link(fd, dir, name))
    }
    fn chmod(&self, fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
        self.count(MetaOp::Setattr, self.inner.chmod(fd, mode))
    }
    fn chown(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
        self.count(MetaOp::Setattr, self.inner.chown(fd, uid, gid))
    }
    fn utimens(
        &self,
        fd: BorrowedFd<'_>,
        times: &[libc::timespec; 2],
        is_symlink: bool,
    ) -> io::Result<()> {
        self.count(MetaOp::Setattr, self.inner.utimens(fd, times, is_symlink))
    }
    fn access(&self, fd: BorrowedFd<'_>, mask: i32) -> io::Result<()> {
        self.count(MetaOp::Stat, self.inner.access(fd, mask))
    }
    fn statvfs(&self, fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
        self.count(MetaOp::Statfs, self.inner.statvfs(fd))
    }
    fn fsync(&self, fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
        self.count(MetaOp::Fsync, self.inner.fsync(fd, datasync))
    }
    fn read_dir_chunk(
        &self,
        dir: BorrowedFd<'_>,
        out: &mut DirSnapshot,
        keep: &mut dyn FnMut(u64, &[u8]) -> Option<u64>,
    ) -> io::Result<bool> {
        self.count(MetaOp::Readdir, self.inner.read_dir_chunk(dir, out, keep))
    }
    fn getxattr(&self, fd: BorrowedFd<'_>, name: &CStr, size: usize) -> io::Result<Vec<u8>> {
        self.count(MetaOp::Xattr, self.inner.getxattr(fd, name, size))
    }
    fn listxattr(&self, fd: BorrowedFd<'_>, size: usize) -> io::Result<Vec<u8>> {
        self.count(MetaOp::Xattr, self.inner.listxattr(fd, size))
    }
    fn setxattr(
        &self,
        fd: BorrowedFd<'_>,
        name: &CStr,
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        self.count(MetaOp::Xattr, self.inner.setxattr(fd, name, value, flags))
    }
    fn removexattr(&self, fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        self.count(MetaOp::Xattr, self.inner.removexattr(fd, name))
    }
}
