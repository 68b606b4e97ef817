//! One bounded pool for every backend fd the daemon can close and open again: the `O_PATH`
//! fds of inodes (reopened by file handle, or by name where the backend has no handles)
//! and the read-write fds of regular files (reopened from the inode), open handles'
//! included. Past the high-water mark the least recently used are closed down to the
//! low-water mark (a clock sweep: a use only sets a flag, no lock on the hot path); the
//! slots above the high mark stay for the daemon's own use (directory listings, the map
//! store, the fds pinned below). Pinned fds (the backing root; files unlinked through the
//! mount while open, which nothing could reopen) are counted but never closed.
//!
//! So the daemon never answers EMFILE because of its own fds: an application holding
//! 2,000 files open works through a daemon started with 512 fds.

use crate::lock::{Mutex, Rank};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

/// Something holding one pooled fd that it can close (and open again on its next use).
pub trait Evict: Send + Sync {
    /// Closes the fd unless it is pinned or already closed; `true` if it closed one.
    fn evict(&self) -> bool;
    /// The use flag of the clock sweep: returns it and clears it.
    fn take_used(&self) -> bool;
}

/// The pool's counts and marks.
pub struct FdPool {
    /// Pooled fds open now (each held by a [`Slot`]).
    open: AtomicU64,
    /// Fds pinned open (counted against the limit, never closed by the pool).
    pinned: AtomicU64,
    /// Above this many pooled fds, the least recently used are closed...
    high: u64,
    /// ... down to this many.
    low: u64,
    /// Fds closed by the pool.
    evicted: AtomicU64,
    /// Rank `FdPool`, a leaf: the clock's ring of holders, taken only to push and pop.
    /// Victims are closed after it is released.
    ring: Mutex<VecDeque<Weak<dyn Evict>>>,
    /// Opens that failed with `EMFILE`/`ENFILE` ([`FdPool::relieve`]).
    relieved: AtomicU64,
}

impl std::fmt::Debug for FdPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdPool")
            .field("open", &self.open.load(Relaxed))
            .field("high", &self.high)
            .field("low", &self.low)
            .finish()
    }
}

/// One pooled fd's place in the count: held with the fd, released when it closes.
#[derive(Debug)]
pub struct Slot(Arc<FdPool>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// A pinned fd's place in the count.
#[derive(Debug)]
pub struct Pin(Arc<FdPool>);

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.pinned.fetch_sub(1, Relaxed);
    }
}

/// The high-water mark of [`FdPool::for_limit`]: the fd limit less an eighth (at least
/// 32, at most 1024) kept for the daemon's own use, and at least 16.
pub fn high_for_limit(limit: u64) -> u64 {
    let reserve = (limit / 8).clamp(32, 1024);
    limit.saturating_sub(reserve).max(16)
}

impl FdPool {
    /// A pool for a daemon whose fd limit is `limit`: an eighth (at least 32, at most
    /// 1024) is kept for the daemon's own use; the low mark is three quarters of the high.
    pub fn for_limit(limit: u64) -> Arc<Self> {
        let high = high_for_limit(limit);
        Self::with_marks(high, high * 3 / 4)
    }

