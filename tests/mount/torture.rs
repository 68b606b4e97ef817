//! The mount never hangs: many threads in several processes mix every operation over a
//! few shared files, through two mounts of one backing, while a watchdog fails the test
//! after 10 s without progress of any thread, printing the daemons' thread stacks and the
//! stuck callers' kernel stacks before ending the mounts through fusectl.
//!
//! Shared files (`shared/s0..s2`) get everything: stat with `AT_STATX_FORCE_SYNC`,
//! open/close in every mode (read-only opens of dense files become kernel passthrough),
//! `O_DIRECT`, reads, writes of data and zeros, SEEK_DATA/SEEK_HOLE, truncate by fd and
//! by path, punch, zero-range, allocate, fsync, rename, link, unlink while open, readdir,
//! xattrs, copy_file_range, mmap writes, chmod and utimes. Their contents are not checked
//! (many writers); errors such as ENOENT are expected there, but `ENOTCONN` (the daemon
//! died, for example on a lock-order abort) and `EIO` are not. Each thread also owns a file
//! only it writes, checked against a byte model after every operation that reads it and
//! at the end through the other mount (close-to-open).
//!
//! Worker processes are this test binary run again on [`torture_worker_process`] (an
//! ignored test that does nothing unless `SPARSEFS_TORTURE_WORKER` is set).

#[path = "torture_ops.rs"]
mod ops;

use crate::harness::*;
use ops::*;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Seconds without progress of one thread before the run counts as hung.
const STALL: Duration = Duration::from_secs(10);

/// Minor device number of the FUSE mount at `mnt` (its fusectl connection).
fn fuse_minor(mnt: &Path) -> Option<String> {
    // Never canonicalize: resolving a hung mount's path would hang the watchdog too.
    let mnt = std::path::absolute(mnt).ok()?;
    sparsefs::mountinfo::find(&mnt).map(|m| m.dev.1.to_string())
}

/// Ends a hung mount for good: its connection is aborted, its daemon killed.
fn end_hung(m: &Mount) {
    abort_connection(m.path());
    let _ = sh_status(&format!("kill -9 {}", daemon_pid(m)));
}

/// Ends a wedged FUSE mount: every pending request fails with ENOTCONN.
pub fn abort_connection(mnt: &Path) {
    let _ = sh_status(
        "mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections",
    );
    if let Some(minor) = fuse_minor(mnt) {
        let _ = fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
    }
}

/// The daemons' user stacks (gdb) and the kernel stacks of every thread of `callers`.
pub fn hang_report(daemons: &[u32], callers: &[u32]) -> String {
    let mut out = String::new();
    for pid in daemons {
        let bt = Command::new("timeout")
            .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-ex"])
            .arg("thread apply all bt")
            .output();
        out += &format!("==== daemon {pid}: gdb thread apply all bt\n");
        match bt {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout);
                // Only the frames that say something: thread headers and our own code,
                // locks and syscalls.
                for l in text.lines() {
                    if l.starts_with("Thread ")
                        || l.contains("sparsefs::")
                        || l.contains("parking_lot")
                        || l.contains("syscall")
                        || l.contains("futex")
                    {
                        out += l;
                        out.push('\n');
                    }
                }
            }
            Err(e) => out += &format!("gdb: {e}\n"),
        }
    }
    for pid in daemons.iter().chain(callers) {
        out += &format!("==== kernel stacks of {pid}\n");
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let stack = fs::read_to_string(t.path().join("stack")).unwrap_or_default();
                let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                if stack.contains("fuse") {
                    out += &format!(
                        "-- task {} ({})\n{stack}",
                        t.file_name().to_string_lossy(),
                        comm.trim()
                    );
                }
            }
        }
    }
    out
}

/// Watches progress counters; returns the index of a counter that did not move for
/// [`STALL`] while `running` says work is going on, or `None` once `done` says all ended.
fn watch(mut counters: impl FnMut() -> Vec<u64>, mut done: impl FnMut() -> bool) -> Option<usize> {
    let mut last: Vec<(u64, Instant)> = Vec::new();
    loop {
        if done() {
            return None;
        }
        let now = Instant::now();
        let c = counters();
        if last.len() != c.len() {
            last = c.iter().map(|&v| (v, now)).collect();
        }
        for (i, v) in c.iter().enumerate() {
            if *v == u64::MAX {
                continue; // finished
            }
            if *v != last[i].0 {
                last[i] = (*v, now);
            } else if now.duration_since(last[i].1) > STALL {
                return Some(i);
            }
        }
        std::thread::park_timeout(Duration::from_millis(200));
    }
}

