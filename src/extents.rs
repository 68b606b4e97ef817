//! Byte-granular sets of half-open ranges, and the per-file data/hole extent index.
//!
//! ```text
//!  offset 0                                                        size
//!  |--hole--|=====data=====|----hole----|==data==|-------hole------|
//!           a              b            c        d
//!  RangeSet {a: b, c: d}     (keys are starts, values are ends; merged, ascending)
//! ```
//! Everything not in the set is a hole (reads as zeros). Adjacent and overlapping
//! ranges always merge, so the representation of a given set is unique.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};

/// A set of disjoint, non-adjacent half-open ranges `[start, end)` over `u64`.
#[derive(Clone, Debug, Default)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
    /// Bytes covered (kept with every change: `st_blocks` of a file with 100k extents is
    /// read at every stat).
    total: u64,
    /// Changes so far (lets a caller cache what it derives from the set).
    generation: u64,
}

impl PartialEq for RangeSet {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl Eq for RangeSet {}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// True if the set holds no byte.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Total bytes covered.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn put(&mut self, s: u64, e: u64) {
        self.total += e - s;
        self.generation += 1;
        self.map.insert(s, e);
    }

    fn take(&mut self, s: u64) {
        if let Some(e) = self.map.remove(&s) {
            self.total -= e - s;
            self.generation += 1;
        }
    }

    /// Changes made so far (it may also move without a change): the same generation of one
    /// set means the same contents.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of the whole `block`-sized blocks that hold any byte of the set: a block
    /// with one byte of data counts whole, as SEEK_DATA/SEEK_HOLE and `st_blocks` see it.
    /// Linear in the ranges.
    pub fn block_total(&self, block: u64) -> u64 {
        let mut total = 0;
        let mut end = 0u64;
        for (s, e) in self.iter() {
            let (a, b) = ((s / block * block).max(end), e.div_ceil(block) * block);
            if b > a {
                total += b - a;
            }
            end = end.max(b);
        }
        total
    }

    /// Adds `[start, end)`, merging with neighbours.
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // A range starting at or before `start` that reaches it merges in.
        if let Some((&s, &e)) = self.map.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            self.take(s);
        }
        // Ranges starting inside [start, end] merge in.
        let inside: Vec<(u64, u64)> = self
            .map
            .range((Included(start), Included(end)))
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in inside {
            end = end.max(e);
            self.take(s);
        }
        self.put(start, end);
    }

    /// Removes `[start, end)`, splitting ranges that straddle its ends.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.map.range(..start).next_back()
            && e > start
        {
            self.take(s);
            self.put(s, start);
            if e > end {
                self.put(end, e);
                return;
            }
        }
        let inside: Vec<(u64, u64)> = self
            .map
            .range((Included(start), Excluded(end)))
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in inside {
            self.take(s);
            if e > end {
                self.put(end, e);
            }
        }
    }

    /// Removes everything at or after `end`.
    pub fn truncate(&mut self, end: u64) {
        self.remove(end, u64::MAX);
    }

    /// True if `x` is in the set.
    pub fn contains(&self, x: u64) -> bool {
        matches!(self.map.range(..=x).next_back(), Some((_, &e)) if e > x)
    }

    /// True if any byte of `[start, end)` is in the set.
    pub fn intersects(&self, start: u64, end: u64) -> bool {
        start < end && self.overlapping(start, end).next().is_some()
    }

    /// True if every byte of `[start, end)` is in the set.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        start >= end || matches!(self.map.range(..=start).next_back(), Some((_, &e)) if e >= end)
    }

    /// The first byte `>= x` that is in the set.
    pub fn next_in(&self, x: u64) -> Option<u64> {
        if self.contains(x) {
            return Some(x);
        }
        self.map
            .range((Excluded(x), Unbounded))
            .next()
            .map(|(&s, _)| s)
    }

    /// The first byte `>= x` that is not in the set.
    pub fn next_out(&self, x: u64) -> u64 {
        match self.map.range(..=x).next_back() {
            Some((_, &e)) if e > x => e,
            _ => x,
        }
    }

    /// The parts of the set inside `[start, end)`, clipped, ascending.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = match self.map.range(..start).next_back() {
            Some((&s, &e)) if e > start => Some((s, e)),
            _ => None,
        };
        first
            .into_iter()
            .chain(
                self.map
                    .range((Included(start), Excluded(end.max(start))))
                    .map(|(&s, &e)| (s, e)),
            )
            .map(move |(s, e)| (s.max(start), e.min(end)))
            .filter(|(s, e)| s < e)
    }

    /// The gaps of the set inside `[start, end)`, ascending.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = start;
        for (s, e) in self.overlapping(start, end) {
            if s > pos {
                out.push((pos, s));
            }
            pos = e;
        }
        if pos < end {
            out.push((pos, end));
        }
        out
    }

    /// All ranges, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&s, &e)| (s, e))
    }
}

