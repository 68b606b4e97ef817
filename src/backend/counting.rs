//! A decorator that counts every backend call (count, bytes, latency, errors) into
//! [`Stats`]: the source of `sparsefs stats` and of the call budgets tests assert.

use super::{BackendFile, Whence};
use crate::stats::{Op, Stats};
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Instant;

/// Counts the calls made on `inner`.
pub struct Counting<B> {
    inner: B,
    stats: Arc<Stats>,
}

impl<B> Counting<B> {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: B, stats: Arc<Stats>) -> Self {
        Self { inner, stats }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn count<T>(&self, op: Op, bytes: u64, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let t = Instant::now();
        let r = f();
        self.stats
            .record(op, bytes, t.elapsed().as_nanos() as u64, r.is_ok());
        r
    }
}

impl<B: BackendFile> BackendFile for Counting<B> {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let t = Instant::now();
        let r = self.inner.read_at(buf, off);
        let n = *r.as_ref().unwrap_or(&0) as u64;
        self.stats
            .record(Op::Read, n, t.elapsed().as_nanos() as u64, r.is_ok());
        r
    }
    fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
        let n = bufs.iter().map(|b| b.len() as u64).sum();
        self.count(Op::Write, n, || self.inner.write_all_at(bufs, off))
    }
    fn write_direct_at(&self, buf: &[u8], off: u64) -> io::Result<bool> {
        let mut done = false;
        let r = self.count(Op::Write, buf.len() as u64, || {
            done = self.inner.write_direct_at(buf, off)?;
            Ok(())
        });
        r.map(|()| done)
    }
    fn release_direct(&self) {
        self.inner.release_direct();
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        self.count(Op::Punch, len, || self.inner.punch_hole(off, len))
    }
    fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        self.count(Op::Allocate, len, || self.inner.allocate(mode, off, len))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.count(Op::Truncate, 0, || self.inner.set_len(len))
    }
    fn sync(&self, datasync: bool) -> io::Result<()> {
        self.count(Op::Fsync, 0, || self.inner.sync(datasync))
    }
    fn size(&self) -> io::Result<u64> {
        let r = self.inner.size();
        self.stats.meta_call(crate::stats::MetaOp::Stat, r.is_ok());
        r
    }
    fn identity(&self) -> io::Result<(u64, u64)> {
        let r = self.inner.identity();
        self.stats.meta_call(crate::stats::MetaOp::Stat, r.is_ok());
        r
    }
    fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>> {
        self.count(Op::Lseek, 0, || self.inner.seek(off, whence))
    }
    fn allocated(&self) -> io::Result<Option<u64>> {
        self.inner.allocated()
    }
    fn close(self: Box<Self>) -> io::Result<()> {
        Box::new(self.inner).close()
    }
}
