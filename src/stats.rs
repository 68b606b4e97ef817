//! Counters for every backend call (count, bytes, latency) and for what the sparse
//! engine saved, shared by all files of a mount. Read by `sparsefs stats` and tests.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Kinds of backend call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// pread
    Read = 0,
    /// pwrite / pwritev
    Write,
    /// fallocate(PUNCH_HOLE)
    Punch,
    /// fallocate (other modes)
    Allocate,
    /// ftruncate
    Truncate,
    /// fsync / fdatasync
    Fsync,
    /// lseek(SEEK_DATA/SEEK_HOLE)
    Lseek,
}

/// All ops, in display order.
pub const OPS: [Op; 7] = [
    Op::Read,
    Op::Write,
    Op::Punch,
    Op::Allocate,
    Op::Truncate,
    Op::Fsync,
    Op::Lseek,
];

impl Op {
    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        [
            "read",
            "write",
            "punch",
            "allocate",
            "ftruncate",
            "fsync",
            "lseek",
        ][self as usize]
    }
}

/// Kinds of metadata call on the backend (see [`crate::backend::meta`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaOp {
    /// openat of a name (lookups, creates, the sidecar store)
    Open = 0,
    /// an open through /proc/self/fd (a reopen of an fd already held)
    Reopen,
    /// fstat, fresh stat, fstatat, access
    Stat,
    /// mkdir, mknod, symlink, link
    Create,
    /// unlink, rmdir
    Unlink,
    /// rename
    Rename,
    /// chmod, chown, utimens
    Setattr,
    /// getxattr, listxattr, setxattr, removexattr
    Xattr,
    /// a directory listing
    Readdir,
    /// readlink
    Readlink,
    /// statfs
    Statfs,
    /// fsync of a directory
    Fsync,
    /// name_to_handle_at, open_by_handle_at
    Handle,
}

/// All metadata call kinds, in display order.
pub const META_OPS: [MetaOp; 13] = [
    MetaOp::Open,
    MetaOp::Reopen,
    MetaOp::Stat,
    MetaOp::Create,
    MetaOp::Unlink,
    MetaOp::Rename,
    MetaOp::Setattr,
    MetaOp::Xattr,
    MetaOp::Readdir,
    MetaOp::Readlink,
    MetaOp::Statfs,
    MetaOp::Fsync,
    MetaOp::Handle,
];

impl MetaOp {
    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        [
            "open", "reopen", "stat", "create", "unlink", "rename", "setattr", "xattr", "readdir",
            "readlink", "statfs", "fsync", "handle",
        ][self as usize]
    }
}

/// Why a flush ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// fsync/fdatasync
    Fsync = 0,
    /// close (FUSE flush) or release
    Close,
    /// a full write-size window of complete blocks
    Window,
    /// the per-file or global dirty limit
    DirtyLimit,
    /// the dirty age
    Age,
    /// truncate, fallocate, copy_file_range, seek learning: ops that need the backend current
    Sync,
    /// unmount
    Unmount,
}

/// All triggers, in display order.
pub const TRIGGERS: [Trigger; 7] = [
    Trigger::Fsync,
    Trigger::Close,
    Trigger::Window,
    Trigger::DirtyLimit,
    Trigger::Age,
    Trigger::Sync,
    Trigger::Unmount,
];

impl Trigger {
    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        [
            "fsync",
            "close",
            "window",
            "dirty_limit",
            "age",
            "sync",
            "unmount",
        ][self as usize]
    }
}

#[derive(Debug, Default)]
struct OpCounter {
    calls: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
    errors: AtomicU64,
}

