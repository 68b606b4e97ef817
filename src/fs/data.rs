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

    /// write: buffered in the file's coalescer; `O_SYNC`/`O_DSYNC` handles flush and
    /// sync before returning.
    ///
    /// # Errors
    /// An error of this or an earlier background flush of the file.
    ///
    /// Returns the bytes taken and whether backend writes are ready to run: the adapter
    /// replies first and then calls [`Self::after_write`], so the backend write overlaps
    /// the application's next write (an error there is returned by the file's next
    /// write, close or fsync).
    pub fn write(
        &self,
        ino: Ino,
        fh: Fh,
        off: u64,
        data: &[u8],
        flags: i32,
        clear_setid: bool,
    ) -> io::Result<(u32, bool)> {
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
                self.sh.dirty.lock().insert(ino, node.clone());
            }
            // A bypassed file's change is flushed whole by `change` (only copy_file_range
            // writes through the engine of one): nothing is left for after the reply.
            Ok(pending && !state.with(|s| s.bypassed()))
        })?;
        Ok((data.len() as u32, pending))
    }

    /// Runs the backend writes a [`Self::write`] found ready, after its reply.
    pub fn after_write(&self, fh: Fh) {
        if let Ok((_, node, _)) = self.file(fh) {
            node.with_engine(|e, _| e.run_pending_deferred());
        }
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

    /// fallocate: mode 0 / KEEP_SIZE passed through; PUNCH_HOLE and ZERO_RANGE made
    /// real through the index (punch where the backend truly punches, else zeros).
    ///
    /// # Errors
    /// `EOPNOTSUPP` for unsupported modes (never `ENOSYS`), the backend's errno.
    pub fn fallocate(&self, fh: Fh, off: u64, len: u64, mode: i32) -> io::Result<()> {
        let (_, node, _) = self.file(fh)?;
        node.change(|e, state| {
            state.with(|s| s.changed());
            self.fallocate_engine(e, off, len, mode)
        })
    }

    pub(super) fn fallocate_engine(
        &self,
        e: &mut SparseFile,
        off: u64,
        len: u64,
        mode: i32,
    ) -> io::Result<()> {
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            if !keep || mode & !(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) != 0 {
                return Err(errno(libc::EOPNOTSUPP));
            }
            e.make_zero(off, len, true)
        } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            e.make_zero(off, len, keep)
        } else if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            Err(errno(libc::EOPNOTSUPP))
        } else {
            e.allocate(mode, off, len)
        }
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
            if self
                .write(ino_out, fh_out, off_out + done, &data, 0, false)?
                .1
            {
                self.after_write(fh_out);
            }
            done += data.len() as u64;
        }
        Ok(done as u32)
    }
}
