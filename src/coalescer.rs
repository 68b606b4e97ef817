//! Pure write coalescing: application writes land in sparse-block-sized buffers; a flush
//! turns the buffers into a plan of few, large, aligned backend writes plus the zero
//! ranges that become holes. No I/O here.
//!
//! ```text
//!  app writes   |--w1--|  |---w2---|---w3---|  (zeros)  |-w4-|
//!  blocks       [  B0  ][  B1  ][  B2  ][  B3  ][  B4  ][  B5  ]   block = sparse block
//!  classes       data    data    data    zero    zero   partial
//!  plan         write(B0..B2) one pwritev  | B3,B4 -> hole | write(valid bytes of B5)
//!               runs never cross a write-size boundary
//! ```
//! A block is *complete* when every byte of it below EOF is either written or known to be
//! a hole; only complete blocks are tested for zeros. An incomplete block (some bytes
//! still hold unknown backend data) is written as its written bytes only: no
//! read-modify-write.
#![forbid(unsafe_code)]

use crate::extents::RangeSet;
use crate::zero::is_zero;
use std::collections::BTreeMap;

/// One buffered block. Bytes outside `valid` are zero in `buf`.
#[derive(Clone, Debug)]
pub struct DirtyBlock {
    /// The block's bytes (`block` long).
    pub buf: Box<[u8]>,
    /// Written byte ranges, as offsets inside the block.
    pub valid: RangeSet,
}

/// The dirty blocks of one file, keyed by block number.
#[derive(Debug)]
pub struct Coalescer {
    block: u64,
    blocks: BTreeMap<u64, DirtyBlock>,
}

impl Coalescer {
    /// Buffers of `block` bytes (a power of two).
    pub fn new(block: u64) -> Self {
        Self {
            block,
            blocks: BTreeMap::new(),
        }
    }

    /// The sparse block size.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// Bytes of buffer held.
    pub fn buffered(&self) -> u64 {
        self.blocks.len() as u64 * self.block
    }

