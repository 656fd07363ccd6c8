//! The process table: every process launched for the host, from its launch until the host has
//! released it. Pure: it records what the shell did and answers what the host asks; it starts,
//! signals and waits for nothing itself.
//!
//! # Rules
//!
//! - An id names one process until the host releases it; a launch with an id in the table is
//!   refused (`BadRequest`), whether that process runs or has ended.
//! - At most `max` processes are in the table at once, running or ended and not yet released:
//!   what the host has not read yet is kept, and memory stays bounded (`max` × two tails). A
//!   launch beyond it is refused (`RateLimited`); the host releases ended processes to make room.
//! - A launch request is checked for shape before anything else: an argv that is empty, has
//!   more than [`MAX_ARGS`] arguments or more than [`MAX_LAUNCH_BYTES`] bytes of arguments and
//!   environment together, more than [`MAX_ENV`] variables, a variable name with `=` or a NUL
//!   anywhere, or a working directory that is not absolute (`BadRequest`).
//! - Polls are reads: any number of them, from any number of waiters, change nothing.
//! - A signal for a running process goes to its process group; for an ended one it is not sent
//!   and the answer is how the process ended.
//! - Release forgets an ended process; a running one is not released (`BadRequest`: signal it
//!   first), an unknown id is `NotFound`.
//! - The end of a process is taken once, and only for the pid it was started with.

use std::collections::BTreeMap;

use appmon_wire::text::{limits, Blob, Limit};
use appmon_wire::{
    ErrorCode, LaunchSpec, OutputChunk, OutputStream, ProcessId, ProcessState, ProcessStatus, Text,
    WireError,
};

use super::spawn::{lock, Ended, SharedTail};

/// Arguments of one launch, `argv[0]` included.
pub const MAX_ARGS: usize = 256;
/// Environment variables of one launch.
pub const MAX_ENV: usize = 64;
/// Bytes of arguments and environment of one launch, together.
pub const MAX_LAUNCH_BYTES: usize = 32 * 1024;

/// Why a request is refused: becomes the `Error` the host gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    fn not_found(id: &str) -> Refusal {
        Refusal::new(
            ErrorCode::NotFound,
            format!(
                "no process {} in the guest's table",
                appmon_wire::escape(id)
            ),
        )
    }

    pub fn to_wire(&self) -> WireError {
        WireError::new(self.code.clone(), self.message.clone())
    }
}

/// One process in the table.
#[derive(Debug, Clone)]
pub struct Entry {
    pub state: ProcessState,
    pub command: Text<limits::Command>,
    pub user: Text<limits::UserName>,
    pub started_unix_ms: u64,
    pub stdout: SharedTail,
    pub stderr: SharedTail,
}

/// Where a signal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTarget {
    /// The running process's group (its pid).
    Group(u32),
    /// The process has ended: nothing to send; this is how it ended.
    Ended(ProcessStatus),
}

/// The table. See the module documentation.
#[derive(Debug, Default)]
pub struct Table {
    /// By the id's text (a [`ProcessId`] holds it, bounded).
    entries: BTreeMap<String, Entry>,
    max: usize,
}

impl Table {
    pub fn new(max: usize) -> Table {
        Table {
            entries: BTreeMap::new(),
            max,
        }
    }

