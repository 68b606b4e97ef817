//! The torture's workers: what each thread does, over shared files and its own file checked against a byte model.

use super::*;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Read;

/// Largest offset written in a shared or own file.
pub(super) const SPAN: u64 = 6 << 20;

/// A small deterministic generator (xorshift64*).
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// 1 to `max` random bytes.
    pub(super) fn some(&mut self, max: u64) -> Vec<u8> {
        let n = 1 + self.below(max) as usize;
        self.bytes(n)
    }
    pub(super) fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// What a worker process is told (through `SPARSEFS_TORTURE_WORKER`).
pub(super) struct WorkerCfg {
    /// The two mounts of one backing.
    pub(super) mounts: [PathBuf; 2],
    /// Progress file: 16 bytes per thread (ops done, op in progress).
    pub(super) progress: PathBuf,
    /// First slot of this process in the progress file.
    pub(super) slot: usize,
    pub(super) threads: usize,
    pub(super) secs: u64,
    pub(super) seed: u64,
    /// The backing punches (else PUNCH_HOLE may fail with EOPNOTSUPP).
    pub(super) result: PathBuf,
}

impl WorkerCfg {
    pub(super) fn encode(&self) -> String {
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

    pub(super) fn decode(s: &str) -> WorkerCfg {
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
pub(super) const OPS: &[&str] = &[
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

pub(super) fn op_index(name: &str) -> usize {
    OPS.iter().position(|o| *o == name).expect("known op")
}

/// What one thread saw.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) ops: BTreeMap<&'static str, u64>,
    pub(super) errnos: BTreeMap<(&'static str, i32), u64>,
    pub(super) fatal: Vec<String>,
}

impl Tally {
    pub(super) fn ok(&mut self, op: &'static str) {
        *self.ops.entry(op).or_default() += 1;
    }
    pub(super) fn err(&mut self, op: &'static str, e: &std::io::Error) {
        *self.ops.entry(op).or_default() += 1;
        let code = e.raw_os_error().unwrap_or(-1);
        *self.errnos.entry((op, code)).or_default() += 1;
        if matches!(code, libc::ENOTCONN | libc::EIO | libc::ECONNABORTED | -1) {
            self.fatal.push(format!("{op}: {e}"));
        }
    }
    pub(super) fn done<T>(&mut self, op: &'static str, r: std::io::Result<T>) -> Option<T> {
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

pub(super) fn cvt(r: i64) -> std::io::Result<i64> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub(super) fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// An aligned buffer for O_DIRECT (4 KiB alignment, no unsafe).
pub(super) fn aligned(n: usize, fill: u8) -> (Vec<u8>, usize) {
    let v = vec![fill; n + 4096];
    let off = (4096 - v.as_ptr() as usize % 4096) % 4096;
    (v, off)
}

pub(super) fn open_mode(rng: &mut Rng, path: &Path) -> std::io::Result<File> {
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
pub(super) struct Own {
    path: PathBuf,
    model: Vec<u8>,
    punches: Option<bool>,
}

impl Own {
    pub(super) fn check(&self, f: &File, off: u64, len: usize) -> Result<(), String> {
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
    pub(super) fn check_seek(&self, f: &File) -> Result<(), String> {
        let size = self.model.len() as u64;
        let seek = |off: u64, w: sparsefs::backend::Whence| {
            let whence = match w {
                sparsefs::backend::Whence::Data => libc::SEEK_DATA,
                sparsefs::backend::Whence::Hole => libc::SEEK_HOLE,
            };
            match lseek(f, off as i64, whence) {
                Ok(x) => Ok(Some(x)),
                Err(libc::ENXIO) => Ok(None),
                Err(e) => Err(std::io::Error::from_raw_os_error(e)),
            }
        };
        let runs = match sparsefs::extents::walk(size, seek) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(format!(
                    "{}: inconsistent SEEK answers",
                    self.path.display()
                ));
            }
            Err(e) => return Err(format!("{}: SEEK: {e}", self.path.display())),
        };
        // Every hole between the data runs reads as zeros in the model.
        for (hole, data) in runs.gaps(0, size) {
            if let Some(i) = self.model[hole as usize..data as usize]
                .iter()
                .position(|&b| b != 0)
            {
                return Err(format!(
                    "{}: hole [{hole}, {data}) reported where byte {} holds data",
                    self.path.display(),
                    hole as usize + i
                ));
            }
        }
        Ok(())
    }
}

pub(super) fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
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

pub(super) struct Ctx<'a> {
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
    pub(super) fn mark(&mut self, op: &str) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..].copy_from_slice(&(op_index(op) as u64).to_le_bytes());
        let _ = self.progress.write_all_at(&b, self.slot as u64 * 16);
    }

    pub(super) fn shared(&mut self) -> PathBuf {
        let m = &self.cfg.mounts[self.rng.below(2) as usize];
        m.join("shared").join(format!("s{}", self.rng.below(3)))
    }

    pub(super) fn open_shared(&mut self, rw: bool) -> std::io::Result<(File, PathBuf)> {
        let p = self.shared();
        let f = OpenOptions::new()
            .read(true)
            .write(rw)
            .create(rw)
            .open(&p)?;
        Ok((f, p))
    }

    pub(super) fn step(&mut self) -> Result<(), String> {
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

    pub(super) fn run(&mut self, op: &'static str) -> Result<(), String> {
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

    pub(super) fn own_file(&self, write: bool) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(write)
            .create(write)
            .open(&self.own.path)
    }

    pub(super) fn own_op(&mut self, op: &'static str) -> Result<(), String> {
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

pub(super) fn run_thread(cfg: &WorkerCfg, tid: usize) -> Tally {
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
