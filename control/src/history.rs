//! A VM's event history: what the host agent decided, what libvirt reported, what the guest's
//! session did and what an operator asked, each typed. `text` renders the kind for people
//! (`appmonctl show`); programs match on `kind`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::DomainEvent;
use crate::guest::{MonitorNote, ProcessNote};
use crate::reset::{ResetCause, ResetMethod};

/// How much an entry matters (and the log level it was logged at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One entry of a VM's event history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Wall-clock milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub level: Level,
    pub kind: HistoryKind,
    /// `kind` in words, for people.
    pub text: String,
}

impl HistoryEntry {
    /// An entry whose text is its kind's.
    pub fn new(unix_ms: u64, level: Level, kind: HistoryKind) -> Self {
        HistoryEntry {
            unix_ms,
            level,
            text: kind.to_string(),
            kind,
        }
    }

    pub fn decision(&self) -> Option<&Decision> {
        match &self.kind {
            HistoryKind::Decision(d) => Some(d),
            _ => None,
        }
    }

    pub fn libvirt(&self) -> Option<DomainEvent> {
        match self.kind {
            HistoryKind::Libvirt(e) => Some(e),
            _ => None,
        }
    }

    pub fn monitor(&self) -> Option<&MonitorNote> {
        match &self.kind {
            HistoryKind::Monitor(m) => Some(m),
            _ => None,
        }
    }

    pub fn process(&self) -> Option<&ProcessNote> {
        match &self.kind {
            HistoryKind::Process(p) => Some(p),
            _ => None,
        }
    }

    pub fn guest(&self) -> Option<&GuestEvent> {
        match &self.kind {
            HistoryKind::Guest(g) => Some(g),
            _ => None,
        }
    }

    /// The method and cause of a decision to reset or power-cycle.
    pub fn reset_decision(&self) -> Option<(ResetMethod, ResetCause)> {
        match self.decision()? {
            Decision::Reset { method, cause, .. } => Some((*method, *cause)),
            _ => None,
        }
    }

    /// The method and cause of a reset or power-cycle libvirt carried out.
    pub fn reset_done(&self) -> Option<(ResetMethod, ResetCause)> {
        match self.decision()? {
            Decision::ResetDone { method, cause, .. } => Some((*method, *cause)),
            _ => None,
        }
    }

    /// The method and cause of a reset or power-cycle libvirt refused.
    pub fn reset_failed(&self) -> Option<(ResetMethod, ResetCause)> {
        match self.decision()? {
            Decision::ResetFailed { method, cause, .. } => Some((*method, *cause)),
            _ => None,
        }
    }

    /// A libvirt event that starts a new boot of the guest.
    pub fn is_boot_event(&self) -> bool {
        self.libvirt().is_some_and(DomainEvent::starts_a_boot)
    }
}

impl fmt::Display for HistoryEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:<5} {:<8} {}",
            self.unix_ms,
            self.level,
            self.kind.name(),
            self.text
        )
    }
}

/// What an entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// The host agent's policy decided or noted something.
    Decision(Decision),
    /// A libvirt lifecycle event of the domain.
    Libvirt(DomainEvent),
    /// The guest's session.
    Guest(GuestEvent),
    /// An operator's request through `appmonctl`.
    Operator(OperatorAction),
    /// The host agent's connection to libvirt changed (recorded in every VM's history).
    Hypervisor(HypervisorEvent),
    /// An application monitor in the guest reported something.
    Monitor(MonitorNote),
    /// A process the host launched in the guest: a managed application's or an operator's.
    Process(ProcessNote),
    /// MON's alarm view: a counter crossed one of its thresholds, or came back.
    Alarm(AlarmEvent),
    /// The host agent's own time: recorded in every VM's history.
    Host(HostEvent),
}

impl HistoryKind {
    /// `decision`, `libvirt`, `guest` or `operator`.
    pub fn name(&self) -> &'static str {
        match self {
            HistoryKind::Decision(_) => "decision",
            HistoryKind::Libvirt(_) => "libvirt",
            HistoryKind::Guest(_) => "guest",
            HistoryKind::Operator(_) => "operator",
            HistoryKind::Hypervisor(_) => "hypervisor",
            HistoryKind::Monitor(_) => "monitor",
            HistoryKind::Process(_) => "process",
            HistoryKind::Alarm(_) => "alarm",
            HistoryKind::Host(_) => "host",
        }
    }
}

