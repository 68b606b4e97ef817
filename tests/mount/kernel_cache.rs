//! The kernel's caches stay coherent with the backend: uncached write-only streams, kernel passthrough for reads, directory listings kept only while unchanged, read-ahead.

use crate::harness::*;

/// Sequential reads reach the daemon as 1 MiB requests: the mount's read-ahead is raised
/// from the kernel's 128 KiB to `--read-ahead` (root: sysfs).
#[test]
fn read_ahead_is_raised_for_the_mount() {
    if !fuse_available() || !unsafe_free_is_root() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let ra = |m: &Mount| {
        let dev =
            String::from_utf8(sh(&format!("mountpoint -d {}", m.path().display())).stdout).unwrap();
        fs::read_to_string(format!("/sys/class/bdi/{}/read_ahead_kb", dev.trim()))
            .unwrap()
            .trim()
            .to_string()
    };
    let m = Mount::new(b.path(), &[]);
    assert_eq!(ra(&m), "1024");
    drop(m);
    let m = Mount::new(b.path(), &["-o", "read_ahead=4M"]);
    assert_eq!(ra(&m), "4096");
    drop(m);
    let m = Mount::new(b.path(), &["--read-ahead", "0"]);
    assert_eq!(ra(&m), "128");
}

#[test]
fn write_only_streams_bypass_the_page_cache_and_stay_coherent_with_cached_readers_and_maps() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let data = random_bytes(32 << 20, 3);
    // The readers here open first, which with passthrough would make the writers
    // passthrough too (see `a_writer_joining_passthrough_readers_...`): this is the
    // ordinary path.
    let m = Mount::new(b.path(), &["-o", "no_passthrough"]);
    // A write-only stream (cp, dd, tar -x) leaves nothing in the page cache.
    assert_eq!(
        pages_cached_by_a_write_only_stream(&m.p("stream"), &data),
        0,
        "written pages stayed cached"
    );
    assert!(fs::read(m.p("stream")).unwrap() == data);
    assert!(fs::read(b.path().join("stream")).unwrap() == data);

    // Readers holding cached pages and a shared mapping see a direct write at once.
    let r = File::open(m.p("stream")).unwrap();
    let mut old = vec![0u8; 1 << 20];
    r.read_exact_at(&mut old, 0).unwrap();
    let map = Mapping::new(&r, 1 << 20, libc::PROT_READ).unwrap();
    assert_eq!(map.bytes()[5000], data[5000]);
    let w = OpenOptions::new().write(true).open(m.p("stream")).unwrap();
    w.write_all_at(&[0xAB; 8192], 4096).unwrap();
    w.write_all_at(&[0xCD; 100], 70_001).unwrap();
    let mut now = vec![0u8; 1 << 20];
    r.read_exact_at(&mut now, 0).unwrap();
    assert!(
        now[4096..12288].iter().all(|&x| x == 0xAB),
        "cached reader saw stale bytes"
    );
    assert!(
        now[70_001..70_101].iter().all(|&x| x == 0xCD),
        "cached reader saw stale bytes"
    );
    assert_eq!(now[70_000], data[70_000]);
    assert_eq!(map.bytes()[5000], 0xAB, "shared mapping saw stale bytes");
    assert_eq!(map.bytes()[70_050], 0xCD, "shared mapping saw stale bytes");
    drop(map);

    // A dirty shared mapping written back later does not undo a direct write of the same
    // page (the kernel writes it back first): the file ends as on a local filesystem.
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("stream"))
        .unwrap();
    let mut wmap = Mapping::new(&rw, 1 << 20, libc::PROT_READ | libc::PROT_WRITE).unwrap();
    wmap.write(0, &[b'X'; 4096]);
    w.write_all_at(&[b'Y'; 100], 10).unwrap();
    drop(wmap);
    rw.sync_all().unwrap();
    let mut head = vec![0u8; 4096];
    File::open(m.p("stream"))
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(head[..10].iter().all(|&x| x == b'X') && head[110..].iter().all(|&x| x == b'X'));
    assert!(
        head[10..110].iter().all(|&x| x == b'Y'),
        "the direct write was undone"
    );
    drop((w, rw, r));

    // A new O_EXCL temporary file (mkstemp, rsync) is uncached too, and can still be
    // read back and mapped shared through its own descriptor.
    let t = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.p("tmp"))
        .unwrap();
    t.write_all_at(&data[..4 << 20], 0).unwrap();
    let mut back = vec![0u8; 4 << 20];
    t.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data[..4 << 20]);
    let mut tmap = Mapping::new(&t, 4 << 20, libc::PROT_READ | libc::PROT_WRITE).unwrap();
    assert_eq!(tmap.bytes()[123_456], data[123_456]);
    tmap.write(0, b"mapped");
    drop(tmap);
    t.sync_all().unwrap();
    assert_eq!(&fs::read(b.path().join("tmp")).unwrap()[..6], b"mapped");
    drop(t);
    drop(m);

    // --cache-writes (-o cache_writes) keeps written pages cached.
    let m = Mount::new(b.path(), &["-o", "cache_writes"]);
    assert!(
        pages_cached_by_a_write_only_stream(&m.p("cached"), &data) > data.len() / 4096 / 2,
        "--cache-writes did not keep written pages"
    );
}

