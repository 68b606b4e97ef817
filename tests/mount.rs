//! Integration tests through real FUSE mounts of the real binary: real tools (dd, cp,
//! rsync, tar, qemu-img), SEEK_DATA maps, allocation on the backend, errnos, backend
//! call counts, bad input. One binary; each test mounts its own temp directories.
//!
//! A test that cannot mount fails when `SPARSEFS_REQUIRE_FUSE=1` (CI sets it) and says
//! it skipped otherwise. `SPARSEFS_TEST_BACKINGS` (default `dir,bindfs`) picks the
//! backings of the matrix tests; `gluster` uses `SPARSEFS_GLUSTER_DIR` (see
//! scripts/test-gluster.sh).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

#[path = "mount/torture.rs"]
mod torture;

const MIB: u64 = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_sparsefs");

fn fuse_required() -> bool {
    std::env::var("SPARSEFS_REQUIRE_FUSE").is_ok_and(|v| v == "1")
}

/// Returns false (test skipped) when FUSE is unavailable and not required.
fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists() && unsafe_free_is_root();
    if !ok {
        assert!(
            !fuse_required(),
            "FUSE is required (SPARSEFS_REQUIRE_FUSE=1) but /dev/fuse or root is missing"
        );
        eprintln!("skipped: no /dev/fuse or not root");
    }
    ok
}

fn unsafe_free_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn is_mountpoint(p: &Path) -> bool {
    let p = fs::canonicalize(p).unwrap_or(p.to_path_buf());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m) == p)
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

