//! The per-VM monitoring policy: a pure state machine, `(state, input, now) -> (state, actions)`.
//!
//! No sockets, no libvirt, no clock: [`VmMachine::handle`] takes an [`Input`] and the current
//! monotonic time and returns [`Action`]s; [`VmMachine::next_deadline`] says when it wants to be
//! woken with [`Input::Tick`]. The supervisor feeds it; tests feed it a virtual clock.
//!
//! # Rules
//!
//! Defaults are vSphere's: failure interval 30 s, minimum uptime 120 s, at most 3 resets per
//! 1 h window, reset method `reset`. Each can be overridden per VM ([`Policy`]).
//!
//! **Status** (as the guest sees it):
//! - *Gray*: the host agent has no state for this guest: since it started, since the domain
//!   migrated in, or since monitoring metadata appeared. The guest agent must Enable again.
//!   Gray never causes a reset.
//! - *Green*: enabled, and the last heartbeat is at most one failure interval old.
//! - *Red*: enabled but heartbeats overdue, needReset posted, a reset under way, or given up;
//!   **and also disabled**. vSphere defines Red as "infrastructure does not think the
//!   application is being monitored", which is exactly a disabled application; Gray is kept
//!   for "no state at all", the only status after which a guest agent re-enables on its own.
//!
//! **Monitoring starts at Enable**: the last-heartbeat clock starts at the Enable (and at every
//! heartbeat). Heartbeats while not enabled are ignored.
//!
//! **A failure** is: enabled, domain running, `now - last_heartbeat > failure_interval`, and
//! `now - booted_at >= min_uptime`, where `booted_at` is the last start, reboot or reset seen by
//! this host agent (a domain that was already running when the host agent first saw it counts
//! from that moment: the conservative choice, as its real start time is unknown); a guest that
//! arrived by migration has no minimum uptime to wait for (see **Migration**).
//!
//! **A managed application** whose restarts are spent and whose policy says `reset`
//! ([`crate::managed`], [`Input::ApplicationFailed`]) resets at once too, enabled or not (the
//! application need not heartbeat), inside the minimum uptime, rate-limited like every reset;
//! forgotten when the guest's state is gone (the reset, a reboot, a power-off).
//!
//! **needReset** (posted while enabled) resets at once, **even inside the minimum uptime**: the
//! application asked explicitly, and the minimum uptime exists to protect slow starters that
//! have not begun to heartbeat, not to delay an explicit request. The rate limit still applies.
//! needReset while not enabled (Gray or disabled) is ignored and logged.
//!
//! **No failure while not running**: paused (user, migrating, saving, starting up), shut off,
//! crashed, or libvirt unreachable. When the domain runs again the heartbeat clock restarts, so
//! a heartbeat gap that overlaps such a period is never a failure.
//!
//! **Silence is judged on input that was read**: before heartbeats count as stopped on a VM
//! whose guest channel is up, the machine asks for the guest's pending input to be read
//! ([`Action::DrainInput`]) and judges when it was ([`Input::InputDrained`]), or at the latest
//! [`DRAIN_WAIT`] later (a session task that cannot answer is not waited for longer); no status
//! is pushed while it waits, as the verdict is not in. A
//! heartbeat that sat unread in a socket because the host agent itself was slow moves the clock
//! before the verdict and there is none. A needReset is not waited for: it was read.
//!
//! **A scheduling pause is not silence**: when the host agent was not scheduled for a while
//! (stopped, a host under memory pressure, a stalled disk; the supervisor notices its own
//! timers firing far past their deadlines), it feeds every machine [`Input::SchedulingPause`]
//! on waking, and every failure clock restarts from that moment, as after a domain pause: the
//! gap is the host's, not the application's. The wait for a channel after a reset or reboot is
//! lengthened by the pause. A reset under way is left alone: its outcome is recorded when it
//! comes, and nothing is decided twice.
//!
//! **Rate limit**: at most `max_resets` resets (every reset *attempt*, including failed ones and
//! the power-cycles that recover a guest whose channel was lost after it rebooted by itself) in
//! any sliding `reset_window`. The power-cycle that follows a `reset` which did not bring the
//! guest back is the second half of that same reset (DESIGN.md: "where a reset does not bring
//! the guest back, a hard destroy + start") and takes no slot of its own: on hosts where an
//! in-place reset wedges the vsock backend (vhost-device-vsock 0.3.0 does on any host-to-guest
//! packet during the reboot), every reset ends that way, and counting it twice would halve the
//! budget. A failure beyond that raises an alarm
//! ("gave up"): the VM is Red and is not reset until the window has room again (then a failure
//! that still holds resets it) or an operator clears the alarm (`appmonctl clear`, which also
//! forgets the window's resets and restarts the heartbeat clock).
//!
//! **After a reset or reboot** the guest's state is gone: monitoring is disabled until the guest
//! agent enables again. Reset method `reset` waits `channel_timeout` for the guest channel to
//! come back (a Hello with a new boot id) and power-cycles if it does not. The same recovery
//! applies when an enabled guest reboots by itself after its channel had been up. A reset that
//! libvirt refuses is retried one failure interval later, still rate limited. A guest that says
//! Hello with a new boot id while the reset call is still in flight has rebooted and is back:
//! libvirt's answer, when it comes, changes nothing of what the guest said since.
//!
//! **Silence after a reset or reboot**: from the moment the machine decides a reset (before
//! [`Action::Reset`]) or sees the guest reboot by itself, it sends that guest nothing (no status
//! push, no reply) until the guest's next Hello, and says so once with [`Action::Silence`], which
//! the supervisor passes to the session task (no keepalive, no dial); the one exception is the
//! answer to the request that caused the reset (needReset), which goes out before it. A host →
//! guest packet while a
//! guest reboots inside QEMU can wedge a userspace vsock backend (vhost-device-vsock 0.3.0 does);
//! the guest announces itself when it is back. Nor is a status pushed to a paused domain: it
//! goes out when the domain runs again.
//!
//! **Migration**: the source sees the domain paused (no failures) and then gone (the supervisor
//! drops it); the destination sees `Started(Migrated)` (paused, Gray) and `Resumed(Migrated)`
//! (running, Gray). The minimum uptime does not apply to a guest that arrived: it did not boot,
//! and its guest agent enables again only for an application that was being monitored at the
//! source, so one failure interval after that Enable a silent application is reset (vSphere HA
//! likewise does not restart the minimum uptime on vMotion, which is no power-on).
//!
//! **Inside a cluster** (the spec names a Pacemaker resource, [`Policy::cluster_resource`]):
//! the cluster owns where the domain runs and its start and stop; appmon keeps the in-place
//! reset. When the reset budget is spent, the alarm is raised as everywhere and the machine
//! also asks the cluster to recover the resource ([`Action::Escalate`]): Pacemaker restarts
//! the VM, or moves it once its migration-threshold is reached. A power-cycle (destroy +
//! start) is never done on such a domain: the cluster creates it transient, so a destroyed
//! one cannot be started again by appmon; the power-cycle is escalated instead, takes the
//! reset's slot in the window as it would have, and if the cluster does nothing the failure
//! that still holds is judged again one failure interval later. Without a cluster resource,
//! nothing of this applies.
//!
//! **No spec, no action**: a machine without a [`Policy`] never emits a reset or an alarm.
//!
//! **Adopting guest state**: when the host has state for the guest (a mere reconnect), the
//! guest's `State` fills gaps: its `enabled` is the truth (the application may have disabled
//! while the channel was down), a newer heartbeat age moves the clock forward (never back), and
//! a pending needReset is taken as posted. With no state (Gray), the guest's state is ignored
//! and the guest is told Gray.
//!
//! **Status push**: the guest is told its status (`Event AppStatus`) once its `State` is in, on
//! every session, whether or not the status changed since the last one (the guest agent
//! reports only a status received in its current session), and then whenever it changes.
//! Nothing is pushed between the Hello and the State: the status then would not yet reflect
//! what the guest reports.
//!
//! **Answers to the guest** ([`Input::Guest`] → [`Action::Reply`]): `Enable`, `Disable`,
//! `PostAppState(NeedReset)` and `GetAppStatus` are answered with the status once the request
//! is applied, and that reply stands for the status push of the same moment (no separate
//! `AppStatus` event); `IsEnabled` is answered with whether monitoring is enabled,
//! `PostAppState(Ok)` with `Ack`. Sent as events (no request id) they are applied and not
//! answered.

