//! The mount behaves as the backing does: names, modes, links, xattrs, statfs, errnos, unlinked open files, O_DIRECT, long paths, other users and set-id bits.

use crate::harness::*;

/// A mount over a fresh directory, with the backing's path.
fn mounted() -> Option<(TempDir, Mount)> {
    if !fuse_available() {
        return None;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &[]);
    Some((b, m))
}

#[test]
fn names_made_renamed_and_removed_through_the_mount_are_so_on_the_backing() {
    let Some((b, m)) = mounted() else { return };
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/a"), b"hello").unwrap();
    assert_eq!(fs::read(b.path().join("d/a")).unwrap(), b"hello");
    fs::rename(m.p("d/a"), m.p("d/b")).unwrap();
    assert!(!b.path().join("d/a").exists() && b.path().join("d/b").exists());
    fs::remove_file(m.p("d/b")).unwrap();
    fs::remove_dir(m.p("d")).unwrap();
    assert!(!b.path().join("d").exists());
}

#[test]
fn mode_owner_times_and_size_set_through_the_mount_reach_the_backing() {
    let Some((b, m)) = mounted() else { return };
    fs::write(m.p("f"), b"hello").unwrap();
    fs::set_permissions(m.p("f"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(b.path().join("f")).unwrap().mode() & 0o7777,
        0o640
    );
    sh(&format!("chown 65534:65534 {}", m.p("f").display()));
    assert_eq!(fs::metadata(b.path().join("f")).unwrap().uid(), 65534);
    sh(&format!(
        "touch -d '2001-02-03 04:05:06' {}",
        m.p("f").display()
    ));
    assert_eq!(
        fs::metadata(b.path().join("f")).unwrap().mtime(),
        fs::metadata(m.p("f")).unwrap().mtime()
    );
    assert_eq!(
        fs::metadata(m.p("f")).unwrap().mtime(),
        local_epoch("2001-02-03 04:05:06")
    );
    sh(&format!("truncate -s 3 {}", m.p("f").display()));
    assert_eq!(fs::read(m.p("f")).unwrap(), b"hel");
}

#[test]
fn symlinks_resolve_and_hard_links_share_one_inode_numbered_as_on_the_backing() {
    let Some((b, m)) = mounted() else { return };
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/b"), b"hel").unwrap();
    std::os::unix::fs::symlink("d/b", m.p("ln")).unwrap();
    assert_eq!(fs::read_link(m.p("ln")).unwrap(), Path::new("d/b"));
    assert_eq!(fs::read(m.p("ln")).unwrap(), b"hel");
    fs::hard_link(m.p("d/b"), m.p("hard")).unwrap();
    let (s1, s2) = (
        fs::metadata(m.p("d/b")).unwrap(),
        fs::metadata(m.p("hard")).unwrap(),
    );
    assert_eq!(s1.ino(), s2.ino());
    assert_eq!(s1.nlink(), 2);
    OpenOptions::new()
        .append(true)
        .open(m.p("hard"))
        .unwrap()
        .write_all(b"LO")
        .unwrap();
    assert_eq!(fs::read(m.p("d/b")).unwrap(), b"helLO");
    // st_ino is the backing inode number (stable across remounts).
    assert_eq!(s1.ino(), fs::metadata(b.path().join("d/b")).unwrap().ino());
}

#[test]
fn fifos_made_through_the_mount_are_fifos_on_the_backing() {
    let Some((b, m)) = mounted() else { return };
    sh(&format!("mkfifo {}", m.p("fifo").display()));
    assert!(
        fs::symlink_metadata(b.path().join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo_like()
    );
}

#[test]
fn user_xattrs_are_set_listed_read_and_removed() {
    let Some((_b, m)) = mounted() else { return };
    let f = m.p("f");
    fs::write(&f, b"x").unwrap();
    sh(&format!("setfattr -n user.k -v v1 {}", f.display()));
    let out = sh(&format!("getfattr --only-values -n user.k {}", f.display()));
    assert_eq!(out.stdout, b"v1");
    let out = sh(&format!("getfattr -d {}", f.display()));
    assert!(String::from_utf8_lossy(&out.stdout).contains("user.k"));
    sh(&format!("setfattr -x user.k {}", f.display()));
    assert!(
        !sh_status(&format!("getfattr -n user.k {}", f.display()))
            .status
            .success()
    );
}

#[test]
fn readdir_shows_the_inode_numbers_lookup_gives() {
    let Some((_b, m)) = mounted() else { return };
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/b"), b"x").unwrap();
    let ino = fs::metadata(m.p("d/b")).unwrap().ino();
    let out = sh(&format!("ls -ai {}", m.p("d").display()));
    let ls = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(ls.contains(&format!("{ino} b")), "{ls}");
}

#[test]
fn statfs_of_the_mount_and_of_a_file_is_the_backings() {
    let Some((b, m)) = mounted() else { return };
    fs::write(m.p("f"), b"x").unwrap();
    let (a, c) = (statvfs(m.path()), statvfs(b.path()));
    assert_eq!(a.0, c.0, "f_blocks");
    // statfs of a file, not only of a directory (glibc's posix_fallocate emulation and
    // df FILE need it).
    assert_eq!(statvfs(&m.p("f")).0, c.0, "statfs of a regular file");
}

#[test]
fn backend_errnos_reach_the_caller_unchanged() {
    let Some((_b, m)) = mounted() else { return };
    fs::create_dir_all(m.p("e/f")).unwrap();
    assert_eq!(
        fs::remove_dir(m.p("e")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        fs::create_dir(m.p("e")).unwrap_err().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(
        fs::metadata(m.p("nope")).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    let long = "x".repeat(256);
    assert_eq!(
        fs::write(m.p(&long), b"").unwrap_err().raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );
}

#[test]
fn rename_noreplace_and_exchange_work() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &[]);
    fs::write(m.p("a"), b"A").unwrap();
    fs::write(m.p("b"), b"B").unwrap();
    assert_eq!(
        renameat2(&m.p("a"), &m.p("b"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    renameat2(&m.p("a"), &m.p("b"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"B");
    assert_eq!(fs::read(m.p("b")).unwrap(), b"A");
    renameat2(&m.p("a"), &m.p("c"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(fs::read(b.path().join("c")).unwrap(), b"B");
}

#[test]
fn unlinked_open_files_keep_working() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &[]);
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(m.p("tmp"))
        .unwrap();
    f.write_all(b"before").unwrap();
    fs::remove_file(m.p("tmp")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 6, "fstat after unlink");
    f.write_all(b"-after").unwrap();
    let mut buf = vec![0u8; 12];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"before-after");
    f.sync_all().unwrap();
}

#[test]
fn o_direct_opens_work() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &[]);
    sh(&format!(
        "dd if=/dev/urandom of={} bs=1M count=4 oflag=direct status=none",
        m.p("d").display()
    ));
    sh(&format!(
        "dd if={} of=/dev/null bs=1M iflag=direct status=none",
        m.p("d").display()
    ));
    assert_eq!(fs::metadata(b.path().join("d")).unwrap().len(), 4 * MIB);
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.p("d"))
        .unwrap();
    drop(f);
}

#[test]
fn paths_near_path_max_and_big_directories_work() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &[]);
    // ~3900 bytes of path below the mount point, created and read through it.
    let comp = "d".repeat(200);
    let mut rel = PathBuf::new();
    for _ in 0..19 {
        rel.push(&comp);
    }
    sh(&format!(
        "cd {} && for i in $(seq 19); do mkdir {comp} && cd {comp}; done && echo deep > f",
        m.path().display()
    ));
    assert_eq!(
        fs::read_to_string(b.path().join(&rel).join("f")).unwrap(),
        "deep\n"
    );
    // 20k entries made on the backend, listed through the mount.
    let big = b.path().join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..20_000 {
        File::create(big.join(format!("f{i}"))).unwrap();
    }
    let out = sh(&format!("ls -f {} | wc -l", m.p("big").display()));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "20002");
}

