//! `sparsefs map` (print a file's DATA/HOLE runs as SEEK_DATA/SEEK_HOLE report them) and
//! `sparsefs scan` (learn the maps of existing files on a backing directory by reading
//! them once, store them where a mount will find them, optionally punch zero blocks).

use crate::extents::RangeSet;
use crate::persist::{MapStore, Persist};
use crate::sys;
use crate::zero::is_zero;
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The data runs of an open file from SEEK_DATA/SEEK_HOLE (all data where the
/// filesystem has no such seek).
pub fn data_runs(f: &File, size: u64) -> Vec<(u64, u64)> {
    let fd = f.as_raw_fd();
    let seek = |off: u64, w: crate::backend::Whence| {
        let whence = match w {
            crate::backend::Whence::Data => libc::SEEK_DATA,
            crate::backend::Whence::Hole => libc::SEEK_HOLE,
        };
        match sys::lseek(fd, off as i64, whence) {
            Ok(x) => Ok(Some(x)),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            Err(e) => Err(e),
        }
    };
    match crate::extents::walk(size, seek) {
        Ok(Some(runs)) => runs.iter().collect(),
        // No usable SEEK_DATA, or inconsistent answers: all data.
        _ if size > 0 => vec![(0, size)],
        _ => Vec::new(),
    }
}

/// Output style of `sparsefs map`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapFormat {
    /// A table with totals.
    Table,
    /// JSON, one object per file.
    Json,
    /// `DATA n` / `HOLE n` records, in file order (for scripts that ship sparse files).
    Records,
}

use crate::stats::human;

/// `sparsefs map FILE...`.
///
/// # Errors
/// A one-line message naming the file that could not be read.
pub fn map(files: &[PathBuf], fmt: MapFormat) -> Result<(), String> {
    for p in files {
        let f = File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let size = f
            .metadata()
            .map_err(|e| format!("{}: {e}", p.display()))?
            .len();
        let runs = data_runs(&f, size);
        let data: u64 = runs.iter().map(|(d, h)| h - d).sum();
        let mut all = Vec::new();
        let mut pos = 0;
        for &(d, h) in &runs {
            if d > pos {
                all.push(("HOLE", pos, d - pos));
            }
            all.push(("DATA", d, h - d));
            pos = h;
        }
        if pos < size {
            all.push(("HOLE", pos, size - pos));
        }
        match fmt {
            MapFormat::Records => {
                for (t, _, n) in &all {
                    println!("{t} {n}");
                }
            }
            MapFormat::Json => {
                let ext: Vec<String> = all
                    .iter()
                    .map(|(t, o, n)| {
                        format!(
                            "{{\"type\":\"{}\",\"offset\":{o},\"length\":{n}}}",
                            t.to_lowercase()
                        )
                    })
                    .collect();
                let name = p
                    .display()
                    .to_string()
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"");
                println!(
                    "{{\"file\":\"{name}\",\"size\":{size},\"data_bytes\":{data},\"hole_bytes\":{},\"data_extents\":{},\"runs\":[{}]}}",
                    size - data,
                    runs.len(),
                    ext.join(",")
                );
            }
            MapFormat::Table => {
                println!(
                    "{}: size {}, data {} in {} extents, holes {}",
                    p.display(),
                    human(size),
                    human(data),
                    runs.len(),
                    human(size - data)
                );
                println!("  {:<5} {:>16} {:>16}", "TYPE", "OFFSET", "LENGTH");
                for (t, o, n) in &all {
                    println!("  {t:<5} {o:>16} {n:>16}");
                }
            }
        }
    }
    Ok(())
}

/// Options of `sparsefs scan`.
#[derive(Clone, Debug)]
pub struct ScanOpts {
    /// The sparsefs backing root (where the sidecar records live); not needed through
    /// a mount.
    pub root: Option<PathBuf>,
    /// Zero-detection block.
    pub block: u64,
    /// Punch the zero blocks found.
    pub dig: bool,
    /// Report only; change nothing.
    pub dry_run: bool,
}

/// True if `p` is on a sparsefs mount (by mountinfo; nothing on the mount is touched).
pub fn on_sparsefs(p: &Path) -> bool {
    let Ok(abs) = std::fs::canonicalize(p) else {
        return false;
    };
    crate::mountinfo::containing(&abs).is_some_and(|m| m.fstype == "fuse.sparsefs")
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let md = std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if md.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|q| {
                q.file_name()
                    .is_none_or(|n| n != crate::persist::SIDECAR_DIR)
            })
            .collect();
        entries.sort();
        for q in entries {
            collect(&q, out)?;
        }
    } else if md.is_file() {
        out.push(p.to_path_buf());
    }
    Ok(())
}