#[test]
fn stat_racing_open_of_one_file_never_hangs() {
    // Two threads looping statx(AT_STATX_FORCE_SYNC) and one looping open+close of one
    // file froze the whole mount within seconds: getattr held the engine lock and waited
    // for the stamp lock, open held the stamp lock and waited for the engine.
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &[]);
    let path = m.p("f");
    fs::write(&path, b"hello").unwrap();
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let finished = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut threads = Vec::new();
    for i in 0..3 {
        let (c, fin, path) = (counters.clone(), finished.clone(), path.clone());
        threads.push(std::thread::spawn(move || {
            let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
            while Instant::now() < deadline {
                if i < 2 {
                    let mut sx = std::mem::MaybeUninit::<libc::statx>::zeroed();
                    // SAFETY: valid path and output buffer.
                    let r = unsafe {
                        libc::statx(
                            libc::AT_FDCWD,
                            cpath.as_ptr(),
                            libc::AT_STATX_FORCE_SYNC,
                            libc::STATX_ALL,
                            sx.as_mut_ptr(),
                        )
                    };
                    assert_eq!(r, 0, "statx: {}", std::io::Error::last_os_error());
                } else {
                    drop(File::open(&path).unwrap());
                }
                c[i].fetch_add(1, Relaxed);
            }
            c[i].store(u64::MAX, Relaxed);
            fin.fetch_add(1, Relaxed);
        }));
    }
    let stuck = watch(
        || counters.iter().map(|c| c.load(Relaxed)).collect(),
        || finished.load(Relaxed) == 3,
    );
    if let Some(i) = stuck {
        let report = hang_report(&[daemon_pid(&m)], &[std::process::id()]);
        end_hung(&m);
        panic!("thread {i} made no progress for {STALL:?}: the mount hung\n{report}");
    }
    for t in threads {
        t.join().unwrap();
    }
}

