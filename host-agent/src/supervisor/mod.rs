//! The one task that owns every VM's state machine, its timer deadline, its session task and
//! its event history.
//!
//! Everything reaches it as a typed message: libvirt events (the backend's channel), guest
//! sessions (one bounded channel shared by all session tasks), control-socket requests, and the
//! results of libvirt calls it started. It never blocks: libvirt calls run on the blocking pool
//! (`executor`) and report back; state files are written by the writer thread; commands to a
//! session go through that session's own bounded queue with `try_send` (a session that cannot
//! take one is stuck and is restarted).
//!
//! It decides nothing itself: the policy machine ([`crate::policy`]) decides for each VM,
//! including the answers to the guest's requests; `reconcile` decides which VMs and sessions
//! there should be from what libvirt says. This module feeds them and carries out their
//! actions.
//!
//! # Modules
//!
//! - `clock`: monotonic time on the policy's scale, wall-clock times for the history, and the
//!   watch that notices when the supervisor itself was not scheduled.
//! - `vm`: one VM's state here, its session handle and its history ring.
//! - `reconcile`: listing, lookup and session decisions (pure).
//! - `executor`: the libvirt calls on the blocking pool.
//! - `guest`: the guest's monitors, launched processes and managed applications, and the
//!   host's requests to the guest with the waiter of each reply.
//! - `view`: what `appmonctl list` and `show` see of a VM.
//! - `metrics`: `/metrics`, the Prometheus exposition of all of it.
//! - `counters`: each VM's counters ([`crate::counters`]' store), the frames it refuses logged
//!   and rate-limited, and what `appmonctl counters` sees.
//!
//! Timers are exact per-VM deadlines ([`VmMachine::next_deadline`]) in a min-heap with lazy
//! invalidation: a heartbeat only moves a deadline later, so it costs no heap operation; an
//! entry that no longer matches its VM's deadline is skipped when it comes up.
//!
//! Silence is judged only on input that was read. Guests' messages already queued are handled
//! before timers; a heartbeat verdict first asks the VM's session task to read what is
//! readable ([`HostCmd::Sync`]); and a loop that woke more than `scheduling_pause` after it
//! planned to was not scheduled (stopped, starved): before any deadline is judged, every
//! machine is told ([`Input::SchedulingPause`]) and restarts its failure clock from the wake.

mod alarm_rules;
mod clock;
mod counters;
mod executor;
mod guest;
mod metrics;
mod reconcile;
mod trouble;
mod view;
mod vm;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use appmon_control::{
    ConnectFailure, Decision, ErrorKind, GuestEvent, HistoryKind, HostEvent, HypervisorEvent,
    Level, LibvirtLost, OperatorAction, Response, VmView,
};
use appmon_libvirt_backend::{
    BackendError, BackendEvent, DomainEvent, DomainInfo, DomainRef, DomainState, Hypervisor,
    ShutOffReason,
};
use appmon_wire::format_boot_id;
use appmon_wire::report::error_chain;
use tokio::sync::{mpsc, oneshot, watch};

pub use self::clock::Clock;
use self::clock::PauseWatch;
use self::counters::CounterSet;
use self::executor::{Executor, Internal};
use self::reconcile::SessionPlan;
use self::vm::{History, SessionHandle, Vm};
use crate::config::Config;
use crate::control::{ControlCall, ControlRequest};
use crate::mon::alarms::AlarmView;
use crate::mon::cache::Epoch;
use crate::mon::http::MonCall;
use crate::mon::rules::RunTimeRules;
use crate::persist::{unix_ms_now, VmRecord, Writer};
use crate::policy::{Action, Input, Phase, VmMachine};
use crate::session::{self, HostCmd, SessionConfig, SessionEvent, SessionMsg, VmId};

/// Commands queued per session before it counts as stuck.
const SESSION_QUEUE: usize = 32;
/// How long a reset waits after the guest's connection was closed for it (and after an answer
/// to the guest in the same decision, the reply to the needReset that asked for it): a host →
/// guest packet still under way when the guest reboots inside QEMU can wedge a userspace vsock
/// backend (vhost-device-vsock 0.3.0), and a local socket's close or write reaches a running
/// guest in well under this.
const ANSWER_SETTLE: Duration = Duration::from_millis(200);
/// Session messages handled before timers are looked at again.
const DRAIN_BATCH: usize = 8192;

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
    /// MON's HTTP handlers' queries (`crate::mon::http`).
    pub mon: mpsc::Receiver<MonCall>,
    pub shutdown: watch::Receiver<bool>,
}

