//! appmon's control schema: what the host agent's control socket takes and answers, what
//! `appmonctl --json` prints, and the vocabulary these share with the rest of appmon. One
//! definition for every reader: the host agent builds these values, `appmonctl` prints them,
//! the VM tests read them, and `appmon-libvirt-backend` produces the domain types.
//!
//! # Modules
//!
//! - [`domain`]: a libvirt domain's state and lifecycle events as appmon uses them.
//! - [`reset`]: [`ResetMethod`] and the policy's [`ResetCause`].
//! - [`guest`]: the guest's application monitors and launched processes as the host shows
//!   them, their history entries, and the launch request.
//! - [`history`]: a VM's typed event history ([`HistoryEntry`], [`HistoryKind`]: a policy
//!   [`Decision`], a libvirt [`DomainEvent`], a [`GuestEvent`], an [`OperatorAction`]).
//! - [`view`]: [`VmView`] and [`PolicyView`], one VM as `list` and `show` see it.
//! - [`counters`]: [`CountersView`], one VM's counters as `counters` sees them.
//! - [`alarms`]: MON's alarm view: a rule ([`AlarmRuleSpec`]), the raised alarms, `alarms`'
//!   answer ([`AlarmsView`]).
//! - this file: the control socket's [`Request`] and [`Response`], and the versioned documents
//!   `appmonctl --json` prints ([`ListDocument`], [`ShowDocument`], [`CountersDocument`],
//!   [`SCHEMA_VERSION`]).
//!
//! # The control socket
//!
//! One JSON request per line, one JSON response per line, then the connection may carry the
//! next request:
//!
//! ```text
//! {"cmd":"list"}
//! {"cmd":"show","domain":"vm1"}
//! {"cmd":"clear","domain":"vm1"}
//! {"cmd":"enable","domain":"vm1","spec_xml":"<appmon:monitor ...>"}
//! {"cmd":"disable","domain":"vm1"}
//! {"cmd":"launch","domain":"vm1","launch":{"id":"run.1","argv":["/bin/true"]}}
//! {"cmd":"poll","domain":"vm1","id":"run.1"}
//! {"cmd":"signal","domain":"vm1","id":"run.1","signal":15}
//! {"cmd":"read_output","domain":"vm1","id":"run.1","stream":"stdout","from":0}
//! {"cmd":"release","domain":"vm1","id":"run.1"}
//! {"cmd":"processes","domain":"vm1"}
//! {"cmd":"counters","domain":"vm1"}
//! {"cmd":"counters","domain":"vm1","entity":"CPU"}
//! {"cmd":"alarms"}
//! {"cmd":"alarms","domain":"vm1"}
//! {"cmd":"alarm_set","rule":{"domain":"vm*","entity":"CPU","counter":"CPU Total","alarm_above":90,"hysteresis":5}}
//! {"cmd":"alarm_remove","domain":"vm*","entity":"CPU","counter":"CPU Total"}
//! ```
//!
//! # Versions
//!
//! [`SCHEMA_VERSION`] is the version of everything this crate serialises. Adding a field or a
//! variant keeps it; renaming or removing one, or changing a field's meaning, raises it.
//! Readers ignore fields they do not know.

use serde::{Deserialize, Serialize};

pub mod alarms;
pub mod counters;
pub mod domain;
pub mod guest;
pub mod history;
pub mod reset;
pub mod view;

pub use alarms::{
    AlarmRuleSpec, AlarmRuleView, AlarmRulesFile, AlarmsDocument, AlarmsView, RaisedAlarm,
    RuleOrigin,
};
pub use counters::{CounterView, CountersView, EntityView};
pub use domain::{
    DomainEvent, DomainState, PausedReason, RunningReason, ShutOffReason, StartedReason,
};
pub use guest::{
    ApplicationView, FailureAction, LaunchRequest, MonitorKind, MonitorMode, MonitorNote,
    MonitorPhase, MonitorReport, MonitorView, OutputStream, OutputView, ProcessEnd, ProcessNote,
    ProcessState, ProcessView,
};
pub use history::{
    AlarmEvent, AlarmSide, ConnectFailure, ConnectFailureKind, Decision, Escalation, Finite,
    GuestEvent, HistoryEntry, HistoryKind, HostEvent, HypervisorEvent, Level, OperatorAction,
    SessionEnd,
};
pub use reset::{ResetCause, ResetMethod};
pub use view::{ConnectFailureView, LibvirtLost, PolicyView, Status, VmView};

