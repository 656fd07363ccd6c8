//! Starting the processes the host launches: "run this program as this user" made a process
//! that outlives the request, with its output drained and its end awaited.
//!
//! Every process starts the same way:
//! - with the environment cleared and a minimal one set ([`minimal_env`]) under the caller's
//!   additions, stdin from `/dev/null`, stdout and stderr into pipes;
//! - in a session and process group of its own (`setsid`), so that a signal for it reaches its
//!   children too ([`signal_group`]) and no terminal of the agent's reaches it;
//! - as the given user: supplementary groups, group and user set in the child before `exec`;
//! - optionally tied to the agent's life ([`Launch::die_with_agent`]: `PR_SET_PDEATHSIG` with
//!   `SIGKILL`). The kernel sends that signal when the *thread* that forked the child ends, so a
//!   command is only ever started from the agent's owner thread (a current-thread runtime),
//!   never from a `spawn_blocking` pool thread that may retire while the command runs.
//!
//! Output is drained as it comes, so a command that writes gigabytes is never blocked on a
//! full pipe, and only a bounded [`Tail`] of each stream is kept.
//!
//! [`start`] starts, [`finish`] waits for the end and the last output, [`signal_group`]
//! signals the process group. (The application monitors' bounded one-shot runner is
//! `crate::exec::run`; see /work/notes/processes.md for folding the two together.)
//!
//! The `unsafe` here is the one `pre_exec` hook: between `fork` and `exec` the child may only
//! make async-signal-safe calls, and every call it makes is one (plain system calls on values
//! prepared before the fork, no allocation).

use std::collections::VecDeque;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Pid, Uid};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::users::Identity;

/// `PATH` of every command the agent starts, unless the caller sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How much is read from a pipe at a time.
const READ_CHUNK: usize = 16 * 1024;
/// After a command ends, how long its pipes may stay open (a child it left behind holds them)
/// before the end is reported without the rest of its output.
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// A command could not be started or signalled.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot send signal {signal} to process group {pgid}")]
    Signal {
        pgid: u32,
        signal: i32,
        #[source]
        source: nix::Error,
    },
    #[error("{0} is not a signal number this agent sends (1-31)")]
    BadSignal(i32),
    #[error("cannot wait for process {pid}")]
    Wait {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program, an absolute path (no `PATH` search); also `argv[0]`.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment (start from [`minimal_env`]).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Who to run as; `None` keeps the agent's own user.
    pub identity: Option<Identity>,
    /// Kill the command with `SIGKILL` when the agent ends (see the module documentation).
    pub die_with_agent: bool,
}

/// The environment every command gets: `PATH`, and for a user `HOME`, `USER`, `LOGNAME`,
/// `SHELL` as a login would set them.
pub fn minimal_env(identity: Option<&Identity>) -> Vec<(String, String)> {
    let mut env = vec![("PATH".to_owned(), DEFAULT_PATH.to_owned())];
    if let Some(id) = identity {
        env.push(("HOME".into(), id.home.to_string_lossy().into_owned()));
        env.push(("USER".into(), id.name.clone()));
        env.push(("LOGNAME".into(), id.name.clone()));
        env.push(("SHELL".into(), id.shell.to_string_lossy().into_owned()));
    }
    env
}

/// Sets `name` in `env`, replacing an earlier value.
pub fn set_env(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    env.retain(|(n, _)| n != name);
    env.push((name.to_owned(), value.to_owned()));
}

/// The last `capacity` bytes of a stream, and how many it had in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    capacity: usize,
    kept: VecDeque<u8>,
    total: u64,
    closed: bool,
}

/// A tail its drain task writes and its owner reads.
pub type SharedTail = Arc<Mutex<Tail>>;

impl Tail {
    pub fn new(capacity: usize) -> Tail {
        Tail {
            capacity,
            kept: VecDeque::new(),
            total: 0,
            closed: false,
        }
    }

    pub fn shared(capacity: usize) -> SharedTail {
        Arc::new(Mutex::new(Tail::new(capacity)))
    }

