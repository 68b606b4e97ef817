//! send -> recv through memory and socket pairs, against the bytes of the source as the
//! model: random sparse files, every size around the block, `--update` with random
//! changes.

use super::recv::{Dest, RecvOpts};
use super::*;
use proptest::prelude::*;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

const B: u64 = 4096;

fn opts(update: bool) -> SendOpts {
    SendOpts {
        format: Format::Native,
        block: B,
        to: None,
        ssh: "ssh".into(),
        remote_bin: "sparsefs".into(),
        update,
        inplace: false,
        json: false,
    }
}

/// Writes `bytes` sparsely: holes where a whole block is zero.
fn write_sparse(p: &Path, bytes: &[u8]) {
    let f = std::fs::File::create(p).unwrap();
    for (i, b) in bytes.chunks(B as usize).enumerate() {
        if b.iter().any(|&x| x != 0) {
            f.write_all_at(b, i as u64 * B).unwrap();
        }
    }
    f.set_len(bytes.len() as u64).unwrap();
}

/// Sends `paths` into memory.
fn stream_of(paths: &[std::path::PathBuf]) -> (Vec<u8>, Vec<sender::FileSummary>) {
    let sources = sender::open_sources(paths).unwrap();
    let buf = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    struct Shared(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (sums, bytes) = send_to(
        &sources,
        &opts(false),
        Box::new(Shared(buf.clone())),
        None,
        &mut source::RunFinder::default(),
        &Progress::hidden(),
    )
    .unwrap();
    let v = buf.lock().clone();
    assert_eq!(bytes, v.len() as u64);
    (v, sums)
}

fn receive(stream: &[u8], dest: &Path) -> Result<recv::RecvSummary, String> {
    recv::recv(
        stream,
        std::io::sink(),
        &Dest::resolve(dest).unwrap(),
        &RecvOpts::default(),
        &Progress::hidden(),
    )
}

/// Sends `src` to `dst` over a socket pair with `--update` (recv in a thread).
fn update(src: &Path, dst: &Path, inplace: bool) -> sender::FileSummary {
    let (a, b) = UnixStream::pair().unwrap();
    let dst = dst.to_path_buf();
    let rx = std::thread::spawn(move || {
        let r = b.try_clone().unwrap();
        recv::recv(
            r,
            b,
            &Dest::resolve(&dst).unwrap(),
            &RecvOpts { inplace },
            &Progress::hidden(),
        )
    });
    let sources = sender::open_sources(&[src.to_path_buf()]).unwrap();
    let reply = a.try_clone().unwrap();
    let (mut sums, _) = send_to(
        &sources,
        &opts(true),
        Box::new(a),
        Some(Box::new(reply)),
        &mut source::RunFinder::default(),
        &Progress::hidden(),
    )
    .unwrap();
    rx.join().unwrap().unwrap();
    sums.remove(0)
}

/// File contents: runs of (zero?, blocks, extra bytes) laid end to end.
fn contents() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<bool>(), 0u64..6, 0u64..B, any::<u8>()), 0..8).prop_map(|runs| {
        let mut v = Vec::new();
        for (zero, blocks, extra, seed) in runs {
            let n = (blocks * B + extra) as usize;
            if zero {
                v.extend(std::iter::repeat_n(0u8, n));
            } else {
                v.extend((0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed | 1));
            }
        }
        v
    })
}

fn nonzero_block_bytes(bytes: &[u8]) -> u64 {
    bytes
        .chunks(B as usize)
        .filter(|b| b.iter().any(|&x| x != 0))
        .map(|b| b.len() as u64)
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_round_trip_delivers_the_bytes_and_sends_only_nonzero_blocks(a in contents(), b in contents()) {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        write_sparse(&src.join("a"), &a);
        // The second file dense: its zero blocks must travel as holes all the same.
        std::fs::write(src.join("b"), &b).unwrap();
        let (stream, sums) = stream_of(&[src.join("a"), src.join("b")]);
        let got = receive(&stream, &dst).unwrap();
        prop_assert_eq!(std::fs::read(dst.join("a")).unwrap(), a.clone());
        prop_assert_eq!(std::fs::read(dst.join("b")).unwrap(), b.clone());
        prop_assert_eq!(sums[0].data_bytes, nonzero_block_bytes(&a));
        prop_assert_eq!(sums[1].data_bytes, nonzero_block_bytes(&b));
        prop_assert_eq!(got.data_bytes, nonzero_block_bytes(&a) + nonzero_block_bytes(&b));
        prop_assert_eq!(sums[0].digest, Some(wire::digest_of(&a, B)));
        prop_assert_eq!(sums[1].digest, Some(wire::digest_of(&b, B)));
    }

    #[test]
    fn update_sends_exactly_the_blocks_that_differ(
        old in contents(),
        new in contents(),
        inplace in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        write_sparse(&dst, &old);
        write_sparse(&src, &new);
        let s = update(&src, &dst, inplace);
        prop_assert_eq!(std::fs::read(&dst).unwrap(), new.clone());
        // The model: a non-zero block of the new file is sent unless the old file has
        // the same bytes there (same length too).
        let differing = new
            .chunks(B as usize)
            .enumerate()
            .filter(|(i, b)| {
                let s = i * B as usize;
                b.iter().any(|&x| x != 0)
                    && old.get(s..(s + b.len()).min(old.len())) != Some(*b)
            })
            .count() as u64;
        prop_assert_eq!(s.blocks_sent, differing);
    }
}

#[test]
fn every_size_around_the_block_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    for size in [0, 1, B - 1, B, B + 1, 2 * B - 1, 2 * B, 3 * B + 1] {
        for fill in [0u8, 7] {
            let (src, dst) = (dir.path().join("s"), dir.path().join("d"));
            let bytes = vec![fill; size as usize];
            write_sparse(&src, &bytes);
            let (stream, _) = stream_of(std::slice::from_ref(&src));
            receive(&stream, &dst).unwrap();
            assert_eq!(
                std::fs::read(&dst).unwrap(),
                bytes,
                "size {size} fill {fill}"
            );
        }
    }
}

#[test]
fn an_xfer_hole_stream_given_to_recv_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = receive(b"HOLE\n4096\nDATA\n3\nabc", &dir.path().join("x")).unwrap_err();
    assert!(e.contains("xfer-hole"), "{e}");
    assert!(!dir.path().join("x").exists());
}

/// Regression (shrunk from the proptest above: old = many data blocks, new = `[1]`): a
/// file ending inside a block had that block described twice with `--update`, data then
/// a hole, and the receiver refused the stream as out of order. The gap after the last
/// run started inside the last block.
#[test]
fn update_of_a_file_ending_inside_a_block_describes_its_last_block_once() {
    for (old, new) in [
        (vec![5u8; 3 * B as usize], vec![1u8]),
        (vec![5u8; 3 * B as usize], vec![1u8; B as usize + 7]),
        (vec![5u8; B as usize + 7], vec![0u8; B as usize + 3]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        write_sparse(&dst, &old);
        write_sparse(&src, &new);
        update(&src, &dst, false);
        assert_eq!(std::fs::read(&dst).unwrap(), new);
    }
}
