//! Where a file's data runs come from, cheapest first: the index of the sparsefs mount
//! it is on (one xattr request per ~1400 runs, answered by the daemon), the
//! filesystem's SEEK_DATA/SEEK_HOLE where a probe found them truthful, or nowhere (the
//! whole file is read and scanned for zero blocks).

use crate::sys;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Where the runs of a file came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunsFrom {
    /// The sparsefs mount's extent index, through the daemon.
    MountIndex,
    /// SEEK_DATA/SEEK_HOLE of a filesystem whose probe showed them truthful.
    Seek,
    /// No trusted map: every byte is read and scanned for zero blocks.
    ZeroScan,
}

impl RunsFrom {
    /// The name in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Self::MountIndex => "mount-index",
            Self::Seek => "seek",
            Self::ZeroScan => "zero-scan",
        }
    }
}

/// Finds data runs, probing each filesystem (by device) once.
#[derive(Default)]
pub struct RunFinder {
    seek_ok: HashMap<u64, bool>,
    /// Requests made to mounts (runs xattr reads), for tests and summaries.
    pub mount_requests: u64,
}

impl RunFinder {
    /// The data runs of `f` (open, at `path`) below `size`, and where they came from.
    pub fn runs(&mut self, f: &File, path: &Path, size: u64) -> (Vec<(u64, u64)>, RunsFrom) {
        if size == 0 {
            return (Vec::new(), RunsFrom::Seek);
        }
        if crate::tools::on_sparsefs(path) {
            if let Some(r) = self.ask_mount(f, size) {
                return (r, RunsFrom::MountIndex);
            }
            // An older daemon without the runs xattr: its lseek answers from the index too.
            return (crate::tools::data_runs(f, size), RunsFrom::Seek);
        }
        let dev = f.metadata().map(|m| m.dev()).unwrap_or(u64::MAX);
        let ok = *self.seek_ok.entry(dev).or_insert_with(|| {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.unwrap_or(Path::new("."));
            File::open(dir)
                .map(|d| crate::fs::probe_caps(d.as_fd()).seek)
                .unwrap_or(false)
        });
        if ok {
            (crate::tools::data_runs(f, size), RunsFrom::Seek)
        } else {
            (vec![(0, size)], RunsFrom::ZeroScan)
        }
    }

    /// Asks the daemon for the runs through [`crate::fs::RUNS_XATTR`]; `None` if it
    /// cannot answer.
    fn ask_mount(&mut self, f: &File, size: u64) -> Option<Vec<(u64, u64)>> {
        let mut runs = Vec::new();
        let mut from = 0u64;
        loop {
            let name = std::ffi::CString::new(format!("{}{from}", crate::fs::RUNS_XATTR)).ok()?;
            self.mount_requests += 1;
            let v = sys::getxattr(f.as_fd(), &name, 64 * 1024).ok()?;
            let text = std::str::from_utf8(&v).ok()?;
            let mut lines = text.lines();
            let mut head = lines.next()?.split_ascii_whitespace();
            let (msize, next): (u64, u64) =
                (head.next()?.parse().ok()?, head.next()?.parse().ok()?);
            for l in lines {
                let mut it = l.split_ascii_whitespace();
                let (s, e): (u64, u64) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
                runs.push((s, e.min(size)));
            }
            if next >= msize || next <= from {
                // A size changed under us is the caller's to find (a short read).
                let _ = msize;
                return Some(runs.into_iter().filter(|(s, e)| s < e).collect());
            }
            from = next;
        }
    }
}
