//! Zeros become holes: real tools writing through the mount leave sparse files that read back right and allocate only their data.

use crate::harness::*;

#[test]
fn dd_of_zeros_leaves_no_allocation_and_reads_back_zeros() {
    if !fuse_available() {
        return;
    }
    for (block, mib) in [("4K", 64u64), ("32K", 1024), ("1M", 64)] {
        for b in each_backing() {
            let kind = b.kind();
            let m = Mount::new(b.path(), &["--sparse-block", block]);
            sh(&format!(
                "dd if=/dev/zero of={} bs=1M count={mib} status=none",
                m.p("zeros").display()
            ));
            sh(&format!(
                "cmp -n {} {} /dev/zero",
                mib * MIB,
                m.p("zeros").display()
            ));
            let stats = m.stats();
            assert_eq!(
                json_u64(&stats, "backend.write.calls"),
                0,
                "{kind}/{block}: {stats}"
            );
            assert_eq!(json_u64(&stats, "zero_bytes_elided"), mib * MIB);
            assert_eq!(
                json_u64(&stats, "backend.ftruncate.calls"),
                1,
                "one ftruncate for the trailing hole"
            );
            assert_eq!(seek_map(&m.p("zeros")), vec![], "{kind}/{block}: all hole");
            drop(m);
            let raw = b.path().join("zeros");
            assert_eq!(fs::metadata(&raw).unwrap().len(), mib * MIB);
            assert_eq!(allocated(&raw), 0, "{kind}/{block}: backend allocation");
        }
    }
}

#[test]
fn real_tools_write_a_sparse_image_that_matches_and_stays_sparse() {
    if !fuse_available() || !have("rsync") || !have("qemu-img") {
        return;
    }
    let src_dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let extents = vm_extents(size);
    let src = src_dir.path().join("vm.img");
    make_image(&src, size, &extents);
    sh(&format!(
        "cd {} && tar -cf plain.tar vm.img",
        src_dir.path().display()
    ));
    let ideal: u64 = extents.iter().map(|e| e.1).sum();
    for (block, bytes) in [("4K", 4096u64), ("32K", 32768), ("1M", MIB)] {
        for b in each_backing() {
            let kind = b.kind();
            let m = Mount::new(b.path(), &["--sparse-block", block]);
            let mp = m.path().display().to_string();
            let s = src.display();
            let cmds = [
                (
                    "cp-never",
                    format!("cp --sparse=never {s} {mp}/cp-never.img"),
                ),
                ("rsync-plain", format!("rsync {s} {mp}/rsync-plain.img")),
                ("rsync-S", format!("rsync -S {s} {mp}/rsync-S.img")),
                (
                    "rsync-inplace",
                    format!("rsync --inplace {s} {mp}/rsync-inplace.img"),
                ),
                ("qemu", format!("qemu-img convert -O raw {s} {mp}/qemu.img")),
                (
                    "tar",
                    format!(
                        "mkdir {mp}/tar && tar -C {mp}/tar -xf {}/plain.tar && mv {mp}/tar/vm.img {mp}/tar.img",
                        src_dir.path().display()
                    ),
                ),
            ];
            for (name, cmd) in &cmds {
                sh(cmd);
                let out = m.p(&format!("{name}.img"));
                assert!(
                    files_equal(&src, &out),
                    "{kind}/{block}/{name}: contents differ"
                );
                check_map(&seek_map(&out), &extents, bytes, &src);
                let st = fs::metadata(&out).unwrap();
                let bound = ideal + 2 * bytes * extents.len() as u64;
                assert!(
                    st.blocks() * 512 <= bound.min(st.len() - 1),
                    "{kind}/{block}/{name}: st_blocks {} not honest",
                    st.blocks()
                );
            }
            let stats = m.stats();
            assert_eq!(
                json_u64(&stats, "backend.lseek.calls"),
                0,
                "{kind}/{block}: {stats}"
            );
            drop(m);
            for (name, _) in &cmds {
                let raw = b.path().join(format!("{name}.img"));
                let alloc = allocated(&raw);
                let slack = 2 * bytes.max(64 << 10) * extents.len() as u64;
                assert!(
                    alloc <= ideal + slack,
                    "{kind}/{block}/{name}: backend allocation {alloc} vs ideal {ideal}"
                );
                assert!(
                    files_equal(&src, &raw),
                    "{kind}/{block}/{name}: backend contents differ"
                );
            }
        }
    }
}