impl fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryKind::Decision(d) => d.fmt(f),
            HistoryKind::Libvirt(e) => e.fmt(f),
            HistoryKind::Guest(g) => g.fmt(f),
            HistoryKind::Operator(o) => o.fmt(f),
            HistoryKind::Hypervisor(e) => e.fmt(f),
            HistoryKind::Monitor(m) => m.fmt(f),
            HistoryKind::Process(p) => p.fmt(f),
            HistoryKind::Alarm(a) => a.fmt(f),
            HistoryKind::Host(h) => h.fmt(f),
        }
    }
}

/// A decision of the host agent, with what it was based on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// A reset or power-cycle is issued now: the `in_window`-th of at most `max_resets` in the
    /// window. `completes_reset`: the power-cycle that completes a `reset` which did not bring
    /// the guest back (it takes no slot of its own).
    Reset {
        method: ResetMethod,
        cause: ResetCause,
        in_window: u32,
        max_resets: u32,
        completes_reset: bool,
    },
    /// libvirt carried the reset out. `guest_back_first`: the rebooted guest said Hello before
    /// libvirt's answer arrived.
    ResetDone {
        method: ResetMethod,
        cause: ResetCause,
        guest_back_first: bool,
    },
    /// libvirt refused the reset; it is tried again in `retry_in_ms` if still needed.
    ResetFailed {
        method: ResetMethod,
        cause: ResetCause,
        error: String,
        retry_in_ms: u64,
    },
    /// Heartbeats are overdue (a reset follows unless the budget is spent).
    HeartbeatsOverdue {
        silent_ms: u64,
        failure_interval_ms: u64,
    },
    /// The reset budget is spent: the alarm is raised and nothing is reset.
    GaveUp {
        cause: ResetCause,
        resets_in_window: u32,
        window_s: u64,
        max_resets: u32,
    },
    /// The domain is a cluster resource and appmon cannot recover it in place: the cluster is
    /// asked to recover `resource` (Pacemaker restarts it, or moves it after its
    /// migration-threshold).
    Escalate {
        resource: String,
        reason: Escalation,
    },
    /// The cluster took the escalation.
    Escalated {
        resource: String,
    },
    /// The cluster could not be asked or refused: nothing else happens (the alarm stands).
    EscalationFailed {
        resource: String,
        error: String,
    },
    /// The window has room again: the alarm is cleared.
    AlarmCleared,
    /// An operator's `clear`: the alarm and `forgotten` resets of the window are gone.
    OperatorCleared {
        forgotten: u32,
    },
    /// After a give-up the cluster took, the guest announced a new boot: the VM the cluster
    /// started again. The alarm and `forgotten` resets of the window are gone; it is monitored
    /// with its full budget.
    ClusterStartedAgain {
        forgotten: u32,
    },
    /// The domain arrived by migration: Gray until the guest enables.
    ArrivedByMigration,
    /// The domain is no longer here (`why`: migrated away, undefined, vanished); its record,
    /// this entry included, is kept in the state directory for a return.
    Left {
        why: String,
    },
    /// The guest rebooted by itself; its channel is awaited for `wait_ms`.
    RebootedAwaitingChannel {
        wait_ms: u64,
    },
    /// The guest rebooted (it was not monitored, or its channel had not been up).
    GuestRebooted,
    /// The guest channel is back after a reset or reboot, with this boot id.
    ChannelBack {
        boot_id: String,
    },
    /// The guest channel did not come back, but the domain is not running: no recovery.
    ChannelNotBackNotRunning,
    /// Monitoring metadata appeared: Gray until the guest enables.
    SpecFound,
    /// Monitoring metadata is gone: the VM is left alone.
    SpecRemoved,
    /// Monitoring metadata is there but broken: the VM is left alone.
    BrokenMetadata {
        error: String,
    },
    PolicyChanged,
    GuestReportsEnabled,
    GuestReportsDisabled,
    GuestReportsNeedReset,
    ApplicationEnabled,
    ApplicationDisabled,
    NeedResetPosted,
    /// needReset while the application had not enabled monitoring.
    NeedResetIgnored,
    NeedResetWithdrawn,
    /// Reset history (and the alarm) loaded from the state directory at start.
    Restored {
        resets: u32,
        alarm: bool,
    },
}

/// Why appmon hands a domain to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Escalation {
    /// The reset budget is spent.
    GaveUp,
    /// A power-cycle (destroy + start) is due, and a cluster's transient domain cannot be
    /// started again by appmon.
    PowerCycle,
}

