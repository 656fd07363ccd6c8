//! One VM as `appmonctl list` and `show` see it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::DomainState;
use crate::guest::{ApplicationView, MonitorView, ProcessView};
use crate::history::{ConnectFailure, HistoryEntry};
use crate::reset::ResetMethod;

/// A VM's application status as the host agent reports it to operators: vSphere's colours.
/// The guest is told the same colour over the wire protocol (`appmon_wire::AppStatus`); this
/// crate stays serde-only, so the host agent maps one to the other where it builds a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Green,
    Red,
    Gray,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Green => "green",
            Status::Red => "red",
            Status::Gray => "gray",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmView {
    pub name: String,
    pub uuid: String,
    /// The domain carries valid monitoring metadata.
    pub monitored: bool,
    /// Why the metadata could not be read, when it could not.
    pub spec_error: Option<String>,
    /// `None` when not monitored.
    pub status: Option<Status>,
    pub enabled: bool,
    pub need_reset: bool,
    /// While monitoring is enabled, the age of the policy's failure clock (the Enable, the
    /// last heartbeat read, the domain running again); otherwise since the last heartbeat this
    /// host agent read.
    pub last_heartbeat_age_ms: Option<u64>,
    /// The age of the last heartbeat as the guest agent claims it (its `State`, aged since it
    /// arrived): the guest's word, not a measurement, and never shown as one.
    #[serde(default)]
    pub claimed_heartbeat_age_ms: Option<u64>,
    pub resets_in_window: usize,
    pub gave_up: bool,
    /// The alarm's reason while the host agent has given up.
    pub alarm: Option<String>,
    /// A guest agent session is up (it said Hello).
    pub connected: bool,
    pub guest_boot_id: Option<String>,
    pub guest_agent: Option<String>,
    pub domain_state: DomainState,
    /// How the guest agent is reached, while a session task runs.
    pub transport: Option<String>,
    /// While there is no session: why the last attempt at one failed, when, and how often
    /// that same reason came since it first did.
    #[serde(default)]
    pub connect_failure: Option<ConnectFailureView>,
    pub policy: Option<PolicyView>,
    /// While the host agent has no connection to libvirt: since when and why. Nothing is judged
    /// and no reset attempted meanwhile.
    #[serde(default)]
    pub libvirt_lost: Option<LibvirtLost>,
    /// The guest's application monitors, as its agent last reported them.
    #[serde(default)]
    pub monitors: Vec<MonitorView>,
    /// The managed applications of the domain's metadata.
    #[serde(default)]
    pub applications: Vec<ApplicationView>,
    /// The processes launched in the guest for the host, as its agent last reported them.
    #[serde(default)]
    pub processes: Vec<ProcessView>,
    /// Oldest first. Empty in `list`.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// The latest reason a VM's guest agent could not be connected, and its repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectFailureView {
    pub reason: ConnectFailure,
    /// Wall-clock time of its latest occurrence.
    pub last_unix_ms: u64,
    /// Wall-clock time it first occurred (since when it has repeated).
    pub first_unix_ms: u64,
    /// How many times it occurred since then, in a row.
    pub times: u64,
}

/// The host agent's connection to libvirt is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibvirtLost {
    /// Wall-clock time of the loss.
    pub since_unix_ms: u64,
    pub reason: String,
}

/// A VM's effective policy: its metadata's overrides on top of the host's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    pub failure_interval_ms: u64,
    pub min_uptime_ms: u64,
    pub max_resets: u32,
    pub reset_window_ms: u64,
    pub reset_method: ResetMethod,
    pub channel_timeout_ms: u64,
}

impl VmView {
    /// Whether the status is `status`.
    pub fn is(&self, status: Status) -> bool {
        self.status == Some(status)
    }

    /// Every reset and power-cycle decision, oldest first.
    pub fn reset_decisions(&self) -> Vec<&HistoryEntry> {
        self.history
            .iter()
            .filter(|h| h.reset_decision().is_some())
            .collect()
    }

    /// Every reset and power-cycle libvirt carried out, oldest first.
    pub fn resets_done(&self) -> Vec<&HistoryEntry> {
        self.history
            .iter()
            .filter(|h| h.reset_done().is_some())
            .collect()
    }

    /// Every reset and power-cycle libvirt refused, oldest first.
    pub fn resets_failed(&self) -> Vec<&HistoryEntry> {
        self.history
            .iter()
            .filter(|h| h.reset_failed().is_some())
            .collect()
    }

    /// The last libvirt event that started a boot (the minimum uptime counts from it).
    pub fn last_boot_event(&self) -> Option<&HistoryEntry> {
        self.history.iter().rev().find(|h| h.is_boot_event())
    }

    /// The decisions, oldest first.
    pub fn decisions(&self) -> impl Iterator<Item = (&HistoryEntry, &crate::Decision)> {
        self.history
            .iter()
            .filter_map(|h| h.decision().map(|d| (h, d)))
    }

    /// The first entry whose kind `pick` accepts.
    pub fn find(&self, pick: impl Fn(&HistoryEntry) -> bool) -> Option<&HistoryEntry> {
        self.history.iter().find(|h| pick(h))
    }

    /// One line: status, enabled, connection, heartbeat age, resets, domain, boot id.
    pub fn summary(&self) -> String {
        format!(
            "status {} enabled {} connected {} heartbeat {} resets {} gave_up {} domain {} boot {}",
            self.status.map_or("-", Status::as_str),
            self.enabled,
            self.connected,
            self.last_heartbeat_age_ms
                .map_or("-".to_owned(), |a| format!("{a}ms ago")),
            self.resets_in_window,
            self.gave_up,
            self.domain_state,
            self.guest_boot_id.as_deref().unwrap_or("-"),
        )
    }

    /// The history, one entry per line, for failure messages.
    pub fn history_text(&self) -> String {
        self.history
            .iter()
            .map(|h| format!("    {h}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The summary line and the history, for failure messages.
impl fmt::Display for VmView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}\n  history:\n{}",
            self.name,
            self.summary(),
            self.history_text()
        )
    }
}
