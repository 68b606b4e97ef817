//! Data operations on open handles: read, write, flush at close, fsync, lseek(SEEK_DATA/SEEK_HOLE), fallocate, copy_file_range, truncate.

use super::*;

impl SparseFs {
    /// Truncates a file through its engine.
    pub(super) fn truncate_node(&self, node: &FileNode, size: u64) -> io::Result<()> {
        node.change(|e, state| {
            if e.size() != size || e.is_dirty() {
                state.with(|s| s.changed());
            }
            e.truncate(size)
        })
    }

    /// read: holes known to the index are zeros without backend I/O.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn read(&self, fh: Fh, off: u64, size: u32) -> io::Result<Vec<u8>> {
        let (_, node, _) = self.file(fh)?;
        node.read(|e| e.read(off, size as usize))
    }

    /// write: buffered in the file's coalescer; the flush decisions after it are the
    /// flusher's (`after_buffer` in fs/flusher.rs): `O_SYNC`/`O_DSYNC` handles flush and sync
    /// before returning.
    ///
    /// # Errors
    /// An error of this or an earlier background flush of the file.
    ///
    /// Backend writes found ready (complete windows) are left in [`Written::then`]: the
    /// adapter replies first and then runs them, so the backend write overlaps the
    /// application's next write (an error there is returned by the file's next write,
    /// close or fsync).
    pub fn write(
        &self,
        ino: Ino,
        fh: Fh,
        off: u64,
        data: &[u8],
        flags: i32,
        clear_setid: bool,
    ) -> io::Result<Written> {
        let (inode, node, hflags) = self.file(fh)?;
        let flags = flags | hflags;
        if self.sh.frozen.load(Relaxed) {
            return Err(errno(libc::EIO));
        }
        if clear_setid && node.with_state(|s| s.setid()) {
            self.clear_setid(&inode, &node)?;
        }
        let pending = node.change(|e, state| {
            state.with(|s| s.changed());
            let pending = e.buffer(off, data)?;
            self.after_buffer(ino, &node, e, flags)?;
            // A bypassed file's change is flushed whole by `change` (only copy_file_range
            // writes through the engine of one): nothing is left for after the reply.
            Ok(pending && !state.with(|s| s.bypassed()))
        })?;
        Ok(Written {
            n: data.len() as u32,
            then: pending.then_some(AfterWrite(node)),
        })
    }

    /// flush (each close of a descriptor): everything reaches the backend, so errors
    /// reach close(2).
    ///
    /// # Errors
    /// The backend's errno, or one kept from a background flush.
    pub fn flush(&self, fh: Fh) -> io::Result<()> {
        let (inode, node, _) = self.file(fh)?;
        self.close_flush(&inode, &node)
    }

    /// fsync / fdatasync: flushed data and the backend file are synced.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn fsync(&self, fh: Fh, datasync: bool) -> io::Result<()> {
        let (_, node, _) = self.file(fh)?;
        let depth = if datasync {
            Depth::DataSync
        } else {
            Depth::Sync
        };
        node.with_engine(|e, _| e.flush(depth, Trigger::Fsync))
    }

    /// lseek SEEK_DATA / SEEK_HOLE from the extent index.
    ///
    /// # Errors
    /// `ENXIO` past the last data (SEEK_DATA) or at/after EOF; `EINVAL` for other whence.
    pub fn lseek(&self, fh: Fh, off: i64, whence: i32) -> io::Result<i64> {
        let (_, node, _) = self.file(fh)?;
        if off < 0 {
            return Err(errno(libc::ENXIO));
        }
        let w = match whence {
            libc::SEEK_DATA => Whence::Data,
            libc::SEEK_HOLE => Whence::Hole,
            _ => return Err(errno(libc::EINVAL)),
        };
        node.change(|e, _| e.seek(off as u64, w))?
            .map(|x| x as i64)
            .ok_or_else(|| errno(libc::ENXIO))
    }

    /// fallocate, as a block filesystem answers it:
    /// - `PUNCH_HOLE|KEEP_SIZE`: the range deallocated, where the mount's probe found the
    ///   backend really punches; else `EOPNOTSUPP`, as the backend itself answers, for
    ///   buffered and flushed ranges alike (so callers take their own fallback instead of
    ///   believing space was freed);
    /// - `ZERO_RANGE` (with or without `KEEP_SIZE`): reads as zeros afterwards, by punching
    ///   where the backend punches, else by writing zeros (its contract allows either;
    ///   GlusterFS's own ZERO_RANGE is never used: it lies);
    /// - mode 0 and `KEEP_SIZE`: passed to the backend (`EOPNOTSUPP` where it has none);
    /// - anything else: `EOPNOTSUPP`.
    ///
    /// # Errors
    /// `EOPNOTSUPP` as above (never `ENOSYS`), the backend's errno.
    pub fn fallocate(&self, fh: Fh, off: u64, len: u64, mode: i32) -> io::Result<()> {
        let (_, node, _) = self.file(fh)?;
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        let supported = if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            mode == punch && self.sh.caps.punch
        } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            mode & !zero == 0
        } else {
            mode & !libc::FALLOC_FL_KEEP_SIZE == 0
        };
        if !supported {
            return Err(errno(libc::EOPNOTSUPP));
        }
        node.change(|e, state| {
            state.with(|s| s.changed());
            let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
            if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
                e.make_zero(off, len, keep)
            } else {
                e.allocate(mode, off, len)
            }
        })
    }

    /// copy_file_range through the sparse engines: zeros in the source stay holes.
    ///
    /// # Errors
    /// The backend's errno.
    pub fn copy_file_range(
        &self,
        fh_in: Fh,
        off_in: u64,
        ino_out: Ino,
        fh_out: Fh,
        off_out: u64,
        len: u64,
    ) -> io::Result<u32> {
        let len = len.min(1 << 30);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(1 << 20) as u32;
            let data = self.read(fh_in, off_in + done, n)?;
            if data.is_empty() {
                break;
            }
            let w = self.write(ino_out, fh_out, off_out + done, &data, 0, false)?;
            if let Some(then) = w.then {
                then.run();
            }
            done += data.len() as u64;
        }
        Ok(done as u32)
    }
}

/// What a [`SparseFs::write`] took, and the backend writes it found ready.
pub struct Written {
    /// Bytes taken.
    pub n: u32,
    /// Backend writes to run after the reply.
    pub then: Option<AfterWrite>,
}

/// Backend writes of complete windows, to run after the write's reply.
pub struct AfterWrite(Arc<FileNode>);

impl AfterWrite {
    /// Runs them; an error is kept for the file's next write, fsync or close.
    pub fn run(self) {
        self.0.with_engine(|e, _| e.run_pending_deferred());
    }
}
