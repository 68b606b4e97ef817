//! The sending side: reads each file's data runs block by block (holes are never read),
//! drops all-zero blocks, hashes the rest, and writes records (native or xfer-hole).
//! With `--update` it hashes the source while the receiver hashes its copy ([`scan`]),
//! then reads the receiver's block hashes and sends only the blocks that differ
//! ([`send_update`]).

use super::source::{RunFinder, RunsFrom};
use super::wire::{self, Digest, Encoder, FileMeta, Hash, Record};
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
    /// Bytes read from the source (`--update` reads the blocks it sends twice).
    pub read_bytes: u64,
    /// Bytes passed without reading (holes).
    pub hole_bytes: u64,
    /// Data records.
    pub data_records: u64,
    /// Hole records.
    pub hole_records: u64,
    /// Where the runs came from.
    pub runs_from: Option<RunsFrom>,
    /// The logical digest (native format).
    pub digest: Option<Hash>,
}

impl FileSummary {
    /// Adds the counts of the walk over the file's blocks.
    fn take_walk(&mut self, w: &FileSummary) {
        self.read_bytes += w.read_bytes;
        self.hole_bytes += w.hole_bytes;
        self.zero_blocks += w.zero_blocks;
        self.runs_from = w.runs_from;
    }
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
    sums: wire::BlockSums,
    block: u64,
}

impl Remote {
    /// The remote copy these block hashes describe.
    pub fn new(sums: wire::BlockSums, block: u64) -> Self {
        Self { sums, block }
    }

    /// The receiver's blocks holding a non-zero byte among `[first, last)`.
    fn data_within(&self, first: u64, last: u64) -> impl Iterator<Item = u64> + '_ {
        self.sums.within(first, last).iter().map(|(j, _)| *j)
    }

    /// True if the receiver's block `i` equals `h` (of the same length).
    fn same(&self, i: u64, h: &Hash, len: u64) -> bool {
        wire::block_len(i, self.sums.size, self.block) == len
            && self.sums.get(i).is_some_and(|r| r == h)
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

/// Calls `each(i, bytes)` for every block of `src`'s data runs that holds a non-zero
/// byte, in ascending order, reading the runs in chunks of [`CHUNK`] (holes are never
/// read). Fills `sum`'s read, zero-block and hole counts, and the progress.
///
/// # Errors
/// Reading the source (a file that shrank while read included) or `each`'s error.
fn walk_blocks(
    src: &Source,
    size: u64,
    block: u64,
    finder: &mut RunFinder,
    sum: &mut FileSummary,
    progress: &Progress,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let (runs, from) = finder.runs(&src.file, &src.path, size);
    sum.runs_from = Some(from);
    let mut buf = vec![0u8; CHUNK as usize];
    let mut done = 0u64; // everything below is read or passed
    for (s, e) in runs {
        let s = (s / block * block).max(done);
        let e = e.next_multiple_of(block).min(size);
        if s >= e {
            continue;
        }
        sum.hole_bytes += s - done;
        progress.hole(s - done);
        let mut off = s;
        while off < e {
            let n = CHUNK.min(e - off) as usize;
            read_at(src, &mut buf[..n], off)?;
            sum.read_bytes += n as u64;
            for (j, b) in buf[..n].chunks(block as usize).enumerate() {
                if is_zero(b) {
                    sum.zero_blocks += 1;
                } else {
                    each(off / block + j as u64, b)?;
                }
            }
            progress.data(n as u64);
            off += n as u64;
        }
        done = e;
    }
    sum.hole_bytes += size - done;
    progress.hole(size - done);
    Ok(())
}

fn read_at(src: &Source, buf: &mut [u8], off: u64) -> Result<(), String> {
    src.file
        .read_exact_at(buf, off)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                format!("{}: the file shrank while it was sent", src.path.display())
            }
            _ => format!("{}: {e}", src.path.display()),
        })
}

fn write_err(e: io::Error) -> String {
    format!("writing the stream: {e}")
}

/// Sends one file whole: its non-zero blocks as data, everything else as holes.
///
/// # Errors
/// Reading the source (a file that shrank while read included) or writing the stream.
pub fn send_file<W: Write>(
    src: &Source,
    out: &mut Encoder<W>,
    (format, block): (Format, u64),
    finder: &mut RunFinder,
    meta: &FileMeta,
    progress: &Progress,
) -> Result<FileSummary, String> {
    let size = meta.size;
    let mut sum = FileSummary {
        name: src.name.clone(),
        size,
        ..Default::default()
    };
    let mut walked = FileSummary::default();
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
    let mut done = 0u64; // everything below is described
    walk_blocks(src, size, block, finder, &mut walked, progress, |i, b| {
        em.hole(done, i * block).map_err(write_err)?;
        digest.push(i, &wire::block_hash(b));
        em.data_block(i, b).map_err(write_err)?;
        done = i * block + b.len() as u64;
        Ok(())
    })?;
    em.hole(done, size).map_err(write_err)?;
    em.finish().map_err(write_err)?;
    sum.take_walk(&walked);
    if format == Format::Native {
        end_record(out, &mut sum, digest)?;
    }
    Ok(sum)
}

