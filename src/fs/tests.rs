//! Backend call budgets of the core's operations, without FUSE: a `SparseFs` over a
//! temporary directory, every metadata call counted through the seam
//! (`backend::meta::Counted`) and every data call through `backend::counting`. Each
//! budget is what one application call costs on a networked backend, where every call
//! is a round trip (docs/tuning.md explains each).

use super::*;
use crate::fdpool::Evict;
use crate::stats::{META_OPS, MetaOp};
use std::collections::BTreeMap;

fn fs_over(dir: &Path, map_store: MapStore) -> SparseFs {
    fs_with(dir, map_store, HandleMode::Auto, None)
}

fn fs_with(dir: &Path, map_store: MapStore, mode: HandleMode, fd_high: Option<u64>) -> SparseFs {
    let cfg = FsConfig {
        backing: dir.to_path_buf(),
        geo: Geometry {
            block: 4096,
            write_size: 64 << 10,
            max_dirty_file: 1 << 20,
            flush_depth: 4,
            read_depth: 4,
            read_chunk: 64 << 10,
        },
        max_dirty: 4 << 20,
        dirty_age: Duration::from_secs(3600),
        creds: false,
        owner: 0,
        map_store,
        cache_writes: false,
        passthrough: false,
        dir_cache: true,
        inode_handles: mode,
        fd_high,
        direct_writes: None,
        debug_hooks: false,
    };
    SparseFs::new(cfg, Arc::new(Stats::default())).expect("backing opens")
}

/// Metadata and data calls by kind since `before` (kinds with none left out).
fn calls_since(fs: &SparseFs, before: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
    let now = snapshot(fs);
    now.into_iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then_some((k, d))
        })
        .collect()
}

fn snapshot(fs: &SparseFs) -> BTreeMap<&'static str, u64> {
    let s = fs.stats();
    let mut m: BTreeMap<&'static str, u64> = META_OPS
        .iter()
        .map(|op| (op.name(), s.meta_calls(*op)))
        .collect();
    for op in crate::stats::OPS {
        m.insert(op.name(), s.calls(op));
    }
    m
}

