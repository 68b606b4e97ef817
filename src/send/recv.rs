//! The receiving side: checks every record, writes data with large positional writes
//! (a hole costs no call; a trailing hole one ftruncate), verifies each file's digest,
//! and only then gives the temporary files their names. `--inplace` writes the
//! destination itself and punches holes over its old data; `--update` streams (header
//! flag) get the old copy's block hashes back first.

use super::sender::CHUNK;
use super::source::RunFinder;
use super::wire::{
    self, BlockSums, Decoder, Digest, Encoder, FileMeta, Hash, Record, StreamError, ZeroHashes,
};
use crate::sys;
use crate::zero::is_zero;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Options of `sparsefs recv`.
#[derive(Clone, Debug, Default)]
pub struct RecvOpts {
    /// Write into the destination itself (punching holes over old data) instead of a
    /// temporary renamed at the end.
    pub inplace: bool,
}

/// What was received.
#[derive(Clone, Debug, Default)]
pub struct RecvSummary {
    /// Files written.
    pub files: Vec<(String, u64)>,
    /// Data bytes written.
    pub data_bytes: u64,
    /// Data records.
    pub data_records: u64,
    /// Bytes punched (or zeroed) over old data.
    pub punched: u64,
    /// Stream bytes read.
    pub wire_bytes: u64,
    /// Bytes of the old copies read to hash them (`--update`; their holes are not read).
    pub old_read_bytes: u64,
    /// Bytes of block hashes sent back (`--update`).
    pub reply_bytes: u64,
    /// Temporaries of the same destinations left by a recv that was killed, removed.
    pub stale_removed: u64,
    /// `--update` temporaries made as reflinks of the old copy (nothing copied).
    pub cloned: u64,
}

/// Where the files of a stream go.
#[derive(Clone, Debug)]
pub enum Dest {
    /// Into this directory, under their own names.
    Dir(PathBuf),
    /// The one file of the stream, to this path.
    File(PathBuf),
}

impl Dest {
    /// Checks `p` before any byte of the stream is read.
    ///
    /// # Errors
    /// A destination whose directory does not exist.
    pub fn resolve(p: &Path) -> Result<Dest, String> {
        if p.is_dir() {
            return Ok(Dest::Dir(p.to_path_buf()));
        }
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(format!(
                "{}: directory {} does not exist",
                p.display(),
                parent.display()
            ));
        }
        if p.file_name().is_none() {
            return Err(format!("{}: not a file name", p.display()));
        }
        Ok(Dest::File(p.to_path_buf()))
    }
}

/// One file being received.
struct Incoming {
    meta: FileMeta,
    /// The final name.
    target: PathBuf,
    /// The file written (the temporary, or the target with `--inplace`).
    path: PathBuf,
    file: File,
    digest: Digest,
    /// End of the last record (records ascend).
    pos: u64,
    /// Bytes of data the records carried.
    data_bytes: u64,
    /// The length the written file has now.
    len: u64,
    /// The hashes of blocks no record touches.
    keep: Keep,
    /// Punch over old data (in place or on a copy of the old file).
    punch: bool,
}

/// What a block that no record touches hashes to: its old hash (`--update`), else
/// zeros.
struct Keep {
    block: u64,
    size: u64,
    zeros: ZeroHashes,
    /// The old copy's data blocks (`--update`); its other blocks read as zeros.
    old: Option<BlockSums>,
}

impl Keep {
    fn kept(&self, j: u64) -> Hash {
        let b = self.block;
        let new_len = wire::block_len(j, self.size, b);
        match self.old.as_ref().and_then(|o| Some((o.size, o.get(j)?))) {
            Some((old_size, h)) if wire::block_len(j, old_size, b) == new_len => *h,
            // Not kept as it was (the file's size moved inside this block): the sender
            // sends such a block. If it did not, the digest fails, as it must.
            Some(_) => [0; 32],
            None => self.zeros.of_len(new_len),
        }
    }
}

