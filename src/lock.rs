//! Ranked locks: every lock in the daemon has a [`Rank`], and a thread may take a lock
//! only when its rank is above the rank of every lock the thread already holds. Cycles,
//! and so deadlocks between our own locks, are then impossible; the check runs on every
//! acquisition, so an inversion is caught the first time one thread takes both locks,
//! not only when the timing of two threads lines up.
//!
//! ```text
//!  rank:  DirSnapshot < NodeGate < Engine < BackendFd < InodeTable < FileSlot
//!         < NodeState < Handles < DirtySet < DirStamps < Wake < Flusher < InodeFd < FdPool
//!         < Flight < Writers < DirectFd < Fake
//!         (io)          (io)      (io)       ───────────── leaves ─────────────
//!  a thread holding Engine may take NodeState; one holding NodeState may not take Engine.
//! ```
//!
//! Only ranks marked `io` may be held across a backend round trip ([`io`] checks it at
//! every backend call); each says why at its declaration. Every thread also publishes
//! what it is doing (waiting for a lock, in a backend call, holding what), so a daemon
//! whose flush cannot finish can tell a wedged lock from a slow backend ([`report`]).
//!
//! A violation is handled as [`set_mode`] says: logged (the default in the daemon),
//! a panic (unit tests), or an abort with a backtrace (`SPARSEFS_LOCK_CHECK=abort`, set
//! by the mount tests, so that an inversion fails the test that caused it).
#![forbid(unsafe_code)]

use parking_lot as pl;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Lock ranks, lowest first: a lock may be taken only above every lock held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Rank {
    /// A directory handle's listing snapshot. *Held across the backend listing*: the
    /// snapshot is taken once per handle; only readdirs of the same open directory wait.
    DirSnapshot = 0,
    /// A file's open/close gate: serialises opens and last closes of one file. *Held
    /// across backend calls* (the staleness stat, the flush and reset of a passthrough
    /// transition, the map load): they must not interleave with another open or close of
    /// the same file; only opens and closes of that file wait.
    NodeGate,
    /// A file's sparse engine. *Held across backend calls*: a file's backend writes, and
    /// the index changes made with them, happen in order. Reads, writes, seeks and
    /// flushes of that file wait; `stat` does not (it reads [`Rank::NodeState`]).
    Engine,
    /// The slot of a file's backend descriptor (closed while idle): swapped, never held
    /// across the call that uses it.
    BackendFd,
    /// The inode table's maps.
    InodeTable,
    /// An inode's slot for its file node.
    FileSlot,
    /// A file's [`crate::node::NodeState`]: open count, access mode, map record, stamp,
    /// set-id, the engine's published view. A leaf: nothing but leaves under it.
    NodeState,
    /// The open-handle table.
    Handles,
    /// The set of files with dirty data (flusher's work list).
    DirtySet,
    /// A directory's listing stamps.
    DirStamps,
    /// The flusher's wake-up mutex (its condition variable).
    Wake,
    /// The flusher thread's join handle.
    Flusher,
    /// An inode's `O_PATH` fd slot: held only to clone or swap the fd.
    InodeFd,
    /// The fd pool's ring of holders ([`crate::fdpool::FdPool`]): held only to push and
    /// pop; victims are closed after it is released.
    FdPool,
    /// A window write in flight: its outcome ([`crate::flight::Flight`]), set by a writer
    /// thread, waited for under the file's engine.
    Flight,
    /// The writer threads' queue ([`crate::flight::Writers`]): held to push and pop.
    Writers,
    /// A data file's `O_DIRECT` descriptor slot (`FdFile`): held to clone or swap it.
    DirectFd,
    /// A file's read-ahead chunks ([`crate::prefetch::Prefetch`]): held to file, find and
    /// copy a chunk, never across the backend read of one (waiting for a chunk in flight,
    /// under the file's engine, is marked as a backend call).
    Prefetch,
    /// The open sidecar directory of maps ([`crate::persist::SidecarDir`]): held to
    /// clone, set or take its fd, never across a call.
    SidecarDir,
    /// The names this mount looked up last (`fs::namespace::RecentNames`): held to push,
    /// take or clear one, never across a call.
    RecentNames,
    /// Internals of in-memory test backends (called from under the engine).
    Fake,
}

