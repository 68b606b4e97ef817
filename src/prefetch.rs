//! Read-ahead of data extents (issue 18 item 3): while an application reads a file through
//! the daemon in order (holes skipped count as in order, as `cp --sparse=auto` and
//! `tar -S` read), the next few *data* chunks after its position are read from the backend
//! on reader threads, several at once, in aligned requests of `chunk` bytes, skipping the
//! holes the index knows. On a backend a round trip away, a reader then waits for one
//! round trip per `depth` chunks instead of one per request.
//!
//! ```text
//!  app:      r r r r  (seek over a hole)  r r r r ...
//!  daemon:   [c0][c1][c2][c3]            (c4)(c5) ...   chunks in flight, at most
//!  readers:   ^^^^ several at once, holes never read       `depth` ahead of the reader
//! ```
//!
//! Correctness: a chunk holds what the backend held when it was read. Every change the
//! engine makes to the backend file goes through [`Watched`], which marks the chunks over
//! the changed range stale *before and after* the backend call, so a chunk whose read may
//! have overlapped the change is never served (its job finds it stale and drops it). A
//! change made outside the engine (another node, passthrough writers) resets the engine
//! ([`crate::file::SparseFile::reset_from_backend`]), which drops every chunk; the file's
//! last close stops its read-ahead and drops every chunk too, so an open never sees data
//! read before it (close-to-open). Reads still overlay buffered and in-flight writes on
//! what comes from a chunk, as on what comes from the backend.
//!
//! Memory: at most `depth` chunks per file, and [`BUDGET`] bytes per mount (past it no
//! chunk is started). Threads: the mount's reader pool ([`crate::flight::Writers`], named
//! `sparsefs-read-N`); a read never waits for a free reader thread (the chunk is then not
//! read ahead).
//!
//! Locks: the chunk table (rank `Prefetch`) is a leaf; a reader thread holds no lock
//! across its backend call, and waiting for a chunk in flight (under the file's engine) is
//! marked as a backend call.

use crate::backend::{BackendFile, Whence};
use crate::extents::RangeSet;
use crate::flight::Writers;
use crate::lock::{Condvar, Mutex, Rank};
use crate::stats::Stats;
use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Bytes of chunks a mount holds at most (read or being read).
pub const BUDGET: u64 = 64 << 20;

#[derive(Debug)]
enum Slot {
    /// A reader thread is reading it.
    Running,
    /// Read: the bytes of `[k * chunk, k * chunk + buf.len())` (holes zero).
    Ready(Arc<Vec<u8>>),
}

#[derive(Debug)]
struct Entry {
    /// Launch number (a stale job must not touch a later entry of the same chunk).
    id: u64,
    /// The data ranges read (file offsets); the rest of the chunk was not read.
    pieces: Vec<(u64, u64)>,
    slot: Slot,
    /// A change met the chunk's range while it was read: its bytes are not served.
    stale: bool,
    /// Bytes counted against the budget.
    bytes: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: BTreeMap<u64, Entry>,
    next_id: u64,
    /// End of the last read.
    last_end: u64,
    /// Reads in a row that continued the stream (ramps the depth up).
    run: usize,
    /// Set at the file's last close: nothing more is started until the next read.
    stopped: bool,
    /// Ranges readers are reading themselves now (found in no chunk): not read ahead
    /// (no byte is read twice). Released by the read's [`Prefetch::after_read`].
    claimed: RangeSet,
    /// Read tickets handed out so far (see [`Prefetch::begin`]).
    seq: u64,
    /// Tickets of the reads in flight, with the offset each reads from.
    reading: BTreeMap<u64, u64>,
    /// Ranges of reads that finished while an earlier read was in flight, with the
    /// ticket count at their end: requests of one stream finish out of order, and a chunk
    /// started after an earlier request must not read again what a later one already
    /// read. Kept only while a read that began before them is in flight.
    recent: Vec<(u64, u64, u64)>,
}

/// A file's read-ahead: its chunks, read or in flight.
pub struct Prefetch {
    /// Chunks in flight or ready at most (0: read-ahead off).
    depth: usize,
    /// Chunk size (a power of two).
    chunk: u64,
    stats: Arc<Stats>,
    /// Rank `Prefetch`, a leaf.
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("depth", &self.depth)
            .field("chunk", &self.chunk)
            .finish()
    }
}

