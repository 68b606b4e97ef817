//! The test harness: backings (dir, bindfs, GlusterFS) and their matrix, a mount of the real binary that unmounts on drop, tools, and helpers to build images and read maps.

#![allow(dead_code)]

pub(crate) use crate::images::*;
pub(crate) use std::ffi::CString;
pub(crate) use std::fs::{self, File, OpenOptions};
pub(crate) use std::io::Write;
pub(crate) use std::os::fd::AsRawFd;
pub(crate) use std::os::unix::ffi::OsStrExt;
pub(crate) use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::process::{Child, Command, Output, Stdio};
pub(crate) use std::time::{Duration, Instant};
pub(crate) use tempfile::TempDir;

pub(crate) const MIB: u64 = 1 << 20;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sparsefs");

pub(crate) fn fuse_required() -> bool {
    std::env::var("SPARSEFS_REQUIRE_FUSE").is_ok_and(|v| v == "1")
}

/// Returns false (test skipped) when FUSE is unavailable and not required.
pub(crate) fn fuse_available() -> bool {
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

pub(crate) fn unsafe_free_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

pub(crate) fn is_mountpoint(p: &Path) -> bool {
    // Never canonicalize: resolving a hung mount's path would hang the test too.
    let p = std::path::absolute(p).unwrap_or(p.to_path_buf());
    sparsefs::mountinfo::find(&p).is_some()
}

pub(crate) fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
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

/// Waits until `p` has been unchanged (mtime and ctime) for 2 s: what sparsefs trusts
/// across opens only once settled (kept listings, kept page caches).
pub(crate) fn wait_settled(p: &Path) {
    let st = fs::metadata(p).unwrap();
    let changed = st.ctime().max(st.mtime());
    wait_for("2 s after the last change", Duration::from_secs(10), || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        now >= changed + 2
    });
}

pub(crate) fn sh(cmd: &str) -> Output {
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

pub(crate) fn sh_status(cmd: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("bash")
}

pub(crate) fn have(tool: &str) -> bool {
    let ok = sh_status(&format!("command -v {tool}")).status.success();
    if !ok {
        assert!(!fuse_required(), "{tool} is required in CI");
        eprintln!("skipped: {tool} missing");
    }
    ok
}

/// A backing directory of some kind.
pub(crate) enum Backing {
    Dir(TempDir),
    Bindfs { _src: TempDir, mnt: TempDir },
    Gluster(PathBuf),
}

impl Backing {
    pub(crate) fn new(kind: &str) -> Option<Backing> {
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
    pub(crate) fn path(&self) -> &Path {
        match self {
            Backing::Dir(d) => d.path(),
            Backing::Bindfs { mnt, .. } => mnt.path(),
            Backing::Gluster(p) => p,
        }
    }

    /// Where the files really are (bindfs's source directory), for changes made "outside".
    pub(crate) fn underlying(&self) -> &Path {
        match self {
            Backing::Bindfs { _src, .. } => _src.path(),
            _ => self.path(),
        }
    }

    /// The kind's name, as in `SPARSEFS_TEST_BACKINGS`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Backing::Dir(_) => "dir",
            Backing::Bindfs { .. } => "bindfs",
            Backing::Gluster(_) => "gluster",
        }
    }

    pub(crate) fn punches(&self) -> bool {
        !matches!(self, Backing::Bindfs { .. })
    }

    /// A file unlinked while open can be opened again through its fd (GlusterFS answers
    /// ESTALE, so sparsefs leaves kernel passthrough off there).
    pub(crate) fn reopens_unlinked(&self) -> bool {
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

pub(crate) fn backings() -> Vec<String> {
    std::env::var("SPARSEFS_TEST_BACKINGS")
        .unwrap_or_else(|_| "dir,bindfs".into())
        .split(',')
        .map(str::to_string)
        .collect()
}

/// A fresh backing of every kind under test that is available here (`SPARSEFS_TEST_BACKINGS`,
/// default dir and bindfs): the one way tests run over the backing matrix.
pub(crate) fn each_backing() -> impl Iterator<Item = Backing> {
    backings().into_iter().filter_map(|k| Backing::new(&k))
}

/// Runs `f` on a fresh backing of every kind under test (see [`each_backing`]).
pub(crate) fn for_each_backing(f: impl Fn(&Backing)) {
    for b in each_backing() {
        f(&b);
    }
}

/// A running `sparsefs mount -f`, unmounted (and the daemon reaped) on drop.
pub(crate) struct Mount {
    pub(crate) dir: TempDir,
    pub(crate) child: Option<Child>,
    pub(crate) log: PathBuf,
}

impl Mount {
    pub(crate) fn new(backing: &Path, args: &[&str]) -> Mount {
        Mount::new_under(&[], backing, args)
    }

    /// Mounts with the daemon started under a wrapper command (e.g. `prlimit ...`).
    pub(crate) fn new_under(wrapper: &[&str], backing: &Path, args: &[&str]) -> Mount {
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

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// What the daemon logged so far.
    pub(crate) fn log_so_far(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn stats(&self) -> String {
        let out = sh(&format!("{BIN} stats --json {}", self.path().display()));
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) fn stop(&mut self) -> String {
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

pub(crate) fn json_u64(json: &str, path: &str) -> u64 {
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

pub(crate) fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static S: AtomicU64 = AtomicU64::new(0x9E3779B97F4A7C15);
    let mut x = S.fetch_add(0x9E3779B97F4A7C15, Ordering::Relaxed) ^ std::process::id() as u64;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A mount with the test hooks on (see `WEDGE_XATTR`), whose daemon calls its exit flush
/// wedged after `wedge_secs`.
pub(crate) fn wedgeable_mount(backing: &Path, wedge_secs: &str) -> Mount {
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
pub(crate) fn wedge(f: &File) {
    let name = CString::new("user.sparsefs.debug.wedge").unwrap();
    // SAFETY: valid fd, name and value.
    let r = unsafe { libc::fsetxattr(f.as_raw_fd(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    assert_eq!(r, 0, "wedge hook: {}", std::io::Error::last_os_error());
}

pub(crate) trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

pub(crate) fn local_epoch(t: &str) -> i64 {
    let out = sh(&format!("date -d '{t}' +%s"));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

pub(crate) fn statvfs(p: &Path) -> (u64, u64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe_zeroed();
    // SAFETY: valid C string; s valid for writes.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    (s.f_blocks, s.f_bsize)
}

pub(crate) fn unsafe_zeroed<T: Copy>() -> T {
    // SAFETY: only used for plain C structs where all-zero is valid.
    unsafe { std::mem::zeroed() }
}

pub(crate) fn renameat2(a: &Path, b: &Path, flags: u32) -> Result<(), i32> {
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

pub(crate) fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

pub(crate) fn daemon_pid(m: &Mount) -> u32 {
    m.child.as_ref().unwrap().id()
}

/// Counts of the daemon's syscalls from `strace -c` output.
pub(crate) fn strace_counts(path: &Path) -> std::collections::HashMap<String, u64> {
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

pub(crate) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}
