//! Safe wrappers for the *at-family syscalls sparsefs resolves everything with: names
//! are always single components relative to a directory fd, never joined paths.
// The one module with `unsafe` (the crate denies it elsewhere): every syscall wrapper,
// each block with its SAFETY line.
#![allow(unsafe_code)]

mod data;
mod fsops;
mod mount;
mod process;

pub use data::*;
pub use fsops::*;
pub use mount::*;
pub use process::*;

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
