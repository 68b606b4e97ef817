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

/// Gives memory back to the system after the kernel forgot many inodes (a tree walk or a
/// copy of a big tree, then memory pressure or `drop_caches`): the inode table's spare
/// room, then the allocator's free pages (`malloc_trim`: glibc keeps freed memory in its
/// arenas, so a daemon that once knew 1,000,000 files stayed at 2 GiB). Only once the
/// kernel's forgets have stopped (the table no smaller than at the last round: they come
/// in bursts) and the table holds at most half its peak since the last trim and
/// `TRIM_FORGOTTEN` fewer. Called by the flusher thread between its rounds, holding no
/// lock.
fn give_back_memory(sh: &Shared, last: &mut usize) {
    let n = sh.inodes.len();
    let falling = n < *last;
    *last = n;
    let peak = sh.inodes.peak().max(n);
    if falling || peak - n < TRIM_FORGOTTEN || n > peak / 2 {
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
    let mut last = 0;
    while !sh.stop.load(Relaxed) {
        {
            let mut g = sh.wake_lock.lock();
            sh.wake.wait_for(&mut g, tick);
        }
        give_back_memory(sh, &mut last);
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