/// Reads `f` once, 1 MiB at a time, and sorts its `block`-sized blocks into data and
/// all-zero ones; a progress line on a terminal.
fn zero_blocks(
    f: &File,
    p: &Path,
    size: u64,
    block: u64,
    bar: &ProgressBar,
) -> Result<(RangeSet, RangeSet), String> {
    let mut data = RangeSet::new();
    let mut zero_runs = RangeSet::new();
    let mut buf = vec![0u8; (1u64 << 20).max(block) as usize];
    let mut off = 0u64;
    while off < size {
        let n = f
            .read_at(&mut buf, off)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].chunks(block as usize).enumerate() {
            let s = off + i as u64 * block;
            let e = s + b.len() as u64;
            if is_zero(b) {
                zero_runs.insert(s, e)
            } else {
                data.insert(s, e)
            }
        }
        off += n as u64;
        bar.inc(n as u64);
    }
    // A file that shrank while read: the bar counts its whole size.
    bar.inc(size.saturating_sub(off));
    let _ = p;
    Ok((data, zero_runs))
}

/// The progress bar of a scan over `files` (bytes of all of them, rate, ETA; the file and
/// its number in the message), drawn on stderr only when it is a terminal: scripts see
/// only the per-file lines and the summary on stdout.
fn scan_bar(files: &[PathBuf]) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let total = files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} {wide_msg} [{bar:24}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Starts file `i` of `n` on `bar`.
fn bar_file(bar: &ProgressBar, i: usize, n: usize, p: &Path) {
    bar.set_prefix(format!("{}/{n}", i + 1));
    bar.set_message(p.display().to_string());
}

/// Opens a file to scan (read-write when it will be dug); returns it with its size.
fn open_for_scan(p: &Path, o: &ScanOpts) -> Result<(File, u64), String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(o.dig && !o.dry_run)
        .open(p)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    Ok((f, size))
}

/// `sparsefs scan PATH...`: reads each file once (1 MiB at a time), finds its all-zero
/// blocks, optionally punches them (`--dig`), and stores the map for mounts to use.
///
/// # Errors
/// A one-line message.
pub fn scan(paths: &[PathBuf], o: &ScanOpts) -> Result<(), String> {
    let mounted = paths.iter().filter(|p| on_sparsefs(p)).count();
    if mounted == paths.len() && mounted > 0 {
        return scan_mounted(paths, o);
    }
    if mounted > 0 {
        return Err(
            "give either paths on a sparsefs mount or paths on its backing directory, not both"
                .into(),
        );
    }
    let Some(root_path) = &o.root else {
        return Err("give the backing root with --root (or scan through the mount)".into());
    };
    let root_file =
        File::open(root_path).map_err(|e| format!("backing root {}: {e}", root_path.display()))?;
    let root: OwnedFd = root_file.into();
    let root_canon = std::fs::canonicalize(root_path).map_err(|e| e.to_string())?;
    let persist = Persist::new(
        root.as_fd(),
        MapStore::Xattr,
        &crate::backend::meta::SysMeta,
        sys::handles_outlive_the_mount(root.as_fd()),
    );
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files)?;
    }
    let bar = scan_bar(&files);
    let (mut total, mut total_zero, mut punched) = (0u64, 0u64, 0u64);
    for (i, p) in files.iter().enumerate() {
        bar_file(&bar, i, files.len(), p);
        let canon = std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !canon.starts_with(&root_canon) {
            return Err(format!(
                "{} is not under the backing root {}",
                p.display(),
                root_path.display()
            ));
        }
        let (f, size) = open_for_scan(p, o)?;
        let (data, zero_runs) = zero_blocks(&f, p, size, o.block, &bar)?;
        let zero = zero_runs.total();
        total += size;
        total_zero += zero;
        if !o.dry_run {
            if o.dig {
                for (s, e) in zero_runs.iter() {
                    let fd = f.as_fd();
                    let be = crate::backend::fd::FdFile::new(File::from(
                        sys::reopen(fd, libc::O_RDWR).map_err(|e| e.to_string())?,
                    ));
                    if crate::backend::BackendFile::punch_hole(&be, s, e - s).is_ok() {
                        punched += e - s;
                    }
                }
            }
            if zero > 0 {
                let birth = persist.birth(f.as_fd(), None);
                persist
                    .store(f.as_fd(), &data, birth)
                    .map_err(|e| format!("{}: storing the map: {e}", p.display()))?;
            }
        }
        bar.suspend(|| {
            println!(
                "{}: {} data in {} extents, {} in zero blocks{}",
                p.display(),
                human(size - zero),
                data.len(),
                human(zero),
                if o.dry_run { " (dry run)" } else { "" }
            );
        });
    }
    bar.finish_and_clear();
    println!(
        "scanned {} files, {}: {} in zero blocks{}",
        files.len(),
        human(total),
        human(total_zero),
        if o.dig {
            format!(", {} punched", human(punched))
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Bytes asked of the daemon per scan request (the progress step).
const SCAN_STEP: u64 = 64 << 20;

/// `sparsefs scan` of paths on a mounted sparsefs: the daemon reads each file from the
/// backend and records its zero blocks (of the mount's sparse block) as holes, asked
/// through [`crate::fs::SCAN_XATTR`] on the open file, 64 MiB per request; the map is
/// persisted when the file is closed. `--dry-run` only reads through the mount and
/// counts zero blocks of `--block`.
fn scan_mounted(paths: &[PathBuf], o: &ScanOpts) -> Result<(), String> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files)?;
    }
    let bar = scan_bar(&files);
    let name = std::ffi::CString::new(crate::fs::SCAN_XATTR).expect("no NUL");
    let (mut total, mut total_zero) = (0u64, 0u64);
    for (i, p) in files.iter().enumerate() {
        bar_file(&bar, i, files.len(), p);
        let (f, size) = open_for_scan(p, o)?;
        let (data, extents) = if o.dry_run {
            let (data, _) = zero_blocks(&f, p, size, o.block, &bar)?;
            (data.total(), data.len())
        } else {
            let mut off = 0u64;
            while off < size {
                let len = SCAN_STEP.min(size - off);
                let req = if o.dig {
                    format!("{off} {len} dig")
                } else {
                    format!("{off} {len}")
                };
                sys::setxattr(f.as_fd(), &name, req.as_bytes(), 0).map_err(|e| {
                    match e.raw_os_error() {
                        Some(libc::EACCES | libc::EPERM) => format!(
                            "{}: {e} (scanning needs write access to the file)",
                            p.display()
                        ),
                        _ => format!("{}: scan request failed: {e}", p.display()),
                    }
                })?;
                off += len;
                bar.inc(len);
            }
            let runs = data_runs(&f, size);
            (runs.iter().map(|(s, e)| e - s).sum(), runs.len())
        };
        let zero = size - data.min(size);
        total += size;
        total_zero += zero;
        bar.suspend(|| {
            println!(
                "{}: {} data in {} extents, {} in holes or zero blocks{}",
                p.display(),
                human(data),
                extents,
                human(zero),
                if o.dry_run { " (dry run)" } else { "" }
            );
        });
    }
    bar.finish_and_clear();
    println!(
        "scanned {} files through the mount, {}: {} in holes or zero blocks{}",
        files.len(),
        human(total),
        human(total_zero),
        if o.dig && !o.dry_run {
            " (zero blocks punched where the backend can)"
        } else {
            ""
        }
    );
    Ok(())
}

