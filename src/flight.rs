//! Window writes in flight: the backend writes of a file's complete write-size windows
//! run on a small pool of writer threads while the application goes on writing, so a
//! serial stream becomes several backend writes at once (what Lustre's client does with
//! RPCs in flight). On a backend a round trip away, a stream then waits for one round
//! trip per `depth` windows instead of one per window.
//!
//! ```text
//!  app:     w w w w|w w w w|w w w w|w w w w|  ...        (1 MiB requests)
//!  engine:         launch  launch  launch  launch        (a window complete: its blocks
//!  writers:        [==W0==]                               leave the buffer for a flight)
//!                          [==W1==]
//!                            [==W2==] ...                 at most `depth` per file, and
//!                                                         `threads` per mount
//! ```
//!
//! The rules of a synchronous flush hold (see [`crate::file::SparseFile`]):
//! - A flight's blocks stay readable (reads overlay them) until it is settled, and the
//!   index counts them as data from the launch (never a hole where data may be).
//! - Flights of one file never overlap: a launch over a range in flight waits for it
//!   first, so the backend sees overlapping writes in order.
//! - Every flush (fsync, close, truncate, fallocate, the flusher, unmount) waits for all
//!   of the file's flights first; a failed flight puts its blocks back in the buffer
//!   (newer writes win) and its error is returned by the file's next write, flush or
//!   fsync: nothing is dropped, nothing is lost silently.
//! - The dirty gauge counts a flight's bytes until they are on the backend, so the dirty
//!   limits bound memory with flights too.
//!
//! Locks: a flight's completion (rank `Flight`) and the writer queue (rank `Writers`)
//! are leaves; a writer thread holds no lock across its backend call, and waiting for a
//! flight (under the file's engine, rank `Engine`, which may wait on the backend) is
//! marked as a backend call.

use crate::backend::BackendFile;
use crate::coalescer::{Coalescer, DirtyBlock};
use crate::extents::RangeSet;
use crate::lock::{Condvar, Mutex, Rank};
use crate::stats::Stats;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// One backend write of a flight: `pieces` (block number, start in the block, length)
/// written contiguously at `off`.
#[derive(Debug)]
pub struct Run {
    /// File offset.
    pub off: u64,
    /// End of the write.
    pub end: u64,
    /// The data ranges the file's index had in `off..end` before the launch (put back
    /// if the write fails).
    pub was: Vec<(u64, u64)>,
    /// The buffers, in order.
    pub pieces: Vec<(u64, usize, usize)>,
}

/// The blocks of one launch, on their way to the backend.
pub struct Flight {
    /// First byte covered (block aligned).
    pub start: u64,
    /// End of the blocks covered (block aligned).
    pub end: u64,
    blocks: Coalescer,
    runs: Vec<Run>,
    /// The file ranges the runs write (what reads take from the flight: whole complete
    /// blocks, zeros included, and only the written bytes of an incomplete one).
    written: RangeSet,
    /// Buffer bytes the flight holds (its blocks, whole).
    freed: u64,
    /// Rank `Flight`, a leaf: `None` while in flight, then the outcome (an errno).
    done: Mutex<Option<Result<(), i32>>>,
    cv: Condvar,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("start", &self.start)
            .field("end", &self.end)
            .field("runs", &self.runs.len())
            .finish()
    }
}

impl Flight {
    /// A flight of `taken` (blocks taken from a file's buffer, ascending) written as
    /// `runs`.
    pub fn new(block: u64, taken: Vec<(u64, DirtyBlock)>, runs: Vec<Run>) -> Arc<Self> {
        let start = taken.first().map_or(0, |b| b.0 * block);
        let end = taken.last().map_or(0, |b| (b.0 + 1) * block);
        let freed = taken.len() as u64 * block;
        let mut blocks = Coalescer::new(block);
        blocks.restore(taken);
        let mut written = RangeSet::new();
        for r in &runs {
            for &(blk, s, l) in &r.pieces {
                let at = blk * block + s as u64;
                written.insert(at, at + l as u64);
            }
        }
        Arc::new(Self {
            start,
            end,
            blocks,
            runs,
            written,
            freed,
            done: Mutex::new(Rank::Flight, None),
            cv: Condvar::new(),
        })
    }

