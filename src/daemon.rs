//! Running a mount: logging, daemonising with a readiness pipe (the command returns
//! only once the mount is live), signals, and the `umount` and `stats` commands.

use crate::cli::{Access, MountConfig};
use crate::file::Geometry;
use crate::fs::{FsConfig, STATS_XATTR, SparseFs};
use crate::fuse_adapter::Adapter;
use crate::stats::Stats;
use crate::sys;
use fuser::{Config, MountOption, SessionACL};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use tracing::{error, info};

/// Sets up `tracing` on stderr: `-v` levels, `RUST_LOG` overrides.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("sparsefs={level},fuser=warn"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// The fuser configuration of a mount.
pub fn fuse_config(cfg: &MountConfig) -> Config {
    let mut c = Config::default();
    let mut o = vec![
        MountOption::FSName(cfg.fsname.clone()),
        MountOption::Subtype(cfg.subtype.clone()),
        MountOption::DefaultPermissions,
    ];
    if cfg.ro {
        o.push(MountOption::RO);
    }
    use crate::cli::MountFlag as F;
    for f in &cfg.flags {
        o.push(match f {
            F::NoSuid => MountOption::NoSuid,
            F::Suid => MountOption::Suid,
            F::NoDev => MountOption::NoDev,
            F::Dev => MountOption::Dev,
            F::NoExec => MountOption::NoExec,
            F::Exec => MountOption::Exec,
            F::NoAtime => MountOption::NoAtime,
            F::Atime => MountOption::Atime,
            F::Sync => MountOption::Sync,
            F::Async => MountOption::Async,
            F::DirSync => MountOption::DirSync,
        });
    }
    c.mount_options = o;
    c.acl = match cfg.access {
        Access::All => SessionACL::All,
        Access::Root => SessionACL::RootAndOwner,
        Access::Owner => SessionACL::Owner,
    };
    c.n_threads = Some(cfg.threads);
    c.clone_fd = true;
    c
}

/// The core configuration of a mount.
pub fn fs_config(cfg: &MountConfig) -> FsConfig {
    FsConfig {
        backing: cfg.backing.clone(),
        geo: Geometry {
            block: cfg.sparse_block.get(),
            write_size: cfg.write_size,
            max_dirty_file: crate::fs::per_file_limit(cfg.max_dirty, cfg.write_size),
        },
        max_dirty: cfg.max_dirty,
        dirty_age: cfg.dirty_age,
        creds: sys::geteuid() == 0,
        owner: sys::geteuid(),
        map_store: cfg.map_store,
        cache_writes: cfg.cache_writes,
        passthrough: cfg.passthrough,
        dir_cache: cfg.dir_cache,
        debug_hooks: std::env::var("SPARSEFS_DEBUG_HOOKS").is_ok_and(|v| v == "1"),
    }
}

/// Mounts `fs` as `fuse.<subtype>` (root: our own mount(2), so /proc/mounts shows the
/// type fstab and umount helpers expect; others: fusermount3 through fuser) and returns
/// the session with a function that unmounts it.
///
/// # Errors
/// The mount's errno.
#[allow(clippy::type_complexity)]
pub fn mount(
    cfg: &MountConfig,
    fs: Adapter,
) -> std::io::Result<(
    fuser::Session<Adapter>,
    Box<dyn FnMut() -> std::io::Result<()> + Send>,
)> {
    let fc = fuse_config(cfg);
    if sys::geteuid() != 0 {
        let mut s = fuser::Session::new(fs, &cfg.mountpoint, &fc)?;
        let mut u = s.unmount_callable();
        return Ok((s, Box::new(move || u.unmount())));
    }
    let mut flags: libc::c_ulong = 0;
    for f in &cfg.flags {
        flags |= f.ms_bits() as libc::c_ulong;
    }
    if cfg.ro {
        flags |= libc::MS_RDONLY;
    }
    let fd = sys::fuse_mount(
        &cfg.mountpoint,
        &cfg.fsname,
        &cfg.subtype,
        flags,
        cfg.access != Access::Owner,
    )?;
    let mp = cfg.mountpoint.clone();
    let s = match fuser::Session::from_fd(fs, fd, fc.acl, fc) {
        Ok(s) => s,
        Err(e) => {
            let _ = sys::umount(&mp, true);
            return Err(e);
        }
    };
    Ok((s, Box::new(move || sys::umount(&mp, false))))
}

