//! The mount never hangs: many threads in several processes mix every operation over a
//! few shared files, through two mounts of one backing, while a watchdog fails the test
//! after 10 s without progress of any thread, printing the daemons' thread stacks and the
//! stuck callers' kernel stacks before ending the mounts through fusectl.
//!
//! Shared files (`shared/s0..s2`) get everything: stat with `AT_STATX_FORCE_SYNC`,
//! open/close in every mode (read-only opens of dense files become kernel passthrough),
//! `O_DIRECT`, reads, writes of data and zeros, SEEK_DATA/SEEK_HOLE, truncate by fd and
//! by path, punch, zero-range, allocate, fsync, rename, link, unlink while open, readdir,
//! xattrs, copy_file_range, mmap writes, chmod and utimes. Their contents are not checked
//! (many writers); errors such as ENOENT are expected there, but `ENOTCONN` (the daemon
//! died, for example on a lock-order abort) and `EIO` are not. Each thread also owns a file
//! only it writes, checked against a byte model after every operation that reads it and
//! at the end through the other mount (close-to-open).
//!
//! Worker processes are this test binary run again on [`torture_worker_process`] (an
//! ignored test that does nothing unless `SPARSEFS_TORTURE_WORKER` is set).

use crate::harness::*;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Seconds without progress of one thread before the run counts as hung.
const STALL: Duration = Duration::from_secs(10);
/// Largest offset written in a shared or own file.
const SPAN: u64 = 6 << 20;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// 1 to `max` random bytes.
    fn some(&mut self, max: u64) -> Vec<u8> {
        let n = 1 + self.below(max) as usize;
        self.bytes(n)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

// ---------------------------------------------------------------------------------------
// Watchdog

/// Minor device number of the FUSE mount at `mnt` (its fusectl connection).
fn fuse_minor(mnt: &Path) -> Option<String> {
    // Never canonicalize: resolving a hung mount's path would hang the watchdog too.
    let mnt = std::path::absolute(mnt).ok()?;
    sparsefs::mountinfo::find(&mnt).map(|m| m.dev.1.to_string())
}

/// Ends a hung mount for good: its connection is aborted, its daemon killed.
fn end_hung(m: &Mount) {
    abort_connection(m.path());
    let _ = sh_status(&format!("kill -9 {}", daemon_pid(m)));
}

/// Ends a wedged FUSE mount: every pending request fails with ENOTCONN.
pub fn abort_connection(mnt: &Path) {
    let _ = sh_status(
        "mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections",
    );
    if let Some(minor) = fuse_minor(mnt) {
        let _ = fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
    }
}

/// The daemons' user stacks (gdb) and the kernel stacks of every thread of `callers`.
pub fn hang_report(daemons: &[u32], callers: &[u32]) -> String {
    let mut out = String::new();
    for pid in daemons {
        let bt = Command::new("timeout")
            .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-ex"])
            .arg("thread apply all bt")
            .output();
        out += &format!("==== daemon {pid}: gdb thread apply all bt\n");
        match bt {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout);
                // Only the frames that say something: thread headers and our own code,
                // locks and syscalls.
                for l in text.lines() {
                    if l.starts_with("Thread ")
                        || l.contains("sparsefs::")
                        || l.contains("parking_lot")
                        || l.contains("syscall")
                        || l.contains("futex")
                    {
                        out += l;
                        out.push('\n');
                    }
                }
            }
            Err(e) => out += &format!("gdb: {e}\n"),
        }
    }
    for pid in daemons.iter().chain(callers) {
        out += &format!("==== kernel stacks of {pid}\n");
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let stack = fs::read_to_string(t.path().join("stack")).unwrap_or_default();
                let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                if stack.contains("fuse") {
                    out += &format!(
                        "-- task {} ({})\n{stack}",
                        t.file_name().to_string_lossy(),
                        comm.trim()
                    );
                }
            }
        }
    }
    out
}

