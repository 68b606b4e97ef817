//! `sparsefs send` / `recv`: round trips through pipes from a plain directory and from a mount, the xfer-hole shell receiver, refused streams, and `--update` over an ssh stand-in.

use crate::harness::*;

const BLOCK: u64 = 32 * 1024;

/// The data runs of `map` rounded out to whole blocks (what a receiver that writes
/// whole blocks allocates), merged, clipped to `size`.
fn rounded(map: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in map {
        let (s, e) = (s / BLOCK * BLOCK, e.next_multiple_of(BLOCK).min(size));
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The runs of non-zero blocks of `bytes`: the map a dense source must arrive with.
fn nonzero_blocks(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, b) in bytes.chunks(BLOCK as usize).enumerate() {
        if b.iter().any(|&x| x != 0) {
            let (s, e) = (i as u64 * BLOCK, i as u64 * BLOCK + b.len() as u64);
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
    }
    out
}

/// `send ARGS... | recv RECV...`: both outputs (send's stderr carries its summary).
fn pipe(send: &str, recv: &str) -> (Output, String) {
    let err = std::env::temp_dir().join(format!("sparsefs-send-{}.err", rand_u64()));
    let out = sh_status(&format!(
        "set -o pipefail; {BIN} send {send} 2>{} | {BIN} recv {recv}",
        err.display()
    ));
    let send_err = fs::read_to_string(&err).unwrap_or_default();
    let _ = fs::remove_file(&err);
    (out, send_err)
}

/// The files of a stream written into `dir`: a sparse image (unaligned extents, a
/// trailing hole), a dense file with zero blocks, a small file whose size is no multiple
/// of the block. Returns (name, extents) of the image and the dense file's bytes.
fn sources(dir: &Path) -> (Vec<(u64, u64)>, Vec<u8>) {
    let extents = vm_extents(64 * MIB);
    make_image(&dir.join("img"), 64 * MIB, &extents);
    let mut dense = random_bytes(4 * MIB as usize, 11);
    for z in [
        (0, BLOCK),
        (MIB, 5 * BLOCK),
        (3 * MIB + 7 * BLOCK, 2 * BLOCK),
    ] {
        dense[z.0 as usize..(z.0 + z.1) as usize].fill(0);
    }
    fs::write(dir.join("dense"), &dense).unwrap();
    fs::write(dir.join("small"), random_bytes(100_001, 5)).unwrap();
    fs::set_permissions(dir.join("small"), fs::Permissions::from_mode(0o600)).unwrap();
    (extents, dense)
}

/// Checks what a round trip from `src` to `dst` delivered: same bytes, mode and mtime;
/// the image's map is its source's rounded to blocks and its allocation within a block
/// per extent of the ideal; the dense file arrives with only its non-zero blocks.
fn check_delivered(src: &Path, dst: &Path, extents: &[(u64, u64)], dense: &[u8]) {
    for name in ["img", "dense", "small"] {
        let (a, b) = (src.join(name), dst.join(name));
        assert!(files_equal(&a, &b), "{name}: contents differ");
        let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
        assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "{name}: mode");
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "{name}: mtime"
        );
    }
    let img = dst.join("img");
    let map = seek_map(&img);
    assert_eq!(
        map,
        rounded(&seek_map(&src.join("img")), 64 * MIB),
        "image map"
    );
    check_map(&map, extents, BLOCK, &img);
    let ideal: u64 = extents.iter().map(|e| e.1).sum();
    let alloc = allocated(&img);
    assert!(
        alloc <= ideal + BLOCK * extents.len() as u64,
        "image allocation {alloc} past ideal {ideal} + a block per extent"
    );
    assert_eq!(
        seek_map(&dst.join("dense")),
        nonzero_blocks(dense),
        "dense map"
    );
    let zeros = dense.len() as u64 - nonzero_blocks(dense).iter().map(|r| r.1 - r.0).sum::<u64>();
    assert!(
        allocated(&dst.join("dense")) <= dense.len() as u64 - zeros,
        "the dense file's zero blocks were allocated"
    );
}

