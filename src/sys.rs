//! Safe wrappers for the *at-family syscalls sparsefs resolves everything with: names
//! are always single components relative to a directory fd, never joined paths.
// The one module with `unsafe` (the crate denies it elsewhere): every syscall wrapper,
// each block with its SAFETY line.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_retry(mut f: impl FnMut() -> libc::c_int) -> io::Result<libc::c_int> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Checks that `name` is one path component: not empty, no `/`, not `.` or `..`, no NUL.
///
/// # Errors
/// `EINVAL` for a name that is not a single component (`..` included), `ENAMETOOLONG`
/// past 255 bytes.
pub fn component(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if b.len() > 255 {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The `/proc/self/fd/N` path of an fd, to reopen or act on an `O_PATH` fd.
pub fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL")
}

/// Safe wrapper for openat(2).
///
/// # Errors
/// The errno of openat.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let _io = crate::lock::io("openat");
    let fd = cvt_retry(|| {
        // SAFETY: name is a valid C string; the returned fd is owned below.
        unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode,
            )
        }
    })?;
    // SAFETY: openat returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reopens an `O_PATH` fd with real access `flags` through `/proc/self/fd`.
///
/// # Errors
/// The errno of open.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let _io = crate::lock::io("reopen");
    let p = proc_path(fd.as_raw_fd());
    let r = cvt_retry(|| {
        // SAFETY: p is a valid C string.
        unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) }
    })?;
    // SAFETY: open returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// fstatat(2) of `name` in `dir`, not following a final symlink.
///
/// # Errors
/// The errno of fstatat.
pub fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let _io = crate::lock::io("fstatat_nofollow");
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is valid for writes; name is a valid C string.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so st is initialised.
    Ok(unsafe { st.assume_init() })
}

/// Safe wrapper for fstatat(2) with `AT_EMPTY_PATH` (stat of the fd itself).
///
/// # Errors
/// The errno of fstatat.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let _io = crate::lock::io("fstat");
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is valid for writes; the empty string is a valid C string.
    cvt(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so st is initialised.
    Ok(unsafe { st.assume_init() })
}

/// Safe wrapper for mkdirat(2).
///
/// # Errors
/// The errno of mkdirat.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    let _io = crate::lock::io("mkdirat");
    // SAFETY: valid C string.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// Safe wrapper for mknodat(2).
///
/// # Errors
/// The errno of mknodat.
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    let _io = crate::lock::io("mknodat");
    // SAFETY: valid C string.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

/// Safe wrapper for symlinkat(2).
///
/// # Errors
/// The errno of symlinkat.
pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let _io = crate::lock::io("symlinkat");
    let t =
        CString::new(target.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C strings.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// Safe wrapper for readlinkat(2) on an `O_PATH` fd of a symlink.
///
/// # Errors
/// The errno of readlinkat.
pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<OsString> {
    let _io = crate::lock::io("readlink");
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// Safe wrapper for unlinkat(2).
///
/// # Errors
/// The errno of unlinkat.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    let _io = crate::lock::io("unlinkat");
    // SAFETY: valid C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// Safe wrapper for renameat2(2).
///
/// # Errors
/// The errno of renameat2.
pub fn renameat2(
    od: BorrowedFd<'_>,
    on: &CStr,
    nd: BorrowedFd<'_>,
    nn: &CStr,
    flags: u32,
) -> io::Result<()> {
    let _io = crate::lock::io("renameat2");
    // SAFETY: valid C strings.
    cvt(unsafe {
        libc::renameat2(
            od.as_raw_fd(),
            on.as_ptr(),
            nd.as_raw_fd(),
            nn.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// Hard-links the file behind an `O_PATH` fd as `name` in `dir`.
///
/// # Errors
/// The errno of linkat.
pub fn link(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let _io = crate::lock::io("link");
    // SAFETY: valid C strings; AT_EMPTY_PATH links the fd's inode itself.
    let r = cvt(unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    });
    match r {
        // Without CAP_DAC_READ_SEARCH, go through /proc.
        Err(e)
            if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::EPERM) =>
        {
            let p = proc_path(fd.as_raw_fd());
            // SAFETY: valid C strings.
            cvt(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            })
            .map(drop)
        }
        r => r.map(drop),
    }
}

/// chmod of the file behind an `O_PATH` fd.
///
/// # Errors
/// The errno of chmod.
pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let _io = crate::lock::io("chmod");
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: valid C string.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode) }).map(drop)
}