/// Watches progress counters; returns the index of a counter that did not move for
/// [`STALL`] while `running` says work is going on, or `None` once `done` says all ended.
fn watch(mut counters: impl FnMut() -> Vec<u64>, mut done: impl FnMut() -> bool) -> Option<usize> {
    let mut last: Vec<(u64, Instant)> = Vec::new();
    loop {
        if done() {
            return None;
        }
        let now = Instant::now();
        let c = counters();
        if last.len() != c.len() {
            last = c.iter().map(|&v| (v, now)).collect();
        }
        for (i, v) in c.iter().enumerate() {
            if *v == u64::MAX {
                continue; // finished
            }
            if *v != last[i].0 {
                last[i] = (*v, now);
            } else if now.duration_since(last[i].1) > STALL {
                return Some(i);
            }
        }
        std::thread::park_timeout(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------
// The regression test of the first hang found

#[test]
fn stat_racing_open_of_one_file_never_hangs() {
    // Two threads looping statx(AT_STATX_FORCE_SYNC) and one looping open+close of one
    // file froze the whole mount within seconds: getattr held the engine lock and waited
    // for the stamp lock, open held the stamp lock and waited for the engine.
    if !fuse_available() {
        return;
    }
    let b = tempfile::tempdir().unwrap();
    let m = Mount::new(b.path(), &[]);
    let path = m.p("f");
    fs::write(&path, b"hello").unwrap();
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let finished = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut threads = Vec::new();
    for i in 0..3 {
        let (c, fin, path) = (counters.clone(), finished.clone(), path.clone());
        threads.push(std::thread::spawn(move || {
            let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
            while Instant::now() < deadline {
                if i < 2 {
                    let mut sx = std::mem::MaybeUninit::<libc::statx>::zeroed();
                    // SAFETY: valid path and output buffer.
                    let r = unsafe {
                        libc::statx(
                            libc::AT_FDCWD,
                            cpath.as_ptr(),
                            libc::AT_STATX_FORCE_SYNC,
                            libc::STATX_ALL,
                            sx.as_mut_ptr(),
                        )
                    };
                    assert_eq!(r, 0, "statx: {}", std::io::Error::last_os_error());
                } else {
                    drop(File::open(&path).unwrap());
                }
                c[i].fetch_add(1, Relaxed);
            }
            c[i].store(u64::MAX, Relaxed);
            fin.fetch_add(1, Relaxed);
        }));
    }
    let stuck = watch(
        || counters.iter().map(|c| c.load(Relaxed)).collect(),
        || finished.load(Relaxed) == 3,
    );
    if let Some(i) = stuck {
        let report = hang_report(&[daemon_pid(&m)], &[std::process::id()]);
        end_hung(&m);
        panic!("thread {i} made no progress for {STALL:?}: the mount hung\n{report}");
    }
    for t in threads {
        t.join().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The torture run

/// What a worker process is told (through `SPARSEFS_TORTURE_WORKER`).
struct WorkerCfg {
    /// The two mounts of one backing.
    mounts: [PathBuf; 2],
    /// Progress file: 16 bytes per thread (ops done, op in progress).
    progress: PathBuf,
    /// First slot of this process in the progress file.
    slot: usize,
    threads: usize,
    secs: u64,
    seed: u64,
    /// The backing punches (else PUNCH_HOLE may fail with EOPNOTSUPP).
    result: PathBuf,
}

impl WorkerCfg {
    fn encode(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.mounts[0].display(),
            self.mounts[1].display(),
            self.progress.display(),
            self.slot,
            self.threads,
            self.secs,
            self.seed,
            self.result.display()
        )
    }

    fn decode(s: &str) -> WorkerCfg {
        let f: Vec<&str> = s.split('\n').collect();
        WorkerCfg {
            mounts: [PathBuf::from(f[0]), PathBuf::from(f[1])],
            progress: PathBuf::from(f[2]),
            slot: f[3].parse().unwrap(),
            threads: f[4].parse().unwrap(),
            secs: f[5].parse().unwrap(),
            seed: f[6].parse().unwrap(),
            result: PathBuf::from(f[7]),
        }
    }
}

/// Operation kinds (the progress file names the one in progress).
const OPS: &[&str] = &[
    "stat-force-sync",
    "open-close",
    "read",
    "write",
    "write-zeros",
    "odirect",
    "seek",
    "ftruncate",
    "truncate-path",
    "punch",
    "zero-range",
    "allocate",
    "fsync",
    "rename",
    "link-unlink",
    "unlink-open",
    "readdir",
    "xattr",
    "copy-range",
    "mmap-write",
    "chmod-utimes",
    "passthrough-read",
    "own-write",
    "own-truncate",
    "own-punch",
    "own-check",
    "own-seek",
    "own-mmap",
    "own-unlink-open",
];

fn op_index(name: &str) -> usize {
    OPS.iter().position(|o| *o == name).expect("known op")
}

/// What one thread saw.
#[derive(Default)]
struct Tally {
    ops: BTreeMap<&'static str, u64>,
    errnos: BTreeMap<(&'static str, i32), u64>,
    fatal: Vec<String>,
}

impl Tally {
    fn ok(&mut self, op: &'static str) {
        *self.ops.entry(op).or_default() += 1;
    }
    fn err(&mut self, op: &'static str, e: &std::io::Error) {
        *self.ops.entry(op).or_default() += 1;
        let code = e.raw_os_error().unwrap_or(-1);
        *self.errnos.entry((op, code)).or_default() += 1;
        if matches!(code, libc::ENOTCONN | libc::EIO | libc::ECONNABORTED | -1) {
            self.fatal.push(format!("{op}: {e}"));
        }
    }
    fn done<T>(&mut self, op: &'static str, r: std::io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.ok(op);
                Some(v)
            }
            Err(e) => {
                self.err(op, &e);
                None
            }
        }
    }
}

fn cvt(r: i64) -> std::io::Result<i64> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// An aligned buffer for O_DIRECT (4 KiB alignment, no unsafe).
fn aligned(n: usize, fill: u8) -> (Vec<u8>, usize) {
    let v = vec![fill; n + 4096];
    let off = (4096 - v.as_ptr() as usize % 4096) % 4096;
    (v, off)
}

fn open_mode(rng: &mut Rng, path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    match rng.below(3) {
        0 => o.read(true),
        1 => o.write(true),
        _ => o.read(true).write(true),
    };
    let mut flags = 0;
    if rng.chance(10) {
        flags |= libc::O_DIRECT;
    }
    if rng.chance(5) {
        flags |= libc::O_APPEND;
    }
    if rng.chance(3) {
        o.truncate(true).write(true);
    }
    o.custom_flags(flags).open(path)
}

/// One thread's own file, with its model.
struct Own {
    path: PathBuf,
    model: Vec<u8>,
    punches: Option<bool>,
}

impl Own {
    fn check(&self, f: &File, off: u64, len: usize) -> Result<(), String> {
        let mut buf = vec![0u8; len];
        let n = read_full_at(f, &mut buf, off).map_err(|e| format!("read: {e}"))?;
        let end = (off as usize + len).min(self.model.len());
        let want = if (off as usize) < end {
            &self.model[off as usize..end]
        } else {
            &[][..]
        };
        if &buf[..n] != want {
            let first = buf[..n]
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(n.min(want.len()));
            return Err(format!(
                "{}: read of [{off}, +{len}) differs from the model at byte {} (got {} bytes, want {})",
                self.path.display(),
                off as usize + first,
                n,
                want.len()
            ));
        }
        Ok(())
    }

    /// Every hole the SEEK walk reports reads as zeros in the model (never a hole where
    /// data is), and the size is the model's.
    fn check_seek(&self, f: &File) -> Result<(), String> {
        let size = self.model.len() as u64;
        let mut pos = 0u64;
        while pos < size {
            let hole = match lseek(f, pos as i64, libc::SEEK_HOLE) {
                Ok(h) => h,
                Err(e) => return Err(format!("SEEK_HOLE at {pos}: errno {e}")),
            };
            if hole >= size {
                break;
            }
            let data = match lseek(f, hole as i64, libc::SEEK_DATA) {
                Ok(d) => d,
                Err(libc::ENXIO) => size,
                Err(e) => return Err(format!("SEEK_DATA at {hole}: errno {e}")),
            };
            if data <= hole {
                return Err(format!("SEEK_DATA({hole}) = {data}: not after the hole"));
            }
            if let Some(i) = self.model[hole as usize..data.min(size) as usize]
                .iter()
                .position(|&b| b != 0)
            {
                return Err(format!(
                    "{}: hole [{hole}, {data}) reported where byte {} holds data",
                    self.path.display(),
                    hole as usize + i
                ));
            }
            pos = data;
        }
        Ok(())
    }
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

struct Ctx<'a> {
    cfg: &'a WorkerCfg,
    rng: Rng,
    tally: Tally,
    own: Own,
    tid: usize,
    progress: File,
    slot: usize,
    count: u64,
}

impl Ctx<'_> {
    fn mark(&mut self, op: &str) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..].copy_from_slice(&(op_index(op) as u64).to_le_bytes());
        let _ = self.progress.write_all_at(&b, self.slot as u64 * 16);
    }

    fn shared(&mut self) -> PathBuf {
        let m = &self.cfg.mounts[self.rng.below(2) as usize];
        m.join("shared").join(format!("s{}", self.rng.below(3)))
    }

    fn open_shared(&mut self, rw: bool) -> std::io::Result<(File, PathBuf)> {
        let p = self.shared();
        let f = OpenOptions::new()
            .read(true)
            .write(rw)
            .create(rw)
            .open(&p)?;
        Ok((f, p))
    }

    fn step(&mut self) -> Result<(), String> {
        let mut op = OPS[self.rng.below(OPS.len() as u64) as usize];
        if let Ok(only) = std::env::var("SPARSEFS_TORTURE_OPS") {
            while !only
                .split(',')
                .any(|o| o == op || (o == "own" && op.starts_with("own-")))
            {
                op = OPS[self.rng.below(OPS.len() as u64) as usize];
            }
        }
        self.mark(op);
        let r = self.run(op);
        self.count += 1;
        self.mark(op);
        r
    }

    fn run(&mut self, op: &'static str) -> Result<(), String> {
        match op {
            "stat-force-sync" => {
                let p = cpath(&self.shared());
                let mut sx = std::mem::MaybeUninit::<libc::statx>::zeroed();
                // SAFETY: valid path and output buffer.
                let r = cvt(unsafe {
                    libc::statx(
                        libc::AT_FDCWD,
                        p.as_ptr(),
                        libc::AT_STATX_FORCE_SYNC,
                        libc::STATX_ALL,
                        sx.as_mut_ptr(),
                    )
                } as i64);
                self.tally.done(op, r);
            }
            "open-close" => {
                let p = self.shared();
                let r = open_mode(&mut self.rng, &p);
                self.tally.done(op, r);
            }
            "read" | "passthrough-read" => {
                let p = self.shared();
                let r = File::open(&p).and_then(|mut f| {
                    if op == "passthrough-read" {
                        let mut v = Vec::new();
                        f.read_to_end(&mut v).map(|_| ())
                    } else {
                        let mut b = vec![0u8; 1 + self.rng.below(256 << 10) as usize];
                        f.read_at(&mut b, self.rng.below(SPAN)).map(|_| ())
                    }
                });
                self.tally.done(op, r);
            }
            "write" | "write-zeros" => {
                let n = 1 + self.rng.below(512 << 10) as usize;
                let data = if op == "write" {
                    self.rng.bytes(n)
                } else {
                    vec![0u8; n]
                };
                let off = self.rng.below(SPAN);
                let r = self
                    .open_shared(true)
                    .and_then(|(f, _)| f.write_all_at(&data, off));
                self.tally.done(op, r);
            }
            "odirect" => {
                let p = self.shared();
                let write = self.rng.chance(50);
                let n = 4096 * (1 + self.rng.below(32) as usize);
                let off = 4096 * self.rng.below(SPAN / 4096);
                let (mut buf, a) = aligned(n, self.rng.below(256) as u8);
                let r = OpenOptions::new()
                    .read(true)
                    .write(write)
                    .custom_flags(libc::O_DIRECT)
                    .open(&p)
                    .and_then(|f| {
                        if write {
                            f.write_all_at(&buf[a..a + n], off)
                        } else {
                            f.read_at(&mut buf[a..a + n], off).map(|_| ())
                        }
                    });
                self.tally.done(op, r);
            }
            "seek" => {
                let r = self.open_shared(false).map(|(f, _)| {
                    let off = self.rng.below(SPAN) as i64;
                    let _ = lseek(&f, off, libc::SEEK_DATA);
                    let _ = lseek(&f, off, libc::SEEK_HOLE);
                });
                self.tally.done(op, r);
            }
            "ftruncate" => {
                let len = self.rng.below(SPAN);
                let r = self.open_shared(true).and_then(|(f, _)| f.set_len(len));
                self.tally.done(op, r);
            }
            "truncate-path" => {
                let p = cpath(&self.shared());
                let len = self.rng.below(SPAN) as i64;
                // SAFETY: valid path.
                let r = cvt(unsafe { libc::truncate(p.as_ptr(), len) } as i64);
                self.tally.done(op, r);
            }
            "punch" | "zero-range" | "allocate" => {
                let mode = match op {
                    "punch" => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    "zero-range" => libc::FALLOC_FL_ZERO_RANGE,
                    _ => libc::FALLOC_FL_KEEP_SIZE,
                };
                let (off, len) = (
                    self.rng.below(SPAN) as i64,
                    1 + self.rng.below(1 << 20) as i64,
                );
                let r = self.open_shared(true).and_then(|(f, _)| {
                    // SAFETY: a valid fd.
                    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) } as i64)
                });
                self.tally.done(op, r);
            }
            "fsync" => {
                let data = self.rng.chance(50);
                let r = self
                    .open_shared(true)
                    .and_then(|(f, _)| if data { f.sync_data() } else { f.sync_all() });
                self.tally.done(op, r);
            }
            "rename" => {
                let (a, b) = (self.shared(), self.shared());
                let b = a.parent().unwrap().join(b.file_name().unwrap());
                let r = fs::rename(&a, &b);
                self.tally.done(op, r);
            }
            "link-unlink" => {
                let a = self.shared();
                let l = a.with_file_name(format!("l{}-{}", std::process::id(), self.tid));
                let r = fs::hard_link(&a, &l).and_then(|()| fs::remove_file(&l));
                self.tally.done(op, r);
            }
            "unlink-open" => {
                let data = self.rng.some(64 << 10);
                let r = self.open_shared(true).and_then(|(f, p)| {
                    fs::remove_file(&p)?;
                    f.write_all_at(&data, 4096)?;
                    // Others may hold it open and truncate it: any length comes back.
                    let mut back = vec![0u8; data.len()];
                    f.read_at(&mut back, 4096)?;
                    let _ = f.metadata()?;
                    Ok(())
                });
                self.tally.done(op, r);
            }
            "readdir" => {
                let dir = self.shared().parent().unwrap().to_path_buf();
                let r = fs::read_dir(&dir).map(|it| {
                    for e in it.flatten() {
                        let _ = e.metadata();
                    }
                });
                self.tally.done(op, r);
            }
            "xattr" => {
                let p = cpath(&self.shared());
                let name = CString::new("user.torture").unwrap();
                let val = self.rng.some(64);
                let mut buf = [0u8; 256];
                // SAFETY: valid path, name and buffers.
                let r = cvt(unsafe {
                    libc::setxattr(p.as_ptr(), name.as_ptr(), val.as_ptr().cast(), val.len(), 0)
                } as i64)
                .and_then(|_| {
                    // SAFETY: as above.
                    cvt(unsafe {
                        libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 256)
                    } as i64)
                })
                .and_then(|_| {
                    // SAFETY: as above.
                    cvt(unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), 256) } as i64)
                })
                .and_then(|_| {
                    // SAFETY: as above.
                    cvt(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) } as i64)
                });
                self.tally.done(op, r);
            }
            "copy-range" => {
                let len = 1 + self.rng.below(1 << 20) as usize;
                let (mut a, mut b) = (self.rng.below(SPAN) as i64, self.rng.below(SPAN) as i64);
                let r = self.open_shared(false).and_then(|(src, _)| {
                    let (dst, _) = self.open_shared(true)?;
                    // SAFETY: valid fds and offsets.
                    cvt(unsafe {
                        libc::copy_file_range(
                            src.as_raw_fd(),
                            &mut a,
                            dst.as_raw_fd(),
                            &mut b,
                            len,
                            0,
                        )
                    } as i64)
                });
                self.tally.done(op, r);
            }
            "mmap-write" => {
                let data = self.rng.some(16 << 10);
                let off = self.rng.below(48 << 10) as usize;
                // A file no operation truncates, renames or removes: a mapping past a
                // concurrent truncate's end would fault (SIGBUS), as on any filesystem.
                let m = &self.cfg.mounts[self.rng.below(2) as usize];
                let r = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(m.join("shared").join("m0"))
                    .and_then(|f| {
                        let mut m = Mapping::new(&f, 64 << 10, libc::PROT_READ | libc::PROT_WRITE)?;
                        m.write(off, &data);
                        drop(m);
                        f.sync_data()
                    });
                self.tally.done(op, r);
            }
            "chmod-utimes" => {
                let p = self.shared();
                let r = fs::set_permissions(&p, fs::Permissions::from_mode(0o644))
                    .and_then(|()| File::open(&p)?.set_modified(std::time::SystemTime::now()));
                self.tally.done(op, r);
            }
            own => return self.own_op(own),
        }
        Ok(())
    }

    fn own_file(&self, write: bool) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(write)
            .create(write)
            .open(&self.own.path)
    }

    fn own_op(&mut self, op: &'static str) -> Result<(), String> {
        let f = match self.own_file(true) {
            Ok(f) => f,
            Err(e) => {
                self.tally.err(op, &e);
                return Ok(());
            }
        };
        match op {
            "own-write" => {
                let n = 1 + self.rng.below(256 << 10) as usize;
                let off = self.rng.below(SPAN - n as u64) as usize;
                let data = if self.rng.chance(30) {
                    vec![0u8; n]
                } else {
                    self.rng.bytes(n)
                };
                if let Some(()) = self.tally.done(op, f.write_all_at(&data, off as u64)) {
                    if self.own.model.len() < off + n {
                        self.own.model.resize(off + n, 0);
                    }
                    self.own.model[off..off + n].copy_from_slice(&data);
                }
            }
            "own-truncate" => {
                let len = self.rng.below(SPAN) as usize;
                if let Some(()) = self.tally.done(op, f.set_len(len as u64)) {
                    self.own.model.resize(len, 0);
                }
            }
            "own-punch" => {
                let (off, len) = (
                    self.rng.below(SPAN) as usize,
                    1 + self.rng.below(1 << 20) as usize,
                );
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                // SAFETY: a valid fd.
                let r = cvt(
                    unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) } as i64,
                );
                match r {
                    Ok(_) => {
                        self.tally.ok(op);
                        let end = (off + len).min(self.own.model.len());
                        if off < end {
                            self.own.model[off..end].fill(0);
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        self.own.punches = Some(false);
                        self.tally.err(op, &e);
                    }
                    Err(e) => self.tally.err(op, &e),
                }
            }
            "own-check" => {
                let len = self.own.model.len() as u64;
                let off = self.rng.below(len.max(1));
                let n = 1 + self.rng.below(1 << 20) as usize;
                self.tally.ok(op);
                self.own.check(&f, off, n)?;
                let size = f.metadata().map_err(|e| e.to_string())?.len();
                if size != len {
                    return Err(format!(
                        "{}: size {size}, model {len}",
                        self.own.path.display()
                    ));
                }
            }
            "own-seek" => {
                self.tally.ok(op);
                self.own.check_seek(&f)?;
            }
            "own-mmap" => {
                let data = self.rng.some(16 << 10);
                let off = self.rng.below(48 << 10) as usize;
                if self.own.model.len() < 64 << 10 {
                    if let Err(e) = f.set_len(64 << 10) {
                        self.tally.err(op, &e);
                        return Ok(());
                    }
                    self.own.model.resize(64 << 10, 0);
                }
                let r = Mapping::new(&f, 64 << 10, libc::PROT_READ | libc::PROT_WRITE).and_then(
                    |mut m| {
                        m.write(off, &data);
                        drop(m);
                        f.sync_data()
                    },
                );
                if let Some(()) = self.tally.done(op, r) {
                    self.own.model[off..off + data.len()].copy_from_slice(&data);
                }
            }
            "own-unlink-open" => {
                // The name goes while the file is open; the open file keeps working, then
                // a new empty file takes the name.
                let data = self.rng.some(128 << 10);
                let r = fs::remove_file(&self.own.path).and_then(|()| {
                    f.write_all_at(&data, 0)?;
                    let mut back = vec![0u8; data.len()];
                    f.read_exact_at(&mut back, 0)?;
                    Ok(back)
                });
                match r {
                    Ok(back) => {
                        self.tally.ok(op);
                        if back != data {
                            return Err("an unlinked open file read back other bytes".into());
                        }
                    }
                    Err(e) => self.tally.err(op, &e),
                }
                self.own.model.clear();
                if let Err(e) = File::create(&self.own.path) {
                    self.tally.err(op, &e);
                }
            }
            other => panic!("unknown op {other}"),
        }
        Ok(())
    }
}