#[test]
fn sparse_aware_readers_keep_the_holes_from_the_mount() {
    if !fuse_available() {
        return;
    }
    let src_dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let extents = vm_extents(size);
    let src = src_dir.path().join("vm.img");
    make_image(&src, size, &extents);
    let ideal: u64 = extents.iter().map(|e| e.1).sum();
    for b in each_backing() {
        let kind = b.kind();
        let m = Mount::new(b.path(), &[]);
        sh(&format!(
            "dd if={} of={} bs=1M status=none",
            src.display(),
            m.p("vm.img").display()
        ));
        let out = src_dir.path().join(format!("copy-{kind}.img"));
        sh(&format!(
            "cp --sparse=auto {} {}",
            m.p("vm.img").display(),
            out.display()
        ));
        assert!(files_equal(&src, &out));
        assert!(
            allocated(&out) <= ideal + 2 * 32768 * extents.len() as u64,
            "{kind}: cp --sparse=auto allocated {}",
            allocated(&out)
        );
        let tar = src_dir.path().join(format!("s-{kind}.tar"));
        sh(&format!(
            "tar -S -C {} -cf {} vm.img",
            m.path().display(),
            tar.display()
        ));
        assert!(
            fs::metadata(&tar).unwrap().len() < ideal * 2,
            "{kind}: tar -S archive holds zeros"
        );
        let stats = m.stats();
        assert!(
            json_u64(&stats, "hole_read_bytes") > 0 || json_u64(&stats, "seeks_from_index") > 0,
            "{stats}"
        );
    }
}

#[test]
fn zeros_written_over_data_read_back_as_zeros_and_free_the_space() {
    if !fuse_available() {
        return;
    }
    for b in each_backing() {
        let kind = b.kind();
        let m = Mount::new(b.path(), &[]);
        let f = m.p("f");
        let data = random_bytes((16 * MIB) as usize, 3);
        fs::write(&f, &data).unwrap();
        sh(&format!(
            "dd if=/dev/zero of={} bs=1M seek=4 count=8 conv=notrunc status=none",
            f.display()
        ));
        let back = fs::read(&f).unwrap();
        assert!(
            back[(4 * MIB) as usize..(12 * MIB) as usize]
                .iter()
                .all(|&x| x == 0),
            "{kind}: zeros read back"
        );
        assert_eq!(&back[..(4 * MIB) as usize], &data[..(4 * MIB) as usize]);
        assert_eq!(
            seek_map(&f),
            vec![(0, 4 * MIB), (12 * MIB, 16 * MIB)],
            "{kind}"
        );
        let stats = m.stats();
        drop(m);
        let raw = b.path().join("f");
        let rb = fs::read(&raw).unwrap();
        assert!(
            rb[(4 * MIB) as usize..(12 * MIB) as usize]
                .iter()
                .all(|&x| x == 0),
            "{kind}: backend holds zeros"
        );
        if b.punches() {
            assert_eq!(
                json_u64(&stats, "backend.punch.calls"),
                1,
                "{kind}: one punch for one zero run: {stats}"
            );
            assert!(
                allocated(&raw) <= 8 * MIB + 64 * 1024,
                "{kind}: space freed, allocated {}",
                allocated(&raw)
            );
        }
    }
}

#[test]
fn punch_frees_space_where_the_backend_punches_and_is_refused_where_it_cannot() {
    if !fuse_available() || !have("fallocate") {
        return;
    }
    for b in each_backing() {
        let kind = b.kind();
        let m = Mount::new(b.path(), &[]);
        let f = m.p("f");
        fs::write(&f, random_bytes((4 * MIB) as usize, 5)).unwrap();
        let punch = sh_status(&format!(
            "fallocate --punch-hole -o 1000 -l 100000 {}",
            f.display()
        ));
        assert_eq!(
            punch.status.success(),
            b.punches(),
            "{kind}: punch answered as the backend does: {}",
            String::from_utf8_lossy(&punch.stderr)
        );
        if !b.punches() {
            assert!(
                String::from_utf8_lossy(&punch.stderr).contains("unsupported"),
                "{kind}: EOPNOTSUPP, as the backend itself says: {}",
                String::from_utf8_lossy(&punch.stderr)
            );
        }
        // ZERO_RANGE is served everywhere (zeros written where the backend cannot punch).
        sh(&format!(
            "fallocate --zero-range -o 2000000 -l 50000 {}",
            f.display()
        ));
        let back = fs::read(&f).unwrap();
        if b.punches() {
            assert!(back[1000..101_000].iter().all(|&x| x == 0));
        }
        assert!(back[2_000_000..2_050_000].iter().all(|&x| x == 0));
        assert_eq!(fs::metadata(&f).unwrap().len(), 4 * MIB);
        drop(m);
        let rb = fs::read(b.path().join("f")).unwrap();
        if b.punches() {
            assert!(
                rb[1000..101_000].iter().all(|&x| x == 0),
                "{kind}: backend punched"
            );
        }
        assert!(
            rb[2_000_000..2_050_000].iter().all(|&x| x == 0),
            "{kind}: backend zeroed"
        );
    }
}

