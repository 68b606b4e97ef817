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

/// Whether a FUSE request thread of `pid` waits in the kernel in a function whose name
/// contains `what`, by its kernel stack.
fn request_thread_waits_in(pid: u32, what: &str) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stack = fs::read_to_string(t.path().join("stack")).unwrap_or_default();
        comm.starts_with("fuser-") && stack.contains(what)
    })
}

#[test]
fn a_request_stalled_on_the_backend_does_not_hold_up_one_the_daemon_answers_itself() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
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
    fs::write(m.p("leased"), b"x").unwrap();
    // Learn that opens and seeks are quick: the stalled open below is then served by the
    // thread that read it, with nobody else listening, and only the standby can take the
    // seek.
    for _ in 0..200 {
        drop(File::open(m.p("leased")).unwrap());
        assert_eq!(seek(0), 1 << 20);
    }
    // A read lease on the backing file: the daemon's open of it for writing waits until
    // the lease is given up (or lease-break-time, 45 s), as a backend call stalls on a
    // network filesystem. The lease holder gets SIGIO at the break: ignored.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    // EAGAIN while the file is open for writing anywhere: the daemon closes its backend
    // fd at the release of the last open above, which the kernel sends without waiting
    // for it (under load it can come after this point): tried again until then.
    let lease = File::open(b.path().join("leased")).unwrap();
    let t = Instant::now();
    loop {
        let r = unsafe { libc::fcntl(lease.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
        let e = std::io::Error::last_os_error();
        if r == 0 {
            break;
        }
        assert!(
            e.raw_os_error() == Some(libc::EAGAIN) && t.elapsed() < Duration::from_secs(10),
            "F_SETLEASE: {e}"
        );
        std::thread::park_timeout(Duration::from_millis(10));
    }
    let unlease = || unsafe { libc::fcntl(lease.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    let stalled = std::thread::spawn({
        let p = m.p("leased");
        move || OpenOptions::new().write(true).open(p).is_ok()
    });
    let daemon = daemon_pid(&m);
    let t = Instant::now();
    while !request_thread_waits_in(daemon, "break_lease") {
        if t.elapsed() > Duration::from_secs(10) {
            unlease();
            panic!("no request thread of the daemon ever waited on the lease");
        }
        std::thread::park_timeout(Duration::from_millis(5));
    }
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
        let report = hang_report(&[daemon], &[std::process::id()]);
        unlease();
        abort_connection(m.path());
        panic!("a seek waited 10 s behind an open stalled on the backend:\n{report}");
    }
    unlease();
    let (r, took) = answer.unwrap();
    seeker.join().unwrap();
    assert!(
        stalled.join().unwrap(),
        "the stalled open ends once the lease is gone"
    );
    assert_eq!(r, 1 << 20, "SEEK_HOLE from the extent index");
    // Two standby ticks (8 ms) and scheduling; generous for a loaded machine.
    assert!(
        took < Duration::from_secs(2),
        "the seek waited {took:?} behind the stalled open"
    );
}
