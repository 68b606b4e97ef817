//! Lazy turn-taking of the request threads (a sparsefs change to fuser 0.18; see
//! `SPARSEFS.md` at the crate root).
//!
//! With every thread blocked in `read(/dev/fuse)`, the kernel hands each request to the
//! thread that has waited longest. A serial stream of quick requests (`rm -rf`, `find`,
//! `ls -l`: one request at a time from one process) then wakes a different, cold thread for
//! each request, often on another CPU: measured on a 2-vCPU VM, `rm -rf` of 10,000 files
//! took 1.25-1.35 s with two threads against 1.05 s with one, with 4x the CPU migrations.
//!
//! Here at most one thread waits in `read` at a time (the listener); the others park in
//! user space: one as the standby, the rest on a stack. The thread that got a request calls
//! a parked thread to listen only when nobody else listens, the request's opcode has lately
//! been slow (above [`SLOW_NS`]) and hand-offs have lately been useful (requests came while
//! others were served); else it serves the request inline and then listens again, so a
//! serial stream keeps one warm thread, and requests that wait on the backend while others
//! come (data, fsync, everything on a backend a round trip away) get a thread each, up to
//! the thread count. The standby looks every [`STANDBY_TICK`] while the mount is busy: a
//! request served inline that stalls holds up the requests behind it for one or two ticks,
//! then the standby listens. No request ever waits for another request to be served (no
//! sparsefs handler waits for another FUSE request; the daemon's only notification, an
//! attribute invalidation, takes no lock a request holds), so a stalled request ends when
//! its backend call does.
//!
//! Locks: `idle` is a leaf lock (rank: innermost, below every sparsefs lock; none is held
//! when a thread takes it: it is taken only between requests). It is held for a push, a
//! pop or a look; the wake itself (`unpark`, a futex wake) is done after it is released.
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use parking_lot::Mutex;

/// A request whose opcode has recently taken longer than this is handed off: another
/// thread is woken to listen while this one serves it. A wake of a parked thread costs
/// some microseconds (more when it lands on an idle vCPU); requests quicker than a few
/// wakes are not worth one.
pub(crate) const SLOW_NS: u64 = 25_000;

/// Opcodes at or above this share the last slot (CUSE and notify replies: rare).
const SLOTS: usize = 64;

/// Counters of the turn-taking, read by the filesystem for its statistics.
#[derive(Debug)]
pub struct TurnStats {
    /// Requests served by the thread that read them, with nobody else woken.
    pub inline: AtomicU64,
    /// Requests for which a parked thread was woken to listen meanwhile.
    pub handed_off: AtomicU64,
}

/// The counters of this process's session (one session per process here).
pub static TURN_STATS: TurnStats = TurnStats {
    inline: AtomicU64::new(0),
    handed_off: AtomicU64::new(0),
};

/// Parked threads. Rank: leaf (see the module comment).
#[derive(Debug, Default)]
struct Idle {
    /// Parked threads waiting to be called, the last parked on top.
    stack: Vec<thread::Thread>,
    /// The standby: the parked thread that looks every [`STANDBY_TICK`] whether a request
    /// has been served for a whole tick with nobody listening, and then listens itself.
    standby: Option<thread::Thread>,
    /// The standby was called to listen (a hand-off found the stack empty).
    standby_called: bool,
}

