//! Fault injection: after a countdown of mutating calls, fail with a chosen errno
//! (EIO, ENOSPC, ...) or perform a short write, so tests can prove errors reach the
//! application and the index stays consistent with what the backend holds.

use super::{BackendFile, Whence};
use parking_lot::Mutex;
use std::io::{self, IoSlice};

/// What the fault does when the countdown reaches zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail the call with this errno and change nothing.
    Errno(i32),
    /// Write only the first half of the buffer, then fail with this errno.
    ShortThen(i32),
}

/// Fails the `n`-th mutating call (writes, punches, allocations, truncates, syncs).
pub struct Faulty<B> {
    inner: B,
    state: Mutex<(Option<u64>, Fault, bool)>,
}

impl<B> Faulty<B> {
    /// Wraps `inner`; no fault is armed.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            state: Mutex::new((None, Fault::Errno(libc::EIO), false)),
        }
    }

    /// Arms a fault on the mutating call after `countdown` more succeed; `sticky` keeps
    /// failing every later call too (a dead disk) instead of once (a transient error).
    pub fn arm(&self, countdown: u64, fault: Fault, sticky: bool) {
        *self.state.lock() = (Some(countdown), fault, sticky);
    }

    /// Disarms.
    pub fn disarm(&self) {
        self.state.lock().0 = None;
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn fire(&self) -> Option<Fault> {
        let mut g = self.state.lock();
        match g.0 {
            Some(0) => {
                if !g.2 {
                    g.0 = None;
                }
                Some(g.1)
            }
            Some(n) => {
                g.0 = Some(n - 1);
                None
            }
            None => None,
        }
    }
}

fn err(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl<B: BackendFile> BackendFile for Faulty<B> {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.inner.read_at(buf, off)
    }
    fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
        match self.fire() {
            None => self.inner.write_all_at(bufs, off),
            Some(Fault::Errno(e)) => Err(err(e)),
            Some(Fault::ShortThen(e)) => {
                let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
                self.inner
                    .write_all_at(&[IoSlice::new(&all[..all.len() / 2])], off)?;
                Err(err(e))
            }
        }
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        match self.fire() {
            None => self.inner.punch_hole(off, len),
            Some(Fault::Errno(e) | Fault::ShortThen(e)) => Err(err(e)),
        }
    }
    fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        match self.fire() {
            None => self.inner.allocate(mode, off, len),
            Some(Fault::Errno(e) | Fault::ShortThen(e)) => Err(err(e)),
        }
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        match self.fire() {
            None => self.inner.set_len(len),
            Some(Fault::Errno(e) | Fault::ShortThen(e)) => Err(err(e)),
        }
    }
    fn sync(&self, datasync: bool) -> io::Result<()> {
        match self.fire() {
            None => self.inner.sync(datasync),
            Some(Fault::Errno(e) | Fault::ShortThen(e)) => Err(err(e)),
        }
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>> {
        self.inner.seek(off, whence)
    }
    fn allocated(&self) -> io::Result<Option<u64>> {
        self.inner.allocated()
    }
    fn close(self: Box<Self>) -> io::Result<()> {
        Box::new(self.inner).close()
    }
}
