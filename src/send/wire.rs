//! The native stream of `sparsefs send`, encoded and decoded (pure: no file I/O, only
//! `Read`/`Write` on the stream), and the logical digest of a file.
//!
//! ```text
//!  header  "SPFSSEND" ver:u16 flags:u16 block:u32 crc:u32            (20 bytes)
//!  per file:
//!   'F' name_len:u16 name size:u64 mode:u32 mtime_s:i64 mtime_ns:u32 crc:u32
//!   'D' off:u64 len:u32 bytes[len] crc:u32          data, block-aligned, ascending
//!   'H' off:u64 len:u64 crc:u32                     reads as zeros (punched in place)
//!   'E' size:u64 data_bytes:u64 digest[32] crc:u32  the file is complete
//!  'Z' files:u32 crc:u32                            the stream is complete
//!
//!  reply (--update, receiver -> sender, after each 'F'):
//!   'S' old_size:u64 runs:u64 { first:u64 count:u64 hash[32]*count }*runs crc:u32
//! ```
//! The reply lists the runs of blocks of the receiver's copy that hold a non-zero byte,
//! ascending, each with its blocks' hashes; every block between the runs (a hole or a
//! block of zeros) reads as zeros and costs nothing, so the reply grows with the copy's
//! data, not its size:
//! ```text
//!  old copy   |hole.........|DDD|hole.................|DD|hole...|
//!  reply      S size 2  (first=13 count=3 h h h)  (first=34 count=2 h h)
//! ```
//! Integers are little-endian; every record ends with the CRC-32 of its tag and body
//! (data included), so a flipped byte anywhere is found at its record. Records of one
//! file ascend and never overlap; `D` and `H` start on a block boundary and are whole
//! blocks except at the end of the file.
//!
//! The digest of a file is BLAKE3 over `size`, `block` and the BLAKE3 hash of each
//! block in order (the last one short). A block that is a hole hashes as that many zero
//! bytes, a constant: sender and receiver compute it without reading holes, and a sparse
//! and a dense copy of the same bytes have the same digest.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read, Write};

/// The first 8 bytes of a native stream.
pub const MAGIC: &[u8; 8] = b"SPFSSEND";
/// The stream version this build writes and reads (1 answered `--update` with a hash
/// for every block, holes included).
pub const VERSION: u16 = 2;
/// Header flag: the sender waits for the receiver's block hashes after each file.
pub const FLAG_UPDATE: u16 = 1;
/// Largest data record accepted (a larger length is corruption, not an allocation).
pub const MAX_DATA: u32 = 16 << 20;
/// A block hash.
pub type Hash = [u8; 32];

/// Why a stream is refused: one line each.
#[derive(Debug)]
pub enum StreamError {
    /// The stream ended inside a record or before its end record.
    Truncated(&'static str),
    /// A record failed its check or broke the stream's rules.
    Corrupt(String),
    /// Not a sparsefs stream at all.
    Foreign,
    /// An xfer-hole stream (`send --format xfer-hole`), not the native one.
    XferHole,
    /// A sparsefs stream of another version.
    Version(u16),
    /// Reading or writing the stream failed.
    Io(io::Error),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated(at) => write!(f, "truncated stream (it ends {at})"),
            Self::Corrupt(why) => write!(f, "corrupt stream: {why}"),
            Self::Foreign => write!(f, "not a sparsefs send stream (bad magic)"),
            Self::XferHole => write!(
                f,
                "an xfer-hole stream, not a native one: receive it with the shell loop of docs/send.md"
            ),
            Self::Version(v) => write!(
                f,
                "sparsefs send stream version {v} is not supported (this sparsefs reads version {VERSION})"
            ),
            Self::Io(e) => write!(f, "reading the stream: {e}"),
        }
    }
}

impl From<io::Error> for StreamError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The stream header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// [`FLAG_UPDATE`] or 0.
    pub flags: u16,
    /// The block of the digest and of record alignment.
    pub block: u32,
}