/// Mounts and serves until unmounted. Returns the exit status.
pub fn run(cfg: MountConfig) -> i32 {
    if cfg.reclaim {
        match sys::umount(&cfg.mountpoint, true) {
            Ok(()) => eprintln!(
                "sparsefs: warning: {} was a dead FUSE mount (its daemon is gone); detached it",
                cfg.mountpoint.display()
            ),
            Err(e) => {
                eprintln!(
                    "sparsefs: error: cannot detach the dead FUSE mount {}: {e}",
                    cfg.mountpoint.display()
                );
                return 1;
            }
        }
    }
    if let Some(m) = crate::lock::mode_from_env() {
        crate::lock::set_mode(m);
    }
    sys::raise_nofile();
    sys::set_umask(0);
    if cfg.foreground {
        return serve(&cfg, None);
    }
    let (r, w) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sparsefs: error: pipe: {e}");
            return 1;
        }
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("sparsefs: error: fork: {e}");
            1
        }
        Ok(None) => {
            drop(r);
            sys::setsid();
            serve(&cfg, Some(w))
        }
        Ok(Some(pid)) => {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            if msg.starts_with("OK") {
                0
            } else {
                let status = sys::waitpid(pid);
                let m = msg.trim();
                if m.is_empty() {
                    eprintln!(
                        "sparsefs: error: the daemon exited (status {status}) before the mount was ready"
                    );
                } else {
                    eprintln!("sparsefs: error: {m}");
                }
                1
            }
        }
    }
}

fn serve(cfg: &MountConfig, ready: Option<std::os::fd::OwnedFd>) -> i32 {
    use std::os::fd::AsFd;
    let fail = |msg: String| {
        match &ready {
            Some(w) => sys::write_fd(w.as_fd(), msg.as_bytes()),
            None => eprintln!("sparsefs: error: {msg}"),
        }
        1
    };
    let sigs = sys::block_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    let stats = Arc::new(Stats::default());
    let fs = match SparseFs::new(fs_config(cfg), stats) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            return fail(format!(
                "cannot open backing directory {}: {e}",
                cfg.backing.display()
            ));
        }
    };
    let caps = fs.caps();
    let (session, mut unmounter) = match mount(cfg, Adapter::new(fs.clone())) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot mount on {}: {e}", cfg.mountpoint.display())),
    };
    let notifier = session.notifier();
    fs.set_attr_invalidator(Box::new(move |ino| {
        // Attributes only (offset < 0): no page-cache work, so no lock the kernel could
        // hold while it waits for this very request.
        let _ = notifier.inval_inode(fuser::INodeNo(ino.0), -1, 0);
    }));
    let mp = cfg.mountpoint.clone();
    let fs2 = fs.clone();
    std::thread::Builder::new()
        .name("sparsefs-signals".into())
        .spawn(move || {
            let sig = sys::wait_signal(&sigs);
            info!(signal = sig, "signal: unmounting");
            if let Err(e) = unmounter() {
                info!(error = %e, "mount busy: detaching it");
                let _ = sys::umount(&mp, true);
            }
            // A detached mount with open files keeps the session alive: give it a moment
            // to end by itself, then flush everything and exit (open files then see
            // ENOTCONN, as with any FUSE daemon that exits).
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_secs(2) {
                std::thread::park_timeout(std::time::Duration::from_millis(50));
            }
            fs2.freeze();
            let fs3 = fs2.clone();
            let flush = std::thread::Builder::new()
                .name("sparsefs-exit".into())
                .spawn(move || fs3.shutdown())
                .expect("spawn exit flush");
            std::process::exit(exit_watch(&fs2, flush, &sigs, wedge_after()));
        })
        .expect("spawn signal thread");
    fs.start();
    if cfg.read_ahead > 0 {
        set_read_ahead(&cfg.mountpoint, cfg.read_ahead);
    }
    info!(
        backing = %cfg.backing.display(),
        mountpoint = %cfg.mountpoint.display(),
        sparse_block = cfg.sparse_block.get(),
        write_size = cfg.write_size,
        punch = caps.punch,
        seek_data = caps.seek,
        "mounted"
    );
    if let Some(w) = ready {
        let log = cfg.log_file.as_ref().and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        sys::write_fd(w.as_fd(), b"OK");
        drop(w);
        sys::redirect_stdio(log.as_ref().map(|f| f.as_fd()));
        let _ = std::env::set_current_dir("/");
    }
    match session.run() {
        Ok(()) => 0,
        Err(e) => {
            error!(error = %e, "session ended with an error");
            1
        }
    }
}

