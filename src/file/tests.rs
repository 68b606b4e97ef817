//! Engine tests over the in-memory backend: budgets, faults, and a property test
//! against a `Vec<u8>` model.

use super::*;
use crate::backend::counting::Counting;
use crate::backend::fault::{Fault, Faulty};
use crate::backend::mem::MemFile;
use crate::stats::Op;
use proptest::prelude::*;
use std::sync::Arc;

struct Rig {
    file: SparseFile,
    mem: Arc<Faulty<MemFile>>,
    stats: Arc<Stats>,
}

fn rig_with(geo: Geometry, punch: bool, seek: bool, initial: &[u8]) -> Rig {
    let mem = Arc::new(Faulty::new(MemFile::with_caps(punch, seek)));
    if !initial.is_empty() {
        mem.inner()
            .write_all_at(&[IoSlice::new(initial)], 0)
            .unwrap();
    }
    let stats = Arc::new(Stats::default());
    let backend = Box::new(Counting::new(mem.clone(), stats.clone()));
    let caps = Caps {
        punch,
        seek,
        direct: false,
    };
    let file = SparseFile::open(backend, geo, caps, stats.clone()).unwrap();
    Rig { file, mem, stats }
}

fn geo(block: u64, write_size: u64) -> Geometry {
    Geometry {
        block,
        write_size,
        max_dirty_file: 64 * write_size,
        flush_depth: 1,
        read_depth: 0,
        read_chunk: 1 << 20,
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn zeros_written_sequentially_cost_no_backend_write_and_one_ftruncate() {
    let mut r = rig_with(Geometry::default(), true, true, &[]);
    let zero = vec![0u8; MIB as usize];
    for i in 0..64 {
        r.file.write(i * MIB, &zero).unwrap();
    }
    r.file.flush(Depth::Full, Trigger::Close).unwrap();
    assert_eq!(r.stats.calls(Op::Write), 0);
    assert_eq!(r.stats.calls(Op::Punch), 0);
    assert_eq!(r.stats.calls(Op::Truncate), 1);
    assert_eq!(r.mem.inner().size().unwrap(), 64 * MIB);
    assert!(r.mem.inner().allocated().is_empty());
    assert_eq!(r.stats.zero_bytes_elided.load(Relaxed), 64 * MIB);
}

#[test]
fn scattered_extents_cost_one_write_each_and_no_lseek() {
    // 64 data extents of 1 MiB, 32 MiB apart, written as a dense stream of 256 KiB app
    // writes (what cp --sparse=never or plain rsync send).
    let mut r = rig_with(Geometry::default(), true, true, &[]);
    let size = 64 * 32 * MIB;
    let chunk = 256 << 10;
    let data = vec![0x5Au8; chunk];
    let zero = vec![0u8; chunk];
    let mut off = 0;
    while off < size {
        let is_data = (off % (32 * MIB)) < MIB;
        r.file
            .write(off, if is_data { &data } else { &zero })
            .unwrap();
        off += chunk as u64;
    }
    r.file.flush(Depth::Full, Trigger::Close).unwrap();
    assert_eq!(r.stats.calls(Op::Write), 64);
    assert_eq!(r.stats.bytes(Op::Write), 64 * MIB);
    assert_eq!(r.stats.calls(Op::Lseek), 0);
    assert_eq!(r.stats.calls(Op::Truncate), 1);
    assert_eq!(r.mem.inner().allocated().total(), 64 * MIB);
    assert_eq!(r.file.seek(0, Whence::Data).unwrap(), Some(0));
    assert_eq!(r.file.seek(0, Whence::Hole).unwrap(), Some(MIB));
    assert_eq!(r.file.seek(MIB, Whence::Data).unwrap(), Some(32 * MIB));
    assert_eq!(r.file.seek(size - 1, Whence::Data).unwrap(), None);
    assert_eq!(r.file.seek(size, Whence::Hole).unwrap(), None);
}

/// rsync -S writes an extent in chunks and seeks over zero bytes at their edges; an
/// extent straddling a write-size boundary, with such a one-byte gap right at the
/// boundary, and a dirty-age flush while it is half written, is still one backend write
/// (found flaky in CI: 65 writes for 64 extents).
#[test]
fn a_straddling_extent_with_small_gaps_is_one_write() {
    let mut r = rig_with(Geometry::default(), true, true, &[]);
    let data = vec![0x5Au8; 64 << 10];
    let mut flushed_early = 0;
    for i in 0..8u64 {
        let start = i * 32 * MIB + 3 * MIB + 512 * 1024;
        let mut off = start;
        while off < start + MIB {
            let mut n = (start + MIB - off).min(data.len() as u64);
            // The chunk that ends at the 4 MiB boundary leaves its last byte unwritten.
            if (off + n).is_multiple_of(4 * MIB) {
                n -= 1;
            }
            r.file.write(off, &data[..n as usize]).unwrap();
            // The dirty-age flusher runs while the writer is past the boundary.
            if off >= start + MIB / 2 && off < start + MIB / 2 + (64 << 10) {
                r.file
                    .flush_background(Trigger::Age, std::time::Duration::from_secs(3600));
            }
            off += if n < data.len() as u64 && (off + n + 1).is_multiple_of(4 * MIB) {
                n + 1
            } else {
                n
            };
        }
        if r.stats.calls(Op::Write) > i {
            flushed_early += 1;
        }
    }
    r.file.flush(Depth::Full, Trigger::Close).unwrap();
    assert_eq!(
        r.stats.calls(Op::Write),
        8,
        "flushed early: {flushed_early}"
    );
}

#[test]
fn zeros_over_existing_data_are_punched_once_per_run_and_read_back_as_zeros() {
    let initial = vec![0xEEu8; (8 * MIB) as usize];
    let mut r = rig_with(Geometry::default(), true, true, &initial);
    r.file.write(MIB, &vec![0u8; (3 * MIB) as usize]).unwrap();
    r.file.flush(Depth::Full, Trigger::Close).unwrap();
    assert_eq!(r.stats.calls(Op::Punch), 1);
    assert_eq!(r.stats.calls(Op::Write), 0);
    let back = r.mem.inner().contents();
    assert!(
        back[MIB as usize..(4 * MIB) as usize]
            .iter()
            .all(|&b| b == 0)
    );
    assert!(back[..MIB as usize].iter().all(|&b| b == 0xEE));
    assert!(!r.mem.inner().allocated().intersects(MIB, 4 * MIB));
}

#[test]
fn zeros_over_data_are_written_when_the_backend_cannot_punch() {
    let initial = vec![0xEEu8; (2 * MIB) as usize];
    let mut r = rig_with(Geometry::default(), false, false, &initial);
    r.file.write(0, &vec![0u8; MIB as usize]).unwrap();
    r.file.flush(Depth::Full, Trigger::Close).unwrap();
    assert_eq!(r.stats.calls(Op::Punch), 0);
    let back = r.mem.inner().contents();
    assert!(back[..MIB as usize].iter().all(|&b| b == 0));
    assert_eq!(
        r.file.read(0, 2 * MIB as usize).unwrap()[..MIB as usize],
        vec![0u8; MIB as usize][..]
    );
}

#[test]
fn unknown_file_is_all_data_without_trusted_seek_and_learned_with_it() {
    let mut initial = vec![0u8; (4 * MIB) as usize];
    initial[..4096].fill(1);
    // MemFile allocation is where it was written: all 4 MiB, since written as one buffer.
    let mut r = rig_with(Geometry::default(), true, false, &initial);
    assert_eq!(r.file.seek(0, Whence::Hole).unwrap(), Some(4 * MIB));
    let mut r2 = rig_with(Geometry::default(), true, true, &initial);
    r2.mem.inner().punch_hole(MIB, 3 * MIB).unwrap();
    assert_eq!(r2.file.seek(0, Whence::Hole).unwrap(), Some(MIB));
    assert_eq!(r2.file.seek(MIB, Whence::Data).unwrap(), None);
    assert!(r2.file.exact());
}

#[test]
fn eio_during_flush_reaches_the_caller_and_nothing_is_lost() {
    let mut r = rig_with(geo(4096, 16384), true, true, &[]);
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 + 1).collect();
    r.mem.arm(1, Fault::Errno(libc::EIO), false);
    let mut res = Ok(());
    for (i, c) in data.chunks(8192).enumerate() {
        res = res.and(r.file.write(i as u64 * 8192, c));
    }
    let flushed = r.file.flush(Depth::Sync, Trigger::Fsync);
    assert!(
        res.is_err() || flushed.is_err(),
        "an EIO must surface on write or fsync"
    );
    let e = res.err().or(flushed.err()).unwrap();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert_eq!(
        r.file.read(0, data.len()).unwrap(),
        data,
        "reads still see every byte"
    );
    r.file.flush(Depth::Sync, Trigger::Fsync).unwrap();
    assert_eq!(r.mem.inner().contents(), data, "a retry writes everything");
}

#[test]
fn short_write_then_enospc_keeps_index_consistent() {
    let mut r = rig_with(geo(4096, 16384), true, true, &[]);
    let data = vec![7u8; 32768];
    r.mem.arm(0, Fault::ShortThen(libc::ENOSPC), false);
    r.file.write(0, &data).unwrap_err();
    assert_eq!(r.file.read(0, data.len()).unwrap(), data);
    r.file.flush(Depth::Full, Trigger::Close).unwrap();
    assert_eq!(r.mem.inner().contents(), data);
}

#[test]
fn background_flush_error_is_returned_by_the_next_fsync() {
    let mut r = rig_with(geo(4096, 16384), true, true, &[]);
    r.file.write(0, &[1u8; 100]).unwrap();
    r.mem.arm(0, Fault::Errno(libc::EIO), false);
    r.file
        .flush_background(Trigger::Age, std::time::Duration::ZERO);
    let e = r.file.flush(Depth::Sync, Trigger::Fsync).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    r.file.flush(Depth::Sync, Trigger::Fsync).unwrap();
    assert_eq!(r.mem.inner().contents(), vec![1u8; 100]);
}

/// Issue 18: a window write that fails in flight (the application's write already
/// answered) is reported once, by the file's next write or flush, and its blocks are
/// back in the buffer: the flush after the error writes them, nothing is lost.
#[test]
fn a_window_write_that_fails_in_flight_is_reported_once_and_its_data_is_kept() {
    for fault in [Fault::Errno(libc::ENOSPC), Fault::ShortThen(libc::ENOSPC)] {
        let mut g = geo(4096, 16384);
        g.flush_depth = 3;
        let mut r = rig_with(g, true, true, &[]);
        r.mem.arm(1, fault, false);
        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut reported = 0;
        for (i, c) in data.chunks(4096).enumerate() {
            if let Err(e) = r.file.write(i as u64 * 4096, c) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
                reported += 1;
                // The application's write was refused: it writes again.
                r.file.write(i as u64 * 4096, c).unwrap();
            }
            assert!(r.file.in_flight() <= 3);
            assert_eq!(r.file.read(0, data.len()).unwrap(), data[..(i + 1) * 4096]);
        }
        if let Err(e) = r.file.flush(Depth::Sync, Trigger::Fsync) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
            reported += 1;
            r.file.flush(Depth::Sync, Trigger::Fsync).unwrap();
        }
        assert_eq!(reported, 1, "{fault:?}: reported once");
        assert_eq!(r.mem.inner().contents(), data, "{fault:?}");
        assert_eq!(
            r.stats.dirty_bytes.load(Relaxed),
            0,
            "{fault:?}: dirty gauge back to 0"
        );
    }
}