/// A directory is read from the backend as it is listed, a chunk at a time, not whole at
/// the first readdir: a reader that stats each batch (`ls -l`) then stats what the backend
/// just listed (on GlusterFS, reading 10,000 entries whole first made every stat a round
/// trip: 18.5 s against 1.1 s directly). Offsets stay stable while names come and go: every
/// name present throughout is listed exactly once.
#[test]
fn a_big_directory_is_read_from_the_backend_as_it_is_listed() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let big = b.path().join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..20_000 {
        File::create(big.join(format!("f{i:05}"))).unwrap();
    }
    let m = Mount::new(b.path(), &[]);
    let chunks = |m: &Mount| json_u64(&m.stats(), "meta.readdir.calls");
    let before = chunks(&m);
    let mut it = fs::read_dir(m.p("big")).unwrap();
    let mut seen = std::collections::HashMap::<String, u32>::new();
    for _ in 0..100 {
        let e = it.next().unwrap().unwrap();
        *seen
            .entry(e.file_name().into_string().unwrap())
            .or_default() += 1;
    }
    let early = chunks(&m) - before;
    assert!(
        (1..=2).contains(&early),
        "{early} backend readdir calls for the first 100 of 20,000 entries"
    );
    // Names come and go while the listing is open.
    for i in 0..200 {
        File::create(m.p("big").join(format!("new{i}"))).unwrap();
        fs::remove_file(m.p("big").join(format!("f{:05}", 19_999 - i))).unwrap();
    }
    for e in it {
        *seen
            .entry(e.unwrap().file_name().into_string().unwrap())
            .or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "listed more than once: {twice:?}");
    let missing = (0..19_800)
        .map(|i| format!("f{i:05}"))
        .filter(|n| !seen.contains_key(n))
        .count();
    assert_eq!(
        missing, 0,
        "names present throughout the listing were left out"
    );
    let all = chunks(&m) - before;
    assert!(
        (5..=40).contains(&all),
        "{all} backend readdir calls for 20,000 entries"
    );
}

