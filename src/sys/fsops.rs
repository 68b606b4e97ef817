//! Names, stats, links, modes, times, xattrs and directory listings: every call relative to a directory fd or an `O_PATH` fd.

use super::*;

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

/// close(2) of an fd, saying what the close found (NFS reports write-back errors at
/// close). Not retried: Linux releases the fd even when close fails; EINTR reports
/// nothing lost.
///
/// # Errors
/// The errno of close.
pub fn close(fd: OwnedFd) -> io::Result<()> {
    let _io = crate::lock::io("close");
    let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: the fd was owned and is closed once here.
    if unsafe { libc::close(raw) } == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
        e => Err(e),
    }
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
    super::fsync_once(fd, datasync)
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
#[derive(Debug, Default, Clone)]
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

/// Reads the next entries of a directory open for reading (`O_RDONLY|O_DIRECTORY`) with
/// one getdents64 call of at most `DIR_CHUNK` bytes, without `.`/`..`, into `out`:
/// `keep(backing ino, name)` gives the inode number to show, or `None` to leave the entry
/// out. Returns `false` at the end of the directory.
///
/// # Errors
/// The errno of getdents.
pub fn read_dir_chunk(
    d: BorrowedFd<'_>,
    out: &mut DirSnapshot,
    mut keep: impl FnMut(u64, &[u8]) -> Option<u64>,
) -> io::Result<bool> {
    let _io = crate::lock::io("read_dir_chunk");
    let mut buf = vec![0u8; DIR_CHUNK];
    let n = loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                d.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut pos = 0usize;
    while pos < n {
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
            // None: removed since the listing was read, left out.
            if let Some(kind) = known_type(d, kind, name) {
                out.push(ino, kind, name);
            }
        }
        pos += reclen;
    }
    Ok(n > 0)
}

/// The type of a listed entry: `kind` (its `d_type`), or where the backend leaves that
/// unknown (`DT_UNKNOWN`: ext4 without the filetype feature, XFS without ftype, some
/// network filesystems) the type from a stat of the entry; the FUSE reply has no "unknown"
/// (fuser sends a type with every entry), and one sent as a regular file would keep
/// `find` out of directories. `None` where the entry is gone; `DT_UNKNOWN` kept where the
/// stat fails otherwise (sent as a regular file, as before).
fn known_type(d: BorrowedFd<'_>, kind: u8, name: &[u8]) -> Option<u8> {
    if kind != libc::DT_UNKNOWN {
        return Some(kind);
    }
    let Ok(c) = CString::new(name) else {
        return Some(kind);
    };
    match fstatat_nofollow(d, &c) {
        Ok(st) => Some(match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => libc::DT_DIR,
            libc::S_IFLNK => libc::DT_LNK,
            libc::S_IFCHR => libc::DT_CHR,
            libc::S_IFBLK => libc::DT_BLK,
            libc::S_IFIFO => libc::DT_FIFO,
            libc::S_IFSOCK => libc::DT_SOCK,
            libc::S_IFREG => libc::DT_REG,
            _ => libc::DT_UNKNOWN,
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
        Err(_) => Some(kind),
    }
}

/// Bytes of directory entries read from the backend at a time (about 2,000 short names):
/// a listing is read as the kernel asks for it, so that the stats of a reader that stats
/// each batch (`ls -l`) follow the backend's listing closely and find the backend
/// client's caches (which it fills while listing, for a second or so) still warm.
pub const DIR_CHUNK: usize = 64 * 1024;

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

/// An all-zero `stat` (a valid value of the C struct).
pub fn zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is a plain C struct for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
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
        // Only a missing statx falls back: a plain fstat after ENOENT/ESTALE could answer
        // from the attribute cache of a file that is gone.
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => fstat(fd),
            _ => Err(e),
        };
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

/// A file handle (`name_to_handle_at`): names an inode for as long as it exists, without
/// an open fd. `handle_type` and the opaque bytes, as the filesystem gave them.
#[derive(Clone, PartialEq, Eq)]
pub struct FileHandle {
    kind: i32,
    bytes: Box<[u8]>,
}

impl std::fmt::Debug for FileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileHandle(type {}, {} bytes)",
            self.kind,
            self.bytes.len()
        )
    }
}