#[test]
fn a_writer_joining_passthrough_readers_of_a_dense_file_stays_correct() {
    if !fuse_available() {
        return;
    }
    if !unsafe_free_is_root() {
        // Registering backing files needs CAP_SYS_ADMIN: without it every open is
        // ordinary (covered by the rest of the suite).
        eprintln!("skipped: kernel passthrough needs root");
        return;
    }
    for_each_backing(writer_joins_passthrough_readers);
}

fn writer_joins_passthrough_readers(b: &Backing) {
    const MIB: usize = 1 << 20;
    let m = Mount::new(b.path(), &[]);
    let data = random_bytes(8 * MIB, 11);
    fs::write(m.p("dense"), &data).unwrap();
    let mut sparse = random_bytes(MIB, 12);
    sparse.extend(vec![0u8; 4 * MIB]);
    sparse.extend(random_bytes(MIB, 13));
    fs::write(m.p("sparse"), &sparse).unwrap();

    // A read-only open of a dense file is handed to the kernel: its reads never reach
    // the daemon.
    let before = m.stats();
    let r = File::open(m.p("dense")).unwrap();
    let mut got = vec![0u8; data.len()];
    r.read_exact_at(&mut got, 0).unwrap();
    assert!(got == data);
    let s = m.stats();
    // Where the backend cannot reopen an unlinked file, passthrough is off (its opens
    // would fail with EIO when they race an unlink): the rest must hold all the same.
    let pt = u64::from(b.reopens_unlinked());
    assert_eq!(json_u64(&s, "passthrough_opens"), pt, "{s}");
    if pt == 1 {
        assert_eq!(
            json_u64(&s, "backend.read.bytes"),
            json_u64(&before, "backend.read.bytes"),
            "passthrough reads went through the daemon: {s}"
        );
    }
    // A file with known holes is not: its holes are read from the index, not the backend.
    assert!(fs::read(m.p("sparse")).unwrap() == sparse);
    let s = m.stats();
    assert_eq!(json_u64(&s, "passthrough_opens"), pt, "{s}");
    assert!(json_u64(&s, "hole_read_bytes") >= 4 * MIB as u64, "{s}");

    // A writer opening while the reader is open must be passthrough too (the kernel
    // requires it): its writes bypass the engine, whose size and map follow the backend.
    let mut model = data.clone();
    let w = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("dense"))
        .unwrap();
    w.write_all_at(&[0xAB; 4096], MIB as u64).unwrap();
    model[MIB..MIB + 4096].fill(0xAB);
    let tail = random_bytes(MIB, 14);
    w.write_all_at(&tail, 10 * MIB as u64).unwrap();
    model.resize(10 * MIB, 0);
    model.extend(&tail);
    let s = m.stats();
    assert_eq!(json_u64(&s, "passthrough_writers"), pt, "{s}");
    let mut head = vec![0u8; 4096];
    r.read_exact_at(&mut head, MIB as u64).unwrap();
    assert!(head.iter().all(|&x| x == 0xAB), "reader saw stale bytes");
    assert_eq!(fs::metadata(m.p("dense")).unwrap().len(), 11 * MIB as u64);
    assert_eq!(w.metadata().unwrap().len(), 11 * MIB as u64);
    // Never a hole where the writer put data.
    let d = lseek(&w, 8 * MIB as i64, libc::SEEK_DATA).unwrap();
    assert!(
        (8 * MIB as u64..=10 * MIB as u64).contains(&d),
        "SEEK_DATA {d}"
    );
    let h = lseek(&w, 0, libc::SEEK_HOLE).unwrap();
    assert!(h >= 8 * MIB as u64, "SEEK_HOLE {h}");
    // Truncate and fallocate go through the daemon, ordered with the direct writes.
    w.set_len(9 * MIB as u64 + 100).unwrap();
    model.truncate(9 * MIB + 100);
    assert_eq!(
        fs::metadata(m.p("dense")).unwrap().len(),
        model.len() as u64
    );
    w.sync_all().unwrap();
    drop(w);
    drop(r);
    assert!(fs::read(m.p("dense")).unwrap() == model);
    assert!(fs::read(b.underlying().join("dense")).unwrap() == model);

    // With every handle closed the engine owns the file again: zeros written over data
    // become a hole.
    let w = OpenOptions::new().write(true).open(m.p("dense")).unwrap();
    w.write_all_at(&vec![0u8; 2 * MIB], 2 * MIB as u64).unwrap();
    model[2 * MIB..4 * MIB].fill(0);
    drop(w);
    assert!(fs::read(m.p("dense")).unwrap() == model);
    let f = File::open(m.p("dense")).unwrap();
    assert_eq!(
        lseek(&f, 2 * MIB as i64, libc::SEEK_HOLE).unwrap(),
        2 * MIB as u64
    );
    assert_eq!(
        lseek(&f, 2 * MIB as i64, libc::SEEK_DATA).unwrap(),
        4 * MIB as u64
    );
}