    /// Appends `bytes`, forgetting the oldest beyond the capacity.
    pub fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let keep = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let overflow = (self.kept.len() + keep.len()).saturating_sub(self.capacity);
        self.kept.drain(..overflow);
        self.kept.extend(keep);
    }

    /// The stream ended.
    pub fn close(&mut self) {
        self.closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes written so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Stream position of the oldest byte kept.
    pub fn start(&self) -> u64 {
        self.total - self.kept.len() as u64
    }

    /// Up to `max` bytes from stream position `from` on, or from the oldest byte kept when
    /// `from` is older; returns their position and the bytes. Past the end: nothing, at the end.
    pub fn read(&self, from: u64, max: usize) -> (u64, Vec<u8>) {
        let offset = from.clamp(self.start(), self.total);
        // `offset - start` is at most `kept.len()`, a usize.
        let skip = usize::try_from(offset - self.start()).unwrap_or(usize::MAX);
        let bytes = self.kept.iter().skip(skip).take(max).copied().collect();
        (offset, bytes)
    }

    /// Everything kept, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        self.kept.iter().copied().collect()
    }
}

/// Locks a shared tail; a drain task that panicked left a tail that is still whole.
pub fn lock(tail: &SharedTail) -> std::sync::MutexGuard<'_, Tail> {
    tail.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Killed(i32),
}

impl From<ExitStatus> for Ended {
    fn from(status: ExitStatus) -> Ended {
        match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Exited(code),
            (None, Some(signal)) => Ended::Killed(signal),
            // Neither happens for a waited-for child; say so rather than invent a code.
            (None, None) => Ended::Killed(0),
        }
    }
}

impl Ended {
    /// The shell's convention: the exit code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            Ended::Exited(code) => code,
            Ended::Killed(signal) => 128 + signal,
        }
    }
}

/// A started command.
#[derive(Debug)]
pub struct Started {
    pub child: Child,
    pub pid: u32,
    pub stdout: SharedTail,
    pub stderr: SharedTail,
    /// The tasks that drain stdout and stderr into the tails.
    pub drains: [JoinHandle<()>; 2],
}

/// Starts `launch`, keeping `tail_bytes` of each output stream. Must run on a tokio runtime,
/// on the thread that lives as long as the agent (see the module documentation).
pub fn start(launch: &Launch, tail_bytes: usize) -> Result<Started, ExecError> {
    let spawn_error = |source| ExecError::Spawn {
        program: launch.program.clone(),
        source,
    };
    let mut command = Command::new(&launch.program);
    command
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let switch = launch
        .identity
        .as_ref()
        .filter(|id| Uid::effective().as_raw() != id.uid || Gid::effective().as_raw() != id.gid)
        .map(|id| {
            (
                id.groups
                    .iter()
                    .copied()
                    .map(Gid::from_raw)
                    .collect::<Vec<_>>(),
                Gid::from_raw(id.gid),
                Uid::from_raw(id.uid),
            )
        });
    let die_with_agent = launch.die_with_agent;
    let agent = nix::unistd::getpid();
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe calls
    // are allowed. It makes only system calls (setsid, setgroups, setgid, setuid, prctl,
    // getppid) on values built before the fork; nothing allocates, locks or touches state
    // shared with other threads of the parent.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            if let Some((groups, gid, uid)) = &switch {
                nix::unistd::setgroups(groups)?;
                nix::unistd::setgid(*gid)?;
                nix::unistd::setuid(*uid)?;
            }
            if die_with_agent {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The agent may have ended between the fork and the prctl.
                if nix::unistd::getppid() != agent {
                    return Err(io::Error::other(
                        "the agent ended while starting the command",
                    ));
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(spawn_error)?;
    let pid = child.id().unwrap_or(0);
    let stdout = Tail::shared(tail_bytes);
    let stderr = Tail::shared(tail_bytes);
    let drains = [
        tokio::spawn(drain(child.stdout.take(), stdout.clone())),
        tokio::spawn(drain(child.stderr.take(), stderr.clone())),
    ];
    Ok(Started {
        child,
        pid,
        stdout,
        stderr,
        drains,
    })
}

/// Reads a pipe to its end into `tail`, however much comes.
async fn drain<R: AsyncRead + Unpin>(pipe: Option<R>, tail: SharedTail) {
    if let Some(mut pipe) = pipe {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => lock(&tail).push(&buf[..n]),
            }
        }
    }
    lock(&tail).close();
}