/// How the exit flush is doing, from what every thread is doing ([`crate::lock::report`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ExitProgress {
    /// Nothing says it is stuck.
    Flushing,
    /// A thread is in a backend call (a slow backend: worth waiting for).
    Backend {
        /// The thread.
        thread: String,
        /// The call.
        op: &'static str,
        /// For how long.
        secs: f64,
    },
    /// No backend call in flight, a thread waits for a lock, and nothing moved for the
    /// wedge time: a wedged lock, which waiting will not cure.
    Wedged,
}

/// Tells a slow backend from a wedged lock (pure; see [`ExitProgress`]). `stalled`: how
/// long the flush has made no progress (dirty bytes and backend call counts unchanged).
pub fn judge(
    threads: &[crate::lock::ThreadReport],
    stalled: std::time::Duration,
    wedge_after: std::time::Duration,
) -> ExitProgress {
    if let Some(t) = threads
        .iter()
        .filter(|t| t.io.is_some())
        .max_by_key(|t| t.io.map(|x| x.1))
    {
        let (op, d) = t.io.expect("filtered");
        return ExitProgress::Backend {
            thread: t.name.clone(),
            op,
            secs: d.as_secs_f64(),
        };
    }
    if stalled >= wedge_after && threads.iter().any(|t| t.waiting.is_some()) {
        return ExitProgress::Wedged;
    }
    ExitProgress::Flushing
}

/// Seconds without progress, no backend call in flight and a thread waiting for a lock
/// after which the exit flush counts as wedged (`SPARSEFS_EXIT_WEDGE_SECS`, default 10).
fn wedge_after() -> std::time::Duration {
    std::time::Duration::from_secs_f64(
        std::env::var("SPARSEFS_EXIT_WEDGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10.0),
    )
}

/// Waits for the exit flush, telling a slow backend (waited for, reported every 10 s)
/// from a wedged lock (the stuck threads and the abandoned dirty bytes are logged and the
/// daemon gives up) and giving up at once on a second signal. Returns the exit status.
fn exit_watch(
    fs: &SparseFs,
    flush: std::thread::JoinHandle<usize>,
    sigs: &libc::sigset_t,
    wedge_after: std::time::Duration,
) -> i32 {
    use std::time::{Duration, Instant};
    let s = fs.stats();
    let token = || {
        let calls: u64 = crate::stats::OPS.iter().map(|op| s.calls(*op)).sum();
        (
            s.dirty_bytes.load(std::sync::atomic::Ordering::Relaxed),
            calls,
        )
    };
    let dirty = || s.dirty_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let give_up = |why: &str| {
        let threads = crate::lock::report();
        error!(
            dirty_bytes_abandoned = dirty(),
            "exit flush {why}: giving up; {} dirty bytes are abandoned (not on the backend)",
            dirty()
        );
        for t in &threads {
            error!("  thread {t}");
        }
        1
    };
    let (mut last, mut since, mut logged) = (token(), Instant::now(), Instant::now());
    loop {
        if flush.is_finished() {
            return match flush.join() {
                Ok(0) => 0,
                _ => 1,
            };
        }
        if let Some(sig) = sys::wait_signal_timeout(sigs, Duration::from_millis(200)) {
            return give_up(&format!("interrupted by a second signal ({sig})"));
        }
        let now = token();
        if now != last {
            (last, since) = (now, Instant::now());
        }
        match judge(&crate::lock::report(), since.elapsed(), wedge_after) {
            ExitProgress::Wedged => {
                return give_up(&format!(
                    "wedged: no progress for {:.0} s, no backend call in flight, a thread waits for a lock",
                    since.elapsed().as_secs_f64()
                ));
            }
            ExitProgress::Backend { thread, op, secs }
                if logged.elapsed() >= Duration::from_secs(10) =>
            {
                info!(
                    thread,
                    op,
                    secs,
                    dirty_bytes = dirty(),
                    "exit flush waiting for a slow backend call"
                );
                logged = Instant::now();
            }
            _ => {}
        }
    }
}

/// Sets the kernel read-ahead of the new mount through sysfs (its backing device info is
/// named by the mount's device number, found in /proc/self/mountinfo without touching the
/// mount, which is not served yet). The kernel caps FUSE read-ahead at 128 KiB at mount
/// time; 1 MiB lets sequential reads reach the daemon as 1 MiB requests (measured 1.6 to
/// 2.2 GB/s on a tmpfs backing). Needs root; otherwise the kernel's value stays.
fn set_read_ahead(mountpoint: &Path, bytes: u64) {
    let Some(m) = crate::mountinfo::find(mountpoint) else {
        tracing::debug!("read-ahead: mount not found in mountinfo");
        return;
    };
    let dev = format!("{}:{}", m.dev.0, m.dev.1);
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, format!("{}", bytes.div_ceil(1024))) {
        Ok(()) => tracing::debug!(path, kib = bytes.div_ceil(1024), "read-ahead set"),
        Err(e) => info!(path, error = %e, "cannot set read-ahead (root only): kernel default kept"),
    }
}