/// lchown of the file behind an `O_PATH` fd (`u32::MAX` leaves an id unchanged).
///
/// # Errors
/// The errno of fchownat.
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    let _io = crate::lock::io("chown");
    // SAFETY: valid C string.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// utimensat of the file behind an `O_PATH` fd. `times` as for utimensat(2).
///
/// # Errors
/// The errno of utimensat.
pub fn utimens(
    fd: BorrowedFd<'_>,
    times: &[libc::timespec; 2],
    is_symlink: bool,
) -> io::Result<()> {
    let _io = crate::lock::io("utimens");
    if is_symlink {
        // SAFETY: valid C string; times points at two timespecs.
        return cvt(unsafe {
            libc::utimensat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                times.as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop);
    }
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: valid C string; times points at two timespecs.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

/// faccessat on the file behind an `O_PATH` fd.
///
/// # Errors
/// The errno of access.
pub fn access(fd: BorrowedFd<'_>, mask: i32) -> io::Result<()> {
    let _io = crate::lock::io("access");
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: valid C string.
    cvt(unsafe { libc::access(p.as_ptr(), mask) }).map(drop)
}

/// Safe wrapper for fstatvfs(2).
///
/// # Errors
/// The errno of fstatvfs.
pub fn statvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let _io = crate::lock::io("statvfs");
    // fstatfs works on O_PATH fds (Linux 3.12+) of any file type: no reopen.
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: st is valid for writes.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful call.
    Ok(unsafe { st.assume_init() })
}

/// fsync(2) / fdatasync(2) on an open fd.
///
/// # Errors
/// The errno of fsync.
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    let _io = crate::lock::io("fsync");
    // SAFETY: plain syscall on a borrowed fd.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// One directory entry of a [`DirSnapshot`].
#[derive(Clone, Copy, Debug)]
pub struct DirEntry<'a> {
    /// Inode number (as the snapshot's maker chose to show it).
    pub ino: u64,
    /// `DT_*` type.
    pub kind: u8,
    /// Name.
    pub name: &'a OsStr,
}

/// The entries of a directory, in order, with all names in one buffer: two allocations
/// per snapshot instead of one per entry (a 50k-entry listing spent a sixth of the
/// daemon's time in malloc/free).
#[derive(Debug, Default)]
pub struct DirSnapshot {
    names: Vec<u8>,
    /// (ino, kind, end of the name in `names`); a name starts where the previous ends.
    ents: Vec<(u64, u8, usize)>,
}

impl DirSnapshot {
    /// Appends an entry.
    pub fn push(&mut self, ino: u64, kind: u8, name: &[u8]) {
        self.names.extend_from_slice(name);
        self.ents.push((ino, kind, self.names.len()));
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.ents.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ents.is_empty()
    }

    /// The entries from index `from` on.
    pub fn iter_from(&self, from: usize) -> impl Iterator<Item = (usize, DirEntry<'_>)> {
        (from..self.ents.len()).map(move |i| (i, self.get(i)))
    }

    fn get(&self, i: usize) -> DirEntry<'_> {
        let (ino, kind, end) = self.ents[i];
        let start = if i == 0 { 0 } else { self.ents[i - 1].2 };
        DirEntry {
            ino,
            kind,
            name: OsStr::from_bytes(&self.names[start..end]),
        }
    }
}

