//! The sending side: reads each file's data runs block by block (holes are never read),
//! drops all-zero blocks, hashes the rest, and writes records (native or xfer-hole).
//! With `--update` it first reads the receiver's block hashes and sends only blocks
//! that differ.

use super::source::{RunFinder, RunsFrom};
use super::wire::{self, Digest, Encoder, FileMeta, Hash, Record, ZeroHashes};
use super::{Format, Progress};
use crate::zero::is_zero;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

/// Bytes read per request and largest data record.
pub const CHUNK: u64 = 4 << 20;

/// What was sent of one file.
#[derive(Clone, Debug, Default)]
pub struct FileSummary {
    /// The name in the stream.
    pub name: String,
    /// Logical size.
    pub size: u64,
    /// Data bytes sent.
    pub data_bytes: u64,
    /// Data blocks sent.
    pub blocks_sent: u64,
    /// Data blocks the receiver already had (`--update`).
    pub blocks_same: u64,
    /// Blocks read that were all zeros (sent as holes).
    pub zero_blocks: u64,
    /// Bytes read from the source.
    pub read_bytes: u64,
    /// Data records.
    pub data_records: u64,
    /// Hole records.
    pub hole_records: u64,
    /// Where the runs came from.
    pub runs_from: Option<RunsFrom>,
    /// The logical digest (native format).
    pub digest: Option<Hash>,
}

/// A source file checked before anything is written.
pub struct Source {
    /// As given.
    pub path: PathBuf,
    /// Open for reading.
    pub file: File,
    /// Its metadata at open.
    pub meta: std::fs::Metadata,
    /// Its name in the stream.
    pub name: String,
}

/// Opens every file; one line for the first that cannot be sent.
///
/// # Errors
/// Missing or unreadable files, directories and other non-regular files, names that
/// are not UTF-8, two files of one name.
pub fn open_sources(paths: &[PathBuf]) -> Result<Vec<Source>, String> {
    let mut out: Vec<Source> = Vec::new();
    for p in paths {
        let file = File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            return Err(format!(
                "{}: is a directory (send takes regular files)",
                p.display()
            ));
        }
        if !meta.is_file() {
            return Err(format!("{}: not a regular file", p.display()));
        }
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: the file name must be UTF-8", p.display()))?
            .to_string();
        if out.iter().any(|s| s.name == name) {
            return Err(format!("two files named {name} in one stream"));
        }
        out.push(Source {
            path: p.clone(),
            file,
            meta,
            name,
        });
    }
    Ok(out)
}

/// The receiver's copy, as its block hashes describe it (`--update`).
pub struct Remote {
    /// Its size.
    pub size: u64,
    /// One hash per block.
    pub hashes: Vec<Hash>,
    zeros: ZeroHashes,
    block: u64,
}

impl Remote {
    /// The remote copy of `size` bytes with these hashes.
    pub fn new(size: u64, hashes: Vec<Hash>, block: u64) -> Self {
        Self {
            size,
            hashes,
            zeros: ZeroHashes::new(size, block),
            block,
        }
    }

    /// True if the receiver's block `i` holds any non-zero byte.
    fn nonzero(&self, i: u64) -> bool {
        self.hashes
            .get(i as usize)
            .is_some_and(|h| *h != self.zeros.of_len(wire::block_len(i, self.size, self.block)))
    }

    /// True if the receiver's block `i` equals `h` (of the same length).
    fn same(&self, i: u64, h: &Hash, len: u64) -> bool {
        wire::block_len(i, self.size, self.block) == len
            && self.hashes.get(i as usize).is_some_and(|r| r == h)
    }
}

/// The record writer of one file: pending data and hole runs, flushed in offset order.
struct Emitter<'a, W: Write> {
    out: &'a mut Encoder<W>,
    format: Format,
    block: u64,
    size: u64,
    /// Pending data run: its offset and bytes.
    data_off: u64,
    data: Vec<u8>,
    /// Pending hole run `[start, end)`.
    hole: Option<(u64, u64)>,
    sum: &'a mut FileSummary,
}

impl<W: Write> Emitter<'_, W> {
    fn flush_data(&mut self) -> io::Result<()> {
        if self.data.is_empty() {
            return Ok(());
        }
        match self.format {
            Format::Native => self.out.data(self.data_off, &self.data)?,
            Format::XferHole => {
                let w = self.out.get_mut();
                write!(w, "DATA\n{}\n", self.data.len())?;
                w.write_all(&self.data)?;
                self.out.bytes +=
                    self.data.len() as u64 + 6 + self.data.len().to_string().len() as u64;
            }
        }
        self.sum.data_records += 1;
        self.sum.data_bytes += self.data.len() as u64;
        self.sum.blocks_sent += self.data.len().div_ceil(self.block as usize) as u64;
        self.data.clear();
        Ok(())
    }

    fn flush_hole(&mut self) -> io::Result<()> {
        let Some((s, e)) = self.hole.take() else {
            return Ok(());
        };
        match self.format {
            Format::Native => self.out.record(&Record::Hole { off: s, len: e - s })?,
            Format::XferHole => {
                let line = format!("HOLE\n{}\n", e - s);
                self.out.get_mut().write_all(line.as_bytes())?;
                self.out.bytes += line.len() as u64;
            }
        }
        self.sum.hole_records += 1;
        Ok(())
    }

    /// Block `i` (bytes `b`) is to be sent.
    fn data_block(&mut self, i: u64, b: &[u8]) -> io::Result<()> {
        self.flush_hole()?;
        let off = i * self.block;
        if !self.data.is_empty()
            && (self.data_off + self.data.len() as u64 != off || self.data.len() as u64 >= CHUNK)
        {
            self.flush_data()?;
        }
        if self.data.is_empty() {
            self.data_off = off;
        }
        self.data.extend_from_slice(b);
        Ok(())
    }

    /// `[s, e)` is to be described as reading zeros.
    fn hole(&mut self, s: u64, e: u64) -> io::Result<()> {
        let e = e.min(self.size);
        if s >= e {
            return Ok(());
        }
        self.flush_data()?;
        match &mut self.hole {
            Some((_, he)) if *he == s => *he = e,
            _ => {
                self.flush_hole()?;
                self.hole = Some((s, e));
            }
        }
        Ok(())
    }

    /// Nothing to send for the block at `i` (the receiver has it).
    fn skip(&mut self) -> io::Result<()> {
        self.flush_data()?;
        self.flush_hole()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.flush_data()?;
        self.flush_hole()
    }
}

