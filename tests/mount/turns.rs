//! The request threads take turns (vendor/fuser/SPARSEFS.md): a serial stream of quick
//! requests is served by one thread, not by each thread in turn; and a request stalled on
//! the backend holds up the requests behind it for a few milliseconds at most, even one
//! that was expected to be quick and is served without waking another thread.

use crate::harness::*;
use crate::torture::{abort_connection, hang_report};
use std::collections::BTreeMap;

/// Voluntary context switches of each FUSE request thread (`fuser-N`) of `pid`.
fn request_thread_switches(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("fuser-") {
            continue;
        }
        let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.insert(comm.trim().to_string(), n);
    }
    out
}

/// Looks up `n` names that do not exist, one after another (a LOOKUP each, one at a time).
fn serial_lookups(m: &Mount, tag: &str, n: usize) {
    for i in 0..n {
        assert!(fs::symlink_metadata(m.p(&format!("{tag}-{i}"))).is_err());
    }
}

#[test]
fn one_process_issuing_one_request_at_a_time_is_served_by_one_thread() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &["-o", "threads=4"]);
    let pid = daemon_pid(&m);
    // Learn that lookups are quick.
    serial_lookups(&m, "warm", 200);
    let before = request_thread_switches(pid);
    assert_eq!(before.len(), 4, "{before:?}");
    serial_lookups(&m, "x", 4000);
    let after = request_thread_switches(pid);
    let mut delta: Vec<u64> = after.iter().map(|(k, v)| v - before[k]).collect();
    delta.sort_unstable_by(|a, b| b.cmp(a));
    let total: u64 = delta.iter().sum();
    let rest: u64 = delta[2..].iter().sum();
    // A request that finds its server asleep in read costs it a switch. One thread serves
    // the stream (another now and then, after a probe hand-off) and the standby ticks; the
    // other two sleep. With every thread waiting in read, as fuser does by default, each
    // of the four gets about a quarter.
    assert!(total >= 50, "switches per thread {delta:?}");
    assert!(
        rest * 10 <= total,
        "a serial stream should keep to one thread and the standby: switches per thread \
         {delta:?}"
    );
    let stats = run(&["stats", "--json", m.path().to_str().unwrap()]);
    let s = String::from_utf8_lossy(&stats.stdout);
    let (inline, handed) = (
        json_u64(&s, "requests_inline"),
        json_u64(&s, "requests_handed_off"),
    );
    assert!(inline >= 4000 && handed * 20 <= inline, "{s}");
}

/// The bindfs daemon serving `mnt`.
fn bindfs_pid(mnt: &Path) -> u32 {
    let want = mnt.to_string_lossy().to_string();
    for p in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = fs::read(p.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmd
            .split(|&c| c == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("bindfs")) && args.contains(&want) {
            return pid;
        }
    }
    panic!("no bindfs serving {want}");
}

#[test]
fn a_request_stalled_on_the_backend_does_not_hold_up_one_the_daemon_answers_itself() {
    if !fuse_available() {
        return;
    }
    let Some(b) = Backing::new("bindfs") else {
        panic!("bindfs is needed (apt-get install bindfs)");
    };
    let m = Mount::new(b.path(), &["-o", "threads=2"]);
    // A sparse file this mount knows: 1 MiB of data, then a hole to 64 MiB.
    let path = m.p("sparse");
    {
        let f = File::create(&path).unwrap();
        f.write_all_at(&vec![7u8; 1 << 20], 0).unwrap();
        f.set_len(64 << 20).unwrap();
    }
    let f = File::open(&path).unwrap();
    let seek = |off: i64| unsafe { libc::lseek(f.as_raw_fd(), off, libc::SEEK_HOLE) };
    // Learn that lookups and seeks are quick: the stalled lookup below is then served by
    // the thread that read it, with nobody else listening.
    serial_lookups(&m, "warm", 200);
    for _ in 0..200 {
        assert_eq!(seek(0), 1 << 20);
    }
    let bindfs = bindfs_pid(b.path());
    sh(&format!("kill -STOP {bindfs}"));
    let stalled = std::thread::spawn({
        let p = m.p("stalled");
        move || fs::symlink_metadata(p).is_err()
    });
    // Let the lookup reach the stopped backend.
    std::thread::sleep(Duration::from_millis(300));
    let (tx, rx) = std::sync::mpsc::channel();
    let seeker = std::thread::spawn({
        let f = f.try_clone().unwrap();
        move || {
            let t = Instant::now();
            let r = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
            let _ = tx.send((r, t.elapsed()));
        }
    });
    let answer = rx.recv_timeout(Duration::from_secs(10));
    if answer.is_err() {
        let report = hang_report(&[daemon_pid(&m)], &[std::process::id()]);
        sh(&format!("kill -CONT {bindfs}"));
        abort_connection(m.path());
        panic!("a seek waited 10 s behind a lookup stalled on the backend:\n{report}");
    }
    sh(&format!("kill -CONT {bindfs}"));
    let (r, took) = answer.unwrap();
    seeker.join().unwrap();
    assert!(
        stalled.join().unwrap(),
        "the stalled lookup ends once bindfs goes on"
    );
    assert_eq!(r, 1 << 20, "SEEK_HOLE from the extent index");
    // Two standby ticks (8 ms) and scheduling; generous for a loaded machine.
    assert!(
        took < Duration::from_secs(2),
        "the seek waited {took:?} behind the stalled lookup"
    );
}
