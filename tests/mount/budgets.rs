//! Backend call budgets of whole workloads, counted by the daemon's stats and by strace.

use crate::harness::*;

#[test]
fn rsync_s_of_a_2g_image_costs_one_pwrite_per_extent_counted_by_stats_and_strace() {
    if !fuse_available() || !have("rsync") || !have("strace") {
        return;
    }
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("img");
    // Three extents in four straddle a 4 MiB write-size window boundary: each is still
    // one backend write (found by the benchmark: 80 writes for 64 extents).
    let extents: Vec<(u64, u64)> = (0..64u64)
        .map(|i| (i * 32 * MIB + 3 * MIB + (i % 4) * MIB / 4, MIB))
        .collect();
    make_image(&src, 2048 * MIB, &extents);
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &[]);
    let trace = src_dir.path().join("strace.txt");
    let mut st = Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&trace)
        .args(["-p", &daemon_pid(&m).to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // strace says "Process N attached" on stderr once it is in place.
    let mut err = st.stderr.take().unwrap();
    let mut seen = Vec::new();
    let t = Instant::now();
    while !String::from_utf8_lossy(&seen).contains("attached") {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut err, &mut buf).unwrap();
        assert!(
            n > 0 && t.elapsed() < Duration::from_secs(20),
            "strace did not attach"
        );
        seen.extend_from_slice(&buf[..n]);
    }
    sh(&format!(
        "rsync -S {} {}/img",
        src.display(),
        m.path().display()
    ));
    let stats = m.stats();
    sh(&format!("kill -INT {}", st.id()));
    st.wait().unwrap();
    let calls = strace_counts(&trace);
    let writes = ["pwrite64", "pwritev", "pwritev2", "write"]
        .iter()
        .filter_map(|k| calls.get(*k))
        .sum::<u64>();
    // "write" also counts the daemon's FUSE replies; pwrite*/lseek/ftruncate are backend only.
    let pwrites = ["pwrite64", "pwritev", "pwritev2"]
        .iter()
        .filter_map(|k| calls.get(*k))
        .sum::<u64>();
    assert_eq!(json_u64(&stats, "backend.write.calls"), 64, "{stats}");
    assert_eq!(pwrites, 64, "strace: {calls:?}");
    assert!(writes >= pwrites);
    assert_eq!(json_u64(&stats, "backend.lseek.calls"), 0);
    assert_eq!(
        calls.get("lseek").copied().unwrap_or(0),
        0,
        "strace: {calls:?}"
    );
    assert_eq!(json_u64(&stats, "backend.ftruncate.calls"), 1, "{stats}");
    assert_eq!(
        calls.get("ftruncate").copied().unwrap_or(0),
        1,
        "strace: {calls:?}"
    );
    assert_eq!(calls.get("fallocate").copied().unwrap_or(0), 0);
    drop(m);
    assert!(files_equal(&src, &b.path().join("img")));
    // ext4 may add a block of extent-tree metadata to st_blocks
    let alloc = allocated(&b.path().join("img"));
    assert!(
        (64 * MIB..=64 * MIB + 64 * 1024).contains(&alloc),
        "allocated {alloc}"
    );
}