impl FileHandle {
    /// A digest of the handle (type and bytes; FNV-1a, the same in every build and on
    /// every node): a file's identity beyond its inode number, for the stored maps. The
    /// handle of ext4, xfs, btrfs, GPFS, NFS and Lustre carries the inode's generation, so
    /// a reused inode number has another digest.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.kind.to_le_bytes().iter().chain(self.bytes.iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // 0 means "no identity" in a stored map.
        h.max(1)
    }

    /// The inode number a handle of Linux's generic 32-bit types carries
    /// (`FILEID_INO32_GEN` and `FILEID_INO32_GEN_PARENT`, include/linux/exportfs.h:
    /// `u32 ino; u32 gen; ...` in host order; ext2/3/4 and others through
    /// `generic_encode_ino32_fh`), else `None`. Tells whether a handle taken by name and a
    /// stat taken by the same name are of one file.
    pub fn ino32(&self) -> Option<u32> {
        const FILEID_INO32_GEN: i32 = 1;
        const FILEID_INO32_GEN_PARENT: i32 = 2;
        if !matches!(self.kind, FILEID_INO32_GEN | FILEID_INO32_GEN_PARENT) {
            return None;
        }
        let b = self.bytes.get(..4)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Whether file handles made on the filesystem holding `fd` name the same file on every
/// mount of it (on every node of a shared filesystem, and after a remount): true for
/// filesystems with stable handles; false for FUSE, whose handles carry the mount's own
/// node ids (bindfs, GlusterFS's client), and where fstatfs fails.
pub fn handles_outlive_the_mount(fd: BorrowedFd<'_>) -> bool {
    const FUSE_SUPER_MAGIC: libc::c_long = 0x6573_5546;
    let _io = crate::lock::io("fstatfs");
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: st is valid for writes.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: initialised by the successful call.
    let st = unsafe { st.assume_init() };
    st.f_type as libc::c_long != FUSE_SUPER_MAGIC
}

/// The buffer `struct file_handle` with room for the largest handle.
#[repr(C)]
struct HandleBuf {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; libc::MAX_HANDLE_SZ as usize],
}

/// `name_to_handle_at(fd, "", AT_EMPTY_PATH)`: the handle of the file an (`O_PATH`) fd
/// holds, and the id of the mount it is on: the unique 64-bit id where the kernel has
/// `AT_HANDLE_MNT_ID_UNIQUE` (6.12+; ids are never reused), else the classic one.
///
/// # Errors
/// `EOPNOTSUPP` where the filesystem cannot make handles (FUSE filesystems without export
/// support, such as bindfs and GlusterFS's client), `EOVERFLOW` for a handle longer than
/// `MAX_HANDLE_SZ`.
pub fn name_to_handle(fd: BorrowedFd<'_>) -> io::Result<(FileHandle, u64)> {
    name_to_handle_of(fd, c"")
}

/// `name_to_handle_at(dir, name, 0)`: the handle of the file `name` (one component) names
/// in `dir`, not following a final symlink, with no fd opened; `name` empty: of `dir`
/// itself (`AT_EMPTY_PATH`). The mount id as in [`name_to_handle`].
///
/// # Errors
/// `ENOENT`, and those of [`name_to_handle`].
pub fn name_to_handle_of(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<(FileHandle, u64)> {
    let _io = crate::lock::io("name_to_handle_at");
    let empty = if name.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    let mut buf = HandleBuf {
        handle_bytes: libc::MAX_HANDLE_SZ as libc::c_uint,
        handle_type: 0,
        f_handle: [0; libc::MAX_HANDLE_SZ as usize],
    };
    let mut mnt: u64 = 0;
    let call = |buf: &mut HandleBuf, mnt: &mut u64, flags: i32| {
        // SAFETY: buf is a file_handle with MAX_HANDLE_SZ bytes of room, as handle_bytes
        // says; mnt has 8 bytes (the unique id is 64-bit; the classic one is an int
        // written to its first 4 bytes, read back below).
        unsafe {
            libc::name_to_handle_at(
                fd.as_raw_fd(),
                name.as_ptr(),
                (buf as *mut HandleBuf).cast::<libc::file_handle>(),
                (mnt as *mut u64).cast::<libc::c_int>(),
                flags | empty,
            )
        }
    };
    let unique = call(&mut buf, &mut mnt, libc::AT_HANDLE_MNT_ID_UNIQUE) == 0;
    if !unique {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        // A kernel without AT_HANDLE_MNT_ID_UNIQUE.
        buf.handle_bytes = libc::MAX_HANDLE_SZ as libc::c_uint;
        mnt = 0;
        if call(&mut buf, &mut mnt, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let b = mnt.to_ne_bytes();
        mnt = u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    }
    let n = (buf.handle_bytes as usize).min(buf.f_handle.len());
    Ok((
        FileHandle {
            kind: buf.handle_type,
            bytes: buf.f_handle[..n].into(),
        },
        mnt,
    ))
}

/// `open_by_handle_at(mount, handle, flags)`: the file a handle names, opened (needs
/// `CAP_DAC_READ_SEARCH` in the initial user namespace).
///
/// # Errors
/// `ESTALE` where the file no longer exists, `EPERM` without the capability.
pub fn open_by_handle(mount: BorrowedFd<'_>, h: &FileHandle, flags: i32) -> io::Result<OwnedFd> {
    let _io = crate::lock::io("open_by_handle_at");
    let mut buf = HandleBuf {
        handle_bytes: h.bytes.len() as libc::c_uint,
        handle_type: h.kind,
        f_handle: [0; libc::MAX_HANDLE_SZ as usize],
    };
    buf.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    let fd = cvt_retry(|| {
        // SAFETY: buf is a file_handle whose handle_bytes bytes follow it.
        unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                (&mut buf as *mut HandleBuf).cast::<libc::file_handle>(),
                flags | libc::O_CLOEXEC,
            )
        }
    })?;
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