/// Issue 18: with a flush depth, a stream's windows leave while it goes on writing (the
/// write returns before the backend write ends), the budget stays one write per window,
/// and a read during the flights sees every byte.
#[test]
fn a_stream_keeps_several_window_writes_in_flight_within_its_depth() {
    let g = Geometry {
        flush_depth: 4,
        ..Geometry::default()
    };
    let mut r = rig_with(g, true, true, &[]);
    let mb: Vec<u8> = (0..MIB as u32).map(|i| (i % 253) as u8 + 1).collect();
    let mut most = 0;
    for i in 0..64 {
        r.file.write(i * MIB, &mb).unwrap();
        most = most.max(r.file.in_flight());
        assert!(r.file.in_flight() <= 4);
    }
    assert_eq!(&r.file.read(5 * MIB, MIB as usize).unwrap(), &mb);
    r.file.flush(Depth::Full, Trigger::Close).unwrap();
    assert_eq!(r.file.in_flight(), 0);
    assert!(most >= 1, "windows were launched");
    assert_eq!(r.stats.calls(Op::Write), 16, "one write per 4 MiB window");
    assert_eq!(r.stats.flights.load(Relaxed), 16);
    assert_eq!(r.stats.flights_in_flight.load(Relaxed), 0);
    assert_eq!(r.stats.dirty_bytes.load(Relaxed), 0);
    assert_eq!(r.mem.inner().size().unwrap(), 64 * MIB);
}