#[test]
fn allow_other_files_belong_to_the_caller_and_permissions_hold() {
    if !fuse_available() || !have("setpriv") {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    fs::set_permissions(b.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(b.path().join("rootdir")).unwrap();
    fs::set_permissions(b.path().join("rootdir"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(b.path().join("secret"), b"root only").unwrap();
    fs::set_permissions(b.path().join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let m = Mount::new(b.path(), &["-o", "allow_other"]);
    // The test's temp dir is 0700: open the mount point's path for others.
    fs::set_permissions(
        m.path().parent().unwrap(),
        fs::Permissions::from_mode(0o755),
    )
    .ok();
    let nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups";
    sh(&format!(
        "{nobody} bash -c 'echo hi > {0}/mine && mkdir {0}/mydir && ln -s x {0}/mylink'",
        m.path().display()
    ));
    for n in ["mine", "mydir", "mylink"] {
        let st = fs::symlink_metadata(b.path().join(n)).unwrap();
        assert_eq!(
            (st.uid(), st.gid()),
            (65534, 65534),
            "{n} owned by the caller"
        );
    }
    let out = sh_status(&format!("{nobody} cat {}/secret", m.path().display()));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied")
    );
    let out = sh_status(&format!("{nobody} chmod 666 {}/secret", m.path().display()));
    assert!(!out.status.success());
    // Everything the backing permissions forbid stays forbidden through the mount.
    let mp = m.path().display().to_string();
    for cmd in [
        format!("chown 65534 {mp}/secret"),
        format!("echo x > {mp}/secret"),
        format!("mv {mp}/secret {mp}/stolen"),
        format!("touch {mp}/rootdir/new"),
        format!("rm {mp}/secret"),
        format!("ln -s /etc/shadow {mp}/rootdir/l"),
    ] {
        let out = sh_status(&format!("{nobody} bash -c '{cmd}'"));
        assert!(!out.status.success(), "nobody may not: {cmd}");
    }
    assert_eq!(fs::read(b.path().join("secret")).unwrap(), b"root only");
    // A symlink planted in the backing tree is shown as a symlink (the daemon opens
    // every component with O_NOFOLLOW; the caller's kernel resolves it, as on any fs).
    std::os::unix::fs::symlink("/", b.path().join("escape")).unwrap();
    assert!(
        fs::symlink_metadata(m.p("escape"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_link(m.p("escape")).unwrap(), Path::new("/"));
    let out = sh_status(&format!("{nobody} {BIN} stats {}", m.path().display()));
    assert!(!out.status.success(), "stats refused to a non-owner");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only the mount's owner or root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ioctls_answer_enotty_like_a_local_file_without_a_warning_per_open() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mut m = Mount::new(b.path(), &[]);
    fs::write(m.p("f"), b"x").unwrap();
    for _ in 0..3 {
        let f = File::open(m.p("f")).unwrap();
        let mut t: libc::termios = unsafe_zeroed();
        // SAFETY: TCGETS writes one termios into t.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, &mut t) };
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTTY)
        );
    }
    let log = m.stop();
    assert!(!log.contains("Not Implemented"), "daemon log: {log}");
}

#[test]
fn writes_by_unprivileged_callers_clear_setid_bits_as_on_a_local_filesystem() {
    if !fuse_available() || !have("setpriv") {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    fs::set_permissions(b.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let m = Mount::new(b.path(), &["--allow-other"]);
    let f = m.p("prog");
    fs::write(&f, b"#!/bin/sh\n").unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let as_nobody = |cmd: &str| {
        sh(&format!(
            "setpriv --reuid=65534 --regid=65534 --clear-groups sh -c '{cmd}'"
        ))
    };
    // Write-only (uncached) and read-write (cached) opens, as the kernel sends them.
    for (how, cmd) in [
        ("O_WRONLY", format!("echo x >> {}", f.display())),
        ("O_RDWR", format!("exec 3<>{}; echo y >&3", f.display())),
    ] {
        fs::set_permissions(&f, fs::Permissions::from_mode(0o6777)).unwrap();
        as_nobody(&cmd);
        assert_eq!(mode(&f), 0o777, "{how} write by nobody kept set-id bits");
        assert_eq!(
            mode(&b.path().join("prog")),
            0o777,
            "{how}: backend kept them"
        );
    }
    // setgid without group execute is not a privilege: it stays, as on ext4.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o2767)).unwrap();
    as_nobody(&format!("echo z >> {}", f.display()));
    assert_eq!(mode(&f), 0o2767);
    // A writer with CAP_FSETID (root) keeps them.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6777)).unwrap();
    OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"r")
        .unwrap();
    assert_eq!(mode(&f), 0o6777);
}

/// A backing whose listings carry no types (`DT_UNKNOWN`: here ext4 made without the
/// filetype feature; also XFS without ftype and some network filesystems): the listing
/// through the mount still types every entry (a FUSE reply has no "unknown" type, and a
/// directory sent as a regular file kept `find` out of it), both in the names-only first
/// readdirplus batch and in plain readdirs.
#[test]
fn a_backing_that_lists_no_types_still_lists_typed_entries() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, mnt) = (dir.path().join("ext4.img"), dir.path().join("mnt"));
    fs::create_dir(&mnt).unwrap();
    let made = sh_status(&format!(
        "truncate -s 64M {img} && mkfs.ext4 -q -O ^filetype {img} && mount -o loop {img} {mnt}",
        img = img.display(),
        mnt = mnt.display()
    ));
    if !made.status.success() {
        assert!(
            !fuse_required(),
            "an ext4 loop mount is required here (root, e2fsprogs): {}",
            String::from_utf8_lossy(&made.stderr)
        );
        eprintln!("skipped: no ext4 loop mount");
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = sh_status(&format!("umount {}", self.0.display()));
        }
    }
    let _umount = Umount(mnt.clone());
    let b = mnt.join("b");
    fs::create_dir(&b).unwrap();
    // More entries than the first (names-only) batch holds, so plain readdirs list some.
    for i in 0..400 {
        let p = b.join(format!("{i:04}-{}", "x".repeat(40)));
        if i % 2 == 0 {
            fs::create_dir(&p).unwrap();
        } else {
            fs::write(&p, b"").unwrap();
        }
    }
    std::os::unix::fs::symlink("0000", b.join("link")).unwrap();
    let m = Mount::new(&b, &[]);
    let mut dirs = 0;
    for e in fs::read_dir(m.path()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        // std trusts a d_type other than DT_UNKNOWN (no stat): what the mount listed.
        let listed = e.file_type().unwrap();
        let real = fs::symlink_metadata(b.join(&name)).unwrap().file_type();
        assert_eq!(listed, real, "{name}: type listed through the mount");
        dirs += usize::from(listed.is_dir());
    }
    assert_eq!(dirs, 200);
    let found = sh(&format!(
        "find {} -mindepth 1 -type d | wc -l",
        m.path().display()
    ));
    assert_eq!(String::from_utf8_lossy(&found.stdout).trim(), "200");
}