#[test]
fn the_kernel_keeps_a_listing_only_while_the_backend_shows_the_directory_unchanged() {
    if !fuse_available() {
        return;
    }
    for_each_backing(listings_follow_the_backend);
}

fn listings_follow_the_backend(b: &Backing) {
    let d = b.path().join("d");
    fs::create_dir(&d).unwrap();
    for i in 0..200 {
        fs::write(d.join(format!("f{i}")), b"x").unwrap();
    }
    // A listing is kept only when the directory had been unchanged for 2 s before it.
    let settle = || wait_settled(&d);
    settle();
    let m = Mount::new(b.path(), &[]);
    let count = |k: &str| json_u64(&m.stats(), k);
    let want = names(&d);
    // The first listing is read; the second (same stamp) is read and cached.
    assert_eq!(names(&m.p("d")), want);
    assert_eq!(names(&m.p("d")), want);
    let listed = count("dir_listings");
    assert_eq!(listed, 2, "{}", m.stats());
    // Unchanged: answered from the kernel's cache, the backend is not listed again.
    for _ in 0..3 {
        assert_eq!(names(&m.p("d")), want);
    }
    assert_eq!(count("dir_listings"), listed, "{}", m.stats());
    assert!(count("dir_cache_kept") >= 3);

    // Another node adds a name: seen.
    fs::write(d.join("other-node"), b"y").unwrap();
    let want = names(&d);
    assert_eq!(names(&m.p("d")), want, "a stale listing was served");
    assert_eq!(count("dir_listings"), listed + 1);
    // A change through the mount is seen at once.
    fs::write(m.p("d/mine"), b"z").unwrap();
    fs::remove_file(m.p("d/f7")).unwrap();
    let want = names(&d);
    assert!(want.contains(&"mine".to_string()) && !want.contains(&"f7".to_string()));
    assert_eq!(names(&m.p("d")), want);
    // The directory just changed: its listing is not recorded as cacheable (a change in
    // the same timestamp tick would be invisible), so every listing reads the backend.
    let n = count("dir_listings");
    assert_eq!(names(&m.p("d")), want);
    assert_eq!(names(&m.p("d")), want);
    assert_eq!(count("dir_listings"), n + 2);

    // --no-dir-cache: every listing reads the backend.
    drop(m);
    settle();
    let m = Mount::new(b.path(), &["-o", "no_dir_cache"]);
    for _ in 0..3 {
        assert_eq!(names(&m.p("d")), want);
    }
    assert_eq!(json_u64(&m.stats(), "dir_listings"), 3);
    assert_eq!(json_u64(&m.stats(), "dir_cache_kept"), 0);
}

