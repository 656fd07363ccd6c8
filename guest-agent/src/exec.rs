//! Runs a command with a bound on its time and on the output kept: the one command runner of
//! the guest agent (the application monitors' checks, start, restart and cleanup commands; the
//! processes the host launches can build on it).
//!
//! The command gets `/dev/null` as stdin and one pipe for stdout and stderr together, of which
//! the last [`Limits::output`] bytes are kept. It runs in a process group of its own, so a
//! command that outlives its bound is killed with everything it started (SIGKILL to the group,
//! as PowerHA's default "hung monitor signal" 9). A command that leaves a daemon behind on
//! purpose (a start script) returns as soon as the script itself exits: the runner does not
//! wait for the end of the output, and keeps reading (and discarding) what the daemon writes
//! to the inherited pipe so that the daemon never dies of a broken pipe while the agent runs.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tracing::debug;

/// How long the runner keeps reading output after the command exited, for its last words.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// The program (a path) and its arguments.
    pub argv: Vec<String>,
    /// Variables set on top of the agent's own environment.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// Run as this uid and gid (the agent must be root); `None` runs as the agent.
    pub user: Option<(u32, u32)>,
}

impl CommandSpec {
    /// A command with the agent's environment, directory and user.
    pub fn new(argv: Vec<String>) -> CommandSpec {
        CommandSpec {
            argv,
            env: Vec::new(),
            cwd: None,
            user: None,
        }
    }
}

/// Bounds of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Killed (with its process group) when it runs longer.
    pub time: Duration,
    /// Bytes of output kept: the last ones.
    pub output: usize,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// Killed by a signal it did not get from the runner.
    Signaled(i32),
    /// It outlived [`Limits::time`] and was killed.
    TimedOut(Duration),
    /// It could not be started at all.
    FailedToStart(String),
}

impl Outcome {
    pub fn success(&self) -> bool {
        *self == Outcome::Exited(0)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exit code {code}"),
            Outcome::Signaled(signal) => write!(f, "killed by signal {signal}"),
            Outcome::TimedOut(bound) => {
                write!(f, "timed out after {} s: killed", bound.as_secs_f64())
            }
            Outcome::FailedToStart(why) => write!(f, "could not start: {why}"),
        }
    }
}

/// What a run left: how it ended, the tail of its output, how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub outcome: Outcome,
    /// The last bytes of stdout and stderr, as they were interleaved (lossy UTF-8).
    pub output: String,
    pub elapsed: Duration,
}

impl Report {
    /// The outcome, and the output's last line if there is one: for a log line or a reason.
    pub fn summary(&self) -> String {
        match self.output.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(line) => format!("{} ({})", self.outcome, line.trim()),
            None => self.outcome.to_string(),
        }
    }
}

/// Runs `spec` within `limits`. Dropping the future kills the command's process group.
pub async fn run(spec: &CommandSpec, limits: Limits) -> Report {
    let started = Instant::now();
    let failed = |why: String| Report {
        outcome: Outcome::FailedToStart(why),
        output: String::new(),
        elapsed: started.elapsed(),
    };
    let Some((program, args)) = spec.argv.split_first() else {
        return failed("an empty command".into());
    };
    let (read, write) = match output_pipe() {
        Ok(pair) => pair,
        Err(e) => return failed(format!("cannot make a pipe: {e}")),
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    match write.try_clone() {
        Ok(copy) => command.stdout(Stdio::from(copy)).stderr(Stdio::from(write)),
        Err(e) => return failed(format!("cannot share the pipe: {e}")),
    };
    if let Some(dir) = &spec.cwd {
        command.current_dir(dir);
    }
    if let Some((uid, gid)) = spec.user {
        command.uid(uid).gid(gid);
    }
    let spawned = command.spawn();
    // Our copies of the pipe's write end go with the command: EOF comes when the command and
    // whatever it left running have closed theirs.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return failed(e.to_string()),
    };
    let group = child.id().and_then(|pid| i32::try_from(pid).ok());
    let mut guard = GroupGuard(group);
    let tail = Arc::new(Mutex::new(Tail::new(limits.output)));
    let reader = tokio::spawn(drain(read, tail.clone()));

    let outcome = match tokio::time::timeout(limits.time, child.wait()).await {
        Ok(Ok(status)) => outcome_of(status),
        Ok(Err(e)) => Outcome::FailedToStart(format!("cannot wait for it: {e}")),
        Err(_) => {
            guard.kill();
            let _ = child.wait().await;
            Outcome::TimedOut(limits.time)
        }
    };
    guard.0 = None;
    // The command is gone; what it wrote last is in the pipe or on its way. A daemon it left
    // keeps the pipe open: the reader then goes on draining it, detached.
    let _ = tokio::time::timeout(OUTPUT_GRACE, async {
        while !reader.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let output = tail.lock().map(|t| t.text()).unwrap_or_default();
    Report {
        outcome,
        output,
        elapsed: started.elapsed(),
    }
}

/// Kills the process group it names when dropped armed.
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            if let Err(e) = killpg(Pid::from_raw(group), Signal::SIGKILL) {
                debug!(group, error = %e, "cannot kill the process group");
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn outcome_of(status: ExitStatus) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited(code),
        (None, Some(signal)) => Outcome::Signaled(signal),
        (None, None) => Outcome::Exited(-1),
    }
}

fn output_pipe() -> std::io::Result<(pipe::Receiver, OwnedFd)> {
    let (read, write) = nix::unistd::pipe().map_err(std::io::Error::from)?;
    Ok((pipe::Receiver::from_owned_fd(read)?, write))
}

async fn drain(mut read: pipe::Receiver, tail: Arc<Mutex<Tail>>) {
    let mut buf = [0u8; 4096];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut t) = tail.lock() {
                    t.push(&buf[..n]);
                }
            }
        }
    }
}