/// Three files (sparse, dense with zero blocks, small) in one stream from a plain
/// directory: bytes, mode, mtime, SEEK map and allocation arrive; the runs come from
/// SEEK_DATA (the probe trusts the test filesystem) and no temporary is left.
#[test]
fn send_recv_round_trip_from_a_plain_directory_keeps_bytes_maps_and_allocation() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (extents, dense) = sources(src.path());
    let files = ["img", "dense", "small"]
        .map(|n| src.path().join(n).display().to_string())
        .join(" ");
    let (out, err) = pipe(
        &format!("--json {files}"),
        &dst.path().display().to_string(),
    );
    assert!(
        out.status.success(),
        "{err}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_delivered(src.path(), dst.path(), &extents, &dense);
    let json = err.lines().last().unwrap();
    assert!(json.contains("\"runs_from\":\"seek\""), "{json}");
    // Holes are not read: only the image's data blocks and the two dense files.
    let read = json_u64(json, "read_bytes");
    let ideal: u64 = extents.iter().map(|e| e.1).sum();
    assert!(
        read <= ideal + 2 * BLOCK * extents.len() as u64 + 5 * MIB,
        "read {read} bytes"
    );
    assert_eq!(names(dst.path()), vec!["dense", "img", "small"]);
}

/// A file on a sparsefs mount is sent with its runs from the mount's index (one
/// daemon request, no lseek answered), and a stream received into a mount lands with
/// the mount's map following the holes; both round trips keep bytes, map and
/// allocation.
#[test]
fn send_from_and_recv_into_a_sparsefs_mount() {
    if !fuse_available() {
        return;
    }
    let backing = Backing::new("dir").unwrap();
    let m = Mount::new(backing.path(), &[]);
    let (extents, dense) = sources(m.path());
    // Cold: the mount learns the files from the backend.
    drop(m);
    let m = Mount::new(backing.path(), &[]);
    let dst = tempfile::tempdir().unwrap();
    let seeks = json_u64(&m.stats(), "seeks_from_index");
    let files = ["img", "dense", "small"]
        .map(|n| m.p(n).display().to_string())
        .join(" ");
    let (out, err) = pipe(
        &format!("--json {files}"),
        &dst.path().display().to_string(),
    );
    assert!(
        out.status.success(),
        "{err}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = err.lines().last().unwrap();
    assert_eq!(
        json.matches("\"runs_from\":\"mount-index\"").count(),
        3,
        "{json}"
    );
    assert_eq!(json_u64(json, "mount_requests"), 3, "{json}");
    assert_eq!(
        json_u64(&m.stats(), "seeks_from_index"),
        seeks,
        "the sender sought through the mount"
    );
    check_delivered(m.path(), dst.path(), &extents, &dense);

    // Into the mount: the plain copy goes back through a mount's writes.
    fs::create_dir(m.p("back")).unwrap();
    let files = ["img", "dense", "small"]
        .map(|n| dst.path().join(n).display().to_string())
        .join(" ");
    let (out, err) = pipe(&files, &m.p("back").display().to_string());
    assert!(
        out.status.success(),
        "{err}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_delivered(dst.path(), &m.p("back"), &extents, &dense);
    // The backend holds only the data blocks.
    let ideal: u64 = extents.iter().map(|e| e.1).sum();
    let alloc = allocated(&backing.path().join("back/img"));
    assert!(
        alloc <= ideal + BLOCK * extents.len() as u64 + 64 * 1024,
        "backend allocation {alloc} for ideal {ideal}"
    );

    // --update --inplace into the mount: a changed block is written and a block that
    // became zeros is punched through the mount; its map follows.
    let ssh = fake_ssh(dst.path());
    let src = dst.path().join("img");
    let f = OpenOptions::new().write(true).open(&src).unwrap();
    let zeroed = extents[3].0 / BLOCK * BLOCK + BLOCK;
    f.write_all_at(&vec![0u8; BLOCK as usize], zeroed).unwrap();
    f.write_all_at(b"changed", extents[9].0 + 10).unwrap();
    drop(f);
    let out = sh_status(&format!(
        "{BIN} send --ssh {} --remote-sparsefs {BIN} --to x:{} --update --inplace --json {}",
        ssh.display(),
        m.p("back/img").display(),
        src.display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).unwrap();
    assert_eq!(json_u64(&json, "blocks_sent"), 1, "{json}");
    assert!(files_equal(&src, &m.p("back/img")));
    let map = seek_map(&m.p("back/img"));
    assert!(
        !covered(&map, zeroed, zeroed + BLOCK),
        "not punched: {map:?}"
    );
    assert_eq!(map, nonzero_blocks(&fs::read(&src).unwrap()));
}

/// The xfer-hole receiver of docs/send.md: a POSIX shell loop with only read, dd and
/// truncate rebuilds the file, sparse.
const XFER_HOLE_RECV: &str = r#"f="$1"; : > "$f" || exit 1; while read -r w; do read -r n || exit 1; case "$w" in DATA) q=$((n / 1048576)); r=$((n % 1048576)); { if [ "$q" -gt 0 ]; then dd bs=1048576 count="$q" iflag=fullblock status=none || exit 1; fi; if [ "$r" -gt 0 ]; then dd bs="$r" count=1 iflag=fullblock status=none || exit 1; fi; } >> "$f" || exit 1;; HOLE) truncate -s "+$n" "$f" || exit 1;; *) echo "xfer-hole: bad record: $w" >&2; exit 1;; esac; done"#;

/// `--format xfer-hole` is received by the documented shell one-liner (sh, dd and
/// truncate only): same bytes, holes kept, also from a dense source with zero blocks.
#[test]
fn xfer_hole_stream_is_received_by_the_posix_shell_one_liner() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (extents, dense) = sources(src.path());
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/send.md")).unwrap();
    assert!(
        doc.contains(XFER_HOLE_RECV),
        "docs/send.md shows another one-liner"
    );
    for name in ["img", "dense", "small"] {
        let script = src.path().join("recv-hole.sh");
        fs::write(&script, XFER_HOLE_RECV).unwrap();
        let out = sh_status(&format!(
            "set -o pipefail; {BIN} send --format xfer-hole {} | sh {} {}",
            src.path().join(name).display(),
            script.display(),
            dst.path().join(name).display()
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            files_equal(&src.path().join(name), &dst.path().join(name)),
            "{name}"
        );
    }
    let img = dst.path().join("img");
    check_map(&seek_map(&img), &extents, BLOCK, &img);
    let ideal: u64 = extents.iter().map(|e| e.1).sum();
    assert!(allocated(&img) <= ideal + BLOCK * extents.len() as u64);
    assert_eq!(seek_map(&dst.path().join("dense")), nonzero_blocks(&dense));
}

/// One error line and exit status 1 (a refused stream) or 2 (bad input).
fn assert_refused(out: &Output, what: &str, expect: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    let bad_input = matches!(
        what,
        "missing file" | "directory" | "missing DEST dir" | "--update without --to"
    );
    assert_eq!(
        out.status.code(),
        Some(if bad_input { 2 } else { 1 }),
        "{what}: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    assert!(err.contains(expect), "{what}: {err}");
}

/// Flipped bytes (in data and in the digest), a cut stream and random bytes are
/// refused with one line; an existing destination keeps its content, a new one is not
/// created, and no temporary is left behind. Bad input to send and recv is refused
/// before anything is written.
#[test]
fn corrupt_truncated_and_foreign_streams_are_refused_and_the_destination_is_untouched() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    sources(src.path());
    let stream = src.path().join("stream");
    sh(&format!(
        "{BIN} send {} {} > {} 2>/dev/null",
        src.path().join("img").display(),
        src.path().join("small").display(),
        stream.display()
    ));
    let good = fs::read(&stream).unwrap();
    fs::write(dst.path().join("img"), b"old content").unwrap();
    let recv = |bytes: &[u8]| {
        let bad = src.path().join("bad");
        fs::write(&bad, bytes).unwrap();
        sh_status(&format!(
            "{BIN} recv {} < {}",
            dst.path().display(),
            bad.display()
        ))
    };
    let untouched = |what: &str| {
        assert_eq!(
            fs::read(dst.path().join("img")).unwrap(),
            b"old content",
            "{what}"
        );
        assert_eq!(
            names(dst.path()),
            vec!["img"],
            "{what}: left {:?}",
            names(dst.path())
        );
    };
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x20;
    assert_refused(&recv(&flipped), "flipped data byte", "checksum mismatch");
    untouched("flipped data byte");
    // A byte of the last file's end record (its digest): the last file fails after all
    // its data was written, and the first, complete, is not renamed either.
    let mut flipped = good.clone();
    let at = good.len() - 9 - 4 - 20;
    flipped[at] ^= 1;
    assert_refused(&recv(&flipped), "flipped end record", "corrupt stream");
    untouched("flipped end record");
    for cut in [10, good.len() / 3, good.len() - 1, good.len() - 9] {
        assert_refused(&recv(&good[..cut]), "cut stream", "truncated stream");
        untouched("cut stream");
    }
    assert_refused(
        &recv(&random_bytes(100_000, 3)),
        "random bytes",
        "not a sparsefs send stream",
    );
    assert_refused(&recv(b""), "empty stream", "truncated stream");
    untouched("foreign stream");
    // The intact stream is accepted.
    let out = recv(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(files_equal(
        &src.path().join("img"),
        &dst.path().join("img")
    ));

    // Bad input: nothing written, one line.
    let out = sh_status(&format!("{BIN} send /nonexistent/x"));
    assert_refused(&out, "missing file", "No such file");
    assert!(out.stdout.is_empty());
    let out = sh_status(&format!("{BIN} send {}", src.path().display()));
    assert_refused(&out, "directory", "is a directory");
    assert!(out.stdout.is_empty());
    let out = sh_status(&format!(
        "{BIN} recv /nonexistent/dir/x < {}",
        stream.display()
    ));
    assert_refused(&out, "missing DEST dir", "does not exist");
    let out = sh_status(&format!(
        "{BIN} recv {} < {}",
        dst.path().join("one-name").display(),
        stream.display()
    ));
    assert_refused(&out, "two files to one name", "give a directory");
    assert!(!dst.path().join("one-name").exists());
}

/// A stand-in for ssh: ignores the host and runs the command here (its words joined
/// by spaces, as ssh sends them).
fn fake_ssh(dir: &Path) -> PathBuf {
    let p = dir.join("fake-ssh");
    fs::write(&p, "#!/bin/sh\nshift\nexec sh -c \"$*\"\n").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// `send --json EXTRA --to somehost:DST SRC` through the ssh stand-in `ssh`: its JSON
/// summary (the send must succeed).
fn send_to_json(ssh: &Path, src: &Path, dst: &Path, extra: &str) -> String {
    let out = sh_status(&format!(
        "{BIN} send --ssh {} --remote-sparsefs {BIN} --to somehost:{} --json {extra} {}",
        ssh.display(),
        dst.display(),
        src.display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `--to` with an ssh stand-in sends a whole file; after 1% of its blocks change (and
/// one data block becomes zeros), `--update` sends exactly the changed blocks, punches
/// the zeroed one, and the copy equals the source again, sparse; `--inplace` as well.
#[test]
fn update_sends_only_the_changed_blocks_over_a_two_way_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = fake_ssh(dir.path());
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    let size = 64 * MIB;
    // Data in every other MiB: 1024 data blocks.
    let extents: Vec<(u64, u64)> = (0..32).map(|i| (2 * i * MIB, MIB)).collect();
    make_image(&src, size, &extents);
    let send = |extra: &str| send_to_json(&ssh, &src, &dst, extra);
    let json = send("");
    assert_eq!(json_u64(&json, "blocks_sent"), 1024, "{json}");
    assert!(files_equal(&src, &dst));
    for (round, extra) in [(1u64, "--update"), (2, "--update --inplace")] {
        // 1% of the data blocks change, in scattered places; one more becomes zeros.
        let f = OpenOptions::new().write(true).open(&src).unwrap();
        let changed: Vec<u64> = (0..10).map(|k| (k * 97 + round * 13) % 1024).collect();
        for &k in &changed {
            let (ext, blk) = (k / 32, k % 32);
            let off = extents[ext as usize].0 + blk * BLOCK + 100;
            f.write_all_at(&random_bytes(50, k + round * 1000), off)
                .unwrap();
        }
        let zeroed = extents[(round * 7) as usize].0 + 5 * BLOCK;
        f.write_all_at(&vec![0u8; BLOCK as usize], zeroed).unwrap();
        drop(f);
        let json = send(extra);
        assert_eq!(
            json_u64(&json, "blocks_sent"),
            changed.len() as u64,
            "{extra}: {json}"
        );
        assert_eq!(
            json_u64(&json, "data_bytes"),
            changed.len() as u64 * BLOCK,
            "{json}"
        );
        assert!(files_equal(&src, &dst), "{extra}: contents differ");
        let map = seek_map(&dst);
        assert!(
            !covered(&map, zeroed, zeroed + BLOCK),
            "{extra}: the zeroed block is still data in {map:?}"
        );
        assert_eq!(map, nonzero_blocks(&fs::read(&src).unwrap()), "{extra}");
    }
    // --update with nothing changed sends nothing.
    let json = send("--update");
    assert_eq!(json_u64(&json, "blocks_sent"), 0, "{json}");
    // --update without --to is bad input.
    let out = sh_status(&format!("{BIN} send --update {}", src.display()));
    assert_refused(&out, "--update without --to", "--to");
    assert!(out.stdout.is_empty());
}

/// A loop-mounted XFS filesystem (reflinks), unmounted when dropped.
struct XfsLoop {
    dir: tempfile::TempDir,
}

impl XfsLoop {
    /// `None` (skipped) without root or mkfs.xfs, except where FUSE tests are required
    /// (CI installs xfsprogs): there it fails.
    fn new(reflink: bool) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("xfs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let ok = unsafe_free_is_root()
            && sh_status(&format!(
                "truncate -s 512M {img} && mkfs.xfs -q -m reflink={} {img} && mount -o loop {img} {mnt}",
                u8::from(reflink),
                img = img.display(),
                mnt = mnt.display()
            ))
            .status
            .success();
        if !ok {
            assert!(
                !fuse_required(),
                "an XFS loop mount is required here (root, xfsprogs)"
            );
            eprintln!("skipped: no XFS loop mount");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn used(&self) -> u64 {
        let st = nix_statvfs(&self.path());
        (st.0 - st.1) * st.2
    }
}

impl Drop for XfsLoop {
    fn drop(&mut self) {
        let _ = sh_status(&format!("umount {}", self.path().display()));
    }
}

/// (blocks, free blocks, fragment size) of the filesystem at `p`, after a sync of it.
fn nix_statvfs(p: &Path) -> (u64, u64, u64) {
    let _ = sh_status(&format!("sync -f {}", p.display()));
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs buffer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_blocks as u64, st.f_bfree as u64, st.f_frsize as u64)
}

/// `--update` without `--inplace` builds the new copy in a temporary; on a filesystem
/// with reflinks (XFS here) the temporary starts as a reflink of the old copy, so its
/// unchanged blocks are shared, not copied: the update costs the filesystem about the
/// changed blocks (an old name kept for the old copy still shows it unchanged). Without
/// reflinks (XFS made with `reflink=0`) the old data blocks are copied, and the copy is
/// as sparse as the old one (XFS's zeroing past the end of file once made it dense).
#[test]
fn update_on_xfs_shares_the_unchanged_blocks_of_the_old_copy() {
    for reflink in [true, false] {
        let Some(xfs) = XfsLoop::new(reflink) else {
            return;
        };
        update_on_xfs(&xfs, reflink);
        fresh_copy_on_xfs_is_as_sparse_as_its_data(&xfs);
    }
}

/// A new copy takes only its data blocks on XFS too: the receiver sizes it before
/// writing, so XFS's preallocation past the end of file leaves no blocks between data
/// extents (25.2 MB for 23.9 MB of 32K data blocks when the size came last).
fn fresh_copy_on_xfs_is_as_sparse_as_its_data(xfs: &XfsLoop) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("scattered.img");
    let size = 256 * MIB;
    let mut x = 7u64;
    let mut next = |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    let extents: Vec<(u64, u64)> = (0..100)
        .map(|_| (next(size - MIB), 16384 + next(400 << 10)))
        .collect();
    make_image(&src, size, &extents);
    let (out, err) = pipe(
        &src.display().to_string(),
        &format!("{}/", xfs.path().display()),
    );
    assert!(out.status.success(), "{err} {out:?}");
    let dst = xfs.path().join("scattered.img");
    assert!(files_equal(&src, &dst));
    let ideal: u64 = nonzero_blocks(&fs::read(&src).unwrap())
        .iter()
        .map(|(s, e)| e - s)
        .sum();
    let _ = sh_status(&format!("sync -f {}", dst.display()));
    let alloc = fs::metadata(&dst).unwrap().blocks() * 512;
    assert!(
        alloc <= ideal + BLOCK,
        "allocated {alloc} for {ideal} of data blocks"
    );
    fs::remove_file(&dst).unwrap();
}

fn update_on_xfs(xfs: &XfsLoop, reflink: bool) {
    let dir = tempfile::tempdir().unwrap();
    let ssh = fake_ssh(dir.path());
    let src = dir.path().join("src.img");
    let dst = xfs.path().join("dst.img");
    let size = 64 * MIB;
    let extents: Vec<(u64, u64)> = (0..32).map(|i| (2 * i * MIB, MIB)).collect();
    make_image(&src, size, &extents);
    let send = |extra: &str| send_to_json(&ssh, &src, &dst, extra);
    send("");
    assert!(files_equal(&src, &dst));
    let old = xfs.path().join("old.img");
    fs::hard_link(&dst, &old).unwrap();
    let before = fs::read(&old).unwrap();
    let f = OpenOptions::new().write(true).open(&src).unwrap();
    for k in 0..10u64 {
        f.write_all_at(
            &random_bytes(100, k + 500),
            extents[(k * 3) as usize].0 + k * BLOCK,
        )
        .unwrap();
    }
    let zeroed = extents[5].0 + 2 * BLOCK;
    f.write_all_at(&vec![0u8; BLOCK as usize], zeroed).unwrap();
    drop(f);
    let used = xfs.used();
    let json = send("--update");
    assert_eq!(json_u64(&json, "blocks_sent"), 10, "{json}");
    let grew = xfs.used().saturating_sub(used);
    assert!(
        files_equal(&src, &dst),
        "reflink {reflink}: contents differ"
    );
    if reflink {
        // 10 changed blocks of 32K and the filesystem's metadata (a copy: 32 MiB).
        assert!(grew < 4 * MIB, "the update used {grew} bytes more");
    } else {
        // The new copy's 32 MiB of data, less the zeroed block (64 MiB when dense).
        assert!(grew < 34 * MIB, "the copy used {grew} bytes");
    }
    let map = seek_map(&dst);
    assert!(
        !covered(&map, zeroed, zeroed + BLOCK),
        "zeroed block still data: {map:?}"
    );
    assert_eq!(
        map,
        nonzero_blocks(&fs::read(&src).unwrap()),
        "reflink {reflink}"
    );
    assert!(
        fs::read(&old).unwrap() == before,
        "reflink {reflink}: the old copy changed"
    );
}

/// From a filesystem whose SEEK_DATA reports everything as data (bindfs), the probe
/// distrusts it and the sender scans for zero blocks: the copy is as sparse as from a
/// plain directory, and the digest of the file is the same as from its sparse original.
#[test]
fn send_from_a_filesystem_without_seek_data_scans_for_zero_blocks() {
    if !fuse_available() {
        return;
    }
    let Some(backing) = Backing::new("bindfs") else {
        assert!(
            !fuse_required(),
            "bindfs is required with SPARSEFS_REQUIRE_FUSE=1"
        );
        eprintln!("skipped: no bindfs");
        return;
    };
    let src = tempfile::tempdir().unwrap();
    let (extents, dense) = sources(backing.underlying());
    sources(src.path());
    let digest = |json: &str| {
        let i = json.find("\"digest\":\"").unwrap() + 10;
        json[i..i + 64].to_string()
    };
    let via = |dir: &Path| {
        let files = ["img", "dense", "small"]
            .map(|n| dir.join(n).display().to_string())
            .join(" ");
        let d = tempfile::tempdir().unwrap();
        let (out, err) = pipe(&format!("--json {files}"), &d.path().display().to_string());
        assert!(out.status.success(), "{err}");
        (err.lines().last().unwrap().to_string(), d)
    };
    let (json, got) = via(backing.path());
    assert!(json.contains("\"runs_from\":\"zero-scan\""), "{json}");
    check_delivered(backing.underlying(), got.path(), &extents, &dense);
    let (plain, _) = via(src.path());
    assert!(plain.contains("\"runs_from\":\"seek\""), "{plain}");
    assert_eq!(
        digest(&json),
        digest(&plain),
        "sparse and dense copies hash alike"
    );
}

/// A throwaway sshd on loopback (its own host key, one authorized key, a free port),
/// killed on drop. `None` where it cannot run (no sshd, not root).
struct LoopbackSshd {
    dir: TempDir,
    child: Child,
    port: u16,
}

impl LoopbackSshd {
    fn start() -> Option<LoopbackSshd> {
        if !Path::new("/usr/sbin/sshd").exists() || !have("ssh-keygen") || !unsafe_free_is_root() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for k in ["host_key", "user_key"] {
            sh(&format!(
                "ssh-keygen -q -t ed25519 -N '' -f {}",
                d.join(k).display()
            ));
        }
        fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n",
                d = d.display()
            ),
        )
        .unwrap();
        fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        let s = LoopbackSshd { dir, child, port };
        wait_for("sshd to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(s)
    }

    /// The `--ssh` command that logs in with the throwaway key.
    fn ssh_cmd(&self) -> String {
        format!(
            "ssh -i {} -p {} -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            self.dir.path().join("user_key").display(),
            self.port
        )
    }
}

impl Drop for LoopbackSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--to root@127.0.0.1:PATH` through a real ssh connection (a throwaway sshd on
/// loopback): the first send delivers the file, `--update` after 1% of the blocks
/// changed sends only those, and the receiver's reply carries its data blocks only. CI (`SPARSEFS_REQUIRE_FUSE=1`, which installs
/// openssh-server) fails instead of skipping when sshd cannot run.
#[test]
fn send_to_over_real_ssh_on_loopback_updates_only_changed_blocks() {
    let Some(sshd) = LoopbackSshd::start() else {
        assert!(
            !fuse_required(),
            "sshd (openssh-server) and root are required with SPARSEFS_REQUIRE_FUSE=1"
        );
        eprintln!("skipped: no sshd or not root");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    let extents: Vec<(u64, u64)> = (0..16).map(|i| (4 * i * MIB, MIB)).collect();
    make_image(&src, 64 * MIB, &extents);
    let send = |extra: &str| {
        let out = Command::new(BIN)
            .args(["send", "--json", "--remote-sparsefs", BIN, "--ssh"])
            .arg(sshd.ssh_cmd())
            .arg("--to")
            .arg(format!("root@127.0.0.1:{}", dst.display()))
            .args(extra.split_whitespace())
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\nsshd: {}",
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap_or_default()
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json = send("");
    assert_eq!(json_u64(&json, "blocks_sent"), 16 * MIB / BLOCK, "{json}");
    assert!(files_equal(&src, &dst));
    assert_eq!(
        seek_map(&dst),
        extents.iter().map(|&(o, l)| (o, o + l)).collect::<Vec<_>>()
    );
    // 1% of the 512 data blocks: 5, scattered.
    let f = OpenOptions::new().write(true).open(&src).unwrap();
    for k in 0..5u64 {
        f.write_all_at(b"changed", extents[(3 * k) as usize].0 + k * 7 * BLOCK + 9)
            .unwrap();
    }
    drop(f);
    let json = send("--update");
    assert_eq!(json_u64(&json, "blocks_sent"), 5, "{json}");
    assert!(files_equal(&src, &dst));
    // The reply lists the copy's 16 data runs and their 512 hashes, not the 2048 blocks
    // of the file.
    let runs = extents.len() as u64;
    assert_eq!(
        json_u64(&json, "reply_bytes"),
        1 + 16 + runs * 16 + 16 * MIB / BLOCK * 32 + 4,
        "{json}"
    );
    // The xfer-hole receiver over ssh, in the form docs/send.md shows.
    let script = dir.path().join("recv-hole.sh");
    fs::write(&script, XFER_HOLE_RECV).unwrap();
    let out_file = dir.path().join("xfer.img");
    let out = sh_status(&format!(
        "set -o pipefail; cd {} && {BIN} send --format xfer-hole {} | {} root@127.0.0.1 sh -c \"'$(cat recv-hole.sh)'\" - {}",
        dir.path().display(),
        src.display(),
        sshd.ssh_cmd(),
        out_file.display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(files_equal(&src, &out_file));
    assert!(allocated(&out_file) <= 17 * MIB, "{}", allocated(&out_file));
}

/// Syscall budgets, counted by strace on both ends of `send | recv`: from a mount the
/// sender makes no lseek (one runs request per file) and one pread per data extent
/// (none for holes); the receiver makes one pwrite per data record, one ftruncate for
/// the trailing hole, and no fallocate or lseek. From a plain directory the sender's
/// lseeks are two per extent (plus the probe's).
#[test]
fn send_and_recv_syscall_budgets() {
    if !fuse_available() || !have("strace") {
        assert!(
            !fuse_required() || have("strace"),
            "strace is required in CI"
        );
        return;
    }
    let backing = Backing::new("dir").unwrap();
    let extents: Vec<(u64, u64)> = (0..16).map(|i| (4 * i * MIB + BLOCK, MIB)).collect();
    make_image(&backing.path().join("img"), 80 * MIB, &extents);
    let m = Mount::new(backing.path(), &[]);
    let run = |src: &Path, tag: &str| {
        let dst = tempfile::tempdir().unwrap();
        let (st, rt) = (
            dst.path().join("send.strace"),
            dst.path().join("recv.strace"),
        );
        let out = sh_status(&format!(
            "set -o pipefail; strace -f -c -o {} {BIN} send --json {} 2>{} | strace -f -c -o {} {BIN} recv {}",
            st.display(),
            src.display(),
            dst.path().join("send.json").display(),
            rt.display(),
            dst.path().join("got").display()
        ));
        assert!(
            out.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(files_equal(src, &dst.path().join("got")), "{tag}");
        let json = fs::read_to_string(dst.path().join("send.json")).unwrap();
        (strace_counts(&st), strace_counts(&rt), json, dst)
    };
    let n = extents.len() as u64;
    // What starting the binary costs (the loader preads its ELF headers).
    let tmp = tempfile::tempdir().unwrap();
    let base_trace = tmp.path().join("base.strace");
    sh(&format!(
        "strace -f -c -o {} {BIN} --version >/dev/null",
        base_trace.display()
    ));
    let base = strace_counts(&base_trace);
    let calls = |c: &std::collections::HashMap<String, u64>, k: &str| {
        c.get(k).copied().unwrap_or(0)
            - base
                .get(k)
                .copied()
                .unwrap_or(0)
                .min(c.get(k).copied().unwrap_or(0))
    };

    let (s, r, json, _d) = run(&m.p("img"), "mount");
    assert!(json.contains("mount-index"), "{json}");
    assert_eq!(
        calls(&s, "lseek"),
        0,
        "sender lseeks through the mount: {s:?}"
    );
    assert_eq!(calls(&s, "getxattr"), 1, "{s:?}");
    assert_eq!(
        calls(&s, "pread64"),
        n,
        "one read per extent, none of a hole: {s:?}"
    );
    assert_eq!(
        calls(&r, "pwrite64"),
        json_u64(&json, "data_records"),
        "{r:?}"
    );
    assert_eq!(calls(&r, "pwrite64"), n, "{r:?}");
    assert_eq!(calls(&r, "ftruncate"), 1, "{r:?}");
    assert_eq!(calls(&r, "fallocate"), 0, "{r:?}");
    assert_eq!(calls(&r, "lseek"), 0, "{r:?}");

    let (s, r, json, _d) = run(&backing.path().join("img"), "dir");
    assert!(json.contains("\"runs_from\":\"seek\""), "{json}");
    let seeks = calls(&s, "lseek");
    assert!(
        seeks >= 2 * n && seeks <= 2 * n + 12,
        "sender lseeks {seeks}: {s:?}"
    );
    assert!(calls(&s, "pread64") <= n + 4, "{s:?}");
    assert_eq!(calls(&r, "pwrite64"), n, "{r:?}");
    assert_eq!(calls(&r, "ftruncate"), 1, "{r:?}");
}

/// A recv killed in the middle of a stream leaves its temporary beside the
/// destination; the next recv of the same destination removes it (its writer is gone)
/// and delivers the file, and leaves nothing else behind.
#[test]
fn the_temporary_of_a_killed_recv_is_removed_by_the_next_recv() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let img = src.path().join("img");
    make_image(&img, 16 * MIB, &[(MIB, 8 * MIB)]);
    let stream = src.path().join("stream");
    sh(&format!(
        "{BIN} send {} > {} 2>/dev/null",
        img.display(),
        stream.display()
    ));
    let good = fs::read(&stream).unwrap();
    let mut c = Command::new(BIN)
        .arg("recv")
        .arg(dst.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut w = c.stdin.take().unwrap();
    w.write_all(&good[..good.len() / 2]).unwrap();
    w.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let temp = loop {
        let n = names(dst.path());
        if let Some(t) = n.iter().find(|n| n.starts_with(".img.sparsefs-recv.")) {
            break t.clone();
        }
        assert!(Instant::now() < deadline, "no temporary appeared: {n:?}");
        std::thread::park_timeout(Duration::from_millis(10));
    };
    c.kill().unwrap();
    c.wait().unwrap();
    drop(w);
    assert_eq!(names(dst.path()), vec![temp.clone()]);
    let out = sh_status(&format!(
        "{BIN} recv --json {} < {}",
        dst.path().display(),
        stream.display()
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(json_u64(&err, "stale_removed"), 1, "{err}");
    assert_eq!(names(dst.path()), vec!["img"]);
    assert!(files_equal(&img, &dst.path().join("img")));
}
