//! Issue 18 item 3: the daemon reads data chunks ahead of an in-order reader, several at
//! once, skipping known holes; nothing read ahead is ever served over a newer write.

use crate::harness::*;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// `cp --sparse=auto` and `tar -S` of a sparse image (scattered unaligned extents) read
/// it through chunks read ahead on every backing: the copies are exact, most data bytes
/// came from chunks read ahead, and the backend read no more than the data's blocks
/// (never a hole); at the last close the read-ahead holds nothing.
#[test]
fn in_order_readers_of_a_sparse_image_are_served_ahead_and_read_no_hole() {
    if !fuse_available() {
        return;
    }
    for b in each_backing() {
        let kind = b.kind();
        let m = Mount::new(b.path(), &["--read-depth", "8"]);
        let img = m.p("img");
        let f = File::create(&img).unwrap();
        f.set_len(256 << 20).unwrap();
        let mut data = 0u64;
        for i in 0..40u64 {
            let at = i * (6 << 20) + 4096 * (i % 7) + 123;
            f.write_all_at(&random_bytes(200_000, i + 1), at).unwrap();
            data += 200_000;
        }
        drop(f);
        // A fresh mount: nothing in the kernel's or the daemon's caches.
        drop(m);
        let m = Mount::new(b.path(), &["--read-depth", "8"]);
        let img = m.p("img");
        let before = m.stats();
        let out = tempfile::tempdir().unwrap();
        let copy = out.path().join("copy");
        // Each reader starts with nothing of the image in the kernel's page cache (an
        // open of an unchanged file keeps it): `dd iflag=nocache count=0` drops it.
        let drop_cache = format!("dd if={} iflag=nocache count=0 status=none", img.display());
        let st = sh_status(&format!(
            "cp --sparse=auto {} {} && {drop_cache} && cmp {} {}",
            img.display(),
            copy.display(),
            img.display(),
            copy.display()
        ));
        assert!(st.status.success(), "{kind}: {st:?}");
        let st = sh_status(&format!(
            "{drop_cache} && tar -S -cf {}/t.tar -C {} img",
            out.path().display(),
            m.path().display()
        ));
        assert!(st.status.success(), "{kind}: {st:?}");
        let after = m.stats();
        let d = |k: &str| json_u64(&after, k) - json_u64(&before, k);
        let read = d("backend.read.bytes");
        assert!(d("prefetches") >= 20, "{kind}: {after}");
        // Three reads of the image (cp, cmp, tar): most of their data came from chunks
        // read ahead, and the backend read each data block once per read at most (40
        // extents of at most 8 blocks of 32K), never a hole, never a byte twice (9.2 MB
        // per read measured on dir and bindfs).
        assert!(d("prefetch_hit_bytes") >= 2 * data, "{kind}: {after}");
        assert!(read <= 3 * 40 * 8 * 32768, "{kind}: read {read}");
        wait_for("read-ahead released", Duration::from_secs(10), || {
            json_u64(&m.stats(), "prefetch_bytes") == 0
        });
    }
}