const RANKS: usize = Rank::Fake as usize + 1;
const ALL: [Rank; RANKS] = [
    Rank::DirSnapshot,
    Rank::NodeGate,
    Rank::Engine,
    Rank::BackendFd,
    Rank::InodeTable,
    Rank::FileSlot,
    Rank::NodeState,
    Rank::Handles,
    Rank::DirtySet,
    Rank::DirStamps,
    Rank::Wake,
    Rank::Flusher,
    Rank::InodeFd,
    Rank::FdPool,
    Rank::Flight,
    Rank::Writers,
    Rank::DirectFd,
    Rank::Prefetch,
    Rank::SidecarDir,
    Rank::RecentNames,
    Rank::Fake,
];

impl Rank {
    /// Whether the lock may be held across a backend round trip (see each rank's doc).
    pub const fn io_ok(self) -> bool {
        matches!(self, Rank::DirSnapshot | Rank::NodeGate | Rank::Engine)
    }
}

/// What a violation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Not checked.
    Off = 0,
    /// Logged at `error!` (at most [`MAX_LOGGED`] times).
    Log = 1,
    /// A panic (unit tests).
    Panic = 2,
    /// Printed with a backtrace, then the process aborts (mount tests).
    Abort = 3,
}

/// Violations logged at most (the rest are counted).
pub const MAX_LOGGED: u64 = 20;

static MODE: AtomicU8 = AtomicU8::new(if cfg!(test) {
    Mode::Panic as u8
} else {
    Mode::Log as u8
});
static VIOLATIONS: AtomicU64 = AtomicU64::new(0);

/// Sets what a violation does.
pub fn set_mode(m: Mode) {
    MODE.store(m as u8, Relaxed);
}

/// The mode named by `SPARSEFS_LOCK_CHECK` (`off`, `log`, `panic`, `abort`), if set.
pub fn mode_from_env() -> Option<Mode> {
    match std::env::var("SPARSEFS_LOCK_CHECK").ok()?.as_str() {
        "off" => Some(Mode::Off),
        "log" => Some(Mode::Log),
        "panic" => Some(Mode::Panic),
        "abort" => Some(Mode::Abort),
        _ => None,
    }
}

/// Violations seen so far.
pub fn violations() -> u64 {
    VIOLATIONS.load(Relaxed)
}

fn mode() -> Mode {
    match MODE.load(Relaxed) {
        0 => Mode::Off,
        1 => Mode::Log,
        2 => Mode::Panic,
        _ => Mode::Abort,
    }
}

#[cold]
fn violation(msg: String) {
    let n = VIOLATIONS.fetch_add(1, Relaxed);
    match mode() {
        Mode::Off => {}
        Mode::Log => {
            if n < MAX_LOGGED {
                tracing::error!(
                    thread = std::thread::current().name().unwrap_or("?"),
                    "lock order violated: {msg}\n{}",
                    std::backtrace::Backtrace::force_capture()
                );
            }
        }
        Mode::Panic => panic!("lock order violated: {msg}"),
        Mode::Abort => {
            eprintln!(
                "sparsefs: lock order violated in thread {}: {msg}\n{}",
                std::thread::current().name().unwrap_or("?"),
                std::backtrace::Backtrace::force_capture()
            );
            std::process::abort();
        }
    }
}

/// What one thread is doing, visible to other threads (see [`report`]).
struct ThreadRec {
    name: String,
    /// Bit `r` set: a lock of rank `r` is held.
    held: AtomicU64,
    activity: pl::Mutex<Activity>,
}

#[derive(Default, Clone, Copy)]
struct Activity {
    waiting: Option<(Rank, Instant)>,
    io: Option<(&'static str, Instant)>,
}

struct Local {
    /// Ranks held, ascending (acquisitions are checked to ascend; releases may come in
    /// any order).
    stack: Vec<Rank>,
    io_depth: u32,
    rec: Arc<ThreadRec>,
}

/// Every thread that ever took a ranked lock (weakly: ended threads drop out).
static THREADS: pl::Mutex<Vec<Weak<ThreadRec>>> = pl::Mutex::new(Vec::new());

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new({
        let rec = Arc::new(ThreadRec {
            name: std::thread::current().name().unwrap_or("?").to_string(),
            held: AtomicU64::new(0),
            activity: pl::Mutex::new(Activity::default()),
        });
        let mut all = THREADS.lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&rec));
        Local { stack: Vec::with_capacity(8), io_depth: 0, rec }
    });
}

