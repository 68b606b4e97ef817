//! Command-line parsing (clap, raw) and its validation into a mount configuration.
//! Both the subcommand form (`sparsefs mount SRC DIR --sparse-block 32K`) and the
//! mount.fuse3/fstab form (`sparsefs SRC DIR -o sparse_block=32K,allow_other`) end here.
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// sparsefs: a FUSE overlay that makes writes sparse and cheap on big-I/O filesystems.
#[derive(Parser, Debug)]
#[command(name = "sparsefs", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Subcommands.
// Parsed once per process: the size of the mount variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Mount BACKING at MOUNTPOINT (returns once the mount is live, unless -f).
    Mount(MountArgs),
    /// Flush and unmount a sparsefs mount.
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Detach now, finish when no longer busy.
        #[arg(long, short = 'z')]
        lazy: bool,
        /// For a hung mount: abort its FUSE connection (fusectl; pending and later calls
        /// fail with ENOTCONN), detach it, and end its daemon (SIGTERM; SIGKILL after
        /// --wait). Root only.
        #[arg(long, conflicts_with = "lazy")]
        force: bool,
        /// With --force: seconds the daemon gets to flush and exit before SIGKILL.
        #[arg(long, value_name = "SECS", default_value_t = 30.0, requires = "force")]
        wait: f64,
    },
    /// Show a mount's live counters (mount owner or root only).
    Stats {
        /// The mount point.
        mountpoint: PathBuf,
        /// Print JSON.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print the Prometheus text format (0.0.4) once, as `--metrics` serves it (for
        /// node_exporter's textfile collector).
        #[arg(long, conflicts_with = "watch")]
        prometheus: bool,
        /// Refresh every N seconds.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
    },
    /// Print a file's DATA/HOLE runs as SEEK_DATA/SEEK_HOLE report them (through a mount:
    /// as sparsefs sees them).
    Map {
        /// Files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// JSON, one object per file.
        #[arg(long, conflicts_with = "records")]
        json: bool,
        /// Plain `DATA n` / `HOLE n` records in file order.
        #[arg(long)]
        records: bool,
    },
    /// Learn the extent maps of existing files (read once, find zero blocks) and store
    /// them where mounts find them; --dig also punches the zeros. Works on a backing
    /// directory (unmounted or mounted) or through a sparsefs mount (the daemon scans).
    Scan {
        /// Files or directories (recursed) under the backing root or on a sparsefs mount.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The sparsefs backing root (default: the first path, if a directory).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Zero-detection block (as --sparse-block of the mount; through a mount the
        /// mount's own sparse block is used).
        #[arg(long, default_value = "32K")]
        block: String,
        /// Punch the zero blocks found on the backend.
        #[arg(long)]
        dig: bool,
        /// Report what would be found; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove stored extent maps whose files are gone (deleted outside the mount) and
    /// leftovers of interrupted writes, from a backing directory (mounted or not).
    Gc {
        /// The sparsefs backing root.
        root: PathBuf,
        /// Report only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Leave records younger than this (default 1m; 0 for none): a file being
        /// created through a mount may get its record before the walk sees it.
        #[arg(long, value_name = "DURATION")]
        min_age: Option<String>,
    },
    /// Write FILEs as a sparse stream on stdout (data records and holes, checked), or to
    /// `sparsefs recv` on another host with --to. Holes are never read: the runs come from
    /// the mount's index on a sparsefs mount, else from SEEK_DATA where a probe trusts it,
    /// else from a zero scan; zero blocks inside data travel as holes too.
    Send {
        /// Regular files (one with --format xfer-hole).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// native (versioned, checksummed, several files) or xfer-hole (baserock's
        /// `DATA`/`HOLE` records, for a receiver with only sh, dd and truncate).
        #[arg(long, default_value = "native", value_parser = ["native", "xfer-hole"])]
        format: String,
        /// Zero-detection and digest block.
        #[arg(long, default_value = "32K")]
        block: String,
        /// Run `ssh HOST sparsefs recv PATH` and send to it.
        #[arg(long, value_name = "[USER@]HOST:PATH")]
        to: Option<String>,
        /// The ssh command for --to (split on spaces; HOST and the command follow).
        #[arg(long, value_name = "CMD", default_value = "ssh")]
        ssh: String,
        /// The sparsefs binary on the remote host.
        #[arg(long, value_name = "PATH", default_value = "sparsefs")]
        remote_sparsefs: String,
        /// With --to: compare block digests with the receiver's copy and send only the
        /// blocks that differ.
        #[arg(long)]
        update: bool,
        /// With --to: the receiver writes in place (see recv --inplace).
        #[arg(long)]
        inplace: bool,
        /// Print a JSON summary (on stdout with --to, else on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Read a sparse stream of `sparsefs send` from stdin into DEST (a directory, or a
    /// file name for a one-file stream). Files are written to temporaries beside their
    /// names, checked against the sender's digest, synced, then renamed.
    Recv {
        /// Destination directory or file.
        dest: PathBuf,
        /// Write into the existing file itself, punching holes over its old data
        /// (no temporary: a failed stream leaves it part-written).
        #[arg(long)]
        inplace: bool,
        /// Print a JSON summary on stderr.
        #[arg(long)]
        json: bool,
    },
    /// Print the man page (roff) on stdout: `sparsefs man > /usr/local/share/man/man8/sparsefs.8`.
    #[command(hide = true)]
    Man,
    /// Print shell completions: `sparsefs completions bash > /etc/bash_completion.d/sparsefs`.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Mount a temporary directory, write a sparse VM-like image through it with dd,
    /// and show what reached the backend; cleans up after itself.
    Demo {
        /// Sparse block size for the demo mount.
        #[arg(long, default_value = "32K")]
        sparse_block: String,
    },
}

/// Options of `sparsefs mount`.
#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// The backing directory (on GPFS, Lustre, BeeGFS, CephFS, NFS, ...).
    pub backing: PathBuf,
    /// Where to mount the view.
    pub mountpoint: PathBuf,
    /// Mount options, comma separated (see `sparsefs mount --help` and docs/tuning.md):
    /// sparse_block=SIZE, write_size=SIZE, max_dirty=SIZE, dirty_age=DUR, threads=N,
    /// flush_depth=N, flush_threads=N, direct_writes=auto|always|never,
    /// read_ahead=SIZE, read_depth=N, max_write=SIZE, map_store=xattr|sidecar|none, cache_writes, no_passthrough, no_dir_cache,
    /// inode_handles=auto|always|never, max_fds=N, metrics=ADDR,
    /// allow_other, allow_root, ro, rw, nosuid, nodev, noexec, noatime, fsname=NAME,
    /// subtype=NAME, and fstab-only ones that are ignored (defaults, _netdev, nofail,
    /// noauto, auto, user, users, x-*).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Unit of zero detection and hole creation: a power of two from 4K to 64M (default
    /// 32K).
    #[arg(long, value_name = "SIZE")]
    pub sparse_block: Option<String>,
    /// Largest backend write, a multiple of the sparse block (default 4M).
    #[arg(long, value_name = "SIZE")]
    pub write_size: Option<String>,
    /// Window writes of one file in flight at once while the application goes on writing
    /// (default 4; 1: each window is written before the next write is taken). On a
    /// backend a round trip away a stream then waits one round trip per N windows.
    #[arg(long, value_name = "N")]
    pub flush_depth: Option<usize>,
    /// Window writes of the whole mount in flight at once: the writer threads (default
    /// 8).
    #[arg(long, value_name = "N")]
    pub flush_threads: Option<usize>,
    /// Window writes through O_DIRECT descriptors: always (wherever the mount's probe saw
    /// it work: on a FUSE client such as GlusterFS's one O_DIRECT write goes as several
    /// requests at once), never, auto (default: off; sharded GlusterFS lost data written
    /// that way, see docs/tuning.md).
    #[arg(long, value_name = "MODE")]
    pub direct_writes: Option<String>,
    /// Kernel read-ahead of the mount (default 1M: reads reach the daemon as 1 MiB
    /// requests; 0 keeps the kernel's 128K). Set through sysfs, so root only.
    #[arg(long, value_name = "SIZE")]
    pub read_ahead: Option<String>,
    /// Data chunks of one file the daemon reads ahead of a reader that reads in order
    /// (holes skipped count as in order), several at once on as many reader threads as
    /// writer threads (default 16; 0: none). A chunk is one aligned backend read of 1M;
    /// known holes are never read.
    #[arg(long, value_name = "N")]
    pub read_depth: Option<usize>,
    /// Largest FUSE request the kernel sends (a multiple of 4K from 4K to 16M; default 1M).
    /// The kernel also caps requests at fs.fuse.max_pages_limit pages (256 by default: 1M);
    /// raise that sysctl for larger ones.
    #[arg(long, value_name = "SIZE")]
    pub max_write: Option<String>,
    /// Dirty bytes across all files before writers flush (default 256M).
    #[arg(long, value_name = "SIZE")]
    pub max_dirty: Option<String>,
    /// Flush dirty data older than this (default 5s; e.g. 500ms, 5s, 1m).
    #[arg(long, value_name = "DURATION")]
    pub dirty_age: Option<String>,
    /// Where extent maps persist across mounts and nodes: xattr (default; the sidecar
    /// where xattrs are refused), sidecar (a hidden directory under the backing root), or
    /// none (in memory only).
    #[arg(long, value_name = "STORE")]
    pub map_store: Option<String>,
    /// Keep pages written through write-only opens in the kernel's page cache (by
    /// default write-only opens and new O_EXCL temporary files bypass it: twice the
    /// write throughput, no page cache filled by streams nobody reads back).
    #[arg(long)]
    pub cache_writes: bool,
    /// Serve every read through the daemon. By default a read-only open of a file with
    /// no known holes, that nobody else has open, is handed to the kernel (FUSE
    /// passthrough, root and Linux 6.9+): its reads go to the backend file directly.
    #[arg(long)]
    pub no_passthrough: bool,
    /// List directories from the backend at every opendir. By default the kernel keeps
    /// a listing while the backend shows the directory unchanged (same size, mtime and
    /// ctime, and unchanged for 2 s before the listing was taken).
    #[arg(long)]
    pub no_dir_cache: bool,
    /// How the daemon keeps track of files without holding an fd each: auto (default: by
    /// file handle where the backend makes handles and the daemon holds
    /// CAP_DAC_READ_SEARCH, else by name), always (fail the mount without handles), never.
    #[arg(long, value_name = "MODE")]
    pub inode_handles: Option<String>,
    /// Backend fds the daemon keeps open at most before closing idle ones (default: its fd
    /// limit less an eighth kept for its own use).
    #[arg(long, value_name = "N")]
    pub max_fds: Option<u64>,
    /// Request-handling threads (default: the number of CPUs, 2 to 8).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Let other users use the mount (kernel permission checks stay on).
    #[arg(long)]
    pub allow_other: bool,
    /// Stay in the foreground.
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log to this file when running in the background (default: none, logs are dropped).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Serve Prometheus metrics on `GET /metrics` at ADDR: IP:PORT (`127.0.0.1:9464`,
    /// `[::1]:9464`) or unix:PATH (default: off). No authentication: prefer loopback.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

/// Who may use the mount besides its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The owner only (FUSE default).
    Owner,
    /// Root too.
    Root,
    /// Everyone (`allow_other`), with the kernel checking permissions.
    All,
}

/// A validated mount configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountConfig {
    /// Canonical backing directory.
    pub backing: PathBuf,
    /// Canonical mount point.
    pub mountpoint: PathBuf,
    /// The mount point is a dead FUSE mount (its daemon is gone: ENOTCONN) that the mount
    /// detaches first (see [`dead_fuse_mount`]).
    pub reclaim: bool,
    /// Sparse block.
    pub sparse_block: crate::ids::BlockSize,
    /// Write size.
    pub write_size: u64,
    /// Global dirty limit.
    pub max_dirty: u64,
    /// Window writes of one file in flight.
    pub flush_depth: usize,
    /// Writer threads (window writes of the mount in flight).
    pub flush_threads: usize,
    /// Window writes through O_DIRECT (`None`: auto).
    pub direct_writes: Option<bool>,
    /// Dirty age.
    pub dirty_age: Duration,
    /// Kernel read-ahead in bytes (0: leave the kernel's).
    pub read_ahead: u64,
    /// Data chunks of a file read ahead by the daemon (0: none).
    pub read_depth: usize,
    /// Largest FUSE request asked of the kernel.
    pub max_write: u64,
    /// Threads.
    pub threads: usize,
    /// Extent map persistence.
    pub map_store: crate::fs::MapStore,
    /// Access.
    pub access: Access,
    /// Read-only.
    pub ro: bool,
    /// Kernel mount flags passed on (nosuid, nodev, noexec, noatime, ...).
    pub flags: Vec<MountFlag>,
    /// fsname shown in /proc/mounts.
    pub fsname: String,
    /// Keep written pages cached for write-only opens too.
    pub cache_writes: bool,
    /// Kernel passthrough for qualifying read-only opens.
    pub passthrough: bool,
    /// Kernel cache of directory listings.
    pub dir_cache: bool,
    /// How inodes are anchored.
    pub inode_handles: crate::fs::HandleMode,
    /// The fd pool's high-water mark (`None`: from the fd limit).
    pub max_fds: Option<u64>,
    /// subtype shown in /proc/mounts.
    pub subtype: String,
    /// Foreground.
    pub foreground: bool,
    /// Verbosity.
    pub verbose: u8,
    /// Log file.
    pub log_file: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`None`: off).
    pub metrics: Option<crate::metrics::MetricsAddr>,
}