impl fmt::Display for Escalation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Escalation::GaveUp => "reset budget spent",
            Escalation::PowerCycle => "a power-cycle is due and cannot be done in place",
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Reset {
                method,
                cause,
                in_window,
                max_resets,
                completes_reset,
            } => write!(
                f,
                "{method}: {cause} ({}{in_window} of {max_resets} in the window)",
                if *completes_reset {
                    "completes the reset, "
                } else {
                    ""
                }
            ),
            Decision::ResetDone {
                method,
                cause,
                guest_back_first,
            } => {
                write!(f, "{method} done ({cause})")?;
                if *guest_back_first {
                    f.write_str("; the guest was back before libvirt answered")?;
                }
                Ok(())
            }
            Decision::ResetFailed {
                method,
                cause,
                error,
                retry_in_ms,
            } => write!(
                f,
                "{method} failed ({cause}): {error}; retrying in {retry_in_ms} ms if still needed"
            ),
            Decision::HeartbeatsOverdue {
                silent_ms,
                failure_interval_ms,
            } => write!(
                f,
                "no heartbeat for {silent_ms} ms (failure interval {failure_interval_ms} ms)"
            ),
            Decision::GaveUp {
                cause,
                resets_in_window,
                window_s,
                max_resets,
            } => write!(
                f,
                "gave up: {cause}, but {resets_in_window} reset(s) in the last {window_s} s already (max {max_resets})"
            ),
            Decision::Escalate { resource, reason } => write!(
                f,
                "{reason}: asking the cluster to recover resource {resource}"
            ),
            Decision::Escalated { resource } => {
                write!(f, "the cluster took the failure of resource {resource}")
            }
            Decision::EscalationFailed { resource, error } => write!(
                f,
                "could not escalate resource {resource} to the cluster: {error}"
            ),
            Decision::AlarmCleared => f.write_str("reset window has room again: alarm cleared"),
            Decision::OperatorCleared { forgotten } => write!(
                f,
                "operator cleared the alarm and {forgotten} reset(s) of the window"
            ),
            Decision::ClusterStartedAgain { forgotten } => write!(
                f,
                "the cluster started the VM again: alarm cleared and {forgotten} reset(s) of the window forgotten"
            ),
            Decision::ArrivedByMigration => f.write_str("arrived by migration: Gray until Enable"),
            Decision::Left { why } => write!(f, "left this host ({why}): no longer monitored here"),
            Decision::RebootedAwaitingChannel { wait_ms } => write!(
                f,
                "guest rebooted by itself; waiting {wait_ms} ms for its channel"
            ),
            Decision::GuestRebooted => f.write_str("guest rebooted"),
            Decision::ChannelBack { boot_id } => {
                write!(f, "guest channel is back (boot id {boot_id})")
            }
            Decision::ChannelNotBackNotRunning => f.write_str(
                "guest channel did not come back, but the domain is not running: no recovery",
            ),
            Decision::SpecFound => f.write_str("monitoring spec found: Gray until Enable"),
            Decision::SpecRemoved => f.write_str("monitoring spec removed: VM left alone"),
            Decision::BrokenMetadata { error } => write!(
                f,
                "broken monitoring metadata, domain left alone: {error}"
            ),
            Decision::PolicyChanged => f.write_str("monitoring policy changed"),
            Decision::GuestReportsEnabled => f.write_str("guest reports monitoring enabled"),
            Decision::GuestReportsDisabled => f.write_str("guest reports monitoring disabled"),
            Decision::GuestReportsNeedReset => f.write_str("guest reports a pending needReset"),
            Decision::ApplicationEnabled => f.write_str("application enabled monitoring"),
            Decision::ApplicationDisabled => f.write_str("application disabled monitoring"),
            Decision::NeedResetPosted => f.write_str("application posted needReset"),
            Decision::NeedResetIgnored => {
                f.write_str("needReset ignored: the application has not enabled monitoring")
            }
            Decision::NeedResetWithdrawn => f.write_str("application took back needReset"),
            Decision::Restored { resets, alarm } => write!(
                f,
                "restored {resets} reset(s){} from the state directory",
                if *alarm { " and the alarm" } else { "" }
            ),
        }
    }
}

/// A counter value of MON's alarm view: always a finite number (the host agent takes no other),
/// so it compares equal to itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Finite(pub f64);

impl Eq for Finite {}

impl fmt::Display for Finite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which threshold of a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmSide {
    Below,
    Above,
}