impl Prefetch {
    /// Read-ahead of `depth` chunks of `chunk` bytes (rounded up to a power of two).
    pub fn new(depth: usize, chunk: u64, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Self {
            depth,
            chunk: chunk.max(4096).next_power_of_two(),
            stats,
            inner: Mutex::new(Rank::Prefetch, Inner::default()),
            cv: Condvar::new(),
        })
    }

    /// True if read-ahead is on.
    pub fn enabled(&self) -> bool {
        self.depth > 0
    }

    /// Marks the chunks over `[start, end)` stale: ready ones are dropped, running ones
    /// are dropped by their job. Called before and after every backend change.
    pub fn invalidate(&self, start: u64, end: u64) {
        if !self.enabled() || start >= end {
            return;
        }
        let c = self.chunk;
        let mut g = self.inner.lock();
        if g.entries.is_empty() {
            return;
        }
        let (first, last) = (start / c, (end - 1) / c);
        let keys: Vec<u64> = g.entries.range(first..=last).map(|(k, _)| *k).collect();
        for k in keys {
            self.drop_entry(&mut g, k, true);
        }
    }

    /// Marks every chunk stale (a truncate, or a change made outside the engine).
    pub fn invalidate_all(&self) {
        self.invalidate(0, u64::MAX);
    }

    /// The file's last close: every chunk is dropped and the jobs in flight are waited
    /// for, so no reader thread holds or reopens the backend file past the close.
    pub fn stop(&self) {
        if !self.enabled() {
            return;
        }
        let running = {
            let mut g = self.inner.lock();
            g.stopped = true;
            g.run = 0;
            g.claimed = RangeSet::new();
            g.recent.clear();
            let keys: Vec<u64> = g.entries.keys().copied().collect();
            for k in keys {
                self.drop_entry(&mut g, k, true);
            }
            !g.entries.is_empty()
        };
        if !running {
            return;
        }
        let _io = crate::lock::io("wait for read-ahead in flight");
        let mut g = self.inner.lock();
        while !g.entries.is_empty() {
            self.cv.wait_for(&mut g, Duration::from_secs(1));
        }
    }

    /// Drops entry `k` if ready; marks it stale if running (`stale`) and leaves it for
    /// its job.
    fn drop_entry(&self, g: &mut Inner, k: u64, stale: bool) {
        let Some(e) = g.entries.get_mut(&k) else {
            return;
        };
        match e.slot {
            Slot::Running => e.stale |= stale,
            Slot::Ready(_) => {
                let e = g.entries.remove(&k).expect("present");
                self.stats.prefetch_bytes.fetch_sub(e.bytes, Relaxed);
            }
        }
    }

    /// A read of `[off, end)` begins: its ticket goes to [`Self::after_read`] at its end.
    /// A read that ends early (an error) drops its ticket, which releases its claims.
    pub fn begin(self: &Arc<Self>, off: u64, end: u64) -> Ticket {
        let mut t = Ticket {
            pf: None,
            n: 0,
            off,
            end,
        };
        if self.enabled() {
            let mut g = self.inner.lock();
            g.seq += 1;
            t.n = g.seq;
            g.reading.insert(t.n, off);
            t.pf = Some(self.clone());
        }
        t
    }

    /// The end of read `t`: its claims go, and what it read is remembered while reads
    /// that began before it are in flight.
    fn end_read(g: &mut Inner, t: &Ticket) {
        g.claimed.remove(t.off, t.end);
        g.reading.remove(&t.n);
        g.seq += 1;
        let done = g.seq;
        match g.reading.keys().next().copied() {
            // Nothing began before what is remembered: it can go.
            None => g.recent.clear(),
            Some(oldest) => {
                g.recent.retain(|r| r.0 > oldest);
                g.recent.push((done, t.off, t.end));
            }
        }
    }

    /// Copies what the chunks hold of `[off, off + buf.len())` (a range the index calls
    /// data) into `buf`, waiting for chunks in flight; returns the ranges not found there
    /// (to be read from the backend by the caller).
    pub fn fill(&self, buf: &mut [u8], off: u64) -> Vec<(u64, u64)> {
        let end = off + buf.len() as u64;
        if !self.enabled() || buf.is_empty() {
            return vec![(off, end)];
        }
        let c = self.chunk;
        let mut missing = RangeSet::new();
        missing.insert(off, end);
        let mut served = 0u64;
        let mut g = self.inner.lock();
        if g.entries.is_empty() {
            g.claimed.insert(off, end);
            return vec![(off, end)];
        }
        for k in off / c..=(end - 1) / c {
            // Waits for a chunk in flight (its job notifies), marked as a backend call.
            let running = |g: &Inner| {
                g.entries
                    .get(&k)
                    .is_some_and(|e| matches!(e.slot, Slot::Running) && !e.stale)
            };
            if running(&g) {
                drop(g);
                {
                    let _io = crate::lock::io("wait for read-ahead in flight");
                    let mut w = self.inner.lock();
                    while running(&w) {
                        self.cv.wait_for(&mut w, Duration::from_secs(1));
                    }
                }
                g = self.inner.lock();
            }
            let Some(e) = g.entries.get(&k) else {
                continue;
            };
            let (Slot::Ready(data), false) = (&e.slot, e.stale) else {
                continue;
            };
            let base = k * c;
            for &(ps, pe) in &e.pieces {
                let (a, z) = (ps.max(off), pe.min(end));
                if a >= z {
                    continue;
                }
                let from = (a - base) as usize;
                buf[(a - off) as usize..(z - off) as usize]
                    .copy_from_slice(&data[from..from + (z - a) as usize]);
                missing.remove(a, z);
                served += z - a;
            }
        }
        // Chunks wholly behind this read and behind every read in flight are done with.
        // Requests of one stream are served out of order (the kernel's read-ahead sends
        // several at once): a chunk an earlier request still needs stays, or that request
        // would read its bytes from the backend a second time.
        let floor = g.reading.values().fold(off, |m, &o| m.min(o));
        let behind: Vec<u64> = g
            .entries
            .range(..(floor / c).saturating_sub(1))
            .map(|(k, _)| *k)
            .collect();
        for k in behind {
            self.drop_entry(&mut g, k, false);
        }
        let missing: Vec<(u64, u64)> = missing.iter().collect();
        for &(a, z) in &missing {
            g.claimed.insert(a, z);
        }
        drop(g);
        self.stats.prefetch_hit_bytes.fetch_add(served, Relaxed);
        missing
    }

    /// After a read of `[off, end)`: if it continued the stream, starts reading ahead the
    /// data chunks after `end` (`data`: the file's data ranges on the backend, which ends
    /// at `backend_end`), up to the depth reached by the stream so far.
    pub fn after_read(
        self: &Arc<Self>,
        mut t: Ticket,
        data: &RangeSet,
        backend_end: u64,
        backend: &Arc<dyn BackendFile>,
    ) {
        if !self.enabled() {
            return;
        }
        let (off, end) = (t.off, t.end);
        let c = self.chunk;
        let mut g = self.inner.lock();
        t.pf = None;
        // What reads that began after this one and ended before it read: not again.
        let mut lately = RangeSet::new();
        for &(done, a, z) in &g.recent {
            if done > t.n {
                lately.insert(a, z);
            }
        }
        Self::end_read(&mut g, &t);
        let last = g.last_end;
        // In the stream: the next read, a read of a chunk read ahead, a read a little
        // behind (requests of one stream served out of order), or one past holes only.
        let in_stream = off == last
            || g.entries.contains_key(&(off / c))
            || (off < last && off + 2 * c >= last)
            || (off > last && !data.intersects(last, off));
        g.last_end = end;
        g.stopped = false;
        if !in_stream || end >= backend_end {
            g.run = 0;
            return;
        }
        g.run += 1;
        let want = g.run.min(self.depth);
        // The next `want` chunks holding data after `end`: those not read or in flight
        // yet are started.
        let mut launch = Vec::new();
        let mut k = end / c;
        let mut n = 0;
        while n < want {
            // The next chunk from k on that holds data.
            let Some(at) = data.next_in(k * c).filter(|&x| x < backend_end) else {
                break;
            };
            k = at / c;
            if !g.entries.contains_key(&k) {
                let (s, e) = (k * c, ((k + 1) * c).min(backend_end));
                // Its data, less what this read read and what readers read themselves
                // (are reading, or read lately).
                let mut todo = RangeSet::new();
                for (a, z) in data.overlapping(s.max(end), e) {
                    todo.insert(a, z);
                }
                for (a, z) in g.claimed.overlapping(s, e) {
                    todo.remove(a, z);
                }
                for (a, z) in lately.overlapping(s, e) {
                    todo.remove(a, z);
                }
                let pieces: Vec<(u64, u64)> = todo.iter().collect();
                let bytes = pieces.last().map_or(0, |p| p.1 - s);
                if bytes == 0 {
                    // Nothing left to read there: it counts as ahead if it holds data.
                    if data.intersects(s, e) {
                        n += 1;
                    }
                    k += 1;
                    continue;
                }
                if self.stats.prefetch_bytes.load(Relaxed) + bytes > BUDGET {
                    break;
                }
                g.next_id += 1;
                let id = g.next_id;
                g.entries.insert(
                    k,
                    Entry {
                        id,
                        pieces: pieces.clone(),
                        slot: Slot::Running,
                        stale: false,
                        bytes,
                    },
                );
                self.stats.prefetch_bytes.fetch_add(bytes, Relaxed);
                launch.push((k, id, pieces, bytes));
            }
            n += 1;
            k += 1;
        }
        // Chunks a reader that moved elsewhere left behind: past twice the depth, the
        // farthest ready ones go.
        while g.entries.len() > 2 * self.depth {
            let here = end / c;
            let far = g
                .entries
                .iter()
                .filter(|(_, e)| matches!(e.slot, Slot::Ready(_)))
                .max_by_key(|(k, _)| k.abs_diff(here))
                .map(|(k, _)| *k);
            let Some(far) = far else { break };
            self.drop_entry(&mut g, far, false);
        }
        drop(g);
        let mut jobs = launch.into_iter();
        while let Some((k, id, pieces, bytes)) = jobs.next() {
            let me = self.clone();
            let be = backend.clone();
            let job = Box::new(move || me.run(k, id, &pieces, bytes, &*be));
            if readers().offer(job) {
                self.stats.prefetches.fetch_add(1, Relaxed);
                continue;
            }
            // No reader thread free: this chunk and the rest are not read ahead (the
            // reader reads them itself); their entries go, or a read would wait for them.
            let mut g = self.inner.lock();
            for (k, id, _, bytes) in std::iter::once((k, id, Vec::new(), bytes)).chain(jobs) {
                if g.entries.get(&k).is_some_and(|e| e.id == id) {
                    g.entries.remove(&k);
                    self.stats.prefetch_bytes.fetch_sub(bytes, Relaxed);
                }
            }
            drop(g);
            self.cv.notify_all();
            break;
        }
    }

    /// A reader thread's part: reads the pieces of chunk `k` and files the result.
    fn run(&self, k: u64, id: u64, pieces: &[(u64, u64)], bytes: u64, backend: &dyn BackendFile) {
        let base = k * self.chunk;
        let mut buf = vec![0u8; bytes as usize];
        let mut ok = true;
        for &(s, e) in pieces {
            let slice = &mut buf[(s - base) as usize..(e - base) as usize];
            if backend.read_at(slice, s).is_err() {
                ok = false;
                break;
            }
        }
        let mut g = self.inner.lock();
        let mine = g.entries.get(&k).is_some_and(|e| e.id == id);
        if mine {
            let stopped = g.stopped;
            let e = g.entries.get_mut(&k).expect("present");
            if ok && !e.stale && !stopped {
                e.slot = Slot::Ready(Arc::new(buf));
            } else {
                // Failed (the reader reads it itself and sees the error), stale or stopped.
                g.entries.remove(&k);
                self.stats.prefetch_bytes.fetch_sub(bytes, Relaxed);
            }
        }
        drop(g);
        self.cv.notify_all();
    }
}

