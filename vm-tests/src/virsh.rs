//! Bounded `virsh -c qemu:///system` invocations. The harness drives libvirt through virsh on
//! purpose: it is test infrastructure, and the product's own libvirt code (libvirt-backend) must
//! not also be the thing that sets up the scene it is tested in.

use std::fmt;
use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The libvirt connection every VM test uses.
pub const LIBVIRT_URI: &str = "qemu:///system";

/// Bound for one virsh command. `virsh start` of a TCG guest takes about a second; this only
/// catches a hung libvirtd.
pub const VIRSH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum VirshError {
    #[error("cannot run `virsh {args}`")]
    Spawn {
        args: String,
        #[source]
        source: io::Error,
    },
    #[error("`virsh {args}` did not finish within {timeout:?}")]
    Timeout { args: String, timeout: Duration },
    #[error("`virsh {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl VirshError {
    /// The error text virsh printed, if it ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            VirshError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// Runs `virsh -c qemu:///system ARGS` with [`VIRSH_TIMEOUT`] and returns its stdout.
pub fn virsh(args: &[&str]) -> Result<String, VirshError> {
    virsh_timeout(args, VIRSH_TIMEOUT)
}

/// Runs `virsh -c URI ARGS` with [`VIRSH_TIMEOUT`] (another libvirtd than the rig's: the
/// two-host harness's daemons).
pub fn virsh_on(uri: &str, args: &[&str]) -> Result<String, VirshError> {
    virsh_on_timeout(uri, args, VIRSH_TIMEOUT)
}

/// Runs `virsh -c qemu:///system ARGS`, killing it after `timeout`.
pub fn virsh_timeout(args: &[&str], timeout: Duration) -> Result<String, VirshError> {
    virsh_on_timeout(LIBVIRT_URI, args, timeout)
}

/// Runs `virsh -c URI ARGS`, killing it after `timeout`.
pub fn virsh_on_timeout(uri: &str, args: &[&str], timeout: Duration) -> Result<String, VirshError> {
    let mut cmd = Command::new("virsh");
    cmd.arg("-c").arg(uri).args(args);
    let joined = if uri == LIBVIRT_URI {
        args.join(" ")
    } else {
        format!("-c {uri} {}", args.join(" "))
    };
    let out = run_bounded(cmd, timeout).map_err(|e| match e {
        RunError::Spawn(source) => VirshError::Spawn {
            args: joined.clone(),
            source,
        },
        RunError::Timeout => VirshError::Timeout {
            args: joined.clone(),
            timeout,
        },
    })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(VirshError::Failed {
            args: joined,
            status: out.status,
            stderr: out.stderr.trim().to_owned(),
        })
    }
}

/// Names of all domains libvirt knows (running or defined).
pub fn list_all_domains() -> Result<Vec<String>, VirshError> {
    list_all_domains_on(LIBVIRT_URI)
}

/// Names of all domains the libvirtd at `uri` knows (running or defined).
pub fn list_all_domains_on(uri: &str) -> Result<Vec<String>, VirshError> {
    Ok(virsh_on(uri, &["list", "--all", "--name"])?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A domain's state as `virsh domstate` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainState {
    Running,
    Paused,
    ShutOff,
    InShutdown,
    Crashed,
    PmSuspended,
    Other(String),
}

impl DomainState {
    pub fn parse(s: &str) -> DomainState {
        match s.trim() {
            "running" => DomainState::Running,
            "paused" => DomainState::Paused,
            "shut off" => DomainState::ShutOff,
            "in shutdown" => DomainState::InShutdown,
            "crashed" => DomainState::Crashed,
            "pmsuspended" => DomainState::PmSuspended,
            other => DomainState::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::ShutOff => "shut off",
            DomainState::InShutdown => "in shutdown",
            DomainState::Crashed => "crashed",
            DomainState::PmSuspended => "pmsuspended",
            DomainState::Other(s) => s,
        };
        f.write_str(s)
    }
}

/// What a bounded command printed.
#[derive(Debug)]
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug)]
pub(crate) enum RunError {
    Spawn(io::Error),
    Timeout,
}

/// Runs `cmd` to completion or kills it after `timeout`; the child is always reaped.
pub(crate) fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output, RunError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // Drain both pipes while waiting so a chatty command cannot block on a full pipe.
    let (status, stdout, stderr) = thread::scope(|s| {
        let out = s.spawn(move || drain(stdout));
        let err = s.spawn(move || drain(stderr));
        let status = wait_bounded(&mut child, timeout);
        if status.is_none() {
            // Closing the pipes lets the drain threads finish once the killed child is gone.
            let _ = child.kill();
            let _ = child.wait();
        }
        (
            status,
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        )
    });
    let status = status.ok_or(RunError::Timeout)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn drain(pipe: Option<impl Read>) -> String {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut poll = Duration::from_millis(2);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(poll.min(deadline - now));
        poll = (poll * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_state_parses_virsh_words() {
        assert_eq!(DomainState::parse("running\n\n"), DomainState::Running);
        assert_eq!(DomainState::parse("shut off"), DomainState::ShutOff);
        assert_eq!(DomainState::parse("in shutdown"), DomainState::InShutdown);
        assert_eq!(
            DomainState::parse("blocked"),
            DomainState::Other("blocked".into())
        );
    }

    #[test]
    fn run_bounded_captures_output_and_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = run_bounded(cmd, Duration::from_secs(10)).expect("sh runs");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn run_bounded_kills_a_command_that_hangs() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let start = Instant::now();
        let res = run_bounded(cmd, Duration::from_millis(100));
        assert!(matches!(res, Err(RunError::Timeout)));
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