/// What a file record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// One path component.
    pub name: String,
    /// Final size.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_s: i64,
    /// Modification time, nanoseconds.
    pub mtime_ns: u32,
}

/// One record of a file's body, or the end of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// A new file.
    File(FileMeta),
    /// Bytes at an offset.
    Data {
        /// Offset.
        off: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A range that reads as zeros.
    Hole {
        /// Offset.
        off: u64,
        /// Length.
        len: u64,
    },
    /// The file is complete.
    End {
        /// Final size (as in the file record).
        size: u64,
        /// Data bytes the file's records carried.
        data_bytes: u64,
        /// The logical digest.
        digest: Hash,
    },
    /// The stream is complete.
    StreamEnd {
        /// Files in the stream.
        files: u32,
    },
}

/// The receiver's copy as its reply describes it (`--update`): its size and the hash of
/// each block holding a non-zero byte, by ascending block index. Every other block
/// reads as zeros.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockSums {
    /// The copy's size.
    pub size: u64,
    /// `(block index, hash)` of its non-zero blocks, strictly ascending.
    pub blocks: Vec<(u64, Hash)>,
}

impl BlockSums {
    /// The hash of block `i` if it holds data.
    pub fn get(&self, i: u64) -> Option<&Hash> {
        self.blocks
            .binary_search_by_key(&i, |(j, _)| *j)
            .ok()
            .map(|k| &self.blocks[k].1)
    }

    /// The non-zero blocks with index in `[first, last)`.
    pub fn within(&self, first: u64, last: u64) -> &[(u64, Hash)] {
        let lo = self.blocks.partition_point(|(j, _)| *j < first);
        let hi = self.blocks.partition_point(|(j, _)| *j < last);
        &self.blocks[lo..hi.max(lo)]
    }

    /// The runs of consecutive block indices: `(first, count)`.
    fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &(j, _) in &self.blocks {
            match runs.last_mut() {
                Some((f, n)) if *f + *n == j => *n += 1,
                _ => runs.push((j, 1)),
            }
        }
        runs
    }
}

/// Writes records with their CRCs; counts the bytes.
pub struct Encoder<W: Write> {
    w: W,
    /// Bytes written so far.
    pub bytes: u64,
}