#[derive(Clone, Debug)]
enum Action {
    Write { off: u64, len: u64, byte: u8 },
    Truncate(u64),
    Punch { off: u64, len: u64 },
    Flush(u8),
    Seek(u64),
}

fn action() -> impl Strategy<Value = Action> {
    let off = 0u64..40_000;
    prop_oneof![
        6 => (off.clone(), 1u64..12_000, prop_oneof![Just(0u8), 1u8..=255]).prop_map(|(off, len, byte)| Action::Write { off, len, byte }),
        1 => (0u64..45_000).prop_map(Action::Truncate),
        1 => (off.clone(), 1u64..10_000).prop_map(|(off, len)| Action::Punch { off, len }),
        2 => (0u8..3).prop_map(Action::Flush),
        1 => off.prop_map(Action::Seek),
    ]
}

fn check_seek_against_model(f: &mut SparseFile, model: &[u8]) -> Result<(), TestCaseError> {
    let size = model.len() as u64;
    // Walk the data/hole map through seek and check: holes read as zeros in the model,
    // and every non-zero model byte lies in data.
    let mut pos = 0;
    while pos < size {
        let d = f.seek(pos, Whence::Data).unwrap();
        let hole_end = d.unwrap_or(size);
        prop_assert!(
            model[pos as usize..hole_end as usize]
                .iter()
                .all(|&b| b == 0),
            "hole [{pos},{hole_end}) holds data"
        );
        let Some(d) = d else { break };
        let h = f.seek(d, Whence::Hole).unwrap().unwrap();
        prop_assert!(h > d && h <= size);
        pos = h;
    }
    prop_assert_eq!(f.seek(size, Whence::Data).unwrap(), None);
    Ok(())
}

