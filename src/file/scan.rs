//! Learning a file's map: from the backend's SEEK_DATA/SEEK_HOLE where it is trusted, or
//! by reading it and finding its all-zero blocks (`sparsefs scan`).

use super::*;

impl SparseFile {
    /// Builds an exact map from the backend's SEEK_DATA/SEEK_HOLE (only called when a
    /// probe showed them trustworthy). Flushes first so the backend is current.
    pub fn learn(&mut self) -> io::Result<()> {
        self.flush(Depth::Full, Trigger::Sync)?;
        let backend = &self.backend;
        let Some(data) = crate::extents::walk(self.backend_size, |off, w| backend.seek(off, w))?
        else {
            // A backend that answers inconsistently is not trusted: keep all data.
            return Ok(());
        };
        // Only what the old (conservative) index allowed may be data.
        let mut learned = RangeSet::new();
        for (s, e) in data.iter() {
            for (a, b) in self.index.data.overlapping(s, e) {
                learned.insert(a, b);
            }
        }
        self.index = ExtentIndex {
            data: learned,
            exact: true,
        };
        Ok(())
    }

    /// `sparsefs scan` through the mount: reads the bytes of `off..off+len` that the
    /// index counts as data from the backend (1 MiB at a time), and turns every all-zero
    /// sparse block among them into a known hole of the index (the backend already reads
    /// zeros there, so nothing else changes). With `dig`, also punches every hole of the
    /// range on a backend that can punch. Returns the bytes newly found zero.
    pub fn scan_zeros(&mut self, off: u64, len: u64, dig: bool) -> io::Result<u64> {
        self.flush(Depth::Full, Trigger::Sync)?;
        if !self.index.exact && self.caps.seek {
            self.learn()?;
        }
        let bs = self.geo.block;
        let end = off.saturating_add(len).min(self.size);
        let chunk = (1u64 << 20).max(bs);
        let mut buf = vec![0u8; chunk as usize];
        let mut found = RangeSet::new();
        let mut pos = off / bs * bs;
        while pos < end {
            let stop = (pos + chunk).min(end.next_multiple_of(bs)).min(self.size);
            if !self.index.data.intersects(pos, stop) {
                pos = stop;
                continue;
            }
            let n = (stop - pos) as usize;
            let got = self.backend.read_at(&mut buf[..n], pos)?;
            buf[got..n].fill(0);
            for (i, b) in buf[..n].chunks(bs as usize).enumerate() {
                let s = pos + i as u64 * bs;
                let e = s + b.len() as u64;
                if self.index.data.intersects(s, e) && crate::zero::is_zero(b) {
                    found.insert(s, e);
                }
            }
            pos = stop;
        }
        for (s, e) in found.iter() {
            self.index.data.remove(s, e);
        }
        if dig && self.caps.punch {
            // Every hole of the range, also those known before (a map stored by an
            // earlier scan describes zeros the backend may still hold allocated): one
            // punch per hole run, a no-op where the backend already has a hole.
            let first = off / bs * bs;
            let last = end.min(self.backend_size);
            for (s, e) in self.index.data.gaps(first, last.max(first)) {
                self.backend.punch_hole(s, e - s)?;
            }
        }
        // Every hole of the index is now a known one (verified zeros or learned), and
        // what is not scanned stays data: the map is exact in the sense `st_blocks` and
        // persistence rely on.
        self.index.exact = true;
        Ok(found.total())
    }
}