impl<W: Write> Encoder<W> {
    /// An encoder over `w`.
    pub fn new(w: W) -> Self {
        Self { w, bytes: 0 }
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    fn emit(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let mut crc = crc32fast::Hasher::new();
        for p in parts {
            crc.update(p);
            self.w.write_all(p)?;
            self.bytes += p.len() as u64;
        }
        self.w.write_all(&crc.finalize().to_le_bytes())?;
        self.bytes += 4;
        Ok(())
    }

    /// The stream header.
    ///
    /// # Errors
    /// The writer's.
    pub fn header(&mut self, h: Header) -> io::Result<()> {
        self.emit(&[
            MAGIC,
            &VERSION.to_le_bytes(),
            &h.flags.to_le_bytes(),
            &h.block.to_le_bytes(),
        ])
    }

    /// A record.
    ///
    /// # Errors
    /// The writer's.
    pub fn record(&mut self, r: &Record) -> io::Result<()> {
        match r {
            Record::File(m) => {
                let name = m.name.as_bytes();
                self.emit(&[
                    b"F",
                    &(name.len() as u16).to_le_bytes(),
                    name,
                    &m.size.to_le_bytes(),
                    &m.mode.to_le_bytes(),
                    &m.mtime_s.to_le_bytes(),
                    &m.mtime_ns.to_le_bytes(),
                ])
            }
            Record::Data { off, data } => self.data(*off, data),
            Record::Hole { off, len } => self.emit(&[b"H", &off.to_le_bytes(), &len.to_le_bytes()]),
            Record::End {
                size,
                data_bytes,
                digest,
            } => self.emit(&[b"E", &size.to_le_bytes(), &data_bytes.to_le_bytes(), digest]),
            Record::StreamEnd { files } => self.emit(&[b"Z", &files.to_le_bytes()]),
        }
    }

    /// A data record from a borrowed buffer.
    ///
    /// # Errors
    /// The writer's.
    pub fn data(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        debug_assert!(data.len() as u64 <= u64::from(MAX_DATA));
        self.emit(&[
            b"D",
            &off.to_le_bytes(),
            &(data.len() as u32).to_le_bytes(),
            data,
        ])
    }

    /// The receiver's block hashes of its old copy (`--update`): its data blocks in
    /// runs, holes not at all.
    ///
    /// # Errors
    /// The writer's.
    pub fn sums(&mut self, s: &BlockSums) -> io::Result<()> {
        debug_assert!(s.blocks.windows(2).all(|w| w[0].0 < w[1].0));
        let runs = s.runs();
        let mut body = Vec::with_capacity(16 + runs.len() * 16 + s.blocks.len() * 32);
        body.extend_from_slice(&s.size.to_le_bytes());
        body.extend_from_slice(&(runs.len() as u64).to_le_bytes());
        let mut hashes = s.blocks.iter();
        for (first, count) in runs {
            body.extend_from_slice(&first.to_le_bytes());
            body.extend_from_slice(&count.to_le_bytes());
            for (_, h) in hashes.by_ref().take(count as usize) {
                body.extend_from_slice(h);
            }
        }
        self.emit(&[b"S", &body])
    }

    /// Flushes the writer.
    ///
    /// # Errors
    /// The writer's.
    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Reads records, checking every CRC; counts the bytes.
pub struct Decoder<R: Read> {
    r: R,
    crc: crc32fast::Hasher,
    /// Bytes read so far.
    pub bytes: u64,
}

impl<R: Read> Decoder<R> {
    /// A decoder over `r`.
    pub fn new(r: R) -> Self {
        Self {
            r,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        }
    }

    fn take(&mut self, buf: &mut [u8], at: &'static str) -> Result<(), StreamError> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => return Err(StreamError::Truncated(at)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.crc.update(buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }

    fn u16(&mut self, at: &'static str) -> Result<u16, StreamError> {
        let mut b = [0; 2];
        self.take(&mut b, at)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self, at: &'static str) -> Result<u32, StreamError> {
        let mut b = [0; 4];
        self.take(&mut b, at)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, at: &'static str) -> Result<u64, StreamError> {
        let mut b = [0; 8];
        self.take(&mut b, at)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads the CRC that closes a record and compares it with the record's.
    fn check(&mut self, what: &str, at: &'static str) -> Result<(), StreamError> {
        let want = std::mem::take(&mut self.crc).finalize();
        let mut b = [0; 4];
        self.take(&mut b, at)?;
        self.crc = crc32fast::Hasher::new();
        if u32::from_le_bytes(b) != want {
            return Err(StreamError::Corrupt(format!("checksum mismatch in {what}")));
        }
        Ok(())
    }

    /// The stream header.
    ///
    /// # Errors
    /// `Foreign` for a stream without the magic (an empty one is `Truncated`),
    /// `Version`, `Corrupt`.
    pub fn header(&mut self) -> Result<Header, StreamError> {
        let mut magic = [0u8; 8];
        let mut got = 0;
        while got < magic.len() {
            match self.r.read(&mut magic[got..]) {
                Ok(0) if got == 0 => return Err(StreamError::Truncated("before its header")),
                Ok(0) => return Err(StreamError::Foreign),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if &magic != MAGIC {
            if magic.starts_with(b"DATA\n") || magic.starts_with(b"HOLE\n") {
                return Err(StreamError::XferHole);
            }
            return Err(StreamError::Foreign);
        }
        self.crc.update(&magic);
        self.bytes += 8;
        let version = self.u16("in its header")?;
        let flags = self.u16("in its header")?;
        let block = self.u32("in its header")?;
        if version != VERSION {
            return Err(StreamError::Version(version));
        }
        self.check("the header", "in its header")?;
        if !block.is_power_of_two() || !(512..=64 << 20).contains(&block) {
            return Err(StreamError::Corrupt(format!("block size {block}")));
        }
        Ok(Header { flags, block })
    }

    /// The next record.
    ///
    /// # Errors
    /// `Truncated` where the stream ends (a clean end between records included: the
    /// stream must close with its end record), `Corrupt`.
    pub fn record(&mut self) -> Result<Record, StreamError> {
        const AT: &str = "inside a record";
        let mut tag = [0u8; 1];
        self.take(&mut tag, "before its end record")?;
        let r = match tag[0] {
            b'F' => {
                let n = self.u16(AT)? as usize;
                if n == 0 || n > 255 {
                    return Err(StreamError::Corrupt(format!("file name of {n} bytes")));
                }
                let mut name = vec![0; n];
                self.take(&mut name, AT)?;
                let size = self.u64(AT)?;
                let mode = self.u32(AT)?;
                let mtime_s = self.u64(AT)? as i64;
                let mtime_ns = self.u32(AT)?;
                self.check("a file record", AT)?;
                let name = String::from_utf8(name)
                    .map_err(|_| StreamError::Corrupt("file name is not UTF-8".into()))?;
                if name == "." || name == ".." || name.contains(['/', '\0']) {
                    return Err(StreamError::Corrupt(format!("file name {name:?}")));
                }
                if size > i64::MAX as u64 || mtime_ns >= 1_000_000_000 {
                    return Err(StreamError::Corrupt("file record out of range".into()));
                }
                Record::File(FileMeta {
                    name,
                    size,
                    mode: mode & 0o7777,
                    mtime_s,
                    mtime_ns,
                })
            }
            b'D' => {
                let off = self.u64(AT)?;
                let len = self.u32(AT)?;
                if len == 0 || len > MAX_DATA {
                    return Err(StreamError::Corrupt(format!("data record of {len} bytes")));
                }
                let mut data = vec![0; len as usize];
                self.take(&mut data, AT)?;
                self.check("a data record", AT)?;
                Record::Data { off, data }
            }
            b'H' => {
                let off = self.u64(AT)?;
                let len = self.u64(AT)?;
                self.check("a hole record", AT)?;
                Record::Hole { off, len }
            }
            b'E' => {
                let size = self.u64(AT)?;
                let data_bytes = self.u64(AT)?;
                let mut digest = [0u8; 32];
                self.take(&mut digest, AT)?;
                self.check("an end record", AT)?;
                Record::End {
                    size,
                    data_bytes,
                    digest,
                }
            }
            b'Z' => {
                let files = self.u32(AT)?;
                self.check("the stream's end record", AT)?;
                Record::StreamEnd { files }
            }
            t => {
                return Err(StreamError::Corrupt(format!(
                    "unknown record type 0x{t:02x}"
                )));
            }
        };
        Ok(r)
    }

    /// The receiver's block hashes (`--update`) in blocks of `block`: runs ascending,
    /// apart, inside the copy's size.
    ///
    /// # Errors
    /// `Truncated`, `Corrupt`.
    pub fn sums(&mut self, block: u64) -> Result<BlockSums, StreamError> {
        const AT: &str = "inside the receiver's block hashes";
        let mut tag = [0u8; 1];
        self.take(&mut tag, AT)?;
        if tag[0] != b'S' {
            return Err(StreamError::Corrupt(format!(
                "expected the receiver's block hashes, got record type 0x{:02x}",
                tag[0]
            )));
        }
        let size = self.u64(AT)?;
        let nblocks = blocks(size, block.max(1));
        let nruns = self.u64(AT)?;
        let bad = |why: String| Err(StreamError::Corrupt(format!("the block hashes: {why}")));
        if nruns > nblocks {
            return bad(format!("{nruns} runs for {size} bytes"));
        }
        let mut v = Vec::new();
        let mut next = 0u64; // runs start at or after this block
        for _ in 0..nruns {
            let first = self.u64(AT)?;
            let count = self.u64(AT)?;
            if count == 0
                || first < next
                || first.checked_add(count).is_none_or(|e| e > nblocks)
                || v.len() as u64 + count > 1 << 32
            {
                return bad(format!("run of {count} blocks at block {first}"));
            }
            v.reserve(count as usize);
            for i in first..first + count {
                let mut h = [0u8; 32];
                self.take(&mut h, AT)?;
                v.push((i, h));
            }
            next = first + count;
        }
        self.check("the receiver's block hashes", AT)?;
        Ok(BlockSums { size, blocks: v })
    }
}

/// The hash of one block's bytes.
pub fn block_hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// Number of blocks of a file of `size` bytes.
pub fn blocks(size: u64, block: u64) -> u64 {
    size.div_ceil(block)
}

/// Length of block `i` of a file of `size` bytes.
pub fn block_len(i: u64, size: u64, block: u64) -> u64 {
    block.min(size.saturating_sub(i * block))
}

/// Hashes of all-zero blocks, by length (the full block and the file's short tail).
#[derive(Clone, Copy, Debug)]
pub struct ZeroHashes {
    block: u64,
    full: Hash,
    tail_len: u64,
    tail: Hash,
}

impl ZeroHashes {
    /// The zero hashes of a file of `size` bytes in blocks of `block`.
    pub fn new(size: u64, block: u64) -> Self {
        let full = block_hash(&vec![0u8; block as usize]);
        let tail_len = size % block;
        let tail = if tail_len == 0 {
            full
        } else {
            block_hash(&vec![0u8; tail_len as usize])
        };
        Self {
            block,
            full,
            tail_len,
            tail,
        }
    }

    /// The hash of an all-zero block of `len` bytes (a full block or this file's tail).
    pub fn of_len(&self, len: u64) -> Hash {
        if len == self.block {
            self.full
        } else if len == self.tail_len {
            self.tail
        } else {
            block_hash(&vec![0u8; len as usize])
        }
    }
}

/// The logical digest, fed block hashes in ascending order; blocks never fed are
/// holes.
pub struct Digest {
    h: blake3::Hasher,
    size: u64,
    block: u64,
    next: u64,
    zeros: ZeroHashes,
}

impl Digest {
    /// The digest of a file of `size` bytes in blocks of `block`.
    pub fn new(size: u64, block: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(&size.to_le_bytes());
        h.update(&block.to_le_bytes());
        Self {
            h,
            size,
            block,
            next: 0,
            zeros: ZeroHashes::new(size, block),
        }
    }

    /// The zero hashes of this file.
    pub fn zeros(&self) -> ZeroHashes {
        self.zeros
    }

    /// Block `i`'s hash; blocks before it not fed yet take `gap(j)`.
    ///
    /// # Panics
    /// If `i` was fed already (callers check the order of records first).
    pub fn push_with(&mut self, i: u64, hash: &Hash, gap: impl Fn(u64) -> Hash) {
        assert!(i >= self.next, "block hashes fed out of order");
        self.fill_with(i, gap);
        self.h.update(hash);
        self.next = i + 1;
    }

    /// Block `i`'s hash; blocks before it not fed yet are holes.
    pub fn push(&mut self, i: u64, hash: &Hash) {
        let (z, size, block) = (self.zeros, self.size, self.block);
        self.push_with(i, hash, |j| z.of_len(block_len(j, size, block)));
    }

    /// Feeds `gap(j)` for every block from the next one up to (not including) `i`.
    pub fn fill_with(&mut self, i: u64, gap: impl Fn(u64) -> Hash) {
        let end = i.min(blocks(self.size, self.block));
        while self.next < end {
            self.h.update(&gap(self.next));
            self.next += 1;
        }
    }

    /// Blocks fed so far (the index of the next one).
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The digest, the blocks not fed taking `gap(j)`.
    pub fn finish_with(mut self, gap: impl Fn(u64) -> Hash) -> Hash {
        self.fill_with(u64::MAX, gap);
        *self.h.finalize().as_bytes()
    }

    /// The digest, the blocks not fed being holes.
    pub fn finish(self) -> Hash {
        let (z, size, block) = (self.zeros, self.size, self.block);
        self.finish_with(|j| z.of_len(block_len(j, size, block)))
    }
}

/// The digest of a whole file held in memory (tests, and the reference of the model).
pub fn digest_of(bytes: &[u8], block: u64) -> Hash {
    let mut d = Digest::new(bytes.len() as u64, block);
    for (i, b) in bytes.chunks(block as usize).enumerate() {
        d.push(i as u64, &block_hash(b));
    }
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(recs: &[Record]) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        e.header(Header {
            flags: 0,
            block: 4096,
        })
        .unwrap();
        for r in recs {
            e.record(r).unwrap();
        }
        let n = e.bytes;
        let v = e.w;
        assert_eq!(n, v.len() as u64);
        v
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::File(FileMeta {
                name: "disk.img".into(),
                size: 3 * 4096 + 10,
                mode: 0o640,
                mtime_s: 1_700_000_000,
                mtime_ns: 5,
            }),
            Record::Hole { off: 0, len: 4096 },
            Record::Data {
                off: 4096,
                data: vec![7; 4096],
            },
            Record::End {
                size: 3 * 4096 + 10,
                data_bytes: 4096,
                digest: [9; 32],
            },
            Record::StreamEnd { files: 1 },
        ]
    }

    #[test]
    fn records_decode_to_what_was_encoded() {
        let recs = sample();
        let v = roundtrip(&recs);
        let mut d = Decoder::new(&v[..]);
        assert_eq!(d.header().unwrap().block, 4096);
        for r in &recs {
            assert_eq!(&d.record().unwrap(), r);
        }
        assert_eq!(d.bytes, v.len() as u64);
    }

    fn decode_all(v: &[u8]) -> Result<(), StreamError> {
        let mut d = Decoder::new(v);
        d.header()?;
        loop {
            if let Record::StreamEnd { .. } = d.record()? {
                return Ok(());
            }
        }
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        let v = roundtrip(&sample());
        for i in 0..v.len() {
            for bit in [0x01u8, 0x80] {
                let mut w = v.clone();
                w[i] ^= bit;
                assert!(decode_all(&w).is_err(), "flip at {i}");
            }
        }
        for cut in 0..v.len() {
            let e = decode_all(&v[..cut]).unwrap_err();
            assert!(
                matches!(e, StreamError::Truncated(_) | StreamError::Foreign),
                "cut at {cut}: {e}"
            );
        }
    }

    #[test]
    fn foreign_and_future_streams_are_named_as_such() {
        assert!(matches!(
            decode_all(b"GIF89a\x01\x00\x01\x00garbage garbage"),
            Err(StreamError::Foreign)
        ));
        let mut e = Encoder::new(Vec::new());
        e.emit(&[
            MAGIC,
            &1u16.to_le_bytes(),
            &0u16.to_le_bytes(),
            &4096u32.to_le_bytes(),
        ])
        .unwrap();
        let err = decode_all(&e.w).unwrap_err();
        assert!(matches!(err, StreamError::Version(1)));
        assert_eq!(
            err.to_string(),
            "sparsefs send stream version 1 is not supported (this sparsefs reads version 2)"
        );
        assert!(matches!(decode_all(b""), Err(StreamError::Truncated(_))));
    }

    #[test]
    fn the_digest_of_a_sparse_copy_equals_that_of_the_dense_one() {
        for size in [0u64, 1, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 17] {
            let mut bytes = vec![0u8; size as usize];
            if size > 5000 {
                bytes[4100] = 1;
            }
            let dense = digest_of(&bytes, 4096);
            // Sparse: only the non-zero blocks are fed.
            let mut d = Digest::new(size, 4096);
            for (i, b) in bytes.chunks(4096).enumerate() {
                if b.iter().any(|&x| x != 0) {
                    d.push(i as u64, &block_hash(b));
                }
            }
            assert_eq!(d.finish(), dense, "size {size}");
        }
        assert_ne!(digest_of(&[0; 10], 4096), digest_of(&[0; 11], 4096));
        assert_ne!(
            digest_of(&[0; 10], 4096),
            digest_of(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0], 4096)
        );
    }

    #[test]
    fn sums_round_trip_with_holes_as_gaps_between_runs() {
        let s = BlockSums {
            size: 20 * 4096 + 5,
            blocks: vec![(0, [1; 32]), (1, [2; 32]), (7, [3; 32]), (20, [4; 32])],
        };
        let mut e = Encoder::new(Vec::new());
        e.sums(&s).unwrap();
        // Tag, size, run count, three runs of (first, count) and four hashes, CRC.
        assert_eq!(e.w.len(), 1 + 16 + 3 * 16 + 4 * 32 + 4);
        let mut d = Decoder::new(&e.w[..]);
        assert_eq!(d.sums(4096).unwrap(), s);
        for i in 0..e.w.len() {
            let mut bad = e.w.clone();
            bad[i] ^= 1;
            assert!(Decoder::new(&bad[..]).sums(4096).is_err(), "flip at {i}");
        }
        assert_eq!(s.get(7), Some(&[3; 32]));
        assert_eq!(s.get(8), None);
        assert_eq!(s.within(1, 20), &s.blocks[1..3]);
        assert!(s.within(8, 20).is_empty());
        assert!(s.within(21, 100).is_empty());
    }

    #[test]
    fn the_reply_of_a_hole_costs_nothing() {
        let mut e = Encoder::new(Vec::new());
        e.sums(&BlockSums {
            size: 1 << 40,
            blocks: Vec::new(),
        })
        .unwrap();
        assert_eq!(e.w.len(), 1 + 16 + 4);
    }

    /// Runs that overlap, go backwards, are empty or pass the copy's end are corrupt,
    /// even with a good CRC.
    #[test]
    fn sums_with_runs_out_of_order_or_range_are_refused() {
        let enc = |size: u64, runs: &[(u64, u64)]| {
            let mut body = Vec::new();
            body.extend_from_slice(&size.to_le_bytes());
            body.extend_from_slice(&(runs.len() as u64).to_le_bytes());
            for &(f, n) in runs {
                body.extend_from_slice(&f.to_le_bytes());
                body.extend_from_slice(&n.to_le_bytes());
                for _ in 0..n.min(4) {
                    body.extend_from_slice(&[9; 32]);
                }
            }
            let mut e = Encoder::new(Vec::new());
            e.emit(&[b"S", &body]).unwrap();
            e.w
        };
        let size = 8 * 4096;
        assert!(
            Decoder::new(&enc(size, &[(0, 2), (3, 1)])[..])
                .sums(4096)
                .is_ok()
        );
        for runs in [
            &[(0, 2), (1, 1)][..],
            &[(3, 1), (0, 1)],
            &[(0, 0)],
            &[(7, 2)],
            &[(u64::MAX, 1)],
        ] {
            let e = Decoder::new(&enc(size, runs)[..]).sums(4096).unwrap_err();
            assert!(matches!(e, StreamError::Corrupt(_)), "{runs:?}: {e}");
        }
    }
}
