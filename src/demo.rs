//! `sparsefs demo`: one command that shows what sparsefs does, on a temporary
//! directory, and cleans up (also on Ctrl-C).

use crate::cli::parse_size;
use crate::file::Geometry;
use crate::fs::{FsConfig, SparseFs};
use crate::fuse_adapter::Adapter;
use crate::stats::{Op, Stats};
use crate::sys;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn cleanup(dir: &Path, mnt: &Path) {
    if crate::cli::is_mountpoint(mnt) {
        let _ = sys::umount(mnt, true);
    }
    let _ = fs::remove_dir_all(dir);
}

fn seek_map(path: &Path) -> std::io::Result<Vec<(u64, u64)>> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    Ok(crate::tools::data_runs(&f, size))
}

/// Runs the demo.
///
/// # Errors
/// A one-line message.
pub fn run(sparse_block: &str) -> Result<(), String> {
    let block = parse_size("sparse block", sparse_block).map_err(|e| e.0)?;
    let block = crate::ids::BlockSize::new(block)?.get();
    let dir = std::env::temp_dir().join(format!("sparsefs-demo-{}", std::process::id()));
    let backing = dir.join("backing");
    let mnt = dir.join("mnt");
    fs::create_dir_all(&backing).map_err(|e| format!("{}: {e}", backing.display()))?;
    fs::create_dir_all(&mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
    let sigs = sys::block_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    {
        let (dir, mnt) = (dir.clone(), mnt.clone());
        std::thread::spawn(move || {
            sys::wait_signal(&sigs);
            eprintln!("\ninterrupted: unmounting and removing {}", dir.display());
            cleanup(&dir, &mnt);
            std::process::exit(130);
        });
    }
    let r = demo(&dir, &backing, &mnt, block);
    cleanup(&dir, &mnt);
    r
}

fn demo(dir: &Path, backing: &Path, mnt: &Path, block: u64) -> Result<(), String> {
    let err = |what: &str, e: std::io::Error| format!("{what}: {e}");
    // A VM-like image: 256 MiB, 3% data in scattered 1 MiB extents, plus a header.
    let src = dir.join("vm-source.img");
    let size = 256 * MIB;
    let extents: Vec<u64> = (0..8u64).map(|i| (i * 31 + 3) % 256 * MIB).collect();
    {
        let f = File::create(&src).map_err(|e| err("create source image", e))?;
        f.set_len(size).map_err(|e| err("size source image", e))?;
        let mut x = 0x2545F4914F6CDD1Du64;
        for &off in &extents {
            let data: Vec<u8> = (0..MIB)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            f.write_all_at(&data, off)
                .map_err(|e| err("write source image", e))?;
        }
    }
    let stats = Arc::new(Stats::default());
    let cfg = FsConfig {
        backing: backing.to_path_buf(),
        geo: Geometry {
            block,
            write_size: (4 * MIB).max(block),
            max_dirty_file: 64 * MIB,
            flush_depth: 4,
            read_depth: 16,
            read_chunk: MIB,
        },
        max_dirty: 256 * MIB,
        dirty_age: Duration::from_secs(5),
        creds: false,
        owner: sys::geteuid(),
        map_store: crate::fs::MapStore::None,
        cache_writes: false,
        passthrough: true,
        dir_cache: true,
        inode_handles: crate::fs::HandleMode::Auto,
        fd_high: None,
        direct_writes: None,
        debug_hooks: false,
    };
    let fs = Arc::new(SparseFs::new(cfg, stats.clone()).map_err(|e| err("open backing", e))?);
    let caps = fs.caps();
    let mut fc = fuser::Config::default();
    fc.mount_options = vec![
        fuser::MountOption::FSName("sparsefs-demo".into()),
        fuser::MountOption::Subtype("sparsefs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    fc.n_threads = Some(2);
    fc.clone_fd = true;
    let session = fuser::Session::new(Adapter::new(fs.clone()), mnt, &fc)
        .map_err(|e| err(&format!("mount on {}", mnt.display()), e))?;
    let bg = session.spawn().map_err(|e| err("start session", e))?;
    fs.start();
    println!("sparsefs demo");
    println!(
        "  backing dir : {}  (probe: punch {}, SEEK_DATA {})",
        backing.display(),
        yes(caps.punch),
        yes(caps.seek)
    );
    println!(
        "  mount point : {}  (sparse block {} KiB, write size {} MiB)",
        mnt.display(),
        block >> 10,
        (4 * MIB).max(block) / MIB
    );
    println!(
        "  source      : a {} MiB VM-like image with {} MiB of data in {} extents",
        size / MIB,
        extents.len(),
        extents.len()
    );
    println!();
    let dst = mnt.join("disk.img");
    println!(
        "$ dd if={} of={} bs=1M      # dd is not sparse-aware: it writes every zero",
        src.display(),
        dst.display()
    );
    let t = Instant::now();
    let st = std::process::Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", dst.display()))
        .arg("bs=1M")
        .arg("status=none")
        .status()
        .map_err(|e| err("run dd", e))?;
    if !st.success() {
        return Err("dd through the mount failed".into());
    }
    let secs = t.elapsed().as_secs_f64();
    let same = files_equal(&src, &dst).map_err(|e| err("compare", e))?;
    let map = seek_map(&dst).map_err(|e| err("seek map", e))?;
    let mst = fs::metadata(&dst).map_err(|e| err("stat", e))?;
    let back = fs::metadata(backing.join("disk.img")).map_err(|e| err("stat backing file", e))?;
    println!();
    println!(
        "application wrote       : {:>6} MiB in {} write calls ({:.2} s)",
        stats.app_write_bytes.load(Relaxed) / MIB,
        stats.app_writes.load(Relaxed),
        secs
    );
    println!(
        "reached the backend     : {:>6} MiB in {} pwrite calls, {} punch, {} ftruncate, {} lseek",
        stats.bytes(Op::Write) / MIB,
        stats.calls(Op::Write),
        stats.calls(Op::Punch),
        stats.calls(Op::Truncate),
        stats.calls(Op::Lseek)
    );
    println!(
        "zero bytes elided       : {:>6} MiB",
        stats.zero_bytes_elided.load(Relaxed) / MIB
    );
    println!(
        "allocated on the backend: {:>6} MiB of {} MiB (st_blocks {})",
        back.blocks() * 512 / MIB,
        back.len() / MIB,
        back.blocks()
    );
    println!(
        "st_blocks via the mount : {} (so cp and tar take their sparse path)",
        mst.blocks()
    );
    println!(
        "contents equal to source: {}",
        if same { "yes" } else { "NO" }
    );
    println!(
        "SEEK_DATA map through the mount ({} data extents):",
        map.len()
    );
    for (d, h) in &map {
        println!("  DATA {:>10} .. {:>10}  ({} KiB)", d, h, (h - d) >> 10);
    }
    bg.umount_and_join().map_err(|e| err("unmount", e))?;
    println!();
    println!("unmounted; removed {}", dir.display());
    if !same {
        return Err("contents differ".into());
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "works" } else { "missing" }
}

fn files_equal(a: &PathBuf, b: &PathBuf) -> std::io::Result<bool> {
    let (fa, fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let mut off = 0;
    let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read_at(&mut x, off)?;
        let m = fb.read_at(&mut y, off)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
        off += n as u64;
    }
}