/// Reads a whole directory from an `O_PATH` fd of it, without `.`/`..`, into `out`:
/// `keep(backing ino, name)` gives the inode number to show, or `None` to leave the
/// entry out.
///
/// # Errors
/// The errno of open/getdents.
pub fn read_dir_into(
    fd: BorrowedFd<'_>,
    out: &mut DirSnapshot,
    mut keep: impl FnMut(u64, &[u8]) -> Option<u64>,
) -> io::Result<()> {
    let _io = crate::lock::io("read_dir_into");
    let d = reopen(fd, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                d.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        let mut pos = 0usize;
        while pos < n as usize {
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name NUL-terminated.
            let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().expect("8 bytes"));
            let reclen =
                u16::from_ne_bytes(buf[pos + 16..pos + 18].try_into().expect("2 bytes")) as usize;
            let kind = buf[pos + 18];
            let name_bytes = &buf[pos + 19..pos + reclen];
            let len = name_bytes
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(name_bytes.len());
            let name = &name_bytes[..len];
            if name != b"."
                && name != b".."
                && let Some(ino) = keep(ino, name)
            {
                out.push(ino, kind, name);
            }
            pos += reclen;
        }
    }
    Ok(())
}

fn xattr_path(fd: BorrowedFd<'_>) -> CString {
    proc_path(fd.as_raw_fd())
}

fn size_or_err(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// getxattr on the file behind an `O_PATH` fd; `size == 0` asks for the length.
///
/// # Errors
/// The errno of getxattr (`ENODATA`, `ERANGE`, `ENOTSUP`).
pub fn getxattr(fd: BorrowedFd<'_>, name: &CStr, size: usize) -> io::Result<Vec<u8>> {
    let _io = crate::lock::io("getxattr");
    let p = xattr_path(fd);
    // SAFETY: the buffer pointer is valid for `len` bytes (null with 0 asks the length).
    sized_call(size, |buf, len| unsafe {
        libc::getxattr(p.as_ptr(), name.as_ptr(), buf, len)
    })
}

/// listxattr; `size == 0` asks for the length.
///
/// # Errors
/// The errno of listxattr.
pub fn listxattr(fd: BorrowedFd<'_>, size: usize) -> io::Result<Vec<u8>> {
    let _io = crate::lock::io("listxattr");
    let p = xattr_path(fd);
    // SAFETY: the buffer pointer is valid for `len` bytes (null with 0 asks the length).
    sized_call(size, |buf, len| unsafe {
        libc::listxattr(p.as_ptr(), buf.cast(), len)
    })
}

/// Runs a "fill a buffer of `size` bytes, or tell the length when `size` is 0" call.
fn sized_call(
    size: usize,
    call: impl FnOnce(*mut libc::c_void, usize) -> isize,
) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    let n = size_or_err(call(ptr, size))?;
    if size == 0 {
        return Ok(vec![0u8; n]);
    }
    buf.truncate(n);
    Ok(buf)
}

/// setxattr.
///
/// # Errors
/// The errno of setxattr.
pub fn setxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let _io = crate::lock::io("setxattr");
    let p = xattr_path(fd);
    // SAFETY: value is valid for value.len() bytes.
    cvt(unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// removexattr.
///
/// # Errors
/// The errno of removexattr.
pub fn removexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let _io = crate::lock::io("removexattr");
    let p = xattr_path(fd);
    // SAFETY: valid C strings.
    cvt(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) }).map(drop)
}

/// Switches this thread's filesystem uid/gid for the guard's lifetime (creation ops
/// made on behalf of a caller, so new files belong to the caller).
pub struct FsIds {
    uid: u32,
    gid: u32,
}