/// The counters of one mount.
#[derive(Debug, Default)]
pub struct Stats {
    ops: [OpCounter; 7],
    meta: [[AtomicU64; 2]; META_OPS.len()],
    flushes: [AtomicU64; 7],
    /// Bytes applications wrote through the mount.
    pub app_write_bytes: AtomicU64,
    /// Write requests from applications.
    pub app_writes: AtomicU64,
    /// Bytes applications read through the mount.
    pub app_read_bytes: AtomicU64,
    /// Zero bytes written by applications that never reached the backend as writes.
    pub zero_bytes_elided: AtomicU64,
    /// Bytes of old data turned into holes by punching.
    pub bytes_punched: AtomicU64,
    /// Zero bytes written out because the backend cannot punch.
    pub zero_bytes_written: AtomicU64,
    /// Read bytes served from known holes without backend I/O.
    pub hole_read_bytes: AtomicU64,
    /// SEEK_DATA/SEEK_HOLE answered from the index.
    pub seeks_from_index: AtomicU64,
    /// Dirty bytes buffered now.
    pub dirty_bytes: AtomicU64,
    /// Highest dirty bytes seen.
    pub dirty_peak: AtomicU64,
    /// Read-write fds closed because no application had the file open any more (at the
    /// last close, or before its name was removed).
    pub data_fds_parked: AtomicU64,
    /// Read-write (data) fds of regular files the daemon holds now (a gauge, shared with
    /// every file's [`crate::backend::reopen::Reopening`]).
    pub data_fds: std::sync::Arc<AtomicU64>,
    /// Inodes the kernel knows through this mount now, each holding one `O_PATH` fd (a
    /// gauge, set when the stats are read).
    pub inodes: AtomicU64,
    /// Open file and directory handles now (a gauge).
    pub open_handles: AtomicU64,
    /// Window writes launched to run while the application goes on ([`crate::flight`]).
    pub flights: AtomicU64,
    /// Window writes in flight now (a gauge).
    pub flights_in_flight: AtomicU64,
    /// Data chunks read ahead of in-order readers ([`crate::prefetch`]).
    pub prefetches: AtomicU64,
    /// Bytes of application reads served from chunks read ahead.
    pub prefetch_hit_bytes: AtomicU64,
    /// Bytes of chunks read ahead, held or being read now (a gauge).
    pub prefetch_bytes: AtomicU64,
    /// Extent maps stored with files (at close, by scan).
    pub maps_stored: AtomicU64,
    /// Stored maps loaded at open (they described the file as it is).
    pub maps_loaded: AtomicU64,
    /// Stored maps found stale at open (the file changed since; treated as data).
    pub maps_stale: AtomicU64,
    /// Stored maps refused as damaged or foreign (a warning each; treated as data).
    pub maps_refused: AtomicU64,
    /// Opens served by kernel passthrough (the kernel reads the backend file itself).
    pub passthrough_opens: AtomicU64,
    /// Of which writable (a writer joining passthrough readers of the same file).
    pub passthrough_writers: AtomicU64,
    /// Directory listings read from the backend.
    pub dir_listings: AtomicU64,
    /// opendirs that let the kernel keep its cached listing.
    pub dir_cache_kept: AtomicU64,
    /// Times memory was given back after the kernel forgot many inodes.
    pub memory_trims: AtomicU64,
    /// Latency histogram of each backend call kind (indexed by [`Op`]).
    pub latency: [crate::metrics::Histogram; OPS.len()],
    /// The mount-wide dirty limit (a constant, set at mount; 0 when not set).
    pub dirty_limit: AtomicU64,
    /// The fd pool's high-water mark (a constant, set at mount; 0 when not set).
    pub fd_high: AtomicU64,
    /// Latency and errors of FUSE requests, by operation (counted by the adapter).
    pub fuse: crate::metrics::FuseMetrics,
}

impl Stats {
    /// Records one backend call.
    pub fn record(&self, op: Op, bytes: u64, nanos: u64, ok: bool) {
        let c = &self.ops[op as usize];
        c.calls.fetch_add(1, Relaxed);
        c.bytes.fetch_add(bytes, Relaxed);
        c.nanos.fetch_add(nanos, Relaxed);
        self.latency[op as usize].observe(nanos);
        if !ok {
            c.errors.fetch_add(1, Relaxed);
        }
    }

    /// Records one metadata call on the backend.
    pub fn meta_call(&self, op: MetaOp, ok: bool) {
        let c = &self.meta[op as usize];
        c[0].fetch_add(1, Relaxed);
        if !ok {
            c[1].fetch_add(1, Relaxed);
        }
    }

    /// Metadata calls of one kind so far.
    pub fn meta_calls(&self, op: MetaOp) -> u64 {
        self.meta[op as usize][0].load(Relaxed)
    }

    /// Every metadata call so far.
    pub fn meta_total(&self) -> u64 {
        META_OPS.iter().map(|op| self.meta_calls(*op)).sum()
    }

    /// Calls of one kind so far.
    pub fn calls(&self, op: Op) -> u64 {
        self.ops[op as usize].calls.load(Relaxed)
    }

    /// Bytes of one kind so far.
    pub fn bytes(&self, op: Op) -> u64 {
        self.ops[op as usize].bytes.load(Relaxed)
    }

    /// Counts one flush.
    pub fn flushed(&self, t: Trigger) {
        self.flushes[t as usize].fetch_add(1, Relaxed);
    }

