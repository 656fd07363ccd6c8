//! The one task that owns every VM's state machine, its timer deadline, its session task and
//! its event history.
//!
//! Everything reaches it as a typed message: libvirt events (the backend's channel), guest
//! sessions (one bounded channel shared by all session tasks), control-socket requests, and the
//! results of libvirt calls it started. It never blocks: libvirt calls run on the blocking pool
//! ([`tokio::task::spawn_blocking`]) and report back; state files are written by the writer
//! thread; commands to a session go through that session's own bounded queue with `try_send`
//! (a session that cannot take one is stuck and is restarted).
//!
//! Timers are exact per-VM deadlines ([`VmMachine::next_deadline`]) in a min-heap with lazy
//! invalidation: a heartbeat only moves a deadline later, so it costs no heap operation; an
//! entry that no longer matches its VM's deadline is skipped when it comes up.
//!
//! Domain states from a listing or lookup are applied only if no libvirt event for that domain
//! arrived after the call was issued (a sequence number per event): a stale "running" must never
//! override a newer "paused".

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use appmon_libvirt_backend::{
    BackendError, BackendEvent, DomainEvent, DomainInfo, DomainRef, DomainState, Hypervisor,
    MonitorSpec, ResetMethod, ShutOffReason, SpecError,
};
use appmon_wire::{format_boot_id, AppState, HostMsg};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Config;
use crate::persist::{unix_ms_now, AlarmEntry, ResetEntry, VmRecord, Writer};
use crate::policy::{Action, Alarm, Input, Level, Monitoring, ResetRecord, VmMachine};
use crate::session::{
    self, ChannelLookup, Endpoint, GuestRequest, HostCmd, SessionConfig, SessionEvent, SessionMsg,
    VmId,
};
use appmon_wire::report::error_chain;

/// How far the monotonic clock starts after zero, so that resets loaded from the state
/// directory (in the past) still have a place on it.
const CLOCK_OFFSET: Duration = Duration::from_secs(400 * 24 * 3600);
/// Commands queued per session before it counts as stuck.
const SESSION_QUEUE: usize = 32;
/// Session messages handled before timers are looked at again.
const DRAIN_BATCH: usize = 8192;

/// The supervisor's clock: monotonic, with a wall-clock mapping for history and state files.
/// The mapping is kept in microseconds, so that a history timestamp is the decision's wall
/// time truncated to the millisecond, not up to two milliseconds early.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    wall_origin_us: u64,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            origin: Instant::now(),
            wall_origin_us: unix_us_now(),
        }
    }

    pub fn now(&self) -> Duration {
        self.mono(Instant::now())
    }

    pub fn mono(&self, at: Instant) -> Duration {
        CLOCK_OFFSET + at.saturating_duration_since(self.origin)
    }

    pub fn instant(&self, mono: Duration) -> Instant {
        self.origin + mono.saturating_sub(CLOCK_OFFSET)
    }

    pub fn wall_ms(&self, mono: Duration) -> u64 {
        let us = mono.as_micros() as i128 - CLOCK_OFFSET.as_micros() as i128
            + i128::from(self.wall_origin_us);
        (us.max(0) / 1000) as u64
    }

    /// `None` when the time is too far in the past for the clock.
    pub fn from_wall_ms(&self, unix_ms: u64) -> Option<Duration> {
        let delta = i128::from(unix_ms) * 1000 - i128::from(self.wall_origin_us);
        let mono = CLOCK_OFFSET.as_micros() as i128 + delta;
        (mono >= 0).then(|| Duration::from_micros(mono as u64))
    }
}

fn unix_us_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// What the control socket may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRequest {
    List,
    Show {
        domain: String,
    },
    Clear {
        domain: String,
    },
    /// Writes the spec (`Some`) or removes it (`None`).
    SetSpec {
        domain: String,
        spec: Option<MonitorSpec>,
    },
}

/// The answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ControlResponse {
    List { domains: Vec<VmView> },
    Show { domain: Box<VmView> },
    Done { message: String },
    Error { kind: ErrorKind, message: String },
}

/// Kinds of control errors, for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    UnknownDomain,
    Libvirt,
    BadRequest,
}

/// A control request with where to send its answer.
pub type ControlCall = (ControlRequest, oneshot::Sender<ControlResponse>);