/// A usage error: printed as one line, exit status 2, nothing mounted.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage<T>(msg: impl Into<String>) -> Result<T, UsageError> {
    Err(UsageError(msg.into()))
}

/// Parses a size: digits with an optional K, M, G or T suffix (binary, `KiB`/`KB`
/// accepted). Zero and overflow are errors.
///
/// # Errors
/// A message naming the bad value.
pub fn parse_size(what: &str, s: &str) -> Result<u64, UsageError> {
    let t = s.trim();
    let digits = t.bytes().take_while(|b| b.is_ascii_digit()).count();
    let (num, suffix) = t.split_at(digits);
    let bad = || {
        UsageError(format!(
            "invalid {what} '{s}': expected a size like 4096, 32K, 4M or 1G"
        ))
    };
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    let v = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if v == 0 {
        return usage(format!("invalid {what} '{s}': must be greater than zero"));
    }
    Ok(v)
}

/// Parses a duration: a number with `ms`, `s`, `m` or `h` (plain numbers are seconds).
///
/// # Errors
/// A message naming the bad value.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration, UsageError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        UsageError(format!(
            "invalid {what} '{s}': expected a duration like 500ms, 5s or 1m"
        ))
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 86400.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Rewrites the mount.fuse3/fstab form (`sparsefs SRC DIR -o ...`) to
/// `sparsefs mount SRC DIR -o ...`; other argument lists are returned unchanged.
pub fn normalize_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let is_sub = |a: &str| a == "help" || cmd.get_subcommands().any(|c| c.get_name() == a);
    match args.get(1).and_then(|a| a.to_str()) {
        Some(a) if !a.starts_with('-') && !is_sub(a) => {
            let mut v = vec![args[0].clone(), "mount".into()];
            v.extend(args.into_iter().skip(1));
            v
        }
        _ => args,
    }
}