#[derive(Debug)]
pub(crate) struct Turns {
    /// Threads in (or about to enter) `read(/dev/fuse)`.
    listening: AtomicUsize,
    /// Threads serving a request.
    busy: AtomicUsize,
    /// Requests started (read and about to be served), ever.
    started: AtomicU64,
    /// Requests that arrived while another request was being served: the evidence that
    /// requests come concurrently.
    overlaps: AtomicU64,
    /// Per opcode, how often a hand-off was (or would have been) useful lately, in 1/1024
    /// (new = 7/8 old + 1/8 outcome): a request came in while the handing thread was still
    /// serving its own, or was waiting when a slow request served inline was answered.
    /// Per opcode because it differs: the kernel sends RELEASE without waiting for it (the
    /// application goes on while it is served), CREATE and UNLINK come one at a time.
    useful: Vec<AtomicU64>,
    /// Counts slow requests served inline while hand-offs are not useful: one in
    /// [`PROBE_EVERY`] is handed off anyway.
    probe: AtomicU64,
    /// Parked threads and the standby. Rank: leaf (see the module comment).
    idle: Mutex<Idle>,
    /// The standby sleeps without ticking (the mount was idle for a tick): the next
    /// request wakes it.
    standby_asleep: AtomicBool,
    /// The session ended: every thread returns.
    done: AtomicBool,
    /// Per opcode, the recent service time in ns (a decaying maximum: the larger of the
    /// sample and 7/8 of the old value).
    /// Starts above [`SLOW_NS`]: an opcode is handed off until it has shown itself quick.
    cost: Vec<AtomicU64>,
    stats: &'static TurnStats,
}

/// A hand-off is kept up while at least this share (in 1/1024) of recent ones were useful.
const USEFUL_MIN: u64 = 256;

/// While hand-offs are not useful, one slow request in this many is handed off anyway: the
/// poll at the reply only sees requests that wait for the device, and handing off now and
/// then also measured faster (`rsync -a` of 10,000 small files: 3.4-3.6 s against
/// 5.4-5.6 s without, 2 vCPUs; see vendor/fuser/SPARSEFS.md).
const PROBE_EVERY: u64 = 64;

/// How often the standby looks for a request served with nobody listening. A request that
/// was thought quick but waits (on a stalled backend, a lock held across a backend call)
/// holds up the requests behind it for one to two ticks at most; the standby costs about
/// 250 wake-ups a second while the mount is busy and none while it is idle.
pub(crate) const STANDBY_TICK: Duration = Duration::from_millis(4);

/// What [`Turns::before`] decided for one request, for [`Turns::after`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Served {
    opcode: u32,
    /// The overlap count when a hand-off was made (None: served inline).
    handed_at: Option<u64>,
    /// Served inline though slow: at its end, whether a request is waiting tells whether a
    /// hand-off would have been useful.
    inline_slow: bool,
}

impl Turns {
    pub(crate) fn new(stats: &'static TurnStats) -> Self {
        Turns {
            listening: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            overlaps: AtomicU64::new(0),
            useful: (0..SLOTS).map(|_| AtomicU64::new(512)).collect(),
            probe: AtomicU64::new(0),
            idle: Mutex::new(Idle::default()),
            standby_asleep: AtomicBool::new(false),
            done: AtomicBool::new(false),
            cost: (0..SLOTS).map(|_| AtomicU64::new(2 * SLOW_NS)).collect(),
            stats,
        }
    }