/// The worker side: runs its threads and writes a summary to the result file.
#[test]
#[ignore = "a worker process of the torture test, started by it"]
fn torture_worker_process() {
    let Ok(spec) = std::env::var("SPARSEFS_TORTURE_WORKER") else {
        return;
    };
    let cfg = WorkerCfg::decode(&spec);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..cfg.threads)
            .map(|t| {
                let cfg = &cfg;
                s.spawn(move || run_thread(cfg, t))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut out = String::new();
    for t in &tallies {
        for (op, n) in &t.ops {
            out += &format!("op {op} {n}\n");
        }
        for ((op, e), n) in &t.errnos {
            out += &format!("errno {op} {e} {n}\n");
        }
        for f in &t.fatal {
            out += &format!("fatal {f}\n");
        }
    }
    fs::write(&cfg.result, out).unwrap();
}

/// Runs the torture for `secs` over `backing` with `procs` worker processes of
/// `threads` threads each. Returns a summary line.
pub fn torture(backing: &Path, secs: u64, procs: usize, threads: usize, args: &[&str]) -> String {
    let m1 = Mount::new(backing, args);
    let m2 = Mount::new(backing, args);
    for d in ["shared", "own"] {
        fs::create_dir_all(m1.p(d)).unwrap();
    }
    for i in 0..3 {
        fs::write(m1.p(&format!("shared/s{i}")), random_bytes(1 << 20, i)).unwrap();
    }
    fs::write(m1.p("shared/m0"), random_bytes(64 << 10, 9)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let progress = work.path().join("progress");
    fs::write(&progress, vec![0u8; 16 * procs * threads]).unwrap();
    let seed = rand_u64();
    eprintln!("torture: seed {seed}, {procs} processes x {threads} threads, {secs} s");
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<(Child, PathBuf)> = (0..procs)
        .map(|p| {
            let result = work.path().join(format!("result-{p}"));
            let cfg = WorkerCfg {
                mounts: [m1.path().to_path_buf(), m2.path().to_path_buf()],
                progress: progress.clone(),
                slot: p * threads,
                threads,
                secs,
                seed: seed.wrapping_add(p as u64),
                result: result.clone(),
            };
            let mut mounts = cfg.mounts.clone();
            if p % 2 == 1 {
                // Odd processes own their files on the second mount.
                mounts.swap(0, 1);
            }
            let cfg = WorkerCfg { mounts, ..cfg };
            let child = Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "torture::torture_worker_process",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("SPARSEFS_TORTURE_WORKER", cfg.encode())
                .stdout(Stdio::null())
                .stderr(File::create(work.path().join(format!("stderr-{p}"))).unwrap())
                .spawn()
                .unwrap();
            (child, result)
        })
        .collect();
    let started = Instant::now();
    let stuck = {
        // A worker that exited (done, or killed) makes no more progress: its slots are
        // not watched any more.
        let children = std::cell::RefCell::new(&mut children);
        let exited = |p: usize| {
            let mut c = children.borrow_mut();
            c[p].0.try_wait().ok().flatten().is_some()
        };
        watch(
            || {
                let b = fs::read(&progress).unwrap_or_default();
                b.chunks(16)
                    .enumerate()
                    .map(|(slot, c)| {
                        if exited(slot / threads) {
                            u64::MAX
                        } else {
                            u64::from_le_bytes(c[..8].try_into().unwrap())
                        }
                    })
                    .collect()
            },
            || (0..procs).all(exited),
        )
    };
    if let Some(slot) = stuck {
        let b = fs::read(&progress).unwrap_or_default();
        let op = u64::from_le_bytes(b[slot * 16 + 8..slot * 16 + 16].try_into().unwrap());
        let callers: Vec<u32> = children.iter().map(|(c, _)| c.id()).collect();
        let report = hang_report(&[daemon_pid(&m1), daemon_pid(&m2)], &callers);
        end_hung(&m1);
        end_hung(&m2);
        for (c, _) in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        panic!(
            "torture: thread slot {slot} made no progress for {STALL:?} in {} (after {:.0} s): \
             the mount hung\n{report}",
            OPS.get(op as usize).unwrap_or(&"?"),
            started.elapsed().as_secs_f64()
        );
    }
    let mut ops: BTreeMap<String, u64> = BTreeMap::new();
    let mut errnos: BTreeMap<String, u64> = BTreeMap::new();
    let mut fatal = Vec::new();
    for (p, (c, result)) in children.iter_mut().enumerate() {
        let st = c.wait().unwrap();
        let text = fs::read_to_string(&*result).unwrap_or_default();
        if !st.success() || text.is_empty() {
            fatal.push(format!(
                "worker {p} exited {st}: {}",
                fs::read_to_string(work.path().join(format!("stderr-{p}"))).unwrap_or_default()
            ));
        }
        for l in text.lines() {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            match f[0] {
                "op" => *ops.entry(f[1].to_string()).or_default() += f[2].parse::<u64>().unwrap(),
                "errno" => {
                    *errnos.entry(format!("{} {}", f[1], f[2])).or_default() +=
                        f[3].parse::<u64>().unwrap()
                }
                _ => fatal.push(l.to_string()),
            }
        }
    }
    let secs_run = started.elapsed().as_secs_f64();
    let total: u64 = ops.values().sum();
    let log1 = m1.log_so_far();
    let log2 = m2.log_so_far();
    let stderr: String = (0..procs)
        .map(|p| fs::read_to_string(work.path().join(format!("stderr-{p}"))).unwrap_or_default())
        .collect();
    assert!(
        fatal.is_empty(),
        "torture failed (seed {seed}):\n{}\nerrnos: {errnos:?}\ndaemon logs:\n{log1}\n{log2}\nworkers:\n{}",
        fatal.join("\n"),
        stderr.chars().take(20_000).collect::<String>()
    );
    for op in OPS
        .iter()
        .filter(|_| std::env::var("SPARSEFS_TORTURE_OPS").is_err())
    {
        assert!(
            ops.get(*op).copied().unwrap_or(0) > 0,
            "operation {op} never ran: {ops:?}"
        );
    }
    for (log, name) in [(&log1, "first"), (&log2, "second")] {
        assert!(
            !log.contains("lock order violated"),
            "{name} daemon saw a lock-order violation:\n{log}"
        );
    }
    drop(m2);
    drop(m1);
    format!(
        "torture: {total} operations in {secs_run:.0} s ({:.0}/s), {procs} processes x {threads} \
         threads, 2 mounts, 0 hangs; errnos seen: {errnos:?}",
        total as f64 / secs_run
    )
}

/// Seconds of the default run (`SPARSEFS_TORTURE_SECS` overrides; the long suite runs 600).
fn torture_secs() -> u64 {
    std::env::var("SPARSEFS_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

#[test]
fn many_threads_and_processes_mixing_every_operation_never_hang_the_mount() {
    if !fuse_available() {
        return;
    }
    for_each_backing(|b| {
        let extra = std::env::var("SPARSEFS_TORTURE_ARGS").unwrap_or_default();
        let args: Vec<&str> = extra.split_whitespace().collect();
        let summary = torture(b.path(), torture_secs(), 2, 3, &args);
        eprintln!("{summary}");
    });
}