impl FsIds {
    /// Sets fsuid/fsgid of the calling thread only (raw syscalls: glibc would not
    /// broadcast them, and must not).
    pub fn switch(uid: u32, gid: u32) -> Self {
        // SAFETY: per-thread credential syscalls; they cannot fail in a way that matters
        // (an unchanged id shows up as EACCES/EPERM from the operation itself).
        let old_gid = unsafe { libc::syscall(libc::SYS_setfsgid, gid) } as u32;
        // SAFETY: as above.
        let old_uid = unsafe { libc::syscall(libc::SYS_setfsuid, uid) } as u32;
        Self {
            uid: old_uid,
            gid: old_gid,
        }
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        // SAFETY: restores the ids saved at switch.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, self.uid);
            libc::syscall(libc::SYS_setfsgid, self.gid);
        }
    }
}

/// Raises RLIMIT_NOFILE as far as allowed: to `fs.nr_open` when the process may raise its
/// hard limit (root, CAP_SYS_RESOURCE), else to the hard limit. Every inode the kernel
/// remembers holds one O_PATH fd, so this bounds the inodes in use. Returns the new soft
/// limit.
pub fn raise_nofile() -> u64 {
    let Some(mut r) = nofile() else {
        return 0;
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if nr_open > r.rlim_max {
        let up = libc::rlimit {
            rlim_cur: nr_open,
            rlim_max: nr_open,
        };
        // SAFETY: up is a valid rlimit; fails harmlessly without CAP_SYS_RESOURCE.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &up) } == 0 {
            return nr_open;
        }
    }
    r.rlim_cur = r.rlim_max;
    // SAFETY: r is a valid rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    r.rlim_cur
}

fn nofile() -> Option<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is valid for writes.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r)
}

/// The soft RLIMIT_NOFILE (1024 if it cannot be read).
pub fn nofile_limit() -> u64 {
    nofile().map_or(1024, |r| r.rlim_cur)
}

/// Turns a C string into an `OsStr` view.
pub fn os(c: &CStr) -> &OsStr {
    OsStr::from_bytes(c.to_bytes())
}

/// Blocks `sigs` in the calling thread (and the threads it starts later), so that one
/// thread can take them with [`wait_signal`].
pub fn block_signals(sigs: &[i32]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: set is initialised by sigemptyset before use; pthread_sigmask reads it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &s in sigs {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        set.assume_init()
    }
}