fn run_thread(cfg: &WorkerCfg, tid: usize) -> Tally {
    let slot = cfg.slot + tid;
    let seed = cfg.seed ^ (slot as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15);
    let own_path = cfg.mounts[0].join("own").join(format!("t{}", slot));
    let progress = OpenOptions::new().write(true).open(&cfg.progress).unwrap();
    let mut cx = Ctx {
        cfg,
        rng: Rng::new(seed),
        tally: Tally::default(),
        own: Own {
            path: own_path,
            model: Vec::new(),
            punches: None,
        },
        tid,
        progress,
        slot,
        count: 0,
    };
    File::create(&cx.own.path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(cfg.secs);
    while Instant::now() < deadline {
        if let Err(e) = cx.step() {
            cx.tally
                .fatal
                .push(format!("model check failed (seed {seed}): {e}"));
            break;
        }
        if cx.tally.fatal.len() > 5 {
            break;
        }
    }
    // Close-to-open through the other mount: what this mount wrote and closed is what
    // the other mount reads.
    if cx.tally.fatal.is_empty() {
        let other = cfg.mounts[1].join("own").join(format!("t{}", slot));
        match File::open(&other) {
            Ok(f) => {
                let o = Own {
                    path: other.clone(),
                    model: cx.own.model.clone(),
                    punches: None,
                };
                if let Err(e) = o.check(&f, 0, SPAN as usize + 1) {
                    cx.tally
                        .fatal
                        .push(format!("other mount (seed {seed}): {e}"));
                }
            }
            Err(e) => cx
                .tally
                .fatal
                .push(format!("other mount: open {}: {e}", other.display())),
        }
    }
    let _ = cx.own.punches;
    cx.count = u64::MAX;
    cx.mark("own-check");
    cx.tally
}

/// The worker side: runs its threads and writes a summary to the result file.
#[test]
#[ignore = "a worker process of the torture test, started by it"]
fn torture_worker_process() {
    let Ok(spec) = std::env::var("SPARSEFS_TORTURE_WORKER") else {
        return;
    };
    let cfg = WorkerCfg::decode(&spec);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..cfg.threads)
            .map(|t| {
                let cfg = &cfg;
                s.spawn(move || run_thread(cfg, t))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut out = String::new();
    for t in &tallies {
        for (op, n) in &t.ops {
            out += &format!("op {op} {n}\n");
        }
        for ((op, e), n) in &t.errnos {
            out += &format!("errno {op} {e} {n}\n");
        }
        for f in &t.fatal {
            out += &format!("fatal {f}\n");
        }
    }
    fs::write(&cfg.result, out).unwrap();
}

/// Runs the torture for `secs` over `backing` with `procs` worker processes of
/// `threads` threads each. Returns a summary line.
pub fn torture(backing: &Path, secs: u64, procs: usize, threads: usize, args: &[&str]) -> String {
    let m1 = Mount::new(backing, args);
    let m2 = Mount::new(backing, args);
    for d in ["shared", "own"] {
        fs::create_dir_all(m1.p(d)).unwrap();
    }
    for i in 0..3 {
        fs::write(m1.p(&format!("shared/s{i}")), random_bytes(1 << 20, i)).unwrap();
    }
    fs::write(m1.p("shared/m0"), random_bytes(64 << 10, 9)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let progress = work.path().join("progress");
    fs::write(&progress, vec![0u8; 16 * procs * threads]).unwrap();
    let seed = rand_u64();
    eprintln!("torture: seed {seed}, {procs} processes x {threads} threads, {secs} s");
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<(Child, PathBuf)> = (0..procs)
        .map(|p| {
            let result = work.path().join(format!("result-{p}"));
            let cfg = WorkerCfg {
                mounts: [m1.path().to_path_buf(), m2.path().to_path_buf()],
                progress: progress.clone(),
                slot: p * threads,
                threads,
                secs,
                seed: seed.wrapping_add(p as u64),
                result: result.clone(),
            };
            let mut mounts = cfg.mounts.clone();
            if p % 2 == 1 {
                // Odd processes own their files on the second mount.
                mounts.swap(0, 1);
            }
            let cfg = WorkerCfg { mounts, ..cfg };
            let child = Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "torture::torture_worker_process",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("SPARSEFS_TORTURE_WORKER", cfg.encode())
                .stdout(Stdio::null())
                .stderr(File::create(work.path().join(format!("stderr-{p}"))).unwrap())
                .spawn()
                .unwrap();
            (child, result)
        })
        .collect();
    let started = Instant::now();
    let stuck = {
        // A worker that exited (done, or killed) makes no more progress: its slots are
        // not watched any more.
        let children = std::cell::RefCell::new(&mut children);
        let exited = |p: usize| {
            let mut c = children.borrow_mut();
            c[p].0.try_wait().ok().flatten().is_some()
        };
        watch(
            || {
                let b = fs::read(&progress).unwrap_or_default();
                b.chunks(16)
                    .enumerate()
                    .map(|(slot, c)| {
                        if exited(slot / threads) {
                            u64::MAX
                        } else {
                            u64::from_le_bytes(c[..8].try_into().unwrap())
                        }
                    })
                    .collect()
            },
            || (0..procs).all(exited),
        )
    };
    if let Some(slot) = stuck {
        let b = fs::read(&progress).unwrap_or_default();
        let op = u64::from_le_bytes(b[slot * 16 + 8..slot * 16 + 16].try_into().unwrap());
        let callers: Vec<u32> = children.iter().map(|(c, _)| c.id()).collect();
        let report = hang_report(&[daemon_pid(&m1), daemon_pid(&m2)], &callers);
        end_hung(&m1);
        end_hung(&m2);
        for (c, _) in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        panic!(
            "torture: thread slot {slot} made no progress for {STALL:?} in {} (after {:.0} s): \
             the mount hung\n{report}",
            OPS.get(op as usize).unwrap_or(&"?"),
            started.elapsed().as_secs_f64()
        );
    }
    let mut ops: BTreeMap<String, u64> = BTreeMap::new();
    let mut errnos: BTreeMap<String, u64> = BTreeMap::new();
    let mut fatal = Vec::new();
    for (p, (c, result)) in children.iter_mut().enumerate() {
        let st = c.wait().unwrap();
        let text = fs::read_to_string(&*result).unwrap_or_default();
        if !st.success() || text.is_empty() {
            fatal.push(format!(
                "worker {p} exited {st}: {}",
                fs::read_to_string(work.path().join(format!("stderr-{p}"))).unwrap_or_default()
            ));
        }
        for l in text.lines() {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            match f[0] {
                "op" => *ops.entry(f[1].to_string()).or_default() += f[2].parse::<u64>().unwrap(),
                "errno" => {
                    *errnos.entry(format!("{} {}", f[1], f[2])).or_default() +=
                        f[3].parse::<u64>().unwrap()
                }
                _ => fatal.push(l.to_string()),
            }
        }
    }
    let secs_run = started.elapsed().as_secs_f64();
    let total: u64 = ops.values().sum();
    let log1 = m1.log_so_far();
    let log2 = m2.log_so_far();
    let stderr: String = (0..procs)
        .map(|p| fs::read_to_string(work.path().join(format!("stderr-{p}"))).unwrap_or_default())
        .collect();
    assert!(
        fatal.is_empty(),
        "torture failed (seed {seed}):\n{}\nerrnos: {errnos:?}\ndaemon logs:\n{log1}\n{log2}\nworkers:\n{}",
        fatal.join("\n"),
        stderr.chars().take(20_000).collect::<String>()
    );
    for op in OPS
        .iter()
        .filter(|_| std::env::var("SPARSEFS_TORTURE_OPS").is_err())
    {
        assert!(
            ops.get(*op).copied().unwrap_or(0) > 0,
            "operation {op} never ran: {ops:?}"
        );
    }
    for (log, name) in [(&log1, "first"), (&log2, "second")] {
        assert!(
            !log.contains("lock order violated"),
            "{name} daemon saw a lock-order violation:\n{log}"
        );
    }
    drop(m2);
    drop(m1);
    format!(
        "torture: {total} operations in {secs_run:.0} s ({:.0}/s), {procs} processes x {threads} \
         threads, 2 mounts, 0 hangs; errnos seen: {errnos:?}",
        total as f64 / secs_run
    )
}

/// Seconds of the default run (`SPARSEFS_TORTURE_SECS` overrides; the long suite runs 600).
fn torture_secs() -> u64 {
    std::env::var("SPARSEFS_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

#[test]
fn many_threads_and_processes_mixing_every_operation_never_hang_the_mount() {
    if !fuse_available() {
        return;
    }
    for_each_backing(|b| {
        let extra = std::env::var("SPARSEFS_TORTURE_ARGS").unwrap_or_default();
        let args: Vec<&str> = extra.split_whitespace().collect();
        let summary = torture(b.path(), torture_secs(), 2, 3, &args);
        eprintln!("{summary}");
    });
}