/// Sends one file. `remote`: the receiver's copy with `--update`.
///
/// # Errors
/// Reading the source (a file that shrank while read included) or writing the stream.
pub fn send_file<W: Write>(
    src: &Source,
    out: &mut Encoder<W>,
    (format, block): (Format, u64),
    finder: &mut RunFinder,
    remote: Option<&Remote>,
    meta: &FileMeta,
    progress: &Progress,
) -> Result<FileSummary, String> {
    let size = meta.size;
    let mut sum = FileSummary {
        name: src.name.clone(),
        size,
        ..Default::default()
    };
    let (runs, from) = finder.runs(&src.file, &src.path, size);
    sum.runs_from = Some(from);
    let mut digest = Digest::new(size, block);
    let mut em = Emitter {
        out,
        format,
        block,
        size,
        data_off: 0,
        data: Vec::new(),
        hole: None,
        sum: &mut sum,
    };
    let io_err = |e: io::Error| format!("{}: {e}", src.path.display());
    let write_err = |e: io::Error| format!("writing the stream: {e}");
    // Zero blocks between the runs: a hole, or (--update) only where the receiver has
    // data there.
    let gap = |em: &mut Emitter<'_, W>, s: u64, e: u64| -> io::Result<()> {
        match remote {
            None => em.hole(s, e),
            // Nothing between (a gap at the end of a file whose size is no multiple of
            // the block starts in the last block, already described).
            Some(_) if s >= e => Ok(()),
            Some(r) => {
                let (first, last) = (s / block, wire::blocks(e, block));
                let mut i = first;
                while i < last {
                    if r.nonzero(i) {
                        em.hole(i * block, (i + 1) * block)?;
                    } else {
                        em.skip()?;
                        if i as usize >= r.hashes.len() {
                            break;
                        }
                    }
                    i += 1;
                }
                Ok(())
            }
        }
    };
    let mut buf = vec![0u8; CHUNK as usize];
    let mut done = 0u64; // everything below is described
    for (s, e) in runs {
        let s = (s / block * block).max(done);
        let e = e.next_multiple_of(block).min(size);
        if s >= e {
            continue;
        }
        gap(&mut em, done, s).map_err(write_err)?;
        progress.hole(s - done);
        let mut off = s;
        while off < e {
            let n = CHUNK.min(e - off) as usize;
            src.file
                .read_exact_at(&mut buf[..n], off)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        format!("{}: the file shrank while it was sent", src.path.display())
                    }
                    _ => io_err(e),
                })?;
            em.sum.read_bytes += n as u64;
            for (j, b) in buf[..n].chunks(block as usize).enumerate() {
                let i = off / block + j as u64;
                let len = b.len() as u64;
                if is_zero(b) {
                    em.sum.zero_blocks += 1;
                    gap(&mut em, i * block, i * block + len).map_err(write_err)?;
                    continue;
                }
                let h = wire::block_hash(b);
                digest.push(i, &h);
                if remote.is_some_and(|r| r.same(i, &h, len)) {
                    em.sum.blocks_same += 1;
                    em.skip().map_err(write_err)?;
                } else {
                    em.data_block(i, b).map_err(write_err)?;
                }
            }
            progress.data(n as u64);
            off += n as u64;
        }
        done = e;
    }
    gap(&mut em, done, size).map_err(write_err)?;
    progress.hole(size - done);
    em.finish().map_err(write_err)?;
    if format == Format::Native {
        let d = digest.finish();
        let data_bytes = em.sum.data_bytes;
        em.out
            .record(&Record::End {
                size,
                data_bytes,
                digest: d,
            })
            .map_err(write_err)?;
        sum.digest = Some(d);
    }
    Ok(sum)
}

/// The file record of a source.
pub fn file_meta(src: &Source) -> FileMeta {
    let m = &src.meta;
    FileMeta {
        name: src.name.clone(),
        size: m.len(),
        mode: m.mode() & 0o7777,
        mtime_s: m.mtime(),
        mtime_ns: m.mtime_nsec() as u32,
    }
}

/// Reads the receiver's reply after a file record (`--update`).
///
/// # Errors
/// A refused or failed reply, in one line.
pub fn read_remote<R: Read>(d: &mut wire::Decoder<R>, block: u64) -> Result<Remote, String> {
    let (size, hashes) = d.sums().map_err(|e| format!("the receiver's reply: {e}"))?;
    if hashes.len() as u64 != wire::blocks(size, block) {
        return Err(format!(
            "the receiver's reply: {} block hashes for {size} bytes",
            hashes.len()
        ));
    }
    Ok(Remote::new(size, hashes, block))
}