/// Validates mount arguments (sizes, options, paths) without changing anything.
///
/// # Errors
/// A [`UsageError`] with one clear line.
pub fn validate(a: &MountArgs) -> Result<MountConfig, UsageError> {
    let mut sparse_block = a.sparse_block.clone();
    let mut write_size = a.write_size.clone();
    let mut max_dirty = a.max_dirty.clone();
    let mut dirty_age = a.dirty_age.clone();
    let mut read_ahead = a.read_ahead.clone();
    let mut threads = a.threads;
    let mut flush_depth = a.flush_depth;
    let mut flush_threads = a.flush_threads;
    let mut read_depth = a.read_depth;
    let mut max_write = a.max_write.clone();
    let mut direct_writes = a.direct_writes.clone();
    let mut cache_writes = a.cache_writes;
    let mut passthrough = !a.no_passthrough;
    let mut dir_cache = !a.no_dir_cache;
    let mut inode_handles = a.inode_handles.clone();
    let mut max_fds = a.max_fds;
    let mut map_store = a.map_store.clone();
    let mut metrics = a.metrics.clone();
    let mut access = if a.allow_other {
        Access::All
    } else {
        Access::Owner
    };
    let mut ro = false;
    let mut flags = Vec::new();
    let mut fsname = None;
    let mut subtype = "sparsefs".to_string();
    for opt in a.options.iter().flat_map(|o| o.split(',')) {
        let (k, v) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = |v: Option<&str>| {
            v.map(str::to_string)
                .ok_or_else(|| UsageError(format!("mount option '{k}' needs a value ({k}=...)")))
        };
        match k {
            "" => {}
            "sparse_block" => sparse_block = Some(need(v)?),
            "write_size" => write_size = Some(need(v)?),
            "max_dirty" => max_dirty = Some(need(v)?),
            "dirty_age" => dirty_age = Some(need(v)?),
            "read_ahead" => read_ahead = Some(need(v)?),
            "max_write" => max_write = Some(need(v)?),
            "map_store" => map_store = Some(need(v)?),
            "metrics" => metrics = Some(need(v)?),
            "threads" => {
                threads = Some(need(v)?.parse().map_err(|_| {
                    UsageError(format!(
                        "invalid threads '{}': expected a number",
                        v.unwrap_or("")
                    ))
                })?)
            }
            "inode_handles" => inode_handles = Some(need(v)?),
            "direct_writes" => direct_writes = Some(need(v)?),
            "flush_depth" | "flush_threads" | "read_depth" => {
                let n = need(v)?.parse().map_err(|_| {
                    UsageError(format!(
                        "invalid {k} '{}': expected a number",
                        v.unwrap_or("")
                    ))
                })?;
                if k == "flush_depth" {
                    flush_depth = Some(n);
                } else if k == "read_depth" {
                    read_depth = Some(n);
                } else {
                    flush_threads = Some(n);
                }
            }
            "max_fds" => {
                max_fds = Some(need(v)?.parse().map_err(|_| {
                    UsageError(format!(
                        "invalid max_fds '{}': expected a number",
                        v.unwrap_or("")
                    ))
                })?)
            }
            "cache_writes" => cache_writes = true,
            "no_passthrough" => passthrough = false,
            "no_dir_cache" => dir_cache = false,
            "allow_other" => access = Access::All,
            "allow_root" => {
                if access != Access::All {
                    access = Access::Root
                }
            }
            "ro" => ro = true,
            "rw" => ro = false,
            _ if MountFlag::parse(k).is_some() => flags.push(MountFlag::parse(k).expect("matched")),
            "fsname" => fsname = Some(need(v)?),
            "subtype" => subtype = need(v)?,
            "default_permissions"
            | "defaults"
            | "_netdev"
            | "nofail"
            | "noauto"
            | "auto"
            | "user"
            | "users"
            | "nouser"
            | "relatime"
            | "strictatime"
            | "nodiratime" => {}
            _ if k.starts_with("x-") || k.starts_with("comment=") => {}
            "remount" => {
                return usage(
                    "remount is not supported by FUSE filesystems: unmount and mount again",
                );
            }
            _ => return usage(format!("unknown mount option '{opt}'")),
        }
    }
    let block = parse_size("sparse block", sparse_block.as_deref().unwrap_or("32K"))?;
    let sparse_block = crate::ids::BlockSize::new(block).or_else(usage)?;
    let block = sparse_block.get();
    let write_size = match write_size {
        Some(w) => parse_size("write size", &w)?,
        None => (4u64 << 20).max(block),
    };
    if write_size % block != 0 || write_size > 1 << 30 {
        return usage(format!(
            "invalid write size {write_size}: must be a multiple of the sparse block ({block}) and at most 1G"
        ));
    }
    let max_dirty = parse_size("max dirty", max_dirty.as_deref().unwrap_or("256M"))?;
    if max_dirty < write_size {
        return usage(format!(
            "invalid max dirty {max_dirty}: must be at least the write size ({write_size})"
        ));
    }
    let dirty_age = parse_duration("dirty age", dirty_age.as_deref().unwrap_or("5s"))?;
    let read_ahead = match read_ahead.as_deref().unwrap_or("1M") {
        "0" => 0,
        r => parse_size("read ahead", r)?,
    };
    if read_ahead > 1 << 30 {
        return usage(format!(
            "invalid read ahead {read_ahead}: must be at most 1G"
        ));
    }
    let map_store = match map_store.as_deref().unwrap_or("xattr") {
        "xattr" => crate::fs::MapStore::Xattr,
        "sidecar" => crate::fs::MapStore::Sidecar,
        "none" => crate::fs::MapStore::None,
        other => {
            return usage(format!(
                "invalid map store '{other}': expected xattr, sidecar or none"
            ));
        }
    };
    let inode_handles = match inode_handles.as_deref().unwrap_or("auto") {
        "auto" => crate::fs::HandleMode::Auto,
        "always" => crate::fs::HandleMode::Always,
        "never" => crate::fs::HandleMode::Never,
        other => {
            return usage(format!(
                "invalid inode handles '{other}': expected auto, always or never"
            ));
        }
    };
    if let Some(n) = max_fds
        && n < 16
    {
        return usage(format!("invalid max fds {n}: must be at least 16"));
    }
    // More request threads than cores only adds wake-up latency (measured: 4 threads on
    // 2 cores made create+stat+unlink 2.5x slower than 2).
    let metrics = metrics
        .as_deref()
        .map(crate::metrics::MetricsAddr::parse)
        .transpose()
        .or_else(usage)?;
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)));
    if !(1..=256).contains(&threads) {
        return usage(format!("invalid threads {threads}: must be from 1 to 256"));
    }
    let flush_depth = flush_depth.unwrap_or(4);
    if !(1..=64).contains(&flush_depth) {
        return usage(format!(
            "invalid flush depth {flush_depth}: must be from 1 to 64"
        ));
    }
    let direct_writes = match direct_writes.as_deref().unwrap_or("auto") {
        "auto" => None,
        "always" => Some(true),
        "never" => Some(false),
        other => {
            return usage(format!(
                "invalid direct writes '{other}': expected auto, always or never"
            ));
        }
    };
    let max_write = parse_size("max write", max_write.as_deref().unwrap_or("1M"))?;
    if !(4096..=16 << 20).contains(&max_write) || !max_write.is_multiple_of(4096) {
        return usage(format!(
            "invalid max write {max_write}: must be a multiple of 4K from 4K to 16M"
        ));
    }
    let read_depth = read_depth.unwrap_or(16);
    if read_depth > 64 {
        return usage(format!(
            "invalid read depth {read_depth}: must be from 0 to 64"
        ));
    }
    let flush_threads = flush_threads.unwrap_or(8);
    if !(1..=256).contains(&flush_threads) {
        return usage(format!(
            "invalid flush threads {flush_threads}: must be from 1 to 256"
        ));
    }
    let backing = check_dir("backing directory", &a.backing)?;
    // A dead FUSE mount cannot be resolved (ENOTCONN): it is taken as it is and detached
    // by the mount itself, after every other check passed.
    let dead = dead_fuse_mount(&a.mountpoint);
    let mountpoint = match &dead {
        Some(abs) => abs.clone(),
        None => check_dir("mount point", &a.mountpoint)?,
    };
    if mountpoint.starts_with(&backing) {
        return usage(format!(
            "mount point {} is inside the backing directory {}: the mount would recurse into itself",
            mountpoint.display(),
            backing.display()
        ));
    }
    if backing.starts_with(&mountpoint) {
        return usage(format!(
            "backing directory {} is inside the mount point {}: it would be hidden by the mount",
            backing.display(),
            mountpoint.display()
        ));
    }
    if dead.is_none() && is_mountpoint(&mountpoint) {
        return usage(format!(
            "mount point {} is already mounted",
            mountpoint.display()
        ));
    }
    Ok(MountConfig {
        reclaim: dead.is_some(),
        fsname: fsname.unwrap_or_else(|| backing.display().to_string()),
        cache_writes,
        passthrough,
        dir_cache,
        inode_handles,
        max_fds,
        backing,
        mountpoint,
        sparse_block,
        write_size,
        max_dirty,
        flush_depth,
        flush_threads,
        direct_writes,
        dirty_age,
        read_ahead,
        read_depth,
        max_write,
        threads,
        map_store,
        access,
        ro,
        flags,
        subtype,
        foreground: a.foreground,
        verbose: a.verbose,
        log_file: a.log_file.clone(),
        metrics,
    })
}