use std::collections::VecDeque;
use std::time::Duration;

use appmon_control::{
    Decision, DomainEvent, DomainState, Escalation, ResetMethod, RunningReason, StartedReason,
};
pub use appmon_control::{Level, ResetCause};
use appmon_wire::{format_boot_id, AppState, AppStatus, GuestState, HostMsg, RequestId};

/// The smallest step of the clock the rules compare with `>`.
const EPSILON: Duration = Duration::from_millis(1);

/// The longest a heartbeat verdict waits for the guest's pending input to be read (see
/// "Silence is judged on input that was read"): a session task that has not answered by then
/// is stuck, and its guest is judged on what was read.
pub const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Where the machine is in reading the guest's pending input before a heartbeat verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Nothing asked.
    Idle,
    /// [`Action::DrainInput`] went out; the verdict waits until the answer or `until`.
    Asked { until: Duration },
    /// The pending input was read and applied: the verdict is taken on it.
    Done,
}

/// A VM's effective policy: the spec's overrides on top of the host defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub failure_interval: Duration,
    pub min_uptime: Duration,
    pub max_resets: u32,
    pub reset_window: Duration,
    pub reset_method: ResetMethod,
    /// How long to wait for the guest channel after a reset or reboot before power-cycling.
    pub channel_timeout: Duration,
    /// The Pacemaker resource that runs this domain, if a cluster does (see "Inside a
    /// cluster").
    pub cluster_resource: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            failure_interval: Duration::from_secs(30),
            min_uptime: Duration::from_secs(120),
            max_resets: 3,
            reset_window: Duration::from_secs(3600),
            reset_method: ResetMethod::Reset,
            channel_timeout: Duration::from_secs(60),
            cluster_resource: None,
        }
    }
}

/// Whether the domain can fail right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Running,
    /// Paused for any reason, including migrating, saving and an incoming migration.
    Paused,
    /// Shut off or crashed.
    Off,
    /// libvirt is unreachable or reports a state we do not act on.
    Unknown,
}

impl Phase {
    pub fn from_state(state: DomainState) -> Self {
        match state {
            DomainState::Running(_) => Phase::Running,
            DomainState::Paused(_) => Phase::Paused,
            DomainState::ShutOff(_) | DomainState::Crashed => Phase::Off,
            DomainState::Other => Phase::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Off => "off",
            Phase::Unknown => "unknown",
        }
    }
}

/// The application's monitoring as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitoring {
    /// No state for this guest (Gray).
    Unknown,
    Disabled,
    Enabled {
        last_heartbeat: Duration,
    },
}

