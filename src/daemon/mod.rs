//! Running a mount: logging, daemonising with a readiness pipe (the command returns
//! only once the mount is live), signals, and the `umount` and `stats` commands.

mod commands;
mod exit;

pub use commands::{stats, stats_prometheus, umount, umount_force};
pub use exit::{ExitProgress, judge};
use exit::{exit_watch, wedge_after};

use crate::cli::{Access, MountConfig};
use crate::file::Geometry;
use crate::fs::{FsConfig, STATS_XATTR, SparseFs};
use crate::fuse_adapter::Adapter;
use crate::ids::Ino;
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
    // The request threads take turns (vendor/fuser/SPARSEFS.md): a serial stream of quick
    // requests keeps one warm thread. SPARSEFS_EAGER_THREADS=1 restores fuser's every
    // thread waiting in read, for comparisons (docs/tuning.md, Threads).
    c.lazy_threads = std::env::var_os("SPARSEFS_EAGER_THREADS").is_none();
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
            flush_depth: cfg.flush_depth,
            read_depth: cfg.read_depth,
            // 1 MiB: 4 MiB and 16 MiB chunks were no faster (bench-scripts/maxwrite.sh,
            // readahead.sh; docs/tuning.md).
            read_chunk: 1 << 20,
        },
        max_dirty: cfg.max_dirty,
        dirty_age: cfg.dirty_age,
        creds: sys::geteuid() == 0,
        owner: sys::geteuid(),
        map_store: cfg.map_store,
        cache_writes: cfg.cache_writes,
        passthrough: cfg.passthrough,
        dir_cache: cfg.dir_cache,
        inode_handles: cfg.inode_handles,
        fd_high: cfg.max_fds,
        direct_writes: cfg.direct_writes,
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
    crate::flight::configure(cfg.flush_threads);
    crate::prefetch::configure(cfg.flush_threads);
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
    sys::merge_freed_memory_at_once();
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
    // Bound before the mount, so a bad or busy address fails with nothing mounted and a
    // scraper that connects as soon as the mount appears waits in the backlog.
    let metrics = match cfg.metrics.as_ref().map(|a| (a, crate::metrics::bind(a))) {
        None => None,
        Some((_, Ok(l))) => Some(l),
        Some((a, Err(e))) => return fail(format!("cannot serve metrics on {a}: {e}")),
    };
    fs.stats()
        .dirty_limit
        .store(cfg.max_dirty, std::sync::atomic::Ordering::Relaxed);
    fs.stats().fd_high.store(
        cfg.max_fds
            .unwrap_or_else(|| crate::fdpool::high_for_limit(sys::nofile_limit())),
        std::sync::atomic::Ordering::Relaxed,
    );
    let adapter = Adapter::new(fs.clone()).max_write(cfg.max_write as u32);
    let (session, mut unmounter) = match mount(cfg, adapter) {
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
    if let Some(l) = metrics {
        // The same path as `sparsefs stats`: the stats xattr's answer (atomics, and the
        // inode table's size under its read lock for a moment), on the metrics thread.
        let fs = fs.clone();
        let (mp, fsname) = (cfg.mountpoint.clone(), cfg.fsname.clone());
        let root = crate::fs::Caller { uid: 0, gid: 0 };
        let render = move || {
            let json = fs
                .getxattr(Ino::ROOT, std::ffi::OsStr::new(STATS_XATTR), 0, root)
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            crate::metrics::render(&json, &mp, &fsname)
        };
        if let Err(e) = crate::metrics::spawn(l, render) {
            error!(error = %e, "cannot start the metrics thread");
        }
    }
    if cfg.read_ahead > 0 {
        set_read_ahead(&cfg.mountpoint, cfg.read_ahead);
    }
    warn_request_cap(cfg.max_write.max(cfg.read_ahead));
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

/// Says so when the kernel will cut requests shorter than asked (`--max-write`,
/// `--read-ahead`): it takes at most `fs.fuse.max_pages_limit` pages per request (256, so
/// 1 MiB, by default). The limit is the system's, left as it is.
fn warn_request_cap(asked: u64) {
    let Ok(v) = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit") else {
        return;
    };
    let Ok(pages) = v.trim().parse::<u64>() else {
        return;
    };
    let cap = pages * 4096;
    if asked > cap {
        tracing::warn!(
            asked,
            cap,
            "the kernel caps FUSE requests at fs.fuse.max_pages_limit = {pages} pages; \
             raise it (sysctl -w fs.fuse.max_pages_limit={}) for larger requests",
            asked.div_ceil(4096)
        );
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
