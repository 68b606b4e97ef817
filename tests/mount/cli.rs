//! The command line: bad input gets one line and exit status 2 with nothing mounted, background mounts, umount, the fstab form.

use crate::harness::*;

#[test]
fn bad_input_gets_one_line_exit_2_and_mounts_nothing() {
    let b = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let bp = b.path().display().to_string();
    let mp = mnt.path().display().to_string();
    let file = b.path().join("file");
    fs::write(&file, b"").unwrap();
    let inside = b.path().join("sub");
    fs::create_dir(&inside).unwrap();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["mount".into(), "/nonexistent-sparsefs".into(), mp.clone()],
            "backing directory /nonexistent-sparsefs does not exist".into(),
        ),
        (
            vec!["mount".into(), file.display().to_string(), mp.clone()],
            format!("backing directory {} is not a directory", file.display()),
        ),
        (
            vec!["mount".into(), bp.clone(), "/nonexistent-mnt".into()],
            "mount point /nonexistent-mnt does not exist".into(),
        ),
        (
            vec!["mount".into(), bp.clone(), inside.display().to_string()],
            "is inside the backing directory".into(),
        ),
        (
            vec!["mount".into(), inside.display().to_string(), bp.clone()],
            "is inside the mount point".into(),
        ),
        (
            vec![
                "mount".into(),
                bp.clone(),
                mp.clone(),
                "--sparse-block".into(),
                "3K".into(),
            ],
            "invalid sparse block 3072: must be a power of two from 4K to 64M".into(),
        ),
        (
            vec![
                "mount".into(),
                bp.clone(),
                mp.clone(),
                "--sparse-block".into(),
                "12Q".into(),
            ],
            "invalid sparse block '12Q'".into(),
        ),
        (
            vec![
                "mount".into(),
                bp.clone(),
                mp.clone(),
                "--write-size".into(),
                "48K".into(),
            ],
            "invalid write size 49152: must be a multiple of the sparse block".into(),
        ),
        (
            vec![
                "mount".into(),
                bp.clone(),
                mp.clone(),
                "-o".into(),
                "frobnicate".into(),
            ],
            "unknown mount option 'frobnicate'".into(),
        ),
        (
            vec![bp.clone(), mp.clone(), "-o".into(), "sparse_block=".into()],
            "invalid sparse block ''".into(),
        ),
        (
            vec![
                "mount".into(),
                bp.clone(),
                mp.clone(),
                "--dirty-age".into(),
                "soon".into(),
            ],
            "invalid dirty age 'soon'".into(),
        ),
        (
            vec![
                "mount".into(),
                bp.clone(),
                mp.clone(),
                "--max-write".into(),
                "32M".into(),
            ],
            "invalid max write 33554432: must be a multiple of 4K from 4K to 16M".into(),
        ),
        (
            vec![
                "mount".into(),
                bp.clone(),
                mp.clone(),
                "-o".into(),
                "read_depth=65".into(),
            ],
            "invalid read depth 65: must be from 0 to 64".into(),
        ),
        (
            vec![
                "mount".into(),
                bp.clone(),
                mp.clone(),
                "--no-such-flag".into(),
            ],
            "unexpected argument '--no-such-flag'".into(),
        ),
    ];
    let before: Vec<_> = fs::read_dir(b.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for (args, want) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.starts_with("sparsefs: error: ") && err.contains(&want),
            "{args:?}: got {err:?}, want {want:?}"
        );
        assert!(!is_mountpoint(mnt.path()), "{args:?}: nothing mounted");
    }
    let after: Vec<_> = fs::read_dir(b.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "nothing changed in the backing directory");
}

#[test]
fn an_already_mounted_mount_point_is_refused() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &[]);
    let out = run(&[
        "mount",
        &b.path().display().to_string(),
        &m.path().display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is already mounted"));
}

#[test]
fn background_mount_returns_when_live_and_umount_command_flushes() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let out = run(&[
        "mount",
        &b.path().display().to_string(),
        &mnt.path().display().to_string(),
        "--dirty-age",
        "1h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_mountpoint(mnt.path()),
        "mounted when the command returns"
    );
    let data = random_bytes(3 * 1000 * 1000, 4);
    fs::write(mnt.path().join("f"), &data).unwrap();
    // Another test's thread that spawns a process while this file is open gives the
    // child a copy of the descriptor until its exec (CLOEXEC acts only then): under CPU
    // load that briefly holds the mount busy (EBUSY in 5 of 25 runs of the cli tests
    // beside stress-ng). Such a busy mount is let go within moments.
    let mut out = run(&["umount", &mnt.path().display().to_string()]);
    for _ in 0..50 {
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("busy") {
            break;
        }
        std::thread::park_timeout(Duration::from_millis(100));
        out = run(&["umount", &mnt.path().display().to_string()]);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("unmount", Duration::from_secs(10), || {
        !is_mountpoint(mnt.path())
    });
    assert_eq!(fs::read(b.path().join("f")).unwrap(), data);
}

#[test]
fn fstab_style_mount_through_mount_fuse3_works() {
    if !fuse_available() || !have("mount.fuse3") {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let bindir = Path::new(BIN).parent().unwrap().display().to_string();
    // mount(8) runs helpers with a fixed PATH; mount.fuse3 is what `mount -t
    // fuse.sparsefs` and fstab lines end in, so call it as mount(8) would.
    sh(&format!(
        "PATH={bindir}:$PATH mount.fuse3 sparsefs#{} {} -o sparse_block=64K,write_size=1M,nosuid,nodev",
        b.path().display(),
        mnt.path().display()
    ));
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(&mnt.path().display().to_string()))
        .expect("mounted")
        .to_string();
    sh(&format!(
        "dd if=/dev/zero of={}/z bs=1M count=8 status=none",
        mnt.path().display()
    ));
    let st = fs::metadata(mnt.path().join("z")).unwrap();
    assert_eq!(st.blksize(), 65536, "sparse_block option applied");
    sh(&format!("umount {}", mnt.path().display()));
    wait_for("unmount", Duration::from_secs(10), || {
        !is_mountpoint(mnt.path())
    });
    assert!(line.contains("fuse.sparsefs"), "{line}");
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    assert_eq!(allocated(&b.path().join("z")), 0);
}

#[test]
fn mount_help_shows_the_default_of_every_option_that_takes_a_value() {
    let out = run(&["mount", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    // Each option's paragraph: from its `--name <VALUE>` line to the next option.
    let mut paragraphs: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with('-') {
            paragraphs.push((t.to_string(), format!("{t} ")));
        } else if let Some(p) = paragraphs.last_mut() {
            p.1.push_str(t);
            p.1.push(' ');
        }
    }
    let valued: Vec<_> = paragraphs
        .iter()
        .filter(|(head, _)| head.contains(" <") && !head.starts_with("-o"))
        .collect();
    assert!(valued.len() >= 10, "{paragraphs:?}");
    let block = valued
        .iter()
        .find(|(head, _)| head.starts_with("--sparse-block"))
        .expect("--sparse-block");
    assert!(block.1.contains("(default 32K)"), "{}", block.1);
    for (head, text) in valued {
        assert!(
            text.contains("default"),
            "no default shown for {head}: {text}"
        );
    }
}