fn check_dir(what: &str, p: &std::path::Path) -> Result<PathBuf, UsageError> {
    match std::fs::metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            usage(format!("{what} {} does not exist", p.display()))
        }
        Err(e) => usage(format!("{what} {}: {e}", p.display())),
        Ok(m) if !m.is_dir() => usage(format!("{what} {} is not a directory", p.display())),
        Ok(_) => {
            std::fs::canonicalize(p).or_else(|e| usage(format!("{what} {}: {e}", p.display())))
        }
    }
}

/// A FUSE mount whose daemon died (kill -9, OOM) leaves its mount point answering
/// ENOTCONN: its absolute path if `p` is one (live mounts and other errors: `None`). Such a
/// dead mount is detached by the mount that takes its place (`daemon::run`), with a
/// warning; nothing is changed here.
pub fn dead_fuse_mount(p: &std::path::Path) -> Option<std::path::PathBuf> {
    // statfs is never answered from the kernel's attribute cache, unlike stat.
    let e = crate::sys::statfs_path(p).err()?;
    if e.raw_os_error() != Some(libc::ENOTCONN) {
        return None;
    }
    let abs = std::path::absolute(p).ok()?;
    crate::mountinfo::find(&abs)
        .is_some_and(|m| m.fstype.starts_with("fuse"))
        .then_some(abs)
}