fn mask(stack: &[Rank]) -> u64 {
    stack.iter().fold(0, |m, r| m | 1 << *r as u8)
}

/// Checks that `rank` may be taken now; called before blocking on the lock.
fn check(rank: Rank) {
    if mode() == Mode::Off {
        return;
    }
    let bad = LOCAL.with(|l| {
        let l = l.borrow();
        l.stack.last().filter(|top| **top >= rank).map(|top| {
            format!(
                "taking {rank:?} while holding {top:?} (held: {:?})",
                l.stack
            )
        })
    });
    if let Some(msg) = bad {
        violation(msg);
    }
}

fn acquired(rank: Rank) {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let pos = l.stack.partition_point(|r| *r <= rank);
        l.stack.insert(pos, rank);
        let m = mask(&l.stack);
        l.rec.held.store(m, Relaxed);
    });
}

fn released(rank: Rank) {
    // Thread-local storage may already be gone when a guard is dropped during thread exit.
    let _ = LOCAL.try_with(|l| {
        let mut l = l.borrow_mut();
        if let Some(i) = l.stack.iter().rposition(|r| *r == rank) {
            l.stack.remove(i);
        }
        let m = mask(&l.stack);
        l.rec.held.store(m, Relaxed);
    });
}

/// Blocks in `f` (the slow path of an acquisition), published as waiting for `rank`.
fn waiting<G>(rank: Rank, f: impl FnOnce() -> G) -> G {
    let rec = LOCAL.with(|l| l.borrow().rec.clone());
    rec.activity.lock().waiting = Some((rank, Instant::now()));
    let g = f();
    rec.activity.lock().waiting = None;
    g
}

/// Marks a backend round trip named `op` until the returned scope drops. Checks that
/// every lock held may be held across it ([`Rank::io_ok`]).
#[must_use = "the call is marked until the scope drops"]
pub fn io(op: &'static str) -> IoScope {
    let (bad, rec) = LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.io_depth += 1;
        let bad = if l.io_depth == 1 && mode() != Mode::Off {
            l.stack.iter().find(|r| !r.io_ok()).map(|r| {
                format!(
                    "backend call {op} while holding {r:?} (held: {:?})",
                    l.stack
                )
            })
        } else {
            None
        };
        (bad, (l.io_depth == 1).then(|| l.rec.clone()))
    });
    if let Some(msg) = bad {
        violation(msg);
    }
    if let Some(rec) = &rec {
        rec.activity.lock().io = Some((op, Instant::now()));
    }
    IoScope { rec }
}

/// See [`io`].
pub struct IoScope {
    rec: Option<Arc<ThreadRec>>,
}

impl Drop for IoScope {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|l| l.borrow_mut().io_depth -= 1);
        if let Some(rec) = &self.rec {
            rec.activity.lock().io = None;
        }
    }
}

/// What one thread is doing now.
#[derive(Clone, Debug)]
pub struct ThreadReport {
    /// The thread's name.
    pub name: String,
    /// Ranks of the locks it holds.
    pub held: Vec<Rank>,
    /// The lock it waits for, and for how long.
    pub waiting: Option<(Rank, Duration)>,
    /// The backend call it is in, and for how long.
    pub io: Option<(&'static str, Duration)>,
}

impl std::fmt::Display for ThreadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.name)?;
        if let Some((r, d)) = self.waiting {
            write!(f, " waiting for {r:?} for {:.1} s", d.as_secs_f64())?;
        }
        if let Some((op, d)) = self.io {
            write!(f, " in backend call {op} for {:.1} s", d.as_secs_f64())?;
        }
        if self.waiting.is_none() && self.io.is_none() {
            write!(f, " running")?;
        }
        write!(f, ", holding {:?}", self.held)
    }
}