    /// Adjusts the dirty-byte gauge.
    pub fn dirty_add(&self, n: u64) {
        let now = self.dirty_bytes.fetch_add(n, Relaxed) + n;
        self.dirty_peak.fetch_max(now, Relaxed);
    }

    /// Adjusts the dirty-byte gauge down.
    pub fn dirty_sub(&self, n: u64) {
        self.dirty_bytes.fetch_sub(n, Relaxed);
    }

    /// All counters as a JSON object (no external serializer needed for flat numbers).
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        let g = |a: &AtomicU64| a.load(Relaxed);
        let _ = write!(
            s,
            "\"app_write_bytes\":{},\"app_writes\":{},\"app_read_bytes\":{},\"zero_bytes_elided\":{},\
             \"bytes_punched\":{},\"zero_bytes_written\":{},\"hole_read_bytes\":{},\
             \"seeks_from_index\":{},\"dirty_bytes\":{},\"dirty_peak\":{},\"data_fds_parked\":{},\"data_fds\":{},\"inodes\":{},\"passthrough_opens\":{},\"passthrough_writers\":{},\"dir_listings\":{},\"dir_cache_kept\":{},\"memory_trims\":{},\"dirty_limit\":{},\"fd_high\":{},\"open_handles\":{},\"maps_stored\":{},\"maps_loaded\":{},\"maps_stale\":{},\"maps_refused\":{},\"flights\":{},\"flights_in_flight\":{},\"prefetches\":{},\"prefetch_hit_bytes\":{},\"prefetch_bytes\":{},\"requests_inline\":{},\"requests_handed_off\":{},\"backend\":{{",
            g(&self.app_write_bytes),
            g(&self.app_writes),
            g(&self.app_read_bytes),
            g(&self.zero_bytes_elided),
            g(&self.bytes_punched),
            g(&self.zero_bytes_written),
            g(&self.hole_read_bytes),
            g(&self.seeks_from_index),
            g(&self.dirty_bytes),
            g(&self.dirty_peak),
            g(&self.data_fds_parked),
            g(&self.data_fds),
            g(&self.inodes),
            g(&self.passthrough_opens),
            g(&self.passthrough_writers),
            g(&self.dir_listings),
            g(&self.dir_cache_kept),
            g(&self.memory_trims),
            g(&self.dirty_limit),
            g(&self.fd_high),
            g(&self.open_handles),
            g(&self.maps_stored),
            g(&self.maps_loaded),
            g(&self.maps_stale),
            g(&self.maps_refused),
            g(&self.flights),
            g(&self.flights_in_flight),
            g(&self.prefetches),
            g(&self.prefetch_hit_bytes),
            g(&self.prefetch_bytes),
            g(&fuser::TURN_STATS.inline),
            g(&fuser::TURN_STATS.handed_off),
        );
        for (i, op) in OPS.iter().enumerate() {
            let c = &self.ops[*op as usize];
            let _ = write!(
                s,
                "{}\"{}\":{{\"calls\":{},\"bytes\":{},\"nanos\":{},\"errors\":{}}}",
                if i > 0 { "," } else { "" },
                op.name(),
                g(&c.calls),
                g(&c.bytes),
                g(&c.nanos),
                g(&c.errors)
            );
        }
        s.push_str("},\"meta\":{");
        for (i, op) in META_OPS.iter().enumerate() {
            let c = &self.meta[*op as usize];
            let _ = write!(
                s,
                "{}\"{}\":{{\"calls\":{},\"errors\":{}}}",
                if i > 0 { "," } else { "" },
                op.name(),
                g(&c[0]),
                g(&c[1])
            );
        }
        s.push_str("},\"flushes\":{");
        for (i, t) in TRIGGERS.iter().enumerate() {
            let _ = write!(
                s,
                "{}\"{}\":{}",
                if i > 0 { "," } else { "" },
                t.name(),
                g(&self.flushes[*t as usize])
            );
        }
        s.push_str("},\"latency\":{");
        for (i, op) in OPS.iter().enumerate() {
            let _ = write!(s, "{}\"{}\":{{", if i > 0 { "," } else { "" }, op.name());
            for (b, n) in self.latency[*op as usize].counts().iter().enumerate() {
                let _ = write!(s, "{}\"b{b}\":{n}", if b > 0 { "," } else { "" });
            }
            s.push('}');
        }
        s.push_str("},");
        self.fuse.json(&mut s);
        s.push('}');
        s
    }
}

