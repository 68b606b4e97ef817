//! Prometheus text exposition (format 0.0.4) of a mount's counters, and the tiny HTTP
//! listener behind `sparsefs mount --metrics ADDR` that serves it on `GET /metrics`.
//!
//! ```text
//!  FUSE threads ──(atomics only)──> Stats ──to_json()──> flat JSON ──render()──> text
//!                                                  │                      ├─> GET /metrics
//!                               `sparsefs stats --prometheus` (xattr) ────┘
//! ```
//! Both outputs are rendered from the same JSON the `user.sparsefs.stats` xattr answers,
//! so they are the same text. FUSE request threads only ever add to atomics; the
//! listener runs on its own thread and serves one connection at a time with short
//! timeouts, so a slow or stuck scraper delays only other scrapes.
#![forbid(unsafe_code)]

use crate::stats::{META_OPS, OPS, TRIGGERS, flatten_json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (nanoseconds) of the latency histogram buckets: 10 µs to 10 s in
/// 1-2.5-5 steps; one more bucket (`+Inf`) holds everything slower.
pub const LATENCY_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Buckets of a latency histogram: [`LATENCY_BOUNDS_NS`] and `+Inf`.
pub const BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// A latency histogram: one atomic per bucket, not cumulative (a call adds to one
/// bucket); rendering makes it cumulative. No lock: observing is one `fetch_add`.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Histogram {
    /// Counts one call that took `nanos`.
    pub fn observe(&self, nanos: u64) {
        let i = LATENCY_BOUNDS_NS.partition_point(|b| *b < nanos);
        self.buckets[i].fetch_add(1, Relaxed);
    }

    /// The calls counted in each bucket (not cumulative).
    pub fn counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Relaxed))
    }
}

/// The upper bound (seconds) of the bucket holding quantile `q` of `counts` (not
/// cumulative), as Prometheus's `histogram_quantile` would bound it; `None` without
/// calls; `f64::INFINITY` when it falls past the last bound.
pub fn quantile_bound(counts: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(
                LATENCY_BOUNDS_NS
                    .get(i)
                    .map_or(f64::INFINITY, |b| *b as f64 / 1e9),
            );
        }
    }
    Some(f64::INFINITY)
}

/// The histogram counts of backend call kind `kind` from flattened stats JSON.
pub fn latency_counts(m: &HashMap<String, u64>, kind: &str) -> [u64; BUCKETS] {
    std::array::from_fn(|i| m.get(&format!("latency.{kind}.b{i}")).copied().unwrap_or(0))
}

/// FUSE requests the adapter times and whose errors it counts, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum FuseOp {
    Lookup = 0,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Ioctl,
    Access,
    Create,
    Fallocate,
    Lseek,
    CopyFileRange,
}

/// The names of [`FuseOp`] (the `op` label), in its order.
pub const FUSE_OPS: [&str; 34] = [
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "ioctl",
    "access",
    "create",
    "fallocate",
    "lseek",
    "copy_file_range",
];

/// errnos counted one by one; a larger one is counted in the last slot.
const ERRNOS: usize = 134;

/// Latency and errors of FUSE requests by kind: one histogram per kind and one atomic
/// per (kind, errno). No lock: a request adds to one bucket, a failed one to one more.
#[derive(Debug)]
pub struct FuseMetrics {
    latency: Vec<Histogram>,
    sum_ns: Vec<AtomicU64>,
    /// Shared with the request threads (see [`note_error`]).
    errors: Arc<[AtomicU64]>,
}

impl Default for FuseMetrics {
    fn default() -> Self {
        Self {
            latency: (0..FUSE_OPS.len()).map(|_| Histogram::default()).collect(),
            sum_ns: (0..FUSE_OPS.len()).map(|_| AtomicU64::new(0)).collect(),
            errors: (0..FUSE_OPS.len() * ERRNOS)
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>()
                .into(),
        }
    }
}

