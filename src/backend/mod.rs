//! The backend seam: every data call sparsefs makes on a backing file goes through
//! [`BackendFile`], so the sparse engine can run over a real fd ([`fd::FdFile`]), an
//! in-memory file with real hole semantics ([`mem::MemFile`]), a counting decorator
//! ([`counting::Counting`]) or a fault injector ([`fault::Faulty`]).

pub mod counting;
pub mod fault;
pub mod fd;
pub mod mem;
pub mod meta;
pub mod reopen;

use std::io::{self, IoSlice};

/// Where `seek_data`/`seek_hole` look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whence {
    /// `SEEK_DATA`
    Data,
    /// `SEEK_HOLE`
    Hole,
}

/// Data operations on one backing file. Offsets are absolute (positional I/O: no call
/// ever moves a file offset, so gaps between writes cost nothing).
///
/// Errors are the backend's own (`EIO`, `ENOSPC`, `EOPNOTSUPP`, ...), passed through
/// untouched so the application sees the real errno.
pub trait BackendFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `off`; returns fewer only at end of file.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    /// Writes all of `bufs` contiguously at `off` (one call where the backend allows;
    /// short writes are continued). Errors: `EIO`, `ENOSPC`, `EDQUOT`, `EFBIG`.
    fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()>;
    /// Writes `buf` (page aligned, a multiple of 4 KiB long, at a 4 KiB aligned `off`)
    /// through a descriptor opened with `O_DIRECT` for this call, bypassing the backend
    /// client's page cache; `Ok(false)` where this backend does not do that (the caller
    /// writes with [`Self::write_all_at`]). On a FUSE client the kernel sends one such
    /// write as several requests at once, where buffered writes of a file go one
    /// request after another. Errors: as `write_all_at`, and `EINVAL` where the backend
    /// refuses `O_DIRECT`.
    fn write_direct_at(&self, _buf: &[u8], _off: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// Closes the `O_DIRECT` descriptor [`Self::write_direct_at`] keeps between writes
    /// (the file's window writes are done).
    fn release_direct(&self) {}
    /// `fallocate(PUNCH_HOLE|KEEP_SIZE)`: afterwards `[off, off+len)` must read as zeros
    /// (callers verify that the backend really does this before relying on it).
    /// Errors: `EOPNOTSUPP` where the backend cannot punch.
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()>;
    /// `fallocate(mode)` passed through (mode 0, `KEEP_SIZE`, `ZERO_RANGE`).
    fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()>;
    /// `ftruncate`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fsync` (or `fdatasync` when `datasync`).
    fn sync(&self, datasync: bool) -> io::Result<()>;
    /// Current size on the backend.
    fn size(&self) -> io::Result<u64>;
    /// `(st_dev, st_ino)` of the open file, fresh from the backend (what file this
    /// descriptor holds). Errors: `EOPNOTSUPP` for backends that are not files.
    fn identity(&self) -> io::Result<(u64, u64)> {
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
    /// `lseek(SEEK_DATA/SEEK_HOLE)`; `Ok(None)` for ENXIO. Errors: `EOPNOTSUPP`, `EINVAL`
    /// on backends without it. Answers are only trusted after a probe.
    fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>>;
    /// Bytes the backend says it has allocated to the file (`st_blocks * 512`), fresh;
    /// `Ok(None)` where the backend cannot tell (only the mount probe asks).
    fn allocated(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }
    /// Closes the file and says what the close found: NFS reports write-back errors
    /// (`EIO`, `ENOSPC`, `EDQUOT`) at close. Dropping a file closes it without asking.
    fn close(self: Box<Self>) -> io::Result<()> {
        Ok(())
    }
}

/// A shared backend (tests keep a handle to check what the engine wrote).
impl<T: BackendFile + ?Sized> BackendFile for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        (**self).read_at(buf, off)
    }
    fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
        (**self).write_all_at(bufs, off)
    }
    fn write_direct_at(&self, buf: &[u8], off: u64) -> io::Result<bool> {
        (**self).write_direct_at(buf, off)
    }
    fn release_direct(&self) {
        (**self).release_direct();
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        (**self).punch_hole(off, len)
    }
    fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        (**self).allocate(mode, off, len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn sync(&self, datasync: bool) -> io::Result<()> {
        (**self).sync(datasync)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
    fn identity(&self) -> io::Result<(u64, u64)> {
        (**self).identity()
    }
    fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>> {
        (**self).seek(off, whence)
    }
    fn allocated(&self) -> io::Result<Option<u64>> {
        (**self).allocated()
    }
}

/// What the backing filesystem was found to really do, by writing, calling and reading
/// back on a scratch file at mount time ([`probe`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// `PUNCH_HOLE` returned success, the range then read back as zeros and the data
    /// around it did not, and the backend's allocation (`st_blocks`) shrank, where it
    /// reports one: a punch that zeros without freeing is no punch (issue 16).
    pub punch: bool,
    /// `SEEK_DATA`/`SEEK_HOLE` reported a known layout correctly (a real hole inside
    /// the file, not just the virtual one at EOF).
    pub seek: bool,
    /// Window writes go through `O_DIRECT` descriptors
    /// ([`BackendFile::write_direct_at`]): an aligned `O_DIRECT` write read back right
    /// through the ordinary descriptor, and chosen for this backing (`--direct-writes`).
    pub direct: bool,
}

