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

/// The daemon's metadata calls by kind (`sparsefs stats --json`, `meta.*.calls`).
fn meta_calls(stats: &str) -> std::collections::BTreeMap<&'static str, u64> {
    [
        "open", "reopen", "stat", "create", "unlink", "rename", "setattr", "xattr", "readdir",
        "readlink", "statfs", "fsync", "handle",
    ]
    .into_iter()
    .map(|k| (k, json_u64(stats, &format!("meta.{k}.calls"))))
    .collect()
}

/// Metadata calls per file by kind between two stats, in tenths (rounded up: calls made
/// once for the directory or the workload do not hide a call per file).
fn per_file_tenths(
    before: &str,
    after: &str,
    files: u64,
) -> std::collections::BTreeMap<&'static str, u64> {
    let (a, b) = (meta_calls(before), meta_calls(after));
    b.iter()
        .map(|(k, n)| (*k, (n - a[k]) * 10 / files))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn metadata_calls_per_file_of_create_lookup_rename_and_unlink_stay_within_their_budget() {
    if !fuse_available() {
        return;
    }
    const N: u64 = 200;
    let b = tempfile::tempdir().unwrap();
    // ext4 (the backing here): inodes are anchored by handle and a lookup opens nothing.
    let ext4 = {
        let mut st = unsafe_zeroed::<libc::statfs>();
        let c = CString::new(b.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: c is a valid C string, st a statfs to fill.
        assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
        st.f_type == 0xEF53 && unsafe_free_is_root()
    };
    let budget = |pairs: &[(&'static str, u64)]| -> std::collections::BTreeMap<&'static str, u64> {
        pairs.iter().copied().collect()
    };
    std::fs::create_dir(b.path().join("d")).unwrap();
    let mut m = Mount::new(b.path(), &[]);
    let data = vec![7u8; 1000];
    let files: Vec<String> = (0..N).map(|i| format!("d/f{i}")).collect();
    // create + write + close: the kernel's lookup (a miss), the create (open, its O_PATH
    // fd reopened through /proc, one stat, its handle), the stamp after the close's
    // write, and the kernel's getattrs of the file and its directory after the change.
    let s0 = m.stats();
    for n in &files {
        std::fs::write(m.p(n), &data).unwrap();
    }
    let s1 = m.stats();
    let create = per_file_tenths(&s0, &s1, N);
    drop(m.stop());
    // A new mount: the kernel knows no file; stat of each is one lookup.
    let m = Mount::new(b.path(), &[]);
    let s0 = m.stats();
    for n in &files {
        std::fs::symlink_metadata(m.p(n)).unwrap();
    }
    let s1 = m.stats();
    let lookup = per_file_tenths(&s0, &s1, N);
    // rename to a new name: the kernel's lookup of the new name (a miss), one stat of
    // each name, the rename, and the directory's getattr after the change.
    for n in &files {
        std::fs::rename(m.p(n), m.p(&format!("{n}.r"))).unwrap();
    }
    let s2 = m.stats();
    let rename = per_file_tenths(&s1, &s2, N);
    // unlink: one stat of the name, the unlink, the sidecar record's removal tried (no
    // sidecar directory: one failed open), the directory's getattr.
    for n in &files {
        std::fs::remove_file(m.p(&format!("{n}.r"))).unwrap();
    }
    let s3 = m.stats();
    let unlink = per_file_tenths(&s2, &s3, N);
    let got = [
        ("create", create),
        ("lookup", lookup),
        ("rename", rename),
        ("unlink", unlink),
    ];
    eprintln!("per file, in tenths of a call: {got:?}");
    drop(m);
    assert!(
        names(b.path()).iter().all(|n| n == "d"),
        "{:?}",
        names(b.path())
    );
    if !ext4 {
        return;
    }
    // At most, per file (the kernel's getattr of the directory after a change is not
    // always sent: its attributes may still be cached).
    let want = [
        (
            "create",
            budget(&[("handle", 10), ("open", 10), ("reopen", 10), ("stat", 40)]),
        ),
        ("lookup", budget(&[("handle", 10), ("stat", 10)])),
        ("rename", budget(&[("rename", 10), ("stat", 40)])),
        (
            "unlink",
            budget(&[("open", 10), ("stat", 20), ("unlink", 10)]),
        ),
    ];
    for ((step, got), (_, want)) in got.iter().zip(&want) {
        for (kind, n) in got {
            assert!(
                *n <= want.get(kind).copied().unwrap_or(0),
                "{step}: {kind} {n} tenths of a call per file, budget {want:?} (all: {got:?})"
            );
        }
    }
}

/// A directory `t` of 300 one-byte files made on the backing (the mount knows none).
fn three_hundred_files(b: &Path) {
    fs::create_dir(b.join("t")).unwrap();
    for i in 0..300 {
        fs::write(b.join(format!("t/f{i}")), b"x").unwrap();
    }
}

/// `rm -rf` of `t` through the mount; the daemon's stats before and after.
fn remove_t(m: &Mount, b: &Path) -> (String, String) {
    let before = m.stats();
    sh(&format!("rm -rf {}", m.p("t").display()));
    let after = m.stats();
    assert!(!b.join("t").exists());
    (before, after)
}

/// Where the sidecar record of the backing file `name` is.
fn record_of(b: &Path, name: &str) -> PathBuf {
    let ino = fs::metadata(b.join(name)).unwrap().ino();
    b.join(".sparsefs-maps").join(ino.to_string())
}

/// `rm -rf` of files this mount knows nothing of (made on the backing, which takes
/// xattrs, so there is no sidecar directory of maps): the removals look for the sidecar
/// directory about once, not once per file (a round trip each on a networked backend).
/// Where the sidecar holds records, removing a file still removes its record
/// (`maps::stored_maps_go_with_their_files`).
#[test]
fn removing_unknown_files_looks_for_the_sidecar_directory_once() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    three_hundred_files(b.path());
    let m = Mount::new(b.path(), &[]);
    let (before, after) = remove_t(&m, b.path());
    let opens = json_u64(&after, "meta.open.calls") - json_u64(&before, "meta.open.calls");
    assert!(opens <= 10, "{opens} backend opens to remove 300 files");
}

/// FUSE requests of one opcode the daemon answered so far: the sum of its latency
/// histogram's buckets in `stats --json` (`"fuse":{"readdir":{"sum_ns":N,"b3":N,...}}`).
fn fuse_calls(stats: &str, op: &str) -> u64 {
    let Some(at) = stats.find("\"fuse\":{") else {
        panic!("no fuse counters in {stats}")
    };
    let rest = &stats[at..];
    let Some(o) = rest.find(&format!("\"{op}\":{{")) else {
        return 0; // never seen
    };
    let body = &rest[o..];
    let body = &body[..body.find('}').unwrap()];
    body.split(',')
        .filter_map(|kv| kv.split_once(':'))
        .filter(|(k, _)| k.trim_matches('"').starts_with('b'))
        .map(|(_, v)| v.parse::<u64>().unwrap())
        .sum()
}

/// A listing for names and types only (`find`, `ls -f`, `readdir` without stats) costs
/// what a plain readdir costs: the kernel's first readdirplus of a listing is answered
/// with names only (node id 0: the kernel lists them without linking attributes), so no
/// entry is looked up on the backend and no request is spent on a reply of `.` and `..`
/// alone (an earlier answer that made `find` cost 6 requests a directory against
/// bindfs's 5). What is then stat'ed must show the backend's attributes, not the empty
/// ones of the names-only reply (fuser wrote the node id from the attributes' inode
/// number, which made the kernel link every name as a file of mode 000).
#[test]
fn a_listing_of_names_looks_nothing_up_and_stats_after_it_show_the_backend() {
    if !fuse_available() {
        return;
    }
    for_each_backing(names_only_listings);
}

fn names_only_listings(b: &Backing) {
    use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt, symlink};
    let d = b.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    symlink("f0", d.join("link")).unwrap();
    for i in 0..18 {
        let f = d.join(format!("f{i}"));
        fs::write(&f, b"x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600 + i)).unwrap();
    }
    // Long names: the first reply (names with room for attributes, about 150 bytes
    // each) holds a fraction of these, plain readdirs the rest.
    let big = b.path().join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..1500 {
        fs::write(big.join(format!("{i:05}-{}", "n".repeat(60))), b"").unwrap();
    }
    let m = Mount::new(b.path(), &[]);
    let listing = |dir: &Path| {
        let mut v: Vec<(String, fs::FileType, u64)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    e.file_type().unwrap(),
                    e.ino(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let before = m.stats();
    let listed = listing(&m.p("d"));
    let after = m.stats();
    let delta = |op: &str| fuse_calls(&after, op) - fuse_calls(&before, op);
    assert_eq!(listed.len(), 20, "{listed:?}");
    // The directory's own lookup, and a request's count lands just after its reply, so a
    // count may still miss the last readdir: at most 2 listing requests, where answering
    // `.` and `..` alone first took 3.
    assert!(
        delta("lookup") <= 1 && delta("readdirplus") == 1 && delta("readdir") <= 1,
        "a listing of 20 names: one readdirplus with them all and the readdir that finds \
         the end, no lookup of an entry\n{after}"
    );
    assert_eq!(
        json_u64(&after, "inodes"),
        json_u64(&before, "inodes") + 1,
        "the listing made the daemon know its entries (only the directory is new)\n{after}"
    );
    for (name, kind, ino) in &listed {
        let st = fs::symlink_metadata(m.p(&format!("d/{name}"))).unwrap();
        let back = fs::symlink_metadata(d.join(name)).unwrap();
        assert_eq!(st.file_type(), *kind, "{name}: type listed against stat");
        assert_eq!(st.ino(), *ino, "{name}: d_ino against st_ino");
        assert_eq!(st.mode(), back.mode(), "{name}: mode");
        assert_eq!(st.len(), back.len(), "{name}: size");
    }
    // A listing larger than the first reply: every name once, in any order of reading,
    // also when each is stat'ed while reading (the kernel then asks with attributes).
    let want: Vec<String> = {
        let mut v: Vec<String> = fs::read_dir(&big)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let names: Vec<String> = listing(&m.p("big")).into_iter().map(|e| e.0).collect();
    assert_eq!(names, want);
    let listed_plain = m.stats();
    let mut stated = Vec::new();
    for e in fs::read_dir(m.p("big")).unwrap() {
        let e = e.unwrap();
        let st = fs::symlink_metadata(e.path()).unwrap();
        assert!(
            st.is_file() && st.len() == 0 && st.ino() == e.ino(),
            "{e:?} {st:?}"
        );
        stated.push(e.file_name().into_string().unwrap());
    }
    stated.sort();
    assert_eq!(stated, want);
    let end = m.stats();
    assert!(
        fuse_calls(&end, "readdirplus") >= fuse_calls(&listed_plain, "readdirplus") + 2,
        "stats while reading should have made the kernel ask with attributes\n{end}"
    );
}

/// `rm -rf` of files this mount knows nothing of where the sidecar directory holds
/// records (it does wherever a map was stored): each removal looks for the file's record,
/// but the directory is opened about once, not once per file (an open per removal was a
/// second backend call per file: 357,254 opens in an `rm -rf` of 1,000,000 files), and
/// the records of other files stay.
#[test]
fn removing_files_opens_the_sidecar_directory_about_once_where_it_holds_records() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    three_hundred_files(b.path());
    let m = Mount::new(b.path(), &[]);
    make_image(&m.p("kept"), 8 * MIB, &[(MIB, 64 * 1024)]);
    let record = record_of(b.path(), "kept");
    assert!(record.exists(), "no record stored for a file with holes");
    let (before, after) = remove_t(&m, b.path());
    assert!(record.exists(), "another file's record went");
    let opens = json_u64(&after, "meta.open.calls") - json_u64(&before, "meta.open.calls");
    assert!(
        opens <= 10,
        "{opens} backend opens to remove 300 files\n{after}"
    );
}

/// `rm -rf`: the kernel looks each name up just before it removes it, and the removal
/// uses what that lookup found (which file, its kind, its last link) instead of a second
/// stat of the name: 2 backend stats per removed file (the lookup's and the directory's
/// getattr), not 3. Two names of one file both looked up, then both removed: the second
/// removal still knows it takes the last link (the file's stored record goes with it).
#[test]
fn a_removal_uses_the_stat_of_the_lookup_just_before_it() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    three_hundred_files(b.path());
    let m = Mount::new(b.path(), &[]);
    fs::metadata(m.p("t")).unwrap();
    let (before, after) = remove_t(&m, b.path());
    let stats = json_u64(&after, "meta.stat.calls") - json_u64(&before, "meta.stat.calls");
    assert!(
        stats <= 2 * 300 + 10,
        "{stats} backend stats to remove 300 files\n{after}"
    );
    // Two links of a file with a stored map, both looked up by a fresh mount (link count
    // 2), then removed.
    make_image(&m.p("a"), 8 * MIB, &[(MIB, 64 * 1024)]);
    drop(m);
    let record = record_of(b.path(), "a");
    assert!(record.exists(), "no record stored for a file with holes");
    fs::hard_link(b.path().join("a"), b.path().join("a2")).unwrap();
    let m = Mount::new(b.path(), &[]);
    sh(&format!(
        "stat {a} {a2} >/dev/null && rm {a} {a2}",
        a = m.p("a").display(),
        a2 = m.p("a2").display()
    ));
    assert!(!b.path().join("a2").exists());
    assert!(!record.exists(), "the record outlived the file's last link");
}