/// Times one request from its creation to its drop (after the reply is sent).
#[must_use = "the request is timed until this is dropped"]
pub struct RequestTimer<'a> {
    m: &'a FuseMetrics,
    op: FuseOp,
    t: std::time::Instant,
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        let ns = self.t.elapsed().as_nanos() as u64;
        let i = self.op as usize;
        self.m.latency[i].observe(ns);
        self.m.sum_ns[i].fetch_add(ns, Relaxed);
        ANSWERING.with_borrow_mut(|a| a.op = None);
    }
}

/// What [`note_error`] counts into: the error counts of the [`FuseMetrics`] whose timer
/// runs on this thread, and the kind of the request it times (`None` between requests).
#[derive(Default)]
struct Answering {
    errors: Option<Arc<[AtomicU64]>>,
    op: Option<usize>,
}

thread_local! {
    /// The request being answered on this thread (each request is answered on the thread
    /// that read it: the adapter hands nothing to other threads).
    static ANSWERING: std::cell::RefCell<Answering> = std::cell::RefCell::default();
}

/// Counts that the request being answered on this thread failed with `errno` (the
/// adapter's `fail!` calls it just before the error reply, so a scrape made after the
/// application saw the error counts it). Outside a timed request it counts nothing.
pub fn note_error(errno: i32) {
    ANSWERING.with_borrow(|a| {
        if let (Some(errors), Some(op)) = (&a.errors, a.op) {
            let e = (errno.max(0) as usize).min(ERRNOS - 1);
            errors[op * ERRNOS + e].fetch_add(1, Relaxed);
        }
    });
}

impl FuseMetrics {
    /// Starts timing a request of kind `op`.
    pub fn timer(&self, op: FuseOp) -> RequestTimer<'_> {
        ANSWERING.with_borrow_mut(|a| {
            // The counts are shared once per thread (no reference count touched per request).
            if !a
                .errors
                .as_ref()
                .is_some_and(|e| Arc::ptr_eq(e, &self.errors))
            {
                a.errors = Some(self.errors.clone());
            }
            a.op = Some(op as usize);
        });
        RequestTimer {
            m: self,
            op,
            t: std::time::Instant::now(),
        }
    }

    /// As JSON members (no braces): `"fuse":{op:{"sum_ns":n,"bN":n}}` with the non-zero buckets
    /// and `"fuse_errors":{op:{errno name:n}}` with the non-zero counts.
    pub fn json(&self, s: &mut String) {
        s.push_str("\"fuse\":{");
        let mut first = true;
        for (i, op) in FUSE_OPS.iter().enumerate() {
            let c = self.latency[i].counts();
            if c.iter().all(|n| *n == 0) {
                continue;
            }
            let _ = write!(s, "{}\"{op}\":{{", if first { "" } else { "," });
            first = false;
            let _ = write!(s, "\"sum_ns\":{}", self.sum_ns[i].load(Relaxed));
            for (b, n) in c.iter().enumerate().filter(|(_, n)| **n > 0) {
                let _ = write!(s, ",\"b{b}\":{n}");
            }
            s.push('}');
        }
        s.push_str("},\"fuse_errors\":{");
        let mut first = true;
        for (i, op) in FUSE_OPS.iter().enumerate() {
            let row = &self.errors[i * ERRNOS..(i + 1) * ERRNOS];
            if row.iter().all(|n| n.load(Relaxed) == 0) {
                continue;
            }
            let _ = write!(s, "{}\"{op}\":{{", if first { "" } else { "," });
            first = false;
            let mut f2 = true;
            for (e, n) in row.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let _ = write!(
                        s,
                        "{}\"{}\":{n}",
                        if f2 { "" } else { "," },
                        errno_name(e as i32)
                    );
                    f2 = false;
                }
            }
            s.push('}');
        }
        s.push('}');
    }
}