/// See the module documentation.
pub struct Supervisor {
    config: Config,
    executor: Executor,
    clock: Clock,
    /// Notices that this loop was not scheduled for longer than `scheduling_pause`.
    pause_watch: PauseWatch,
    session_config: Arc<SessionConfig>,
    session_tx: mpsc::Sender<SessionMsg>,
    session_rx: mpsc::Receiver<SessionMsg>,
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
    /// While the connection to libvirt is lost: when (monotonic), and what `show` says.
    libvirt_lost: Option<(Duration, LibvirtLost)>,
    /// When the histories noted since the last write go to the state directory.
    history_flush_at: Option<Duration>,
    /// What `/metrics` counts since the start.
    counts: metrics::HostCounts,
    /// MON's alarm view: the rules of `[[mon.alarm]]` and every counter's alarm state.
    alarms: AlarmView,
    /// Bumped whenever something a `/monapi` answer shows changes (MON's render cache).
    mon_epoch: Epoch,
    /// The alarm rules set at run time (`appmonctl alarm-set`), kept in the state directory.
    run_time_rules: RunTimeRules,
    /// The host's AF_VSOCK listeners for kernel vhost-vsock guests, by port: opened only when
    /// a monitored VM uses kernel vsock.
    vsock_routes: HashMap<u32, (Arc<session::vsock::Routes>, tokio::task::JoinHandle<()>)>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("vms", &self.vms.len())
            .finish_non_exhaustive()
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
        let (run_time_rules, problems) = RunTimeRules::load(&config.state_dir);
        for problem in problems {
            tracing::error!(%problem, "run-time alarm rules: left out");
        }
        Supervisor {
            alarms: AlarmView::new(alarm_rules::in_force(&config, &run_time_rules)),
            run_time_rules,
            mon_epoch: Epoch::default(),
            session_config: Arc::new(SessionConfig::new(&config, host_boot_id)),
            pause_watch: PauseWatch::new(config.scheduling_pause),
            config,
            executor: Executor::new(hv, internal_tx),
            clock: Clock::new(),
            session_tx,
            session_rx,
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
            libvirt_lost: None,
            history_flush_at: None,
            counts: metrics::HostCounts::default(),
            vsock_routes: HashMap::new(),
        }
    }

    /// What MON's render cache watches: bumped on every change a `/monapi` answer could show.
    pub fn mon_epoch(&self) -> Epoch {
        self.mon_epoch.clone()
    }

    /// Runs until shutdown is signalled.
    pub async fn run(mut self, mut inputs: Inputs) {
        tracing::info!(
            vms = self.persisted.len(),
            "supervisor started (state loaded)"
        );
        let mut backend_open = true;
        loop {
            // A pause of this process first: before any deadline is judged on the gap.
            self.watch_pause();
            // Guests' messages first: a heartbeat that arrived before a deadline must be seen
            // before that deadline is judged.
            for _ in 0..DRAIN_BATCH {
                match self.session_rx.try_recv() {
                    Ok(msg) => self.on_session(msg),
                    Err(_) => break,
                }
            }
            self.fire_timers();
            self.flush_histories(false);
            // Never asleep for long, so that a timer firing late tells of a pause.
            let watch_at = self.clock.now() + self.pause_watch.period();
            let next = self
                .heap
                .peek()
                .map(|Reverse((at, _))| *at)
                .into_iter()
                .chain(self.history_flush_at)
                .chain([watch_at])
                .min()
                .unwrap_or(watch_at);
            self.pause_watch.plan(next);
            let sleep = tokio::time::sleep_until(self.clock.instant(next));
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
                Some(call) = inputs.mon.recv() => self.on_mon(call),
                Some(config) = inputs.reload.recv() => self.reload(config),
                _ = sleep => {}
                _ = inputs.shutdown.changed() => break,
            }
            if *inputs.shutdown.borrow() {
                break;
            }
        }
        tracing::info!("supervisor stopping");
        self.flush_histories(true);
        for vm in self.vms.values_mut() {
            vm.session = None;
        }
        // Dropping self.writer flushes the state files.
    }

    // ---- time ----

    /// Looks whether this loop was not scheduled for longer than `scheduling_pause` (it woke
    /// that much past its plan) and, if so, tells every machine before any deadline is judged;
    /// logs a move of the wall clock.
    fn watch_pause(&mut self) {
        let now = self.clock.now();
        let wake = self.pause_watch.woke(now, clock::unix_us_now());
        if let Some(jump_ms) = wake.wall_jump_ms {
            tracing::warn!(
                jump_ms,
                "the wall clock moved by {jump_ms} ms; decisions use the monotonic clock, history times are the wall clock's"
            );
            self.note_all(
                now,
                Level::Warn,
                HistoryKind::Host(HostEvent::WallClockMoved { by_ms: jump_ms }),
            );
        }
        let Some(paused) = wake.paused else {
            return;
        };
        let paused_ms = view::millis(paused);
        tracing::warn!(
            paused_ms,
            "process pause detected: the host agent was not scheduled for {paused_ms} ms; every VM's failure clock restarts now"
        );
        self.note_all(
            now,
            Level::Warn,
            HistoryKind::Host(HostEvent::SchedulingPause { paused_ms }),
        );
        let ids: Vec<VmId> = self.vms.keys().copied().collect();
        for id in ids {
            self.feed(id, Input::SchedulingPause { paused }, now);
        }
    }

    fn schedule(&mut self, id: VmId, now: Duration) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let Some(at) = vm.next_deadline(now) else {
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
            self.tick_apps(id, now);
            self.schedule(id, now);
        }
    }

    // ---- the machine ----

    /// Feeds one input, carries out the actions and schedules the VM's next deadline.
    fn feed(&mut self, id: VmId, input: Input, now: Duration) {
        self.feed_at(id, input, now, now);
    }

    /// [`Supervisor::feed`] of an input that happened at `at` (a heartbeat counts when it was
    /// read, not when it is dequeued), handled at `now`.
    fn feed_at(&mut self, id: VmId, input: Input, at: Duration, now: Duration) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let was_paused = vm.machine.phase() == Phase::Paused;
        let actions = vm.machine.handle(input, at.min(now));
        let paused = vm.machine.phase() == Phase::Paused;
        if paused != was_paused {
            // No ping, no dial, no verdict on the channel while the domain is paused.
            vm.send(HostCmd::DomainPaused(paused));
        }
        self.execute(id, actions, now);
        self.schedule(id, now);
    }

    fn execute(&mut self, id: VmId, actions: Vec<Action>, now: Duration) {
        let mut persist = false;
        // An answer to the guest went out in this batch (the needReset that asked for the
        // reset): the reset waits until it has reached the guest.
        let mut answered = false;
        for action in actions {
            let Some(vm) = self.vms.get_mut(&id) else {
                return;
            };
            match action {
                Action::Note { level, decision } => {
                    let name = &vm.domain.name;
                    match level {
                        Level::Info => tracing::info!(domain = %name, "{decision}"),
                        Level::Warn => tracing::warn!(domain = %name, "{decision}"),
                        Level::Error => tracing::error!(domain = %name, "{decision}"),
                    }
                    let wall = self.clock.wall_ms(now);
                    vm.note(
                        self.config.history_len,
                        wall,
                        level,
                        HistoryKind::Decision(decision),
                    );
                    vm::flush_after(&mut self.history_flush_at, now);
                }
                Action::SendStatus(status) => {
                    tracing::debug!(domain = %vm.domain.name, %status, "status to the guest");
                    vm.send(HostCmd::Status(status));
                }
                Action::Reply { id: request, msg } => {
                    answered = true;
                    vm.send(HostCmd::Reply {
                        id: request,
                        msg: Box::new(msg),
                    });
                }
                Action::Silence => {
                    tracing::info!(domain = %vm.domain.name, "the guest is sent nothing until it announces itself again");
                    vm.send(HostCmd::Quiet);
                }
                Action::Persist => persist = true,
                Action::DrainInput => {
                    tracing::debug!(domain = %vm.domain.name, "heartbeats overdue: reading the guest's pending input first");
                    vm.send(HostCmd::Sync);
                }
                Action::Alarm { reason } => {
                    tracing::error!(domain = %vm.domain.name, alarm = %reason, "ALARM: not resetting again until the window has room or an operator clears it");
                }
                Action::Escalate { resource } => {
                    tracing::error!(domain = %vm.domain.name, %resource, "escalating to the cluster: crm_resource --fail");
                    self.executor.escalate(id, vm.domain.name.clone(), resource);
                }
                Action::Reset { method, cause } => {
                    tracing::warn!(domain = %vm.domain.name, method = method.as_str(), %cause, "resetting");
                    self.counts.reset(&cause);
                    // Close the guest's connection while it still runs, and reset once the
                    // close (and an answer of this batch) has reached it.
                    let after = if answered || vm.session.is_some() {
                        vm.send(HostCmd::CloseForReset);
                        ANSWER_SETTLE
                    } else {
                        Duration::ZERO
                    };
                    let cluster = vm.machine.policy().and_then(|p| p.cluster_resource.clone());
                    self.executor
                        .reset(id, vm.domain.clone(), method, cluster, after);
                }
            }
        }
        if persist {
            if let Some(vm) = self.vms.get_mut(&id) {
                vm.history_unsaved = false;
                self.writer.save(vm.record(&self.clock));
            }
        }
    }

    /// Records what bears on every VM (the libvirt connection, the host agent's own time) in
    /// every VM's history.
    fn note_all(&mut self, now: Duration, level: Level, kind: HistoryKind) {
        let ids: Vec<VmId> = self.vms.keys().copied().collect();
        for id in ids {
            self.note(id, now, level, kind.clone());
        }
    }

    /// Adds a history entry to VM `id` at `now`.
    fn note(&mut self, id: VmId, now: Duration, level: Level, kind: HistoryKind) {
        let wall = self.clock.wall_ms(now);
        if let Some(vm) = self.vms.get_mut(&id) {
            vm.note(self.config.history_len, wall, level, kind);
            vm::flush_after(&mut self.history_flush_at, now);
        }
    }

    /// Writes the records of the VMs whose history changed, once their flush time has come
    /// (or now, with `all`): the history survives a restart as the resets do.
    fn flush_histories(&mut self, all: bool) {
        let Some(at) = self.history_flush_at else {
            return;
        };
        if !all && at > self.clock.now() {
            return;
        }
        self.history_flush_at = None;
        for vm in self.vms.values_mut().filter(|vm| vm.history_unsaved) {
            vm.history_unsaved = false;
            self.writer.save(vm.record(&self.clock));
        }
    }

    // ---- libvirt ----

    fn on_backend(&mut self, ev: BackendEvent) {
        let now = self.clock.now();
        match ev {
            BackendEvent::Connected => {
                self.connected = true;
                tracing::info!("libvirt connected: listing domains");
                if let Some((since, _)) = self.libvirt_lost.take() {
                    let after_ms = view::millis(now.saturating_sub(since));
                    self.note_all(
                        now,
                        Level::Info,
                        HistoryKind::Hypervisor(HypervisorEvent::Back { after_ms }),
                    );
                }
                self.executor.list(self.event_seq);
            }
            BackendEvent::Disconnected { reason } => {
                self.connected = false;
                tracing::warn!(%reason, "libvirt connection lost: no failure is judged until it is back");
                if self.libvirt_lost.is_none() {
                    let lost = LibvirtLost {
                        since_unix_ms: self.clock.wall_ms(now),
                        reason: reason.clone(),
                    };
                    self.libvirt_lost = Some((now, lost));
                    self.note_all(
                        now,
                        Level::Warn,
                        HistoryKind::Hypervisor(HypervisorEvent::Lost { reason }),
                    );
                }
                let ids: Vec<VmId> = self.vms.keys().copied().collect();
                for id in ids {
                    self.feed(id, Input::HypervisorLost, now);
                }
            }
            BackendEvent::Domain { domain, event } => self.on_domain_event(domain, event, now),
        }
    }

    fn on_domain_event(&mut self, domain: DomainRef, event: DomainEvent, now: Duration) {
        if !self.config.manages(&domain.name) {
            return;
        }
        self.event_seq += 1;
        let seq = self.event_seq;
        let Some(&id) = self.by_uuid.get(&domain.uuid) else {
            tracing::debug!(domain = %domain.name, ?event, "event for a new domain: looking it up");
            self.executor.lookup(&domain.uuid, seq);
            return;
        };
        if let Some(vm) = self.vms.get_mut(&id) {
            vm.last_event_seq = seq;
            vm.state = view::state_after(vm.state, event);
            tracing::info!(domain = %vm.domain.name, %event, "libvirt event");
        }
        self.note(id, now, Level::Info, HistoryKind::Libvirt(event));
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
            // A transient domain (as a cluster's VirtualDomain creates them) is gone once it
            // stops: the lookup finds no such domain and drops it, and the next one of the
            // same name is a new domain to follow.
            DomainEvent::Stopped(_)
            | DomainEvent::Started(_)
            | DomainEvent::Resumed(_)
            | DomainEvent::Defined
            | DomainEvent::MetadataChanged => self.executor.lookup(&domain.uuid, seq),
            _ => {}
        }
        self.sync_session(id, now);
    }

    fn on_internal(&mut self, msg: Internal) {
        let now = self.clock.now();
        match msg {
            Internal::Listing { seq, result } => match result {
                Ok(infos) => {
                    let mut listed = HashSet::new();
                    for info in infos {
                        if !self.config.manages(&info.domain.name) {
                            continue;
                        }
                        listed.insert(info.domain.uuid.clone());
                        self.upsert(info, seq, now);
                    }
                    for id in reconcile::gone(&self.vms, &listed, seq) {
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
                        if self
                            .vms
                            .get(&id)
                            .is_some_and(|vm| reconcile::is_fresh(vm, seq))
                        {
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
                            tracing::error!(domain = %v.domain.name, method = method.as_str(), %error, "the reset was not carried out");
                        }
                        Input::ResetFailed { error }
                    }
                };
                self.feed(vm, input, now);
            }
            Internal::Escalated {
                vm,
                resource,
                result,
            } => {
                let decision = match result {
                    Ok(()) => Decision::Escalated { resource },
                    Err(error) => Decision::EscalationFailed { resource, error },
                };
                let level = match decision {
                    Decision::Escalated { .. } => Level::Warn,
                    _ => Level::Error,
                };
                if let Some(v) = self.vms.get(&vm) {
                    match level {
                        Level::Error => tracing::error!(domain = %v.domain.name, "{decision}"),
                        _ => tracing::warn!(domain = %v.domain.name, "{decision}"),
                    }
                }
                let took = matches!(decision, Decision::Escalated { .. });
                self.note(vm, now, level, HistoryKind::Decision(decision));
                if took {
                    self.feed(vm, Input::ClusterTookOver, now);
                }
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
                        self.executor.lookup(&domain.uuid, self.event_seq);
                        let what = if removed { "disabled" } else { "enabled" };
                        tracing::info!(domain = %domain.name, "operator {what} monitoring (metadata written)");
                        if let Some(&id) = self.by_uuid.get(&domain.uuid) {
                            let action = if removed {
                                OperatorAction::MetadataRemoved
                            } else {
                                OperatorAction::MetadataWritten
                            };
                            self.note(id, now, Level::Info, HistoryKind::Operator(action));
                        }
                        Response::Done {
                            message: format!("{what} monitoring of {}", domain.name),
                        }
                    }
                    Err(message) => Response::Error {
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
        let policy = reconcile::policy_of(&self.config, &info.spec);
        let id = match self.by_uuid.get(&info.domain.uuid) {
            Some(&id) => id,
            None => self.adopt(&info, policy.clone(), now),
        };
        let fresh = {
            let Some(vm) = self.vms.get_mut(&id) else {
                return;
            };
            if let Err(e) = &info.spec {
                if vm.spec.as_ref().err() != Some(e) {
                    tracing::warn!(domain = %info.domain.name, error = %e, "broken monitoring metadata: domain left alone");
                    let wall = self.clock.wall_ms(now);
                    vm.note(
                        self.config.history_len,
                        wall,
                        Level::Warn,
                        HistoryKind::Decision(Decision::BrokenMetadata {
                            error: e.to_string(),
                        }),
                    );
                    vm::flush_after(&mut self.history_flush_at, now);
                }
            }
            vm.domain = info.domain.clone();
            vm.spec = info.spec.clone();
            vm.vsock_cid = info.vsock_cid;
            let fresh = reconcile::is_fresh(vm, seq);
            if fresh {
                vm.state = info.state;
            }
            fresh
        };
        self.feed(id, Input::Policy(policy), now);
        if fresh {
            self.feed(id, Input::DomainState(info.state), now);
        }
        self.sync_apps(id, now);
        self.sync_session(id, now);
    }

    /// Takes a domain seen for the first time into the supervisor's care, with what the state
    /// directory kept of it.
    fn adopt(
        &mut self,
        info: &DomainInfo,
        policy: Option<crate::policy::Policy>,
        now: Duration,
    ) -> VmId {
        let id = self.next_vm;
        self.next_vm += 1;
        let mut machine = VmMachine::new(now, info.state, policy.clone());
        let mut history = History::default();
        if let Some(record) = self.persisted.remove(&info.domain.uuid) {
            let (resets, alarm) = reconcile::restore(&self.clock, &record);
            for entry in record.history {
                history.push(self.config.history_len, entry);
            }
            history.push(
                self.config.history_len,
                appmon_control::HistoryEntry::new(
                    unix_ms_now(),
                    Level::Info,
                    HistoryKind::Decision(Decision::Restored {
                        resets: u32::try_from(resets.len()).unwrap_or(u32::MAX),
                        alarm: alarm.is_some(),
                    }),
                ),
            );
            machine.restore(resets, alarm);
        }
        tracing::info!(domain = %info.domain.name, uuid = %info.domain.uuid,
            monitored = policy.is_some(), state = %info.state, "domain found");
        self.by_uuid.insert(info.domain.uuid.clone(), id);
        self.vms.insert(id, Vm::new(info, machine, history));
        id
    }

    fn remove(&mut self, id: VmId, why: &str) {
        let now = self.clock.now();
        let left = HistoryKind::Decision(Decision::Left { why: why.into() });
        self.note(id, now, Level::Info, left);
        if let Some(vm) = self.vms.remove(&id) {
            self.mon_epoch.bump();
            tracing::info!(domain = %vm.domain.name, "{why}: no longer monitored here");
            self.by_uuid.remove(&vm.domain.uuid);
            // Keep its reset history for a later return (a migration back). A monitored VM's
            // record is written now: no later flush covers a VM that is gone.
            let record = vm.record(&self.clock);
            if matches!(vm.spec, Ok(Some(_))) {
                self.writer.save(record.clone());
            }
            self.persisted.insert(vm.domain.uuid.clone(), record);
        }
    }

    // ---- sessions ----

    /// Starts, restarts or stops the VM's session task to match its spec and state.
    fn sync_session(&mut self, id: VmId, now: Duration) {
        let Some(vm) = self.vms.get(&id) else {
            return;
        };
        let plan = reconcile::session_plan(vm, |spec| {
            self.executor
                .channel_lookup(vm.domain.clone(), reconcile::channel_name(spec).to_string())
        });
        match plan {
            SessionPlan::Keep => {}
            SessionPlan::Stop => {
                if self.stop_session(id, now) {
                    if let Some(vm) = self.vms.get(&id) {
                        tracing::info!(domain = %vm.domain.name, "guest session stopped");
                    }
                }
            }
            SessionPlan::Unreachable(error) => {
                self.stop_session(id, now);
                self.unreachable(id, now, error_chain(&error));
            }
            SessionPlan::Start(endpoint) => {
                self.stop_session(id, now);
                let task = self.next_task;
                self.next_task += 1;
                let acceptor = match self.acceptor(&endpoint) {
                    Ok(acceptor) => acceptor,
                    Err(error) => {
                        self.unreachable(id, now, error_chain(&error));
                        return;
                    }
                };
                let Some(vm) = self.vms.get_mut(&id) else {
                    return;
                };
                let desc = endpoint.describe();
                let (tx, rx) = mpsc::channel(SESSION_QUEUE);
                tracing::info!(domain = %vm.domain.name, endpoint = %desc, "guest session started");
                let (name, config, to) = (
                    vm.domain.name.clone(),
                    self.session_config.clone(),
                    self.session_tx.clone(),
                );
                let join = match acceptor {
                    // The guest announces itself; dialing is for protocol-1 guest agents.
                    Some(acceptor) => tokio::spawn(session::listen(
                        id,
                        task,
                        name,
                        acceptor,
                        Some(endpoint),
                        config,
                        to,
                        rx,
                    )),
                    None => tokio::spawn(session::run(id, task, name, endpoint, config, to, rx)),
                };
                vm.unreachable = None;
                vm.session = Some(SessionHandle {
                    task,
                    endpoint: desc,
                    cmds: tx,
                    join,
                });
                if vm.machine.phase() == Phase::Paused {
                    vm.send(HostCmd::DomainPaused(true));
                }
            }
        }
    }

    /// Where a VM's guest agent announces itself, for the transports that deliver guest → host
    /// connections (hybrid and kernel vsock); `None` for a virtio-serial channel, which the
    /// host opens.
    fn acceptor(
        &mut self,
        endpoint: &session::Endpoint,
    ) -> Result<Option<session::Acceptor>, session::SessionError> {
        match endpoint {
            session::Endpoint::Hybrid { path, port } => {
                session::Acceptor::bind_hybrid(path, *port).map(Some)
            }
            session::Endpoint::Vsock { cid, port } => {
                let routes = self.vsock_routes.entry(*port).or_insert_with(|| {
                    let routes = Arc::new(session::vsock::Routes::default());
                    let port = *port;
                    let serving = routes.clone();
                    let join = tokio::spawn(async move {
                        if let Err(e) = session::vsock::serve_vsock(port, serving).await {
                            tracing::error!(port, error = %e, "cannot listen for guest announcements on AF_VSOCK");
                        }
                    });
                    (routes, join)
                });
                Ok(Some(session::Acceptor::Routed(routes.0.register(*cid))))
            }
            session::Endpoint::Channel { .. } | session::Endpoint::ChannelByName { .. } => Ok(None),
        }
    }

    /// Records, once per cause, that the VM's guest agent cannot be reached.
    fn unreachable(&mut self, id: VmId, now: Duration, error: String) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        if vm.unreachable.as_deref() != Some(error.as_str()) {
            tracing::warn!(domain = %vm.domain.name, %error, "cannot reach the guest agent");
            vm.unreachable = Some(error.clone());
            self.note(
                id,
                now,
                Level::Warn,
                HistoryKind::Guest(GuestEvent::Unreachable { error }),
            );
        }
    }

    /// A connection to VM `id`'s guest agent did not become a session: counted, and logged
    /// and recorded when its reason changed ([`trouble`] decides).
    fn connect_failed(&mut self, id: VmId, reason: ConnectFailure, now: Duration) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        match vm.trouble.failed(reason.clone(), now) {
            trouble::Verdict::Repeat | trouble::Verdict::HeldBack => {}
            trouble::Verdict::Report { held_back } => {
                tracing::warn!(domain = %vm.domain.name, %reason, held_back, "no session with the guest agent");
                self.note(
                    id,
                    now,
                    Level::Warn,
                    HistoryKind::Guest(GuestEvent::ConnectFailed { reason, held_back }),
                );
            }
        }
    }

    /// Ends the VM's session task, if it has one, and tells its machine the channel is
    /// closed, carrying out what the machine decides then. Returns whether there was one.
    fn stop_session(&mut self, id: VmId, now: Duration) -> bool {
        let Some(vm) = self.vms.get_mut(&id) else {
            return false;
        };
        if vm.session.take().is_none() {
            return false;
        }
        vm.connected = false;
        self.feed(id, Input::ChannelClosed, now);
        self.guest_session_down(id, now);
        true
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
                let at = self.clock.mono(tokio::time::Instant::from_std(at));
                vm.last_heartbeat = Some(at);
                self.feed_at(id, Input::Heartbeat, at, now);
            }
            SessionEvent::Hello { boot_id, agent } => {
                vm.connected = true;
                vm.unreachable = None;
                vm.trouble.connected();
                vm.guest.hello(boot_id);
                vm.agent = Some(agent.clone());
                vm.counters.session_started();
                self.note(
                    id,
                    now,
                    Level::Info,
                    HistoryKind::Guest(GuestEvent::Connected {
                        agent,
                        boot_id: format_boot_id(&boot_id),
                    }),
                );
                self.feed(id, Input::GuestHello { boot_id }, now);
            }
            SessionEvent::State(state) => {
                vm.claimed_heartbeat = state.last_heartbeat_age_ms.map(|age| (now, age));
                let processes = state.processes.clone();
                self.feed(id, Input::GuestState(state), now);
                self.guest_session_up(id, processes, now);
            }
            SessionEvent::Closed { reason } => {
                vm.connected = false;
                self.counts.session_end(&reason);
                self.note(
                    id,
                    now,
                    Level::Warn,
                    HistoryKind::Guest(GuestEvent::SessionEnded { reason }),
                );
                self.feed(id, Input::ChannelClosed, now);
                self.guest_session_down(id, now);
            }
            SessionEvent::ConnectFailed(reason) => self.connect_failed(id, reason, now),
            SessionEvent::Synced => self.feed(id, Input::InputDrained, now),
            SessionEvent::Process(status) => self.guest_process(id, status, now),
            SessionEvent::Monitors(monitors) => {
                self.mon_epoch.bump();
                self.guest_monitors(id, monitors, now);
            }
            SessionEvent::Monitor(event) => {
                self.mon_epoch.bump();
                self.guest_monitor(id, event, now);
            }
            SessionEvent::Reply { id: request, msg } => self.guest_reply(id, request, msg, now),
            SessionEvent::CounterSchema(part) => {
                self.mon_epoch.bump();
                vm.counters.schema(&vm.domain.name, part, now);
            }
            SessionEvent::CounterValues { values, at } => {
                let at = self.clock.mono(tokio::time::Instant::from_std(at));
                let unix_ms = self.clock.wall_ms(at.min(now));
                if vm.counters.values(&vm.domain.name, &values, unix_ms, now) {
                    self.mon_epoch.bump();
                    self.counters_changed(id, CounterSet::Guest, &values, unix_ms, now);
                }
            }
            SessionEvent::Request { id: request, req } => {
                self.feed(
                    id,
                    Input::Guest {
                        id: request,
                        request: req,
                    },
                    now,
                );
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

    fn unknown(&self, key: &str) -> Response {
        Response::Error {
            kind: ErrorKind::UnknownDomain,
            message: format!(
                "unknown domain {key:?} (not defined in libvirt, or not among this host agent's domains {:?})",
                self.config.domains
            ),
        }
    }

    /// A VM as `list` and `show` see it, with what the host agent knows beside the VM.
    fn view(&self, vm: &Vm, now: Duration, with_history: bool) -> VmView {
        let mut view = view::view(vm, now, with_history);
        view.libvirt_lost = self.libvirt_lost.as_ref().map(|(_, lost)| lost.clone());
        view.connect_failure = view::connect_failure(vm, &self.clock);
        view
    }

    fn on_control(&mut self, req: ControlRequest, reply: oneshot::Sender<Response>) {
        let now = self.clock.now();
        let response = match req {
            ControlRequest::List => {
                let mut domains: Vec<VmView> = self
                    .vms
                    .values()
                    .map(|vm| self.view(vm, now, false))
                    .collect();
                domains.sort_by(|a, b| a.name.cmp(&b.name));
                Response::List { domains }
            }
            ControlRequest::Show { domain } => {
                match self.find(&domain).and_then(|id| self.vms.get(&id)) {
                    Some(vm) => Response::Show {
                        domain: Box::new(self.view(vm, now, true)),
                    },
                    None => self.unknown(&domain),
                }
            }
            ControlRequest::Clear { domain } => match self.find(&domain) {
                Some(id) => {
                    self.note(
                        id,
                        now,
                        Level::Warn,
                        HistoryKind::Operator(OperatorAction::Clear),
                    );
                    self.feed(id, Input::Clear, now);
                    let apps = self.clear_apps(id, now);
                    Response::Done {
                        message: format!(
                            "cleared the alarm and reset window of {domain}{}",
                            if apps.is_empty() {
                                String::new()
                            } else {
                                format!(", and the given-up application(s) {}", apps.join(", "))
                            }
                        ),
                    }
                }
                None => self.unknown(&domain),
            },
            ControlRequest::Guest { domain, call } => match self.find(&domain) {
                Some(id) => {
                    // Answered when the guest answers.
                    self.guest_call(id, call, reply);
                    return;
                }
                None => self.unknown(&domain),
            },
            ControlRequest::Processes { domain } => {
                match self.find(&domain).and_then(|id| self.guest_processes(id)) {
                    Some(processes) => Response::Processes { processes },
                    None => self.unknown(&domain),
                }
            }
            ControlRequest::Counters { domain, entity } => {
                match self.find(&domain).and_then(|id| self.vms.get(&id)) {
                    Some(vm) => counters::answer(&vm.domain.name, &vm.counters, entity.as_deref()),
                    None => self.unknown(&domain),
                }
            }
            ControlRequest::Alarms { domain } => self.alarms_view(domain),
            ControlRequest::AlarmSet { rule } => {
                let what = format!(
                    "alarm rule set on {:?} {:?} / {:?}",
                    rule.domain, rule.entity, rule.counter
                );
                let set = self.run_time_rules.set(rule);
                self.rules_changed(set.map(|()| what))
            }
            ControlRequest::AlarmRemove {
                domain,
                entity,
                counter,
            } => {
                let what = format!("alarm rule removed from {domain:?} {entity:?} / {counter:?}");
                let removed = self.run_time_rules.remove(&domain, &entity, &counter);
                self.rules_changed(removed.map(|()| what))
            }
            ControlRequest::SetSpec { domain: key, spec } => {
                match self.find(&key).and_then(|id| self.vms.get(&id)) {
                    Some(vm) => {
                        // Answered when libvirt has written it.
                        self.executor.set_spec(vm.domain.clone(), spec, reply);
                        return;
                    }
                    None => self.unknown(&key),
                }
            }
        };
        let _ = reply.send(response);
    }

    /// MON's HTTP handlers ask: built here, where the counters are; rendered by the handler.
    fn on_mon(&mut self, call: MonCall) {
        match call {
            MonCall::Query(query, reply) => {
                let vms = self
                    .vms
                    .values()
                    .map(|vm| (vm.domain.name.as_str(), &vm.counters));
                let unix_secs = unix_ms_now() / 1000;
                let _ = reply.send(counters::mon_answer(&query, unix_secs, vms, &self.alarms));
            }
            MonCall::Metrics(reply) => {
                let now = self.clock.now();
                let _ = reply.send(metrics::exposition(
                    &self.vms,
                    &self.counts,
                    &self.alarms,
                    now,
                ));
            }
            MonCall::Page(ask, reply) => {
                let now = self.clock.now();
                let vms = self
                    .vms
                    .values()
                    .map(|vm| (self.view(vm, now, true), &vm.counters.store));
                let _ = reply.send(crate::mon::page::answer(
                    &ask,
                    unix_ms_now(),
                    vms,
                    self.alarms.raised(),
                ));
            }
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
        self.alarms
            .set_rules(alarm_rules::in_force(&config, &self.run_time_rules));
        self.pause_watch.set_bound(config.scheduling_pause);
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
            let policy = reconcile::policy_of(&self.config, &vm.spec);
            self.feed(id, Input::Policy(policy), now);
        }
        if self.connected {
            self.executor.list(self.event_seq);
        }
    }
}