/// Applies `actions` to `file` and to a byte-vector model starting as `initial`,
/// checking contents, size, seek answers and (after full flushes) what `contents` says
/// the backend holds.
fn run_actions(
    file: &mut SparseFile,
    initial: &[u8],
    actions: Vec<Action>,
    contents: &dyn Fn() -> Vec<u8>,
) -> Result<(), TestCaseError> {
    run_actions_retrying(file, initial, actions, contents, false)
}

/// [`run_actions`]; with `retry`, a call that fails (a fault armed once) is made again
/// (a refused write is written again by the application), and must then succeed.
fn run_actions_retrying(
    file: &mut SparseFile,
    initial: &[u8],
    actions: Vec<Action>,
    contents: &dyn Fn() -> Vec<u8>,
    retry: bool,
) -> Result<(), TestCaseError> {
    fn again<T>(
        retry: bool,
        f: &mut SparseFile,
        mut op: impl FnMut(&mut SparseFile) -> io::Result<T>,
    ) -> T {
        match op(f) {
            Ok(v) => v,
            Err(e) if retry => op(f).unwrap_or_else(|e2| panic!("failed twice: {e}, then {e2}")),
            Err(e) => panic!("{e}"),
        }
    }
    let mut model = initial.to_vec();
    for a in actions {
        match a {
            Action::Write { off, len, byte } => {
                let buf = vec![byte; len as usize];
                again(retry, file, |f| f.write(off, &buf));
                let end = (off + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].fill(byte);
            }
            Action::Truncate(n) => {
                again(retry, file, |f| f.truncate(n));
                model.resize(n as usize, 0);
            }
            Action::Punch { off, len } => {
                again(retry, file, |f| f.make_zero(off, len, true));
                let end = ((off + len) as usize).min(model.len());
                if (off as usize) < end {
                    model[off as usize..end].fill(0);
                }
            }
            Action::Flush(d) => {
                let depth = [Depth::Data, Depth::Full, Depth::Sync][d as usize];
                again(retry, file, |f| f.flush(depth, Trigger::Fsync));
                if depth != Depth::Data && (!retry || !file.is_dirty()) {
                    prop_assert_eq!(&contents(), &model, "backend after full flush");
                }
            }
            Action::Seek(off) => {
                let d = again(retry, file, |f| f.seek(off, Whence::Data));
                if let Some(d) = d {
                    prop_assert!(model[off as usize..d as usize].iter().all(|&b| b == 0));
                } else if (off as usize) < model.len() {
                    prop_assert!(model[off as usize..].iter().all(|&b| b == 0));
                }
            }
        }
        prop_assert_eq!(file.size(), model.len() as u64);
        prop_assert_eq!(&file.read(0, model.len() + 10).unwrap(), &model);
    }
    check_seek_against_model(file, &model)?;
    again(retry, file, |f| f.flush(Depth::Full, Trigger::Close));
    if file.is_dirty() {
        // A flush(Data) settled a failed flight after the last action: its error was
        // reported by this flush, the next one writes the blocks.
        file.flush(Depth::Full, Trigger::Close).unwrap();
    }
    prop_assert_eq!(&contents(), &model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300), ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_a_byte_vector_model(
        actions in prop::collection::vec(action(), 1..40),
        block_shift in 9u32..14,
        punch in any::<bool>(),
        seek in any::<bool>(),
        initial_len in prop_oneof![Just(0usize), 1usize..30_000],
        flush_depth in 1usize..4,
        read_depth in 0usize..3,
    ) {
        let block = 1u64 << block_shift;
        let g = Geometry { block, write_size: block * 4, max_dirty_file: block * 16, flush_depth, read_depth, read_chunk: block * 2 };
        let initial: Vec<u8> = (0..initial_len).map(|i| (i % 7) as u8).collect();
        let mut r = rig_with(g, punch, seek, &initial);
        let mem = r.mem.clone();
        run_actions(&mut r.file, &initial, actions, &|| mem.inner().contents())?;
    }

    /// Issue 18: the model with one backend call failing (an errno, or a write cut short
    /// then failing) somewhere, window writes in flight or not: the failure is reported,
    /// the call made again succeeds, and no byte is lost or changed.
    #[test]
    fn engine_with_a_failing_backend_call_matches_the_model(
        actions in prop::collection::vec(action(), 1..40),
        block_shift in 9u32..14,
        punch in any::<bool>(),
        initial_len in prop_oneof![Just(0usize), 1usize..30_000],
        flush_depth in 1usize..4,
        countdown in 0u64..12,
        short in any::<bool>(),
    ) {
        let block = 1u64 << block_shift;
        let g = Geometry { block, write_size: block * 4, max_dirty_file: block * 16, flush_depth, ..Geometry::default() };
        let initial: Vec<u8> = (0..initial_len).map(|i| (i % 7) as u8).collect();
        let mut r = rig_with(g, punch, false, &initial);
        let fault = if short { Fault::ShortThen(libc::EIO) } else { Fault::Errno(libc::ENOSPC) };
        r.mem.arm(countdown, fault, false);
        let mem = r.mem.clone();
        run_actions_retrying(&mut r.file, &initial, actions, &|| mem.inner().contents(), true)?;
    }

    /// The same model over a real file whose syscalls are interrupted (EINTR) and cut
    /// short every few calls: the fd backend's retry loops hide both.
    #[test]
    fn engine_over_a_real_file_with_eintr_and_short_io_matches_the_model(
        actions in prop::collection::vec(action(), 1..40),
        block_shift in 9u32..14,
        eintr_every in 2u64..5,
        short_every in prop_oneof![Just(3u64), Just(5), Just(7)],
        initial_len in prop_oneof![Just(0usize), 1usize..30_000],
        flush_depth in 1usize..4,
    ) {
        use crate::backend::fd::{Chaos, FdFile};
        let block = 1u64 << block_shift;
        let g = Geometry { block, write_size: block * 4, max_dirty_file: block * 16, flush_depth, ..Geometry::default() };
        let initial: Vec<u8> = (0..initial_len).map(|i| (i % 7) as u8).collect();
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &initial).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(tmp.path()).unwrap();
        let stats = Arc::new(Stats::default());
        let chaos = Arc::new(Chaos::new(eintr_every, short_every));
        let be = FdFile::with_chaos(f, chaos.clone());
        let backend = Box::new(Counting::new(be, stats.clone()));
        let mut file = SparseFile::open(backend, g, Caps { punch: true, seek: false, direct: false }, stats).unwrap();
        let path = tmp.path().to_path_buf();
        run_actions(&mut file, &initial, actions, &|| std::fs::read(&path).unwrap())?;
        if chaos.calls() >= eintr_every.max(short_every) * 2 {
            prop_assert!(chaos.eintrs.load(Relaxed) > 0);
        }
    }

    #[test]
    fn no_all_zero_block_is_ever_written_over_an_exact_map(
        writes in prop::collection::vec((0u64..64, 1u64..8, any::<bool>()), 1..30),
    ) {
        // Block-aligned writes of whole blocks, zero or not, to a new file.
        let block = 4096u64;
        type Log = Arc<parking_lot::Mutex<Vec<(u64, Vec<u8>)>>>;
        let rec: Log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        struct Rec(Log, MemFile);
        impl BackendFile for Rec {
            fn read_at(&self, b: &mut [u8], o: u64) -> io::Result<usize> { self.1.read_at(b, o) }
            fn write_all_at(&self, b: &[IoSlice<'_>], o: u64) -> io::Result<()> {
                self.0.lock().push((o, b.iter().flat_map(|s| s.iter().copied()).collect()));
                self.1.write_all_at(b, o)
            }
            fn punch_hole(&self, o: u64, l: u64) -> io::Result<()> { self.1.punch_hole(o, l) }
            fn allocate(&self, m: i32, o: u64, l: u64) -> io::Result<()> { self.1.allocate(m, o, l) }
            fn set_len(&self, l: u64) -> io::Result<()> { self.1.set_len(l) }
            fn sync(&self, d: bool) -> io::Result<()> { self.1.sync(d) }
            fn size(&self) -> io::Result<u64> { self.1.size() }
            fn seek(&self, o: u64, w: Whence) -> io::Result<Option<u64>> { self.1.seek(o, w) }
        }
        let stats = Arc::new(Stats::default());
        let mut f = SparseFile::open(Box::new(Rec(rec.clone(), MemFile::new())), geo(block, 4 * block), Caps { punch: true, seek: true, direct: false }, stats).unwrap();
        for (blk, n, zero) in writes {
            let buf = vec![if zero { 0 } else { 0x11 }; (n * block) as usize];
            f.write(blk * block, &buf).unwrap();
        }
        f.flush(Depth::Full, Trigger::Close).unwrap();
        for (off, bytes) in rec.lock().iter() {
            prop_assert_eq!(off % block, 0);
            for c in bytes.chunks(block as usize) {
                prop_assert!(!crate::zero::is_zero(c), "an all-zero block reached the backend at {off}");
            }
        }
    }
}