/// `sparsefs gc ROOT`: walks the backing tree once (without following symlinks or
/// crossing into other filesystems), then removes every sidecar record whose inode no
/// regular file has any more, and temporary records left by interrupted writes. A
/// record removed by mistake (a race with a new file) only costs its map: the file is
/// then treated as data.
///
/// # Errors
/// A one-line message.
pub fn gc(root: &Path, dry_run: bool, min_age: std::time::Duration) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let rmd = std::fs::metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
    if !rmd.is_dir() {
        return Err(format!("{} is not a directory", root.display()));
    }
    if on_sparsefs(root) {
        return Err(format!(
            "{} is on a sparsefs mount: give the backing directory",
            root.display()
        ));
    }
    let side = root.join(crate::persist::SIDECAR_DIR);
    let entries = match std::fs::read_dir(&side) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no stored maps under {}", root.display());
            return Ok(());
        }
        Err(e) => return Err(format!("{}: {e}", side.display())),
    };
    let started = std::time::SystemTime::now();
    let mut live = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    // The walk's progress (files and directories seen, rate) on a terminal only.
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} walking the tree: {pos} files, {per_sec} {wide_msg}",
            )
            .expect("a valid template"),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    } else {
        ProgressBar::hidden()
    };
    while let Some(d) = stack.pop() {
        bar.set_message(d.display().to_string());
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if d == root && e.file_name() == crate::persist::SIDECAR_DIR {
                continue;
            }
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.dev() != rmd.dev() {
                continue;
            }
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                live.insert(md.ino());
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let (mut kept, mut removed) = (0u64, 0u64);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let young = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| started.duration_since(t).unwrap_or_default() < min_age);
        let stale = match name.parse::<u64>() {
            Ok(ino) => !live.contains(&ino),
            // `INO.tmpPID`: a record whose writer died before renaming it.
            Err(_) => name.contains(".tmp"),
        };
        if stale && !young {
            if !dry_run {
                std::fs::remove_file(e.path())
                    .map_err(|err| format!("{}: {err}", e.path().display()))?;
            }
            removed += 1;
        } else {
            kept += 1;
        }
    }
    println!(
        "{}: {} files, removed {removed} stale map records{}, kept {kept}",
        root.display(),
        live.len(),
        if dry_run { " (dry run)" } else { "" }
    );
    Ok(())
}