/// One reset attempt, kept while it is inside the reset window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetRecord {
    /// Monotonic time of the attempt.
    pub at: Duration,
    pub method: ResetMethod,
    pub reason: String,
}

/// The "gave up" alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub at: Duration,
    pub reason: String,
    /// The cluster took this give-up's escalation ([`Input::ClusterTookOver`]).
    pub cluster_took: Option<ClusterTook>,
}

/// The cluster took a give-up's escalation while the guest ran `boot_id` (`None`: no guest had
/// announced itself). The first Hello of another boot is the VM the cluster started again: it
/// gets the full reset budget. Until then the alarm stands, so the old domain, which the cluster
/// is stopping, is never reset again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterTook {
    pub boot_id: Option<[u8; 16]>,
}

/// What happens between a reset and the guest being back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Idle,
    /// A reset was issued; its result has not come back.
    Resetting {
        method: ResetMethod,
        cause: ResetCause,
    },
    /// Waiting for a Hello with a boot id other than `old_boot`.
    AwaitingChannel {
        deadline: Duration,
        old_boot: Option<[u8; 16]>,
        after_reset: bool,
    },
}

/// A request from the guest agent that the policy answers (or, sent as an event, only
/// applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRequest {
    Enable,
    Disable,
    PostAppState(AppState),
    GetAppStatus,
    IsEnabled,
}

/// What the machine is fed.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The domain's state from a listing or lookup (no event history implied).
    DomainState(DomainState),
    /// A libvirt lifecycle event.
    Domain(DomainEvent),
    /// libvirtd went away: nothing can be judged until a fresh state arrives.
    HypervisorLost,
    /// The monitoring spec changed: `None` when it was removed or is broken.
    Policy(Option<Policy>),
    /// The guest's Hello arrived on a new session.
    GuestHello {
        boot_id: [u8; 16],
    },
    /// The guest's full state, sent after its Hello.
    GuestState(GuestState),
    Enable,
    Disable,
    Heartbeat,
    PostAppState(AppState),
    /// A request or event from the guest agent (`id` is `None` for an event: no reply). A
    /// request is answered with [`Action::Reply`]; a reply that carries the status stands for
    /// the status push of the same moment.
    Guest {
        id: Option<RequestId>,
        request: GuestRequest,
    },
    /// The session to the guest ended.
    ChannelClosed,
    ResetDone,
    ResetFailed {
        error: String,
    },
    /// An operator cleared the alarm and the window's resets.
    Clear,
    /// The cluster took this VM's escalation ([`Action::Escalate`]). After a give-up it owns
    /// the recovery: the next boot of the guest is the VM it started again ([`ClusterTook`]).
    ClusterTookOver,
    /// A managed application's restarts are spent and its policy escalates to a reset
    /// ([`crate::managed`]): reset at once, through the reset budget.
    ApplicationFailed {
        application: String,
    },
    /// The guest's input that was pending when [`Action::DrainInput`] went out has been read
    /// and applied.
    InputDrained,
    /// The host agent was not scheduled for `paused` and woke now: restart every failure
    /// clock from now (see "A scheduling pause is not silence").
    SchedulingPause {
        paused: Duration,
    },
    /// Time passed.
    Tick,
}

/// What the machine asks of the world.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Reset the VM now.
    Reset {
        method: ResetMethod,
        cause: ResetCause,
    },
    /// Gave up: the rate limit is exhausted.
    Alarm { reason: String },
    /// Ask the cluster to recover the domain's resource (see "Inside a cluster").
    Escalate { resource: String },
    /// Tell the guest its new status.
    SendStatus(AppStatus),
    /// The reset history or alarm changed: write it to the state directory.
    Persist,
    /// Answer the guest's request `id`.
    Reply { id: RequestId, msg: HostMsg },
    /// From now until the guest's next Hello, send it nothing (see "Silence after a reset or
    /// reboot").
    Silence,
    /// Read what the guest sent and is not read yet, then feed [`Input::InputDrained`].
    DrainInput,
    /// A decision and its reason, for the log and the VM's event history.
    Note { level: Level, decision: Decision },
}

/// One VM's monitoring state.
#[derive(Debug, Clone)]
pub struct VmMachine {
    policy: Option<Policy>,
    phase: Phase,
    /// When the guest last booted as far as this agent knows (start, reboot, reset; or when it
    /// was first seen running). `None`: it arrived by migration, so it did not boot here and
    /// the minimum uptime (a guard for applications still starting after a boot) is over.
    booted_at: Option<Duration>,
    monitoring: Monitoring,
    need_reset: bool,
    resets: VecDeque<ResetRecord>,
    alarm: Option<Alarm>,
    pending: Pending,
    retry_at: Option<Duration>,
    channel_up: bool,
    boot_id: Option<[u8; 16]>,
    hello_since_boot: bool,
    status_sent: Option<AppStatus>,
    /// Between a Hello and the guest's State: no status is pushed.
    awaiting_state: bool,
    /// The guest's boot id when the reset in flight was issued.
    boot_at_reset: Option<[u8; 16]>,
    /// The guest said Hello with a boot id other than the one it had when the reset was issued,
    /// while the reset was in flight: it rebooted and is back before libvirt's answer arrived,
    /// and what it said since is fresh.
    back_during_reset: bool,
    /// A managed application asked for a reset (its name); until the guest's state is gone.
    app_reset: Option<String>,
    /// A reset was decided or the guest rebooted, and no Hello came since: send it nothing.
    silent: bool,
    /// Reading the guest's pending input before a heartbeat verdict.
    drain: Drain,
}

