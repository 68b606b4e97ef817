//! Backend call budgets of the core's operations, without FUSE: a `SparseFs` over a
//! temporary directory, every metadata call counted through the seam
//! (`backend::meta::Counted`) and every data call through `backend::counting`. Each
//! budget is what one application call costs on a networked backend, where every call
//! is a round trip (docs/tuning.md explains each).

use super::*;
use crate::stats::{META_OPS, MetaOp};
use std::collections::BTreeMap;

fn fs_over(dir: &Path, map_store: MapStore) -> SparseFs {
    let cfg = FsConfig {
        backing: dir.to_path_buf(),
        geo: Geometry {
            block: 4096,
            write_size: 64 << 10,
            max_dirty_file: 1 << 20,
        },
        max_dirty: 4 << 20,
        dirty_age: Duration::from_secs(3600),
        creds: false,
        owner: 0,
        map_store,
        cache_writes: false,
        passthrough: false,
        dir_cache: true,
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
    pairs.iter().copied().collect()
}

const WHO: Caller = Caller { uid: 0, gid: 0 };

#[test]
fn creating_stating_and_removing_a_file_costs_seven_backend_calls() {
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_over(dir.path(), MapStore::Xattr);
    let name = OsStr::new("f");
    let before = snapshot(&fs);
    // The kernel's lookup of the new name: a miss.
    let miss = fs.lookup(Ino::ROOT, name).err().expect("a miss");
    assert_eq!(miss.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(calls_since(&fs, &before), budget(&[("open", 1)]));
    // create: the open that makes it, its O_PATH fd reopened through /proc (not a
    // second lookup), one stat for the inode table and the reply.
    let before = snapshot(&fs);
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
    let (e, o) = fs.create(Ino::ROOT, name, 0o644, 0, flags, WHO).unwrap();
    assert_eq!(
        calls_since(&fs, &before),
        budget(&[("open", 1), ("reopen", 1), ("stat", 1)])
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

#[test]
fn a_lookup_costs_one_open_and_one_stat_and_a_repeat_lookup_the_same() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"x").unwrap();
    let fs = fs_over(dir.path(), MapStore::Xattr);
    for _ in 0..2 {
        let before = snapshot(&fs);
        fs.lookup(Ino::ROOT, OsStr::new("a")).unwrap();
        assert_eq!(
            calls_since(&fs, &before),
            budget(&[("open", 1), ("stat", 1)])
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
    assert_eq!(
        open,
        budget(&[("open", 3), ("reopen", 1), ("stat", 3), ("xattr", 1)]),
        "lookup open+stat; data fd reopen; size and stamp stats; sidecar dir and record opens, map xattr"
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