/// `sparsefs umount`: unmount (the daemon flushes everything before it exits).
///
/// # Errors
/// A one-line message.
pub fn umount(mp: &Path, lazy: bool) -> Result<(), String> {
    let canon = std::fs::canonicalize(mp).map_err(|e| format!("{}: {e}", mp.display()))?;
    if !crate::cli::is_mountpoint(&canon) {
        return Err(format!("{} is not mounted", mp.display()));
    }
    if sys::geteuid() == 0 {
        return sys::umount(&canon, lazy)
            .map_err(|e| format!("cannot unmount {}: {e}", mp.display()));
    }
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let st = cmd
        .arg(&canon)
        .status()
        .map_err(|e| format!("fusermount3: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("cannot unmount {}", mp.display()))
    }
}

/// The processes holding a `/dev/fuse` descriptor of FUSE connection `minor` (the
/// kernel names the connection in each such descriptor's fdinfo since Linux 6.x).
fn fuse_daemons(minor: u32) -> Vec<i32> {
    let want = format!("fuse_connection:\t{minor}");
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/fuse"))
                && std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name()))
                    .is_ok_and(|i| i.lines().any(|l| l == want))
        });
        if holds {
            pids.push(pid);
        }
    }
    pids
}

/// `sparsefs umount --force`: ends a hung mount. Finds the mount in mountinfo without
/// touching it (a stat would hang too), aborts its FUSE connection through fusectl
/// (mounted if needed: every pending and later request fails with ENOTCONN, so stuck
/// callers return), detaches it, and ends its daemon: SIGTERM (it flushes what it can;
/// a wedged flush gives up by itself, see `exit_watch`), SIGKILL after `wait`.
///
/// # Errors
/// A one-line message: not mounted, not FUSE, not root.
pub fn umount_force(mp: &Path, wait: std::time::Duration) -> Result<String, String> {
    let abs = std::path::absolute(mp).map_err(|e| format!("{}: {e}", mp.display()))?;
    // A symlink in the parent: resolve the parent only (not on the mount itself).
    let entry = crate::mountinfo::find(&abs).or_else(|| {
        let parent = std::fs::canonicalize(abs.parent()?).ok()?;
        crate::mountinfo::find(&parent.join(abs.file_name()?))
    });
    let Some(entry) = entry else {
        return Err(format!("{} is not mounted", mp.display()));
    };
    if !entry.fstype.starts_with("fuse") {
        return Err(format!(
            "{} is not a FUSE mount (type {})",
            mp.display(),
            entry.fstype
        ));
    }
    if sys::geteuid() != 0 {
        return Err("--force needs root (it aborts the FUSE connection through fusectl)".into());
    }
    let minor = entry.dev.1;
    let daemons = fuse_daemons(minor);
    let ctl = Path::new("/sys/fs/fuse/connections");
    let conn = ctl.join(minor.to_string());
    if !conn.exists() {
        let _ = sys::mount_fusectl();
    }
    std::fs::write(conn.join("abort"), "1").map_err(|e| {
        format!(
            "cannot abort FUSE connection {minor} ({}): {e}",
            conn.display()
        )
    })?;
    let mut out = vec![format!(
        "aborted FUSE connection {minor} of {}",
        entry.mountpoint.display()
    )];
    match sys::umount(&entry.mountpoint, true) {
        Ok(()) => out.push("detached the mount point".into()),
        Err(e) => out.push(format!("could not detach the mount point: {e}")),
    }
    if daemons.is_empty() {
        out.push("no daemon holds the connection".into());
    }
    for pid in daemons {
        let _ = sys::kill(pid, libc::SIGTERM);
        let t = std::time::Instant::now();
        let alive = || Path::new(&format!("/proc/{pid}")).exists() && !zombie(pid);
        while alive() && t.elapsed() < wait {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if alive() {
            let _ = sys::kill(pid, libc::SIGKILL);
            out.push(format!(
                "daemon {pid} did not exit within {:.0} s of SIGTERM: killed (unflushed data lost)",
                wait.as_secs_f64()
            ));
        } else {
            out.push(format!("daemon {pid} exited"));
        }
    }
    Ok(out.join("; "))
}

/// A process that exited and waits to be reaped.
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
        .unwrap_or(true)
}

