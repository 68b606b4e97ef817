//! `sparsefs send` / `sparsefs recv`: ship sparse files as data records and holes,
//! through a pipe, or over ssh with `--to` (and only the changed blocks with
//! `--update`).
//!
//! ```text
//!  send FILE...                                   recv DEST
//!   runs (mount index | SEEK_DATA | zero scan)     header, records checked (CRC)
//!   read data blocks, drop zero blocks  ──stream──> pwrite data, skip holes
//!   hash blocks -> digest                           hash blocks -> digest == sender's?
//!                       <──block hashes── (--update) temp + fsync + rename
//! ```
//! The stream format is in [`wire`]; `--format xfer-hole` writes baserock's
//! `DATA\nN\n<bytes>` / `HOLE\nN\n` records instead, for a receiver with only a shell.

pub mod recv;
pub mod sender;
pub mod source;
pub mod wire;

#[cfg(test)]
mod tests;

use crate::stats::human;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The stream format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The versioned, checked native stream ([`wire`]).
    Native,
    /// baserock's xfer-hole records (one file, no checks).
    XferHole,
}

/// Options of `sparsefs send`.
#[derive(Clone, Debug)]
pub struct SendOpts {
    /// Stream format.
    pub format: Format,
    /// Zero-detection and digest block.
    pub block: u64,
    /// `[USER@]HOST:PATH`: run the receiver over ssh.
    pub to: Option<String>,
    /// The ssh command (split on whitespace), default `ssh`.
    pub ssh: String,
    /// The sparsefs binary on the remote host.
    pub remote_bin: String,
    /// Send only the blocks that differ from the receiver's copy.
    pub update: bool,
    /// Ask the receiver to write in place.
    pub inplace: bool,
    /// Print a JSON summary.
    pub json: bool,
}

/// Progress on stderr when it is a terminal: data sent, holes skipped, rate, ETA.
pub struct Progress {
    bar: ProgressBar,
    data: std::cell::Cell<u64>,
    holes: std::cell::Cell<u64>,
}

impl Progress {
    /// A bar over `total` logical bytes (hidden unless stderr is a terminal).
    pub fn new(total: u64) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{wide_msg} [{bar:24}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        Self {
            bar,
            data: 0.into(),
            holes: 0.into(),
        }
    }