/// Receives a native stream from `input` into `dest`; `reply` carries the block hashes
/// back for `--update` streams.
///
/// # Errors
/// One line: the stream's fault, or the destination's. Nothing half-written keeps a
/// destination name (except with `--inplace`).
pub fn recv<R: Read, W: Write>(
    input: R,
    reply: W,
    dest: &Dest,
    o: &RecvOpts,
    progress: &super::Progress,
) -> Result<RecvSummary, String> {
    let mut st = State {
        temps: Vec::new(),
        done: Vec::new(),
        finder: RunFinder::default(),
        old_read_bytes: 0,
        temp_like: Default::default(),
        stale_removed: 0,
        cloned: 0,
    };
    let r = run(input, reply, dest, o, progress, &mut st);
    if r.is_err() {
        for p in st.temps.iter().chain(st.done.iter().map(|d| &d.path)) {
            let _ = std::fs::remove_file(p);
        }
    }
    r
}

/// A verified file: it takes its name when the stream ends.
struct Done {
    /// The file written (a temporary, or the target with `--inplace`).
    path: PathBuf,
    target: PathBuf,
    /// Kept open until the rename: a temporary's lock says its writer is alive.
    _file: File,
}

struct State {
    /// Temporaries not yet complete.
    temps: Vec<PathBuf>,
    /// Complete, verified files waiting for the stream's end.
    done: Vec<Done>,
    /// Per destination directory, its entries that look like temporaries of a recv
    /// (read once per stream).
    temp_like: std::collections::HashMap<PathBuf, Vec<String>>,
    /// Stale temporaries removed.
    stale_removed: u64,
    /// Finds the data runs of old copies (`--update`).
    finder: RunFinder,
    /// Bytes of old copies read (`--update`).
    old_read_bytes: u64,
    /// Temporaries made as reflinks of the old copy.
    cloned: u64,
}

