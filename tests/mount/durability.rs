//! What is acknowledged is on the backend: ENOSPC and EIO reach the writer, fsync means synced, SIGTERM flushes, kill -9 keeps fsynced bytes, a wedged daemon can be ended.

use crate::harness::*;

#[test]
fn enospc_on_the_backend_reaches_the_writer() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=8m tmpfs {}",
        b.path().display()
    ));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = sh_status(&format!("umount -l {}", self.0.display()));
        }
    }
    let _u = Unmount(b.path().to_path_buf());
    let m = Mount::new(b.path(), &[]);
    let src = b.path().join("..").join(format!("rand-{}", rand_u64()));
    fs::write(&src, random_bytes((16 * MIB) as usize, 9)).unwrap();
    let out = sh_status(&format!(
        "dd if={} of={} bs=1M conv=fsync status=none",
        src.display(),
        m.p("big").display()
    ));
    let _ = fs::remove_file(&src);
    assert!(
        !out.status.success(),
        "dd must fail when the backend is full"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "dd said: {err}");
    // The mount keeps working after the error.
    fs::remove_file(m.p("big")).unwrap();
    fs::write(m.p("small"), b"ok").unwrap();
    assert_eq!(fs::read(m.p("small")).unwrap(), b"ok");
}

#[test]
fn fsync_puts_data_on_the_backend_before_returning() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &["--dirty-age", "1h"]);
    let data = random_bytes(3 * 1000 * 1000 + 17, 11);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(m.p("f"))
        .unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    assert_eq!(
        fs::read(b.path().join("f")).unwrap(),
        data,
        "fsynced data is on the backend while the file is open"
    );
    let stats = m.stats();
    assert!(json_u64(&stats, "backend.fsync.calls") >= 1);
}

#[test]
fn sigterm_flushes_and_unmounts() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mut m = Mount::new(b.path(), &["--dirty-age", "1h"]);
    let data = random_bytes(5 * 1000 * 1000, 12);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(m.p("f"))
        .unwrap();
    f.write_all(&data).unwrap();
    let pid = m.child.as_ref().unwrap().id();
    sh(&format!("kill -TERM {pid}"));
    let mut c = m.child.take().unwrap();
    let t = Instant::now();
    while c.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "daemon did not exit on SIGTERM"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
    drop(f);
    assert!(!is_mountpoint(m.path()));
    assert_eq!(
        fs::read(b.path().join("f")).unwrap(),
        data,
        "dirty data flushed at unmount"
    );
}

#[test]
fn a_sigterm_whose_flush_is_wedged_logs_the_stuck_threads_and_abandoned_bytes_and_exits() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mut m = wedgeable_mount(b.path(), "2");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(m.p("f"))
        .unwrap();
    f.write_all_at(&[7u8; 1000], 0).unwrap();
    wedge(&f);
    // No fork from here on: a child's exec closes its copy of `f`, and that close's
    // FLUSH would wait for the wedged lock.
    // SAFETY: plain syscall.
    assert_eq!(
        unsafe { libc::kill(daemon_pid(&m) as i32, libc::SIGTERM) },
        0
    );
    let mut c = m.child.take().unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "a wedged daemon did not give up its exit flush"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    };
    drop(f);
    let log = fs::read_to_string(&m.log).unwrap_or_default();
    assert!(
        !status.success(),
        "gave up: non-zero status ({status})\n{log}"
    );
    assert!(log.contains("exit flush wedged"), "{log}");
    assert!(
        log.contains("sparsefs-exit: waiting for Engine")
            || log.contains("sparsefs-flush: waiting for Engine"),
        "the stuck thread and its lock are named:\n{log}"
    );
    assert!(
        log.contains("sparsefs-wedge: running, holding [Engine]"),
        "the holder is named:\n{log}"
    );
    assert!(
        log.contains("dirty_bytes_abandoned=") && !log.contains("dirty_bytes_abandoned=0"),
        "the abandoned bytes are counted:\n{log}"
    );
}

#[test]
fn umount_force_ends_a_wedged_mount_its_stuck_callers_and_its_daemon() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mut m = wedgeable_mount(b.path(), "2");
    // The stuck caller is another process (this one forks `sparsefs umount` below: a
    // child's exec closing its copy of a wedged file would itself wait for the lock).
    let script = r#"
import os, sys, threading
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
os.pwrite(fd, b"x" * 1000, 0)
os.setxattr(fd, "user.sparsefs.debug.wedge", b"1")
def stuck():
    try:
        os.pwrite(fd, b"y", 0)
        print("write ok", flush=True)
    except OSError as e:
        print("write errno", e.errno, flush=True)