    /// Waits until this thread is the one to listen; false once the session has ended.
    ///
    /// A thread that has just served a request listens if nobody does; else it parks, as
    /// the standby if there is none, else on the stack. A parked thread listens when it is
    /// called (a hand-off took it off the stack, or called the standby) or, as the standby,
    /// when it finds nobody listening and no request started for a whole tick. (A look at a
    /// moment when nobody listens is not enough: the server of a serial stream is between
    /// its reply and its next read for a moment at every request.)
    pub(crate) fn take_turn(&self) -> bool {
        let me = thread::current();
        let mut first = true;
        let mut standby = false;
        let mut seen = self.started.load(Ordering::SeqCst);
        loop {
            {
                let mut idle = self.idle.lock();
                if self.done.load(Ordering::Acquire) {
                    if standby {
                        idle.standby = None;
                    }
                    return false;
                }
                let listening = self.listening.load(Ordering::SeqCst);
                let busy = self.busy.load(Ordering::SeqCst);
                let started = self.started.load(Ordering::SeqCst);
                let called = if standby {
                    std::mem::take(&mut idle.standby_called)
                } else {
                    !first && !idle.stack.iter().any(|t| t.id() == me.id())
                };
                // Nobody listened at this look and no request started since the last:
                // requests may be waiting behind one served inline (or, should every
                // listener be gone, behind nobody).
                let stuck = standby && listening == 0 && started == seen;
                let listen = called || (first && listening == 0) || stuck;
                if listen {
                    if standby {
                        idle.standby = None;
                        idle.standby_called = false;
                    } else {
                        idle.stack.retain(|t| t.id() != me.id());
                    }
                    self.listening.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
                let mut new_standby = false;
                if !standby && idle.standby.is_none() {
                    idle.stack.retain(|t| t.id() != me.id());
                    idle.standby = Some(me.clone());
                    standby = true;
                    new_standby = true;
                    seen = started;
                } else if !standby && first {
                    idle.stack.push(me.clone());
                }
                first = false;
                // A new standby ticks once before it may find the mount quiet: it usually
                // took the role between two requests of a busy mount.
                if standby && !new_standby {
                    let quiet = busy == 0 && started == seen;
                    seen = started;
                    if quiet {
                        // Nothing happened for a tick: sleep until the next request (or a
                        // safety timeout). The next `before` sees the flag and wakes this
                        // thread; the flag is set before `started` is read again, and
                        // `before` counts `started` before reading the flag, so one of the
                        // two sees the other.
                        self.standby_asleep.store(true, Ordering::SeqCst);
                        if self.started.load(Ordering::SeqCst) == started {
                            drop(idle);
                            thread::park_timeout(Duration::from_secs(1));
                            self.standby_asleep.store(false, Ordering::SeqCst);
                            continue;
                        }
                        self.standby_asleep.store(false, Ordering::SeqCst);
                    }
                }
            }
            // A wake that came before the park makes it return at once. The timeout of the
            // stacked threads is a safety net only: one not called parks again.
            thread::park_timeout(if standby {
                STANDBY_TICK
            } else {
                Duration::from_secs(1)
            });
        }
    }

    /// The listener's read returned (a request or an error): it no longer listens.
    pub(crate) fn got_request(&self) {
        self.listening.fetch_sub(1, Ordering::SeqCst);
    }

    /// Calls a parked thread to listen: the standby, else the top of the stack. (The
    /// standby first: the server then takes the standby's place when it is done, so a
    /// stream whose requests are handed off now and then moves between two warm threads
    /// and the stacked ones stay asleep until requests really come at once.)
    fn call_one(&self) -> bool {
        let mut idle = self.idle.lock();
        let t = match idle.standby.clone() {
            Some(t) if !idle.standby_called => {
                idle.standby_called = true;
                t
            }
            _ => match idle.stack.pop() {
                Some(t) => t,
                None => return false,
            },
        };
        drop(idle);
        t.unpark();
        true
    }

    /// Before serving a request with this opcode: wakes a parked thread to listen if
    /// nobody listens, the request may take long (its opcode's recent service time is above
    /// [`SLOW_NS`]) and requests have lately come while others were served.
    pub(crate) fn before(&self, opcode: u32) -> Served {
        self.started.fetch_add(1, Ordering::SeqCst);
        if self.busy.fetch_add(1, Ordering::SeqCst) > 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        if self.standby_asleep.load(Ordering::SeqCst) {
            // The mount was idle: the standby starts ticking again.
            let t = self.idle.lock().standby.clone();
            if let Some(t) = t {
                self.standby_asleep.store(false, Ordering::SeqCst);
                t.unpark();
            }
        }
        let mut served = Served {
            opcode,
            handed_at: None,
            inline_slow: false,
        };
        let slow = self.cost[slot(opcode)].load(Ordering::Relaxed) > SLOW_NS;
        if slow && self.listening.load(Ordering::SeqCst) == 0 {
            if self.useful[slot(opcode)].load(Ordering::Relaxed) >= USEFUL_MIN
                || self.probe.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY == 0
            {
                let at = self.overlaps.load(Ordering::SeqCst);
                if self.call_one() {
                    served.handed_at = Some(at);
                    self.stats.handed_off.fetch_add(1, Ordering::Relaxed);
                    return served;
                }
            } else {
                served.inline_slow = true;
                PROBE.with(|p| p.set(Probe::Armed));
            }
        }
        self.stats.inline.fetch_add(1, Ordering::Relaxed);
        served
    }

    /// After serving a request: learns its service time and, for a hand-off, whether
    /// another request came in meanwhile, or for a slow request served inline, whether one
    /// was waiting when it was answered (found by [`before_reply`]: a poll of the device
    /// that does not block, made only then: a syscall is nothing beside a slow request).
    pub(crate) fn after(&self, served: Served, took: Duration) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
        let c = &self.cost[slot(served.opcode)];
        let sample = took.as_nanos().min(u64::MAX as u128) as u64;
        // A decaying maximum, not an average: one long request marks its opcode slow for
        // the next dozen or so, so a quick opcode that sometimes waits (on a lock held
        // across a backend call, on a cold cache) is soon handed off rather than made to
        // hold up the requests behind it again. Racy read-modify-writes between threads: a
        // lost sample only slows the learning.
        let old = c.load(Ordering::Relaxed);
        c.store(sample.max(old - old / 8), Ordering::Relaxed);
        let outcome = match served.handed_at {
            Some(at) => Some(self.overlaps.load(Ordering::SeqCst) > at),
            None if served.inline_slow => match PROBE.with(|p| p.replace(Probe::Off)) {
                Probe::Found(w) => Some(w),
                // Answered from another thread, or not at all (FORGET): unknown.
                _ => None,
            },
            None => None,
        };
        if let Some(useful) = outcome {
            let u = &self.useful[slot(served.opcode)];
            u.store(
                moving(u.load(Ordering::Relaxed), if useful { 1024 } else { 0 }),
                Ordering::Relaxed,
            );
        }
    }