/// Probes `f` (an empty scratch file opened read-write) for working punch and seek.
/// The file is left with unspecified contents.
pub fn probe(f: &dyn BackendFile) -> Caps {
    const K: u64 = 64 * 1024;
    let pattern = vec![0xA5u8; (3 * K) as usize];
    let mut caps = Caps::default();
    // Punch: write 3 chunks (synced, so the allocation is settled), punch the middle,
    // read back, and look whether the allocation shrank.
    let written = f.write_all_at(&[IoSlice::new(&pattern)], 0).is_ok() && f.sync(true).is_ok();
    let before = f.allocated().ok().flatten();
    if written && f.punch_hole(K, K).is_ok() {
        let mut back = vec![1u8; (3 * K) as usize];
        let after = f
            .sync(true)
            .ok()
            .and_then(|()| f.allocated().ok().flatten());
        let freed = match (before, after) {
            (Some(b), Some(a)) => a < b,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if matches!(f.read_at(&mut back, 0), Ok(n) if n == back.len()) {
            let (a, rest) = back.split_at(K as usize);
            let (b, c) = rest.split_at(K as usize);
            let zeroed = a.iter().all(|&x| x == 0xA5)
                && crate::zero::is_zero(b)
                && c.iter().all(|&x| x == 0xA5);
            if zeroed && !freed {
                tracing::warn!(
                    ?before,
                    ?after,
                    "the backend's PUNCH_HOLE zeros but frees nothing: treated as no punch"
                );
            }
            caps.punch = zeroed && freed;
        }
    }
    // Seek: data [0, K), a hole of 16 MiB, data at the end. A fake implementation says
    // "all data, hole at EOF"; a broken one errors.
    let far = 16 * 1024 * 1024 + K;
    let ok = f.set_len(0).is_ok()
        && f.write_all_at(&[IoSlice::new(&pattern[..K as usize])], 0)
            .is_ok()
        && f.write_all_at(&[IoSlice::new(&pattern[..K as usize])], far)
            .is_ok()
        && f.sync(true).is_ok();
    if ok {
        let hole = f.seek(0, Whence::Hole);
        let data = f.seek(K, Whence::Data);
        let end = f.seek(far + K, Whence::Data);
        caps.seek = matches!(hole, Ok(Some(h)) if (K..=2 * K).contains(&h))
            && matches!(data, Ok(Some(d)) if (far - K..=far).contains(&d))
            && matches!(end, Ok(None));
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;
    use mem::MemFile;

    /// A backend whose PUNCH_HOLE zeros the range but keeps it allocated (as some
    /// servers and FUSE exports do): reads say "punched", st_blocks says otherwise.
    struct ZerosWithoutFreeing(MemFile);

    impl BackendFile for ZerosWithoutFreeing {
        fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
            self.0.read_at(buf, off)
        }
        fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
            self.0.write_all_at(bufs, off)
        }
        fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
            self.0
                .write_all_at(&[IoSlice::new(&vec![0; len as usize])], off)
        }
        fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
            self.0.allocate(mode, off, len)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.set_len(len)
        }
        fn sync(&self, datasync: bool) -> io::Result<()> {
            self.0.sync(datasync)
        }
        fn size(&self) -> io::Result<u64> {
            BackendFile::size(&self.0)
        }
        fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>> {
            self.0.seek(off, whence)
        }
        fn allocated(&self) -> io::Result<Option<u64>> {
            BackendFile::allocated(&self.0)
        }
    }

    #[test]
    fn the_probe_believes_only_what_it_saw() {
        let full = probe(&MemFile::new());
        assert_eq!(
            full,
            Caps {
                punch: true,
                seek: true,
                direct: false
            }
        );
        let none = probe(&MemFile::with_caps(false, false));
        assert_eq!(none, Caps::default());
        let liar = probe(&ZerosWithoutFreeing(MemFile::new()));
        assert!(!liar.punch, "zeros without freeing is no punch");
        assert!(liar.seek);
    }
}