t = threading.Thread(target=stuck)
t.start()
print("ready", flush=True)
t.join()
"#;
    let mut py = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(m.p("f"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // The write is stuck in the wedged daemon: a thread of the caller waits for a FUSE
    // answer (its kernel stack says so).
    let stuck_in_fuse = || {
        fs::read_dir(format!("/proc/{}/task", py.id()))
            .map(|ts| {
                ts.flatten().any(|t| {
                    fs::read_to_string(t.path().join("stack"))
                        .is_ok_and(|s| s.contains("request_wait_answer"))
                })
            })
            .unwrap_or(false)
    };
    wait_for(
        "the write to wait for the wedged daemon",
        Duration::from_secs(10),
        stuck_in_fuse,
    );
    assert!(
        py.try_wait().unwrap().is_none(),
        "the write is stuck in the wedged daemon"
    );
    let force = Command::new(BIN)
        .args(["umount", "--force", "--wait", "10"])
        .arg(m.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&force.stdout).to_string()
        + &String::from_utf8_lossy(&force.stderr);
    assert!(force.status.success(), "umount --force: {text}");
    assert!(text.contains("aborted FUSE connection"), "{text}");
    assert!(text.contains("exited") || text.contains("killed"), "{text}");
    let t = Instant::now();
    while py.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the stuck caller never returned"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    // A request pending at the abort fails with ECONNABORTED, later ones with ENOTCONN.
    // Under load the kernel (6.18) sometimes reports success for a cached write whose
    // request the wedged daemon held (reproduced with a plain writer and a forced
    // umount): never acknowledged by sparsefs, so not on the backend.
    let failed = [libc::ECONNABORTED, libc::ENOTCONN]
        .iter()
        .any(|e| line.trim() == format!("write errno {e}"));
    assert!(
        failed || line.trim() == "write ok",
        "stuck caller: {line}; umount --force said: {text}; daemon log:\n{}",
        fs::read_to_string(&m.log).unwrap_or_default()
    );
    assert_ne!(
        fs::read(b.path().join("f")).unwrap_or_default().first(),
        Some(&b'y'),
        "the write the wedged daemon held never reached the backend"
    );
    assert!(!is_mountpoint(m.path()), "detached");
    let mut c = m.child.take().unwrap();
    let t = Instant::now();
    while c.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the daemon was not ended"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
    // Bad input: one line, non-zero, nothing touched.
    let bad = Command::new(BIN)
        .args(["umount", "--force"])
        .arg(b.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
}

#[test]
fn kill_9_keeps_fsynced_bytes_and_the_mount_point_is_reclaimed() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mut m = Mount::new(b.path(), &["--dirty-age", "1h"]);
    // SPARSEFS_CRASH_ROUNDS raises the count for the long suite (scripts/long-suite.sh).
    let rounds: u64 = std::env::var("SPARSEFS_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let synced = random_bytes(2 * 1000 * 1000 + 333, 100 + round);
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(m.p("synced"))
            .unwrap();
        f.write_all(&synced).unwrap();
        f.sync_all().unwrap();
        let pending = random_bytes(3 * MIB as usize, 200 + round);
        let mut g = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(m.p("pending"))
            .unwrap();
        g.write_all(&pending).unwrap();
        let mut c = m.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        drop(f);
        drop(g);
        assert_eq!(
            fs::read(b.path().join("synced")).unwrap(),
            synced,
            "round {round}: fsynced bytes intact"
        );
        let p = fs::read(b.path().join("pending")).unwrap();
        for (i, &x) in p.iter().enumerate() {
            assert!(
                x == 0 || x == pending[i],
                "round {round}: byte {i} was never written"
            );
        }
        // The dead mount point is reclaimed by the next mount.
        let dir = m.dir.path().to_path_buf();
        let child = Command::new(BIN)
            .arg("mount")
            .arg(b.path())
            .arg(&dir)
            .args(["-f", "--dirty-age", "1h"])
            .stderr(File::create(&m.log).unwrap())
            .spawn()
            .unwrap();
        m.child = Some(child);
        let log = m.log.clone();
        let t = Instant::now();
        while fs::metadata(dir.join("synced")).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "remount: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::park_timeout(Duration::from_millis(20));
        }
        assert_eq!(fs::read(m.p("synced")).unwrap(), synced);
    }
}

/// Issue 18: a stream's complete windows go to the backend while the application goes on
/// writing (window writes in flight, `--flush-depth` 4 by default; through `O_DIRECT` with
/// `--direct-writes always`, off by default). A read during the stream sees every byte
/// written so far, the close returns once all of them are on the backend, and the backend
/// holds exactly the stream.
#[test]
fn a_stream_writes_windows_in_flight_and_every_byte_lands_on_every_backing() {
    if !fuse_available() {
        return;
    }
    let runs = each_backing()
        .map(|b| (b, false))
        .chain(Backing::new("bindfs").map(|b| (b, true)));
    for (b, direct) in runs {
        let kind = b.kind();
        let args: &[&str] = if direct {
            &["-v", "--direct-writes", "always"]
        } else {
            &["-v"]
        };
        let mut m = Mount::new(b.path(), args);
        let data = random_bytes((40 * MIB) as usize, 18);
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(m.p("stream"))
            .unwrap();
        for (i, c) in data.chunks(MIB as usize).enumerate() {
            f.write_all(c).unwrap();
            if i == 20 {
                let back = fs::read(m.p("stream")).unwrap();
                assert!(
                    back.len() >= 21 * MIB as usize
                        && back[..21 * MIB as usize] == data[..21 * MIB as usize],
                    "{kind}: a read during the stream"
                );
            }
        }
        drop(f);
        assert!(
            fs::read(b.path().join("stream")).unwrap() == data,
            "{kind}: the backend after the close"
        );
        let stats = m.stats();
        assert!(json_u64(&stats, "flights") >= 8, "{kind}: {stats}");
        assert_eq!(json_u64(&stats, "flights_in_flight"), 0, "{kind}");
        assert_eq!(json_u64(&stats, "dirty_bytes"), 0, "{kind}");
        let log = m.stop();
        let want = if direct {
            "direct_writes=true"
        } else {
            "direct_writes=false"
        };
        assert!(
            log.contains(want),
            "{kind}: expected {want} in the log: {log}"
        );
    }
}