fn budget(pairs: &[(&'static str, u64)]) -> BTreeMap<&'static str, u64> {
    pairs.iter().copied().filter(|&(_, n)| n > 0).collect()
}

const WHO: Caller = Caller { uid: 0, gid: 0 };

#[test]
fn creating_stating_and_removing_a_file_costs_seven_backend_calls_and_a_handle() {
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_over(dir.path(), MapStore::Xattr);
    let name = OsStr::new("f");
    let before = snapshot(&fs);
    // The kernel's lookup of the new name: a miss (one stat of the name where lookups
    // open nothing, else one failed open).
    let miss = fs.lookup(Ino::ROOT, name).err().expect("a miss");
    assert_eq!(miss.raw_os_error(), Some(libc::ENOENT));
    let missed = if fdless(&fs) { "stat" } else { "open" };
    assert_eq!(calls_since(&fs, &before), budget(&[(missed, 1)]));
    // create: the open that makes it, its O_PATH fd reopened through /proc (not a
    // second lookup), one stat for the inode table and the reply, and its file handle
    // (name_to_handle_at: no round trip; the inode needs no fd of its own).
    let before = snapshot(&fs);
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
    let (e, o) = fs.create(Ino::ROOT, name, 0o644, 0, flags, WHO).unwrap();
    assert_eq!(
        calls_since(&fs, &before),
        budget(&[("handle", 1), ("open", 1), ("reopen", 1), ("stat", 1)])
    );
    // stat of the new file: one.
    let before = snapshot(&fs);
    fs.getattr(e.ino).unwrap();
    // close of an unchanged new file: nothing (no stamp, no map to store).
    fs.flush(o.fh).unwrap();
    fs.release(o.fh).unwrap();
    assert_eq!(calls_since(&fs, &before), budget(&[("stat", 1)]));
    // unlink: one stat of the name (regular file? last link?) and the unlink; a file this
    // mount knows has no stored map costs no sidecar lookup.
    let before = snapshot(&fs);
    fs.unlink(Ino::ROOT, name).unwrap();
    assert_eq!(
        calls_since(&fs, &before),
        budget(&[("stat", 1), ("unlink", 1)])
    );
}

/// Whether lookups here open nothing (handles carry the inode number: ext4).
fn fdless(fs: &SparseFs) -> bool {
    fs.sh.inodes.anchoring().lookup_without_fd()
}

#[test]
fn a_lookup_costs_one_stat_and_a_handle_for_a_new_inode_and_opens_nothing_where_handles_carry_the_number()
 {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"x").unwrap();
    let fs = fs_over(dir.path(), MapStore::Xattr);
    for handle in [1, 0] {
        let before = snapshot(&fs);
        fs.lookup(Ino::ROOT, OsStr::new("a")).unwrap();
        let want = if fdless(&fs) {
            budget(&[("handle", handle), ("stat", 1)])
        } else {
            budget(&[("handle", handle), ("open", 1), ("stat", 1)])
        };
        assert_eq!(calls_since(&fs, &before), want);
    }
    // The inode's fd is opened (by handle) only when an operation needs one.
    if fdless(&fs) {
        let e = fs.lookup(Ino::ROOT, OsStr::new("a")).unwrap();
        let before = snapshot(&fs);
        fs.getattr(e.ino).unwrap();
        fs.getattr(e.ino).unwrap();
        assert_eq!(
            calls_since(&fs, &before),
            budget(&[("handle", 1), ("stat", 2)])
        );
    }
}

#[test]
fn a_rename_costs_two_stats_and_the_rename_and_restamps_only_known_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"x").unwrap();
    std::fs::write(dir.path().join("b"), b"y").unwrap();
    let fs = fs_over(dir.path(), MapStore::Xattr);
    let before = snapshot(&fs);
    fs.rename(Ino::ROOT, OsStr::new("a"), Ino::ROOT, OsStr::new("b"), 0)
        .unwrap();
    // One stat of each name (what it is, whether it is a last link), the rename, and the
    // sidecar record of the replaced file dropped (an unlink that finds none).
    assert_eq!(
        calls_since(&fs, &before),
        budget(&[("open", 1), ("rename", 1), ("stat", 2)])
    );
    assert_eq!(
        fs.stats().meta_calls(MetaOp::Unlink),
        0,
        "no sidecar dir: no unlink"
    );
}