    /// True if nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Copies `data` in at file offset `off`; returns the buffer bytes newly allocated.
    pub fn write(&mut self, off: u64, data: &[u8]) -> u64 {
        let bs = self.block;
        let mut added = 0;
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = off + pos as u64;
            let blk = abs / bs;
            let in_off = (abs % bs) as usize;
            let n = (bs as usize - in_off).min(data.len() - pos);
            let b = self.blocks.entry(blk).or_insert_with(|| {
                added += bs;
                DirtyBlock {
                    buf: vec![0u8; bs as usize].into_boxed_slice(),
                    valid: RangeSet::new(),
                }
            });
            b.buf[in_off..in_off + n].copy_from_slice(&data[pos..pos + n]);
            b.valid.insert(in_off as u64, (in_off + n) as u64);
            pos += n;
        }
        added
    }

    /// The block numbered `blk`, if buffered.
    pub fn get(&self, blk: u64) -> Option<&DirtyBlock> {
        self.blocks.get(&blk)
    }

    /// A copy of every block, ascending.
    pub fn cloned(&self) -> Vec<(u64, DirtyBlock)> {
        self.blocks.iter().map(|(&k, b)| (k, b.clone())).collect()
    }

    /// Copies the buffered bytes that fall in `[off, off+buf.len())` over `buf`.
    pub fn overlay(&self, off: u64, buf: &mut [u8]) {
        let bs = self.block;
        let end = off + buf.len() as u64;
        for (&blk, b) in self.blocks.range(off / bs..end.div_ceil(bs)) {
            let base = blk * bs;
            for (s, e) in b.valid.overlapping(off.saturating_sub(base), end - base) {
                let (a, z) = ((base + s - off) as usize, (base + e - off) as usize);
                buf[a..z].copy_from_slice(&b.buf[s as usize..e as usize]);
            }
        }
    }

    /// True if every byte of `[start, end)` is buffered.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        let bs = self.block;
        let mut pos = start;
        while pos < end {
            let blk = pos / bs;
            let base = blk * bs;
            let stop = end.min(base + bs);
            match self.blocks.get(&blk) {
                Some(b) if b.valid.covers(pos - base, stop - base) => pos = stop,
                _ => return false,
            }
        }
        true
    }

    /// The file ranges of the buffered blocks' written bytes, ascending, merged.
    pub fn written(&self) -> RangeSet {
        let mut r = RangeSet::new();
        for (&blk, b) in &self.blocks {
            for (s, e) in b.valid.iter() {
                r.insert(blk * self.block + s, blk * self.block + e);
            }
        }
        r
    }

    /// Forgets bytes at or after `size`; returns buffer bytes freed.
    pub fn truncate(&mut self, size: u64) -> u64 {
        let bs = self.block;
        let first_gone = size.div_ceil(bs);
        let gone = self.blocks.split_off(&first_gone);
        if !size.is_multiple_of(bs)
            && let Some(b) = self.blocks.get_mut(&(size / bs))
        {
            let cut = (size % bs) as usize;
            b.buf[cut..].fill(0);
            b.valid.truncate(cut as u64);
        }
        gone.len() as u64 * bs
    }

    /// Removes and returns the blocks numbered `first..last`.
    pub fn take(&mut self, first: u64, last: u64) -> Vec<(u64, DirtyBlock)> {
        let keys: Vec<u64> = self.blocks.range(first..last).map(|(&k, _)| k).collect();
        keys.into_iter()
            .map(|k| (k, self.blocks.remove(&k).expect("key listed")))
            .collect()
    }

    /// Removes and returns the complete blocks numbered `first..last`.
    pub fn take_complete_in(
        &mut self,
        first: u64,
        last: u64,
        size: u64,
        index: &RangeSet,
    ) -> Vec<(u64, DirtyBlock)> {
        let keys: Vec<u64> = self
            .blocks
            .range(first..last)
            .filter(|(k, b)| is_complete(**k, b, self.block, size, index))
            .map(|(&k, _)| k)
            .collect();
        keys.into_iter()
            .map(|k| (k, self.blocks.remove(&k).expect("key listed")))
            .collect()
    }

    /// Puts blocks back (after a failed flush), merging with any written since.
    pub fn restore(&mut self, blocks: Vec<(u64, DirtyBlock)>) -> u64 {
        let mut added = 0;
        for (blk, old) in blocks {
            match self.blocks.get_mut(&blk) {
                None => {
                    added += self.block;
                    self.blocks.insert(blk, old);
                }
                Some(newer) => {
                    // Newer writes win: copy old bytes only where the newer block has none.
                    for (s, e) in old.valid.iter() {
                        for (gs, ge) in newer.valid.gaps(s, e) {
                            newer.buf[gs as usize..ge as usize]
                                .copy_from_slice(&old.buf[gs as usize..ge as usize]);
                        }
                    }
                    for (s, e) in old.valid.iter() {
                        newer.valid.insert(s, e);
                    }
                }
            }
        }
        added
    }

    /// Block numbers of the write-size windows in `windows` whose every block is
    /// buffered and complete, and which lie wholly below `size`.
    pub fn complete_windows(
        &self,
        windows: std::ops::RangeInclusive<u64>,
        write_size: u64,
        size: u64,
        index: &RangeSet,
    ) -> Vec<u64> {
        let per = write_size / self.block;
        windows
            .filter(|&w| (w + 1) * write_size <= size)
            .filter(|&w| {
                (w * per..(w + 1) * per).all(|blk| {
                    self.blocks
                        .get(&blk)
                        .is_some_and(|b| is_complete(blk, b, self.block, size, index))
                })
            })
            .collect()
    }
}

/// True if every byte of block `blk` below `size` is written or a known hole in `index`.
pub fn is_complete(blk: u64, b: &DirtyBlock, bs: u64, size: u64, index: &RangeSet) -> bool {
    let base = blk * bs;
    let end = size.min(base + bs);
    if end <= base {
        return true;
    }
    b.valid
        .gaps(0, end - base)
        .iter()
        .all(|&(s, e)| !index.intersects(base + s, base + e))
}

/// A piece of a backend write: bytes `start..start+len` of taken block `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Index into the taken blocks.
    pub slot: usize,
    /// Offset inside the block.
    pub start: usize,
    /// Length.
    pub len: usize,
}

/// One backend write of contiguous bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// File offset.
    pub off: u64,
    /// The bytes, in order.
    pub pieces: Vec<Piece>,
}

impl Run {
    /// Bytes written by this run.
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(|p| p.len as u64).sum()
    }

    /// True if the run writes nothing.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }
}

/// What a flush of some blocks must do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Backend writes, ascending, each at most a write size long: an extent that fits
    /// is one write; longer extents are cut at write-size window boundaries.
    pub writes: Vec<Run>,
    /// File ranges of all-zero complete blocks: they read as zeros from now on; where
    /// the index had data under them, the backend must punch (or write zeros).
    pub zeros: RangeSet,
    /// Bytes of written-but-zero blocks that need no backend write.
    pub zero_bytes: u64,
}