/// The punch probe tools run (write 64 KiB, punch it, did st_blocks drop?) tells the
/// truth, for buffered and flushed data alike, and later punches behave as it said.
#[test]
fn the_punch_probe_tells_the_truth_for_buffered_and_flushed_data() {
    if !fuse_available() {
        return;
    }
    for b in each_backing() {
        let kind = b.kind();
        let m = Mount::new(b.path(), &[]);
        for fsynced in [false, true] {
            let p = m.p(&format!("probe-{fsynced}"));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            f.write_all_at(&random_bytes(64 << 10, 1), 0).unwrap();
            if fsynced {
                f.sync_all().unwrap();
            }
            let before = f.metadata().unwrap().blocks();
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: a valid fd.
            let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, 0, 64 << 10) };
            let after = f.metadata().unwrap().blocks();
            if b.punches() {
                assert_eq!(r, 0, "{kind}/{fsynced}: punch works here");
                assert!(
                    after < before,
                    "{kind}/{fsynced}: st_blocks {before} -> {after}"
                );
            } else {
                assert_eq!(r, -1, "{kind}/{fsynced}: the backend cannot punch");
                assert_eq!(
                    std::io::Error::last_os_error().raw_os_error(),
                    Some(libc::EOPNOTSUPP),
                    "{kind}/{fsynced}"
                );
                assert_eq!(
                    after, before,
                    "{kind}/{fsynced}: nothing freed, none claimed"
                );
            }
        }
    }
}

/// Every SEEK_DATA/SEEK_HOLE answer is the offset asked, the size, or a multiple of
/// st_blksize, buffered or flushed, at every sparse block; so the usual probe of the
/// allocation unit (one-byte writes at growing offsets, then SEEK_DATA from 0) finds
/// st_blksize.
#[test]
fn seek_answers_come_in_whole_sparse_blocks_buffered_or_flushed() {
    if !fuse_available() {
        return;
    }
    for (block, bs) in [("4K", 4096u64), ("32K", 32768), ("1M", MIB)] {
        for b in each_backing() {
            let kind = b.kind();
            let m = Mount::new(b.path(), &["--sparse-block", block]);
            let p = m.p("g");
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            assert_eq!(f.metadata().unwrap().blksize(), bs, "{kind}/{block}");
            // The allocation-unit probe (as xfstests' seek_sanity_test does it): truncate
            // to 0, one byte at offset 2, 4, 8, ...; the unit is the first offset where
            // SEEK_DATA from 0 no longer answers 0.
            let mut unit = 2u64;
            loop {
                f.set_len(0).unwrap();
                f.write_all_at(b"a", unit).unwrap();
                if lseek(&f, 0, libc::SEEK_DATA) != Ok(0) || unit > 4 * bs {
                    break;
                }
                unit *= 2;
            }
            assert_eq!(unit, bs, "{kind}/{block}: the probe finds st_blksize");
            f.set_len(0).unwrap();
            f.write_all_at(b"x", 2).unwrap();
            f.write_all_at(b"y", 8 << 30).unwrap();
            assert_eq!(lseek(&f, 0, libc::SEEK_DATA), Ok(0), "{kind}/{block}");
            assert_eq!(lseek(&f, 0, libc::SEEK_HOLE), Ok(bs), "{kind}/{block}");
            // Scattered small writes, then every offset around every block edge.
            for (i, off) in [3 * bs + 5, 7 * bs - 1, 9 * bs].into_iter().enumerate() {
                f.write_all_at(&[i as u8 + 1; 3], off).unwrap();
            }
            let size = f.metadata().unwrap().len();
            for fsynced in [false, true] {
                if fsynced {
                    f.sync_all().unwrap();
                }
                for blockno in 0..12u64 {
                    for d in [0i64, 1, 2, -1] {
                        let off = (blockno * bs) as i64 + d;
                        if off < 0 {
                            continue;
                        }
                        for w in [libc::SEEK_DATA, libc::SEEK_HOLE] {
                            if let Ok(a) = lseek(&f, off, w) {
                                assert!(
                                    a == off as u64 || a == size || a % bs == 0,
                                    "{kind}/{block}/fsynced {fsynced}: lseek({off}, {w}) = {a}"
                                );
                            }
                        }
                    }
                }
            }
            // st_blocks counts the same whole blocks: the blocks at 0, 3, 6 and 7 (the
            // write at 7*bs-1 straddles them), 9 and 8 GiB hold data.
            let blocks = f.metadata().unwrap().blocks() * 512;
            assert_eq!(blocks, 6 * bs, "{kind}/{block}: st_blocks {blocks}");
        }
    }
}

#[test]
fn files_not_written_through_the_mount_are_reported_as_data_unless_the_backend_is_trusted() {
    if !fuse_available() {
        return;
    }
    for b in each_backing() {
        let kind = b.kind();
        let raw = b.path().join("outside.img");
        make_image(&raw, 8 * MIB, &[(MIB, 64 << 10)]);
        let m = Mount::new(b.path(), &[]);
        let map = seek_map(&m.p("outside.img"));
        if kind == "bindfs" {
            assert_eq!(map, vec![(0, 8 * MIB)], "bindfs cannot tell: all data");
        } else {
            assert!(
                covered(&map, MIB, MIB + (64 << 10)),
                "{kind}: data kept in {map:?}"
            );
        }
        assert!(files_equal(&raw, &m.p("outside.img")));
    }
}