fn sh(cmd: &str) -> Output {
    let out = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sh_status(cmd: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("bash")
}

fn have(tool: &str) -> bool {
    let ok = sh_status(&format!("command -v {tool}")).status.success();
    if !ok {
        assert!(!fuse_required(), "{tool} is required in CI");
        eprintln!("skipped: {tool} missing");
    }
    ok
}

/// A backing directory of some kind.
enum Backing {
    Dir(TempDir),
    Bindfs { _src: TempDir, mnt: TempDir },
    Gluster(PathBuf),
}

impl Backing {
    fn new(kind: &str) -> Option<Backing> {
        match kind {
            "dir" => Some(Backing::Dir(tempfile::tempdir().unwrap())),
            "bindfs" => {
                if !have("bindfs") {
                    return None;
                }
                let src = tempfile::tempdir().unwrap();
                let mnt = tempfile::tempdir().unwrap();
                sh(&format!(
                    "bindfs {} {}",
                    src.path().display(),
                    mnt.path().display()
                ));
                wait_for("bindfs", Duration::from_secs(10), || {
                    is_mountpoint(mnt.path())
                });
                Some(Backing::Bindfs { _src: src, mnt })
            }
            "gluster" => {
                let base = std::env::var("SPARSEFS_GLUSTER_DIR")
                    .expect("SPARSEFS_GLUSTER_DIR names a mounted GlusterFS volume");
                let d = Path::new(&base).join(format!(
                    "t-{}-{}",
                    std::process::id(),
                    rand_u64() % 1_000_000
                ));
                fs::create_dir_all(&d).unwrap();
                Some(Backing::Gluster(d))
            }
            other => panic!("unknown backing {other}"),
        }
    }

    /// What sparsefs mounts.
    fn path(&self) -> &Path {
        match self {
            Backing::Dir(d) => d.path(),
            Backing::Bindfs { mnt, .. } => mnt.path(),
            Backing::Gluster(p) => p,
        }
    }

    /// Where the files really are (bindfs's source directory), for changes made "outside".
    fn underlying(&self) -> &Path {
        match self {
            Backing::Bindfs { _src, .. } => _src.path(),
            _ => self.path(),
        }
    }

    fn punches(&self) -> bool {
        !matches!(self, Backing::Bindfs { .. })
    }

    /// A file unlinked while open can be opened again through its fd (GlusterFS answers
    /// ESTALE, so sparsefs leaves kernel passthrough off there).
    fn reopens_unlinked(&self) -> bool {
        !matches!(self, Backing::Gluster(_))
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        match self {
            Backing::Bindfs { mnt, .. } => {
                let _ = sh_status(&format!(
                    "fusermount3 -u {} || umount -l {}",
                    mnt.path().display(),
                    mnt.path().display()
                ));
            }
            Backing::Gluster(p) => {
                let _ = fs::remove_dir_all(p);
            }
            Backing::Dir(_) => {}
        }
    }
}

fn backings() -> Vec<String> {
    std::env::var("SPARSEFS_TEST_BACKINGS")
        .unwrap_or_else(|_| "dir,bindfs".into())
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Runs `f` on a fresh backing of every kind under test that is available here.
fn for_each_backing(f: impl Fn(&Backing)) {
    for kind in backings() {
        if let Some(b) = Backing::new(&kind) {
            f(&b);
        }
    }
}

/// A running `sparsefs mount -f`, unmounted (and the daemon reaped) on drop.
struct Mount {
    dir: TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl Mount {
    fn new(backing: &Path, args: &[&str]) -> Mount {
        Mount::new_under(&[], backing, args)
    }

    /// Mounts with the daemon started under a wrapper command (e.g. `prlimit ...`).
    fn new_under(wrapper: &[&str], backing: &Path, args: &[&str]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let log = std::env::temp_dir().join(format!(
            "sparsefs-test-{}-{}.log",
            std::process::id(),
            rand_u64()
        ));
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            // A lock taken out of rank order, or held across a backend call it may not
            // be, aborts the daemon with a backtrace: the test that did it fails.
            .env("SPARSEFS_LOCK_CHECK", "abort")
            .arg("mount")
            .arg(backing)
            .arg(dir.path())
            .arg("-f")
            .args(args)
            .stderr(File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sparsefs");
        let mut m = Mount {
            dir,
            child: Some(child),
            log,
        };
        let p = m.dir.path().to_path_buf();
        let t = Instant::now();
        while !is_mountpoint(&p) {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sparsefs exited ({st}) before mounting: {}",
                    fs::read_to_string(&m.log).unwrap_or_default()
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "mount did not become ready"
            );
            std::thread::park_timeout(Duration::from_millis(20));
        }
        m
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// What the daemon logged so far.
    fn log_so_far(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stats(&self) -> String {
        let out = sh(&format!("{BIN} stats --json {}", self.path().display()));
        String::from_utf8(out.stdout).unwrap()
    }

    fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = sh_status(&format!(
                "umount {} 2>/dev/null || umount -l {}",
                self.dir.path().display(),
                self.dir.path().display()
            ));
            let t = Instant::now();
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    let _ = c.kill();
                    let _ = c.wait();
                    // Never a second panic while a failing test unwinds (it would abort
                    // the whole test binary and hide the first message).
                    if !std::thread::panicking() {
                        panic!("daemon did not exit after unmount");
                    }
                    break;
                }
                std::thread::park_timeout(Duration::from_millis(20));
            }
        }
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let _ = fs::remove_file(&self.log);
        log
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json_u64(json: &str, path: &str) -> u64 {
    // Finds "a":{... "b":N ...} by walking the dotted path with plain string search.
    let mut rest = json;
    for key in path.split('.') {
        let pat = format!("\"{key}\":");
        let i = rest
            .find(&pat)
            .unwrap_or_else(|| panic!("{path} not in {json}"));
        rest = &rest[i + pat.len()..];
    }
    rest.chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static S: AtomicU64 = AtomicU64::new(0x9E3779B97F4A7C15);
    let mut x = S.fetch_add(0x9E3779B97F4A7C15, Ordering::Relaxed) ^ std::process::id() as u64;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A sparse VM-like image: `size` bytes, data extents (offset, len) of random bytes.
fn make_image(path: &Path, size: u64, extents: &[(u64, u64)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in extents.iter().enumerate() {
        f.write_all_at(&random_bytes(len as usize, i as u64 + 7), off)
            .unwrap();
    }
}

/// About 3% data in 24 scattered extents of 64 KiB .. 1 MiB (some unaligned).
fn vm_extents(size: u64) -> Vec<(u64, u64)> {
    let n = 24u64;
    (0..n)
        .map(|i| {
            let len = [64 << 10, 256 << 10, 1 << 20, 100_000][(i % 4) as usize];
            let off = (i * size / n + (i * 12_345) % 65_536).min(size - len);
            (off, len)
        })
        .collect()
}

fn files_equal(a: &Path, b: &Path) -> bool {
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut off = 0;
    loop {
        let n = fa.read_at(&mut x, off).unwrap();
        let m = fb.read_at(&mut y, off).unwrap();
        if n != m || x[..n] != y[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
        off += n as u64;
    }
}

fn lseek(f: &File, off: i64, whence: i32) -> Result<u64, i32> {
    // SAFETY: plain syscall on an open fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(r as u64)
    }
}

/// The SEEK_DATA/SEEK_HOLE map of a file.
fn seek_map(path: &Path) -> Vec<(u64, u64)> {
    let f = File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        match lseek(&f, pos as i64, libc::SEEK_DATA) {
            Ok(d) => {
                let h = lseek(&f, d as i64, libc::SEEK_HOLE).unwrap();
                assert!(
                    h > d && h <= size,
                    "SEEK_HOLE {h} after data {d} in size {size}"
                );
                out.push((d, h));
                pos = h;
            }
            Err(e) => {
                assert_eq!(e, libc::ENXIO);
                break;
            }
        }
    }
    out
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// Checks a map against the image's extents: every data byte is inside reported data,
/// every reported hole is zero in `reference`, and data is within one block of ideal
/// per extent.
fn check_map(map: &[(u64, u64)], extents: &[(u64, u64)], block: u64, reference: &Path) {
    for &(off, len) in extents {
        assert!(
            map.iter().any(|&(d, h)| d <= off && off + len <= h) || covered(map, off, off + len),
            "extent {off}+{len} not in data map {map:?}"
        );
    }
    let data: u64 = map.iter().map(|(d, h)| h - d).sum();
    let ideal: u64 = extents.iter().map(|&(_, l)| l).sum();
    assert!(
        data <= ideal + 2 * block * extents.len() as u64,
        "data map {data} too far above ideal {ideal}"
    );
    let f = File::open(reference).unwrap();
    let size = f.metadata().unwrap().len();
    let mut pos = 0;
    for &(d, h) in map.iter().chain(std::iter::once(&(size, size))) {
        let mut buf = vec![0u8; (d - pos) as usize];
        f.read_exact_at(&mut buf, pos).unwrap();
        assert!(
            buf.iter().all(|&b| b == 0),
            "reported hole [{pos},{d}) holds data"
        );
        pos = h;
    }
}

fn covered(map: &[(u64, u64)], s: u64, e: u64) -> bool {
    let mut pos = s;
    for &(d, h) in map {
        if d <= pos && h > pos {
            pos = h;
        }
    }
    pos >= e
}

// ---------------------------------------------------------------------------------------
// The sparse engine through real tools

#[test]
fn dd_of_zeros_leaves_no_allocation_and_reads_back_zeros() {
    if !fuse_available() {
        return;
    }
    for kind in backings() {
        for (block, mib) in [("4K", 64u64), ("32K", 1024), ("1M", 64)] {
            let Some(b) = Backing::new(&kind) else {
                continue;
            };
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
    for kind in backings() {
        for (block, bytes) in [("4K", 4096u64), ("32K", 32768), ("1M", MIB)] {
            let Some(b) = Backing::new(&kind) else {
                continue;
            };
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
    for kind in backings() {
        let Some(b) = Backing::new(&kind) else {
            continue;
        };
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
    for kind in backings() {
        let Some(b) = Backing::new(&kind) else {
            continue;
        };
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
    for kind in backings() {
        let Some(b) = Backing::new(&kind) else {
            continue;
        };
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
    for kind in backings() {
        let Some(b) = Backing::new(&kind) else {
            continue;
        };
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

// ---------------------------------------------------------------------------------------
// Durability and errors

#[test]
fn enospc_on_the_backend_reaches_the_writer() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=8m tmpfs {}",
        b.path().display()
    ));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = sh_status(&format!("umount -l {}", self.0.display()));
        }
    }
    let _u = Unmount(b.path().to_path_buf());
    let m = Mount::new(b.path(), &[]);
    let src = b.path().join("..").join(format!("rand-{}", rand_u64()));
    fs::write(&src, random_bytes((16 * MIB) as usize, 9)).unwrap();
    let out = sh_status(&format!(
        "dd if={} of={} bs=1M conv=fsync status=none",
        src.display(),
        m.p("big").display()
    ));
    let _ = fs::remove_file(&src);
    assert!(
        !out.status.success(),
        "dd must fail when the backend is full"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "dd said: {err}");
    // The mount keeps working after the error.
    fs::remove_file(m.p("big")).unwrap();
    fs::write(m.p("small"), b"ok").unwrap();
    assert_eq!(fs::read(m.p("small")).unwrap(), b"ok");
}

#[test]
fn fsync_puts_data_on_the_backend_before_returning() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &["--dirty-age", "1h"]);
    let data = random_bytes(3 * 1000 * 1000 + 17, 11);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(m.p("f"))
        .unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    assert_eq!(
        fs::read(b.path().join("f")).unwrap(),
        data,
        "fsynced data is on the backend while the file is open"
    );
    let stats = m.stats();
    assert!(json_u64(&stats, "backend.fsync.calls") >= 1);
}

#[test]
fn sigterm_flushes_and_unmounts() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mut m = Mount::new(b.path(), &["--dirty-age", "1h"]);
    let data = random_bytes(5 * 1000 * 1000, 12);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(m.p("f"))
        .unwrap();
    f.write_all(&data).unwrap();
    let pid = m.child.as_ref().unwrap().id();
    sh(&format!("kill -TERM {pid}"));
    let mut c = m.child.take().unwrap();
    let t = Instant::now();
    while c.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "daemon did not exit on SIGTERM"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
    drop(f);
    assert!(!is_mountpoint(m.path()));
    assert_eq!(
        fs::read(b.path().join("f")).unwrap(),
        data,
        "dirty data flushed at unmount"
    );
}

/// A mount with the test hooks on (see `WEDGE_XATTR`), whose daemon calls its exit flush
/// wedged after `wedge_secs`.
fn wedgeable_mount(backing: &Path, wedge_secs: &str) -> Mount {
    Mount::new_under(
        &[
            "env",
            "SPARSEFS_DEBUG_HOOKS=1",
            &format!("SPARSEFS_EXIT_WEDGE_SECS={wedge_secs}"),
        ],
        backing,
        &["--dirty-age", "1h"],
    )
}

/// Wedges the engine lock of the open file `f` for good (test hook).
fn wedge(f: &File) {
    let name = CString::new("user.sparsefs.debug.wedge").unwrap();
    // SAFETY: valid fd, name and value.
    let r = unsafe { libc::fsetxattr(f.as_raw_fd(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    assert_eq!(r, 0, "wedge hook: {}", std::io::Error::last_os_error());
}

#[test]
fn a_sigterm_whose_flush_is_wedged_logs_the_stuck_threads_and_abandoned_bytes_and_exits() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mut m = wedgeable_mount(b.path(), "2");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(m.p("f"))
        .unwrap();
    f.write_all_at(&[7u8; 1000], 0).unwrap();
    wedge(&f);
    // No fork from here on: a child's exec closes its copy of `f`, and that close's
    // FLUSH would wait for the wedged lock.
    // SAFETY: plain syscall.
    assert_eq!(
        unsafe { libc::kill(daemon_pid(&m) as i32, libc::SIGTERM) },
        0
    );
    let mut c = m.child.take().unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "a wedged daemon did not give up its exit flush"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    };
    drop(f);
    let log = fs::read_to_string(&m.log).unwrap_or_default();
    assert!(
        !status.success(),
        "gave up: non-zero status ({status})\n{log}"
    );
    assert!(log.contains("exit flush wedged"), "{log}");
    assert!(
        log.contains("sparsefs-exit: waiting for Engine")
            || log.contains("sparsefs-flush: waiting for Engine"),
        "the stuck thread and its lock are named:\n{log}"
    );
    assert!(
        log.contains("sparsefs-wedge: running, holding [Engine]"),
        "the holder is named:\n{log}"
    );
    assert!(
        log.contains("dirty_bytes_abandoned=") && !log.contains("dirty_bytes_abandoned=0"),
        "the abandoned bytes are counted:\n{log}"
    );
}

#[test]
fn umount_force_ends_a_wedged_mount_its_stuck_callers_and_its_daemon() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mut m = wedgeable_mount(b.path(), "2");
    // The stuck caller is another process (this one forks `sparsefs umount` below: a
    // child's exec closing its copy of a wedged file would itself wait for the lock).
    let script = r#"
import os, sys, threading
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
os.pwrite(fd, b"x" * 1000, 0)
os.setxattr(fd, "user.sparsefs.debug.wedge", b"1")
def stuck():
    try:
        os.pwrite(fd, b"y", 0)
        print("write ok", flush=True)
    except OSError as e:
        print("write errno", e.errno, flush=True)
t = threading.Thread(target=stuck)
t.start()
print("ready", flush=True)
t.join()
"#;
    let mut py = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(m.p("f"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        py.try_wait().unwrap().is_none(),
        "the write is stuck in the wedged daemon"
    );
    let force = Command::new(BIN)
        .args(["umount", "--force", "--wait", "10"])
        .arg(m.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&force.stdout).to_string()
        + &String::from_utf8_lossy(&force.stderr);
    assert!(force.status.success(), "umount --force: {text}");
    assert!(text.contains("aborted FUSE connection"), "{text}");
    assert!(text.contains("exited") || text.contains("killed"), "{text}");
    let t = Instant::now();
    while py.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the stuck caller never returned"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    // A request pending at the abort fails with ECONNABORTED, later ones with ENOTCONN.
    assert!(
        [libc::ECONNABORTED, libc::ENOTCONN]
            .iter()
            .any(|e| line.trim() == format!("write errno {e}")),
        "stuck caller: {line}"
    );
    assert!(!is_mountpoint(m.path()), "detached");
    let mut c = m.child.take().unwrap();
    let t = Instant::now();
    while c.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the daemon was not ended"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
    // Bad input: one line, non-zero, nothing touched.
    let bad = Command::new(BIN)
        .args(["umount", "--force"])
        .arg(b.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
}

// ---------------------------------------------------------------------------------------
// Passthrough semantics

#[test]
fn metadata_operations_pass_through() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &[]);
    // mkdir, create, write, read, rename, unlink, rmdir
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/a"), b"hello").unwrap();
    assert_eq!(fs::read(b.path().join("d/a")).unwrap(), b"hello");
    fs::rename(m.p("d/a"), m.p("d/b")).unwrap();
    assert!(!b.path().join("d/a").exists() && b.path().join("d/b").exists());
    // chmod, chown, utimens, truncate
    fs::set_permissions(m.p("d/b"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(b.path().join("d/b")).unwrap().mode() & 0o7777,
        0o640
    );
    sh(&format!("chown 65534:65534 {}", m.p("d/b").display()));
    assert_eq!(fs::metadata(b.path().join("d/b")).unwrap().uid(), 65534);
    sh(&format!(
        "touch -d '2001-02-03 04:05:06' {}",
        m.p("d/b").display()
    ));
    assert_eq!(
        fs::metadata(b.path().join("d/b")).unwrap().mtime(),
        fs::metadata(m.p("d/b")).unwrap().mtime()
    );
    assert_eq!(
        fs::metadata(m.p("d/b")).unwrap().mtime(),
        local_epoch("2001-02-03 04:05:06")
    );
    sh(&format!("truncate -s 3 {}", m.p("d/b").display()));
    assert_eq!(fs::read(m.p("d/b")).unwrap(), b"hel");
    // symlink, readlink, hard link sharing one inode
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
    // st_ino is the backing inode number (stable across remounts)
    assert_eq!(s1.ino(), fs::metadata(b.path().join("d/b")).unwrap().ino());
    // fifo
    sh(&format!("mkfifo {}", m.p("fifo").display()));
    assert!(
        fs::symlink_metadata(b.path().join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo_like()
    );
    // xattrs
    sh(&format!(
        "setfattr -n user.k -v v1 {}",
        m.p("d/b").display()
    ));
    let out = sh(&format!(
        "getfattr --only-values -n user.k {}",
        m.p("d/b").display()
    ));
    assert_eq!(out.stdout, b"v1");
    let out = sh(&format!("getfattr -d {}", m.p("d/b").display()));
    assert!(String::from_utf8_lossy(&out.stdout).contains("user.k"));
    sh(&format!("setfattr -x user.k {}", m.p("d/b").display()));
    assert!(
        !sh_status(&format!("getfattr -n user.k {}", m.p("d/b").display()))
            .status
            .success()
    );
    // readdir: names and the same inode numbers as lookup
    let out = sh(&format!("ls -ai {}", m.p("d").display()));
    let ls = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(ls.contains(&format!("{} b", s1.ino())), "{ls}");
    // statfs forwarded
    let (a, c) = (statvfs(m.path()), statvfs(b.path()));
    assert_eq!(a.0, c.0, "f_blocks");
    // statfs of a file, not only of a directory (glibc's posix_fallocate emulation and
    // df FILE need it)
    assert_eq!(statvfs(&m.p("d/b")).0, c.0, "statfs of a regular file");
    // rmdir / unlink
    fs::remove_file(m.p("d/b")).unwrap();
    fs::remove_file(m.p("hard")).unwrap();
    fs::remove_dir(m.p("d")).unwrap();
    assert!(!b.path().join("d").exists());
    // ENOTEMPTY, EEXIST, ENOENT errnos pass through
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

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

fn local_epoch(t: &str) -> i64 {
    let out = sh(&format!("date -d '{t}' +%s"));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn statvfs(p: &Path) -> (u64, u64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe_zeroed();
    // SAFETY: valid C string; s valid for writes.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    (s.f_blocks, s.f_bsize)
}

fn unsafe_zeroed<T: Copy>() -> T {
    // SAFETY: only used for plain C structs where all-zero is valid.
    unsafe { std::mem::zeroed() }
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> Result<(), i32> {
    let (ca, cb) = (
        CString::new(a.as_os_str().as_bytes()).unwrap(),
        CString::new(b.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
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

/// `sparsefs scan` through a mount: a file written densely (zeros included) directly on
/// the backend becomes sparse as the mount sees it (SEEK map, st_blocks), keeps its bytes,
/// keeps its map across a remount, and with `--dig` frees the backend's space. `--dry-run`
/// changes nothing; a user without write access is refused with a clear line.
#[test]
fn scan_through_the_mount_learns_zero_blocks_and_digs_them() {
    if !fuse_available() || !have("setpriv") {
        return;
    }
    for kind in backings() {
        let Some(backing) = Backing::new(&kind) else {
            continue;
        };
        let b = backing.path().to_path_buf();
        let img = b.join("img");
        let extents = [
            (0, MIB),
            (5 * MIB, MIB),
            (17 * MIB + 32 * 1024, 96 * 1024),
            (40 * MIB, MIB),
        ];
        // Dense: every zero written, so the backend allocates all 48 MiB.
        let mut bytes = vec![0u8; 48 * MIB as usize];
        for (i, &(off, len)) in extents.iter().enumerate() {
            bytes[off as usize..(off + len) as usize]
                .copy_from_slice(&random_bytes(len as usize, i as u64 + 3));
        }
        fs::write(&img, &bytes).unwrap();
        fs::set_permissions(&img, fs::Permissions::from_mode(0o644)).unwrap();
        let m = Mount::new(&b, &["--allow-other"]);
        let mi = m.p("img");
        let before = seek_map(&mi);
        // Not sparse-aware yet: the whole file is data.
        assert_eq!(before, vec![(0, 48 * MIB)], "{kind}");
        // dry run: a report, no change.
        let out = sh(&format!("{BIN} scan --dry-run {}", mi.display()));
        assert!(String::from_utf8_lossy(&out.stdout).contains("(dry run)"));
        assert_eq!(seek_map(&mi), before);
        // A reader without write access is refused.
        let out = sh_status(&format!(
            "setpriv --reuid=65534 --regid=65534 --clear-groups {BIN} scan {}",
            mi.display()
        ));
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("scanning needs write access"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(seek_map(&mi), before);
        // The scan: the map is the data extents (whole 32 KiB blocks), bytes unchanged.
        let alloc_before = allocated(&img);
        sh(&format!("{BIN} scan {}", mi.display()));
        check_map(&seek_map(&mi), &extents, 32 * 1024, &img);
        assert_eq!(fs::read(&mi).unwrap(), bytes);
        let st = fs::metadata(&mi).unwrap();
        assert!(st.blocks() * 512 <= 4 * MIB, "st_blocks {}", st.blocks());
        // (ext4 counts the map xattr's block in st_blocks.)
        let alloc = allocated(&img);
        assert!(
            (alloc_before..=alloc_before + 64 * 1024).contains(&alloc),
            "scan without --dig changes no data: {alloc_before} -> {alloc}"
        );
        // It lasts: a new mount reads the stored map.
        drop(m);
        let m = Mount::new(&b, &[]);
        let mi = m.p("img");
        check_map(&seek_map(&mi), &extents, 32 * 1024, &img);
        // --dig frees the space of the zero blocks on the backend (where it can punch).
        sh(&format!("{BIN} scan --dig {}", mi.display()));
        assert_eq!(fs::read(&mi).unwrap(), bytes);
        drop(m);
        assert_eq!(fs::read(&img).unwrap(), bytes);
        if backing.punches() {
            assert!(
                allocated(&img) <= 5 * MIB,
                "{kind}: allocated {}",
                allocated(&img)
            );
        }
        // The map stored after digging is still valid for the next mount.
        let m = Mount::new(&b, &[]);
        check_map(&seek_map(&m.p("img")), &extents, 32 * 1024, &img);
    }
}

/// A map of 100k extents (too big for an ext4 xattr) persists through a remount: the
/// record spills to the sidecar store and comes back whole.
#[test]
fn a_100k_extent_map_survives_a_remount() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let n: u64 = 100_000;
    {
        let m = Mount::new(b.path(), &["--sparse-block", "4K"]);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(m.p("many"))
            .unwrap();
        let block = [0x5au8; 4096];
        for i in 0..n {
            f.write_all_at(&block, i * 8192).unwrap();
        }
        f.set_len(n * 8192).unwrap();
        drop(f);
    }
    // On the backend the extent tree takes blocks too, once written back.
    File::open(b.path().join("many"))
        .unwrap()
        .sync_all()
        .unwrap();
    let m = Mount::new(b.path(), &["--sparse-block", "4K"]);
    // The lookup reports the backend's allocation (extent-tree blocks included); the
    // open loads the stored map, and the fstat that follows (cp's) already sees its blocks.
    let looked_up = fs::metadata(m.p("many")).unwrap().blocks();
    let f = File::open(m.p("many")).unwrap();
    assert_eq!(
        f.metadata().unwrap().blocks(),
        n * 8,
        "fstat after open kept the lookup's st_blocks ({looked_up})"
    );
    let mut pos = 0u64;
    let mut count = 0u64;
    while let Ok(d) = lseek(&f, pos as i64, libc::SEEK_DATA) {
        let h = lseek(&f, d as i64, libc::SEEK_HOLE).unwrap();
        assert_eq!((d, h), (count * 8192, count * 8192 + 4096));
        count += 1;
        pos = h;
    }
    assert_eq!(count, n);
    assert_eq!(fs::metadata(m.p("many")).unwrap().blocks(), n * 8);
}

/// Stored maps do not outlive their files: removing the last link through the mount
/// (unlink, or a rename over it) removes the sidecar record; `sparsefs gc` removes the
/// records of files deleted outside the mount.
#[test]
fn stored_maps_go_with_their_files() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let records = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(b.path().join(".sparsefs-maps"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let m = Mount::new(b.path(), &[]);
    let mut inos = Vec::new();
    for name in ["a", "b", "c", "d"] {
        make_image(&m.p(name), 8 * MIB, &[(MIB, 64 * 1024)]);
        inos.push(fs::metadata(b.path().join(name)).unwrap().ino().to_string());
    }
    let mut all = inos.clone();
    all.sort();
    assert_eq!(records(), all);
    // A second link keeps the record; removing the last one drops it.
    fs::hard_link(m.p("a"), m.p("a2")).unwrap();
    fs::remove_file(m.p("a")).unwrap();
    assert!(records().contains(&inos[0]));
    fs::remove_file(m.p("a2")).unwrap();
    assert!(!records().contains(&inos[0]));
    // Renaming c over b drops b's record and keeps c's (the file lives on as b).
    fs::rename(m.p("c"), m.p("b")).unwrap();
    assert_eq!(records(), {
        let mut v = vec![inos[2].clone(), inos[3].clone()];
        v.sort();
        v
    });
    // Deleted outside the mount: gc finds it.
    fs::remove_file(b.path().join("d")).unwrap();
    let out = sh(&format!("{BIN} gc --min-age 0 {}", b.path().display()));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(records(), vec![inos[2].clone()]);
    // The surviving map still works.
    assert_eq!(seek_map(&m.p("b")), vec![(MIB, MIB + 64 * 1024)]);
}

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

/// Regression: a daemon started with a low open-file limit (a shell's 1024 or 20000) ran
/// out of fds on `ls -l` of a big directory (one O_PATH fd per inode the kernel holds):
/// stat failed with EMFILE, and readdirplus sent entries with made-up attributes (mode 0)
/// for the names whose lookup failed. As root the daemon now raises its limit to
/// fs.nr_open; where it cannot, readdirplus never invents attributes and the log says why.
#[test]
fn ls_l_of_a_directory_bigger_than_the_fd_limit_never_shows_made_up_attributes() {
    if !fuse_available() || !have("prlimit") {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let big = b.path().join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..3000 {
        let p = big.join(format!("f{i}"));
        File::create(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    }
    let list = |m: &Mount| {
        let out = sh_status(&format!("ls -l {}", m.p("big").display()));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let modes: Vec<String> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect();
        (out, modes)
    };
    // Root raises its own limit where it holds CAP_SYS_RESOURCE (not in every sandbox,
    // so both outcomes are checked): all entries right, or lookups fail and the
    // attributes are never made up.
    let mut m = Mount::new_under(&["prlimit", "--nofile=1024:1024", "--"], b.path(), &[]);
    let (out, modes) = list(&m);
    // `-?????????` is how ls shows an entry it could not stat (an error, not a lie).
    let bad: Vec<&String> = modes
        .iter()
        .filter(|x| *x != "-rw-r-----" && *x != "-?????????")
        .collect();
    assert!(bad.is_empty(), "made-up attributes: {bad:?}");
    let log = m.stop();
    if out.status.success() {
        assert_eq!(modes.len(), 3000);
    } else {
        assert!(log.contains("out of file descriptors"), "{log}");
    }
}

#[test]
fn many_files_written_once_do_not_hold_two_fds_each() {
    // Root in a container without CAP_SYS_RESOURCE cannot raise its fd limit: the daemon
    // is started so here too (setpriv drops the capability, prlimit sets 1024). 700 files
    // created, written and closed stay cached by the kernel: one O_PATH fd each is 700;
    // keeping each file's read-write fd as well made it 1400 and creates failed with
    // EMFILE near the 500th file. Idle fds past an eighth of the limit are closed and
    // opened again on the next use.
    if !fuse_available() || !have("prlimit") || !have("setpriv") {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mut m = Mount::new_under(
        &[
            "setpriv",
            "--bounding-set",
            "-sys_resource",
            "--",
            "prlimit",
            "--nofile=1024:1024",
            "--",
        ],
        b.path(),
        &[],
    );
    fs::create_dir(m.p("d")).unwrap();
    let body = |i: usize| format!("file {i} ").repeat(100 + i % 50);
    for i in 0..700 {
        fs::write(m.p(&format!("d/f{i}")), body(i)).unwrap_or_else(|e| panic!("create f{i}: {e}"));
    }
    for i in 0..700 {
        let p = m.p(&format!("d/f{i}"));
        assert_eq!(fs::read_to_string(&p).unwrap(), body(i), "f{i}");
        assert_eq!(fs::metadata(&p).unwrap().len(), body(i).len() as u64);
    }
    // A parked file takes writes and truncation again, also without an open (truncate(2)).
    fs::OpenOptions::new()
        .append(true)
        .open(m.p("d/f3"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    sh(&format!("truncate -s 10 {}", m.p("d/f4").display()));
    let stats =
        String::from_utf8_lossy(&sh(&format!("{BIN} stats --json {}", m.path().display())).stdout)
            .to_string();
    let log = m.stop();
    assert!(!log.contains("out of file descriptors"), "{log}");
    assert_eq!(
        fs::read_to_string(b.path().join("d/f3")).unwrap(),
        body(3) + "+"
    );
    assert_eq!(
        fs::read(b.path().join("d/f4")).unwrap(),
        &body(4).as_bytes()[..10]
    );
    let parked: u64 = stats
        .split("\"data_fds_parked\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("data_fds_parked in stats");
    assert!(parked >= 500, "parked {parked}: {stats}");
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

// ---------------------------------------------------------------------------------------
// Command line

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

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
    let out = run(&["umount", &mnt.path().display().to_string()]);
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

// ---------------------------------------------------------------------------------------
// Call budgets, crashes, concurrency

fn daemon_pid(m: &Mount) -> u32 {
    m.child.as_ref().unwrap().id()
}

/// Counts of the daemon's syscalls from `strace -c` output.
fn strace_counts(path: &Path) -> std::collections::HashMap<String, u64> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut out = std::collections::HashMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if f.len() >= 5 && f[0].parse::<f64>().is_ok() {
            let name = f[f.len() - 1].to_string();
            if let Ok(calls) = f[3].parse::<u64>() {
                out.insert(name, calls);
            }
        }
    }
    out
}

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

#[test]
fn kill_9_keeps_fsynced_bytes_and_the_mount_point_is_reclaimed() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let mut m = Mount::new(b.path(), &["--dirty-age", "1h"]);
    // SPARSEFS_CRASH_ROUNDS raises the count for the long suite (scripts/long-suite.sh).
    let rounds: u64 = std::env::var("SPARSEFS_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let synced = random_bytes(2 * 1000 * 1000 + 333, 100 + round);
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(m.p("synced"))
            .unwrap();
        f.write_all(&synced).unwrap();
        f.sync_all().unwrap();
        let pending = random_bytes(3 * MIB as usize, 200 + round);
        let mut g = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(m.p("pending"))
            .unwrap();
        g.write_all(&pending).unwrap();
        let mut c = m.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        drop(f);
        drop(g);
        assert_eq!(
            fs::read(b.path().join("synced")).unwrap(),
            synced,
            "round {round}: fsynced bytes intact"
        );
        let p = fs::read(b.path().join("pending")).unwrap();
        for (i, &x) in p.iter().enumerate() {
            assert!(
                x == 0 || x == pending[i],
                "round {round}: byte {i} was never written"
            );
        }
        // The dead mount point is reclaimed by the next mount.
        let dir = m.dir.path().to_path_buf();
        let child = Command::new(BIN)
            .arg("mount")
            .arg(b.path())
            .arg(&dir)
            .args(["-f", "--dirty-age", "1h"])
            .stderr(File::create(&m.log).unwrap())
            .spawn()
            .unwrap();
        m.child = Some(child);
        let log = m.log.clone();
        let t = Instant::now();
        while fs::metadata(dir.join("synced")).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "remount: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::park_timeout(Duration::from_millis(20));
        }
        assert_eq!(fs::read(m.p("synced")).unwrap(), synced);
    }
}

#[test]
fn concurrent_writers_readers_and_seekers_match_a_serial_model() {
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &["--sparse-block", "4K", "--write-size", "64K"]);
    let path = m.p("shared");
    let chunk = 300_001usize; // unaligned on purpose
    let writers = 4;
    let per = 12;
    File::create(&path).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::scope(|s| {
        for w in 0..writers {
            let path = path.clone();
            s.spawn(move || {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                for k in 0..per {
                    let idx = k * writers + w;
                    // every third chunk is zeros: becomes holes
                    let data = if idx % 3 == 0 {
                        vec![0u8; chunk]
                    } else {
                        random_bytes(chunk, idx as u64 + 1)
                    };
                    f.write_all_at(&data, (idx * chunk) as u64).unwrap();
                }
            });
        }
        for _ in 0..2 {
            let (path, stop) = (path.clone(), stop.clone());
            s.spawn(move || {
                let mut buf = vec![0u8; 200_000];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let f = File::open(&path).unwrap();
                    let _ = f.read_at(&mut buf, rand_u64() % (writers * per * chunk) as u64);
                    let _ = lseek(&f, (rand_u64() % 4_000_000) as i64, libc::SEEK_DATA);
                    let _ = lseek(&f, (rand_u64() % 4_000_000) as i64, libc::SEEK_HOLE);
                }
            });
        }
        let (p2, stop2) = (m.p("trunc"), stop.clone());
        s.spawn(move || {
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .open(&p2)
                .unwrap();
            let mut n = 0u64;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) && n < 2000 {
                f.write_all_at(&random_bytes(10_000, n), n * 777).unwrap();
                f.set_len(n * 500).unwrap();
                n += 1;
            }
        });
        // writers finish on their own; then stop the others
        let t = Instant::now();
        while Instant::now().duration_since(t) < Duration::from_secs(60) {
            let done =
                fs::metadata(&path).map(|m| m.len()).unwrap_or(0) >= (writers * per * chunk) as u64;
            if done {
                break;
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let mut model = vec![0u8; writers * per * chunk];
    for idx in 0..writers * per {
        if idx % 3 != 0 {
            model[idx * chunk..(idx + 1) * chunk]
                .copy_from_slice(&random_bytes(chunk, idx as u64 + 1));
        }
    }
    assert!(
        fs::read(&path).unwrap() == model,
        "contents match the serial model"
    );
    let map = seek_map(&path);
    let mut pos = 0u64;
    for &(d, h) in map
        .iter()
        .chain(std::iter::once(&(model.len() as u64, model.len() as u64)))
    {
        assert!(
            model[pos as usize..d as usize].iter().all(|&x| x == 0),
            "hole [{pos},{d}) holds data"
        );
        pos = h;
    }
    drop(m);
    assert!(
        fs::read(b.path().join("shared")).unwrap() == model,
        "backend matches after unmount"
    );
}

// ---------------------------------------------------------------------------------------
// Extent maps that outlive the mount

fn image_through_mount(m: &Mount, name: &str, size: u64, extents: &[(u64, u64)]) -> PathBuf {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("src.img");
    make_image(&src, size, extents);
    sh(&format!(
        "cp --sparse=never {} {}",
        src.display(),
        m.p(name).display()
    ));
    let keep = std::env::temp_dir().join(format!(
        "sparsefs-ref-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    fs::rename(&src, &keep).unwrap_or_else(|_| {
        fs::copy(&src, &keep).unwrap();
    });
    keep
}

#[test]
fn maps_persist_across_remounts_on_backends_without_seek_data() {
    if !fuse_available() {
        return;
    }
    for kind in backings() {
        for store in ["xattr", "sidecar"] {
            let Some(b) = Backing::new(&kind) else {
                continue;
            };
            let size = 64 * MIB;
            let extents = vm_extents(size);
            let ideal: u64 = extents.iter().map(|e| e.1).sum();
            let m = Mount::new(b.path(), &["--map-store", store]);
            let reference = image_through_mount(&m, "vm.img", size, &extents);
            let before = seek_map(&m.p("vm.img"));
            drop(m);
            let m = Mount::new(b.path(), &["--map-store", store]);
            let after = seek_map(&m.p("vm.img"));
            assert_eq!(
                after, before,
                "{kind}/{store}: the map survives the remount"
            );
            check_map(&after, &extents, 32768, &reference);
            let st = fs::metadata(m.p("vm.img")).unwrap();
            assert!(
                st.blocks() * 512 < size / 4,
                "{kind}/{store}: st_blocks {} after remount",
                st.blocks()
            );
            sh(&format!("cat {} > /dev/null", m.p("vm.img").display()));
            let stats = m.stats();
            let read = json_u64(&stats, "backend.read.bytes");
            assert!(
                read <= ideal + 2 * 32768 * extents.len() as u64,
                "{kind}/{store}: read {read} bytes from the backend for {ideal} of data"
            );
            let out = tempfile::tempdir().unwrap();
            sh(&format!(
                "cp --sparse=auto {} {}/c.img",
                m.p("vm.img").display(),
                out.path().display()
            ));
            assert!(files_equal(&reference, &out.path().join("c.img")));
            assert!(
                allocated(&out.path().join("c.img")) <= ideal + 2 * 32768 * extents.len() as u64
            );
            // our metadata is invisible through the mount
            let ls =
                String::from_utf8(sh(&format!("ls -a {}", m.path().display())).stdout).unwrap();
            assert!(!ls.contains(".sparsefs-maps"), "{ls}");
            let xa = String::from_utf8(
                sh(&format!(
                    "getfattr -d -m - {} 2>&1",
                    m.p("vm.img").display()
                ))
                .stdout,
            )
            .unwrap();
            assert!(!xa.contains("sparsefs"), "{xa}");
            let set = sh_status(&format!(
                "setfattr -n user.sparsefs.extents -v x {}",
                m.p("vm.img").display()
            ));
            assert!(
                !set.status.success(),
                "our xattr cannot be set through the mount"
            );
            if store == "sidecar" {
                assert!(b.path().join(".sparsefs-maps").is_dir());
            }
            drop(m);
            let _ = fs::remove_file(&reference);
        }
    }
}

#[test]
fn a_map_is_never_used_for_a_file_changed_outside_the_mount() {
    if !fuse_available() {
        return;
    }
    for kind in backings() {
        let Some(b) = Backing::new(&kind) else {
            continue;
        };
        let size = 16 * MIB;
        let m = Mount::new(b.path(), &[]);
        let reference = image_through_mount(&m, "f.img", size, &[(0, 65536), (8 * MIB, 65536)]);
        drop(m);
        let raw = b.underlying().join("f.img");
        // Write into a hole directly on the backend, then put the old mtime back.
        let mtime = fs::metadata(&raw).unwrap().mtime();
        let mtime_ns = fs::metadata(&raw).unwrap().mtime_nsec();
        sh(&format!(
            "printf 'EXTERNAL' | dd of={} bs=1 seek={} conv=notrunc status=none",
            raw.display(),
            4 * MIB
        ));
        sh(&format!(
            "touch -m -d @{mtime}.{mtime_ns:09} {}",
            raw.display()
        ));
        // (GlusterFS keeps mtimes at µs: there the restored mtime differs anyway.)
        if kind != "gluster" {
            let ns = fs::metadata(&raw).unwrap().mtime_nsec();
            assert_eq!(ns, mtime_ns, "{kind}: mtime restored");
        }
        let m = Mount::new(b.path(), &[]);
        let mut buf = [0u8; 8];
        File::open(m.p("f.img"))
            .unwrap()
            .read_exact_at(&mut buf, 4 * MIB)
            .unwrap();
        assert_eq!(
            &buf, b"EXTERNAL",
            "{kind}: the stale map was not used for reads"
        );
        let map = seek_map(&m.p("f.img"));
        assert!(
            covered(&map, 4 * MIB, 4 * MIB + 8),
            "{kind}: no hole over the external data: {map:?}"
        );
        let _ = fs::remove_file(&reference);
    }
}

#[test]
fn corrupt_or_foreign_maps_are_refused_with_a_warning() {
    if !fuse_available() || !have("setfattr") {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &[]);
    let reference = image_through_mount(&m, "f.img", 8 * MIB, &[(MIB, 65536)]);
    drop(m);
    let raw = b.path().join("f.img");
    let good = sh(&format!(
        "getfattr --only-values -n user.sparsefs.extents {}",
        raw.display()
    ))
    .stdout;
    assert!(
        good.starts_with(b"SPFS"),
        "the ranges were stored in the xattr"
    );
    let ino = fs::metadata(&raw).unwrap().ino();
    let rec_path = b.path().join(".sparsefs-maps").join(ino.to_string());
    let rec = fs::read(&rec_path).expect("the exact stamp is in the sidecar record");
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", rec[..rec.len() / 2].to_vec()),
        ("flipped", {
            let mut g = rec.clone();
            let n = g.len();
            g[n / 2] ^= 1;
            g
        }),
        ("foreign version", {
            let mut g = rec.clone();
            g[4] = 9;
            g
        }),
    ];
    for (what, bytes) in variants {
        fs::write(&rec_path, &bytes).unwrap();
        let mut m = Mount::new(b.path(), &["-v"]);
        let map = seek_map(&m.p("f.img"));
        assert!(files_equal(&reference, &m.p("f.img")));
        let log = m.stop();
        // refused: all data, or learned again from a backend whose SEEK_DATA is trusted
        assert!(covered(&map, MIB, MIB + 65536), "{what}: {map:?}");
        assert!(
            log.contains("persisted extent map refused"),
            "{what}: warning logged: {log}"
        );
    }
    // A damaged xattr (setting it also moves the file's ctime) is never trusted either.
    fs::write(&rec_path, &rec).unwrap();
    sh(&format!(
        "setfattr -n user.sparsefs.extents -v 0x00 {}",
        raw.display()
    ));
    let m = Mount::new(b.path(), &[]);
    assert!(covered(&seek_map(&m.p("f.img")), MIB, MIB + 65536));
    assert!(files_equal(&reference, &m.p("f.img")));
    drop(m);
    let _ = fs::remove_file(&reference);
}

#[test]
fn two_mounts_of_one_backend_see_each_others_holes_close_to_open() {
    if !fuse_available() {
        return;
    }
    for kind in backings() {
        let Some(b) = Backing::new(&kind) else {
            continue;
        };
        let a = Mount::new(b.path(), &[]);
        let nb = Mount::new(b.path(), &[]);
        let size = 32 * MIB;
        let ref1 = image_through_mount(&a, "shared.img", size, &[(MIB, MIB), (20 * MIB, 65536)]);
        // B opens after A closed: A's holes, and reads move only data.
        assert!(
            files_equal(&ref1, &nb.p("shared.img")),
            "{kind}: B reads A's data"
        );
        let map_b = seek_map(&nb.p("shared.img"));
        assert_eq!(
            map_b,
            vec![(MIB, 2 * MIB), (20 * MIB, 20 * MIB + 65536)],
            "{kind}: B sees A's holes"
        );
        // B rewrites with another layout; A's next open sees it.
        let ref2 = image_through_mount(&nb, "shared.img", size, &[(5 * MIB, MIB)]);
        wait_for("attribute cache", Duration::from_secs(3), || {
            fs::metadata(a.p("shared.img")).is_ok()
        });
        std::thread::park_timeout(Duration::from_millis(1100)); // kernel attr/entry TTL
        assert!(
            files_equal(&ref2, &a.p("shared.img")),
            "{kind}: A reads B's rewrite"
        );
        assert_eq!(
            seek_map(&a.p("shared.img")),
            vec![(5 * MIB, 6 * MIB)],
            "{kind}: A sees B's holes"
        );
        let _ = (fs::remove_file(&ref1), fs::remove_file(&ref2));
    }
}

#[test]
fn scan_makes_an_existing_archive_seekable_and_map_prints_its_runs() {
    if !fuse_available() {
        return;
    }
    for kind in backings() {
        let Some(b) = Backing::new(&kind) else {
            continue;
        };
        // A dense file with 3 data extents, written directly on the backend.
        let size = 16 * MIB;
        let mut dense = vec![0u8; size as usize];
        for (i, off) in [0u64, 5 * MIB, 12 * MIB].iter().enumerate() {
            dense[*off as usize..(*off + 65536) as usize]
                .copy_from_slice(&random_bytes(65536, i as u64 + 40));
        }
        fs::write(b.path().join("old.img"), &dense).unwrap();
        let out = sh(&format!("{BIN} scan --dry-run {}", b.path().display()));
        assert!(String::from_utf8_lossy(&out.stdout).contains("(dry run)"));
        let out = sh(&format!("{BIN} scan --dig {}", b.path().display()));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("scanned 1 files"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let m = Mount::new(b.path(), &[]);
        let want = vec![
            (0, 65536),
            (5 * MIB, 5 * MIB + 65536),
            (12 * MIB, 12 * MIB + 65536),
        ];
        assert_eq!(seek_map(&m.p("old.img")), want, "{kind}: scanned map used");
        assert_eq!(fs::read(m.p("old.img")).unwrap(), dense, "{kind}: contents");
        let stats = m.stats();
        assert!(
            json_u64(&stats, "backend.read.bytes") <= 3 * 65536,
            "{kind}: only data read: {stats}"
        );
        let rec = String::from_utf8(
            sh(&format!("{BIN} map --records {}", m.p("old.img").display())).stdout,
        )
        .unwrap();
        assert_eq!(
            rec,
            format!(
                "DATA 65536\nHOLE {}\nDATA 65536\nHOLE {}\nDATA 65536\nHOLE {}\n",
                5 * MIB - 65536,
                7 * MIB - 65536,
                4 * MIB - 65536
            )
        );
        let js =
            String::from_utf8(sh(&format!("{BIN} map --json {}", m.p("old.img").display())).stdout)
                .unwrap();
        assert!(
            js.contains("\"data_bytes\":196608") && js.contains("\"data_extents\":3"),
            "{js}"
        );
        // Mixing paths on the mount and on the backing directory is refused clearly.
        let out = sh_status(&format!(
            "{BIN} scan {} {}",
            m.path().display(),
            b.path().display()
        ));
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("backing directory"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A shared mapping of a whole file, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(f: &File, len: usize, prot: i32) -> std::io::Result<Mapping> {
        // SAFETY: a fresh mapping of a valid fd; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is valid for len bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    fn write(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        // SAFETY: in bounds of a writable mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (self.ptr as *mut u8).add(off), data.len())
        }
    }

    /// Pages of the mapping resident in the page cache (mincore).
    fn resident_pages(&self) -> usize {
        let page = 4096;
        let mut v = vec![0u8; self.len.div_ceil(page)];
        // SAFETY: v holds one byte per page of the mapping.
        assert_eq!(
            unsafe { libc::mincore(self.ptr, self.len, v.as_mut_ptr()) },
            0
        );
        v.iter().filter(|b| *b & 1 != 0).count()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Writes `data` to a new file through a write-only open (as cp, dd and tar -x do) and
/// returns how many of its pages the page cache then holds, seen through a mapping made
/// before the write (a later open would drop the cache: FUSE opens invalidate it).
fn pages_cached_by_a_write_only_stream(path: &Path, data: &[u8]) -> usize {
    File::create(path).unwrap();
    let r = File::open(path).unwrap();
    let map = Mapping::new(&r, data.len(), libc::PROT_READ).unwrap();
    let mut w = OpenOptions::new().write(true).open(path).unwrap();
    w.write_all(data).unwrap();
    drop(w);
    map.resident_pages()
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

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
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
    let settle = || {
        wait_for(
            "the directory unchanged for 2 s",
            Duration::from_secs(10),
            || {
                let ct = fs::metadata(&d).unwrap().ctime();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                now >= ct + 2
            },
        )
    };
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