/// Plans the flush of `taken` blocks (ascending) of a file of logical `size` whose data
/// map is `index`. Pure.
pub fn plan(
    taken: &[(u64, DirtyBlock)],
    bs: u64,
    write_size: u64,
    size: u64,
    index: &RangeSet,
) -> Plan {
    let mut p = Plan::default();
    let mut pieces: Vec<(u64, Piece)> = Vec::new();
    for (slot, (blk, b)) in taken.iter().enumerate() {
        let base = blk * bs;
        if base >= size {
            continue;
        }
        let end = size.min(base + bs);
        let n = (end - base) as usize;
        if is_complete(*blk, b, bs, size, index) {
            if is_zero(&b.buf[..n]) {
                p.zeros.insert(base, end);
                p.zero_bytes += b
                    .valid
                    .overlapping(0, n as u64)
                    .map(|(s, e)| e - s)
                    .sum::<u64>();
            } else {
                pieces.push((
                    base,
                    Piece {
                        slot,
                        start: 0,
                        len: n,
                    },
                ));
            }
        } else {
            for (s, e) in b.valid.overlapping(0, n as u64) {
                pieces.push((
                    base + s,
                    Piece {
                        slot,
                        start: s as usize,
                        len: (e - s) as usize,
                    },
                ));
            }
        }
    }
    // Contiguous pieces form extents. An extent of at most `write_size` bytes is one
    // backend write wherever it lies (rsync -S extents straddle window boundaries);
    // longer ones are cut at window boundaries, so the backend sees aligned full-size
    // writes (full GPFS blocks, Lustre stripes).
    let mut i = 0;
    while i < pieces.len() {
        let mut j = i + 1;
        let mut end = pieces[i].0 + pieces[i].1.len as u64;
        while j < pieces.len() && pieces[j].0 == end {
            end += pieces[j].1.len as u64;
            j += 1;
        }
        let start = pieces[i].0;
        if end - start <= write_size {
            p.writes.push(Run {
                off: start,
                pieces: pieces[i..j].iter().map(|&(_, pc)| pc).collect(),
            });
        } else {
            for &(mut abs, mut piece) in &pieces[i..j] {
                while piece.len > 0 {
                    let boundary = (abs / write_size + 1) * write_size;
                    let take = piece.len.min((boundary - abs) as usize);
                    let part = Piece {
                        slot: piece.slot,
                        start: piece.start,
                        len: take,
                    };
                    match p.writes.last_mut() {
                        Some(r) if r.off + r.len() == abs && abs % write_size != 0 => {
                            r.pieces.push(part)
                        }
                        _ => p.writes.push(Run {
                            off: abs,
                            pieces: vec![part],
                        }),
                    }
                    abs += take as u64;
                    piece.start += take;
                    piece.len -= take;
                }
            }
        }
        i = j;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(bs: u64, writes: &[(u64, Vec<u8>)]) -> Coalescer {
        let mut c = Coalescer::new(bs);
        for (off, d) in writes {
            c.write(*off, d);
        }
        c
    }

    #[test]
    fn sequential_data_becomes_one_run_per_write_size_window() {
        let mut c = blocks(4, &[(0, vec![1; 40])]);
        let taken = c.take(0, u64::MAX);
        let p = plan(&taken, 4, 16, 40, &RangeSet::new());
        let runs: Vec<(u64, u64)> = p.writes.iter().map(|r| (r.off, r.len())).collect();
        assert_eq!(runs, vec![(0, 16), (16, 16), (32, 8)]);
        assert!(p.zeros.is_empty());
    }

    #[test]
    fn zero_blocks_become_holes_and_split_runs() {
        let mut d = vec![1u8; 24];
        d[8..16].fill(0);
        let mut c = blocks(4, &[(0, d)]);
        let taken = c.take(0, u64::MAX);
        let p = plan(&taken, 4, 64, 24, &RangeSet::new());
        let runs: Vec<(u64, u64)> = p.writes.iter().map(|r| (r.off, r.len())).collect();
        assert_eq!(runs, vec![(0, 8), (16, 8)]);
        assert_eq!(p.zeros.iter().collect::<Vec<_>>(), vec![(8, 16)]);
        assert_eq!(p.zero_bytes, 8);
    }

    #[test]
    fn an_extent_that_fits_a_write_size_is_one_write_wherever_it_lies() {
        // Block 4, write size 16: an extent of 12 bytes straddling the boundary at 16
        // is one write; one of 40 bytes from 8 is cut at 16 and 32 (aligned writes).
        let mut c = blocks(4, &[(12, vec![7; 12]), (60, vec![9; 40])]);
        let taken = c.take(0, u64::MAX);
        let p = plan(&taken, 4, 16, 100, &RangeSet::new());
        let runs: Vec<(u64, u64)> = p.writes.iter().map(|r| (r.off, r.len())).collect();
        assert_eq!(runs, vec![(12, 12), (60, 4), (64, 16), (80, 16), (96, 4)]);
        // Exactly a write size, unaligned: still one write.
        let mut c = blocks(4, &[(8, vec![5; 16])]);
        let taken = c.take(0, u64::MAX);
        let p = plan(&taken, 4, 16, 100, &RangeSet::new());
        let runs: Vec<(u64, u64)> = p.writes.iter().map(|r| (r.off, r.len())).collect();
        assert_eq!(runs, vec![(8, 16)]);
    }

    #[test]
    fn partial_block_over_unknown_data_writes_only_written_bytes() {
        let mut c = blocks(8, &[(2, vec![0; 3])]);
        let mut index = RangeSet::new();
        index.insert(0, 100);
        let taken = c.take(0, u64::MAX);
        let p = plan(&taken, 8, 64, 100, &index);
        assert_eq!(
            p.writes,
            vec![Run {
                off: 2,
                pieces: vec![Piece {
                    slot: 0,
                    start: 2,
                    len: 3
                }]
            }]
        );
        assert!(
            p.zeros.is_empty(),
            "zeros over unknown neighbours are written, not holed"
        );
    }

    #[test]
    fn partial_block_over_known_hole_is_complete() {
        let mut c = blocks(8, &[(2, vec![0; 3])]);
        let taken = c.take(0, u64::MAX);
        let p = plan(&taken, 8, 64, 100, &RangeSet::new());
        assert!(p.writes.is_empty());
        assert_eq!(p.zeros.iter().collect::<Vec<_>>(), vec![(0, 8)]);
    }

    #[test]
    fn last_block_is_clipped_to_size() {
        let mut c = blocks(8, &[(0, vec![7; 5])]);
        let taken = c.take(0, u64::MAX);
        let p = plan(&taken, 8, 64, 5, &RangeSet::new());
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.writes[0].len(), 5);
    }

    #[test]
    fn every_write_offset_and_length_around_a_block_boundary_round_trips() {
        let bs = 8u64;
        for off in 0..2 * bs {
            for len in 1..3 * bs {
                let data: Vec<u8> = (0..len).map(|i| (i as u8) | 1).collect();
                let c = blocks(bs, &[(off, data.clone())]);
                let mut out = vec![0u8; (off + len + bs) as usize];
                c.overlay(0, &mut out);
                assert_eq!(&out[off as usize..(off + len) as usize], &data[..]);
                assert!(out[..off as usize].iter().all(|&b| b == 0));
                assert!(c.covers(off, off + len));
                assert!(!c.covers(off, off + len + 1));
            }
        }
    }

    #[test]
    fn truncate_zeroes_the_tail_of_the_boundary_block() {
        let mut c = blocks(8, &[(0, vec![9; 20])]);
        assert_eq!(c.truncate(5), 16);
        let mut out = vec![0u8; 8];
        c.overlay(0, &mut out);
        assert_eq!(out, vec![9, 9, 9, 9, 9, 0, 0, 0]);
    }

    #[test]
    fn complete_windows_need_every_block() {
        let c = blocks(4, &[(0, vec![1; 16]), (16, vec![1; 12])]);
        let idx = RangeSet::new();
        assert_eq!(c.complete_windows(0..=1, 16, 100, &idx), vec![0]);
        // window 1 misses its last block (28..32), which is a hole: still not buffered
        assert_eq!(c.complete_windows(1..=1, 16, 100, &idx), Vec::<u64>::new());
        // a window reaching past EOF is never flushed early
        assert_eq!(c.complete_windows(0..=0, 16, 10, &idx), Vec::<u64>::new());
    }

    #[test]
    fn restore_keeps_newer_bytes() {
        let mut c = blocks(8, &[(0, vec![1; 8])]);
        let taken = c.take(0, 1);
        c.write(2, &[5, 5]);
        c.restore(taken);
        let mut out = vec![0u8; 8];
        c.overlay(0, &mut out);
        assert_eq!(out, vec![1, 1, 5, 5, 1, 1, 1, 1]);
        assert!(c.covers(0, 8));
    }
}