impl VmMachine {
    /// A VM first seen at `now` in `state`: Gray, minimum uptime counted from now.
    pub fn new(now: Duration, state: DomainState, policy: Option<Policy>) -> Self {
        VmMachine {
            policy,
            phase: Phase::from_state(state),
            booted_at: Some(now),
            monitoring: Monitoring::Unknown,
            need_reset: false,
            resets: VecDeque::new(),
            alarm: None,
            pending: Pending::Idle,
            retry_at: None,
            channel_up: false,
            boot_id: None,
            hello_since_boot: false,
            status_sent: None,
            awaiting_state: false,
            boot_at_reset: None,
            back_during_reset: false,
            app_reset: None,
            silent: false,
            drain: Drain::Idle,
        }
    }

    /// Whether the guest is sent nothing until its next Hello.
    pub fn silent(&self) -> bool {
        self.silent
    }

    /// Puts back reset history and alarm loaded from the state directory.
    pub fn restore(&mut self, resets: Vec<ResetRecord>, alarm: Option<Alarm>) {
        self.resets = resets.into();
        self.alarm = alarm;
    }

    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn monitoring(&self) -> Monitoring {
        self.monitoring
    }

    pub fn alarm(&self) -> Option<&Alarm> {
        self.alarm.as_ref()
    }

    pub fn pending(&self) -> Pending {
        self.pending
    }

    pub fn need_reset(&self) -> bool {
        self.need_reset
    }

    pub fn resets(&self) -> impl Iterator<Item = &ResetRecord> {
        self.resets.iter()
    }

    pub fn boot_id(&self) -> Option<[u8; 16]> {
        self.boot_id
    }

    pub fn channel_up(&self) -> bool {
        self.channel_up
    }

    /// Resets inside the window ending at `now`.
    pub fn resets_in_window(&self, now: Duration) -> usize {
        let Some(policy) = &self.policy else {
            return 0;
        };
        self.resets
            .iter()
            .filter(|r| now.saturating_sub(r.at) < policy.reset_window)
            .count()
    }

    /// The status the guest should see; `None` when the VM is not monitored.
    pub fn status(&self, now: Duration) -> Option<AppStatus> {
        let policy = self.policy.as_ref()?;
        Some(match self.monitoring {
            Monitoring::Unknown => AppStatus::Gray,
            Monitoring::Disabled => AppStatus::Red,
            Monitoring::Enabled { last_heartbeat } => {
                // Silence counts only while the domain runs: a paused, migrating or saving
                // domain (or one libvirt cannot tell about) is not judged, and not shown Red for
                // it; its clock restarts when it runs again.
                let overdue = self.phase == Phase::Running
                    && now.saturating_sub(last_heartbeat) > policy.failure_interval;
                if self.need_reset
                    || self.alarm.is_some()
                    || self.pending != Pending::Idle
                    || overdue
                {
                    AppStatus::Red
                } else {
                    AppStatus::Green
                }
            }
        })
    }

    /// Whether the application enabled monitoring.
    pub fn enabled(&self) -> bool {
        matches!(self.monitoring, Monitoring::Enabled { .. })
    }

    /// When the machine next wants a [`Input::Tick`]: the earliest deadline after `now`.
    pub fn next_deadline(&self, now: Duration) -> Option<Duration> {
        let policy = self.policy.as_ref()?;
        let mut candidates: [Option<Duration>; 6] = [None; 6];
        if let Drain::Asked { until } = self.drain {
            candidates[5] = Some(until);
        }
        if let Pending::AwaitingChannel { deadline, .. } = self.pending {
            candidates[0] = Some(deadline);
        }
        if self.alarm.is_some() && policy.max_resets > 0 {
            // Room again when the oldest reset in the window leaves it.
            candidates[1] = self
                .resets
                .iter()
                .filter(|r| now.saturating_sub(r.at) < policy.reset_window)
                .map(|r| r.at + policy.reset_window)
                .min();
        }
        if let Monitoring::Enabled { last_heartbeat } = self.monitoring {
            let overdue_at = last_heartbeat + policy.failure_interval + EPSILON;
            // The status turns Red when heartbeats are overdue, counted or not.
            candidates[2] = Some(overdue_at);
            if self.phase == Phase::Running && self.pending == Pending::Idle {
                let mut at = match self.booted_at {
                    Some(booted) => overdue_at.max(booted + policy.min_uptime),
                    None => overdue_at,
                };
                if self.need_reset {
                    at = now;
                }
                if let Some(retry) = self.retry_at {
                    at = at.max(retry);
                }
                candidates[3] = Some(at);
            }
        }
        if self.app_reset.is_some() && self.phase == Phase::Running && self.pending == Pending::Idle
        {
            candidates[4] = self.retry_at;
        }
        candidates.into_iter().flatten().filter(|&d| d > now).min()
    }