/// The data/hole map of one file: bytes in `data` may hold data on the backend (or are
/// about to); every other byte below the file size reads as zeros.
///
/// Invariant (never traded): a byte that may hold non-zero data is in `data`. When the
/// map of a file is not known, the whole backend size is `data` and `exact` is false.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentIndex {
    /// Ranges that may hold data.
    pub data: RangeSet,
    /// True when holes in the map are known holes (file created, truncated to zero or
    /// learned from a trustworthy backend); false when `data` is a conservative guess.
    pub exact: bool,
}

impl ExtentIndex {
    /// The map of an empty file, or of one whose layout is known to be all holes.
    pub fn empty() -> Self {
        Self {
            data: RangeSet::new(),
            exact: true,
        }
    }

    /// The conservative map of a file of `size` bytes whose layout is unknown.
    pub fn unknown(size: u64) -> Self {
        let mut data = RangeSet::new();
        data.insert(0, size);
        Self { data, exact: false }
    }
}

/// Linux `SEEK_DATA` over a data set: the first data byte at or after `off` below `size`,
/// or `None` (ENXIO) when there is none or `off >= size`.
pub fn seek_data(data: &RangeSet, off: u64, size: u64) -> Option<u64> {
    if off >= size {
        return None;
    }
    data.next_in(off).filter(|&x| x < size)
}

/// Linux `SEEK_HOLE`: the first hole byte at or after `off`, where end of file counts as
/// a hole; `None` (ENXIO) when `off >= size`.
pub fn seek_hole(data: &RangeSet, off: u64, size: u64) -> Option<u64> {
    if off >= size {
        return None;
    }
    Some(data.next_out(off).min(size))
}

/// Linux `SEEK_DATA` at `block` granularity: a block holding any byte of `data` is data
/// as a whole, so the answer is `off` itself (its block holds data), or the start of the
/// first such block after it; `None` (ENXIO) when none is below `size`.
pub fn seek_data_blocks(data: &RangeSet, off: u64, size: u64, block: u64) -> Option<u64> {
    if off >= size {
        return None;
    }
    let d = data.next_in(off / block * block)?;
    let r = (d / block * block).max(off);
    (r < size).then_some(r)
}

/// Linux `SEEK_HOLE` at `block` granularity: `off` itself when its block holds no byte of
/// `data`, else the end of the run of data blocks (a multiple of `block`), or `size`
/// (the virtual hole at EOF) if that comes first; `None` (ENXIO) at or past `size`.
pub fn seek_hole_blocks(data: &RangeSet, off: u64, size: u64, block: u64) -> Option<u64> {
    if off >= size {
        return None;
    }
    let mut h = off;
    while h < size {
        let b0 = h / block * block;
        match data.next_in(b0) {
            Some(d) if d < b0 + block => {
                // Data in this block: past the end of the run it starts, rounded up.
                h = data.next_out(d).div_ceil(block) * block;
            }
            _ => return Some(h),
        }
    }
    Some(size)
}