/// Waits for one of the blocked signals in `set`.
pub fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: set is a valid sigset, sig valid for writes.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// Waits up to `timeout` for one of the blocked signals in `set` (sigtimedwait).
pub fn wait_signal_timeout(set: &libc::sigset_t, timeout: std::time::Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: set and ts are valid; no siginfo is asked for.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

/// Safe wrapper for kill(2).
///
/// # Errors
/// `ESRCH` (no such process), `EPERM`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Mounts the FUSE control filesystem at /sys/fs/fuse/connections (root only).
///
/// # Errors
/// The errno of mount(2); `EBUSY` if it is mounted already.
pub fn mount_fusectl() -> io::Result<()> {
    // SAFETY: valid C strings; no data.
    cvt(unsafe {
        libc::mount(
            c"fusectl".as_ptr(),
            c"/sys/fs/fuse/connections".as_ptr(),
            c"fusectl".as_ptr(),
            0,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// fork(2). Only call while the process has a single thread.
///
/// # Errors
/// The errno of fork.
pub fn fork() -> io::Result<Option<i32>> {
    // SAFETY: the caller guarantees no other thread exists, so the child is consistent.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// pipe2(O_CLOEXEC): (read end, write end).
///
/// # Errors
/// The errno of pipe2.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is valid for two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts a new session (detaches from the terminal).
pub fn setsid() {
    // SAFETY: plain syscall.
    unsafe { libc::setsid() };
}

/// Points stdin and stdout at /dev/null, and stderr at `log` (or /dev/null).
pub fn redirect_stdio(log: Option<BorrowedFd<'_>>) {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let n = null.as_raw_fd();
    // SAFETY: dup2 onto the standard descriptors; both fds are valid.
    unsafe {
        libc::dup2(n, 0);
        libc::dup2(n, 1);
        libc::dup2(log.map_or(n, |l| l.as_raw_fd()), 2);
    }
}

/// Sets the process umask (the daemon uses 0: the kernel applies the caller's).
pub fn set_umask(m: u32) {
    // SAFETY: plain syscall.
    unsafe { libc::umask(m) };
}

/// The effective uid.
pub fn geteuid() -> u32 {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() }
}

/// getxattr(2) by path (follows symlinks), for `sparsefs stats`.
///
/// # Errors
/// The errno of getxattr.
pub fn getxattr_path(path: &std::path::Path, name: &CStr) -> io::Result<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: buf is valid for its length; strings are valid C strings.
    let n = size_or_err(unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// umount2(2).
///
/// # Errors
/// The errno of umount2.
pub fn umount(path: &std::path::Path, lazy: bool) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::umount2(p.as_ptr(), if lazy { libc::MNT_DETACH } else { 0 }) }).map(drop)
}

/// Writes all of `buf` to a raw fd (readiness pipe).
pub fn write_fd(fd: BorrowedFd<'_>, buf: &[u8]) {
    // SAFETY: buf is valid for its length.
    unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
}

/// waitpid(2) without options; returns the exit status, or 1 if it died otherwise.
pub fn waitpid(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: st is valid for writes.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        1
    }
}

/// lseek(2) on a raw fd (SEEK_DATA/SEEK_HOLE for the demo and tests).
///
/// # Errors
/// The errno of lseek (`ENXIO` past the last data).
pub fn lseek(fd: RawFd, off: i64, whence: i32) -> io::Result<u64> {
    // SAFETY: plain syscall; an invalid fd yields EBADF.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// One pread(2) attempt (no EINTR retry: the caller's loop decides).
///
/// # Errors
/// The errno of pread (`EINTR` included).
pub fn pread_once(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> io::Result<usize> {
    // SAFETY: buf is a live, writable buffer of buf.len() bytes.
    let r = unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            off as i64,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// One pwritev(2) attempt (no EINTR retry).
///
/// # Errors
/// The errno of pwritev (`EINTR` included).
pub fn pwritev_once(
    fd: BorrowedFd<'_>,
    bufs: &[std::io::IoSlice<'_>],
    off: u64,
) -> io::Result<usize> {
    let n = bufs.len().min(libc::UIO_MAXIOV as usize);
    // SAFETY: IoSlice is ABI-compatible with iovec (std guarantees it on Unix); the
    // slices are borrowed for the duration of the call.
    let r = unsafe { libc::pwritev(fd.as_raw_fd(), bufs.as_ptr().cast(), n as i32, off as i64) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// One fallocate(2) attempt (no EINTR retry).
///
/// # Errors
/// The errno of fallocate (`EOPNOTSUPP`, `EINTR`, ...).
pub fn fallocate_once(fd: BorrowedFd<'_>, mode: i32, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off as i64, len as i64) }).map(drop)
}

/// One ftruncate(2) attempt (no EINTR retry).
///
/// # Errors
/// The errno of ftruncate; `EFBIG` for a length past `i64::MAX`.
pub fn ftruncate_once(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain syscall on a borrowed fd.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(drop)
}

/// One fsync(2) or fdatasync(2) attempt (no EINTR retry).
///
/// # Errors
/// The errno of fsync (`EIO`, `ENOSPC`, `EINTR`, ...).
pub fn fsync_once(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscalls on a borrowed fd.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// Mounts a FUSE filesystem at `mountpoint` with type `fuse.<subtype>` (what fstab,
/// `df -t` and umount helpers look for) and returns the `/dev/fuse` fd to serve.
/// Root only; others go through fusermount3.
///
/// # Errors
/// The errno of open("/dev/fuse") or mount(2).
pub fn fuse_mount(
    mountpoint: &std::path::Path,
    fsname: &str,
    subtype: &str,
    flags: libc::c_ulong,
    allow_other: bool,
) -> io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let fd: OwnedFd = dev.into();
    let st = std::fs::metadata(mountpoint)?;
    use std::os::unix::fs::MetadataExt;
    let data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions{}",
        fd.as_raw_fd(),
        st.mode() & libc::S_IFMT,
        geteuid(),
        // SAFETY: plain syscall.
        unsafe { libc::getegid() },
        if allow_other { ",allow_other" } else { "" }
    );
    let esc = |s: &str| {
        CString::new(s.replace(',', "\\,")).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    };
    let src = esc(fsname)?;
    let ty = CString::new(format!("fuse.{subtype}"))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mp = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let d = CString::new(data).expect("no NUL");
    // SAFETY: all pointers are valid C strings for the duration of the call.
    cvt(unsafe {
        libc::mount(
            src.as_ptr(),
            mp.as_ptr(),
            ty.as_ptr(),
            flags,
            d.as_ptr().cast(),
        )
    })?;
    Ok(fd)
}

/// An all-zero `stat` (a valid value of the C struct).
pub fn zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is a plain C struct for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
}

/// statfs(2) by path; on FUSE it always reaches the daemon (never cached), so it tells a
/// dead mount (ENOTCONN) from a live one.
///
/// # Errors
/// The errno of statfs.
pub fn statfs_path(path: &std::path::Path) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid C string; st valid for writes.
    cvt(unsafe { libc::statfs(p.as_ptr(), st.as_mut_ptr()) }).map(drop)
}

/// fstat that asks the filesystem for fresh attributes (`statx` with
/// `AT_STATX_FORCE_SYNC`): on NFS and FUSE-based backends (GlusterFS, bindfs) a plain
/// fstat may answer from an attribute cache and miss a change made by another node.
/// Falls back to [`fstat`] where statx is missing.
///
/// # Errors
/// The errno of statx/fstat.
pub fn fstat_fresh(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let _io = crate::lock::io("fstat_fresh");
    let mut sx = MaybeUninit::<libc::statx>::uninit();
    // SAFETY: valid C string; sx is valid for writes.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            sx.as_mut_ptr(),
        )
    };
    if r < 0 {
        return fstat(fd);
    }
    // SAFETY: statx succeeded, so sx is initialised.
    let sx = unsafe { sx.assume_init() };
    let mut st = zeroed_stat();
    st.st_dev = libc::makedev(sx.stx_dev_major, sx.stx_dev_minor);
    st.st_ino = sx.stx_ino;
    st.st_mode = sx.stx_mode as u32;
    st.st_nlink = sx.stx_nlink as _;
    st.st_uid = sx.stx_uid;
    st.st_gid = sx.stx_gid;
    st.st_rdev = libc::makedev(sx.stx_rdev_major, sx.stx_rdev_minor);
    st.st_size = sx.stx_size as i64;
    st.st_blksize = sx.stx_blksize as _;
    st.st_blocks = sx.stx_blocks as i64;
    st.st_atime = sx.stx_atime.tv_sec;
    st.st_atime_nsec = sx.stx_atime.tv_nsec as i64;
    st.st_mtime = sx.stx_mtime.tv_sec;
    st.st_mtime_nsec = sx.stx_mtime.tv_nsec as i64;
    st.st_ctime = sx.stx_ctime.tv_sec;
    st.st_ctime_nsec = sx.stx_ctime.tv_nsec as i64;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_components_are_accepted() {
        assert!(component(OsStr::new("a")).is_ok());
        assert!(component(OsStr::new("...")).is_ok());
        assert!(component(OsStr::new(&"x".repeat(255))).is_ok());
        for bad in ["", ".", "..", "a/b", "/", "../etc"] {
            assert_eq!(
                component(OsStr::new(bad)).unwrap_err().raw_os_error(),
                Some(libc::EINVAL),
                "{bad:?}"
            );
        }
        assert_eq!(
            component(OsStr::from_bytes(b"a\0b"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            component(OsStr::new(&"x".repeat(256)))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
    }
}