/// A read in flight (see [`Prefetch::begin`]).
#[must_use]
pub struct Ticket {
    /// Set while the read is in flight (read-ahead on).
    pf: Option<Arc<Prefetch>>,
    n: u64,
    off: u64,
    end: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(pf) = self.pf.take() {
            let mut g = pf.inner.lock();
            Prefetch::end_read(&mut g, self);
        }
    }
}

/// The reader threads of the process (started at the first read-ahead).
pub fn readers() -> &'static Arc<Writers> {
    static R: OnceLock<Arc<Writers>> = OnceLock::new();
    R.get_or_init(|| Writers::named(*THREADS.get_or_init(|| 8), "read"))
}

static THREADS: OnceLock<usize> = OnceLock::new();

/// Sets the number of reader threads of the process; only before the first read-ahead.
pub fn configure(threads: usize) {
    let _ = THREADS.set(threads.max(1));
}

/// The engine's view of its backend: every change goes to the backend as before, and the
/// read-ahead chunks over the changed range are marked stale before and after the call
/// (see the module doc).
pub struct Watched {
    inner: Box<dyn BackendFile>,
    pf: Arc<Prefetch>,
}

impl Watched {
    /// `inner`, watched for `pf`.
    pub fn new(inner: Box<dyn BackendFile>, pf: Arc<Prefetch>) -> Self {
        Self { inner, pf }
    }