/// One VM as `appmonctl list` and `show` see it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct VmView {
    pub name: String,
    pub uuid: String,
    pub monitored: bool,
    /// Why the metadata could not be read, when it could not.
    pub spec_error: Option<String>,
    /// green, red, gray, or null when not monitored.
    pub status: Option<String>,
    pub enabled: bool,
    pub need_reset: bool,
    pub last_heartbeat_age_ms: Option<u64>,
    pub resets_in_window: usize,
    pub gave_up: bool,
    pub alarm: Option<String>,
    pub connected: bool,
    pub guest_boot_id: Option<String>,
    pub guest_agent: Option<String>,
    pub domain_state: String,
    pub transport: Option<String>,
    pub policy: Option<PolicyView>,
    /// Oldest first. Empty in `list`.
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PolicyView {
    pub failure_interval_ms: u64,
    pub min_uptime_ms: u64,
    pub max_resets: u32,
    pub reset_window_ms: u64,
    pub reset_method: String,
    pub channel_timeout_ms: u64,
}

/// One entry of a VM's event history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    pub unix_ms: u64,
    /// info, warn or error.
    pub level: String,
    /// decision, libvirt, guest, operator.
    pub kind: String,
    pub text: String,
}

/// Results of work the supervisor started.
#[derive(Debug)]
enum Internal {
    Listing {
        seq: u64,
        result: Result<Vec<DomainInfo>, BackendError>,
    },
    Lookup {
        key: String,
        seq: u64,
        result: Result<DomainInfo, BackendError>,
    },
    ResetResult {
        vm: VmId,
        method: ResetMethod,
        result: Result<(), String>,
    },
    SpecWritten {
        domain: DomainRef,
        reply: oneshot::Sender<ControlResponse>,
        removed: bool,
        result: Result<(), String>,
    },
}

struct SessionHandle {
    task: u64,
    endpoint: String,
    cmds: mpsc::Sender<HostCmd>,
    join: JoinHandle<()>,
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.join.abort();
    }
}

struct Vm {
    domain: DomainRef,
    state: DomainState,
    spec: Result<Option<MonitorSpec>, SpecError>,
    vsock_cid: Option<u32>,
    machine: VmMachine,
    session: Option<SessionHandle>,
    connected: bool,
    agent: Option<String>,
    last_heartbeat: Option<Duration>,
    history: VecDeque<HistoryEntry>,
    scheduled: Option<Duration>,
    last_event_seq: u64,
}

/// The channels the supervisor is fed by.
#[derive(Debug)]
pub struct Inputs {
    /// libvirt's events: the supervisor's only source of them. It takes them as a channel, not
    /// from the [`Hypervisor`], so that where they come from is the caller's choice: the daemon
    /// passes the backend's own channel; a caller may merge in events from elsewhere (the
    /// tests add the migration events that libvirt's test driver cannot produce).
    pub backend: mpsc::UnboundedReceiver<BackendEvent>,
    pub control: mpsc::Receiver<ControlCall>,
    pub reload: mpsc::Receiver<Config>,
    pub shutdown: watch::Receiver<bool>,
}

/// See the module documentation.
pub struct Supervisor {
    config: Config,
    hv: Arc<dyn Hypervisor>,
    clock: Clock,
    session_config: Arc<SessionConfig>,
    session_tx: mpsc::Sender<SessionMsg>,
    session_rx: mpsc::Receiver<SessionMsg>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    writer: Writer,
    persisted: HashMap<String, VmRecord>,
    vms: HashMap<VmId, Vm>,
    by_uuid: HashMap<String, VmId>,
    next_vm: VmId,
    next_task: u64,
    heap: BinaryHeap<Reverse<(Duration, VmId)>>,
    event_seq: u64,
    connected: bool,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("vms", &self.vms.len())
            .finish_non_exhaustive()
    }
}

