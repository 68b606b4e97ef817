//! The background flusher thread: dirty age and the global dirty limit.

use super::*;

pub(super) fn flusher(sh: &Shared) {
    let tick = (sh.cfg.dirty_age / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    while !sh.stop.load(Relaxed) {
        {
            let mut g = sh.wake_lock.lock();
            sh.wake.wait_for(&mut g, tick);
        }
        let now = Instant::now();
        let over = sh.stats.dirty_bytes.load(Relaxed) > sh.cfg.max_dirty;
        let nodes: Vec<(Ino, Arc<FileNode>)> = sh
            .dirty
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (ino, node) in nodes {
            node.with_engine(|e, _| {
                let old = e
                    .dirty_since()
                    .is_some_and(|t| now.duration_since(t) >= sh.cfg.dirty_age);
                if old || over {
                    if over {
                        e.flush_background(Trigger::DirtyLimit, Duration::ZERO);
                    } else {
                        e.flush_background(Trigger::Age, sh.cfg.dirty_age);
                    }
                }
                if e.dirty_since().is_none() {
                    sh.dirty.lock().remove(&ino);
                }
            });
        }
    }
}
