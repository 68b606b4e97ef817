//! The persisted extent map: a compact, versioned, checksummed encoding of a file's data
//! ranges plus the validity stamp of the backing file it describes. Pure (no I/O).
//!
//! ```text
//!  "SPFS" | ver u8 | flags u8 | 0u16 | size u64 | mtime s i64, ns u32 | ctime s i64, ns u32
//!  | ino u64 | [birth u64, with FLAG_BIRTH] | count u32 | count x (gap varint, len varint)
//!  | crc32 (IEEE) of all before
//! ```
//! `birth` (version 2) is written only where it is known, so a record without it keeps
//! the size it had in version 1 (which had no flags of its own): a small map stays inside
//! an ext4 inode's xattr space instead of taking a 4 KiB block. A record without `birth`
//! reads as 0 (identity unknown), which a backing whose files have an identity refuses as
//! stale (the file is then treated as data).
//! Gaps are measured from the end of the previous range (the first from 0), so a map of
//! 100k extents stays a few hundred KiB.
#![forbid(unsafe_code)]

use crate::extents::RangeSet;

const MAGIC: &[u8; 4] = b"SPFS";
/// The encoding version written by this build.
pub const VERSION: u8 = 2;
const HEADER_V1: usize = 4 + 4 + 8 + 12 + 12 + 8 + 4;

use crate::stamp::Stamp;

/// Why a stored map was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a sparsefs map.
    Magic,
    /// Written by an incompatible version.
    Version(u8),
    /// Shorter than its header or its ranges.
    Truncated,
    /// The checksum does not match (corrupt).
    Checksum,
    /// Ranges overlap, are unordered or pass the recorded size.
    Invalid,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Magic => write!(f, "not a sparsefs extent map"),
            Self::Version(v) => write!(f, "extent map version {v} is not 1 or {VERSION}"),
            Self::Truncated => write!(f, "extent map is truncated"),
            Self::Checksum => write!(f, "extent map checksum mismatch"),
            Self::Invalid => write!(f, "extent map ranges are invalid"),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or(DecodeError::Truncated)?;
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::Invalid)
}

/// Flag: the ranges live in the file's xattr; this record only carries the exact stamp.
pub const FLAG_MAP_IN_XATTR: u8 = 1;
/// In the file's xattr: only the stamp of the last map stored through any mount (the map
/// itself is in the sidecar record: too large for an xattr). See `Persist::witness`.
pub const FLAG_STAMP_ONLY: u8 = 4;
/// Flag (set by `encode` where the stamp has one): the header carries `birth`.
const FLAG_BIRTH: u8 = 2;