    /// A pool with explicit marks (tests).
    pub fn with_marks(high: u64, low: u64) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicU64::new(0),
            pinned: AtomicU64::new(0),
            high,
            low: low.min(high),
            evicted: AtomicU64::new(0),
            ring: Mutex::new(Rank::FdPool, VecDeque::new()),
            relieved: AtomicU64::new(0),
        })
    }

    /// Counts a pooled fd just opened by `holder` and, past the high mark, closes the
    /// least recently used ones. The caller may hold its own file's engine or gate (the
    /// victims' slots are leaves, and closing an fd is allowed under those); it must not
    /// hold a leaf lock.
    pub fn opened(self: &Arc<Self>, holder: Weak<dyn Evict>) -> Slot {
        self.open.fetch_add(1, Relaxed);
        self.ring.lock().push_back(holder);
        if self.open.load(Relaxed) > self.high {
            self.sweep();
        }
        Slot(self.clone())
    }

    /// Counts a pinned fd.
    pub fn pin(self: &Arc<Self>) -> Pin {
        self.pinned.fetch_add(1, Relaxed);
        Pin(self.clone())
    }

    /// Closes pooled fds, least recently used first, until at most the low mark are open
    /// (or every holder was looked at twice). A sweep running already is joined, not
    /// waited for (a sweeper kept off the CPU must not let others open past the mark).
    pub fn sweep(&self) {
        self.sweep_with(true);
    }

    /// The backstop where an open failed with `EMFILE`/`ENFILE` all the same (fds the
    /// pool does not count, an in-flight call still using an fd it let go): closes idle
    /// pooled fds down to the low mark in ring order, use flags ignored. `true` if it
    /// closed any (the open is worth one more try).
    pub fn relieve(&self) -> bool {
        let before = self.evicted.load(Relaxed);
        self.relieved.fetch_add(1, Relaxed);
        self.sweep_with(false);
        self.evicted.load(Relaxed) > before
    }

    fn sweep_with(&self, second_chance: bool) {
        let mut budget = 2 * self.ring.lock().len() + 1;
        while self.open.load(Relaxed) > self.low && budget > 0 {
            budget -= 1;
            let Some(w) = self.ring.lock().pop_front() else {
                break;
            };
            let Some(h) = w.upgrade() else { continue };
            if h.take_used() && second_chance {
                self.ring.lock().push_back(w);
                continue;
            }
            // Closed here, no pool lock held; a pinned holder leaves the ring.
            if h.evict() {
                self.evicted.fetch_add(1, Relaxed);
            }
        }
    }

    /// Times an open failed with `EMFILE`/`ENFILE` and the pool was asked to relieve it.
    pub fn relieved(&self) -> u64 {
        self.relieved.load(Relaxed)
    }

    /// Pooled fds open now.
    pub fn open_now(&self) -> u64 {
        self.open.load(Relaxed)
    }

    /// Pinned fds open now.
    pub fn pinned_now(&self) -> u64 {
        self.pinned.load(Relaxed)
    }

    /// Fds closed by the pool so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Relaxed)
    }

    /// The high-water mark.
    pub fn high(&self) -> u64 {
        self.high
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Holder {
        pool: Arc<FdPool>,
        slot: parking_lot::Mutex<Option<Slot>>,
        used: AtomicBool,
        pinned: bool,
    }

    impl Evict for Holder {
        fn evict(&self) -> bool {
            !self.pinned && self.slot.lock().take().is_some()
        }
        fn take_used(&self) -> bool {
            self.used.swap(false, Relaxed)
        }
    }

    fn holder(pool: &Arc<FdPool>, pinned: bool) -> Arc<Holder> {
        let h = Arc::new(Holder {
            pool: pool.clone(),
            slot: parking_lot::Mutex::new(None),
            used: AtomicBool::new(true),
            pinned,
        });
        let w: Weak<dyn Evict> = Arc::downgrade(&(h.clone() as Arc<dyn Evict>));
        let s = h.pool.opened(w);
        *h.slot.lock() = Some(s);
        h
    }

    #[test]
    fn past_the_high_mark_the_least_recently_used_close_down_to_the_low_mark() {
        let pool = FdPool::with_marks(10, 6);
        let hs: Vec<_> = (0..10).map(|_| holder(&pool, false)).collect();
        assert_eq!(pool.open_now(), 10);
        // The first three are used again since: the sweep passes them over once.
        for h in &hs {
            h.used.store(false, Relaxed);
        }
        for h in &hs[..3] {
            h.used.store(true, Relaxed);
        }
        let eleventh = holder(&pool, false);
        assert_eq!(pool.open_now(), 6);
        assert_eq!(pool.evicted(), 5);
        for h in &hs[..3] {
            assert!(h.slot.lock().is_some(), "recently used: kept");
        }
        assert!(eleventh.slot.lock().is_some(), "just opened: kept");
        for h in &hs[3..8] {
            assert!(h.slot.lock().is_none(), "least recently used: closed");
        }
    }

    #[test]
    fn pinned_holders_and_dropped_holders_are_passed_over() {
        let pool = FdPool::with_marks(4, 2);
        let pinned: Vec<_> = (0..3).map(|_| holder(&pool, true)).collect();
        drop(holder(&pool, false)); // dropped with its slot: the count falls at once
        assert_eq!(pool.open_now(), 3);
        for h in &pinned {
            h.used.store(false, Relaxed);
        }
        let more: Vec<_> = (0..2).map(|_| holder(&pool, false)).collect();
        assert!(pool.open_now() <= 4, "{}", pool.open_now());
        assert!(pinned.iter().all(|h| h.slot.lock().is_some()));
        drop(more);
    }

    #[test]
    fn relief_closes_idle_fds_down_to_the_low_mark_even_those_just_used() {
        let pool = FdPool::with_marks(10, 4);
        let hs: Vec<_> = (0..8).map(|_| holder(&pool, false)).collect();
        let pinned = holder(&pool, true);
        assert_eq!(pool.open_now(), 9, "under the high mark: no sweep");
        for h in &hs {
            h.used.store(true, Relaxed);
        }
        assert!(pool.relieve(), "closed some");
        assert_eq!(pool.open_now(), 4);
        assert_eq!(pool.relieved(), 1);
        assert!(pinned.slot.lock().is_some(), "pinned: kept");
        // Nothing left above the low mark: no relief, so the caller does not retry.
        assert!(!pool.relieve());
    }
}
