//! Positional data syscalls, one attempt each (the backend's loops retry EINTR and short transfers).

use super::*;

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

/// Makes `dst` a copy of the whole of `src` that shares its blocks (`FICLONE`: a reflink,
/// on XFS, btrfs, bcachefs, OCFS2; no data is read or written).
///
/// # Errors
/// `EOPNOTSUPP`, `EXDEV`, `EINVAL`, `ENOTTY` where the filesystem cannot (ext4, tmpfs,
/// FUSE, another filesystem); the caller then copies.
pub fn clone_file(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain ioctl on two borrowed fds; FICLONE takes the source fd as its argument.
    cvt(unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) }).map(drop)
}

/// A zeroed byte buffer aligned to a page (4 KiB), as `O_DIRECT` writes need.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is owned, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    const ALIGN: usize = 4096;

    /// `len` zero bytes (at least one page is allocated).
    pub fn zeroed(len: usize) -> Self {
        let layout = Self::layout_for(len);
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    fn layout_for(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(Self::ALIGN), Self::ALIGN)
            .expect("valid layout")
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr holds len initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref; &mut self is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout_for(self.len)) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({})", self.len)
    }
}