    /// A reloaded limit: applies to later launches; nothing in the table is dropped.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a launch may go ahead as far as the table is concerned (shape, id, room).
    pub fn check_launch(&self, spec: &LaunchSpec) -> Result<(), Refusal> {
        let bad = |message: String| Err(Refusal::new(ErrorCode::BadRequest, message));
        if spec.argv.is_empty() {
            return bad("argv is empty: name the program to launch".into());
        }
        if spec.argv.len() > MAX_ARGS {
            return bad(format!(
                "argv has {} arguments; at most {MAX_ARGS}",
                spec.argv.len()
            ));
        }
        if spec.env.len() > MAX_ENV {
            return bad(format!(
                "{} environment variables; at most {MAX_ENV}",
                spec.env.len()
            ));
        }
        let bytes: usize = spec.argv.iter().map(Text::len).sum::<usize>()
            + spec
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if bytes > MAX_LAUNCH_BYTES {
            return bad(format!(
                "{bytes} bytes of arguments and environment; at most {MAX_LAUNCH_BYTES}"
            ));
        }
        let nul = spec.argv.iter().any(|a| a.as_str().contains('\0'))
            || spec.env.iter().any(|(_, v)| v.as_str().contains('\0'));
        if nul {
            return bad("an argument or environment value contains a NUL byte".into());
        }
        if let Some((name, _)) = spec
            .env
            .iter()
            .find(|(k, _)| k.is_empty() || k.as_str().contains(['=', '\0']))
        {
            return bad(format!(
                "\"{}\" is not an environment variable name",
                appmon_wire::escape(name.as_str())
            ));
        }
        if let Some(cwd) = &spec.cwd {
            if !cwd.as_str().starts_with('/') || cwd.as_str().contains('\0') {
                return bad(format!(
                    "working directory \"{}\" is not an absolute path",
                    appmon_wire::escape(cwd.as_str())
                ));
            }
        }
        if spec.id.is_empty() {
            return bad("the process id is empty".into());
        }
        if self.entries.contains_key(spec.id.as_str()) {
            return bad(format!(
                "process id {} is in use: release it first",
                spec.id
            ));
        }
        if self.entries.len() >= self.max {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "{} managed processes are in the guest's table (processes.max = {}): release ended ones first",
                    self.entries.len(),
                    self.max
                ),
            ));
        }
        Ok(())
    }

    /// Records a launched process (or one that failed to start). The id must have passed
    /// [`Table::check_launch`].
    pub fn insert(&mut self, id: ProcessId, entry: Entry) -> ProcessStatus {
        let status = status_of(&id, &entry);
        self.entries.insert(id.into_string(), entry);
        status
    }

    /// Takes the end of process `id` started as `pid`; returns its new status, or `None` when
    /// the table has no such running process (a stale or repeated report).
    pub fn ended(&mut self, id: &str, pid: u32, ended: Ended) -> Option<ProcessStatus> {
        let entry = self.entries.get_mut(id)?;
        if entry.state != (ProcessState::Running { pid }) {
            return None;
        }
        entry.state = match ended {
            Ended::Exited(code) => ProcessState::Exited { code },
            Ended::Killed(signal) => ProcessState::Killed { signal },
        };
        Some(status_of_key(id, entry))
    }

    pub fn poll(&self, id: &str) -> Result<ProcessStatus, Refusal> {
        self.entries
            .get(id)
            .map(|e| status_of_key(id, e))
            .ok_or_else(|| Refusal::not_found(id))
    }

    pub fn signal_target(&self, id: &str) -> Result<SignalTarget, Refusal> {
        let entry = self.entries.get(id).ok_or_else(|| Refusal::not_found(id))?;
        Ok(match entry.state {
            ProcessState::Running { pid } => SignalTarget::Group(pid),
            _ => SignalTarget::Ended(status_of_key(id, entry)),
        })
    }

    pub fn release(&mut self, id: &str) -> Result<(), Refusal> {
        let entry = self.entries.get(id).ok_or_else(|| Refusal::not_found(id))?;
        if let ProcessState::Running { pid } = entry.state {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "process {} is still running as pid {pid}: signal it and wait for its end first",
                    appmon_wire::escape(id)
                ),
            ));
        }
        self.entries.remove(id);
        Ok(())
    }

    /// Up to one chunk of `stream` from position `from` on: from the oldest byte kept when
    /// `from` is older (the chunk's `offset` then says where it starts), empty at the end.
    pub fn read_output(
        &self,
        id: &ProcessId,
        stream: OutputStream,
        from: u64,
    ) -> Result<OutputChunk, Refusal> {
        let entry = self
            .entries
            .get(id.as_str())
            .ok_or_else(|| Refusal::not_found(id.as_str()))?;
        let tail = match stream {
            OutputStream::Stdout => lock(&entry.stdout),
            OutputStream::Stderr => lock(&entry.stderr),
        };
        let (offset, bytes) = tail.read(from, limits::OutputChunk::MAX);
        let total = tail.total();
        let eof = tail.is_closed() && offset + bytes.len() as u64 == total;
        let data =
            Blob::new(bytes).map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
        Ok(OutputChunk {
            id: id.clone(),
            stream,
            offset,
            data,
            total,
            eof,
        })
    }

    /// Every process, by id.
    pub fn statuses(&self) -> Vec<ProcessStatus> {
        self.entries
            .iter()
            .map(|(id, e)| status_of_key(id, e))
            .collect()
    }

    /// The running processes: id and pid.
    pub fn running(&self) -> Vec<(ProcessId, u32)> {
        self.entries
            .iter()
            .filter_map(|(id, e)| match e.state {
                ProcessState::Running { pid } => Some((Text::truncating(id.as_str()), pid)),
                _ => None,
            })
            .collect()
    }
}

