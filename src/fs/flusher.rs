//! When data leaves the buffers, above each file's engine: every flush decision that is
//! not the engine's own (its complete windows, a stream moving on, its per-file limit)
//! is made here. After a write: `O_SYNC`/`O_DSYNC` flushes and syncs, the global dirty
//! limit flushes the written file's data, a file left dirty goes on the flusher's list.
//! In the background: the flusher thread flushes files whose oldest unflushed write is
//! older than the dirty age, and everything while over the global limit. Close, fsync,
//! truncate, fallocate and unmount flush fully where they happen.

use super::*;

/// Per-file buffer limit for a mount-wide limit `max_dirty`: a quarter of it, at least
/// one write-size window (so a file always completes a window before it must flush).
pub fn per_file_limit(max_dirty: u64, write_size: u64) -> u64 {
    (max_dirty / 4).max(write_size)
}

impl SparseFs {
    /// The flush decisions after a write was buffered into `e` (the file's engine, locked
    /// by the caller): see the module docs.
    pub(super) fn after_buffer(
        &self,
        ino: Ino,
        node: &Arc<FileNode>,
        e: &mut SparseFile,
        flags: i32,
    ) -> io::Result<()> {
        if flags & libc::O_DSYNC != 0 {
            let depth = if flags & libc::O_SYNC == libc::O_SYNC {
                Depth::Sync
            } else {
                Depth::DataSync
            };
            e.flush(depth, Trigger::Fsync)?;
        } else if self.sh.stats.dirty_bytes.load(Relaxed) > self.sh.cfg.max_dirty {
            e.flush(Depth::Data, Trigger::DirtyLimit)?;
        }
        if e.is_dirty() {
            // A node it replaces is dropped after the lock (its last reference closes
            // a backend fd).
            let replaced = self.sh.dirty.lock().insert(ino, node.clone());
            drop(replaced);
        }
        Ok(())
    }
}

/// Inodes the kernel must have forgotten since the table's peak before the daemon gives
/// memory back (560 B each for a name only looked up, up to 2.5 KiB for a file written
/// through the mount: 9-40 MiB).
const TRIM_FORGOTTEN: usize = 16 << 10;

/// The same for a trim that follows one made while the forgets had only paused (the
/// table has not grown since): the rest of the burst (0.5-2.5 MiB).
const TRIM_FOLLOW_UP: usize = 1 << 10;

/// What the flusher remembers between its rounds for [`give_back_memory`].
#[derive(Debug, Default)]
pub(super) struct TrimWatch {
    /// Inodes known at the last round.
    last: usize,
    /// Inodes known at the last trim.
    trimmed_at: Option<usize>,
}

impl TrimWatch {
    /// Whether to give memory back now, with `n` inodes known and `peak` the most known
    /// since the last trim (records the round, and the trim if it says yes): only once
    /// the kernel's forgets have stopped (the table no smaller than at the last round:
    /// they come in bursts) and the table holds at most half its peak and
    /// [`TRIM_FORGOTTEN`] fewer, or [`TRIM_FOLLOW_UP`] fewer where the last trim came in
    /// a pause of the same burst (under CPU load `drop_caches` sent 40,000 forgets with a
    /// pause of over a second, and the rest of the burst was never given back).
    pub(super) fn trim_now(&mut self, n: usize, peak: usize) -> bool {
        let falling = n < self.last;
        self.last = n;
        let peak = peak.max(n);
        let need = match self.trimmed_at {
            Some(t) if peak <= t => TRIM_FOLLOW_UP,
            _ => TRIM_FORGOTTEN,
        };
        if falling || peak - n < need || n > peak / 2 {
            return false;
        }
        self.trimmed_at = Some(n);
        true
    }
}

/// Gives memory back to the system after the kernel forgot many inodes (a tree walk or a
/// copy of a big tree, then memory pressure or `drop_caches`): the inode table's spare
/// room, then the allocator's free pages (`malloc_trim`: glibc keeps freed memory in its
/// arenas, so a daemon that once knew 1,000,000 files stayed at 2 GiB). When, see
/// [`TrimWatch::trim_now`]. Called by the flusher thread between its rounds, holding no
/// lock.
fn give_back_memory(sh: &Shared, watch: &mut TrimWatch) {
    let n = sh.inodes.len();
    if !watch.trim_now(n, sh.inodes.peak()) {
        return;
    }
    sh.inodes.take_peak(n);
    sh.inodes.shrink();
    crate::sys::give_back_free_memory();
    sh.stats.memory_trims.fetch_add(1, Relaxed);
}

/// The background flusher thread's loop (ends when the mount stops).
pub(super) fn flusher(sh: &Shared) {
    let tick = (sh.cfg.dirty_age / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut watch = TrimWatch::default();
    while !sh.stop.load(Relaxed) {
        {
            let mut g = sh.wake_lock.lock();
            sh.wake.wait_for(&mut g, tick);
        }
        give_back_memory(sh, &mut watch);
        sh.sidecar.expire();
        let now = Instant::now();
        let over = sh.stats.dirty_bytes.load(Relaxed) > sh.cfg.max_dirty;
        let nodes: Vec<(Ino, Arc<FileNode>)> = sh
            .dirty
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (ino, node) in nodes {
            node.with_engine(|e, _| {
                let old = e
                    .dirty_since()
                    .is_some_and(|t| now.duration_since(t) >= sh.cfg.dirty_age);
                if old || over {
                    if over {
                        e.flush_background(Trigger::DirtyLimit, Duration::ZERO);
                    } else {
                        e.flush_background(Trigger::Age, sh.cfg.dirty_age);
                    }
                }
                if e.dirty_since().is_none() {
                    // Only this node's entry (another node may have taken the number's
                    // place), dropped after the lock.
                    let mut d = sh.dirty.lock();
                    let gone = d
                        .get(&ino)
                        .is_some_and(|n| Arc::ptr_eq(n, &node))
                        .then(|| d.remove(&ino));
                    drop(d);
                    drop(gone);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_given_back_once_a_burst_of_forgets_stops_and_again_after_a_pause_in_it() {
        let mut w = TrimWatch::default();
        // A walk: the table grows to 40,000; nothing to give back.
        assert!(!w.trim_now(20_000, 20_000));
        assert!(!w.trim_now(40_000, 40_000));
        // The forgets come: no trim while the table is falling.
        assert!(!w.trim_now(30_000, 40_000));
        assert!(!w.trim_now(15_000, 40_000));
        // They pause: the table is steady, at most half its peak, 25,000 fewer.
        assert!(w.trim_now(15_000, 40_000));
        // The peak starts again from 15,000 (take_peak). The rest of the burst comes:
        // 14,999 fewer is under TRIM_FORGOTTEN but the table has not grown since.
        assert!(!w.trim_now(1, 15_000));
        assert!(w.trim_now(1, 15_000));
        // Nothing more to give back.
        assert!(!w.trim_now(1, 1));
        // Small changes never trim; a table that grew again needs TRIM_FORGOTTEN.
        assert!(!w.trim_now(900, 900));
        assert!(!w.trim_now(1, 900));
        assert!(!w.trim_now(1, 900));
        assert!(!w.trim_now(30_000, 30_000));
        assert!(!w.trim_now(14_000, 30_000));
        assert!(!w.trim_now(14_000, 30_000));
        assert!(!w.trim_now(13_000, 30_000));
        assert!(w.trim_now(13_000, 30_000));
    }
}