    /// Feeds one input at `now`; returns what to do.
    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        let silent_before = self.silent;
        let (input, ask) = match input {
            Input::Guest { id, request } => (applied(request), id.map(|id| (id, request))),
            other => (Some(other), None),
        };
        if let Some(input) = input {
            self.apply(input, now, &mut out);
        }
        self.evaluate(now, &mut out);
        let carries_status = match ask {
            Some(_) if silent_before => false,
            Some((id, request)) => {
                let (msg, carries_status) = self.answer(request, now);
                // A request that led to a reset (needReset) is answered before the reset
                // goes out, and then nothing more.
                let at = out
                    .iter()
                    .position(|a| matches!(a, Action::Silence))
                    .unwrap_or(out.len());
                out.insert(at, Action::Reply { id, msg });
                carries_status
            }
            None => false,
        };
        if carries_status {
            // The reply carries the status: no separate event for it.
            self.status_sent = self.status(now).or(Some(AppStatus::Gray));
        } else if self.channel_up
            && !self.awaiting_state
            && !self.silent
            && self.phase != Phase::Paused
            && !matches!(self.drain, Drain::Asked { .. })
        {
            if let Some(status) = self.status(now) {
                if self.status_sent != Some(status) {
                    self.status_sent = Some(status);
                    out.push(Action::SendStatus(status));
                }
            }
        }
        out
    }

    /// The answer to a guest's request once it is applied, and whether it carries the status.
    fn answer(&self, request: GuestRequest, now: Duration) -> (HostMsg, bool) {
        match request {
            GuestRequest::IsEnabled => (HostMsg::Enabled(self.enabled()), false),
            GuestRequest::PostAppState(AppState::Ok) => (HostMsg::Ack, false),
            GuestRequest::Enable
            | GuestRequest::Disable
            | GuestRequest::PostAppState(AppState::NeedReset)
            | GuestRequest::GetAppStatus => (
                HostMsg::AppStatus(self.status(now).unwrap_or(AppStatus::Gray)),
                true,
            ),
        }
    }

    fn note(out: &mut Vec<Action>, level: Level, decision: Decision) {
        out.push(Action::Note { level, decision });
    }

    /// The guest's state is gone (reboot, reset, power-off, fresh start).
    fn guest_state_gone(&mut self, now: Duration) {
        if self.monitoring != Monitoring::Unknown {
            self.monitoring = Monitoring::Disabled;
        }
        self.need_reset = false;
        self.app_reset = None;
        self.booted_at = Some(now);
        self.hello_since_boot = false;
        self.retry_at = None;
    }

    fn enter_phase(&mut self, phase: Phase, now: Duration) {
        if phase == Phase::Running && self.phase != Phase::Running {
            // A gap that overlaps a pause, migration or outage is not a failure.
            if let Monitoring::Enabled { last_heartbeat } = &mut self.monitoring {
                *last_heartbeat = (*last_heartbeat).max(now);
            }
            self.drain = Drain::Idle;
        }
        self.phase = phase;
    }

    fn apply(&mut self, input: Input, now: Duration, out: &mut Vec<Action>) {
        match input {
            Input::DomainState(state) => self.enter_phase(Phase::from_state(state), now),
            Input::HypervisorLost => self.enter_phase(Phase::Unknown, now),
            Input::Domain(event) => self.domain_event(event, now, out),
            Input::Policy(policy) => self.set_policy(policy, out),
            Input::GuestHello { boot_id } => self.guest_hello(boot_id, now, out),
            Input::GuestState(state) => {
                // The session's first status goes out now, changed or not.
                self.awaiting_state = false;
                self.status_sent = None;
                self.adopt(state, now, out);
            }
            Input::Enable | Input::Disable | Input::Heartbeat | Input::PostAppState(_) => {
                // A guest that talks is past its handshake, State or not.
                self.awaiting_state = false;
                self.guest_input(input, now, out);
            }
            other => self.other_input(other, now, out),
        }
    }

    /// What the application asked through the guest agent.
    fn guest_input(&mut self, input: Input, now: Duration, out: &mut Vec<Action>) {
        match input {
            Input::Enable => {
                if self.policy.is_none() {
                    return;
                }
                self.monitoring = Monitoring::Enabled {
                    last_heartbeat: now,
                };
                self.need_reset = false;
                Self::note(out, Level::Info, Decision::ApplicationEnabled);
            }
            Input::Disable => {
                if self.policy.is_none() {
                    return;
                }
                if self.enabled() {
                    Self::note(out, Level::Info, Decision::ApplicationDisabled);
                }
                self.monitoring = Monitoring::Disabled;
                self.need_reset = false;
            }
            Input::Heartbeat => {
                if let Monitoring::Enabled { last_heartbeat } = &mut self.monitoring {
                    *last_heartbeat = (*last_heartbeat).max(now);
                    self.drain = Drain::Idle;
                }
            }
            Input::PostAppState(AppState::NeedReset) => {
                if self.policy.is_none() {
                    return;
                }
                if self.enabled() {
                    if !self.need_reset {
                        Self::note(out, Level::Warn, Decision::NeedResetPosted);
                    }
                    self.need_reset = true;
                } else {
                    Self::note(out, Level::Warn, Decision::NeedResetIgnored);
                }
            }
            Input::PostAppState(AppState::Ok) => {
                if self.need_reset {
                    Self::note(out, Level::Info, Decision::NeedResetWithdrawn);
                }
                self.need_reset = false;
            }
            _ => {}
        }
    }

    /// The session, libvirt's answers to a reset, the operator, the clock.
    fn other_input(&mut self, input: Input, now: Duration, out: &mut Vec<Action>) {
        match input {
            Input::InputDrained => {
                if matches!(self.drain, Drain::Asked { .. }) {
                    self.drain = Drain::Done;
                }
            }
            Input::SchedulingPause { paused } => {
                if let Monitoring::Enabled { last_heartbeat } = &mut self.monitoring {
                    *last_heartbeat = (*last_heartbeat).max(now);
                }
                self.drain = Drain::Idle;
                if let Pending::AwaitingChannel { deadline, .. } = &mut self.pending {
                    *deadline += paused;
                }
            }
            Input::ChannelClosed => {
                self.channel_up = false;
                self.status_sent = None;
                self.awaiting_state = false;
            }
            Input::ApplicationFailed { application } => {
                if self.policy.is_some() && self.phase == Phase::Running {
                    self.app_reset = Some(application);
                }
            }
            Input::ResetDone => {
                if let Pending::Resetting { method, cause } = self.pending {
                    if self.back_during_reset {
                        // libvirt's answer comes after the rebooted guest's Hello and State
                        // (the answer and the guest take different ways here): its state is
                        // already the new boot's, and wiping it would lose an Enable.
                        self.pending = Pending::Idle;
                        self.booted_at = Some(now);
                        self.retry_at = None;
                        self.app_reset = None;
                        Self::note(
                            out,
                            Level::Info,
                            Decision::ResetDone {
                                method,
                                cause,
                                guest_back_first: true,
                            },
                        );
                        return;
                    }
                    let old_boot = self.boot_at_reset;
                    self.guest_state_gone(now);
                    self.pending = match (method, &self.policy) {
                        (ResetMethod::Reset, Some(policy)) => Pending::AwaitingChannel {
                            deadline: now + policy.channel_timeout,
                            old_boot,
                            after_reset: true,
                        },
                        _ => Pending::Idle,
                    };
                    Self::note(
                        out,
                        Level::Info,
                        Decision::ResetDone {
                            method,
                            cause,
                            guest_back_first: false,
                        },
                    );
                }
            }
            Input::ResetFailed { error } => {
                if let Pending::Resetting { method, cause } = self.pending {
                    self.pending = Pending::Idle;
                    let retry = self
                        .policy
                        .as_ref()
                        .map(|p| now + p.failure_interval)
                        .unwrap_or(now);
                    self.retry_at = Some(retry);
                    Self::note(
                        out,
                        Level::Error,
                        Decision::ResetFailed {
                            method,
                            cause,
                            error,
                            retry_in_ms: millis(retry.saturating_sub(now)),
                        },
                    );
                }
            }
            Input::Clear => {
                let forgotten = self.forget_budget(now, out);
                Self::note(out, Level::Warn, Decision::OperatorCleared { forgotten });
            }
            // Only a give-up hands the VM to the cluster; an escalated power-cycle keeps its
            // slot in the window (appmon goes on judging the VM the cluster keeps running).
            Input::ClusterTookOver => {
                let boot_id = self.boot_id;
                if let Some(alarm) = self.alarm.as_mut().filter(|a| a.cluster_took.is_none()) {
                    alarm.cluster_took = Some(ClusterTook { boot_id });
                    out.push(Action::Persist);
                }
            }
            Input::Tick
            | Input::DomainState(_)
            | Input::HypervisorLost
            | Input::Domain(_)
            | Input::Policy(_)
            | Input::GuestHello { .. }
            | Input::GuestState(_)
            | Input::Enable
            | Input::Disable
            | Input::Heartbeat
            | Input::PostAppState(_)
            | Input::Guest { .. } => {}
        }
    }

    fn domain_event(&mut self, event: DomainEvent, now: Duration, out: &mut Vec<Action>) {
        match event {
            DomainEvent::Started(StartedReason::Migrated) => {
                // The incoming side of a migration: not here until Resumed(Migrated).
                self.phase = Phase::Paused;
                self.arrived_by_migration();
            }
            DomainEvent::Started(_) => {
                self.guest_state_gone(now);
                self.cancel_awaiting_unless_ours();
                self.enter_phase(Phase::Running, now);
            }
            DomainEvent::Suspended(_) => self.enter_phase(Phase::Paused, now),
            DomainEvent::Resumed(RunningReason::Migrated) => {
                self.arrived_by_migration();
                self.enter_phase(Phase::Running, now);
                if self.policy.is_some() {
                    Self::note(out, Level::Info, Decision::ArrivedByMigration);
                }
            }
            DomainEvent::Resumed(_) => self.enter_phase(Phase::Running, now),
            DomainEvent::Stopped(_) | DomainEvent::Crashed => {
                self.enter_phase(Phase::Off, now);
                self.guest_state_gone(now);
                self.cancel_awaiting_unless_ours();
            }
            DomainEvent::Rebooted => self.rebooted(now, out),
            DomainEvent::Defined
            | DomainEvent::Undefined
            | DomainEvent::ShutdownFinished
            | DomainEvent::Watchdog
            | DomainEvent::MetadataChanged => {}
        }
    }

    /// The guest arrived by migration: Gray, and no minimum uptime (it did not boot here). The
    /// guest agent enables again only for an application that was monitored at the source, so
    /// the failure interval from that Enable is the guard.
    fn arrived_by_migration(&mut self) {
        self.monitoring = Monitoring::Unknown;
        self.need_reset = false;
        self.cancel_awaiting_unless_ours();
        self.retry_at = None;
        self.booted_at = None;
        self.hello_since_boot = false;
    }

    /// Ends a wait for the guest channel; a reset in flight still reports its result (a stop or
    /// start during our own power-cycle must not lose it).
    fn cancel_awaiting_unless_ours(&mut self) {
        if matches!(self.pending, Pending::AwaitingChannel { .. }) {
            self.pending = Pending::Idle;
        }
    }

    fn rebooted(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.pending != Pending::Idle {
            // Our own reset (libvirt reports several reboot events for one).
            return;
        }
        let was_enabled = self.enabled();
        let channel_was_up = self.hello_since_boot;
        let old_boot = self.boot_id;
        self.guest_state_gone(now);
        self.silence(out);
        let Some(policy) = &self.policy else {
            return;
        };
        if was_enabled && channel_was_up {
            self.pending = Pending::AwaitingChannel {
                deadline: now + policy.channel_timeout,
                old_boot,
                after_reset: false,
            };
            Self::note(
                out,
                Level::Warn,
                Decision::RebootedAwaitingChannel {
                    wait_ms: millis(policy.channel_timeout),
                },
            );
        } else {
            Self::note(out, Level::Info, Decision::GuestRebooted);
        }
    }

    /// Nothing more goes to the guest until its next Hello.
    fn silence(&mut self, out: &mut Vec<Action>) {
        if !self.silent {
            self.silent = true;
            out.push(Action::Silence);
        }
    }

    fn set_policy(&mut self, policy: Option<Policy>, out: &mut Vec<Action>) {
        match (&self.policy, policy) {
            (None, None) => {}
            (Some(_), None) => {
                self.policy = None;
                self.monitoring = Monitoring::Unknown;
                self.need_reset = false;
                // A reset already issued still reports its result.
                self.cancel_awaiting_unless_ours();
                self.retry_at = None;
                Self::note(out, Level::Warn, Decision::SpecRemoved);
            }
            (None, Some(p)) => {
                self.policy = Some(p);
                self.monitoring = Monitoring::Unknown;
                Self::note(out, Level::Info, Decision::SpecFound);
            }
            (Some(old), Some(p)) => {
                if *old != p {
                    Self::note(out, Level::Info, Decision::PolicyChanged);
                }
                self.policy = Some(p);
            }
        }
    }

    fn guest_hello(&mut self, boot_id: [u8; 16], now: Duration, out: &mut Vec<Action>) {
        let took = self.alarm.as_ref().and_then(|a| a.cluster_took);
        if took.is_some_and(|took| took.boot_id != Some(boot_id)) {
            let forgotten = self.forget_budget(now, out);
            Self::note(
                out,
                Level::Warn,
                Decision::ClusterStartedAgain { forgotten },
            );
        }
        self.channel_up = true;
        self.silent = false;
        self.status_sent = None;
        self.awaiting_state = true;
        if matches!(self.pending, Pending::Resetting { .. })
            && self.boot_at_reset.is_some_and(|old| old != boot_id)
        {
            self.back_during_reset = true;
        }
        self.hello_since_boot = true;
        let rebooted = self.boot_id.is_some_and(|old| old != boot_id);
        if let Pending::AwaitingChannel { old_boot, .. } = self.pending {
            if old_boot != Some(boot_id) {
                self.pending = Pending::Idle;
                Self::note(
                    out,
                    Level::Info,
                    Decision::ChannelBack {
                        boot_id: format_boot_id(&boot_id),
                    },
                );
            }
        }
        if rebooted && self.monitoring != Monitoring::Unknown {
            // A reboot we did not see as an event: the guest's state is gone.
            self.monitoring = Monitoring::Disabled;
            self.need_reset = false;
        }
        self.boot_id = Some(boot_id);
    }

    fn adopt(&mut self, state: GuestState, now: Duration, out: &mut Vec<Action>) {
        if self.policy.is_none() {
            return;
        }
        match (self.monitoring, state.enabled) {
            (Monitoring::Unknown, _) => {
                // Gray: the guest enables again on its own.
            }
            (_, false) => {
                if self.enabled() {
                    Self::note(out, Level::Info, Decision::GuestReportsDisabled);
                }
                self.monitoring = Monitoring::Disabled;
                self.need_reset = false;
            }
            (Monitoring::Disabled, true) => {
                self.monitoring = Monitoring::Enabled {
                    last_heartbeat: now,
                };
                Self::note(out, Level::Info, Decision::GuestReportsEnabled);
            }
            (Monitoring::Enabled { last_heartbeat }, true) => {
                if let Some(age) = state.last_heartbeat_age_ms {
                    let seen = now.saturating_sub(Duration::from_millis(age));
                    self.monitoring = Monitoring::Enabled {
                        last_heartbeat: last_heartbeat.max(seen),
                    };
                }
            }
        }
        if state.need_reset && self.enabled() && !self.need_reset {
            self.need_reset = true;
            Self::note(out, Level::Warn, Decision::GuestReportsNeedReset);
        }
    }

    /// Decides whether to reset, give up, or clear the alarm.
    fn evaluate(&mut self, now: Duration, out: &mut Vec<Action>) {
        let Some(policy) = self.policy.clone() else {
            return;
        };
        // Forget resets that left the window.
        while self
            .resets
            .front()
            .is_some_and(|r| now.saturating_sub(r.at) >= policy.reset_window)
        {
            self.resets.pop_front();
            out.push(Action::Persist);
        }
        if self.alarm.is_some() && self.resets.len() < policy.max_resets as usize {
            self.alarm = None;
            out.push(Action::Persist);
            Self::note(out, Level::Warn, Decision::AlarmCleared);
        }
        if let Pending::AwaitingChannel {
            deadline,
            after_reset,
            ..
        } = self.pending
        {
            if now < deadline {
                return;
            }
            self.pending = Pending::Idle;
            if self.phase != Phase::Running {
                Self::note(out, Level::Info, Decision::ChannelNotBackNotRunning);
                return;
            }
            if after_reset {
                // Completes the reset that did not bring the guest back: already counted.
                self.issue_reset(
                    &policy,
                    ResetMethod::PowerCycle,
                    ResetCause::ChannelLostAfterReset,
                    true,
                    now,
                    out,
                );
            } else {
                let cause = ResetCause::ChannelLostAfterReboot;
                self.try_reset(&policy, ResetMethod::PowerCycle, cause, now, out);
            }
            return;
        }
        if self.pending != Pending::Idle || self.phase != Phase::Running {
            return;
        }
        if self.retry_at.is_some_and(|at| now < at) {
            return;
        }
        if self.app_reset.is_some() {
            // Asked for by a managed application's policy, whether or not the application
            // heartbeats: rate-limited like any other reset.
            if self.alarm.is_none() {
                let cause = ResetCause::ManagedApplication;
                self.try_reset(&policy, policy.reset_method, cause, now, out);
            }
            return;
        }
        let Monitoring::Enabled { last_heartbeat } = self.monitoring else {
            return;
        };
        let cause = if self.need_reset {
            ResetCause::NeedReset
        } else if now.saturating_sub(last_heartbeat) > policy.failure_interval
            && self
                .booted_at
                .is_none_or(|booted| now.saturating_sub(booted) >= policy.min_uptime)
        {
            ResetCause::HeartbeatsStopped
        } else {
            // A drain answers for one verdict only.
            self.drain = Drain::Idle;
            return;
        };
        if self.alarm.is_some() {
            return;
        }
        if cause == ResetCause::HeartbeatsStopped && self.channel_up {
            match self.drain {
                Drain::Done => {}
                Drain::Asked { until } if now >= until => {}
                Drain::Asked { .. } => return,
                Drain::Idle => {
                    self.drain = Drain::Asked {
                        until: now + DRAIN_WAIT,
                    };
                    out.push(Action::DrainInput);
                    return;
                }
            }
        }
        self.drain = Drain::Idle;
        if cause == ResetCause::HeartbeatsStopped {
            Self::note(
                out,
                Level::Warn,
                Decision::HeartbeatsOverdue {
                    silent_ms: millis(now.saturating_sub(last_heartbeat)),
                    failure_interval_ms: millis(policy.failure_interval),
                },
            );
        }
        self.try_reset(&policy, policy.reset_method, cause, now, out);
    }

    fn try_reset(
        &mut self,
        policy: &Policy,
        method: ResetMethod,
        cause: ResetCause,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        self.retry_at = None;
        if self.resets_in_window(now) >= policy.max_resets as usize {
            if self.alarm.is_none() {
                let gave_up = Decision::GaveUp {
                    cause,
                    resets_in_window: count(self.resets_in_window(now)),
                    window_s: policy.reset_window.as_secs(),
                    max_resets: policy.max_resets,
                };
                let reason = gave_up.to_string();
                self.alarm = Some(Alarm {
                    at: now,
                    reason: reason.clone(),
                    cluster_took: None,
                });
                Self::note(out, Level::Error, gave_up);
                out.push(Action::Alarm { reason });
                out.push(Action::Persist);
                if let Some(resource) = &policy.cluster_resource {
                    Self::escalate(out, resource, Escalation::GaveUp);
                }
            }
            return;
        }
        self.resets.push_back(ResetRecord {
            at: now,
            method,
            reason: cause.to_string(),
        });
        out.push(Action::Persist);
        self.issue_reset(policy, method, cause, false, now, out);
    }

    /// Clears the alarm and the window's resets (an operator's `clear`, or the VM the cluster
    /// started again after a give-up); returns how many resets were forgotten. The failure
    /// clock counts from now, not from a silence the alarm covered.
    fn forget_budget(&mut self, now: Duration, out: &mut Vec<Action>) -> u32 {
        let forgotten = self.resets.len();
        self.resets.clear();
        if self.alarm.take().is_some() || forgotten > 0 {
            out.push(Action::Persist);
        }
        self.retry_at = None;
        if let Monitoring::Enabled { last_heartbeat } = &mut self.monitoring {
            *last_heartbeat = (*last_heartbeat).max(now);
        }
        count(forgotten)
    }

    fn escalate(out: &mut Vec<Action>, resource: &str, reason: Escalation) {
        Self::note(
            out,
            Level::Error,
            Decision::Escalate {
                resource: resource.to_string(),
                reason,
            },
        );
        out.push(Action::Escalate {
            resource: resource.to_string(),
        });
    }

    /// Starts a reset whose place in the window is settled. `completes_reset`: the power-cycle
    /// that completes a reset which did not bring the guest back (already counted).
    fn issue_reset(
        &mut self,
        policy: &Policy,
        method: ResetMethod,
        cause: ResetCause,
        completes_reset: bool,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        if let (ResetMethod::PowerCycle, Some(resource)) = (method, &policy.cluster_resource) {
            // The cluster's transient domain cannot be started again by appmon once destroyed.
            self.pending = Pending::Idle;
            self.retry_at = Some(now + policy.failure_interval);
            Self::escalate(out, resource, Escalation::PowerCycle);
            return;
        }
        self.pending = Pending::Resetting { method, cause };
        self.boot_at_reset = self.boot_id;
        self.back_during_reset = false;
        self.silence(out);
        Self::note(
            out,
            Level::Warn,
            Decision::Reset {
                method,
                cause,
                in_window: count(self.resets.len()),
                max_resets: policy.max_resets,
                completes_reset,
            },
        );
        out.push(Action::Reset { method, cause });
    }
}

/// What a guest's request changes, if anything (queries change nothing).
fn applied(request: GuestRequest) -> Option<Input> {
    match request {
        GuestRequest::Enable => Some(Input::Enable),
        GuestRequest::Disable => Some(Input::Disable),
        GuestRequest::PostAppState(state) => Some(Input::PostAppState(state)),
        GuestRequest::GetAppStatus | GuestRequest::IsEnabled => None,
    }
}

/// Whole milliseconds, for notes.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A count for notes.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
