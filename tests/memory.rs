//! The daemon's memory after the kernel forgets what a big walk made it know. A binary of
//! its own: it drops the kernel's dentry and inode caches (`echo 2 > drop_caches`), which
//! would disturb the kernel-cache tests of the mount binary running beside it (cargo runs
//! test binaries one after another).

#![allow(dead_code, unused_imports)]

#[path = "mount/harness.rs"]
mod harness;
#[path = "mount/images.rs"]
mod images;

use harness::*;

/// The daemon's resident set, from /proc/PID/status.
fn rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A walk that makes the daemon know 40,000 files (a stat of each through the mount),
/// then the kernel forgets them (`drop_caches`, as memory pressure would): the daemon
/// gives the memory back, its RSS falls to within a quarter of what the walk added (a
/// daemon that had known 1,000,000 files stayed at 2 GiB: the inode table's hash maps
/// never shrank and glibc kept the freed memory in its arenas).
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn the_memory_of_inodes_the_kernel_forgot_is_given_back() {
    if !fuse_available() {
        return;
    }
    const DIRS: usize = 40;
    const PER: usize = 1000;
    let b = tempfile::tempdir().unwrap();
    for d in 0..DIRS {
        let dir = b.path().join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for i in 0..PER {
            File::create(dir.join(format!("f{i}"))).unwrap();
        }
    }
    let m = Mount::new(b.path(), &[]);
    let pid = daemon_pid(&m);
    let start = rss_kib(pid);
    for d in 0..DIRS {
        for i in 0..PER {
            fs::symlink_metadata(m.p(&format!("d{d}/f{i}"))).unwrap();
        }
    }
    let stats = m.stats();
    assert!(json_u64(&stats, "inodes") >= (DIRS * PER) as u64, "{stats}");
    let walked = rss_kib(pid);
    let grown = walked.saturating_sub(start);
    assert!(
        grown > 16 << 10,
        "the walk added only {grown} KiB: nothing to measure"
    );
    sh("sync; echo 2 > /proc/sys/vm/drop_caches");
    // The kernel's forgets come in batches; the flusher thread gives memory back between
    // its rounds (one a second).
    let t = Instant::now();
    loop {
        let stats = m.stats();
        let (inodes, trims, now) = (
            json_u64(&stats, "inodes"),
            json_u64(&stats, "memory_trims"),
            rss_kib(pid),
        );
        if inodes < 100 && trims > 0 && now < start + grown / 4 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "RSS {start} KiB at mount, {walked} KiB after the walk, {now} KiB 30 s after \
             the kernel was told to forget it ({inodes} inodes known, {trims} trims)"
        );
        std::thread::park_timeout(Duration::from_millis(100));
    }
}