/// The last `cap` bytes written.
#[derive(Debug)]
struct Tail {
    bytes: Vec<u8>,
    cap: usize,
}

impl Tail {
    fn new(cap: usize) -> Tail {
        Tail {
            bytes: Vec::new(),
            cap,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > self.cap {
            let cut = self.bytes.len() - self.cap;
            self.bytes.drain(..cut);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> CommandSpec {
        CommandSpec::new(vec!["/bin/sh".into(), "-c".into(), script.into()])
    }

    const LIMITS: Limits = Limits {
        time: Duration::from_secs(10),
        output: 64,
    };

    #[tokio::test]
    async fn exit_code_and_interleaved_output_are_reported() {
        let report = run(&sh("echo out; echo err >&2; exit 3"), LIMITS).await;
        assert_eq!(report.outcome, Outcome::Exited(3));
        assert_eq!(report.output, "out\nerr\n");
        assert_eq!(report.summary(), "exit code 3 (err)");
    }

    #[tokio::test]
    async fn only_the_tail_of_the_output_is_kept() {
        let report = run(
            &sh("i=0; while [ $i -lt 100 ]; do echo line$i; i=$((i+1)); done"),
            LIMITS,
        )
        .await;
        assert!(report.outcome.success());
        assert_eq!(report.output.len(), 64);
        assert!(report.output.ends_with("line99\n"), "{}", report.output);
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_at_its_bound_with_its_children() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 1000 & echo $! > {}; wait", pid_file.display());
        let limits = Limits {
            time: Duration::from_millis(500),
            output: 64,
        };

        let report = run(&sh(&script), limits).await;

        assert_eq!(report.outcome, Outcome::TimedOut(limits.time));
        assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
        let child: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        // The grandchild was in the group: it is gone (or a zombie of init's, not running).
        let gone = (0..50).any(|_| {
            let state = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let running = state
                .rsplit(')')
                .next()
                .is_some_and(|s| !s.trim_start().starts_with('Z'));
            if running {
                std::thread::sleep(Duration::from_millis(20));
            }
            !running
        });
        assert!(gone, "the sleep the command started still runs");
    }

    #[tokio::test]
    async fn a_daemon_left_behind_does_not_hold_the_run() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("daemon.pid");
        let script = format!("sleep 30 & echo $! > {}; echo started", pid_file.display());

        let report = run(&sh(&script), LIMITS).await;

        assert!(report.outcome.success(), "{report:?}");
        assert_eq!(report.output, "started\n");
        assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
        let daemon: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        assert!(std::path::Path::new(&format!("/proc/{daemon}")).exists());
        let _ = nix::sys::signal::kill(Pid::from_raw(daemon), Signal::SIGKILL);
    }

    #[tokio::test]
    async fn a_missing_program_fails_to_start() {
        let report = run(
            &CommandSpec::new(vec!["/nonexistent/program".into()]),
            LIMITS,
        )
        .await;
        assert!(
            matches!(report.outcome, Outcome::FailedToStart(_)),
            "{report:?}"
        );
        assert!(!report.outcome.success());
    }

    #[tokio::test]
    async fn a_signal_is_reported_as_such() {
        let report = run(&sh("kill -TERM $$"), LIMITS).await;
        assert_eq!(report.outcome, Outcome::Signaled(15));
    }
}