    fn around<R>(&self, start: u64, end: u64, f: impl FnOnce() -> R) -> R {
        self.pf.invalidate(start, end);
        let r = f();
        self.pf.invalidate(start, end);
        r
    }
}

impl BackendFile for Watched {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.inner.read_at(buf, off)
    }
    fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.around(off, off + len, || self.inner.write_all_at(bufs, off))
    }
    fn write_direct_at(&self, buf: &[u8], off: u64) -> io::Result<bool> {
        self.around(off, off + buf.len() as u64, || {
            self.inner.write_direct_at(buf, off)
        })
    }
    fn release_direct(&self) {
        self.inner.release_direct();
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        self.around(off, off.saturating_add(len), || {
            self.inner.punch_hole(off, len)
        })
    }
    fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        self.around(off, off.saturating_add(len), || {
            self.inner.allocate(mode, off, len)
        })
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.around(0, u64::MAX, || self.inner.set_len(len))
    }
    fn sync(&self, datasync: bool) -> io::Result<()> {
        self.inner.sync(datasync)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn identity(&self) -> io::Result<(u64, u64)> {
        self.inner.identity()
    }
    fn seek(&self, off: u64, whence: Whence) -> io::Result<Option<u64>> {
        self.inner.seek(off, whence)
    }
    fn allocated(&self) -> io::Result<Option<u64>> {
        self.inner.allocated()
    }
    fn close(self: Box<Self>) -> io::Result<()> {
        self.pf.stop();
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::mem::MemFile;
    use std::time::Instant;

    /// A backend whose reads wait until the test opens the gate.
    struct Gated {
        mem: MemFile,
        open: Mutex<bool>,
        cv: Condvar,
        /// The ranges read, in order.
        reads: Mutex<Vec<(u64, u64)>>,
    }

    impl Gated {
        fn new(open: bool) -> Arc<Self> {
            Arc::new(Gated {
                mem: MemFile::with_caps(true, true),
                open: Mutex::new(Rank::Fake, open),
                cv: Condvar::new(),
                reads: Mutex::new(Rank::Fake, Vec::new()),
            })
        }
    }

    impl BackendFile for Gated {
        fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
            let mut g = self.open.lock();
            while !*g {
                self.cv.wait_for(&mut g, Duration::from_millis(50));
            }
            drop(g);
            self.reads.lock().push((off, off + buf.len() as u64));
            self.mem.read_at(buf, off)
        }
        fn write_all_at(&self, bufs: &[IoSlice<'_>], off: u64) -> io::Result<()> {
            self.mem.write_all_at(bufs, off)
        }
        fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
            self.mem.punch_hole(off, len)
        }
        fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
            self.mem.allocate(mode, off, len)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.mem.set_len(len)
        }
        fn sync(&self, d: bool) -> io::Result<()> {
            self.mem.sync(d)
        }
        fn size(&self) -> io::Result<u64> {
            self.mem.size()
        }
        fn seek(&self, off: u64, w: Whence) -> io::Result<Option<u64>> {
            self.mem.seek(off, w)
        }
    }

    /// Chunks wanted while every reader thread is busy are not left behind as "in
    /// flight": a read over them does not wait, and once the threads are free every
    /// byte is right and nothing stays counted.
    #[test]
    fn chunks_no_reader_thread_took_are_never_waited_for() {
        let gated = Gated::new(false);
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 239) as u8 + 1).collect();
        gated.mem.write_all_at(&[IoSlice::new(&data)], 0).unwrap();
        let backend: Arc<dyn BackendFile> = gated.clone();
        let stats = Arc::new(Stats::default());
        let pf = Prefetch::new(64, 4096, stats.clone());
        let mut map = RangeSet::new();
        map.insert(0, data.len() as u64);
        // 40 reads in order ramp the depth past the reader threads (all blocked).
        for i in 0..40u64 {
            let t = pf.begin(i * 4096, (i + 1) * 4096);
            pf.after_read(t, &map, data.len() as u64, &backend);
        }
        let started = stats.prefetches.load(Relaxed);
        assert!(started <= readers().threads as u64, "started {started}");
        // A read of a chunk not started returns at once (missing, for the caller).
        let far = 200 * 4096u64;
        let mut buf = vec![0u8; 4096];
        assert_eq!(pf.fill(&mut buf, far), vec![(far, far + 4096)]);
        *gated.open.lock() = true;
        gated.cv.notify_all();
        // Every chunk started is served right (or reported missing).
        let mut got = vec![0u8; 64 * 4096];
        let missing = pf.fill(&mut got, 40 * 4096);
        for (a, z) in missing {
            let s = (a - 40 * 4096) as usize;
            let n = (z - a) as usize;
            got[s..s + n].copy_from_slice(&data[a as usize..z as usize]);
        }
        assert!(got[..] == data[40 * 4096..104 * 4096]);
        pf.stop();
        assert_eq!(stats.prefetch_bytes.load(Relaxed), 0);
    }

    /// 256 KiB of data on an open gated backend, read ahead 4 chunks of 64 KiB deep.
    struct Rig {
        gated: Arc<Gated>,
        data: Vec<u8>,
        backend: Arc<dyn BackendFile>,
        stats: Arc<Stats>,
        pf: Arc<Prefetch>,
        map: RangeSet,
        size: u64,
    }

    impl Rig {
        fn new() -> Self {
            let gated = Gated::new(true);
            let data: Vec<u8> = (0..(256u32 << 10)).map(|i| (i % 241) as u8 + 1).collect();
            gated.mem.write_all_at(&[IoSlice::new(&data)], 0).unwrap();
            let backend: Arc<dyn BackendFile> = gated.clone();
            let stats = Arc::new(Stats::default());
            let pf = Prefetch::new(4, 64 << 10, stats.clone());
            let mut map = RangeSet::new();
            map.insert(0, data.len() as u64);
            let size = data.len() as u64;
            Self {
                gated,
                data,
                backend,
                stats,
                pf,
                map,
                size,
            }
        }
    }

    /// Two requests of one stream that finish out of order (the later one first): the
    /// chunk the earlier one starts does not read again what the later one read.
    #[test]
    fn a_request_finishing_before_an_earlier_one_is_not_read_again() {
        let r = Rig::new();
        let (pf, map, size, backend) = (&r.pf, &r.map, r.size, &r.backend);
        // A (0..4K) and B (4K..8K) both miss and are read by their readers; B ends first.
        let mut buf = vec![0u8; 4096];
        let a = pf.begin(0, 4096);
        assert_eq!(pf.fill(&mut buf, 0), vec![(0, 4096)]);
        let b = pf.begin(4096, 8192);
        assert_eq!(pf.fill(&mut buf, 4096), vec![(4096, 8192)]);
        pf.after_read(b, map, size, backend);
        pf.after_read(a, map, size, backend);
        // The rest of the first chunk comes from read-ahead; nothing below 8K was read.
        let mut rest = vec![0u8; (64 << 10) - 8192];
        let missing = pf.fill(&mut rest, 8192);
        assert!(missing.is_empty(), "missing {missing:?}");
        assert!(rest[..] == r.data[8192..64 << 10]);
        let reads = r.gated.reads.lock().clone();
        assert!(
            reads.iter().all(|&(a, _)| a >= 8192),
            "read again: {reads:?}"
        );
        pf.stop();
        assert_eq!(r.stats.prefetch_bytes.load(Relaxed), 0);
    }

    /// A read that ends early (an error: its ticket is dropped, not ended) releases what
    /// it claimed, so the range is read ahead again later.
    #[test]
    fn a_read_that_fails_releases_its_claim() {
        let r = Rig::new();
        let (pf, map, size, backend) = (&r.pf, &r.map, r.size, &r.backend);
        let mut buf = vec![0u8; 4096];
        let failed = pf.begin(70_000, 74_096);
        assert_eq!(pf.fill(&mut buf, 70_000), vec![(70_000, 74_096)]);
        drop(failed);
        let t = pf.begin(0, 4096);
        assert_eq!(pf.fill(&mut buf, 0), vec![(0, 4096)]);
        pf.after_read(t, map, size, backend);
        let t = pf.begin(4096, 8192);
        pf.fill(&mut buf, 4096);
        pf.after_read(t, map, size, backend);
        let mut got = vec![0u8; 8192];
        assert!(
            pf.fill(&mut got, 68_000).is_empty(),
            "the failed read's range is read ahead"
        );
        assert!(got[..] == r.data[68_000..76_192]);
        pf.stop();
        assert_eq!(r.stats.prefetch_bytes.load(Relaxed), 0);
    }

    /// Requests of one stream served out of order (the kernel's read-ahead sends several
    /// at once): a later request does not drop the chunk an earlier one, in flight, still
    /// needs, so that one is not read from the backend a second time.
    #[test]
    fn a_later_request_keeps_the_chunks_an_earlier_one_in_flight_needs() {
        let r = Rig::new();
        let (pf, map, size, backend) = (&r.pf, &r.map, r.size, &r.backend);
        let c = 64u64 << 10;
        // Small reads in order ramp the depth up until chunks 0 to 3 are read ahead.
        let mut buf = vec![0u8; 4096];
        for i in 0..6u64 {
            let t = pf.begin(i * 4096, (i + 1) * 4096);
            for (a, z) in pf.fill(&mut buf, i * 4096) {
                backend
                    .read_at(
                        &mut buf[(a - i * 4096) as usize..(z - i * 4096) as usize],
                        a,
                    )
                    .unwrap();
            }
            pf.after_read(t, map, size, backend);
        }
        let ready = |k: u64| {
            let g = pf.inner.lock();
            g.entries
                .get(&k)
                .is_some_and(|e| matches!(e.slot, Slot::Ready(_)))
        };
        let t = Instant::now();
        while !(0..4).all(ready) {
            assert!(t.elapsed() < Duration::from_secs(10), "chunks never read");
            std::thread::yield_now();
        }
        // A (chunk 1) begins; B (chunk 3) begins and is served first.
        let a = pf.begin(c, c + 4096);
        let b = pf.begin(3 * c, 3 * c + 4096);
        assert!(pf.fill(&mut buf, 3 * c).is_empty());
        assert!(buf[..] == r.data[3 * c as usize..3 * c as usize + 4096]);
        pf.after_read(b, map, size, backend);
        // A still finds its chunk.
        let missing = pf.fill(&mut buf, c);
        assert!(missing.is_empty(), "A reads again: {missing:?}");
        assert!(buf[..] == r.data[c as usize..c as usize + 4096]);
        pf.after_read(a, map, size, backend);
        let reads = r.gated.reads.lock().clone();
        let over_a = reads
            .iter()
            .filter(|&&(s, e)| s < c + 4096 && e > c)
            .count();
        assert_eq!(over_a, 1, "reads {reads:?}");
        pf.stop();
        assert_eq!(r.stats.prefetch_bytes.load(Relaxed), 0);
    }
}