/// Flattens the JSON of [`Stats::to_json`] into `(dotted.key, value)` pairs.
pub fn flatten_json(json: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut key = String::new();
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                key.clear();
                for k in chars.by_ref() {
                    if k == '"' {
                        break;
                    }
                    key.push(k);
                }
            }
            ':' => {
                if chars.peek() == Some(&'{') {
                    path.push(key.clone());
                } else {
                    let mut v = String::new();
                    while let Some(&d) = chars.peek() {
                        if d == ',' || d == '}' {
                            break;
                        }
                        v.push(d);
                        chars.next();
                    }
                    let mut full = path.clone();
                    full.push(key.clone());
                    out.push((full.join("."), v.trim().parse().unwrap_or(0)));
                }
            }
            '}' => {
                path.pop();
            }
            _ => {}
        }
    }
    out
}

/// A byte count for people (B, KiB, MiB, ...).
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// A latency bucket bound for people (`≤50µs`, `≤2.5ms`, `>10s`; `-` for none).
fn human_secs(b: Option<f64>) -> String {
    match b {
        None => "-".into(),
        Some(s) if s.is_infinite() => ">10s".into(),
        Some(s) if s < 1e-3 => format!("≤{}µs", (s * 1e6).round()),
        Some(s) if s < 1.0 => format!("≤{}ms", (s * 1e4).round() / 10.0),
        Some(s) => format!("≤{s}s"),
    }
}

/// What `stats --watch` adds after the first sample: the rates per second between two
/// samples (flattened as by [`flatten_json`]) of the counters that move, and of all
/// backend calls together.
pub fn rates(prev: &[(String, u64)], now: &[(String, u64)], dt: std::time::Duration) -> String {
    let secs = dt.as_secs_f64().max(1e-3);
    let before: std::collections::HashMap<&str, u64> =
        prev.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let delta = |k: &str, v: u64| v.saturating_sub(before.get(k).copied().unwrap_or(0));
    let mut s = String::new();
    let _ = writeln!(s, "per second over the last {secs:.1} s:");
    for (key, label, bytes) in [
        ("app_write_bytes", "application writes", true),
        ("app_read_bytes", "application reads", true),
        ("zero_bytes_elided", "zero bytes elided", true),
        ("bytes_punched", "old data punched", true),
        ("hole_read_bytes", "reads served by holes", true),
        ("seeks_from_index", "seeks from the index", false),
    ] {
        if let Some((_, v)) = now.iter().find(|(k, _)| k == key) {
            let d = delta(key, *v) as f64 / secs;
            let shown = if bytes {
                format!("{}/s", human(d as u64))
            } else {
                format!("{d:.0}/s")
            };
            let _ = writeln!(s, "  {label:<22}{shown:>12}");
        }
    }
    let calls: f64 = now
        .iter()
        .filter(|(k, _)| k.starts_with("backend.") && k.ends_with(".calls"))
        .map(|(k, v)| delta(k, *v) as f64)
        .sum::<f64>()
        / secs;
    let _ = writeln!(
        s,
        "  {:<22}{:>12}",
        "backend calls",
        format!("{calls:.0}/s")
    );
    s
}

