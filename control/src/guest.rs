//! What the host agent shows of the guest's own work: its application monitors (PowerHA) and the
//! processes the host launched in it (Serviceguard's cmappmgr), as views, history entries and
//! control requests.
//!
//! Every string here that came from the guest (names, reasons, command lines, errors) was
//! escaped by the host agent before it was put into one of these types
//! (`appmon_wire::text::escape`): a reader may print them as they are.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an application monitor watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorKind {
    Process,
    Custom,
}

/// When a monitor runs (PowerHA's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorMode {
    Startup,
    LongRunning,
    Both,
}

/// Where a monitor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorPhase {
    Stabilizing,
    Healthy,
    Failed,
    GaveUp,
    Idle,
}

impl MonitorPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorPhase::Stabilizing => "stabilizing",
            MonitorPhase::Healthy => "healthy",
            MonitorPhase::Failed => "failed",
            MonitorPhase::GaveUp => "gave_up",
            MonitorPhase::Idle => "idle",
        }
    }
}

/// What a monitor does once its restarts are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    Notify,
    StopHeartbeats,
    NeedReset,
}

impl FailureAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Notify => "notify",
            FailureAction::StopHeartbeats => "stop_heartbeats",
            FailureAction::NeedReset => "need_reset",
        }
    }
}

/// One application monitor of the guest, as its guest agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorView {
    pub name: String,
    /// The application it watches.
    pub application: String,
    pub kind: MonitorKind,
    pub mode: MonitorMode,
    pub phase: MonitorPhase,
    /// Restarts within the current restart interval, and how many are allowed.
    pub restarts: u32,
    pub restart_count: u32,
    pub failure_action: FailureAction,
    pub last_failure: Option<String>,
}

/// What a monitor reported, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorReport {
    StartupOk,
    StartupFailed { reason: String },
    Started { ok: bool },
    Failed { reason: String },
    Restarted { attempt: u32, ok: bool },
    ActionTaken { action: FailureAction },
    Recovered,
}

/// A monitor's report with the monitor's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorNote {
    pub monitor: String,
    pub report: MonitorReport,
}

impl fmt::Display for MonitorNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "monitor {}: ", self.monitor)?;
        match &self.report {
            MonitorReport::StartupOk => {
                f.write_str("startup check found the application running: not started")
            }
            MonitorReport::StartupFailed { reason } => {
                write!(f, "startup check: not running ({reason}): starting it")
            }
            MonitorReport::Started { ok } => write!(f, "start command ran (ok: {ok})"),
            MonitorReport::Failed { reason } => write!(f, "check failed: {reason}"),
            MonitorReport::Restarted { attempt, ok } => {
                write!(f, "restarted, attempt {attempt} (ok: {ok})")
            }
            MonitorReport::ActionTaken { action } => {
                write!(f, "restarts used up: failure action {}", action.as_str())
            }
            MonitorReport::Recovered => f.write_str("healthy again"),
        }
    }
}

/// How a launched process is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running {
        pid: u32,
    },
    Exited {
        code: i32,
    },
    Killed {
        signal: i32,
    },
    FailedToStart {
        reason: String,
    },
    /// The guest knows no process by that id.
    Unknown,
}

impl ProcessState {
    /// The reason code cmappmgr exits with: the exit code, or 128 + the signal; `None` while it
    /// runs or when it never ran.
    pub fn reason_code(&self) -> Option<i32> {
        match self {
            ProcessState::Exited { code } => Some(*code),
            ProcessState::Killed { signal } => Some(128 + signal),
            _ => None,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, ProcessState::Running { .. })
    }
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessState::Running { pid } => write!(f, "running (pid {pid})"),
            ProcessState::Exited { code } => write!(f, "exited with code {code}"),
            ProcessState::Killed { signal } => {
                write!(
                    f,
                    "killed by signal {signal} (reason code {})",
                    128 + signal
                )
            }
            ProcessState::FailedToStart { reason } => write!(f, "failed to start: {reason}"),
            ProcessState::Unknown => f.write_str("unknown to the guest"),
        }
    }
}

/// A process launched in the guest for the host, as its guest agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessView {
    pub id: String,
    pub state: ProcessState,
    pub command: String,
    pub user: String,
    /// Guest wall-clock time of the start; 0 if it never started.
    pub started_unix_ms: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// Which output stream of a launched process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A piece of a launched process's output (raw bytes: the reader decides how to show them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputView {
    /// Position of `data[0]` in the stream; more than the `from` asked for when bytes before
    /// the guest's tail are gone.
    pub offset: u64,
    pub data: Vec<u8>,
    /// Bytes written to the stream so far.
    pub total: u64,
    /// The stream is closed and `data` reaches its end.
    pub eof: bool,
}