    /// No bar (the receiver: its sender, often on the same terminal, draws one).
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
            data: 0.into(),
            holes: 0.into(),
        }
    }

    fn show(&self) {
        if !self.bar.is_hidden() {
            self.bar.set_message(format!(
                "data {}, holes skipped {}",
                human(self.data.get()),
                human(self.holes.get())
            ));
        }
    }

    /// `n` bytes of data read (sent or found zero).
    pub fn data(&self, n: u64) {
        self.data.set(self.data.get() + n);
        self.bar.inc(n);
        self.show();
    }

    /// `n` bytes of holes passed without reading.
    pub fn hole(&self, n: u64) {
        self.holes.set(self.holes.get() + n);
        self.bar.inc(n);
        self.show();
    }

    fn done(&self) {
        self.bar.finish_and_clear();
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Why send or recv failed: bad input (nothing was written; exit 2) or a failure on
/// the way (exit 1). Either is one line.
#[derive(Debug)]
pub enum Failure {
    /// Refused before anything was read or written.
    BadInput(String),
    /// Failed while running.
    Failed(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
}

/// Splits `[USER@]HOST:PATH`.
///
/// # Errors
/// A target without `:` or with an empty host or path.
pub fn parse_target(t: &str) -> Result<(String, String), String> {
    match t.split_once(':') {
        Some((h, p)) if !h.is_empty() && !p.is_empty() => Ok((h.to_string(), p.to_string())),
        _ => Err(format!("invalid --to '{t}': expected [USER@]HOST:PATH")),
    }
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `sparsefs send FILE...`.
///
/// # Errors
/// One line: bad input (before anything is written), a failed read, a refused or failed
/// receiver.
pub fn send(paths: &[PathBuf], o: &SendOpts) -> Result<(), Failure> {
    let bad = |e: &str| Err(Failure::BadInput(e.to_string()));
    if o.update && o.to.is_none() {
        return bad("--update needs --to (the receiver answers with its block hashes)");
    }
    if o.inplace && o.to.is_none() {
        return bad("send --inplace needs --to (or give --inplace to recv)");
    }
    if o.format == Format::XferHole && (paths.len() != 1 || o.update || o.to.is_some()) {
        return bad("--format xfer-hole takes one file, without --to or --update");
    }
    if let Some(t) = &o.to {
        parse_target(t).map_err(Failure::BadInput)?;
        if o.ssh.split_ascii_whitespace().next().is_none() {
            return bad("empty --ssh command");
        }
    }
    if o.to.is_none() && std::io::stdout().is_terminal() {
        return bad("stdout is a terminal: pipe the stream to sparsefs recv, or use --to");
    }
    let sources = sender::open_sources(paths).map_err(Failure::BadInput)?;
    let started = Instant::now();
    let total: u64 = sources.iter().map(|s| s.meta.len()).sum();
    let progress = Progress::new(total);
    let mut finder = source::RunFinder::default();
    let mut child = None;
    let (out, reply): (Box<dyn Write>, Option<Box<dyn std::io::Read>>) = match &o.to {
        None => (Box::new(std::io::stdout().lock()), None),
        Some(t) => {
            let (host, path) = parse_target(t)?;
            let mut words = o.ssh.split_ascii_whitespace();
            let prog = words.next().expect("checked above");
            let mut remote = format!("{} recv {}", o.remote_bin, shell_quote(&path));
            if o.inplace {
                remote.push_str(" --inplace");
            }
            let mut c = Command::new(prog)
                .args(words)
                .arg(&host)
                .arg(&remote)
                .stdin(Stdio::piped())
                .stdout(if o.update {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .spawn()
                .map_err(|e| format!("running {prog}: {e}"))?;
            let w = c.stdin.take().expect("piped");
            let r = c
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn std::io::Read>);
            child = Some(c);
            (Box::new(w), r)
        }
    };
    let r = send_to(&sources, o, out, reply, &mut finder, &progress);
    progress.done();
    // The receiver's verdict comes first: a write error is often only its early exit.
    if let Some(mut c) = child {
        let status = c
            .wait()
            .map_err(|e| format!("waiting for the receiver: {e}"))?;
        if !status.success() {
            return Err(Failure::Failed(format!(
                "the receiver failed ({status}){}",
                r.as_ref()
                    .err()
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            )));
        }
    }
    let (sums, wire_bytes, reply_bytes) = r?;
    let secs = started.elapsed().as_secs_f64();
    let data: u64 = sums.iter().map(|s| s.data_bytes).sum();
    let size: u64 = sums.iter().map(|s| s.size).sum();
    let blocks_sent: u64 = sums.iter().map(|s| s.blocks_sent).sum();
    let blocks_same: u64 = sums.iter().map(|s| s.blocks_same).sum();
    let read: u64 = sums.iter().map(|s| s.read_bytes).sum();
    let holes: u64 = sums.iter().map(|s| s.hole_bytes).sum();
    if o.json {
        let files: Vec<String> = sums
            .iter()
            .map(|s| {
                format!(
                    "{{\"name\":{},\"size\":{},\"data_bytes\":{},\"blocks_sent\":{},\"blocks_same\":{},\"zero_blocks\":{},\"read_bytes\":{},\"data_records\":{},\"hole_records\":{},\"runs_from\":\"{}\"{}}}",
                    json_str(&s.name),
                    s.size,
                    s.data_bytes,
                    s.blocks_sent,
                    s.blocks_same,
                    s.zero_blocks,
                    s.read_bytes,
                    s.data_records,
                    s.hole_records,
                    s.runs_from.map_or("none", |r| r.name()),
                    s.digest
                        .map(|d| format!(",\"digest\":\"{}\"", hex(&d)))
                        .unwrap_or_default()
                )
            })
            .collect();
        let line = format!(
            "{{\"files\":[{}],\"size\":{size},\"data_bytes\":{data},\"blocks_sent\":{blocks_sent},\"blocks_same\":{blocks_same},\"read_bytes\":{read},\"hole_bytes\":{},\"wire_bytes\":{wire_bytes},\"reply_bytes\":{reply_bytes},\"mount_requests\":{},\"seconds\":{secs:.3}}}",
            files.join(","),
            holes,
            finder.mount_requests,
        );
        // The summary goes where the stream does not.
        if o.to.is_some() {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    } else {
        eprintln!(
            "sparsefs send: {} files, {}: sent {} of data ({} blocks{}), {} of holes not read, {} on the wire, {:.2} s ({}/s)",
            sums.len(),
            human(size),
            human(data),
            blocks_sent,
            if o.update {
                format!(", {blocks_same} unchanged")
            } else {
                String::new()
            },
            human(holes),
            human(wire_bytes),
            secs,
            human((size as f64 / secs.max(1e-6)) as u64)
        );
    }
    Ok(())
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// What was sent: per file, stream bytes, reply bytes (`--update`).
type Sent = (Vec<sender::FileSummary>, u64, u64);

fn send_to(
    sources: &[sender::Source],
    o: &SendOpts,
    out: Box<dyn Write>,
    reply: Option<Box<dyn std::io::Read>>,
    finder: &mut source::RunFinder,
    progress: &Progress,
) -> Result<Sent, String> {
    let mut enc = wire::Encoder::new(std::io::BufWriter::with_capacity(1 << 20, out));
    let werr = |e: std::io::Error| format!("writing the stream: {e}");
    let mut replies = reply.map(wire::Decoder::new);
    if o.format == Format::Native {
        enc.header(wire::Header {
            flags: if o.update { wire::FLAG_UPDATE } else { 0 },
            block: o.block as u32,
        })
        .map_err(werr)?;
    }
    let mut sums = Vec::new();
    for src in sources {
        let meta = sender::file_meta(src);
        if o.format == Format::Native {
            enc.record(&wire::Record::File(meta.clone()))
                .map_err(werr)?;
        }
        let sum = match replies.as_mut() {
            // The receiver hashes its copy while this end hashes the source.
            Some(d) => {
                enc.flush().map_err(werr)?;
                let scan = sender::scan(src, o.block, finder, &meta, progress)?;
                let remote = sender::read_remote(d, o.block)?;
                sender::send_update(src, &mut enc, o.block, &scan, &remote, &meta)?
            }
            None => sender::send_file(src, &mut enc, (o.format, o.block), finder, &meta, progress)?,
        };
        sums.push(sum);
    }
    if o.format == Format::Native {
        enc.record(&wire::Record::StreamEnd {
            files: sources.len() as u32,
        })
        .map_err(werr)?;
    }
    enc.flush().map_err(werr)?;
    let bytes = enc.bytes;
    drop(enc);
    Ok((sums, bytes, replies.map_or(0, |d| d.bytes)))
}

/// `sparsefs recv DEST`: reads a native stream from stdin.
///
/// # Errors
/// One line; the destination keeps its old content (or does not appear).
pub fn recv_cmd(dest: &std::path::Path, o: &recv::RecvOpts, json: bool) -> Result<(), Failure> {
    let d = recv::Dest::resolve(dest).map_err(Failure::BadInput)?;
    if std::io::stdin().is_terminal() {
        return Err(Failure::BadInput(
            "stdin is a terminal: pipe a stream of sparsefs send into recv".into(),
        ));
    }
    let started = Instant::now();
    let progress = Progress::hidden();
    let r = recv::recv(
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        &d,
        o,
        &progress,
    );
    progress.done();
    let s = r?;
    let secs = started.elapsed().as_secs_f64();
    let size: u64 = s.files.iter().map(|f| f.1).sum();
    if json {
        let files: Vec<String> = s
            .files
            .iter()
            .map(|(n, sz)| format!("{{\"path\":{},\"size\":{sz}}}", json_str(n)))
            .collect();
        eprintln!(
            "{{\"files\":[{}],\"size\":{size},\"data_bytes\":{},\"data_records\":{},\"punched\":{},\"wire_bytes\":{},\"old_read_bytes\":{},\"reply_bytes\":{},\"stale_removed\":{},\"cloned\":{},\"seconds\":{secs:.3}}}",
            files.join(","),
            s.data_bytes,
            s.data_records,
            s.punched,
            s.wire_bytes,
            s.old_read_bytes,
            s.reply_bytes,
            s.stale_removed,
            s.cloned
        );
    } else {
        eprintln!(
            "sparsefs recv: {} files, {}: wrote {} of data in {} writes{}{}, {:.2} s",
            s.files.len(),
            human(size),
            human(s.data_bytes),
            s.data_records,
            if s.punched > 0 {
                format!(", punched {}", human(s.punched))
            } else {
                String::new()
            },
            if s.stale_removed > 0 {
                format!(
                    ", removed {} stale temporaries of a killed recv",
                    s.stale_removed
                )
            } else {
                String::new()
            },
            secs
        );
    }
    Ok(())
}
