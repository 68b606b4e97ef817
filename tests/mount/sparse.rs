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
fn fallocate_punch_and_zero_range_read_back_as_zeros() {
    if !fuse_available() || !have("fallocate") {
        return;
    }
    for b in each_backing() {
        let kind = b.kind();
        let m = Mount::new(b.path(), &[]);
        let f = m.p("f");
        fs::write(&f, random_bytes((4 * MIB) as usize, 5)).unwrap();
        sh(&format!(
            "fallocate --punch-hole -o 1000 -l 100000 {}",
            f.display()
        ));
        sh(&format!(
            "fallocate --zero-range -o 2000000 -l 50000 {}",
            f.display()
        ));
        let back = fs::read(&f).unwrap();
        assert!(back[1000..101_000].iter().all(|&x| x == 0));
        assert!(back[2_000_000..2_050_000].iter().all(|&x| x == 0));
        assert_eq!(fs::metadata(&f).unwrap().len(), 4 * MIB);
        drop(m);
        let rb = fs::read(b.path().join("f")).unwrap();
        assert!(
            rb[1000..101_000].iter().all(|&x| x == 0),
            "{kind}: backend punched"
        );
        assert!(
            rb[2_000_000..2_050_000].iter().all(|&x| x == 0),
            "{kind}: backend zeroed"
        );
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
