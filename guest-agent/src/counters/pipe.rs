//! The named pipes custom counters are fed through, as ccad reads them.
//!
//! A feeder writes lines `name = value` or `name : value` (the name is a counter of
//! ccad.conf, the value a number: `31`, `-2.5`, `.0157`, `1e3`); a line `.` or a form feed
//! ends the set, and the set's values go to the host. Everything else (a status page's other
//! lines, a name ccad.conf does not declare, a value that is not a finite number, bytes that are
//! not UTF-8, a line longer than [`MAX_LINE`]) is ignored and counted in [`PipeStats`]: feeding
//! more lines than needed is how ccad's own examples work.
//!
//! [`PipeParser`] is pure (bytes in, sets out, in any chunking); [`create_fifo`] and [`run`]
//! are the shell. The reader opens the FIFO read-write, so it never sees end-of-file when a
//! feeder closes and never blocks the agent (`echo x > pipe` blocks the feeder until there is a
//! reader, which is always). A line is ended by a newline: a feeder that closes without one
//! continues its line with its next write. Reading is bounded: at most [`MAX_READ_RATE`] bytes
//! a second per pipe; a faster feeder is made to wait by the pipe itself, as a full pipe does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The longest line taken; the rest of a longer one is skipped up to its newline.
pub const MAX_LINE: usize = 4096;
/// Bytes read from one pipe per second at most.
pub const MAX_READ_RATE: usize = 1 << 20;
/// How often a pipe's ignored lines are summed up in the log (when there were any).
pub const REPORT_EVERY: Duration = Duration::from_secs(300);
/// The mode of a FIFO the agent creates: any process in the guest may feed it (ccad's way);
/// an existing FIFO keeps its own.
pub const FIFO_MODE: u32 = 0o622;

/// What one line of a pipe is.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// `name = value` or `name : value`.
    Value { name: &'a str, value: f64 },
    /// `.` (or a form feed): the set is complete.
    EndOfSet,
    /// Not a counter line.
    Ignored(Ignored),
}

/// Why a line was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Empty, or only blanks.
    Blank,
    /// No `=` or `:` after a name.
    NotAValue,
    /// The value is not a finite number.
    BadNumber,
    /// Not UTF-8.
    NotText,
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Line<'_> {
    let Ok(line) = std::str::from_utf8(line) else {
        return Line::Ignored(Ignored::NotText);
    };
    // Blanks and a CRLF's CR; not the form feed, which is a line of its own.
    let line = line.trim_matches([' ', '\t', '\r']);
    if line.is_empty() {
        return Line::Ignored(Ignored::Blank);
    }
    if line == "." || line == "\u{c}" {
        return Line::EndOfSet;
    }
    let Some(at) = line.find(['=', ':']) else {
        return Line::Ignored(Ignored::NotAValue);
    };
    let (name, value) = (line[..at].trim(), line[at + 1..].trim());
    if name.is_empty() {
        return Line::Ignored(Ignored::NotAValue);
    }
    match value.parse::<f64>() {
        Ok(value) if value.is_finite() => Line::Value { name, value },
        _ => Line::Ignored(Ignored::BadNumber),
    }
}

/// What a pipe's reader has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipeStats {
    pub bytes: u64,
    pub lines: u64,
    /// Values taken into a set.
    pub values: u64,
    pub sets: u64,
    /// Counter lines naming no counter this pipe feeds.
    pub unknown: u64,
    /// Lines that are not counter lines (blank, no separator, not a number, not text).
    pub malformed: u64,
    /// Lines longer than [`MAX_LINE`].
    pub too_long: u64,
}

impl PipeStats {
    /// Lines ignored, of every kind.
    pub fn ignored(&self) -> u64 {
        self.unknown + self.malformed + self.too_long
    }
}

/// A complete set: (counter index, value) in the order the lines came, each counter once
/// (its last value in the set).
pub type Set = Vec<(usize, f64)>;

/// Bytes of a pipe in, complete sets out. Holds at most [`MAX_LINE`] bytes of a partial line
/// and one value per counter of a partial set.
#[derive(Debug, Clone)]
pub struct PipeParser {
    /// Counter name -> the caller's index.
    names: HashMap<String, usize>,
    line: Vec<u8>,
    /// The current line passed [`MAX_LINE`]: skip to its end.
    skipping: bool,
    set: Set,
    stats: PipeStats,
    /// The last line ignored, for the log.
    last_ignored: Option<String>,
}

impl PipeParser {
    /// A parser for a pipe that feeds the counters `names` (name, index).
    pub fn new(names: impl IntoIterator<Item = (String, usize)>) -> PipeParser {
        PipeParser {
            names: names.into_iter().collect(),
            line: Vec::new(),
            skipping: false,
            set: Vec::new(),
            stats: PipeStats::default(),
            last_ignored: None,
        }
    }

    pub fn stats(&self) -> PipeStats {
        self.stats
    }

    /// Bytes of the partial line held.
    pub fn pending_line_len(&self) -> usize {
        self.line.len()
    }

    /// The last ignored line (escaped, cut short) since the last call.
    pub fn take_last_ignored(&mut self) -> Option<String> {
        self.last_ignored.take()
    }

