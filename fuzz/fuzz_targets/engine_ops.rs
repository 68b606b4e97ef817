//! The sparse engine over the in-memory backend (real hole semantics) against a
//! `Vec<u8>` model, driven by arbitrary bytes: writes (zero and non-zero), truncates,
//! punches, flushes at every depth, seeks. Contents, size and every reported hole must
//! agree with the model; after a full flush the backend must equal the model.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sparsefs::backend::mem::MemFile;
use sparsefs::backend::{Caps, Whence};
use sparsefs::file::{Depth, Geometry, SparseFile};
use sparsefs::stats::{Stats, Trigger};
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let block = 512u64 << (data[0] % 4);
    let punch = data[1] & 1 != 0;
    let seek = data[1] & 2 != 0;
    let geo = Geometry { block, write_size: block * 4, max_dirty_file: block * 16 };
    let mem = Arc::new(MemFile::with_caps(punch, seek));
    let stats = Arc::new(Stats::default());
    let mut f = SparseFile::open(Box::new(mem.clone()), geo, Caps { punch, seek }, stats)
        .unwrap();
    let mut model: Vec<u8> = Vec::new();
    for op in data[2..].chunks_exact(5) {
        let off = u64::from(u16::from_le_bytes([op[1], op[2]])) % 40_000;
        let len = u64::from(op[3]) * 64 + 1;
        match op[0] % 8 {
            0..=3 => {
                let byte = if op[0] & 0x10 != 0 { 0 } else { op[4] };
                f.write(off, &vec![byte; len as usize]).unwrap();
                let end = (off + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].fill(byte);
            }
            4 => {
                f.truncate(off).unwrap();
                model.resize(off as usize, 0);
            }
            5 => {
                f.make_zero(off, len, true).unwrap();
                let end = ((off + len) as usize).min(model.len());
                if (off as usize) < end {
                    model[off as usize..end].fill(0);
                }
            }
            6 => {
                let depth = [Depth::Data, Depth::Background, Depth::Full, Depth::Sync][op[4] as usize % 4];
                f.flush(depth, Trigger::Fsync).unwrap();
                if matches!(depth, Depth::Full | Depth::Sync) {
                    assert_eq!(mem.contents(), model, "backend after a full flush");
                }
            }
            _ => {
                if let Some(d) = f.seek(off, Whence::Data).unwrap() {
                    assert!(model[off as usize..d as usize].iter().all(|&b| b == 0), "hole with data");
                } else if (off as usize) < model.len() {
                    assert!(model[off as usize..].iter().all(|&b| b == 0), "ENXIO before data");
                }
            }
        }
        assert_eq!(f.size(), model.len() as u64);
        assert_eq!(f.read(0, model.len() + 7).unwrap(), model);
    }
    f.flush(Depth::Full, Trigger::Close).unwrap();
    assert_eq!(mem.contents(), model);
});