/// The version of the schema of this crate's JSON (see the crate documentation).
pub const SCHEMA_VERSION: u32 = 1;

/// A request on the control socket. Not `Eq`: alarm thresholds are floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    List,
    Show {
        domain: String,
    },
    Clear {
        domain: String,
    },
    /// Writes the `<appmon:monitor>` element `spec_xml` into the domain's metadata.
    Enable {
        domain: String,
        spec_xml: String,
    },
    /// Removes the domain's `<appmon:monitor>` element.
    Disable {
        domain: String,
    },
    /// Launches a process in the guest (`appmonctl run`); answered with `process`.
    Launch {
        domain: String,
        launch: LaunchRequest,
    },
    /// How a launched process is doing; answered with `process`.
    Poll {
        domain: String,
        id: String,
    },
    /// Sends a signal to a launched process (`appmonctl kill`); answered with `process`.
    Signal {
        domain: String,
        id: String,
        signal: i32,
    },
    /// A launched process's output from byte `from` on; answered with `output`.
    ReadOutput {
        domain: String,
        id: String,
        stream: OutputStream,
        from: u64,
    },
    /// The end of a launched process has been read: the guest forgets it.
    Release {
        domain: String,
        id: String,
    },
    /// The guest's launched processes (`appmonctl ps`); answered with `processes`.
    Processes {
        domain: String,
    },
    /// The domain's counters with their latest values; only `entity`'s when named.
    Counters {
        domain: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entity: Option<String>,
    },
    /// MON's alarm view: its rules and raised alarms, only `domain`'s raised alarms (and the
    /// rules matching it) when named; answered with `alarms`.
    Alarms {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    },
    /// Sets a run-time alarm rule (kept across restarts), replacing the rule with the same
    /// domain glob, entity and counter, host.toml's included.
    AlarmSet {
        rule: AlarmRuleSpec,
    },
    /// Removes the run-time alarm rule with this domain glob, entity and counter.
    AlarmRemove {
        domain: String,
        entity: String,
        counter: String,
    },
}

/// The answer to a [`Request`]. Not `Eq`: counter values are floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    List { domains: Vec<VmView> },
    Show { domain: Box<VmView> },
    Counters { counters: Box<CountersView> },
    Alarms { alarms: Box<AlarmsView> },
    Done { message: String },
    Error { kind: ErrorKind, message: String },
    Process { process: ProcessView },
    Output { output: OutputView },
    Processes { processes: Vec<ProcessView> },
}

/// Kinds of control errors (`appmonctl` turns them into exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    UnknownDomain,
    /// `counters DOMAIN ENTITY` named an entity the domain's schema does not have.
    UnknownEntity,
    Libvirt,
    BadRequest,
    /// No guest agent session is up to carry the request.
    NoSession,
    /// The guest agent refused the request (not on its allowlist, unknown id, ...).
    GuestRefused,
    /// `alarm_remove` named a rule that is not a run-time rule.
    UnknownRule,
    /// The host agent could not write its state directory.
    StateWrite,
}

/// What `appmonctl --json list` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDocument {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// Sorted by name.
    pub domains: Vec<VmView>,
}

/// What `appmonctl --json show DOMAIN` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowDocument {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    pub domain: VmView,
}

/// What `appmonctl --json ps DOMAIN` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessesDocument {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    pub processes: Vec<ProcessView>,
}

impl ProcessesDocument {
    pub fn new(processes: Vec<ProcessView>) -> Self {
        ProcessesDocument {
            schema_version: SCHEMA_VERSION,
            processes,
        }
    }
}

/// What `appmonctl --json counters DOMAIN [ENTITY]` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountersDocument {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    pub counters: CountersView,
}

impl CountersDocument {
    pub fn new(counters: CountersView) -> Self {
        CountersDocument {
            schema_version: SCHEMA_VERSION,
            counters,
        }
    }
}

impl ListDocument {
    pub fn new(domains: Vec<VmView>) -> Self {
        ListDocument {
            schema_version: SCHEMA_VERSION,
            domains,
        }
    }
}

impl ShowDocument {
    pub fn new(domain: VmView) -> Self {
        ShowDocument {
            schema_version: SCHEMA_VERSION,
            domain,
        }
    }
}

#[cfg(test)]
mod tests;