/// The symbolic name of an errno (`ENOENT`), or its number.
pub fn errno_name(e: i32) -> String {
    const NAMES: [(i32, &str); 42] = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::ESRCH, "ESRCH"),
        (libc::EINTR, "EINTR"),
        (libc::EIO, "EIO"),
        (libc::ENXIO, "ENXIO"),
        (libc::E2BIG, "E2BIG"),
        (libc::EBADF, "EBADF"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EACCES, "EACCES"),
        (libc::EFAULT, "EFAULT"),
        (libc::EBUSY, "EBUSY"),
        (libc::EEXIST, "EEXIST"),
        (libc::EXDEV, "EXDEV"),
        (libc::ENODEV, "ENODEV"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENFILE, "ENFILE"),
        (libc::EMFILE, "EMFILE"),
        (libc::ETXTBSY, "ETXTBSY"),
        (libc::EFBIG, "EFBIG"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::ESPIPE, "ESPIPE"),
        (libc::EROFS, "EROFS"),
        (libc::EMLINK, "EMLINK"),
        (libc::EPIPE, "EPIPE"),
        (libc::ERANGE, "ERANGE"),
        (libc::EDEADLK, "EDEADLK"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::ENOLCK, "ENOLCK"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::ELOOP, "ELOOP"),
        (libc::ENODATA, "ENODATA"),
        (libc::EOVERFLOW, "EOVERFLOW"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ENOTCONN, "ENOTCONN"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
        (libc::ESTALE, "ESTALE"),
        (libc::EDQUOT, "EDQUOT"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| e.to_string(), |(_, name)| (*name).to_string())
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A `le` label value: the shortest decimal that reads back as the bound.
fn le(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}

struct Out {
    s: String,
    base: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.s, "# HELP {name} {help}");
        let _ = writeln!(self.s, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, extra: &[(&str, &str)], v: impl std::fmt::Display) {
        let _ = write!(self.s, "{name}{{{}", self.base);
        for (k, val) in extra {
            let _ = write!(self.s, ",{k}=\"{}\"", escape(val));
        }
        let _ = writeln!(self.s, "}} {v}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

/// Renders the stats JSON of a mount (`Stats::to_json`, as the stats xattr answers it)
/// in the Prometheus text format 0.0.4, every sample labelled with `mount` and `fsname`.
pub fn render(json: &str, mount: &Path, fsname: &str) -> String {
    let m: HashMap<String, u64> = flatten_json(json).into_iter().collect();
    let g = |k: &str| m.get(k).copied().unwrap_or(0);
    let mut o = Out {
        s: String::with_capacity(16 << 10),
        base: format!(
            "mount=\"{}\",fsname=\"{}\"",
            escape(&mount.display().to_string()),
            escape(fsname)
        ),
    };
    let counters: [(&str, &str, &str); 23] = [
        (
            "sparsefs_app_written_bytes_total",
            "app_write_bytes",
            "Bytes applications wrote through the mount.",
        ),
        (
            "sparsefs_app_writes_total",
            "app_writes",
            "Write requests from applications.",
        ),
        (
            "sparsefs_app_read_bytes_total",
            "app_read_bytes",
            "Bytes applications read through the mount.",
        ),
        (
            "sparsefs_zero_bytes_elided_total",
            "zero_bytes_elided",
            "Zero bytes written by applications that never reached the backend as writes.",
        ),
        (
            "sparsefs_punched_bytes_total",
            "bytes_punched",
            "Bytes of old data turned into holes by punching.",
        ),
        (
            "sparsefs_zero_bytes_written_total",
            "zero_bytes_written",
            "Zero bytes written out because the backend cannot punch holes.",
        ),
        (
            "sparsefs_hole_read_bytes_total",
            "hole_read_bytes",
            "Read bytes served from known holes without backend I/O.",
        ),
        (
            "sparsefs_seeks_from_index_total",
            "seeks_from_index",
            "SEEK_DATA/SEEK_HOLE answered from the extent index.",
        ),
        (
            "sparsefs_data_fds_parked_total",
            "data_fds_parked",
            "Read-write backend fds closed because no application had the file open.",
        ),
        (
            "sparsefs_requests_handed_off_total",
            "requests_handed_off",
            "FUSE requests for which a parked request thread was woken to listen meanwhile.",
        ),
        (
            "sparsefs_requests_inline_total",
            "requests_inline",
            "FUSE requests served by the thread that read them, nobody else woken.",
        ),
        (
            "sparsefs_passthrough_opens_total",
            "passthrough_opens",
            "Opens served by kernel passthrough.",
        ),
        (
            "sparsefs_passthrough_writer_opens_total",
            "passthrough_writers",
            "Writable opens joining passthrough readers of the same file.",
        ),
        (
            "sparsefs_dir_listings_total",
            "dir_listings",
            "Directory listings read from the backend.",
        ),
        (
            "sparsefs_dir_cache_kept_total",
            "dir_cache_kept",
            "opendirs that let the kernel keep its cached listing.",
        ),
        (
            "sparsefs_memory_trims_total",
            "memory_trims",
            "Times memory was given back after the kernel forgot many inodes.",
        ),
        (
            "sparsefs_maps_stored_total",
            "maps_stored",
            "Extent maps stored with files.",
        ),
        (
            "sparsefs_maps_loaded_total",
            "maps_loaded",
            "Stored extent maps loaded at open.",
        ),
        (
            "sparsefs_maps_stale_total",
            "maps_stale",
            "Stored extent maps found stale at open (file treated as data).",
        ),
        (
            "sparsefs_maps_refused_total",
            "maps_refused",
            "Stored extent maps refused as damaged or foreign.",
        ),
        (
            "sparsefs_window_writes_launched_total",
            "flights",
            "Window writes launched to run while the application goes on writing.",
        ),
        (
            "sparsefs_read_ahead_chunks_total",
            "prefetches",
            "Data chunks read ahead of in-order readers.",
        ),
        (
            "sparsefs_read_ahead_served_bytes_total",
            "prefetch_hit_bytes",
            "Bytes of application reads served from chunks read ahead.",
        ),
    ];
    for (name, key, help) in counters {
        o.one(name, "counter", help, g(key));
    }
    let gauges: [(&str, u64, &str); 10] = [
        (
            "sparsefs_read_ahead_bytes",
            g("prefetch_bytes"),
            "Bytes of chunks read ahead, held or being read now.",
        ),
        (
            "sparsefs_window_writes_in_flight",
            g("flights_in_flight"),
            "Window writes on their way to the backend now.",
        ),
        (
            "sparsefs_open_handles",
            g("open_handles"),
            "Open file and directory handles now.",
        ),
        (
            "sparsefs_dirty_bytes",
            g("dirty_bytes"),
            "Dirty bytes buffered in the daemon now.",
        ),
        (
            "sparsefs_dirty_peak_bytes",
            g("dirty_peak"),
            "Highest dirty bytes seen since the mount.",
        ),
        (
            "sparsefs_dirty_limit_bytes",
            g("dirty_limit"),
            "The mount-wide dirty limit (max_dirty).",
        ),
        (
            "sparsefs_cached_inodes",
            g("inodes"),
            "Inodes the kernel knows through this mount, each holding one O_PATH fd.",
        ),
        (
            "sparsefs_data_fds",
            g("data_fds"),
            "Read-write backend fds of regular files held now.",
        ),
        (
            "sparsefs_backend_fds",
            g("data_fds") + g("inodes"),
            "Backend fds held now (data fds and inode fds).",
        ),
        (
            "sparsefs_fd_pool_high_mark",
            g("fd_high"),
            "Backend fds held at most before idle ones are closed (max_fds).",
        ),
    ];
    for (name, v, help) in gauges {
        o.one(name, "gauge", help, v);
    }
    let per_kind: [(&str, &str, &str); 3] = [
        (
            "sparsefs_backend_calls_total",
            "calls",
            "Data calls that reached the backend, by kind.",
        ),
        (
            "sparsefs_backend_bytes_total",
            "bytes",
            "Bytes moved, punched or allocated by backend data calls, by kind.",
        ),
        (
            "sparsefs_backend_errors_total",
            "errors",
            "Backend data calls that failed, by kind.",
        ),
    ];
    for (name, field, help) in per_kind {
        o.family(name, "counter", help);
        for op in OPS {
            let v = g(&format!("backend.{}.{field}", op.name()));
            o.sample(name, &[("kind", op.name())], v);
        }
    }
    for (name, field, help) in [
        (
            "sparsefs_backend_meta_calls_total",
            "calls",
            "Metadata calls that reached the backend, by kind.",
        ),
        (
            "sparsefs_backend_meta_errors_total",
            "errors",
            "Backend metadata calls that failed, by kind.",
        ),
    ] {
        o.family(name, "counter", help);
        for op in META_OPS {
            let v = g(&format!("meta.{}.{field}", op.name()));
            o.sample(name, &[("kind", op.name())], v);
        }
    }
    o.family(
        "sparsefs_flushes_total",
        "counter",
        "Flushes of dirty data to the backend, by trigger.",
    );
    for t in TRIGGERS {
        let v = g(&format!("flushes.{}", t.name()));
        o.sample("sparsefs_flushes_total", &[("trigger", t.name())], v);
    }
    let h = "sparsefs_backend_call_seconds";
    o.family(h, "histogram", "Latency of backend data calls, by kind.");
    for op in OPS {
        let kind = op.name();
        let counts = latency_counts(&m, kind);
        let mut cum = 0;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            let bound = LATENCY_BOUNDS_NS
                .get(i)
                .map_or("+Inf".to_string(), |b| le(*b));
            o.sample(
                &format!("{h}_bucket"),
                &[("kind", kind), ("le", &bound)],
                cum,
            );
        }
        let sum = g(&format!("backend.{kind}.nanos")) as f64 / 1e9;
        o.sample(&format!("{h}_sum"), &[("kind", kind)], sum);
        o.sample(&format!("{h}_count"), &[("kind", kind)], cum);
    }
    let h = "sparsefs_fuse_request_seconds";
    o.family(
        h,
        "histogram",
        "Latency of FUSE requests in the daemon (decode to reply), by operation.",
    );
    for op in FUSE_OPS {
        let mut cum = 0;
        for i in 0..BUCKETS {
            cum += g(&format!("fuse.{op}.b{i}"));
            let bound = LATENCY_BOUNDS_NS
                .get(i)
                .map_or("+Inf".to_string(), |b| le(*b));
            o.sample(&format!("{h}_bucket"), &[("op", op), ("le", &bound)], cum);
        }
        let sum = g(&format!("fuse.{op}.sum_ns")) as f64 / 1e9;
        o.sample(&format!("{h}_sum"), &[("op", op)], sum);
        o.sample(&format!("{h}_count"), &[("op", op)], cum);
    }
    let e = "sparsefs_fuse_errors_total";
    o.family(
        e,
        "counter",
        "FUSE requests answered with an error, by operation and errno (non-zero ones only).",
    );
    let mut errs: Vec<(&str, &str, u64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let (op, errno) = k.strip_prefix("fuse_errors.")?.split_once('.')?;
            Some((op, errno, *v))
        })
        .collect();
    errs.sort();
    for (op, errno, v) in errs {
        o.sample(e, &[("op", op), ("errno", errno)], v);
    }
    o.s
}

/// Where `--metrics` listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    /// A TCP address, `127.0.0.1:9464` or `[::1]:9464`.
    Tcp(SocketAddr),
    /// A Unix socket path (absolute).
    Unix(PathBuf),
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "{a}"),
            MetricsAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl MetricsAddr {
    /// Parses `IP:PORT`, `[IPv6]:PORT` or `unix:PATH` (a relative path is made absolute).
    ///
    /// # Errors
    /// One line naming the bad value.
    pub fn parse(s: &str) -> Result<MetricsAddr, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(format!("invalid metrics address '{s}': unix: needs a path"));
            }
            let abs = std::path::absolute(p)
                .map_err(|e| format!("invalid metrics address '{s}': {e}"))?;
            return Ok(MetricsAddr::Unix(abs));
        }
        s.parse::<SocketAddr>().map(MetricsAddr::Tcp).map_err(|_| {
            format!(
                "invalid metrics address '{s}': expected IP:PORT (127.0.0.1:9464, [::1]:9464) or unix:PATH"
            )
        })
    }
}