    /// The backend writes of the flight.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// True if the flight's blocks meet `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.end && self.start < end
    }

    /// Copies the bytes the flight writes in `[off, off+buf.len())` over `buf`.
    pub fn overlay(&self, off: u64, buf: &mut [u8]) {
        let end = off + buf.len() as u64;
        if !self.overlaps(off, end) {
            return;
        }
        let bs = self.blocks.block();
        for r in &self.runs {
            for &(blk, s, l) in &r.pieces {
                let at = blk * bs + s as u64;
                let (a, z) = (at.max(off), (at + l as u64).min(end));
                if a >= z {
                    continue;
                }
                let b = &self.blocks.get(blk).expect("flight block").buf;
                let from = s + (a - at) as usize;
                buf[(a - off) as usize..(z - off) as usize]
                    .copy_from_slice(&b[from..from + (z - a) as usize]);
            }
        }
    }

    /// True if the flight writes every byte of `[start, end)`.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.written.covers(start, end)
    }

    /// Buffer bytes the flight holds.
    pub fn freed(&self) -> u64 {
        self.freed
    }

    /// One run through `O_DIRECT`, from the writer thread's aligned buffer.
    fn write_direct(&self, backend: &dyn BackendFile, run: &Run, len: usize) -> io::Result<bool> {
        thread_local! {
            static BOUNCE: std::cell::RefCell<Option<crate::sys::AlignedBuf>> =
                const { std::cell::RefCell::new(None) };
        }
        let bs = self.blocks.block();
        BOUNCE.with(|b| {
            let mut b = b.borrow_mut();
            if b.as_ref().is_none_or(|buf| buf.len() < len) {
                *b = Some(crate::sys::AlignedBuf::zeroed(len));
            }
            let buf = b.as_mut().expect("allocated");
            let mut at = 0usize;
            for &(blk, s, l) in &run.pieces {
                debug_assert_eq!(blk * bs + s as u64, run.off + at as u64);
                let src = &self.blocks.get(blk).expect("flight block").buf[s..s + l];
                buf[at..at + l].copy_from_slice(src);
                at += l;
            }
            debug_assert_eq!(at, len);
            backend.write_direct_at(&buf[..len], run.off)
        })
    }

    /// True once the backend answered (either way).
    pub fn is_done(&self) -> bool {
        self.done.lock().is_some()
    }

    /// True if the backend answered without error.
    pub fn is_ok(&self) -> bool {
        matches!(&*self.done.lock(), Some(Ok(())))
    }

    /// Waits for the backend's answer and returns it (the flight stays done).
    pub fn wait(&self) -> io::Result<()> {
        // Marked as a backend call before the (leaf) lock is taken.
        let _io = (!self.is_done()).then(|| crate::lock::io("wait for a window write in flight"));
        let mut g = self.done.lock();
        while g.is_none() {
            self.cv.wait_for(&mut g, Duration::from_secs(1));
        }
        match *g {
            Some(Err(e)) => Err(io::Error::from_raw_os_error(e)),
            _ => Ok(()),
        }
    }

    /// The blocks, to put back in the buffer after a failure (the writer is done with
    /// them).
    pub fn into_blocks(self: Arc<Self>) -> Vec<(u64, DirtyBlock)> {
        match Arc::try_unwrap(self) {
            Ok(f) => {
                let mut b = f.blocks;
                b.take(0, u64::MAX)
            }
            // The writer thread still drops its reference: copy them.
            Err(a) => a.blocks.cloned(),
        }
    }

    /// The writer's part: every run in order, stopping at the first error. With
    /// `direct`, a run aligned to 4 KiB is copied into the thread's aligned buffer and
    /// written through `O_DIRECT` ([`BackendFile::write_direct_at`]).
    fn run(&self, backend: &dyn BackendFile, stats: &Stats, direct: bool) {
        let mut r: Result<(), i32> = Ok(());
        for run in &self.runs {
            let len = (run.end - run.off) as usize;
            if direct && run.off.is_multiple_of(4096) && len.is_multiple_of(4096) && len > 0 {
                match self.write_direct(backend, run, len) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    // Reported, never written again the ordinary way: on sharded
                    // GlusterFS such a retry "succeeded" and the shard was lost all the
                    // same (found by the benchmark's byte-for-byte check).
                    Err(e) => {
                        tracing::debug!(off = run.off, error = %e, "O_DIRECT window write failed");
                        r = Err(e.raw_os_error().unwrap_or(libc::EIO));
                        break;
                    }
                }
            }
            let slices: Vec<IoSlice<'_>> = run
                .pieces
                .iter()
                .map(|&(blk, s, l)| {
                    IoSlice::new(&self.blocks.get(blk).expect("flight block").buf[s..s + l])
                })
                .collect();
            if let Err(e) = backend.write_all_at(&slices, run.off) {
                tracing::debug!(off = run.off, error = %e, "window write in flight failed");
                r = Err(e.raw_os_error().unwrap_or(libc::EIO));
                break;
            }
        }
        if r.is_ok() {
            // On the backend: no longer dirty (a failure stays counted: its blocks go back
            // to the buffer).
            stats.dirty_sub(self.freed);
        }
        stats.flights_in_flight.fetch_sub(1, Relaxed);
        *self.done.lock() = Some(r);
        self.cv.notify_all();
    }
}