fn level_str(level: Level) -> &'static str {
    match level {
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl Supervisor {
    /// `persisted` is what the state directory held at start; `host_boot_id` is this process's
    /// random id for the Hello.
    pub fn new(
        config: Config,
        hv: Arc<dyn Hypervisor>,
        writer: Writer,
        persisted: HashMap<String, VmRecord>,
        host_boot_id: [u8; 16],
    ) -> Self {
        let (session_tx, session_rx) = mpsc::channel(4096);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        Supervisor {
            session_config: Arc::new(SessionConfig::new(&config, host_boot_id)),
            config,
            hv,
            clock: Clock::new(),
            session_tx,
            session_rx,
            internal_tx,
            internal_rx,
            writer,
            persisted,
            vms: HashMap::new(),
            by_uuid: HashMap::new(),
            next_vm: 1,
            next_task: 1,
            heap: BinaryHeap::new(),
            event_seq: 0,
            connected: false,
        }
    }

    /// Runs until shutdown is signalled.
    pub async fn run(mut self, mut inputs: Inputs) {
        tracing::info!(
            vms = self.persisted.len(),
            "supervisor started (state loaded)"
        );
        let mut backend_open = true;
        loop {
            // Guests' messages first: a heartbeat that arrived before a deadline must be seen
            // before that deadline is judged.
            for _ in 0..DRAIN_BATCH {
                match self.session_rx.try_recv() {
                    Ok(msg) => self.on_session(msg),
                    Err(_) => break,
                }
            }
            self.fire_timers();
            let next = self
                .heap
                .peek()
                .map(|Reverse((at, _))| self.clock.instant(*at));
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(msg) = self.session_rx.recv() => self.on_session(msg),
                ev = inputs.backend.recv(), if backend_open => match ev {
                    Some(ev) => self.on_backend(ev),
                    None => {
                        backend_open = false;
                        tracing::error!("the libvirt backend's event channel closed");
                    }
                },
                Some(msg) = self.internal_rx.recv() => self.on_internal(msg),
                Some((req, reply)) = inputs.control.recv() => self.on_control(req, reply),
                Some(config) = inputs.reload.recv() => self.reload(config),
                _ = sleep => {}
                _ = inputs.shutdown.changed() => break,
            }
            if *inputs.shutdown.borrow() {
                break;
            }
        }
        tracing::info!("supervisor stopping");
        for vm in self.vms.values_mut() {
            vm.session = None;
        }
        // Dropping self.writer flushes the state files.
    }

    // ---- time ----

    fn schedule(&mut self, id: VmId, now: Duration) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let Some(at) = vm.machine.next_deadline(now) else {
            return;
        };
        if vm.scheduled.is_some_and(|s| s <= at && s > now) {
            return;
        }
        vm.scheduled = Some(at);
        self.heap.push(Reverse((at, id)));
    }

    fn fire_timers(&mut self) {
        let now = self.clock.now();
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            let Some(vm) = self.vms.get_mut(&id) else {
                continue;
            };
            if vm.scheduled != Some(at) {
                continue;
            }
            vm.scheduled = None;
            self.feed(id, Input::Tick, now);
        }
    }

    // ---- the machine ----

    /// Feeds one input and carries out the actions.
    fn feed(&mut self, id: VmId, input: Input, now: Duration) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let actions = vm.machine.handle(input, now);
        self.execute(id, actions, now);
        self.schedule(id, now);
    }

    fn execute(&mut self, id: VmId, actions: Vec<Action>, now: Duration) {
        let mut persist = false;
        for action in actions {
            let Some(vm) = self.vms.get_mut(&id) else {
                return;
            };
            match action {
                Action::Note { level, text } => {
                    let name = &vm.domain.name;
                    match level {
                        Level::Info => tracing::info!(domain = %name, "{text}"),
                        Level::Warn => tracing::warn!(domain = %name, "{text}"),
                        Level::Error => tracing::error!(domain = %name, "{text}"),
                    }
                    let wall = self.clock.wall_ms(now);
                    push_history(vm, self.config.history_len, wall, level, "decision", text);
                }
                Action::SendStatus(status) => {
                    tracing::debug!(domain = %vm.domain.name, %status, "status to the guest");
                    send_cmd(vm, HostCmd::Status(status));
                }
                Action::Persist => persist = true,
                Action::Alarm { reason } => {
                    tracing::error!(domain = %vm.domain.name, alarm = %reason, "ALARM: not resetting again until the window has room or an operator clears it");
                }
                Action::Reset { method, cause } => {
                    let hv = self.hv.clone();
                    let domain = vm.domain.clone();
                    let tx = self.internal_tx.clone();
                    tracing::warn!(domain = %domain.name, method = method.as_str(), %cause, "resetting");
                    tokio::task::spawn_blocking(move || {
                        let result = match method {
                            ResetMethod::Reset => hv.reset(&domain),
                            ResetMethod::PowerCycle => hv.power_cycle(&domain),
                        };
                        let _ = tx.send(Internal::ResetResult {
                            vm: id,
                            method,
                            result: result.map_err(|e| error_chain(&e)),
                        });
                    });
                }
            }
        }
        if persist {
            self.persist(id);
        }
    }

    fn persist(&self, id: VmId) {
        let Some(vm) = self.vms.get(&id) else {
            return;
        };
        self.writer.save(self.record(vm));
    }

    /// What is kept of a VM across restarts: its resets in the window and its alarm.
    fn record(&self, vm: &Vm) -> VmRecord {
        VmRecord {
            uuid: vm.domain.uuid.clone(),
            name: vm.domain.name.clone(),
            resets: vm
                .machine
                .resets()
                .map(|r| ResetEntry {
                    unix_ms: self.clock.wall_ms(r.at),
                    method: r.method.as_str().to_string(),
                    reason: r.reason.clone(),
                })
                .collect(),
            alarm: vm.machine.alarm().map(|a| AlarmEntry {
                unix_ms: self.clock.wall_ms(a.at),
                reason: a.reason.clone(),
            }),
        }
    }

    // ---- libvirt ----

    fn on_backend(&mut self, ev: BackendEvent) {
        let now = self.clock.now();
        match ev {
            BackendEvent::Connected => {
                self.connected = true;
                tracing::info!("libvirt connected: listing domains");
                self.request_listing();
            }
            BackendEvent::Disconnected { reason } => {
                self.connected = false;
                tracing::warn!(%reason, "libvirt connection lost: no failure is judged until it is back");
                let ids: Vec<VmId> = self.vms.keys().copied().collect();
                for id in ids {
                    self.feed(id, Input::HypervisorLost, now);
                }
            }
            BackendEvent::Domain { domain, event } => self.on_domain_event(domain, event, now),
        }
    }

    fn request_listing(&mut self) {
        let hv = self.hv.clone();
        let tx = self.internal_tx.clone();
        let seq = self.event_seq;
        tokio::task::spawn_blocking(move || {
            let result = hv.list_domains();
            let _ = tx.send(Internal::Listing { seq, result });
        });
    }

    fn request_lookup(&mut self, key: &str) {
        let hv = self.hv.clone();
        let tx = self.internal_tx.clone();
        let seq = self.event_seq;
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            let result = hv.domain(&key);
            let _ = tx.send(Internal::Lookup { key, seq, result });
        });
    }

    fn on_domain_event(&mut self, domain: DomainRef, event: DomainEvent, now: Duration) {
        if !self.config.manages(&domain.name) {
            return;
        }
        self.event_seq += 1;
        let seq = self.event_seq;
        let Some(&id) = self.by_uuid.get(&domain.uuid) else {
            tracing::debug!(domain = %domain.name, ?event, "event for a new domain: looking it up");
            self.request_lookup(&domain.uuid);
            return;
        };
        if let Some(vm) = self.vms.get_mut(&id) {
            vm.last_event_seq = seq;
            vm.state = state_after(vm.state, event);
            let wall = self.clock.wall_ms(now);
            push_history(
                vm,
                self.config.history_len,
                wall,
                Level::Info,
                "libvirt",
                format!("{event:?}"),
            );
            tracing::info!(domain = %vm.domain.name, ?event, "libvirt event");
        }
        self.feed(id, Input::Domain(event), now);
        match event {
            DomainEvent::Stopped(ShutOffReason::Migrated) => {
                self.remove(id, "migrated away");
                return;
            }
            DomainEvent::Undefined => {
                let off = self
                    .vms
                    .get(&id)
                    .is_some_and(|vm| matches!(vm.state, DomainState::ShutOff(_)));
                if off {
                    self.remove(id, "undefined");
                    return;
                }
            }
            DomainEvent::Started(_)
            | DomainEvent::Resumed(_)
            | DomainEvent::Defined
            | DomainEvent::MetadataChanged => self.request_lookup(&domain.uuid),
            _ => {}
        }
        self.sync_session(id);
    }

    fn on_internal(&mut self, msg: Internal) {
        let now = self.clock.now();
        match msg {
            Internal::Listing { seq, result } => match result {
                Ok(infos) => {
                    let mut seen = std::collections::HashSet::new();
                    for info in infos {
                        if !self.config.manages(&info.domain.name) {
                            continue;
                        }
                        seen.insert(info.domain.uuid.clone());
                        self.upsert(info, seq, now);
                    }
                    let gone: Vec<VmId> = self
                        .vms
                        .iter()
                        .filter(|(_, vm)| {
                            !seen.contains(&vm.domain.uuid) && vm.last_event_seq <= seq
                        })
                        .map(|(id, _)| *id)
                        .collect();
                    for id in gone {
                        self.remove(id, "no longer listed by libvirt");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %error_chain(&e), "listing domains failed; waiting for the next libvirt connection")
                }
            },
            Internal::Lookup { key, seq, result } => match result {
                Ok(info) => {
                    if self.config.manages(&info.domain.name) {
                        self.upsert(info, seq, now);
                    }
                }
                Err(BackendError::NoSuchDomain { .. }) => {
                    if let Some(&id) = self.by_uuid.get(&key) {
                        let stale = self.vms.get(&id).is_some_and(|vm| vm.last_event_seq > seq);
                        if !stale {
                            self.remove(id, "can no longer be looked up");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(domain = %key, error = %error_chain(&e), "domain lookup failed")
                }
            },
            Internal::ResetResult { vm, method, result } => {
                let input = match result {
                    Ok(()) => Input::ResetDone,
                    Err(error) => {
                        if let Some(v) = self.vms.get(&vm) {
                            tracing::error!(domain = %v.domain.name, method = method.as_str(), %error, "libvirt refused the reset");
                        }
                        Input::ResetFailed { error }
                    }
                };
                self.feed(vm, input, now);
            }
            Internal::SpecWritten {
                domain,
                reply,
                removed,
                result,
            } => {
                let response = match result {
                    Ok(()) => {
                        self.event_seq += 1;
                        self.request_lookup(&domain.uuid);
                        let what = if removed { "disabled" } else { "enabled" };
                        tracing::info!(domain = %domain.name, "operator {what} monitoring (metadata written)");
                        if let Some(&id) = self.by_uuid.get(&domain.uuid) {
                            if let Some(vm) = self.vms.get_mut(&id) {
                                let wall = self.clock.wall_ms(now);
                                push_history(
                                    vm,
                                    self.config.history_len,
                                    wall,
                                    Level::Info,
                                    "operator",
                                    format!(
                                        "monitoring metadata {}",
                                        if removed { "removed" } else { "written" }
                                    ),
                                );
                            }
                        }
                        ControlResponse::Done {
                            message: format!("{what} monitoring of {}", domain.name),
                        }
                    }
                    Err(message) => ControlResponse::Error {
                        kind: ErrorKind::Libvirt,
                        message,
                    },
                };
                let _ = reply.send(response);
            }
        }
    }

    /// Creates or refreshes a VM from libvirt's description of it.
    fn upsert(&mut self, info: DomainInfo, seq: u64, now: Duration) {
        let policy = match &info.spec {
            Ok(Some(spec)) => Some(self.config.policy_for(spec)),
            Ok(None) => None,
            Err(_) => None,
        };
        let id = match self.by_uuid.get(&info.domain.uuid) {
            Some(&id) => id,
            None => {
                let id = self.next_vm;
                self.next_vm += 1;
                let mut machine = VmMachine::new(now, info.state, policy.clone());
                let mut history = VecDeque::new();
                if let Some(record) = self.persisted.remove(&info.domain.uuid) {
                    let (resets, alarm) = self.restore(&record);
                    history.push_back(HistoryEntry {
                        unix_ms: unix_ms_now(),
                        level: "info".into(),
                        kind: "decision".into(),
                        text: format!(
                            "restored {} reset(s){} from the state directory",
                            resets.len(),
                            if alarm.is_some() {
                                " and the alarm"
                            } else {
                                ""
                            }
                        ),
                    });
                    machine.restore(resets, alarm);
                }
                tracing::info!(domain = %info.domain.name, uuid = %info.domain.uuid,
                    monitored = policy.is_some(), state = ?info.state, "domain found");
                self.by_uuid.insert(info.domain.uuid.clone(), id);
                self.vms.insert(
                    id,
                    Vm {
                        domain: info.domain.clone(),
                        state: info.state,
                        spec: Ok(None),
                        vsock_cid: None,
                        machine,
                        session: None,
                        connected: false,
                        agent: None,
                        last_heartbeat: None,
                        history,
                        scheduled: None,
                        last_event_seq: 0,
                    },
                );
                id
            }
        };
        let fresh = {
            let Some(vm) = self.vms.get_mut(&id) else {
                return;
            };
            if let Err(e) = &info.spec {
                let changed = vm.spec.as_ref().err() != Some(e);
                if changed {
                    tracing::warn!(domain = %info.domain.name, error = %e, "broken monitoring metadata: domain left alone");
                    let wall = self.clock.wall_ms(now);
                    push_history(
                        vm,
                        self.config.history_len,
                        wall,
                        Level::Warn,
                        "decision",
                        format!("broken monitoring metadata, domain left alone: {e}"),
                    );
                }
            }
            vm.domain = info.domain.clone();
            vm.spec = info.spec.clone();
            vm.vsock_cid = info.vsock_cid;
            let fresh = vm.last_event_seq <= seq;
            if fresh {
                vm.state = info.state;
            }
            fresh
        };
        self.feed(id, Input::Policy(policy), now);
        if fresh {
            self.feed(id, Input::DomainState(info.state), now);
        }
        self.sync_session(id);
    }

    fn restore(&self, record: &VmRecord) -> (Vec<ResetRecord>, Option<Alarm>) {
        let resets = record
            .resets
            .iter()
            .filter_map(|r| {
                Some(ResetRecord {
                    at: self.clock.from_wall_ms(r.unix_ms)?,
                    method: ResetMethod::parse(&r.method).unwrap_or(ResetMethod::Reset),
                    reason: r.reason.clone(),
                })
            })
            .collect();
        let alarm = record.alarm.as_ref().map(|a| Alarm {
            at: self.clock.from_wall_ms(a.unix_ms).unwrap_or(Duration::ZERO),
            reason: a.reason.clone(),
        });
        (resets, alarm)
    }

    fn remove(&mut self, id: VmId, why: &str) {
        if let Some(vm) = self.vms.remove(&id) {
            tracing::info!(domain = %vm.domain.name, "{why}: no longer monitored here");
            self.by_uuid.remove(&vm.domain.uuid);
            // Keep its reset history for a later return (a migration back).
            let record = self.record(&vm);
            self.persisted.insert(vm.domain.uuid.clone(), record);
        }
    }

    // ---- sessions ----

    /// Starts, restarts or stops the VM's session task to match its spec and state.
    fn sync_session(&mut self, id: VmId) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let spec = match (&vm.spec, vm.machine.policy()) {
            (Ok(Some(spec)), Some(_)) => Some(spec.clone()),
            _ => None,
        };
        let alive = !matches!(vm.state, DomainState::ShutOff(_) | DomainState::Crashed);
        let endpoint = match spec.filter(|_| alive) {
            None => None,
            Some(spec) => {
                let hv = self.hv.clone();
                let domain = vm.domain.clone();
                let name = channel_name(&spec).to_string();
                let lookup: ChannelLookup = Arc::new(move || {
                    let xml = hv.domain_xml(&domain).map_err(|e| error_chain(&e))?;
                    appmon_libvirt_backend::domxml::channel_socket_path(&xml, &name)
                        .map_err(|e| error_chain(&e))
                });
                match Endpoint::from_transport(&spec.transport, vm.vsock_cid, lookup) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        if vm.session.is_some()
                            || vm
                                .history
                                .back()
                                .is_none_or(|h| !h.text.contains("cannot reach"))
                        {
                            tracing::warn!(domain = %vm.domain.name, error = %e, "cannot reach the guest agent");
                        }
                        None
                    }
                }
            }
        };
        match endpoint {
            None => {
                if vm.session.take().is_some() {
                    tracing::info!(domain = %vm.domain.name, "guest session stopped");
                    vm.connected = false;
                    let now = self.clock.now();
                    self.feed(id, Input::ChannelClosed, now);
                }
            }
            Some(endpoint) => {
                let desc = endpoint.describe();
                if vm.session.as_ref().is_some_and(|s| s.endpoint == desc) {
                    return;
                }
                if vm.session.take().is_some() {
                    vm.connected = false;
                    let now = self.clock.now();
                    vm.machine.handle(Input::ChannelClosed, now);
                }
                let task = self.next_task;
                self.next_task += 1;
                let (tx, rx) = mpsc::channel(SESSION_QUEUE);
                tracing::info!(domain = %vm.domain.name, endpoint = %desc, "guest session started");
                let join = tokio::spawn(session::run(
                    id,
                    task,
                    vm.domain.name.clone(),
                    endpoint,
                    self.session_config.clone(),
                    self.session_tx.clone(),
                    rx,
                ));
                vm.session = Some(SessionHandle {
                    task,
                    endpoint: desc,
                    cmds: tx,
                    join,
                });
            }
        }
    }

    fn on_session(&mut self, msg: SessionMsg) {
        let Some(vm) = self.vms.get_mut(&msg.vm) else {
            return;
        };
        if vm.session.as_ref().map(|s| s.task) != Some(msg.task) {
            return;
        }
        let id = msg.vm;
        let now = self.clock.now();
        match msg.event {
            SessionEvent::Heartbeat { at } => {
                let at = self.clock.mono(at);
                vm.last_heartbeat = Some(at);
                // The heartbeat counts at its arrival time, not when it is dequeued.
                let actions = vm.machine.handle(Input::Heartbeat, at.min(now));
                self.execute(id, actions, now);
                self.schedule(id, now);
            }
            SessionEvent::Hello { boot_id, agent } => {
                vm.connected = true;
                let wall = self.clock.wall_ms(now);
                push_history(
                    vm,
                    self.config.history_len,
                    wall,
                    Level::Info,
                    "guest",
                    format!("{agent} connected, boot id {}", format_boot_id(&boot_id)),
                );
                vm.agent = Some(agent);
                self.feed(id, Input::GuestHello { boot_id }, now);
            }
            SessionEvent::State(state) => {
                if let Some(age) = state.last_heartbeat_age_ms {
                    let at = now.saturating_sub(Duration::from_millis(age));
                    vm.last_heartbeat = Some(vm.last_heartbeat.map_or(at, |l| l.max(at)));
                }
                self.feed(id, Input::GuestState(state), now);
            }
            SessionEvent::Closed { reason } => {
                vm.connected = false;
                let wall = self.clock.wall_ms(now);
                push_history(
                    vm,
                    self.config.history_len,
                    wall,
                    Level::Warn,
                    "guest",
                    format!("session ended: {reason}"),
                );
                self.feed(id, Input::ChannelClosed, now);
            }
            SessionEvent::Request { id: req_id, req } => {
                let input = match req {
                    GuestRequest::Enable => Some(Input::Enable),
                    GuestRequest::Disable => Some(Input::Disable),
                    GuestRequest::PostAppState(s) => Some(Input::PostAppState(s)),
                    GuestRequest::GetAppStatus | GuestRequest::IsEnabled => None,
                };
                let mut actions = match input {
                    Some(input) => vm.machine.handle(input, now),
                    None => Vec::new(),
                };
                if let Some(req_id) = req_id {
                    let reply = match req {
                        GuestRequest::IsEnabled => HostMsg::Enabled(vm.machine.enabled()),
                        GuestRequest::PostAppState(AppState::Ok) => HostMsg::Ack,
                        _ => {
                            // The reply carries the status: no separate event for it.
                            actions.retain(|a| !matches!(a, Action::SendStatus(_)));
                            HostMsg::AppStatus(vm.machine.reply_status(now))
                        }
                    };
                    send_cmd(
                        vm,
                        HostCmd::Reply {
                            id: req_id,
                            msg: reply,
                        },
                    );
                }
                self.execute(id, actions, now);
                self.schedule(id, now);
            }
        }
    }

    // ---- control ----

    fn find(&self, key: &str) -> Option<VmId> {
        self.by_uuid.get(key).copied().or_else(|| {
            self.vms
                .iter()
                .find(|(_, vm)| vm.domain.name == key)
                .map(|(id, _)| *id)
        })
    }

    fn unknown(&self, key: &str) -> ControlResponse {
        ControlResponse::Error {
            kind: ErrorKind::UnknownDomain,
            message: format!(
                "unknown domain {key:?} (not defined in libvirt, or not among this host agent's domains {:?})",
                self.config.domains
            ),
        }
    }

    fn on_control(&mut self, req: ControlRequest, reply: oneshot::Sender<ControlResponse>) {
        let now = self.clock.now();
        let response = match req {
            ControlRequest::List => {
                let mut domains: Vec<VmView> = self
                    .vms
                    .values()
                    .map(|vm| self.view(vm, now, false))
                    .collect();
                domains.sort_by(|a, b| a.name.cmp(&b.name));
                ControlResponse::List { domains }
            }
            ControlRequest::Show { domain } => match self.find(&domain) {
                Some(id) => match self.vms.get(&id) {
                    Some(vm) => ControlResponse::Show {
                        domain: Box::new(self.view(vm, now, true)),
                    },
                    None => self.unknown(&domain),
                },
                None => self.unknown(&domain),
            },
            ControlRequest::Clear { domain } => match self.find(&domain) {
                Some(id) => {
                    if let Some(vm) = self.vms.get_mut(&id) {
                        let wall = self.clock.wall_ms(now);
                        push_history(
                            vm,
                            self.config.history_len,
                            wall,
                            Level::Warn,
                            "operator",
                            "clear".into(),
                        );
                    }
                    self.feed(id, Input::Clear, now);
                    ControlResponse::Done {
                        message: format!("cleared the alarm and reset window of {domain}"),
                    }
                }
                None => self.unknown(&domain),
            },
            ControlRequest::SetSpec { domain, spec } => match self.find(&domain) {
                Some(id) => {
                    let Some(vm) = self.vms.get(&id) else {
                        let _ = reply.send(self.unknown(&domain));
                        return;
                    };
                    let hv = self.hv.clone();
                    let tx = self.internal_tx.clone();
                    let domain = vm.domain.clone();
                    tokio::task::spawn_blocking(move || {
                        let result = hv
                            .set_spec(&domain, spec.as_ref())
                            .map_err(|e| error_chain(&e));
                        let _ = tx.send(Internal::SpecWritten {
                            domain,
                            reply,
                            removed: spec.is_none(),
                            result,
                        });
                    });
                    return;
                }
                None => self.unknown(&domain),
            },
        };
        let _ = reply.send(response);
    }

    fn view(&self, vm: &Vm, now: Duration, with_history: bool) -> VmView {
        let m = &vm.machine;
        let policy = m.policy().map(|p| PolicyView {
            failure_interval_ms: p.failure_interval.as_millis() as u64,
            min_uptime_ms: p.min_uptime.as_millis() as u64,
            max_resets: p.max_resets,
            reset_window_ms: p.reset_window.as_millis() as u64,
            reset_method: p.reset_method.as_str().into(),
            channel_timeout_ms: p.channel_timeout.as_millis() as u64,
        });
        let heartbeat = match m.monitoring() {
            Monitoring::Enabled { last_heartbeat } => Some(last_heartbeat),
            _ => vm.last_heartbeat,
        };
        VmView {
            name: vm.domain.name.clone(),
            uuid: vm.domain.uuid.clone(),
            monitored: m.policy().is_some(),
            spec_error: vm.spec.as_ref().err().map(|e| e.to_string()),
            status: m.status(now).map(|s| s.as_str().to_string()),
            enabled: m.enabled(),
            need_reset: m.need_reset(),
            last_heartbeat_age_ms: heartbeat.map(|h| now.saturating_sub(h).as_millis() as u64),
            resets_in_window: m.resets_in_window(now),
            gave_up: m.alarm().is_some(),
            alarm: m.alarm().map(|a| a.reason.clone()),
            connected: vm.connected,
            guest_boot_id: m.boot_id().map(|b| format_boot_id(&b)),
            guest_agent: vm.agent.clone(),
            domain_state: state_name(vm.state),
            transport: vm.session.as_ref().map(|s| s.endpoint.clone()),
            policy,
            history: if with_history {
                vm.history.iter().cloned().collect()
            } else {
                Vec::new()
            },
        }
    }

    fn reload(&mut self, config: Config) {
        tracing::info!("configuration reloaded");
        if config.uri != self.config.uri
            || config.state_dir != self.config.state_dir
            || config.control_socket != self.config.control_socket
        {
            tracing::warn!(
                "uri, state_dir and control_socket changes take effect at the next start"
            );
        }
        let host_boot = self.session_config.hello.boot_id;
        self.session_config = Arc::new(SessionConfig::new(&config, host_boot));
        self.config = config;
        let now = self.clock.now();
        let ids: Vec<VmId> = self.vms.keys().copied().collect();
        for id in ids {
            let Some(vm) = self.vms.get(&id) else {
                continue;
            };
            if !self.config.manages(&vm.domain.name) {
                self.remove(id, "no longer among the configured domains");
                continue;
            }
            let policy = match &vm.spec {
                Ok(Some(spec)) => Some(self.config.policy_for(spec)),
                _ => None,
            };
            self.feed(id, Input::Policy(policy), now);
        }
        if self.connected {
            self.request_listing();
        }
    }
}