fn status_of(id: &ProcessId, entry: &Entry) -> ProcessStatus {
    ProcessStatus {
        id: id.clone(),
        state: entry.state.clone(),
        command: entry.command.clone(),
        user: entry.user.clone(),
        started_unix_ms: entry.started_unix_ms,
        stdout_bytes: lock(&entry.stdout).total(),
        stderr_bytes: lock(&entry.stderr).total(),
    }
}

fn status_of_key(id: &str, entry: &Entry) -> ProcessStatus {
    status_of(&Text::truncating(id), entry)
}

/// The command line as listings show it: arguments joined by spaces, those with spaces or
/// quotes in single quotes, cut to the field's limit.
pub fn command_line<'a>(argv: impl IntoIterator<Item = &'a str>) -> Text<limits::Command> {
    let words: Vec<String> = argv
        .into_iter()
        .map(|a| {
            if !a.is_empty() && !a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                a.to_owned()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect();
    Text::truncating(words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processes::spawn::Tail;

    fn spec(id: &str, argv: &[&str]) -> LaunchSpec {
        LaunchSpec {
            id: Text::new(id).expect("short"),
            argv: argv.iter().map(|a| Text::new(*a).expect("short")).collect(),
            env: Vec::new(),
            cwd: None,
            user: None,
        }
    }

    fn entry(state: ProcessState) -> Entry {
        Entry {
            state,
            command: "/bin/app".into(),
            user: "root".into(),
            started_unix_ms: 1000,
            stdout: Tail::shared(8),
            stderr: Tail::shared(8),
        }
    }

    fn running(table: &mut Table, id: &str, pid: u32) {
        table.check_launch(&spec(id, &["/bin/app"])).expect("fits");
        table.insert(
            Text::new(id).expect("short"),
            entry(ProcessState::Running { pid }),
        );
    }

    fn code(result: Result<impl std::fmt::Debug, Refusal>) -> ErrorCode {
        result.expect_err("refused").code
    }

    #[test]
    fn a_launch_with_an_id_in_use_is_refused_running_or_ended() {
        let mut table = Table::new(30);
        running(&mut table, "a", 10);
        assert_eq!(
            code(table.check_launch(&spec("a", &["/bin/app"]))),
            ErrorCode::BadRequest
        );
        table.ended("a", 10, Ended::Exited(0)).expect("ended");
        assert_eq!(
            code(table.check_launch(&spec("a", &["/bin/app"]))),
            ErrorCode::BadRequest
        );
        table.release("a").expect("released");
        assert!(table.check_launch(&spec("a", &["/bin/app"])).is_ok());
    }

    #[test]
    fn the_table_holds_at_most_max_processes_until_ended_ones_are_released() {
        let mut table = Table::new(2);
        running(&mut table, "a", 10);
        running(&mut table, "b", 11);
        assert_eq!(
            code(table.check_launch(&spec("c", &["/bin/app"]))),
            ErrorCode::RateLimited
        );
        table.ended("a", 10, Ended::Exited(1));
        assert_eq!(
            code(table.check_launch(&spec("c", &["/bin/app"]))),
            ErrorCode::RateLimited,
            "an ended process holds its slot until released"
        );
        table.release("a").expect("released");
        assert!(table.check_launch(&spec("c", &["/bin/app"])).is_ok());
    }

    #[test]
    fn absurd_launches_are_bad_requests() {
        let table = Table::new(30);
        let many: Vec<String> = (0..=MAX_ARGS).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let big = "x".repeat(4000);
        let huge: Vec<&str> = std::iter::repeat_n(big.as_str(), 9).collect();
        let mut env = spec("e", &["/bin/app"]);
        env.env = (0..=MAX_ENV)
            .map(|i| (Text::truncating(format!("V{i}")), "1".into()))
            .collect();
        let mut bad_name = spec("n", &["/bin/app"]);
        bad_name.env = vec![("A=B".into(), "1".into())];
        let mut relative = spec("r", &["/bin/app"]);
        relative.cwd = Some("tmp".into());
        let cases = [
            (spec("a", &[]), "argv is empty"),
            (spec("a", &many), "at most 256"),
            (spec("a", &huge), "bytes of arguments"),
            (env, "environment variables; at most"),
            (bad_name, "not an environment variable name"),
            (relative, "not an absolute path"),
            (spec("", &["/bin/app"]), "id is empty"),
            (spec("a", &["/bin/a\0pp"]), "NUL"),
        ];
        for (spec, needle) in cases {
            let refusal = table.check_launch(&spec).expect_err(needle);
            assert_eq!(refusal.code, ErrorCode::BadRequest, "{needle}");
            assert!(refusal.message.contains(needle), "{}", refusal.message);
        }
    }

    #[test]
    fn polls_are_reads_and_unknown_ids_are_not_found() {
        let mut table = Table::new(30);
        running(&mut table, "a", 10);
        let first = table.poll("a").expect("known");
        for _ in 0..3 {
            assert_eq!(table.poll("a").expect("known"), first);
        }
        assert_eq!(first.state, ProcessState::Running { pid: 10 });
        assert_eq!(code(table.poll("b")), ErrorCode::NotFound);
        assert_eq!(code(table.signal_target("b")), ErrorCode::NotFound);
        assert_eq!(code(table.release("b")), ErrorCode::NotFound);
        assert_eq!(
            code(table.read_output(&"b".into(), OutputStream::Stdout, 0)),
            ErrorCode::NotFound
        );
    }

    #[test]
    fn an_end_is_kept_until_released_and_taken_once_for_its_pid() {
        let mut table = Table::new(30);
        running(&mut table, "a", 10);
        assert_eq!(table.ended("a", 99, Ended::Exited(0)), None, "another pid");
        let ended = table.ended("a", 10, Ended::Killed(9)).expect("its pid");
        assert_eq!(ended.state, ProcessState::Killed { signal: 9 });
        assert_eq!(table.ended("a", 10, Ended::Exited(0)), None, "taken once");
        assert_eq!(
            table.poll("a").expect("kept").state,
            ProcessState::Killed { signal: 9 }
        );
        assert_eq!(
            table.signal_target("a").expect("known"),
            SignalTarget::Ended(ended)
        );
    }

    #[test]
    fn a_running_process_is_not_released_and_is_signalled_by_group() {
        let mut table = Table::new(30);
        running(&mut table, "a", 10);
        assert_eq!(table.signal_target("a"), Ok(SignalTarget::Group(10)));
        let refusal = table.release("a").expect_err("running");
        assert_eq!(refusal.code, ErrorCode::BadRequest);
        assert!(
            refusal.message.contains("still running"),
            "{}",
            refusal.message
        );
        assert_eq!(table.running(), vec![("a".into(), 10)]);
    }

    #[test]
    fn output_reads_from_the_tail_and_say_where_they_start() {
        let mut table = Table::new(30);
        running(&mut table, "a", 10);
        let tail = table.entries.get("a").expect("a").stdout.clone();
        lock(&tail).push(b"0123456789");
        let chunk = table
            .read_output(&"a".into(), OutputStream::Stdout, 0)
            .expect("known");
        assert_eq!((chunk.offset, chunk.total, chunk.eof), (2, 10, false));
        assert_eq!(chunk.data.as_bytes(), b"23456789");
        lock(&tail).close();
        let last = table
            .read_output(&"a".into(), OutputStream::Stdout, 8)
            .expect("known");
        assert_eq!(
            (last.offset, last.data.as_bytes(), last.eof),
            (8, &b"89"[..], true)
        );
        let status = table.poll("a").expect("known");
        assert_eq!((status.stdout_bytes, status.stderr_bytes), (10, 0));
    }

    #[test]
    fn a_chunk_is_at_most_the_wire_limit() {
        let mut table = Table::new(30);
        let mut e = entry(ProcessState::Running { pid: 1 });
        e.stdout = Tail::shared(100_000);
        lock(&e.stdout).push(&vec![b'x'; 100_000]);
        table.insert("a".into(), e);
        let chunk = table
            .read_output(&"a".into(), OutputStream::Stdout, 0)
            .expect("known");
        assert_eq!(chunk.data.len(), limits::OutputChunk::MAX);
        assert!(!chunk.eof);
    }

    #[test]
    fn command_lines_quote_what_a_reader_would_misread() {
        assert_eq!(
            command_line(["/bin/sh", "-c", "echo hi; exit 7"]).as_str(),
            "/bin/sh -c 'echo hi; exit 7'"
        );
        assert_eq!(command_line(["a", "", "it's"]).as_str(), "a '' 'it'\\''s'");
        let long = "y".repeat(1000);
        assert_eq!(command_line([long.as_str()]).len(), limits::Command::MAX);
    }
}