/// A bound metrics listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(std::net::TcpListener),
    /// A Unix socket.
    Unix(std::os::unix::net::UnixListener),
}

/// Binds `addr`. A Unix socket path left behind by a daemon that is gone (nothing
/// accepts on it) is replaced; one that answers is in use.
///
/// # Errors
/// The bind's error (address in use, permission, no such directory).
pub fn bind(addr: &MetricsAddr) -> io::Result<Listener> {
    match addr {
        MetricsAddr::Tcp(a) => std::net::TcpListener::bind(a).map(Listener::Tcp),
        MetricsAddr::Unix(p) => match std::os::unix::net::UnixListener::bind(p) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                use std::os::unix::fs::FileTypeExt;
                let stale = std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
                    && std::os::unix::net::UnixStream::connect(p).is_err();
                if !stale {
                    return Err(e);
                }
                std::fs::remove_file(p)?;
                std::os::unix::net::UnixListener::bind(p).map(Listener::Unix)
            }
            r => r.map(Listener::Unix),
        },
    }
}

/// How long one scrape may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `l` with `render`'s text, forever, one connection at a
/// time, on a thread of its own named `sparsefs-metrics`.
///
/// # Errors
/// The thread could not be spawned.
pub fn spawn(
    l: Listener,
    render: impl Fn() -> String + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sparsefs-metrics".into())
        .spawn(move || {
            loop {
                let r = match &l {
                    Listener::Tcp(t) => t.accept().and_then(|(s, _)| {
                        s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
                        s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
                        answer(s, &render)
                    }),
                    Listener::Unix(u) => u.accept().and_then(|(s, _)| {
                        s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
                        s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
                        answer(s, &render)
                    }),
                };
                if let Err(e) = r {
                    tracing::debug!(error = %e, "metrics: connection failed");
                }
            }
        })
}