/// True if `p` (canonical) is a mount point now.
pub fn is_mountpoint(p: &std::path::Path) -> bool {
    crate::mountinfo::find(p).is_some()
}

/// A kernel mount flag passed on to the mount (`-o nosuid` and the like): the one table of
/// them, with what each is for fuser and for mount(2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountFlag {
    /// nosuid
    NoSuid,
    /// suid
    Suid,
    /// nodev
    NoDev,
    /// dev
    Dev,
    /// noexec
    NoExec,
    /// exec
    Exec,
    /// noatime
    NoAtime,
    /// atime
    Atime,
    /// sync
    Sync,
    /// async
    Async,
    /// dirsync
    DirSync,
}

impl MountFlag {
    const TABLE: [(&'static str, MountFlag, u64); 11] = [
        ("nosuid", MountFlag::NoSuid, libc::MS_NOSUID),
        ("suid", MountFlag::Suid, 0),
        ("nodev", MountFlag::NoDev, libc::MS_NODEV),
        ("dev", MountFlag::Dev, 0),
        ("noexec", MountFlag::NoExec, libc::MS_NOEXEC),
        ("exec", MountFlag::Exec, 0),
        ("noatime", MountFlag::NoAtime, libc::MS_NOATIME),
        ("atime", MountFlag::Atime, 0),
        ("sync", MountFlag::Sync, libc::MS_SYNCHRONOUS),
        ("async", MountFlag::Async, 0),
        ("dirsync", MountFlag::DirSync, libc::MS_DIRSYNC),
    ];

    /// The flag named `s`, if it is one.
    pub fn parse(s: &str) -> Option<MountFlag> {
        Self::TABLE.iter().find(|t| t.0 == s).map(|t| t.1)
    }

    /// Its bits for mount(2) (0 for the defaults: suid, dev, exec, atime, async).
    pub fn ms_bits(self) -> u64 {
        Self::TABLE.iter().find(|t| t.1 == self).map_or(0, |t| t.2)
    }
}

#[cfg(test)]
mod tests;