fn end_record<W: Write>(
    out: &mut Encoder<W>,
    sum: &mut FileSummary,
    digest: Digest,
) -> Result<(), String> {
    let d = digest.finish();
    out.record(&Record::End {
        size: sum.size,
        data_bytes: sum.data_bytes,
        digest: d,
    })
    .map_err(write_err)?;
    sum.digest = Some(d);
    Ok(())
}

/// The hashes of a source's non-zero blocks, read before the receiver's reply is
/// (`--update`): the sender hashes its copy while the receiver hashes its own.
pub struct Scan {
    /// `(block index, hash)`, ascending.
    blocks: Vec<(u64, Hash)>,
    /// The reads, zero blocks, holes and where the runs came from.
    sum: FileSummary,
}

/// Reads and hashes the non-zero blocks of `src` (holes are not read).
///
/// # Errors
/// Reading the source.
pub fn scan(
    src: &Source,
    block: u64,
    finder: &mut RunFinder,
    meta: &FileMeta,
    progress: &Progress,
) -> Result<Scan, String> {
    let mut sum = FileSummary::default();
    let mut blocks = Vec::new();
    walk_blocks(src, meta.size, block, finder, &mut sum, progress, |i, b| {
        blocks.push((i, wire::block_hash(b)));
        Ok(())
    })?;
    Ok(Scan { blocks, sum })
}

/// Sends the blocks of a scanned file that differ from the receiver's copy: each is
/// read again (consecutive ones in one read) and must hash as it did in the scan, or
/// the file changed while it was sent. Zero blocks become holes only where the
/// receiver has data.
///
/// # Errors
/// Reading the source, a source changed since the scan, writing the stream.
pub fn send_update<W: Write>(
    src: &Source,
    out: &mut Encoder<W>,
    block: u64,
    scan: &Scan,
    remote: &Remote,
    meta: &FileMeta,
) -> Result<FileSummary, String> {
    let size = meta.size;
    let mut sum = FileSummary {
        name: src.name.clone(),
        size,
        ..Default::default()
    };
    let mut digest = Digest::new(size, block);
    let mut em = Emitter {
        out,
        format: Format::Native,
        block,
        size,
        data_off: 0,
        data: Vec::new(),
        hole: None,
        sum: &mut sum,
    };
    // Holes over the receiver's data blocks in [s, e) only (adjacent ones merge).
    let gap = |em: &mut Emitter<'_, W>, s: u64, e: u64| -> io::Result<()> {
        if s < e {
            for i in remote.data_within(s / block, wire::blocks(e, block)) {
                em.hole(i * block, (i + 1) * block)?;
            }
        }
        Ok(())
    };
    let mut buf = vec![0u8; CHUNK as usize];
    // Reads the blocks of `run` again (one read) and sends them.
    let flush = |em: &mut Emitter<'_, W>, buf: &mut [u8], run: &[(u64, Hash)]| {
        let Some(&(first, _)) = run.first() else {
            return Ok(());
        };
        let off = first * block;
        let n = (run.len() as u64 * block).min(size - off) as usize;
        read_at(src, &mut buf[..n], off)?;
        em.sum.read_bytes += n as u64;
        for ((i, h), b) in run.iter().zip(buf[..n].chunks(block as usize)) {
            if wire::block_hash(b) != *h {
                return Err(format!(
                    "{}: the file changed while it was sent",
                    src.path.display()
                ));
            }
            em.data_block(*i, b).map_err(write_err)?;
        }
        Ok(())
    };
    // Differing blocks pending one read: `scan.blocks[run]`, consecutive.
    let mut run = 0..0;
    let mut done = 0u64; // everything below is described, or pending in `run`
    for (k, (i, h)) in scan.blocks.iter().enumerate() {
        let (off, len) = (i * block, wire::block_len(*i, size, block));
        digest.push(*i, h);
        let same = remote.same(*i, h, len);
        let joins = !same && !run.is_empty() && done == off && (run.len() as u64) * block < CHUNK;
        if !joins {
            flush(&mut em, &mut buf, &scan.blocks[run])?;
            gap(&mut em, done, off).map_err(write_err)?;
            run = k..k;
        }
        if same {
            em.sum.blocks_same += 1;
            em.skip().map_err(write_err)?;
            run = k + 1..k + 1;
        } else {
            run.end = k + 1;
        }
        done = off + len;
    }
    flush(&mut em, &mut buf, &scan.blocks[run])?;
    gap(&mut em, done, size).map_err(write_err)?;
    em.finish().map_err(write_err)?;
    sum.take_walk(&scan.sum);
    end_record(out, &mut sum, digest)?;
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
    let sums = d
        .sums(block)
        .map_err(|e| format!("the receiver's reply: {e}"))?;
    Ok(Remote::new(sums, block))
}
