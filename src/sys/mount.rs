//! Mounting: the FUSE mount itself, unmounting, the FUSE control filesystem, statfs of a mount point.

use super::*;

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
