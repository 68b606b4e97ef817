//! The daemon's process: credentials for creation, fd limits, signals, fork and stdio.

use super::*;

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

/// Makes glibc's allocator merge small freed chunks as they are freed, not later: turns
/// off its fast bins (`mallopt(M_MXFAST, 0)`; its per-thread caches stay). With fast bins,
/// the kernel forgetting 100,000 inodes at once left that many chunks unmerged, and the
/// next allocation of a kilobyte or more in that arena merged them all, inside whatever
/// request came next: the first `find` after `rsync` and `drop_caches` spent 40% of the
/// daemon's time in `malloc_consolidate` and took 1.6x as long as the next one. A no-op
/// where the allocator is not glibc's.
pub fn merge_freed_memory_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: a documented allocator setting, made before the daemon's threads start.
    unsafe {
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

/// Returns the allocator's free memory to the system (glibc's `malloc_trim(0)`: free
/// pages inside its arenas too, not only at their tops). Locks each arena while it trims
/// it. A no-op where the allocator is not glibc's.
pub fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: no arguments to keep valid; glibc serialises it with its allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}