    /// Takes `bytes` and returns the sets they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Set> {
        self.stats.bytes += bytes.len() as u64;
        let mut sets = Vec::new();
        let mut rest = bytes;
        while let Some(at) = rest.iter().position(|&b| b == b'\n' || b == 0x0c) {
            let end = rest[at];
            self.append(&rest[..at]);
            self.end_line(&mut sets);
            if end == 0x0c {
                self.end_set(&mut sets);
            }
            rest = &rest[at + 1..];
        }
        self.append(rest);
        sets
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        if self.line.len() + bytes.len() > MAX_LINE {
            self.skipping = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, sets: &mut Vec<Set>) {
        if std::mem::take(&mut self.skipping) {
            self.stats.lines += 1;
            self.stats.too_long += 1;
            self.last_ignored = Some(format!("a line longer than {MAX_LINE} bytes"));
            return;
        }
        let line = std::mem::take(&mut self.line);
        match parse_line(&line) {
            // A bare form feed ends the set on its own (feed() ends it); no empty line counted.
            Line::Ignored(Ignored::Blank) if line.is_empty() => return,
            Line::EndOfSet => {
                self.stats.lines += 1;
                self.end_set(sets);
            }
            Line::Value { name, value } => {
                self.stats.lines += 1;
                match self.names.get(name) {
                    Some(&index) => {
                        self.stats.values += 1;
                        match self.set.iter_mut().find(|(i, _)| *i == index) {
                            Some(slot) => slot.1 = value,
                            None => self.set.push((index, value)),
                        }
                    }
                    None => {
                        self.stats.unknown += 1;
                        self.remember(&line);
                    }
                }
            }
            Line::Ignored(_) => {
                self.stats.lines += 1;
                self.stats.malformed += 1;
                self.remember(&line);
            }
        }
        // Keep the buffer's allocation for the next line.
        self.line = line;
        self.line.clear();
    }

    fn end_set(&mut self, sets: &mut Vec<Set>) {
        self.stats.sets += 1;
        sets.push(std::mem::take(&mut self.set));
    }

    fn remember(&mut self, line: &[u8]) {
        let shown = &line[..line.len().min(80)];
        self.last_ignored = Some(appmon_wire::text::escape_bytes(shown).into_owned());
    }
}

/// A pipe path that cannot be read from.
#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    #[error("{path} exists and is a regular file, not a named pipe")]
    RegularFile { path: PathBuf },
    #[error("{path} exists and is not a named pipe")]
    NotAFifo { path: PathBuf },
    #[error("cannot create the named pipe {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot open the named pipe {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Makes sure `path` is a FIFO: creates it ([`FIFO_MODE`]) if nothing is there, takes an
/// existing FIFO as it is, refuses anything else. The agent never removes it: a feeder that
/// writes to the path while the agent restarts must find the FIFO, not create a file.
pub fn create_fifo(path: &Path) -> Result<(), PipeError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_fifo() => Ok(()),
        Ok(meta) if meta.file_type().is_file() => Err(PipeError::RegularFile {
            path: path.to_owned(),
        }),
        Ok(_) => Err(PipeError::NotAFifo {
            path: path.to_owned(),
        }),
        Err(_) => {
            let mode = nix::sys::stat::Mode::from_bits_truncate(FIFO_MODE);
            nix::unistd::mkfifo(path, mode).map_err(|source| PipeError::Create {
                path: path.to_owned(),
                source,
            })?;
            // mkfifo applies the umask; the mode is what the agent promises.
            let _ = nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                path,
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            );
            Ok(())
        }
    }
}

/// Opens the FIFO at `path` for reading without ever seeing end-of-file.
pub fn open(path: &Path) -> Result<tokio::net::unix::pipe::Receiver, PipeError> {
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(|source| PipeError::Open {
            path: path.to_owned(),
            source,
        })
}

/// A complete set, tagged with what the reader was started with.
#[derive(Debug, Clone, PartialEq)]
pub struct PipeSet {
    pub pipe: usize,
    pub values: Set,
}

/// Reads `receiver` for ever, sending each complete set to `sets`; ends when `sets` closes.
pub async fn run(
    pipe: usize,
    path: PathBuf,
    mut receiver: tokio::net::unix::pipe::Receiver,
    mut parser: PipeParser,
    sets: mpsc::Sender<PipeSet>,
) {
    let mut buf = vec![0u8; 4096];
    // The read budget, refilled every tenth of a second.
    let slice = Duration::from_millis(100);
    let budget = MAX_READ_RATE / 10;
    let mut window = tokio::time::Instant::now();
    let mut used = 0usize;
    let mut reported = parser.stats();
    let mut next_report = window + REPORT_EVERY;
    loop {
        if used >= budget {
            debug!(path = %path.display(), "pipe read budget used up; the feeder waits");
            tokio::time::sleep_until(window + slice).await;
        }
        let now = tokio::time::Instant::now();
        if now >= window + slice {
            window = now;
            used = 0;
        }
        let n = match receiver.read(&mut buf).await {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "reading the counter pipe failed; no more values from it");
                return;
            }
        };
        used += n;
        for values in parser.feed(&buf[..n]) {
            if sets.send(PipeSet { pipe, values }).await.is_err() {
                return;
            }
        }
        let now = tokio::time::Instant::now();
        if now >= next_report {
            next_report = now + REPORT_EVERY;
            let stats = parser.stats();
            if stats.ignored() > reported.ignored() {
                report(&path, &reported, &stats, parser.take_last_ignored());
            }
            reported = stats;
        }
    }
}

fn report(path: &Path, before: &PipeStats, now: &PipeStats, example: Option<String>) {
    let garbage = now.too_long - before.too_long;
    let message = "lines ignored on the counter pipe";
    let (unknown, malformed) = (
        now.unknown - before.unknown,
        now.malformed - before.malformed,
    );
    let example = example.unwrap_or_default();
    if garbage > 0 {
        warn!(path = %path.display(), unknown, malformed, too_long = garbage, last = %example, "{message}");
    } else {
        info!(path = %path.display(), unknown, malformed, last = %example, "{message}");
    }
}

#[cfg(test)]
mod tests;