/// A reader in order (`O_DIRECT`, so every read reaches the daemon) over a file whose
/// blocks a writer keeps rewriting with a rising generation (flushed as it goes, fsync
/// now and then): every 4 KiB block read is whole (one generation), and no block's
/// generation ever goes back (a chunk read ahead before a write is never served after
/// it). Ends by itself; a watchdog prints the daemon's stacks if it hangs.
#[test]
fn a_reader_never_sees_a_block_go_back_while_a_writer_rewrites_it() {
    if !fuse_available() {
        return;
    }
    const BLOCKS: u64 = 512; // 2 MiB
    for b in each_backing() {
        let kind = b.kind();
        let m = Mount::new(
            b.path(),
            &[
                "--read-depth",
                "8",
                "--sparse-block",
                "4K",
                "--write-size",
                "64K",
                "--read-ahead",
                "64K",
            ],
        );
        let path = m.p("f");
        // A block: its generation, its number, then bytes that depend on both.
        let block = |g_n: u32, i: u64| -> Vec<u8> {
            let mut v = Vec::with_capacity(4096);
            v.extend_from_slice(&g_n.to_le_bytes());
            v.extend_from_slice(&(i as u32).to_le_bytes());
            v.extend((8..4096u32).map(|k| (k.wrapping_mul(g_n | 1) ^ i as u32) as u8 | 1));
            v
        };
        let f = File::create(&path).unwrap();
        for i in 0..BLOCKS {
            f.write_all_at(&block(1, i), i * 4096).unwrap();
        }
        f.sync_all().unwrap();
        let done = AtomicBool::new(false);
        let written = AtomicBool::new(false);
        let progress = AtomicU64::new(0);
        let pid = daemon_pid(&m);
        std::thread::scope(|s| {
            // Watchdog: 60 s without the reader's progress is a hang.
            s.spawn(|| {
                let mut last = (0, Instant::now());
                while !done.load(Relaxed) {
                    let p = progress.load(Relaxed);
                    if p != last.0 {
                        last = (p, Instant::now());
                    } else if last.1.elapsed() > Duration::from_secs(60) {
                        eprintln!("{}", crate::torture::hang_report(&[pid], &[]));
                        crate::torture::abort_connection(m.path());
                        panic!("{kind}: hung");
                    }
                    std::thread::park_timeout(Duration::from_millis(200));
                }
            });
            let writer = s.spawn(|| {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                let mut g_n = 2u32;
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(6) {
                    // A run of 1 to 16 blocks at a random place, the newest generation.
                    let at = rand_u64() % BLOCKS;
                    let n = (1 + rand_u64() % 16).min(BLOCKS - at);
                    let mut buf = Vec::new();
                    for i in at..at + n {
                        buf.extend_from_slice(&block(g_n, i));
                    }
                    f.write_all_at(&buf, at * 4096).unwrap();
                    if g_n.is_multiple_of(16) {
                        f.sync_data().unwrap();
                    }
                    g_n += 1;
                }
                written.store(true, Relaxed);
                g_n
            });
            let reader = s.spawn(|| {
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)
                    .unwrap();
                let mut seen = vec![1u32; BLOCKS as usize];
                let mut buf = AlignedBuf::new(64 << 10);
                let mut passes = 0;
                while !written.load(Relaxed) || passes < 2 {
                    for c in 0..BLOCKS / 16 {
                        let n = f.read_at(buf.as_mut(), c * 65536).unwrap();
                        assert_eq!(n, 65536, "{kind}");
                        for j in 0..16 {
                            let i = c * 16 + j;
                            let b = &buf.as_mut()[(j * 4096) as usize..((j + 1) * 4096) as usize];
                            let g = u32::from_le_bytes(b[..4].try_into().unwrap());
                            assert!(b == &block(g, i)[..], "{kind}: block {i} torn");
                            assert!(
                                g >= seen[i as usize],
                                "{kind}: block {i} went back from generation {} to {g}",
                                seen[i as usize]
                            );
                            seen[i as usize] = g;
                        }
                        progress.fetch_add(1, Relaxed);
                    }
                    passes += 1;
                }
                passes
            });
            let passes = reader.join().unwrap();
            let gens = writer.join().unwrap();
            done.store(true, Relaxed);
            assert!(gens > 100, "{kind}: {gens} generations");
            assert!(passes >= 2, "{kind}");
        });
        let st = m.stats();
        assert!(json_u64(&st, "prefetches") > 0, "{kind}: {st}");
    }
}

/// A page-aligned buffer for `O_DIRECT` reads.
struct AlignedBuf(Vec<u8>, usize);

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let v = vec![0u8; len + 4096];
        let skew = v.as_ptr().align_offset(4096);
        AlignedBuf(v, skew)
    }
    fn as_mut(&mut self) -> &mut [u8] {
        let len = self.0.len() - 4096;
        &mut self.0[self.1..self.1 + len]
    }
}