/// Reads one request head (up to 8 KiB) and answers it: 200 with the metrics for
/// `GET /metrics` (a query string is ignored; `HEAD` gets its headers), 405 for another
/// method, 404 otherwise.
fn answer(mut s: impl Read + Write, render: &impl Fn() -> String) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            break;
        }
    }
    let (status, mut body) = route(&head, render);
    // HEAD: the headers GET would send (Content-Length included), no body.
    let head_only = head.starts_with(b"HEAD ");
    let ctype = if status != "200 OK" {
        "text/plain; charset=utf-8"
    } else if wants_openmetrics(&head) {
        body = to_openmetrics(&body);
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    let resp = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(resp.as_bytes())?;
    if !head_only {
        s.write_all(body.as_bytes())?;
    }
    s.flush()
}

/// Whether the request's `Accept` header asks for OpenMetrics (as Prometheus does when
/// it may use it).
fn wants_openmetrics(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    })
}

/// The text format 0.0.4 as OpenMetrics 1.0: a counter's family is named without its
/// `_total` suffix (its samples keep it), and the exposition ends with `# EOF`.
fn to_openmetrics(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    for line in text.lines() {
        let fixed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            let family = name
                .strip_suffix("_total")
                .filter(|_| counters.contains(name))?;
            Some(format!("{p}{family} {tail}"))
        });
        out.push_str(fixed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

fn route(head: &[u8], render: &impl Fn() -> String) -> (&'static str, String) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return ("404 Not Found", "not found: try /metrics\n".into());
    }
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", "only GET\n".into());
    }
    ("200 OK", render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Op, Stats};

    #[test]
    fn every_latency_lands_in_the_first_bucket_whose_bound_is_not_below_it() {
        let h = Histogram::default();
        for (i, b) in LATENCY_BOUNDS_NS.iter().enumerate() {
            h.observe(*b);
            h.observe(b + 1);
            let c = h.counts();
            assert_eq!(c[i], if i == 0 { 1 } else { 2 }, "bound {b}");
        }
        assert_eq!(h.counts()[BUCKETS - 1], 1, "past 10 s: +Inf");
        h.observe(0);
        assert_eq!(h.counts()[0], 2);
    }

    #[test]
    fn quantiles_are_the_bounds_of_the_buckets_holding_them() {
        let mut c = [0u64; BUCKETS];
        assert_eq!(quantile_bound(&c, 0.5), None);
        c[0] = 98;
        c[9] = 2;
        assert_eq!(quantile_bound(&c, 0.5), Some(10e-6));
        assert_eq!(quantile_bound(&c, 0.98), Some(10e-6));
        assert_eq!(quantile_bound(&c, 0.99), Some(0.01));
        c[BUCKETS - 1] = 100;
        assert_eq!(quantile_bound(&c, 0.99), Some(f64::INFINITY));
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let t = "# HELP a_total A.\n# TYPE a_total counter\na_total{m=\"x\"} 3\n\
                 # HELP g G.\n# TYPE g gauge\ng{m=\"x\"} 1\n";
        let o = to_openmetrics(t);
        assert_eq!(
            o,
            "# HELP a A.\n# TYPE a counter\na_total{m=\"x\"} 3\n\
             # HELP g G.\n# TYPE g gauge\ng{m=\"x\"} 1\n# EOF\n"
        );
        assert!(wants_openmetrics(
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"
        ));
        assert!(!wants_openmetrics(b"GET /metrics HTTP/1.0\r\n\r\n"));
    }

    #[test]
    fn rendered_buckets_are_cumulative_and_count_matches_the_inf_bucket() {
        let s = Stats::default();
        s.record(Op::Write, 4096, 30_000, true);
        s.record(Op::Write, 4096, 2_000_000, true);
        s.record(Op::Write, 4096, 20_000_000_000, false);
        let t = render(&s.to_json(), Path::new("/mnt/a \"b\""), "src");
        let want = [
            "sparsefs_backend_call_seconds_bucket{mount=\"/mnt/a \\\"b\\\"\",fsname=\"src\",kind=\"write\",le=\"0.00001\"} 0",
            "sparsefs_backend_call_seconds_bucket{mount=\"/mnt/a \\\"b\\\"\",fsname=\"src\",kind=\"write\",le=\"0.05\"} 2",
            "sparsefs_backend_call_seconds_bucket{mount=\"/mnt/a \\\"b\\\"\",fsname=\"src\",kind=\"write\",le=\"10\"} 2",
            "sparsefs_backend_call_seconds_bucket{mount=\"/mnt/a \\\"b\\\"\",fsname=\"src\",kind=\"write\",le=\"+Inf\"} 3",
            "sparsefs_backend_call_seconds_count{mount=\"/mnt/a \\\"b\\\"\",fsname=\"src\",kind=\"write\"} 3",
            "sparsefs_backend_call_seconds_sum{mount=\"/mnt/a \\\"b\\\"\",fsname=\"src\",kind=\"write\"} 20.00203",
            "sparsefs_backend_errors_total{mount=\"/mnt/a \\\"b\\\"\",fsname=\"src\",kind=\"write\"} 1",
            "sparsefs_backend_bytes_total{mount=\"/mnt/a \\\"b\\\"\",fsname=\"src\",kind=\"write\"} 12288",
        ];
        for w in want {
            assert!(t.lines().any(|l| l == w), "missing {w}\n{t}");
        }
    }

    #[test]
    fn fuse_requests_are_timed_and_their_errors_counted_by_op_and_errno() {
        let s = Stats::default();
        let fail = |op, e| {
            let _t = s.fuse.timer(op);
            note_error(e);
        };
        fail(FuseOp::Lookup, libc::ENOENT);
        fail(FuseOp::Lookup, libc::ENOENT);
        note_error(libc::EIO); // outside any request: not counted
        drop(s.fuse.timer(FuseOp::Write));
        fail(FuseOp::Write, libc::ENOSPC);
        fail(FuseOp::Read, 100_000);
        let t = render(&s.to_json(), Path::new("/m"), "f");
        let b = "mount=\"/m\",fsname=\"f\"";
        for w in [
            format!("sparsefs_fuse_request_seconds_count{{{b},op=\"lookup\"}} 2"),
            format!("sparsefs_fuse_request_seconds_bucket{{{b},op=\"lookup\",le=\"+Inf\"}} 2"),
            format!("sparsefs_fuse_request_seconds_count{{{b},op=\"write\"}} 2"),
            format!("sparsefs_fuse_request_seconds_count{{{b},op=\"mkdir\"}} 0"),
            format!("sparsefs_fuse_errors_total{{{b},op=\"lookup\",errno=\"ENOENT\"}} 2"),
            format!("sparsefs_fuse_errors_total{{{b},op=\"write\",errno=\"ENOSPC\"}} 1"),
            format!("sparsefs_fuse_errors_total{{{b},op=\"read\",errno=\"133\"}} 1"),
        ] {
            assert!(t.lines().any(|l| l == w), "missing {w}\n{t}");
        }
        assert_eq!(t.matches("sparsefs_fuse_errors_total{").count(), 3, "{t}");
    }

    #[test]
    fn a_failed_request_is_counted_before_its_reply_into_its_own_mounts_metrics() {
        let (a, b) = (Stats::default(), Stats::default());
        let enoent = "\"lookup\":{\"ENOENT\":1}";
        let t = a.fuse.timer(FuseOp::Lookup);
        note_error(libc::ENOENT);
        // Counted while the request is still being answered (the timer has not ended).
        assert!(a.to_json().contains(enoent), "{}", a.to_json());
        drop(t);
        // Another mount's request on the same thread counts into that mount only.
        drop(b.fuse.timer(FuseOp::Lookup));
        let t = b.fuse.timer(FuseOp::Lookup);
        note_error(libc::ENOENT);
        drop(t);
        assert!(a.to_json().contains(enoent) && b.to_json().contains(enoent));
        note_error(libc::ENOENT); // between requests: not counted
        assert!(a.to_json().contains(enoent) && b.to_json().contains(enoent));
    }

    #[test]
    fn only_get_of_slash_metrics_is_answered_with_metrics() {
        let r = || "x 1\n".to_string();
        assert_eq!(route(b"GET /metrics HTTP/1.0\r\n\r\n", &r).0, "200 OK");
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", &r).1, "x 1\n");
        assert_eq!(route(b"GET / HTTP/1.0\r\n\r\n", &r).0, "404 Not Found");
        assert_eq!(
            route(b"GET /metricsx HTTP/1.0\r\n\r\n", &r).0,
            "404 Not Found"
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.0\r\n\r\n", &r).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"", &r).0, "404 Not Found");
        let mut resp = Vec::new();
        let mut s = Duplex(&b"HEAD /metrics HTTP/1.0\r\n\r\n"[..], &mut resp);
        answer(&mut s, &r).unwrap();
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.starts_with("HTTP/1.0 200 OK\r\n"), "{resp}");
        assert!(resp.contains("Content-Length: 4\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\n"), "no body: {resp}");
    }

    /// A stream that reads from one buffer and writes to another.
    struct Duplex<'a>(&'a [u8], &'a mut Vec<u8>);

    impl Read for Duplex<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Duplex<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.1.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn metrics_addresses_parse_tcp_and_unix_and_reject_the_rest() {
        assert_eq!(
            MetricsAddr::parse("127.0.0.1:9464"),
            Ok(MetricsAddr::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        assert!(matches!(
            MetricsAddr::parse("[::1]:9464"),
            Ok(MetricsAddr::Tcp(_))
        ));
        assert_eq!(
            MetricsAddr::parse("unix:/run/s.sock"),
            Ok(MetricsAddr::Unix("/run/s.sock".into()))
        );
        for bad in ["", "localhost:9464", "127.0.0.1", "9464", "unix:", "[::1]"] {
            let e = MetricsAddr::parse(bad).unwrap_err();
            assert!(e.starts_with("invalid metrics address"), "{bad}: {e}");
        }
    }
}