/// Waits for a started command to end, then up to `drain_grace` for the rest of its output.
pub async fn finish(
    mut child: Child,
    pid: u32,
    drains: [JoinHandle<()>; 2],
    drain_grace: Duration,
) -> Result<Ended, ExecError> {
    let status = child
        .wait()
        .await
        .map_err(|source| ExecError::Wait { pid, source })?;
    let [out, err] = drains;
    let _ = tokio::time::timeout(drain_grace, async {
        let _ = out.await;
        let _ = err.await;
    })
    .await;
    Ok(Ended::from(status))
}

/// The signal with this number, if it is one the agent sends (the standard ones, 1-31).
pub fn signal_from(number: i32) -> Result<Signal, ExecError> {
    match Signal::try_from(number) {
        Ok(signal) if (1..=31).contains(&number) => Ok(signal),
        _ => Err(ExecError::BadSignal(number)),
    }
}

/// Sends `signal` to the process group a started command leads (its pid).
pub fn signal_group(pgid: u32, signal: Signal) -> Result<(), ExecError> {
    let raw = i32::try_from(pgid).unwrap_or(i32::MAX);
    nix::sys::signal::killpg(Pid::from_raw(raw), signal).map_err(|source| ExecError::Signal {
        pgid,
        signal: signal as i32,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Launch {
        Launch {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: minimal_env(None),
            cwd: "/".into(),
            identity: None,
            die_with_agent: true,
        }
    }

    const BOUND: Duration = Duration::from_secs(30);

    /// Starts `launch`, waits for its end (within [`BOUND`]) and returns it with its tails.
    async fn run(launch: &Launch, tail_bytes: usize) -> (Ended, Tail, Tail) {
        let started = start(launch, tail_bytes).expect("starts");
        let (stdout, stderr) = (started.stdout.clone(), started.stderr.clone());
        let ended = tokio::time::timeout(
            BOUND,
            finish(started.child, started.pid, started.drains, DRAIN_GRACE),
        )
        .await
        .expect("ends in time")
        .expect("waited for");
        let (out, err) = (lock(&stdout).clone(), lock(&stderr).clone());
        (ended, out, err)
    }

    #[test]
    fn a_tail_keeps_the_last_bytes_and_counts_all() {
        let mut tail = Tail::new(4);
        tail.push(b"abc");
        tail.push(b"def");
        assert_eq!(tail.contents(), b"cdef");
        assert_eq!((tail.start(), tail.total()), (2, 6));
        tail.push(b"0123456789");
        assert_eq!(tail.contents(), b"6789");
        assert_eq!((tail.start(), tail.total()), (12, 16));
    }

    #[test]
    fn a_tail_reads_from_a_position_clamped_to_what_it_kept() {
        let mut tail = Tail::new(4);
        tail.push(b"abcdef");
        assert_eq!(tail.read(0, 100), (2, b"cdef".to_vec()), "older than kept");
        assert_eq!(tail.read(3, 2), (3, b"de".to_vec()), "within, bounded");
        assert_eq!(tail.read(6, 10), (6, vec![]), "at the end");
        assert_eq!(tail.read(99, 10), (6, vec![]), "past the end");
    }

    #[test]
    fn a_zero_capacity_tail_only_counts() {
        let mut tail = Tail::new(0);
        tail.push(b"abc");
        assert_eq!((tail.contents(), tail.total()), (vec![], 3));
    }

    #[test]
    fn signals_outside_the_standard_range_are_refused() {
        for n in [0, -1, 32, 64, 1000] {
            assert!(signal_from(n).is_err(), "{n}");
        }
        assert_eq!(signal_from(15).expect("TERM"), Signal::SIGTERM);
    }

    #[tokio::test]
    async fn the_exit_code_and_both_outputs_are_kept() {
        let (ended, stdout, stderr) = run(&sh("echo out; echo err >&2; exit 7"), 1024).await;
        assert_eq!(ended, Ended::Exited(7));
        assert_eq!(stdout.contents(), b"out\n");
        assert_eq!(stderr.contents(), b"err\n");
        assert!(stdout.is_closed() && stderr.is_closed());
    }

    #[tokio::test]
    async fn a_signal_to_the_group_reaches_the_children_of_the_process() {
        let dir = tempfile::tempdir().expect("dir");
        let marker = dir.path().join("child-alive");
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let started = start(&sh(&script), 16).expect("starts");
        signal_group(started.pid, Signal::SIGKILL).expect("signalled");
        let ended = finish(started.child, started.pid, started.drains, DRAIN_GRACE)
            .await
            .expect("waited for");
        assert_eq!(ended, Ended::Killed(9));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the group's other process was killed too");
    }

    #[tokio::test]
    async fn the_signal_that_ended_the_process_is_kept() {
        let (ended, _, _) = run(&sh("kill -TERM $$"), 16).await;
        assert_eq!(ended, Ended::Killed(15));
        assert_eq!(Ended::Killed(15).shell_code(), 143);
    }

    #[tokio::test]
    async fn a_flood_of_output_is_drained_and_only_the_tail_kept() {
        // 64 MiB through a 4 KiB tail: the writer is never blocked, the tail stays small.
        let (ended, stdout, _) = run(&sh("head -c 67108864 /dev/zero; printf END"), 4096).await;
        assert_eq!(ended, Ended::Exited(0));
        assert_eq!(stdout.total(), 64 * 1024 * 1024 + 3);
        assert_eq!(stdout.contents().len(), 4096);
        assert!(stdout.contents().ends_with(b"END"));
    }

    #[tokio::test]
    async fn the_command_runs_in_a_session_of_its_own_with_only_the_given_environment() {
        let mut launch = sh("echo $$ $(cut -d' ' -f6 /proc/$$/stat) \"$PATH\" \"${HOME:-none}\"");
        set_env(&mut launch.env, "PATH", "/bin:/usr/bin");
        let (_, stdout, _) = run(&launch, 1024).await;
        let text = String::from_utf8(stdout.contents()).expect("utf-8");
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 4, "{text}");
        assert_eq!(fields[0], fields[1], "session id is its own pid: {text}");
        assert_eq!(fields[2], "/bin:/usr/bin");
        assert_eq!(fields[3], "none", "the agent's HOME did not leak");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error_naming_it() {
        let mut launch = sh("true");
        launch.program = "/nonexistent/program".into();
        let err = start(&launch, 16).expect_err("no such program");
        assert!(err.to_string().contains("/nonexistent/program"), "{}", err);
    }

    #[tokio::test]
    async fn the_command_runs_as_the_given_user_and_groups() {
        let nobody = Identity {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534, 4],
            home: "/nonexistent".into(),
            shell: "/bin/sh".into(),
        };
        let mut launch = sh("id -u; id -g; id -G");
        launch.env = minimal_env(Some(&nobody));
        launch.identity = Some(nobody);
        if Uid::effective().is_root() {
            let (_, stdout, _) = run(&launch, 1024).await;
            let text = String::from_utf8(stdout.contents()).expect("utf-8");
            assert_eq!(text, "65534\n65534\n65534 4\n");
        } else {
            // Only root may switch users: the start fails and says so.
            let err = start(&launch, 16).expect_err("not root");
            assert!(
                appmon_wire::report::error_chain(&err).contains("not permitted"),
                "{err}"
            );
        }
    }
}