/// A counter's alarm raised or cleared. `entity` and `counter` are the guest's names, escaped
/// by the host agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmEvent {
    Raised {
        entity: String,
        counter: String,
        side: AlarmSide,
        value: Finite,
        threshold: Finite,
    },
    Cleared {
        entity: String,
        counter: String,
        side: AlarmSide,
        value: Finite,
    },
}

impl fmt::Display for AlarmEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = |side: &AlarmSide| match side {
            AlarmSide::Below => "below",
            AlarmSide::Above => "above",
        };
        match self {
            AlarmEvent::Raised {
                entity,
                counter,
                side,
                value,
                threshold,
            } => write!(
                f,
                "alarm raised: {entity} / {counter} = {value}, {} {threshold}",
                word(side)
            ),
            AlarmEvent::Cleared {
                entity,
                counter,
                side,
                value,
            } => write!(
                f,
                "alarm cleared: {entity} / {counter} = {value}, back from {}",
                word(side)
            ),
        }
    }
}

/// What happened to the guest's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestEvent {
    /// A guest agent said Hello.
    Connected { agent: String, boot_id: String },
    /// The session ended.
    SessionEnded { reason: SessionEnd },
    /// The guest agent cannot be reached by the VM's transport (recorded once per cause).
    Unreachable { error: String },
    /// Connecting to the guest agent failed for a reason of another kind than the last one
    /// recorded (repeats of a kind are counted in `appmonctl show`, not recorded). `held_back`:
    /// changes of reason since the previous entry that were not recorded, because the VM's
    /// reason changed more often than the host agent records.
    ConnectFailed {
        reason: ConnectFailure,
        held_back: u64,
    },
}

/// Why a connection to the guest agent did not become a session: what kind of failure it was
/// (the host agent's classification, which decides whether the reason changed) and its
/// details as they were reported (every text in them that came from the guest escaped).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnectFailure {
    pub kind: ConnectFailureKind,
    pub detail: String,
}

/// The kinds of [`ConnectFailure`]. The same kind with other details (a real vhost-user-vsock
/// backend drops a refused `CONNECT` as a broken pipe, a reset or a close, at random) is the
/// same reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectFailureKind {
    /// Dialing: the transport's socket could not be connected, or not in time.
    DialUnreachable,
    /// Dialing: the vsock backend dropped the `CONNECT`: nothing listens on that port in the
    /// guest.
    DialRefused,
    /// Dialing: the vsock backend answered the `CONNECT` with something other than `OK`.
    DialBadReply,
    /// A guest connection sent no Hello in time.
    NoHello,
    /// A guest connection was closed before its Hello.
    ClosedEarly,
    /// A guest connection sent bytes that are not a frame, or a frame over a limit.
    NotAFrame,
    /// A guest connection sent another message before its Hello.
    NotHelloFirst,
    /// Reading a guest connection failed.
    ReadFailed,
    /// The guest's Hello offered no protocol version this host agent speaks.
    Incompatible,
    /// The guest's Hello came from a boot older than the current session's.
    OlderBoot,
}

impl ConnectFailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailureKind::DialUnreachable => "dialing the guest agent failed",
            ConnectFailureKind::DialRefused => "the guest refused the dial",
            ConnectFailureKind::DialBadReply => "the vsock backend answered the dial wrongly",
            ConnectFailureKind::NoHello => "a guest connection sent no Hello",
            ConnectFailureKind::ClosedEarly => "a guest connection closed before its Hello",
            ConnectFailureKind::NotAFrame => "a guest connection sent no valid frame",
            ConnectFailureKind::NotHelloFirst => "a guest connection did not start with its Hello",
            ConnectFailureKind::ReadFailed => "reading a guest connection failed",
            ConnectFailureKind::Incompatible => "announcement refused: no common protocol version",
            ConnectFailureKind::OlderBoot => "announcement refused: an older boot",
        }
    }
}