/// Issue 18 item 3: an in-order reader of a sparse file (holes skipped, as cp
/// --sparse=auto reads) gets its data from chunks read ahead on reader threads; no hole is
/// read from the backend, no byte twice, and every byte is right.
#[test]
fn an_in_order_reader_is_served_from_chunks_read_ahead_and_no_hole_is_read() {
    let g = Geometry {
        read_depth: 4,
        read_chunk: 64 << 10,
        ..geo(4096, 64 << 10)
    };
    // 4 MiB: 16 KiB of data at every 256 KiB (unaligned), the rest holes.
    let mut initial = vec![0u8; 4 << 20];
    let mut data = 0u64;
    for i in 0..16usize {
        let at = i * (256 << 10) + 1000;
        for (j, b) in initial[at..at + (16 << 10)].iter_mut().enumerate() {
            *b = ((i * 31 + j) % 251) as u8 + 1;
        }
        data += 16 << 10;
    }
    let mut r = rig_with(g, true, true, &[]);
    for i in 0..16usize {
        let at = i * (256 << 10) + 1000;
        let run = IoSlice::new(&initial[at..at + (16 << 10)]);
        r.mem.inner().write_all_at(&[run], at as u64).unwrap();
    }
    r.mem.inner().set_len(4 << 20).unwrap();
    r.file.reset_from_backend().unwrap();
    r.file.learn().unwrap();
    let before = r.stats.bytes(Op::Read);
    // Reads of 8 KiB in order, each data run from its start (SEEK_DATA) to its end.
    let mut got = vec![0u8; initial.len()];
    let mut off = 0u64;
    while let Some(s) = r.file.seek(off, Whence::Data).unwrap() {
        let e = r.file.seek(s, Whence::Hole).unwrap().unwrap();
        let mut at = s;
        while at < e {
            let n = (e - at).min(8192) as usize;
            let b = r.file.read(at, n).unwrap();
            got[at as usize..at as usize + b.len()].copy_from_slice(&b);
            at += b.len() as u64;
        }
        off = e;
    }
    assert!(got == initial, "contents differ");
    r.file.prefetch().stop();
    let read = r.stats.bytes(Op::Read) - before;
    let hits = r.stats.prefetch_hit_bytes.load(Relaxed);
    assert!(
        r.stats.prefetches.load(Relaxed) >= 8,
        "{:?}",
        r.stats.prefetches
    );
    assert!(hits >= data / 2, "served {hits} of {data}");
    // Whole sparse blocks around each run at most, never a hole's blocks twice.
    assert!(
        read <= 16 * (16 << 10) + 16 * 2 * 4096 + (64 << 10),
        "read {read}"
    );
    assert_eq!(r.stats.prefetch_bytes.load(Relaxed), 0);
}

