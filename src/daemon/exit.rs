//! The daemon's exit flush: telling a slow backend from a wedged lock, and giving up with a report when waiting cannot help.

use super::*;

/// How the exit flush is doing, from what every thread is doing ([`crate::lock::report`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ExitProgress {
    /// Nothing says it is stuck.
    Flushing,
    /// A thread is in a backend call (a slow backend: worth waiting for).
    Backend {
        /// The thread.
        thread: String,
        /// The call.
        op: &'static str,
        /// For how long.
        secs: f64,
    },
    /// No backend call in flight, a thread waits for a lock, and nothing moved for the
    /// wedge time: a wedged lock, which waiting will not cure.
    Wedged,
}

/// Tells a slow backend from a wedged lock (pure; see [`ExitProgress`]). `stalled`: how
/// long the flush has made no progress (dirty bytes and backend call counts unchanged).
pub fn judge(
    threads: &[crate::lock::ThreadReport],
    stalled: std::time::Duration,
    wedge_after: std::time::Duration,
) -> ExitProgress {
    if let Some(t) = threads
        .iter()
        .filter(|t| t.io.is_some())
        .max_by_key(|t| t.io.map(|x| x.1))
    {
        let (op, d) = t.io.expect("filtered");
        return ExitProgress::Backend {
            thread: t.name.clone(),
            op,
            secs: d.as_secs_f64(),
        };
    }
    if stalled >= wedge_after && threads.iter().any(|t| t.waiting.is_some()) {
        return ExitProgress::Wedged;
    }
    ExitProgress::Flushing
}

/// Seconds without progress, no backend call in flight and a thread waiting for a lock
/// after which the exit flush counts as wedged (`SPARSEFS_EXIT_WEDGE_SECS`, default 10).
pub(super) fn wedge_after() -> std::time::Duration {
    std::time::Duration::from_secs_f64(
        std::env::var("SPARSEFS_EXIT_WEDGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10.0),
    )
}

/// Waits for the exit flush, telling a slow backend (waited for, reported every 10 s)
/// from a wedged lock (the stuck threads and the abandoned dirty bytes are logged and the
/// daemon gives up) and giving up at once on a second signal. Returns the exit status.
pub(super) fn exit_watch(
    fs: &SparseFs,
    flush: std::thread::JoinHandle<usize>,
    sigs: &libc::sigset_t,
    wedge_after: std::time::Duration,
) -> i32 {
    use std::time::{Duration, Instant};
    let s = fs.stats();
    let token = || {
        let calls: u64 = crate::stats::OPS.iter().map(|op| s.calls(*op)).sum();
        (
            s.dirty_bytes.load(std::sync::atomic::Ordering::Relaxed),
            calls,
        )
    };
    let dirty = || s.dirty_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let give_up = |why: &str| {
        let threads = crate::lock::report();
        error!(
            dirty_bytes_abandoned = dirty(),
            "exit flush {why}: giving up; {} dirty bytes are abandoned (not on the backend)",
            dirty()
        );
        for t in &threads {
            error!("  thread {t}");
        }
        1
    };
    let (mut last, mut since, mut logged) = (token(), Instant::now(), Instant::now());
    loop {
        if flush.is_finished() {
            return match flush.join() {
                Ok(0) => 0,
                _ => 1,
            };
        }
        if let Some(sig) = sys::wait_signal_timeout(sigs, Duration::from_millis(200)) {
            return give_up(&format!("interrupted by a second signal ({sig})"));
        }
        let now = token();
        if now != last {
            (last, since) = (now, Instant::now());
        }
        match judge(&crate::lock::report(), since.elapsed(), wedge_after) {
            ExitProgress::Wedged => {
                return give_up(&format!(
                    "wedged: no progress for {:.0} s, no backend call in flight, a thread waits for a lock",
                    since.elapsed().as_secs_f64()
                ));
            }
            ExitProgress::Backend { thread, op, secs }
                if logged.elapsed() >= Duration::from_secs(10) =>
            {
                info!(
                    thread,
                    op,
                    secs,
                    dirty_bytes = dirty(),
                    "exit flush waiting for a slow backend call"
                );
                logged = Instant::now();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{Rank, ThreadReport};
    use std::time::Duration;

    fn t(name: &str, waiting: Option<Rank>, io: Option<&'static str>) -> ThreadReport {
        ThreadReport {
            name: name.into(),
            held: Vec::new(),
            waiting: waiting.map(|r| (r, Duration::from_secs(30))),
            io: io.map(|op| (op, Duration::from_secs(12))),
        }
    }

    #[test]
    fn a_thread_in_a_backend_call_is_a_slow_backend_however_long_nothing_moved() {
        let threads = [
            t("sparsefs-exit", Some(Rank::Engine), None),
            t("fuser-0", None, Some("pwrite")),
        ];
        let j = judge(&threads, Duration::from_secs(600), Duration::from_secs(10));
        assert_eq!(
            j,
            ExitProgress::Backend {
                thread: "fuser-0".into(),
                op: "pwrite",
                secs: 12.0
            }
        );
    }

    #[test]
    fn a_lock_wait_with_no_backend_call_and_no_progress_is_wedged_only_after_the_wedge_time() {
        let threads = [
            t("sparsefs-exit", Some(Rank::Engine), None),
            t("sparsefs-wedge", None, None),
        ];
        let wedge = Duration::from_secs(10);
        assert_eq!(
            judge(&threads, Duration::from_secs(3), wedge),
            ExitProgress::Flushing
        );
        assert_eq!(
            judge(&threads, Duration::from_secs(10), wedge),
            ExitProgress::Wedged
        );
    }

    #[test]
    fn no_lock_wait_is_never_wedged() {
        let threads = [t("sparsefs-exit", None, None)];
        assert_eq!(
            judge(&threads, Duration::from_secs(600), Duration::from_secs(10)),
            ExitProgress::Flushing
        );
    }
}