fn channel_name(spec: &MonitorSpec) -> &str {
    match &spec.transport {
        appmon_libvirt_backend::Transport::Channel { name, .. } => name,
        _ => appmon_libvirt_backend::DEFAULT_CHANNEL_NAME,
    }
}

fn send_cmd(vm: &mut Vm, cmd: HostCmd) {
    let Some(session) = &vm.session else {
        return;
    };
    if let Err(mpsc::error::TrySendError::Full(_)) = session.cmds.try_send(cmd) {
        // The session is not draining its queue: its guest does not read. The write timeout
        // ends such a session; make sure of it without waiting.
        tracing::warn!(domain = %vm.domain.name, "guest session is stuck: restarting it");
        session.join.abort();
    }
}

fn push_history(vm: &mut Vm, cap: usize, unix_ms: u64, level: Level, kind: &str, text: String) {
    if cap == 0 {
        return;
    }
    while vm.history.len() >= cap {
        vm.history.pop_front();
    }
    vm.history.push_back(HistoryEntry {
        unix_ms,
        level: level_str(level).into(),
        kind: kind.into(),
        text,
    });
}

/// The domain state an event leaves behind, for display.
fn state_after(state: DomainState, event: DomainEvent) -> DomainState {
    use appmon_libvirt_backend::{PausedReason, RunningReason, StartedReason};
    match event {
        DomainEvent::Started(StartedReason::Migrated) => {
            DomainState::Paused(PausedReason::StartingUp)
        }
        DomainEvent::Started(_) => DomainState::Running(RunningReason::Booted),
        DomainEvent::Suspended(r) => DomainState::Paused(r),
        DomainEvent::Resumed(r) => DomainState::Running(r),
        DomainEvent::Stopped(r) => DomainState::ShutOff(r),
        DomainEvent::Crashed => DomainState::Crashed,
        _ => state,
    }
}

fn state_name(state: DomainState) -> String {
    match state {
        DomainState::Running(r) => format!("running ({r:?})"),
        DomainState::Paused(r) => format!("paused ({r:?})"),
        DomainState::ShutOff(r) => format!("shut off ({r:?})"),
        DomainState::Crashed => "crashed".into(),
        DomainState::Other => "other".into(),
    }
    .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_of_a_moment_is_its_millisecond_not_earlier() {
        let clock = Clock::new();
        std::thread::sleep(Duration::from_millis(3));
        let before = unix_us_now();
        let at = Instant::now();
        let after = unix_us_now();

        let wall = clock.wall_ms(clock.mono(at));

        assert!(
            wall >= before / 1000 && wall <= after / 1000 + 1,
            "{wall} outside [{before} us, {after} us]"
        );
    }

    #[test]
    fn wall_times_map_back_to_the_clock() {
        let clock = Clock::new();
        let mono = clock.now() + Duration::from_millis(1234);

        let back = clock
            .from_wall_ms(clock.wall_ms(mono))
            .expect("on the clock");

        assert!(
            back <= mono && mono - back < Duration::from_millis(1),
            "{back:?} {mono:?}"
        );
        assert_eq!(clock.from_wall_ms(0), None);
    }
}