fn run<R: Read, W: Write>(
    input: R,
    reply: W,
    dest: &Dest,
    o: &RecvOpts,
    progress: &super::Progress,
    st: &mut State,
) -> Result<RecvSummary, String> {
    let mut d = Decoder::new(io::BufReader::with_capacity(1 << 20, input));
    let mut reply = Encoder::new(reply);
    let se = |e: StreamError| e.to_string();
    let h = d.header().map_err(se)?;
    let block = u64::from(h.block);
    let update = h.flags & wire::FLAG_UPDATE != 0;
    let mut sum = RecvSummary::default();
    let mut cur: Option<Incoming> = None;
    let mut nfiles = 0u32;
    loop {
        let rec = d.record().map_err(se)?;
        match rec {
            Record::File(meta) => {
                if cur.is_some() {
                    return Err(se(StreamError::Corrupt(
                        "a file record inside another file".into(),
                    )));
                }
                nfiles += 1;
                let target = match dest {
                    Dest::Dir(dir) => dir.join(&meta.name),
                    Dest::File(p) if nfiles == 1 => p.clone(),
                    Dest::File(p) => {
                        return Err(format!(
                            "{}: the stream holds several files; give a directory",
                            p.display()
                        ));
                    }
                };
                let inc = start_file(meta, target, block, update, o, st, &mut reply)?;
                cur = Some(inc);
            }
            Record::Data { off, data } => {
                let f = cur.as_mut().ok_or_else(|| {
                    se(StreamError::Corrupt("a data record outside a file".into()))
                })?;
                let len = data.len() as u64;
                check_range(f, off, len, block).map_err(se)?;
                f.file
                    .write_all_at(&data, off)
                    .map_err(|e| format!("{}: {e}", f.path.display()))?;
                let first = off / block;
                for (j, b) in data.chunks(block as usize).enumerate() {
                    let i = first + j as u64;
                    let keep = &f.keep;
                    f.digest
                        .push_with(i, &wire::block_hash(b), |k| keep.kept(k));
                }
                f.pos = off + len;
                f.len = f.len.max(off + len);
                f.data_bytes += len;
                sum.data_bytes += len;
                sum.data_records += 1;
                progress.data(len);
            }
            Record::Hole { off, len } => {
                let f = cur.as_mut().ok_or_else(|| {
                    se(StreamError::Corrupt("a hole record outside a file".into()))
                })?;
                check_range(f, off, len, block).map_err(se)?;
                if f.punch {
                    let old_end = f.len.min(off + len);
                    if old_end > off {
                        punch(&f.file, off, old_end - off)
                            .map_err(|e| format!("{}: {e}", f.path.display()))?;
                        sum.punched += old_end - off;
                    }
                    // Hole blocks hash as zeros, whatever the old copy had.
                    let (first, last) = (off / block, wire::blocks(off + len, block));
                    for i in first..last {
                        let z = f.keep.zeros.of_len(wire::block_len(i, f.meta.size, block));
                        let keep = &f.keep;
                        f.digest.push_with(i, &z, |k| keep.kept(k));
                    }
                }
                f.pos = off + len;
                progress.hole(len);
            }
            Record::End {
                size,
                data_bytes,
                digest,
            } => {
                let mut f = cur.take().ok_or_else(|| {
                    se(StreamError::Corrupt("an end record outside a file".into()))
                })?;
                if size != f.meta.size || data_bytes != f.data_bytes {
                    return Err(se(StreamError::Corrupt(format!(
                        "the end record of {} does not match its records",
                        f.meta.name
                    ))));
                }
                let keep = &f.keep;
                let got = std::mem::replace(&mut f.digest, Digest::new(0, block))
                    .finish_with(|k| keep.kept(k));
                if got != digest {
                    return Err(format!(
                        "{}: digest mismatch: the received file differs from the sent one (stream corrupted)",
                        f.meta.name
                    ));
                }
                finish_file(&mut f).map_err(|e| format!("{}: {e}", f.path.display()))?;
                st.temps.retain(|t| *t != f.path);
                st.done.push(Done {
                    path: f.path,
                    target: f.target.clone(),
                    _file: f.file,
                });
                sum.files.push((f.target.display().to_string(), size));
            }
            Record::StreamEnd { files } => {
                if cur.is_some() || files != nfiles {
                    return Err(se(StreamError::Corrupt(format!(
                        "the stream's end record counts {files} files, {nfiles} were sent"
                    ))));
                }
                break;
            }
        }
    }
    // Every file verified: now they take their names.
    let mut dirs = Vec::new();
    for Done { path, target, .. } in &st.done {
        if path != target {
            std::fs::rename(path, target).map_err(|e| format!("{}: {e}", target.display()))?;
        }
        if let Some(dir) = target.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if !dirs.iter().any(|d: &PathBuf| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    st.done.clear();
    for dir in dirs {
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    sum.wire_bytes = d.bytes;
    sum.reply_bytes = reply.bytes;
    sum.old_read_bytes = st.old_read_bytes;
    sum.stale_removed = st.stale_removed;
    sum.cloned = st.cloned;
    Ok(sum)
}

fn check_range(f: &Incoming, off: u64, len: u64, block: u64) -> Result<(), StreamError> {
    let end = off.checked_add(len);
    let bad = |why: &str| {
        Err(StreamError::Corrupt(format!(
            "record at {off}+{len} of {}: {why}",
            f.meta.name
        )))
    };
    match end {
        None => bad("out of range"),
        Some(_) if len == 0 => bad("empty"),
        Some(e) if e > f.meta.size => bad("past the end of the file"),
        Some(_) if off < f.pos => bad("out of order"),
        Some(_) if !off.is_multiple_of(block) => bad("not on a block boundary"),
        Some(e) if !len.is_multiple_of(block) && e != f.meta.size => bad("not whole blocks"),
        Some(_) => Ok(()),
    }
}

/// Punches `[off, off+len)`; writes zeros where the filesystem cannot punch.
fn punch(f: &File, off: u64, len: u64) -> io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    loop {
        match crate::sys::fallocate_once(f.as_fd(), mode, off, len) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
                ) =>
            {
                let zeros = vec![0u8; CHUNK.min(len) as usize];
                let mut o = off;
                while o < off + len {
                    let n = CHUNK.min(off + len - o) as usize;
                    f.write_all_at(&zeros[..n], o)?;
                    o += n as u64;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates the file to write (a temporary beside the target, or the target itself with
/// `--inplace`) and, for `--update`, answers the old copy's block hashes.
fn start_file<W: Write>(
    meta: FileMeta,
    target: PathBuf,
    block: u64,
    update: bool,
    o: &RecvOpts,
    st: &mut State,
    reply: &mut Encoder<W>,
) -> Result<Incoming, String> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let like = st
        .temp_like
        .entry(dir.clone())
        .or_insert_with(|| temp_like(&dir));
    let target_name = target.file_name().and_then(|n| n.to_str()).unwrap_or("");
    for file in like.iter() {
        if let Some(pid) = temp_writer(file, target_name) {
            st.stale_removed += u64::from(remove_if_stale(&dir.join(file), pid));
        }
    }
    let old = if update {
        match File::open(&target) {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => Some(f),
            _ => None,
        }
    } else {
        None
    };
    let (path, file) = if o.inplace {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&target)
            .map_err(|e| format!("{}: {e}", target.display()))?;
        (target.clone(), f)
    } else {
        let mut n = 0u32;
        loop {
            let tmp = dir.join(temp_name(target_name, std::process::id(), n));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
            {
                Ok(f) => {
                    st.temps.push(tmp.clone());
                    // Held until the rename (or exit): see `remove_if_stale`.
                    let _ = f.try_lock();
                    break (tmp, f);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(format!("{}: {e}", tmp.display())),
            }
        }
    };
    let mut len = if o.inplace {
        file.metadata().map(|m| m.len()).unwrap_or(0)
    } else {
        0
    };
    let mut old_sums = None;
    if update {
        // The temporary starts as a reflink of the old copy where the filesystem makes
        // one (XFS, btrfs): its unchanged blocks are then shared, not copied and synced.
        let cloned = !o.inplace
            && old
                .as_ref()
                .is_some_and(|of| sys::clone_file(file.as_fd(), of.as_fd()).is_ok());
        st.cloned += u64::from(cloned);
        let sums = match &old {
            Some(of) => {
                let copy = (!o.inplace && !cloned).then_some(&file);
                if copy.is_some() {
                    // The old size first, so that the copy's writes do not extend the
                    // file: XFS zeroes the gap from the old end of file to an extending
                    // write where its speculative preallocation put blocks, and the
                    // copy's holes came out as allocated zeros (62 MiB for 32 of data).
                    let old_len = of
                        .metadata()
                        .map_err(|e| format!("{}: {e}", target.display()))?;
                    file.set_len(old_len.len())
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                // A reflink is hashed itself, not the old copy: what the sender is told
                // is then what the temporary holds, even if the old copy changes now.
                let (hashed, hashed_path) = if cloned {
                    (&file, &path)
                } else {
                    (of, &target)
                };
                let (sums, read) = old_hashes(hashed, hashed_path, block, copy, &mut st.finder)
                    .map_err(|e| format!("{}: {e}", hashed_path.display()))?;
                st.old_read_bytes += read;
                sums
            }
            None => BlockSums::default(),
        };
        reply
            .sums(&sums)
            .and_then(|()| reply.flush())
            .map_err(|e| format!("answering the sender: {e}"))?;
        // The old size (or 0: no old copy), with its data.
        len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        old_sums = Some(sums);
    }
    // Over old data (in place, or a copy of the old file), the size is set first: the
    // blocks past it are gone, and punches stay inside it. A new file of 1 MiB or more
    // too (the one ftruncate a trailing hole costs anyway, done first): writes past the
    // end of file make XFS preallocate blocks beyond it, and those left between data
    // extents stayed allocated (a 4 GiB image with 98.9 MB of 32K data blocks took
    // 105.9 MB on XFS, 98.9 MB once sized first).
    let size_first = o.inplace || update || meta.size >= SIZE_FIRST;
    if size_first && len != meta.size {
        file.set_len(meta.size)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        len = meta.size;
    }
    Ok(Incoming {
        digest: Digest::new(meta.size, block),
        keep: Keep {
            block,
            size: meta.size,
            zeros: ZeroHashes::new(meta.size, block),
            old: old_sums,
        },
        punch: o.inplace || update,
        meta,
        target,
        path,
        file,
        pos: 0,
        data_bytes: 0,
        len,
    })
}

/// The hashes of the data blocks of the old copy `f` (at `path`) and the bytes read;
/// its holes are not read (runs from the mount's index or SEEK_DATA, as for a send).
/// Copies the data blocks into `copy` when given (`--update` without `--inplace`).
fn old_hashes(
    f: &File,
    path: &Path,
    block: u64,
    copy: Option<&File>,
    finder: &mut RunFinder,
) -> io::Result<(BlockSums, u64)> {
    let size = f.metadata()?.len();
    let mut sums = BlockSums {
        size,
        blocks: Vec::new(),
    };
    let mut read = 0u64;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut done = 0u64;
    for (s, e) in finder.runs(f, path, size).0 {
        let s = (s / block * block).max(done);
        let e = e.next_multiple_of(block).min(size);
        let mut off = s;
        while off < e {
            let n = CHUNK.min(e - off) as usize;
            f.read_exact_at(&mut buf[..n], off)?;
            read += n as u64;
            for (j, b) in buf[..n].chunks(block as usize).enumerate() {
                if !is_zero(b) {
                    let i = off / block + j as u64;
                    sums.blocks.push((i, wire::block_hash(b)));
                    if let Some(c) = copy {
                        c.write_all_at(b, i * block)?;
                    }
                }
            }
            off += n as u64;
        }
        done = done.max(e);
    }
    Ok((sums, read))
}

/// This host's tag in temporaries' names: the first label of its name, letters, digits
/// and '-' only. A pid means something only on the host that wrote it, so only this
/// host's temporaries are ever taken for stale (a recv on another node sharing the
/// directory may be alive; its lock may not be visible here, e.g. on Lustre with
/// `localflock`).
pub(crate) fn host_tag() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let t: String = h
        .trim()
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    if t.is_empty() { "localhost".into() } else { t }
}

/// The temporary of the file named `name`, written by process `pid` of this host; `n`
/// counts names taken.
fn temp_name(name: &str, pid: u32, n: u32) -> String {
    format!(".{name}.sparsefs-recv.{}.{pid}.{n}", host_tag())
}

/// The writer's process id, if `file` is the name of a temporary of `name` written on
/// this host.
fn temp_writer(file: &str, name: &str) -> Option<i32> {
    let rest = file
        .strip_prefix('.')?
        .strip_prefix(name)?
        .strip_prefix(".sparsefs-recv.")?;
    let rest = rest.strip_prefix(host_tag().as_str())?.strip_prefix('.')?;
    let (pid, n) = rest.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) || n.parse::<u32>().is_err() {
        return None;
    }
    pid.parse::<i32>().ok().filter(|&p| p > 0)
}

/// The names in `dir` that may be temporaries of a recv (any destination).
fn temp_like(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with('.') && n.contains(".sparsefs-recv."))
        .collect()
}

/// Removes the temporary `p` of process `pid` if it is provably a leftover of a recv
/// that died: the process is gone, the file is a regular file of ours with one link,
/// and no one holds its lock (a writer holds it until the rename, so a free lock also
/// covers a writer on another host sharing the directory). Anything else is kept.
fn remove_if_stale(p: &Path, pid: i32) -> bool {
    if pid as u32 == std::process::id()
        || !matches!(crate::sys::kill(pid, 0), Err(e) if e.raw_os_error() == Some(libc::ESRCH))
    {
        return false;
    }
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return false;
    };
    if !m.file_type().is_file() || m.uid() != crate::sys::geteuid() || m.nlink() != 1 {
        return false;
    }
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
    else {
        return false;
    };
    let same = f
        .metadata()
        .is_ok_and(|o| (o.dev(), o.ino()) == (m.dev(), m.ino()));
    same && f.try_lock().is_ok() && std::fs::remove_file(p).is_ok()
}

/// New files at least this big are sized before their data is written.
const SIZE_FIRST: u64 = 1 << 20;

/// Sets the size (one ftruncate, for a trailing hole), mode and mtime, and syncs.
fn finish_file(f: &mut Incoming) -> io::Result<()> {
    if f.len != f.meta.size {
        f.file.set_len(f.meta.size)?;
    }
    use std::os::unix::fs::PermissionsExt;
    f.file
        .set_permissions(std::fs::Permissions::from_mode(f.meta.mode))?;
    let t = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::new(
            f.meta.mtime_s.max(0) as u64,
            f.meta.mtime_ns,
        ))
        .unwrap_or(std::time::UNIX_EPOCH);
    f.file.set_modified(t)?;
    f.file.sync_all()
}