/// `sparsefs stats`: reads the counters from the running daemon.
///
/// # Errors
/// A one-line message.
pub fn stats(mp: &Path, json: bool, watch: Option<f64>) -> Result<(), String> {
    let name = std::ffi::CString::new(STATS_XATTR).expect("no NUL");
    loop {
        let raw = sys::getxattr_path(mp, &name).map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES) => format!(
                "{}: only the mount's owner or root may read its stats",
                mp.display()
            ),
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => {
                format!("{} is not a sparsefs mount", mp.display())
            }
            _ => format!("{}: {e}", mp.display()),
        })?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        if json {
            println!("{text}");
        } else {
            print!("{}", crate::stats::table_from_json(&text));
        }
        match watch {
            Some(s) if s > 0.0 => std::thread::sleep(std::time::Duration::from_secs_f64(s)),
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{Rank, ThreadReport};
    use std::time::Duration;

    fn t(name: &str, waiting: Option<Rank>, io: Option<&'static str>) -> ThreadReport {
        ThreadReport {
            name: name.into(),
            held: Vec::new(),
            waiting: waiting.map(|r| (r, Duration::from_secs(30))),
            io: io.map(|op| (op, Duration::from_secs(12))),
        }
    }

    #[test]
    fn a_thread_in_a_backend_call_is_a_slow_backend_however_long_nothing_moved() {
        let threads = [
            t("sparsefs-exit", Some(Rank::Engine), None),
            t("fuser-0", None, Some("pwrite")),
        ];
        let j = judge(&threads, Duration::from_secs(600), Duration::from_secs(10));
        assert_eq!(
            j,
            ExitProgress::Backend {
                thread: "fuser-0".into(),
                op: "pwrite",
                secs: 12.0
            }
        );
    }

    #[test]
    fn a_lock_wait_with_no_backend_call_and_no_progress_is_wedged_only_after_the_wedge_time() {
        let threads = [
            t("sparsefs-exit", Some(Rank::Engine), None),
            t("sparsefs-wedge", None, None),
        ];
        let wedge = Duration::from_secs(10);
        assert_eq!(
            judge(&threads, Duration::from_secs(3), wedge),
            ExitProgress::Flushing
        );
        assert_eq!(
            judge(&threads, Duration::from_secs(10), wedge),
            ExitProgress::Wedged
        );
    }

    #[test]
    fn no_lock_wait_is_never_wedged() {
        let threads = [t("sparsefs-exit", None, None)];
        assert_eq!(
            judge(&threads, Duration::from_secs(600), Duration::from_secs(10)),
            ExitProgress::Flushing
        );
    }
}