#[test]
fn a_written_sparse_file_is_stored_at_close_and_its_next_open_loads_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_over(dir.path(), MapStore::Xattr);
    let name = OsStr::new("img");
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
    let (e, o) = fs.create(Ino::ROOT, name, 0o644, 0, flags, WHO).unwrap();
    // 4 blocks of data, 60 of zeros, 4 of data: two extents, a hole between.
    let data = vec![7u8; 16 << 10];
    fs.write(e.ino, o.fh, 0, &data, 0, false).unwrap();
    fs.write(e.ino, o.fh, 64 << 10, &vec![0u8; 240 << 10], 0, false)
        .unwrap();
    fs.write(e.ino, o.fh, 304 << 10, &data, 0, false).unwrap();
    let before = snapshot(&fs);
    fs.flush(o.fh).unwrap();
    // The close writes the two extents (one pwrite each, none for the zeros), stores
    // the map (xattr, then the sidecar record: its directory made, the record written
    // to a temporary name and renamed), and records the file's stamp.
    let close = calls_since(&fs, &before);
    assert_eq!(close.get("write"), Some(&2), "{close:?}");
    assert_eq!(close.get("lseek"), None, "{close:?}");
    assert_eq!(close.get("xattr"), Some(&1), "{close:?}");
    assert_eq!(close.get("rename"), Some(&1), "{close:?}");
    fs.release(o.fh).unwrap();
    fs.forget(e.ino, 1);
    // A new lookup and open: the node is built from the reopened O_PATH fd, its size and
    // stamp taken fresh, and the stored map read (sidecar record, then the xattr).
    let before = snapshot(&fs);
    let e2 = fs.lookup(Ino::ROOT, name).unwrap();
    let o2 = fs.open(e2.ino, libc::O_RDONLY, None).unwrap();
    let open = calls_since(&fs, &before);
    let want = if fdless(&fs) {
        budget(&[
            ("handle", 2),
            ("open", 1),
            ("reopen", 1),
            ("stat", 3),
            ("xattr", 1),
        ])
    } else {
        budget(&[
            ("handle", 1),
            ("open", 2),
            ("reopen", 1),
            ("stat", 3),
            ("xattr", 1),
        ])
    };
    assert_eq!(
        open, want,
        "lookup stat+handle (where it opens nothing; else open+stat+handle); the inode's fd opened by handle, data fd reopen; size and stamp stats; the record's open (the sidecar directory still open from the store), map xattr"
    );
    // The map is exact: SEEK_HOLE answers from it, no backend lseek.
    let before = snapshot(&fs);
    assert_eq!(fs.lseek(o2.fh, 0, libc::SEEK_HOLE).unwrap(), 16 << 10);
    assert_eq!(
        fs.lseek(o2.fh, 16 << 10, libc::SEEK_DATA).unwrap(),
        304 << 10
    );
    assert_eq!(calls_since(&fs, &before), budget(&[]));
    fs.release(o2.fh).unwrap();
}

#[test]
fn a_closed_file_holds_no_data_fd_and_its_next_open_opens_it_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_over(dir.path(), MapStore::Xattr);
    let name = OsStr::new("f");
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
    let (e, o) = fs.create(Ino::ROOT, name, 0o644, 0, flags, WHO).unwrap();
    fs.write(e.ino, o.fh, 0, &[1u8; 4096], 0, false).unwrap();
    assert_eq!(fs.stats().data_fds.load(Relaxed), 1);
    fs.flush(o.fh).unwrap();
    fs.release(o.fh).unwrap();
    assert_eq!(
        fs.stats().data_fds.load(Relaxed),
        0,
        "closed at the last close"
    );
    // The next open: the staleness stat and a fresh backend open (so a backend with its
    // own cache revalidates the file as for any other client, and the file stays held if
    // its name is removed while it is open).
    let before = snapshot(&fs);
    let o = fs.open(e.ino, libc::O_RDONLY, None).unwrap();
    assert_eq!(
        calls_since(&fs, &before),
        budget(&[("reopen", 1), ("stat", 1)])
    );
    assert_eq!(fs.read(o.fh, 0, 4096).unwrap(), vec![1u8; 4096]);
    assert_eq!(fs.stats().data_fds.load(Relaxed), 1);
    fs.release(o.fh).unwrap();
    // unlink of a file nobody holds: its fds go before the backend's unlink.
    fs.unlink(Ino::ROOT, name).unwrap();
    assert_eq!(fs.stats().data_fds.load(Relaxed), 0);
    assert_eq!(
        fs.getattr(e.ino).err().and_then(|e| e.raw_os_error()),
        Some(libc::ENOENT),
        "the inode let go of its O_PATH fd"
    );
}

/// Backend fds held now: every fd of this process whose target is under `dir` (the test
/// process is the daemon here).
fn fds_under(dir: &Path) -> usize {
    let root = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&root) && t != root))
        .count()
}