/// A chunk read ahead is never served over a change made since: a write flushed over
/// it, a punch, a truncate, or a reset (the file changed outside the mount).
#[test]
fn a_chunk_read_ahead_is_dropped_by_every_change_of_its_range() {
    let g = Geometry {
        read_depth: 4,
        read_chunk: 64 << 10,
        ..geo(4096, 64 << 10)
    };
    let initial: Vec<u8> = (0..(1 << 20)).map(|i| (i % 249) as u8 + 1).collect();
    let mut r = rig_with(g, true, true, &initial);
    let mut model = initial.clone();
    // Reads 0..64K in order (chunks 1.. are read ahead), then one byte of chunk `k`
    // (waiting for it): the chunk is there, ready.
    let prime = |f: &mut SparseFile, stats: &Stats, k: u64| {
        for i in 0..8u64 {
            f.read(i * 8192, 8192).unwrap();
        }
        let hits = stats.prefetch_hit_bytes.load(Relaxed);
        f.read(k * (64 << 10), 1).unwrap();
        assert_eq!(
            stats.prefetch_hit_bytes.load(Relaxed),
            hits + 1,
            "chunk {k} read ahead"
        );
    };
    // A write flushed over a chunk read ahead.
    prime(&mut r.file, &r.stats, 1);
    r.file.buffer(70_000, &[0xAB; 3000]).unwrap();
    model[70_000..73_000].fill(0xAB);
    r.file.flush(Depth::Full, Trigger::Sync).unwrap();
    assert!(
        r.file.read(65_536, 65_536).unwrap() == model[65_536..131_072],
        "contents differ"
    );
    // Zeros over a chunk (punched).
    prime(&mut r.file, &r.stats, 2);
    r.file.make_zero(131_072, 65_536, true).unwrap();
    r.file.flush(Depth::Full, Trigger::Sync).unwrap();
    model[131_072..196_608].fill(0);
    assert!(
        r.file.read(131_072, 70_000).unwrap() == model[131_072..201_072],
        "contents differ"
    );
    // A change made outside the engine, then a reset.
    prime(&mut r.file, &r.stats, 3);
    let outside = vec![0x5Au8; 65_536];
    r.mem
        .inner()
        .write_all_at(&[IoSlice::new(&outside)], 196_608)
        .unwrap();
    model[196_608..262_144].fill(0x5A);
    r.file.reset_from_backend().unwrap();
    assert!(
        r.file.read(196_608, 65_536).unwrap() == model[196_608..262_144],
        "contents differ"
    );
    // A truncate below a chunk.
    prime(&mut r.file, &r.stats, 2);
    r.file.truncate(100_000).unwrap();
    r.file.flush(Depth::Full, Trigger::Sync).unwrap();
    r.file.truncate(1 << 20).unwrap();
    r.file.flush(Depth::Full, Trigger::Sync).unwrap();
    model[100_000..].fill(0);
    assert!(r.file.read(0, 1 << 20).unwrap() == model, "contents differ");
    r.file.prefetch().stop();
    assert_eq!(r.stats.prefetch_bytes.load(Relaxed), 0);
}

/// More chunks wanted than reader threads free: those not taken are not read ahead (the
/// reader reads them itself), nothing waits for them, and nothing stays counted.
#[test]
fn read_ahead_deeper_than_the_reader_threads_never_waits_for_a_chunk_not_started() {
    let g = Geometry {
        read_depth: 64,
        read_chunk: 4096,
        ..geo(4096, 64 << 10)
    };
    let initial: Vec<u8> = (0..(2 << 20)).map(|i| (i % 241) as u8 + 1).collect();
    let r = rig_with(g, true, true, &initial);
    let mut at = 0u64;
    while at < initial.len() as u64 {
        let b = r.file.read(at, 4096).unwrap();
        assert_eq!(&b[..], &initial[at as usize..at as usize + 4096]);
        at += 4096;
    }
    r.file.prefetch().stop();
    assert_eq!(r.stats.prefetch_bytes.load(Relaxed), 0);
}