impl ConnectFailure {
    pub fn new(kind: ConnectFailureKind, detail: impl Into<String>) -> Self {
        ConnectFailure {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

impl fmt::Display for GuestEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestEvent::Connected { agent, boot_id } => {
                write!(f, "{agent} connected, boot id {boot_id}")
            }
            GuestEvent::SessionEnded { reason } => write!(f, "session ended: {reason}"),
            GuestEvent::Unreachable { error } => {
                write!(f, "cannot reach the guest agent: {error}")
            }
            GuestEvent::ConnectFailed { reason, held_back } => {
                write!(f, "no session: {reason}")?;
                if *held_back > 0 {
                    write!(
                        f,
                        " ({held_back} earlier changes of reason not recorded: too many)"
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Why a guest session ended. Each is the host agent's decision on what the guest did (or did
/// not do), or the transport's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// The guest closed the connection.
    ClosedByGuest,
    ReadFailed {
        error: String,
    },
    /// More frames than the token bucket allows.
    Flood {
        frames_per_second: u32,
        burst: u32,
    },
    /// A frame that is not one (on a stream transport).
    BadFrame {
        error: String,
    },
    /// No Hello within the Hello timeout of the connection.
    NoHello {
        within_ms: u64,
    },
    /// No frame at all for this long (the keepalive's verdict).
    ChannelDead {
        silent_ms: u64,
    },
    /// A write did not finish within the write timeout: the guest does not read.
    WriteTimeout {
        after_ms: u64,
    },
    WriteFailed {
        error: String,
    },
    /// The guest's Hello offered no protocol version this host agent speaks.
    Incompatible {
        message: String,
    },
    /// The guest sent an error that ends the session.
    GuestRefused {
        error: String,
    },
    /// The guest announced itself on a new connection, which took this one's place.
    Replaced,
    /// The host closed it before resetting the guest.
    ClosedForReset,
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEnd::ClosedByGuest => f.write_str("guest closed the connection"),
            SessionEnd::Replaced => f.write_str("the guest announced itself on a new connection"),
            SessionEnd::ClosedForReset => {
                f.write_str("closed by the host before resetting the guest")
            }
            SessionEnd::ReadFailed { error } => write!(f, "read failed: {error}"),
            SessionEnd::Flood {
                frames_per_second,
                burst,
            } => write!(
                f,
                "guest floods: more than {frames_per_second} frames/s (burst {burst})"
            ),
            SessionEnd::BadFrame { error } => write!(f, "bad frame: {error}"),
            SessionEnd::NoHello { within_ms } => {
                write!(f, "no Hello within {within_ms} ms of the connection")
            }
            SessionEnd::ChannelDead { silent_ms } => {
                write!(f, "channel dead: no frame for {silent_ms} ms")
            }
            SessionEnd::WriteTimeout { after_ms } => write!(
                f,
                "guest does not read: a write took more than {after_ms} ms"
            ),
            SessionEnd::WriteFailed { error } => write!(f, "write failed: {error}"),
            SessionEnd::Incompatible { message } => {
                write!(f, "incompatible guest agent: {message}")
            }
            SessionEnd::GuestRefused { error } => {
                write!(f, "guest refused the session: {error}")
            }
        }
    }
}

/// What happened to the host agent's own time, which bears on every VM's judgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostEvent {
    /// The host agent was not scheduled for `paused_ms` (stopped, starved, a suspended host):
    /// every failure clock restarted from its wake instead of judging the gap.
    SchedulingPause { paused_ms: u64 },
    /// The wall clock moved by `by_ms` against the monotonic clock: history times before and
    /// after this entry are that much further apart (or closer) than the time that passed.
    /// Decisions never use the wall clock.
    WallClockMoved { by_ms: i64 },
}

impl fmt::Display for HostEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostEvent::SchedulingPause { paused_ms } => write!(
                f,
                "the host agent was not scheduled for {paused_ms} ms: failure clocks restarted, nothing judged on the gap"
            ),
            HostEvent::WallClockMoved { by_ms } => write!(
                f,
                "the wall clock moved by {by_ms} ms: history times before this entry are on the old clock"
            ),
        }
    }
}

/// The host agent's connection to libvirt: while it is lost nothing is judged and no reset is
/// attempted or counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HypervisorEvent {
    /// The connection to libvirt was lost.
    Lost { reason: String },
    /// The connection is back after `after_ms` without it.
    Back { after_ms: u64 },
}

impl fmt::Display for HypervisorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HypervisorEvent::Lost { reason } => write!(
                f,
                "libvirt connection lost ({reason}): nothing is judged until it is back"
            ),
            HypervisorEvent::Back { after_ms } => {
                write!(f, "libvirt connection back after {after_ms} ms")
            }
        }
    }
}

/// An operator's request that changed the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAction {
    /// `appmonctl clear`.
    Clear,
    /// `appmonctl enable`: monitoring metadata written.
    MetadataWritten,
    /// `appmonctl disable`: monitoring metadata removed.
    MetadataRemoved,
}

impl fmt::Display for OperatorAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OperatorAction::Clear => "clear",
            OperatorAction::MetadataWritten => "monitoring metadata written",
            OperatorAction::MetadataRemoved => "monitoring metadata removed",
        })
    }
}
