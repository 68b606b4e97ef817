//! The commands that talk to a running mount from outside: umount (also --force for a hung one) and stats.

use super::*;

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

/// The stats JSON of the mount at `mp`, read from its daemon through the stats xattr.
fn read_stats(mp: &Path) -> Result<String, String> {
    let name = std::ffi::CString::new(STATS_XATTR).expect("no NUL");
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
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// `sparsefs stats --prometheus`: the counters once in the Prometheus text format, the
/// same text `--metrics` serves (labels: the canonical mount point and the mount's
/// source as /proc/self/mountinfo shows it, which is its fsname).
///
/// # Errors
/// A one-line message.
pub fn stats_prometheus(mp: &Path) -> Result<(), String> {
    let json = read_stats(mp)?;
    let canon = std::fs::canonicalize(mp).map_err(|e| format!("{}: {e}", mp.display()))?;
    let fsname = crate::mountinfo::find(&canon)
        .map(|m| m.source)
        .unwrap_or_default();
    print!("{}", crate::metrics::render(&json, &canon, &fsname));
    Ok(())
}

/// `sparsefs stats`: reads the counters from the running daemon.
///
/// # Errors
/// A one-line message.
pub fn stats(mp: &Path, json: bool, watch: Option<f64>) -> Result<(), String> {
    let mut last: Option<(std::time::Instant, Vec<(String, u64)>)> = None;
    loop {
        let text = read_stats(mp)?;
        let now = (std::time::Instant::now(), crate::stats::flatten_json(&text));
        if json {
            println!("{text}");
        } else {
            print!("{}", crate::stats::table_from_json(&text));
            if let Some(prev) = &last {
                print!("{}", crate::stats::rates(&prev.1, &now.1, now.0 - prev.0));
            }
        }
        last = Some(now);
        match watch {
            Some(s) if s > 0.0 => std::thread::sleep(std::time::Duration::from_secs_f64(s)),
            _ => return Ok(()),
        }
    }
}