    /// The session ended (or this thread's loop failed): wakes every parked thread so
    /// each sees it and returns.
    pub(crate) fn finish(&self) {
        self.done.store(true, Ordering::Release);
        let (stack, standby) = {
            let mut idle = self.idle.lock();
            (std::mem::take(&mut idle.stack), idle.standby.clone())
        };
        for t in stack.into_iter().chain(standby) {
            t.unpark();
        }
    }
}

fn moving(old: u64, sample: u64) -> u64 {
    old - old / 8 + sample / 8
}

/// The probe of a slow request served inline: armed by [`Turns::before`], taken by the
/// reply (see [`before_reply`]), read by [`Turns::after`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Probe {
    Off,
    Armed,
    Found(bool),
}

thread_local! {
    static PROBE: std::cell::Cell<Probe> = const { std::cell::Cell::new(Probe::Off) };
}

/// Called by the channel just before it writes a reply (or a notification) from this
/// thread: if the request this thread serves is a slow one served inline, whether another
/// request is waiting now, before the reply lets the application send its next one.
pub(crate) fn before_reply(fd: std::os::fd::BorrowedFd<'_>) {
    if PROBE.with(|p| p.get()) == Probe::Armed {
        let w = waiting(fd);
        PROBE.with(|p| p.set(Probe::Found(w)));
    }
}

/// Whether a request is waiting to be read on `fd` (a poll that does not block).
fn waiting(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLIN != 0
}

fn slot(opcode: u32) -> usize {
    (opcode as usize).min(SLOTS - 1)
}