/// Encodes `data` (ranges below `stamp.size`) with its stamp and flags.
pub fn encode(data: &RangeSet, stamp: &Stamp, flags: u8) -> Vec<u8> {
    let flags = (flags & !FLAG_BIRTH) | if stamp.birth != 0 { FLAG_BIRTH } else { 0 };
    let mut out = Vec::with_capacity(HEADER_V1 + 12 + data.len() * 6);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, flags, 0, 0]);
    out.extend_from_slice(&stamp.size.to_le_bytes());
    out.extend_from_slice(&stamp.mtime.0.to_le_bytes());
    out.extend_from_slice(&stamp.mtime.1.to_le_bytes());
    out.extend_from_slice(&stamp.ctime.0.to_le_bytes());
    out.extend_from_slice(&stamp.ctime.1.to_le_bytes());
    out.extend_from_slice(&stamp.ino.to_le_bytes());
    if stamp.birth != 0 {
        out.extend_from_slice(&stamp.birth.to_le_bytes());
    }
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let mut prev = 0;
    for (s, e) in data.iter() {
        put_varint(&mut out, s - prev);
        put_varint(&mut out, e - s);
        prev = e;
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a stored map. Never trusts a byte before the checksum has been verified.
///
/// # Errors
/// A [`DecodeError`] saying why the bytes are refused.
pub fn decode(b: &[u8]) -> Result<(RangeSet, Stamp, u8), DecodeError> {
    if b.len() < 4 || &b[..4] != MAGIC {
        return Err(DecodeError::Magic);
    }
    if b.len() < 5 {
        return Err(DecodeError::Truncated);
    }
    let header = match (b[4], b.get(5).copied().unwrap_or(0) & FLAG_BIRTH) {
        (1, 0) | (VERSION, 0) => HEADER_V1,
        (VERSION, _) => HEADER_V1 + 8,
        (1, _) => return Err(DecodeError::Invalid),
        (v, _) => return Err(DecodeError::Version(v)),
    };
    if b.len() < header + 4 {
        return Err(DecodeError::Truncated);
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(DecodeError::Checksum);
    }
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().expect("4 bytes"));
    let stamp = Stamp {
        size: u64_at(8),
        mtime: (u64_at(16) as i64, u32_at(24)),
        ctime: (u64_at(28) as i64, u32_at(36)),
        ino: u64_at(40),
        birth: if header > HEADER_V1 { u64_at(48) } else { 0 },
    };
    let count = u32_at(header - 4) as usize;
    let mut pos = header;
    let mut data = RangeSet::new();
    let mut prev = 0u64;
    for i in 0..count {
        let gap = get_varint(body, &mut pos)?;
        let len = get_varint(body, &mut pos)?;
        let s = prev.checked_add(gap).ok_or(DecodeError::Invalid)?;
        let e = s.checked_add(len).ok_or(DecodeError::Invalid)?;
        if len == 0 || (i > 0 && gap == 0) || e > stamp.size {
            return Err(DecodeError::Invalid);
        }
        data.insert(s, e);
        prev = e;
    }
    if pos != body.len() {
        return Err(DecodeError::Invalid);
    }
    Ok((data, stamp, body[5] & !FLAG_BIRTH))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(size: u64) -> Stamp {
        Stamp {
            size,
            mtime: (1_700_000_000, 5),
            ctime: (1_700_000_001, 7),
            ino: 42,
            birth: 0x1234_5678_9abc,
        }
    }

    #[test]
    fn round_trip_and_small() {
        let mut d = RangeSet::new();
        d.insert(0, 4096);
        d.insert(1 << 30, (1 << 30) + 65536);
        let b = encode(&d, &stamp(2 << 30), 0);
        assert!(b.len() < 80, "{}", b.len());
        assert_eq!(decode(&b).unwrap(), (d, stamp(2 << 30), 0));
    }

    #[test]
    fn a_hundred_thousand_extents_stay_compact() {
        let mut d = RangeSet::new();
        for i in 0..100_000u64 {
            d.insert(i * 1_048_576, i * 1_048_576 + 65_536);
        }
        let b = encode(&d, &stamp(100_000 * 1_048_576), 0);
        assert!(b.len() < 700_000, "{}", b.len());
        assert_eq!(decode(&b).unwrap().0, d);
    }

    #[test]
    fn damaged_maps_are_refused() {
        let mut d = RangeSet::new();
        d.insert(10, 20);
        let b = encode(&d, &stamp(100), 1);
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "truncated at {cut}");
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(decode(&c).is_err(), "flipped byte {i}");
        }
        let mut v3 = b.clone();
        v3[4] = 3;
        assert_eq!(decode(&v3), Err(DecodeError::Version(3)));
        assert_eq!(decode(b"XXXXsomething"), Err(DecodeError::Magic));
    }

    #[test]
    fn ranges_past_the_size_are_refused() {
        let mut d = RangeSet::new();
        d.insert(10, 200);
        assert_eq!(
            decode(&encode(&d, &stamp(100), 0)),
            Err(DecodeError::Invalid)
        );
    }

    #[test]
    fn content_stamps_ignore_only_ctime() {
        let s = stamp(100);
        let mut now = s;
        now.ctime.1 += 1000;
        assert!(s.same_content(&now));
        let mut w = now;
        w.mtime.1 += 1;
        assert!(!s.same_content(&w));
        let mut z = now;
        z.size += 1;
        assert!(!s.same_content(&z));
        let mut i = now;
        i.ino += 1;
        assert!(!s.same_content(&i));
        let mut reborn = now;
        reborn.birth += 1;
        assert!(
            !s.same_content(&reborn),
            "a reused inode number is another file"
        );
    }

    #[test]
    fn a_version_one_map_reads_with_no_identity() {
        let mut d = RangeSet::new();
        d.insert(0, 4096);
        let st = stamp(8192);
        // Version 1: the same bytes without the birth field.
        let v2 = encode(&d, &st, 0);
        let mut v1 = v2[..HEADER_V1 - 4].to_vec();
        (v1[4], v1[5]) = (1, 0);
        v1.extend_from_slice(&v2[HEADER_V1 + 4..v2.len() - 4]);
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&v1).unwrap(), (d.clone(), st.born(0), 0));
        // A record without a birth is as long as a version-1 one (inside ext4's inode).
        assert_eq!(encode(&d, &st.born(0), 0).len(), v1.len());
        assert_eq!(
            decode(&encode(&d, &st.born(0), 1)).unwrap(),
            (d, st.born(0), 1)
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_garbage(b in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&b);
        }

        #[test]
        fn encode_decode_round_trips(v in prop::collection::vec((0u64..1000, 1u64..1000), 0..50)) {
            let mut d = RangeSet::new();
            let mut pos = 0;
            for (gap, len) in v { d.insert(pos + gap, pos + gap + len); pos += gap + len; }
            let st = stamp(pos + 1);
            prop_assert_eq!(decode(&encode(&d, &st, 1)).unwrap(), (d, st, 1));
        }
    }
}