/// Every live thread that holds a lock, waits for one, or is in a backend call.
pub fn report() -> Vec<ThreadReport> {
    let all: Vec<Arc<ThreadRec>> = THREADS.lock().iter().filter_map(Weak::upgrade).collect();
    let now = Instant::now();
    all.iter()
        .filter_map(|t| {
            let a = *t.activity.lock();
            let m = t.held.load(Relaxed);
            let held: Vec<Rank> = ALL
                .iter()
                .copied()
                .filter(|r| m & 1 << *r as u8 != 0)
                .collect();
            (a.waiting.is_some() || a.io.is_some() || !held.is_empty()).then(|| ThreadReport {
                name: t.name.clone(),
                held,
                waiting: a.waiting.map(|(r, s)| (r, now.duration_since(s))),
                io: a.io.map(|(op, s)| (op, now.duration_since(s))),
            })
        })
        .collect()
}

/// A mutex with a rank.
pub struct Mutex<T: ?Sized> {
    rank: Rank,
    inner: pl::Mutex<T>,
}

/// The guard of a [`Mutex`].
pub struct MutexGuard<'a, T: ?Sized> {
    rank: Rank,
    g: pl::MutexGuard<'a, T>,
}

impl<T> Mutex<T> {
    /// A mutex of rank `rank`.
    pub const fn new(rank: Rank, v: T) -> Self {
        Self {
            rank,
            inner: pl::Mutex::new(v),
        }
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Locks, checking the rank order first.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        check(self.rank);
        let g = match self.inner.try_lock() {
            Some(g) => g,
            None => waiting(self.rank, || self.inner.lock()),
        };
        acquired(self.rank);
        MutexGuard { rank: self.rank, g }
    }

    /// The value, through exclusive access (no locking).
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        released(self.rank);
    }
}

impl<T: ?Sized> std::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.g
    }
}

impl<T: ?Sized> std::ops::DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.g
    }
}

/// A condition variable for a ranked [`Mutex`].
#[derive(Default)]
pub struct Condvar(pl::Condvar);

impl Condvar {
    /// A condition variable.
    pub const fn new() -> Self {
        Self(pl::Condvar::new())
    }

    /// Waits for a notification or `timeout` (the lock is released meanwhile).
    pub fn wait_for<T>(&self, g: &mut MutexGuard<'_, T>, timeout: Duration) {
        self.0.wait_for(&mut g.g, timeout);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}

/// A reader-writer lock with a rank. A thread may not take a read lock of a rank it
/// already holds either (a waiting writer would block it).
pub struct RwLock<T: ?Sized> {
    rank: Rank,
    inner: pl::RwLock<T>,
}

/// A read guard of a [`RwLock`].
pub struct ReadGuard<'a, T: ?Sized> {
    rank: Rank,
    g: pl::RwLockReadGuard<'a, T>,
}

/// A write guard of a [`RwLock`].
pub struct WriteGuard<'a, T: ?Sized> {
    rank: Rank,
    g: pl::RwLockWriteGuard<'a, T>,
}

impl<T> RwLock<T> {
    /// A lock of rank `rank`.
    pub const fn new(rank: Rank, v: T) -> Self {
        Self {
            rank,
            inner: pl::RwLock::new(v),
        }
    }
}

impl<T: ?Sized> RwLock<T> {
    /// Shared access, checking the rank order first.
    pub fn read(&self) -> ReadGuard<'_, T> {
        check(self.rank);
        let g = match self.inner.try_read() {
            Some(g) => g,
            None => waiting(self.rank, || self.inner.read()),
        };
        acquired(self.rank);
        ReadGuard { rank: self.rank, g }
    }

    /// Exclusive access, checking the rank order first.
    pub fn write(&self) -> WriteGuard<'_, T> {
        check(self.rank);
        let g = match self.inner.try_write() {
            Some(g) => g,
            None => waiting(self.rank, || self.inner.write()),
        };
        acquired(self.rank);
        WriteGuard { rank: self.rank, g }
    }

    /// The value, through exclusive access (no locking).
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

impl<T: ?Sized> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        released(self.rank);
    }
}

impl<T: ?Sized> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        released(self.rank);
    }
}

impl<T: ?Sized> std::ops::Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.g
    }
}

impl<T: ?Sized> std::ops::Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.g
    }
}

impl<T: ?Sized> std::ops::DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.g
    }
}

#[cfg(test)]
mod tests;