/// One managed application of a VM (from its metadata) and where its restart policy stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationView {
    pub name: String,
    pub argv: Vec<String>,
    /// The process that runs now, if one does.
    pub process: Option<String>,
    pub pid: Option<u32>,
    pub restarts_in_window: u32,
    pub max_restarts: u32,
    pub restart_window_ms: u64,
    /// `give_up` or `reset`.
    pub on_failure: String,
    pub gave_up: bool,
}

/// How a launched process ended, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessEnd {
    Exited {
        code: i32,
    },
    Killed {
        signal: i32,
    },
    FailedToStart {
        reason: String,
    },
    /// The guest no longer knows it (its agent restarted, or it rebooted by itself).
    Lost,
}

impl ProcessEnd {
    /// The exit code, or 128 + the signal.
    pub fn reason_code(&self) -> Option<i32> {
        match self {
            ProcessEnd::Exited { code } => Some(*code),
            ProcessEnd::Killed { signal } => Some(128 + signal),
            ProcessEnd::FailedToStart { .. } | ProcessEnd::Lost => None,
        }
    }
}

impl fmt::Display for ProcessEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessEnd::Exited { code } => write!(f, "exited, reason code {code}"),
            ProcessEnd::Killed { signal } => {
                write!(f, "killed by signal {signal}, reason code {}", 128 + signal)
            }
            ProcessEnd::FailedToStart { reason } => write!(f, "failed to start: {reason}"),
            ProcessEnd::Lost => f.write_str("lost: the guest no longer knows it"),
        }
    }
}

/// Something about a process the host launched in the guest. `application` names the managed
/// application it belongs to; `None` for a process an operator launched (`appmonctl run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessNote {
    Started {
        application: Option<String>,
        id: String,
        pid: u32,
    },
    /// A running process launched by an earlier host agent, taken over.
    Adopted {
        application: String,
        id: String,
        pid: u32,
    },
    Ended {
        application: Option<String>,
        id: String,
        end: ProcessEnd,
    },
    /// The guest refused the launch; `retrying` when it is tried again later.
    Refused {
        application: Option<String>,
        id: String,
        error: String,
        retrying: bool,
    },
    /// A restart is decided: `attempt` of `max` within the window, after `after_ms`.
    Restarting {
        application: String,
        attempt: u32,
        max: u32,
        after_ms: u64,
    },
    /// The application's restarts are spent: a VM reset is requested.
    Escalated {
        application: String,
    },
    GaveUp {
        application: String,
        reason: String,
    },
    /// An operator cleared a given-up application.
    Cleared {
        application: String,
    },
    /// The guest reported a process this host agent never launched: logged, ignored.
    Unclaimed {
        id: String,
    },
    /// An operator signalled a process (`appmonctl kill`, or `appmonctl run` forwarding one).
    Signalled {
        id: String,
        signal: i32,
    },
}

impl fmt::Display for ProcessNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let of = |app: &Option<String>| match app {
            Some(a) => format!("application {a}: "),
            None => String::new(),
        };
        match self {
            ProcessNote::Started {
                application,
                id,
                pid,
            } => write!(f, "{}process {id} started, pid {pid}", of(application)),
            ProcessNote::Adopted {
                application,
                id,
                pid,
            } => write!(
                f,
                "application {application}: running process {id} (pid {pid}) taken over"
            ),
            ProcessNote::Ended {
                application,
                id,
                end,
            } => write!(f, "{}process {id} {end}", of(application)),
            ProcessNote::Refused {
                application,
                id,
                error,
                retrying,
            } => write!(
                f,
                "{}the guest refused to launch {id}: {error}{}",
                of(application),
                if *retrying { "; retrying" } else { "" }
            ),
            ProcessNote::Restarting {
                application,
                attempt,
                max,
                after_ms,
            } => write!(
                f,
                "application {application}: restart {attempt} of {max} in the window, in {after_ms} ms"
            ),
            ProcessNote::Escalated { application } => write!(
                f,
                "application {application}: restarts spent: asking for a reset of the VM"
            ),
            ProcessNote::GaveUp {
                application,
                reason,
            } => write!(f, "application {application}: gave up: {reason}"),
            ProcessNote::Cleared { application } => {
                write!(f, "application {application}: cleared, starting again")
            }
            ProcessNote::Unclaimed { id } => write!(
                f,
                "the guest reported process {id}, which this host agent never launched: ignored"
            ),
            ProcessNote::Signalled { id, signal } => {
                write!(f, "operator sent signal {signal} to process {id}")
            }
        }
    }
}

/// A launch as the control socket takes it (`appmonctl run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// The id to launch it under (unique in the guest's table).
    pub id: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}