/// A job of a pool.
pub type Job = Box<dyn FnOnce() + Send>;

/// The writer threads: a queue that holds at most `threads` flights running or waiting,
/// so a mount has at most that many backend writes of windows at once.
pub struct Writers {
    /// Rank `Writers`, a leaf: the jobs not yet taken and the number running.
    queue: Mutex<(VecDeque<Job>, usize)>,
    /// Signalled when a job is queued (workers wait) or one ends (launchers wait).
    cv: Condvar,
    pub(crate) threads: usize,
}

impl Writers {
    /// A pool of `threads` writer threads (started at once, named `sparsefs-write-N`).
    pub fn new(threads: usize) -> Arc<Self> {
        Self::named(threads, "write")
    }

    /// A pool of `threads` threads named `sparsefs-{what}-N` (the reader threads of
    /// [`crate::prefetch`] are one).
    pub fn named(threads: usize, what: &str) -> Arc<Self> {
        let w = Arc::new(Self {
            queue: Mutex::new(Rank::Writers, (VecDeque::new(), 0)),
            cv: Condvar::new(),
            threads: threads.max(1),
        });
        for i in 0..w.threads {
            let me = w.clone();
            std::thread::Builder::new()
                .name(format!("sparsefs-{what}-{i}"))
                .spawn(move || me.work())
                .expect("spawn a writer thread");
        }
        w
    }

    /// The pool every file of this process uses, started at the first launch with
    /// [`configure`]'s thread count (default 8).
    pub fn global() -> &'static Arc<Writers> {
        GLOBAL.get_or_init(|| Writers::new(*THREADS.get_or_init(|| 8)))
    }

    fn work(&self) {
        loop {
            let job = {
                let mut q = self.queue.lock();
                loop {
                    if let Some(j) = q.0.pop_front() {
                        break j;
                    }
                    self.cv.wait_for(&mut q, Duration::from_secs(1));
                }
            };
            job();
            self.queue.lock().1 -= 1;
            self.cv.notify_all();
        }
    }

    /// Starts `flight` on `backend`; waits first while the pool is full.
    /// With `direct`, aligned runs go through `O_DIRECT` (see [`Flight`]).
    pub fn launch(
        &self,
        flight: Arc<Flight>,
        backend: Arc<dyn BackendFile>,
        stats: Arc<Stats>,
        direct: bool,
    ) {
        stats.flights_in_flight.fetch_add(1, Relaxed);
        stats.flights.fetch_add(1, Relaxed);
        let job: Job = Box::new(move || flight.run(&*backend, &stats, direct));
        let full = self.queue.lock().1 >= self.threads;
        let _io = full.then(|| crate::lock::io("wait for a writer thread"));
        let mut q = self.queue.lock();
        while q.1 >= self.threads {
            self.cv.wait_for(&mut q, Duration::from_secs(1));
        }
        q.1 += 1;
        q.0.push_back(job);
        drop(q);
        self.cv.notify_all();
    }
}

impl Writers {
    /// Queues `job` if a thread is free for it now; `false` (the job dropped) if not.
    /// Never waits.
    pub fn offer(&self, job: Job) -> bool {
        let mut q = self.queue.lock();
        if q.1 >= self.threads {
            return false;
        }
        q.1 += 1;
        q.0.push_back(job);
        drop(q);
        self.cv.notify_all();
        true
    }
}

static GLOBAL: OnceLock<Arc<Writers>> = OnceLock::new();
static THREADS: OnceLock<usize> = OnceLock::new();

/// Sets the number of writer threads of the process (the mount's `flush_threads`);
/// only before the first launch.
pub fn configure(threads: usize) {
    let _ = THREADS.set(threads.max(1));
}