/// Walks a file's SEEK_DATA/SEEK_HOLE answers into its data runs below `size`: the one
/// walker of the crate (the engine learning a backend's map, `sparsefs map`, the demo).
/// `seek(off, whence)` is an `lseek` answer, `Ok(None)` for ENXIO; its errors are returned.
/// `Ok(None)`: the answers were inconsistent (a hole at or before the data found), so the
/// caller must take the whole file as data.
///
/// # Errors
/// What `seek` returns.
pub fn walk(
    size: u64,
    mut seek: impl FnMut(u64, crate::backend::Whence) -> std::io::Result<Option<u64>>,
) -> std::io::Result<Option<RangeSet>> {
    use crate::backend::Whence;
    let mut data = RangeSet::new();
    let mut pos = 0;
    while pos < size {
        let Some(d) = seek(pos, Whence::Data)? else {
            break;
        };
        if d >= size {
            break;
        }
        let h = seek(d, Whence::Hole)?.unwrap_or(size).min(size);
        if h <= d {
            return Ok(None);
        }
        data.insert(d, h);
        pos = h;
    }
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model_of(set: &RangeSet, n: u64) -> Vec<bool> {
        (0..n).map(|x| set.contains(x)).collect()
    }

    #[test]
    fn insert_merges_adjacent_and_overlapping() {
        let mut s = RangeSet::new();
        s.insert(10, 20);
        s.insert(20, 30);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(10, 30)]);
        s.insert(5, 12);
        s.insert(40, 50);
        s.insert(29, 41);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(5, 50)]);
    }

    #[test]
    fn remove_splits_straddling_range() {
        let mut s = RangeSet::new();
        s.insert(0, 100);
        s.remove(10, 20);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(0, 10), (20, 100)]);
        s.remove(0, 10);
        s.remove(90, 200);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(20, 90)]);
    }

    #[test]
    fn seek_follows_linux_semantics_at_every_offset() {
        let mut s = RangeSet::new();
        s.insert(4, 8);
        s.insert(12, 14);
        let size = 16;
        for off in 0..20u64 {
            let want_data = (off..size).find(|&x| s.contains(x));
            assert_eq!(seek_data(&s, off, size), want_data, "data off {off}");
            let want_hole = if off >= size {
                None
            } else {
                Some((off..size).find(|&x| !s.contains(x)).unwrap_or(size))
            };
            assert_eq!(seek_hole(&s, off, size), want_hole, "hole off {off}");
        }
    }

    #[test]
    fn data_past_size_is_not_reported() {
        let mut s = RangeSet::new();
        s.insert(10, 20);
        assert_eq!(seek_data(&s, 0, 10), None);
        assert_eq!(seek_hole(&s, 0, 15), Some(0));
        assert_eq!(seek_hole(&s, 12, 15), Some(15));
    }

    /// The block-granular seek model: a block is data when any of its bytes is.
    fn block_model(set: &RangeSet, size: u64, block: u64) -> Vec<bool> {
        (0..size)
            .map(|x| {
                let b0 = x / block * block;
                set.intersects(b0, b0 + block)
            })
            .collect()
    }

    #[test]
    fn block_seeks_answer_the_offset_the_size_or_a_block_multiple_at_every_offset() {
        let block = 8u64;
        let mut s = RangeSet::new();
        s.insert(2, 3); // one byte in block 0
        s.insert(17, 18); // one byte in block 2
        s.insert(20, 35); // blocks 2..4
        s.insert(60, 61); // block 7, at the very end of a 61-byte file
        for size in [40u64, 61, 64] {
            let m = block_model(&s, size, block);
            for off in 0..size + 3 {
                let d = seek_data_blocks(&s, off, size, block);
                let h = seek_hole_blocks(&s, off, size, block);
                let want_d = (off..size).find(|&x| m[x as usize]);
                let want_h =
                    (off < size).then(|| (off..size).find(|&x| !m[x as usize]).unwrap_or(size));
                assert_eq!(d, want_d, "data at {off}, size {size}");
                assert_eq!(h, want_h, "hole at {off}, size {size}");
                for a in [d, h].into_iter().flatten() {
                    assert!(
                        a == off || a == size || a % block == 0,
                        "answer {a} at {off}, size {size}"
                    );
                }
            }
        }
        // a 2-byte write at offset 2 of a 32K-block file is data from 0 to the block end
        let mut w = RangeSet::new();
        w.insert(2, 4);
        assert_eq!(seek_data_blocks(&w, 0, 1 << 20, 32768), Some(0));
        assert_eq!(seek_hole_blocks(&w, 0, 1 << 20, 32768), Some(32768));
    }

    #[test]
    fn block_total_counts_every_touched_block_once() {
        let mut s = RangeSet::new();
        assert_eq!(s.block_total(4096), 0);
        s.insert(1, 2);
        assert_eq!(s.block_total(4096), 4096);
        s.insert(4000, 4100); // blocks 0 and 1
        assert_eq!(s.block_total(4096), 8192);
        s.insert(3 * 4096, 3 * 4096 + 1);
        assert_eq!(s.block_total(4096), 3 * 4096);
        let g = s.generation();
        s.remove(3 * 4096, 3 * 4096 + 1);
        assert_ne!(s.generation(), g, "a change moves the generation");
        assert_eq!(s.block_total(4096), 8192);
    }

    #[test]
    fn the_walker_follows_seek_answers_and_distrusts_inconsistent_ones() {
        use crate::backend::Whence;
        let mut truth = RangeSet::new();
        truth.insert(4, 8);
        truth.insert(12, 14);
        let honest = |off: u64, w: Whence| {
            Ok(match w {
                Whence::Data => seek_data(&truth, off, 16),
                Whence::Hole => seek_hole(&truth, off, 16),
            })
        };
        assert_eq!(walk(16, honest).unwrap(), Some(truth.clone()));
        // A backend that says "all data, hole at EOF".
        let mut all = RangeSet::new();
        all.insert(0, 16);
        let lazy = |off: u64, w: Whence| Ok(Some(if w == Whence::Data { off } else { 16 }));
        assert_eq!(walk(16, lazy).unwrap(), Some(all));
        // A hole reported where the data starts: not trusted.
        let liar = |off: u64, _w: Whence| Ok(Some(off));
        assert_eq!(walk(16, liar).unwrap(), None);
        // Errors go to the caller.
        let broken = |_: u64, _: Whence| Err(std::io::Error::from_raw_os_error(libc::EIO));
        assert!(walk(16, broken).is_err());
    }

    proptest! {
        #[test]
        fn rangeset_matches_bitmap_model(ops in prop::collection::vec((any::<bool>(), 0u64..64, 0u64..64), 0..40)) {
            let mut s = RangeSet::new();
            let mut m = vec![false; 70];
            for (ins, a, b) in ops {
                let (lo, hi) = (a.min(b), a.max(b));
                if ins { s.insert(lo, hi) } else { s.remove(lo, hi) }
                for x in lo..hi { m[x as usize] = ins; }
                prop_assert_eq!(model_of(&s, 70), m.clone());
                // canonical: no two ranges touch
                let v: Vec<_> = s.iter().collect();
                for w in v.windows(2) { prop_assert!(w[0].1 < w[1].0); }
                prop_assert_eq!(s.total(), m.iter().filter(|&&b| b).count() as u64);
                for block in [1u64, 4, 8] {
                    let blocks = (0..70u64.div_ceil(block))
                        .filter(|b| m[(b * block) as usize..((b + 1) * block).min(70) as usize].iter().any(|&x| x))
                        .count() as u64;
                    prop_assert_eq!(s.block_total(block), blocks * block);
                }
            }
            for a in 0..66u64 {
                for b in a..66u64 {
                    let any = (a..b).any(|x| m[x as usize]);
                    let all = (a..b).all(|x| m[x as usize]);
                    prop_assert_eq!(s.intersects(a, b), any);
                    prop_assert_eq!(s.covers(a, b), all);
                    let ov: u64 = s.overlapping(a, b).map(|(x, y)| y - x).sum();
                    prop_assert_eq!(ov, (a..b).filter(|&x| m[x as usize]).count() as u64);
                    let gp: u64 = s.gaps(a, b).iter().map(|(x, y)| y - x).sum();
                    prop_assert_eq!(gp, (a..b).filter(|&x| !m[x as usize]).count() as u64);
                }
            }
        }
    }
}