/// The opcode of a raw request (`fuse_in_header.opcode`, native endian, bytes 4..8).
pub(crate) fn opcode(buf: &[u8]) -> u32 {
    buf.get(4..8)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    static STATS: TurnStats = TurnStats {
        inline: AtomicU64::new(0),
        handed_off: AtomicU64::new(0),
    };

    const QUICK: u32 = 3; // GETATTR
    const SLOW: u32 = 10; // UNLINK

    fn learnt() -> Turns {
        let t = Turns::new(&STATS);
        for _ in 0..40 {
            let s = t.before(QUICK);
            t.after(s, Duration::from_micros(2));
            let s = t.before(SLOW);
            t.after(s, Duration::from_micros(200));
        }
        t
    }

    /// The reply of a request with nobody waiting.
    fn before_reply_nothing_waiting() {
        if PROBE.with(|p| p.get()) == Probe::Armed {
            PROBE.with(|p| p.set(Probe::Found(false)));
        }
    }

    /// A thread that stays parked until told to stop, to stand in the idle stack.
    fn sleeper(stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                thread::park();
            }
        })
    }

    #[test]
    fn a_quick_opcode_is_served_inline_and_a_slow_one_wakes_a_parked_thread() {
        let t = Arc::new(learnt());
        assert!(t.take_turn());
        // A second thread finds a listener and parks.
        let t2 = t.clone();
        let parked = thread::spawn(move || {
            let ok = t2.take_turn();
            t2.got_request();
            ok
        });
        while t.idle.lock().standby.is_none() {
            thread::yield_now();
        }
        t.got_request();
        let s = t.before(QUICK);
        assert!(s.handed_at.is_none(), "a learnt quick opcode is served inline");
        t.after(s, Duration::from_micros(2));
        let s = t.before(SLOW);
        assert!(s.handed_at.is_some(), "a slow opcode calls the standby");
        assert!(parked.join().unwrap(), "the woken thread takes its turn to listen");
        t.after(s, Duration::from_micros(200));
        t.finish();
        assert!(!t.take_turn(), "after the end nobody listens again");
    }

    #[test]
    fn one_long_request_marks_its_opcode_slow_for_a_while() {
        let t = learnt();
        let s = t.before(QUICK);
        t.after(s, Duration::from_millis(5));
        assert!(t.cost[slot(QUICK)].load(Ordering::Relaxed) > SLOW_NS);
        for _ in 0..40 {
            let s = t.before(QUICK);
            t.after(s, Duration::from_micros(2));
        }
        assert!(t.cost[slot(QUICK)].load(Ordering::Relaxed) <= SLOW_NS);
    }

    #[test]
    fn hand_offs_stop_where_requests_come_one_at_a_time_and_resume_where_they_overlap() {
        let t = learnt();
        let stop = Arc::new(AtomicBool::new(false));
        let helper = sleeper(stop.clone());
        // One slow request; with `overlap`, another request comes while it is served (to
        // the helper if it was called, else it is waiting at the end).
        let handed = |t: &Turns, overlap: bool| {
            t.idle.lock().stack.push(helper.thread().clone());
            let s = t.before(SLOW);
            if overlap && s.handed_at.is_some() {
                let o = t.before(QUICK);
                t.after(o, Duration::from_micros(2));
            }
            if overlap && s.handed_at.is_none() {
                // A request comes while it is served inline: it waits at the reply.
                PROBE.with(|p| {
                    if p.get() == Probe::Armed {
                        p.set(Probe::Found(true))
                    }
                });
            }
            before_reply_nothing_waiting();
            t.after(s, Duration::from_micros(200));
            t.idle.lock().stack.clear();
            s.handed_at.is_some()
        };
        // Serial: nobody came while each request was served; hand-offs stop, bar one
        // probe in PROBE_EVERY.
        let serial: Vec<bool> = (0..200).map(|_| handed(&t, false)).collect();
        let n = serial.iter().filter(|&&h| h).count();
        assert!(n <= 8 + 200 / PROBE_EVERY as usize, "{n} of 200 serial requests handed off");
        let late = serial[100..].iter().filter(|&&h| h).count();
        assert!(late <= 100 / PROBE_EVERY as usize + 1, "{late} of the last 100");
        assert!(t.useful[slot(SLOW)].load(Ordering::Relaxed) < USEFUL_MIN);
        // Concurrent: requests found waiting after slow ones served inline bring the
        // hand-offs back within a few requests, and they stay.
        let all: Vec<bool> = (0..200).map(|_| handed(&t, true)).collect();
        let resumed = all.iter().rposition(|h| !h).map_or(0, |i| i + 1);
        assert!(resumed <= 4, "resumed after {resumed} requests");
        stop.store(true, Ordering::SeqCst);
        helper.thread().unpark();
        helper.join().unwrap();
    }

    #[test]
    fn usefulness_is_learnt_per_opcode() {
        // RELEASE is sent without the application waiting: its next request comes while
        // RELEASE is served. UNLINK is waited for: nothing comes meanwhile.
        const RELEASE: u32 = 18;
        let t = learnt();
        for _ in 0..40 {
            let s = t.before(RELEASE);
            t.after(s, Duration::from_micros(200));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let helper = sleeper(stop.clone());
        let mut handed = [0usize; 2];
        for i in 0..400 {
            let (op, overlap) = if i % 2 == 0 { (RELEASE, true) } else { (SLOW, false) };
            t.idle.lock().stack.push(helper.thread().clone());
            let s = t.before(op);
            if overlap {
                if s.handed_at.is_some() {
                    let o = t.before(QUICK);
                    t.after(o, Duration::from_micros(2));
                } else {
                    PROBE.with(|p| {
                        if p.get() == Probe::Armed {
                            p.set(Probe::Found(true))
                        }
                    });
                }
            }
            before_reply_nothing_waiting();
            t.after(s, Duration::from_micros(200));
            t.idle.lock().stack.clear();
            handed[i % 2] += usize::from(s.handed_at.is_some());
        }
        assert!(handed[0] >= 190, "RELEASE handed off {} of 200", handed[0]);
        assert!(handed[1] <= 20, "UNLINK handed off {} of 200", handed[1]);
        stop.store(true, Ordering::SeqCst);
        helper.thread().unpark();
        helper.join().unwrap();
    }

    #[test]
    fn the_end_wakes_every_parked_thread() {
        let t = Arc::new(Turns::new(&STATS));
        assert!(t.take_turn());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let t = t.clone();
                thread::spawn(move || t.take_turn())
            })
            .collect();
        while {
            let i = t.idle.lock();
            i.stack.len() + usize::from(i.standby.is_some()) < 3
        } {
            thread::yield_now();
        }
        t.finish();
        for w in waiters {
            assert!(!w.join().unwrap());
        }
    }

    #[test]
    fn a_request_served_for_a_whole_tick_with_nobody_listening_makes_the_standby_listen() {
        let t = Arc::new(learnt());
        assert!(t.take_turn());
        let t2 = t.clone();
        let standby = thread::spawn(move || {
            let ok = t2.take_turn();
            t2.got_request();
            ok
        });
        while t.idle.lock().standby.is_none() {
            thread::yield_now();
        }
        // A quick request is read and served inline (nobody else called), and then stalls.
        t.got_request();
        let begun = std::time::Instant::now();
        let s = t.before(QUICK);
        assert!(s.handed_at.is_none());
        assert!(standby.join().unwrap(), "the standby listens");
        let waited = begun.elapsed();
        assert!(waited >= STANDBY_TICK, "after a whole tick, not at once: {waited:?}");
        t.after(s, waited);
        t.finish();
    }

    #[test]
    fn an_idle_standby_sleeps_until_the_next_request() {
        let t = Arc::new(learnt());
        assert!(t.take_turn());
        let t2 = t.clone();
        let standby = thread::spawn(move || t2.take_turn());
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while !t.standby_asleep.load(Ordering::SeqCst) {
            assert!(std::time::Instant::now() < until, "the standby never slept");
            thread::yield_now();
        }
        t.got_request();
        let s = t.before(QUICK);
        assert!(
            !t.standby_asleep.load(Ordering::SeqCst),
            "the request woke the standby"
        );
        t.after(s, Duration::from_micros(2));
        // The server listens again: the standby stays parked and ends with the session.
        assert!(t.take_turn());
        t.finish();
        assert!(!standby.join().unwrap());
    }
}
