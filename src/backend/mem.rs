//! An in-memory backing file with real hole semantics, for tests: holes are tracked
//! at byte granularity, so the tests can ask exactly what was allocated.

use super::{BackendFile, Whence};
use crate::extents::RangeSet;
use parking_lot::Mutex;
use std::io::{self, IoSlice};

#[derive(Debug, Default)]
struct Inner {
    bytes: Vec<u8>,
    allocated: RangeSet,
}

/// An in-memory file. `punch` and `seek` say whether it supports those calls, so it can
/// play a backend without them.
#[derive(Debug)]
pub struct MemFile {
    inner: Mutex<Inner>,
    punch: bool,
    seek: bool,
}

impl MemFile {
    /// A file with working punch and seek.
    pub fn new() -> Self {
        Self::with_caps(true, true)
    }

    /// A file that answers punch and seek with EOPNOTSUPP where they are off.
    pub fn with_caps(punch: bool, seek: bool) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            punch,
            seek,
        }
    }

    /// The file's contents.
    pub fn contents(&self) -> Vec<u8> {
        self.inner.lock().bytes.clone()
    }

    /// The allocated (written and not punched) ranges.
    pub fn allocated(&self) -> RangeSet {
        self.inner.lock().allocated.clone()
    }
}

impl Default for MemFile {
    fn default() -> Self {
        Self::new()
    }
}

fn notsup() -> io::Error {
    io::Error::from_raw_os_error(libc::EOPNOTSUPP)
}

impl BackendFile for MemFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let g = self.inner.lock();
        let len = g.bytes.len() as u64;
        if off >= len {
            return Ok(0);
        }
        let n = (len - off).min(buf.len() as u64) as usize;
        buf[..n].copy_from_slice(&g.bytes[off as usize..off as usize + n]);
        Ok(n)
    }

    fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
        let mut g = self.inner.lock();
        let mut pos = off as usize;
        for b in bufs {
            let end = pos + b.len();
            if g.bytes.len() < end {
                g.bytes.resize(end, 0);
            }
            g.bytes[pos..end].copy_from_slice(b);
            g.allocated.insert(pos as u64, end as u64);
            pos = end;
        }
        Ok(())
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        if !self.punch {
            return Err(notsup());
        }
        let mut g = self.inner.lock();
        let size = g.bytes.len() as u64;
        let end = (off + len).min(size);
        if off < end {
            g.bytes[off as usize..end as usize].fill(0);
        }
        g.allocated.remove(off, off + len);
        Ok(())
    }

    fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        let mut g = self.inner.lock();
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && g.bytes.len() < (off + len) as usize {
            g.bytes.resize((off + len) as usize, 0);
        }
        if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            let end = ((off + len) as usize).min(g.bytes.len());
            if (off as usize) < end {
                g.bytes[off as usize..end].fill(0);
            }
        }
        g.allocated.insert(off, off + len);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut g = self.inner.lock();
        g.bytes.resize(len as usize, 0);
        g.allocated.truncate(len);
        Ok(())
    }

    fn sync(&self, _datasync: bool) -> io::Result<()> {
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.inner.lock().bytes.len() as u64)
    }

    fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>> {
        if !self.seek {
            return Err(notsup());
        }
        let g = self.inner.lock();
        let size = g.bytes.len() as u64;
        Ok(match whence {
            Whence::Data => crate::extents::seek_data(&g.allocated, off, size),
            Whence::Hole => crate::extents::seek_hole(&g.allocated, off, size),
        })
    }
    fn allocated(&self) -> io::Result<Option<u64>> {
        Ok(Some(self.inner.lock().allocated.total()))
    }
}