/// Close-to-open without rereading: an open that finds the file as this mount left it
/// keeps the kernel's page cache (a reread costs no FUSE read), and one that finds it
/// changed outside the mount drops it (the reread shows the change). On a FUSE backing,
/// whose attributes may lag another node's change, every open drops the cache as before.
#[test]
fn an_unchanged_file_keeps_its_page_cache_across_opens_and_a_changed_one_is_reread() {
    if !fuse_available() {
        return;
    }
    const M: usize = 1 << 20;
    for b in each_backing() {
        let kind = b.kind();
        let fuse_backing = matches!(b, Backing::Bindfs { .. });
        // Without passthrough: once the change outside the mount resets the file's map,
        // its reads would otherwise pass through to the backend and never see the cache.
        let m = Mount::new(b.path(), &["-o", "no_passthrough"]);
        let size = 8 * M;
        let mut model = vec![0u8; size];
        let data = random_bytes(M, 21);
        model[2 * M..3 * M].copy_from_slice(&data);
        {
            let f = File::create(m.p("img")).unwrap();
            f.set_len(size as u64).unwrap();
            f.write_all_at(&data, 2 * M as u64).unwrap();
        }
        let app_reads = || json_u64(&m.stats(), "app_read_bytes");
        // The cache is kept only once the file had been unchanged for 2 s when it was
        // last dropped (a change in the same timestamp tick could hide): let it settle.
        let settle = || wait_settled(&b.underlying().join("img"));
        settle();
        assert!(fs::read(m.p("img")).unwrap() == model, "{kind}: first read");
        let first = app_reads();
        assert!(
            first >= size as u64,
            "{kind}: the first read went through FUSE"
        );
        assert!(fs::read(m.p("img")).unwrap() == model, "{kind}: reread");
        let again = app_reads() - first;
        if fuse_backing {
            assert!(
                again >= size as u64,
                "{kind}: the cache was kept ({again} B read)"
            );
        } else {
            assert_eq!(again, 0, "{kind}: an unchanged file was read again");
        }

        // Written through the mount (a read-write handle: through the page cache): the
        // kernel's cache is the file, and it stays right across opens.
        {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.p("img"))
                .unwrap();
            f.write_all_at(&[0xAB; 4096], 5 * M as u64).unwrap();
            model[5 * M..5 * M + 4096].fill(0xAB);
        }
        assert!(fs::read(m.p("img")).unwrap() == model, "{kind}: own write");
        // A write-only handle bypasses the page cache: the kernel drops what it covers.
        {
            let f = OpenOptions::new().write(true).open(m.p("img")).unwrap();
            f.write_all_at(&[0xCD; 8192], 2 * M as u64 + 1000).unwrap();
            model[2 * M + 1000..2 * M + 9192].fill(0xCD);
        }
        assert!(
            fs::read(m.p("img")).unwrap() == model,
            "{kind}: own direct write"
        );

        // Changed outside the mount, size and mtime as before (only ctime tells): the
        // next open drops the cache. (The kernel drops it itself when it sees another
        // mtime or size.)
        let _ = fs::metadata(m.p("img")).unwrap(); // the kernel's attributes are current
        {
            let f = OpenOptions::new()
                .write(true)
                .open(b.underlying().join("img"))
                .unwrap();
            let mtime = f.metadata().unwrap().modified().unwrap();
            f.write_all_at(&[0x5A; 65536], 2 * M as u64).unwrap();
            model[2 * M..2 * M + 65536].fill(0x5A);
            f.set_times(std::fs::FileTimes::new().set_modified(mtime))
                .unwrap();
            assert_eq!(f.metadata().unwrap().modified().unwrap(), mtime);
        }
        if fuse_backing {
            std::thread::park_timeout(Duration::from_millis(1100)); // bindfs's attr TTL
        }
        let got = fs::read(m.p("img")).unwrap();
        let stale = got
            .chunks(4096)
            .zip(model.chunks(4096))
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            stale, 0,
            "{kind}: stale pages after a change outside the mount"
        );
        // Once settled, an open drops the cache and the next keeps it again.
        settle();
        assert!(
            fs::read(m.p("img")).unwrap() == model,
            "{kind}: read after the change"
        );
        let before = app_reads();
        assert!(
            fs::read(m.p("img")).unwrap() == model,
            "{kind}: reread after the change"
        );
        if !fuse_backing {
            assert_eq!(app_reads(), before, "{kind}: read again after the change");
        }
    }
}