#[test]
fn two_hundred_open_files_read_and_written_in_turns_stay_within_a_pool_of_sixteen_fds() {
    for mode in [HandleMode::Auto, HandleMode::Never] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let fs = fs_with(dir.path(), MapStore::None, mode, Some(16));
        let d = fs.lookup(Ino::ROOT, OsStr::new("d")).unwrap().ino;
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
        let mut open = Vec::new();
        for i in 0..200u32 {
            let name = format!("f{i}");
            let (e, o) = fs
                .create(d, OsStr::new(&name), 0o644, 0, flags, WHO)
                .unwrap();
            fs.write(e.ino, o.fh, 0, &i.to_le_bytes(), 0, false)
                .unwrap();
            open.push((e.ino, o.fh));
        }
        for round in 0..3u32 {
            for (i, &(ino, fh)) in open.iter().enumerate() {
                let off = 4 + u64::from(round) * 4;
                fs.write(ino, fh, off, &round.to_le_bytes(), 0, false)
                    .unwrap();
                fs.fsync(fh, false).unwrap();
                let back = fs.read(fh, 0, 4).unwrap();
                assert_eq!(back, (i as u32).to_le_bytes(), "{mode:?} f{i}");
                fs.getattr(ino).unwrap();
            }
            let held = fds_under(dir.path());
            assert!(held <= 16 + 2, "{mode:?}: {held} backend fds held");
        }
        let pool = &fs.sh.inodes.anchoring().pool;
        assert!(pool.evicted() > 400, "{mode:?}: evicted {}", pool.evicted());
        for (_, fh) in open {
            fs.flush(fh).unwrap();
            fs.release(fh).unwrap();
        }
        for i in 0..200u32 {
            let b = std::fs::read(dir.path().join(format!("d/f{i}"))).unwrap();
            assert_eq!(&b[..4], &i.to_le_bytes());
            assert_eq!(&b[12..16], &2u32.to_le_bytes());
        }
    }
}

#[test]
fn an_inode_anchored_by_name_follows_renames_and_is_stale_when_another_file_takes_the_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("d/a"), b"one").unwrap();
    let fs = fs_with(dir.path(), MapStore::None, HandleMode::Never, Some(16));
    let d = fs.lookup(Ino::ROOT, OsStr::new("d")).unwrap().ino;
    let a = fs.lookup(d, OsStr::new("a")).unwrap().ino;
    fs.rename(d, OsStr::new("a"), Ino::ROOT, OsStr::new("b"), 0)
        .unwrap();
    let inode = fs.inode(a).unwrap();
    assert!(inode.evict(), "closed by the pool");
    assert_eq!(
        fs.getattr(a).unwrap().st_size,
        3,
        "reopened by its new name"
    );
    // Another file under that name (renamed there outside the mount): never taken for it.
    assert!(inode.evict());
    std::fs::rename(dir.path().join("b"), dir.path().join("c")).unwrap();
    std::fs::write(dir.path().join("b"), b"another").unwrap();
    assert_eq!(
        fs.getattr(a).err().and_then(|e| e.raw_os_error()),
        Some(libc::ESTALE)
    );
}

#[test]
fn a_file_unlinked_while_open_keeps_its_fds_out_of_the_pool_and_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_with(dir.path(), MapStore::None, HandleMode::Never, Some(16));
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
    let (e, o) = fs
        .create(Ino::ROOT, OsStr::new("u"), 0o644, 0, flags, WHO)
        .unwrap();
    fs.write(e.ino, o.fh, 0, b"still here", 0, false).unwrap();
    fs.unlink(Ino::ROOT, OsStr::new("u")).unwrap();
    // Crowd the pool: 40 more files, each opened, written and closed.
    for i in 0..40 {
        let name = format!("g{i}");
        let (g, go) = fs
            .create(Ino::ROOT, OsStr::new(&name), 0o644, 0, flags, WHO)
            .unwrap();
        fs.write(g.ino, go.fh, 0, b"x", 0, false).unwrap();
        fs.release(go.fh).unwrap();
    }
    assert_eq!(fs.read(o.fh, 0, 10).unwrap(), b"still here");
    assert_eq!(fs.getattr(e.ino).unwrap().st_size, 10);
    fs.release(o.fh).unwrap();
}