/// Renders the JSON of [`Stats::to_json`] (as read from a daemon) as a table for people.
pub fn table_from_json(json: &str) -> String {
    let m: std::collections::HashMap<String, u64> = flatten_json(json).into_iter().collect();
    let g = |k: &str| m.get(k).copied().unwrap_or(0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "application writes    {:>12} in {} calls",
        human(g("app_write_bytes")),
        g("app_writes")
    );
    let _ = writeln!(
        s,
        "application reads     {:>12}",
        human(g("app_read_bytes"))
    );
    let _ = writeln!(
        s,
        "zero bytes elided     {:>12}",
        human(g("zero_bytes_elided"))
    );
    let _ = writeln!(s, "old data punched      {:>12}", human(g("bytes_punched")));
    let _ = writeln!(
        s,
        "zeros written         {:>12}  (backend cannot punch)",
        human(g("zero_bytes_written"))
    );
    let _ = writeln!(
        s,
        "reads served by holes {:>12}  (no backend I/O)",
        human(g("hole_read_bytes"))
    );
    let _ = writeln!(
        s,
        "reads served ahead    {:>12}  ({} chunks read ahead, {} held now)",
        human(g("prefetch_hit_bytes")),
        g("prefetches"),
        human(g("prefetch_bytes"))
    );
    let _ = writeln!(s, "seeks from the index  {:>12}", g("seeks_from_index"));
    let _ = writeln!(
        s,
        "dirty now / peak      {:>12} / {}",
        human(g("dirty_bytes")),
        human(g("dirty_peak"))
    );
    let _ = writeln!(s, "idle fds closed       {:>12}", g("data_fds_parked"));
    let _ = writeln!(
        s,
        "backend fds held now  {:>12}  ({} data, {} inodes)",
        g("data_fds") + g("inodes"),
        g("data_fds"),
        g("inodes")
    );
    let _ = writeln!(s, "open handles          {:>12}", g("open_handles"));
    let _ = writeln!(
        s,
        "maps stored/loaded    {:>12}  ({} loaded, {} stale, {} refused)",
        g("maps_stored"),
        g("maps_loaded"),
        g("maps_stale"),
        g("maps_refused")
    );
    let _ = writeln!(
        s,
        "passthrough opens     {:>12}  (of which writers {})",
        g("passthrough_opens"),
        g("passthrough_writers")
    );
    let _ = writeln!(
        s,
        "directory listings    {:>12}  (kernel cache kept {})",
        g("dir_listings"),
        g("dir_cache_kept")
    );
    let _ = writeln!(
        s,
        "inodes known          {:>12}  (memory given back {} times)",
        g("inodes"),
        g("memory_trims")
    );
    let _ = writeln!(
        s,
        "requests handed off   {:>12}  (served by the thread that read them {})",
        g("requests_handed_off"),
        g("requests_inline")
    );
    let _ = writeln!(
        s,
        "backend calls            calls        bytes   avg µs  errors      p50      p99"
    );
    for op in OPS {
        let n = op.name();
        let calls = g(&format!("backend.{n}.calls"));
        let nanos = g(&format!("backend.{n}.nanos"));
        let avg = if calls > 0 {
            nanos as f64 / calls as f64 / 1000.0
        } else {
            0.0
        };
        let counts = crate::metrics::latency_counts(&m, n);
        let q = |q| human_secs(crate::metrics::quantile_bound(&counts, q));
        let _ = writeln!(
            s,
            "  {:<14} {:>12} {:>12} {:>8.1} {:>7} {:>8} {:>8}",
            n,
            calls,
            human(g(&format!("backend.{n}.bytes"))),
            avg,
            g(&format!("backend.{n}.errors")),
            q(0.5),
            q(0.99)
        );
    }
    let _ = write!(s, "backend metadata calls");
    for op in META_OPS {
        let n = op.name();
        let calls = g(&format!("meta.{n}.calls"));
        if calls > 0 {
            let _ = write!(s, " {n}={calls}");
        }
    }
    s.push('\n');
    let _ = write!(s, "flushes by trigger   ");
    for t in TRIGGERS {
        let _ = write!(s, " {}={}", t.name(), g(&format!("flushes.{}", t.name())));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn watch_rates_are_deltas_per_second_and_backend_calls_are_summed() {
        let prev = vec![
            ("app_write_bytes".to_string(), 1 << 20),
            ("backend.write.calls".to_string(), 10),
            ("meta.stat.calls".to_string(), 5),
        ];
        let now = vec![
            ("app_write_bytes".to_string(), 5 << 20),
            ("backend.write.calls".to_string(), 30),
            ("backend.fsync.calls".to_string(), 2),
            ("meta.stat.calls".to_string(), 500),
        ];
        let r = super::rates(&prev, &now, std::time::Duration::from_secs(2));
        assert!(r.contains("per second over the last 2.0 s"), "{r}");
        assert!(
            r.contains("application writes") && r.contains("2.0 MiB/s"),
            "{r}"
        );
        assert!(r.contains("backend calls") && r.contains("11/s"), "{r}");
    }

    use super::*;

    #[test]
    fn json_round_trips_into_a_table() {
        let s = Stats::default();
        s.record(Op::Write, 4096, 10, true);
        s.app_write_bytes.fetch_add(7, Relaxed);
        let flat = flatten_json(&s.to_json());
        assert!(flat.contains(&("app_write_bytes".into(), 7)), "{flat:?}");
        assert!(
            flat.contains(&("backend.write.bytes".into(), 4096)),
            "{flat:?}"
        );
        assert!(flat.contains(&("flushes.close".into(), 0)), "{flat:?}");
        let t = table_from_json(&s.to_json());
        assert!(t.contains("7 B in 0 calls"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.trim_start().starts_with("write") && l.ends_with("≤10µs    ≤10µs")),
            "p50/p99 of the write latency: {t}"
        );
        assert!(
            t.lines()
                .any(|l| l.trim_start().starts_with("write") && l.contains("4.0 KiB")),
            "{t}"
        );
    }
}
