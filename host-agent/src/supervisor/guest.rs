//! The guest's own work as the supervisor carries it: its application monitors (kept and shown),
//! the processes launched in it (the guest's table as last reported), the managed applications
//! of the domain's metadata (one [`AppMachine`] each, fed and obeyed here), and the host's
//! requests to the guest with the waiter of each reply.
//!
//! Nothing is decided here: [`crate::managed`] decides for each application (restart, escalate,
//! give up), the policy machine decides whether an escalation resets the VM. This module feeds
//! them what the guest says and carries out what they ask.
//!
//! Everything the guest sends is data: its strings are escaped (`Text`'s `Display`) on their
//! way into views, history and logs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use appmon_control::{
    ApplicationView, ErrorKind, HistoryKind, Level, MonitorNote, MonitorReport, MonitorView,
    OutputView, ProcessEnd, ProcessNote, ProcessView, Response,
};
use appmon_libvirt_backend::spec::OnFailure;
use appmon_wire::{
    ErrorCode, GuestMsg, HostMsg, MonitorEvent, MonitorEventKind, MonitorStatus, ProcessState,
    ProcessStatus, RequestId, Text, WireError, WireMessage,
};
use tokio::sync::oneshot;

use super::counters::CounterSet;
use super::Supervisor;
use crate::managed::{self, AppMachine, AppPolicy, End, Note};
use crate::policy::Input;
use crate::session::{host_request_id, HostCmd, VmId};

/// Requests to one guest awaiting their reply, at most; a guest that answers none of them
/// cannot make the host hold more.
const MAX_PENDING: usize = 256;

/// What a reply is awaited for.
pub(super) enum Waiter {
    /// A managed application's launch or poll of process `id`.
    App {
        app: String,
        id: String,
        launch: bool,
    },
    /// The release of a process whose end was read.
    Release { id: String },
    /// An operator's request through the control socket.
    Control {
        reply: oneshot::Sender<Response>,
        call: CallKind,
    },
}

/// Which control request a reply answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CallKind {
    Launch { id: String },
    Poll,
    Signal { id: String, signal: i32 },
    ReadOutput,
    Release { id: String },
}

/// One VM's guest work. See the module documentation.
#[derive(Default)]
pub(super) struct GuestWork {
    /// Every application monitor, as the guest last listed them.
    pub monitors: Vec<MonitorStatus>,
    /// The guest's table of launched processes, as it last reported it.
    pub processes: BTreeMap<String, ProcessStatus>,
    /// Ids this host agent launched, or found in a guest's table: any other is unclaimed.
    pub known: HashSet<String>,
    pub apps: Vec<AppMachine>,
    pub pending: HashMap<RequestId, Waiter>,
    next_request: u32,
    /// The boot id of the last session, and whether the current one is a new boot.
    last_boot: Option<[u8; 16]>,
    rebooted: bool,
}

impl GuestWork {
    /// The earliest deadline of the applications after `now`.
    pub fn next_deadline(&self, now: Duration) -> Option<Duration> {
        self.apps
            .iter()
            .filter_map(AppMachine::next_deadline)
            .filter(|&d| d > now)
            .min()
    }

    /// Remembers the boot id of a new session.
    pub fn hello(&mut self, boot_id: [u8; 16]) {
        self.rebooted = self.last_boot.is_some_and(|b| b != boot_id);
        self.last_boot = Some(boot_id);
    }
}

/// A guest's word, escaped.
fn shown<L: appmon_wire::text::Limit>(text: &Text<L>) -> String {
    text.to_string()
}

pub(super) fn process_view(p: &ProcessStatus) -> ProcessView {
    ProcessView {
        id: shown(&p.id),
        state: state_view(&p.state),
        command: shown(&p.command),
        user: shown(&p.user),
        started_unix_ms: p.started_unix_ms,
        stdout_bytes: p.stdout_bytes,
        stderr_bytes: p.stderr_bytes,
    }
}

fn state_view(state: &ProcessState) -> appmon_control::ProcessState {
    use appmon_control::ProcessState as S;
    match state {
        ProcessState::Running { pid } => S::Running { pid: *pid },
        ProcessState::Exited { code } => S::Exited { code: *code },
        ProcessState::Killed { signal } => S::Killed { signal: *signal },
        ProcessState::FailedToStart { reason } => S::FailedToStart {
            reason: shown(reason),
        },
        ProcessState::Unknown => S::Unknown,
    }
}

fn end_of(state: &ProcessState) -> Option<ProcessEnd> {
    match state {
        ProcessState::Running { .. } => None,
        ProcessState::Exited { code } => Some(ProcessEnd::Exited { code: *code }),
        ProcessState::Killed { signal } => Some(ProcessEnd::Killed { signal: *signal }),
        ProcessState::FailedToStart { reason } => Some(ProcessEnd::FailedToStart {
            reason: shown(reason),
        }),
        ProcessState::Unknown => Some(ProcessEnd::Lost),
    }
}

fn failure_action(a: appmon_wire::FailureAction) -> appmon_control::FailureAction {
    use appmon_control::FailureAction as F;
    match a {
        appmon_wire::FailureAction::Notify => F::Notify,
        appmon_wire::FailureAction::StopHeartbeats => F::StopHeartbeats,
        appmon_wire::FailureAction::NeedReset => F::NeedReset,
    }
}

pub(super) fn monitor_view(m: &MonitorStatus) -> MonitorView {
    use appmon_control::{MonitorKind as K, MonitorMode as M, MonitorPhase as P};
    MonitorView {
        name: shown(&m.name),
        application: shown(&m.application),
        kind: match m.kind {
            appmon_wire::MonitorKind::Process => K::Process,
            appmon_wire::MonitorKind::Custom => K::Custom,
        },
        mode: match m.mode {
            appmon_wire::MonitorMode::Startup => M::Startup,
            appmon_wire::MonitorMode::LongRunning => M::LongRunning,
            appmon_wire::MonitorMode::Both => M::Both,
        },
        phase: match m.phase {
            appmon_wire::MonitorPhase::Stabilizing => P::Stabilizing,
            appmon_wire::MonitorPhase::Healthy => P::Healthy,
            appmon_wire::MonitorPhase::Failed => P::Failed,
            appmon_wire::MonitorPhase::GaveUp => P::GaveUp,
            appmon_wire::MonitorPhase::Idle => P::Idle,
        },
        restarts: m.restarts,
        restart_count: m.restart_count,
        failure_action: failure_action(m.failure_action),
        last_failure: m.last_failure.as_ref().map(shown),
    }
}

fn monitor_note(event: &MonitorEvent) -> (Level, MonitorNote) {
    let (level, report) = match &event.kind {
        MonitorEventKind::StartupOk => (Level::Info, MonitorReport::StartupOk),
        MonitorEventKind::StartupFailed { reason } => (
            Level::Info,
            MonitorReport::StartupFailed {
                reason: shown(reason),
            },
        ),
        MonitorEventKind::Started { ok } => (
            if *ok { Level::Info } else { Level::Warn },
            MonitorReport::Started { ok: *ok },
        ),
        MonitorEventKind::Failed { reason } => (
            Level::Warn,
            MonitorReport::Failed {
                reason: shown(reason),
            },
        ),
        MonitorEventKind::Restarted { attempt, ok } => (
            Level::Warn,
            MonitorReport::Restarted {
                attempt: *attempt,
                ok: *ok,
            },
        ),
        MonitorEventKind::ActionTaken { action } => (
            Level::Error,
            MonitorReport::ActionTaken {
                action: failure_action(*action),
            },
        ),
        MonitorEventKind::Recovered => (Level::Info, MonitorReport::Recovered),
    };
    (
        level,
        MonitorNote {
            monitor: shown(&event.monitor),
            report,
        },
    )
}

pub(super) fn application_view(app: &AppMachine, now: Duration) -> ApplicationView {
    let p = app.policy();
    let running = app.running();
    ApplicationView {
        name: p.name.clone(),
        argv: p.argv.clone(),
        process: running.map(|(id, _)| id.to_owned()),
        pid: running.map(|(_, pid)| pid),
        restarts_in_window: u32::try_from(app.restarts_in_window(now)).unwrap_or(u32::MAX),
        max_restarts: p.max_restarts,
        restart_window_ms: u64::try_from(p.restart_window.as_millis()).unwrap_or(u64::MAX),
        on_failure: match p.on_failure {
            OnFailure::GiveUp => "give_up".into(),
            OnFailure::Reset => "reset".into(),
        },
        gave_up: app.gave_up(),
    }
}

/// The history entry of a managed application's note, and its level.
fn app_note(app: &str, note: Note) -> (Level, ProcessNote) {
    let application = app.to_owned();
    match note {
        Note::Started { id, pid } => (
            Level::Info,
            ProcessNote::Started {
                application: Some(application),
                id,
                pid,
            },
        ),
        Note::Adopted { id, pid } => (
            Level::Info,
            ProcessNote::Adopted {
                application,
                id,
                pid,
            },
        ),
        Note::Ended { id, end } => (
            Level::Warn,
            ProcessNote::Ended {
                application: Some(application),
                id,
                end: match end {
                    End::Exited(code) => ProcessEnd::Exited { code },
                    End::Killed(signal) => ProcessEnd::Killed { signal },
                    End::FailedToStart(reason) => ProcessEnd::FailedToStart { reason },
                    End::Lost => ProcessEnd::Lost,
                },
            },
        ),
        Note::Restarting {
            attempt,
            max,
            after,
        } => (
            Level::Warn,
            ProcessNote::Restarting {
                application,
                attempt,
                max,
                after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            },
        ),
        Note::Escalated => (Level::Error, ProcessNote::Escalated { application }),
        Note::GaveUp { reason } => (
            Level::Error,
            ProcessNote::GaveUp {
                application,
                reason,
            },
        ),
        Note::Refused {
            id,
            error,
            retrying,
        } => (
            Level::Warn,
            ProcessNote::Refused {
                application: Some(application),
                id,
                error,
                retrying,
            },
        ),
        Note::Cleared => (Level::Info, ProcessNote::Cleared { application }),
    }
}

/// The guest's answer as a process status, or its error.
fn as_status(msg: GuestMsg) -> Result<ProcessStatus, WireError> {
    match msg {
        GuestMsg::Process(status) => Ok(status),
        GuestMsg::Error(e) => Err(e),
        other => Err(WireError::new(
            ErrorCode::Internal,
            format!("the guest answered with {}", other.kind_name()),
        )),
    }
}

fn guest_refused(e: &WireError) -> Response {
    Response::Error {
        kind: ErrorKind::GuestRefused,
        message: format!("the guest agent refused: {e}"),
    }
}

impl Supervisor {
    /// Logs a guest-work entry and keeps it in VM `id`'s history.
    fn note_guest(&mut self, id: VmId, now: Duration, level: Level, kind: HistoryKind) {
        if let Some(vm) = self.vms.get(&id) {
            let name = &vm.domain.name;
            match level {
                Level::Info => tracing::info!(domain = %name, "{kind}"),
                Level::Warn => tracing::warn!(domain = %name, "{kind}"),
                Level::Error => tracing::error!(domain = %name, "{kind}"),
            }
        }
        self.note(id, now, level, kind);
    }

    /// Sends request `msg` to VM `id`'s guest, its reply to go to `waiter`. `Err` gives the
    /// waiter back when no session can carry it.
    fn request(&mut self, id: VmId, msg: HostMsg, waiter: Waiter) -> Result<(), (Waiter, String)> {
        let Some(vm) = self.vms.get_mut(&id) else {
            return Err((waiter, "the domain is gone".into()));
        };
        if !vm.connected || vm.session.is_none() {
            return Err((
                waiter,
                format!("no guest agent session with {}", vm.domain.name),
            ));
        }
        if vm.guest.pending.len() >= MAX_PENDING {
            return Err((
                waiter,
                format!("{MAX_PENDING} requests to the guest are awaiting their answers"),
            ));
        }
        vm.guest.next_request = vm.guest.next_request.wrapping_add(1);
        let request = host_request_id(vm.guest.next_request);
        vm.guest.pending.insert(request, waiter);
        vm.send(HostCmd::Request {
            id: request,
            msg: Box::new(msg),
        });
        Ok(())
    }

    /// The managed applications of VM `id` follow its spec: kept while their policy is the same,
    /// started afresh when it changed, dropped when gone.
    pub(super) fn sync_apps(&mut self, id: VmId, now: Duration) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let wanted: Vec<AppPolicy> = match &vm.spec {
            Ok(Some(spec)) => spec.applications.iter().map(AppPolicy::from_spec).collect(),
            _ => Vec::new(),
        };
        let mut old = std::mem::take(&mut vm.guest.apps);
        let session_up = vm.connected;
        let table: Vec<ProcessStatus> = vm.guest.processes.values().cloned().collect();
        let mut fresh = Vec::new();
        for policy in wanted {
            match old.iter().position(|a| *a.policy() == policy) {
                Some(at) => vm.guest.apps.push(old.remove(at)),
                None => {
                    tracing::info!(domain = %vm.domain.name, application = %policy.name, "managed application configured");
                    fresh.push(policy.name.clone());
                    vm.guest.apps.push(AppMachine::new(policy));
                }
            }
        }
        for gone in old {
            tracing::info!(domain = %vm.domain.name, application = %gone.policy().name,
                "managed application no longer configured: left as it is in the guest");
        }
        if session_up {
            for name in fresh {
                let input = managed::Input::SessionUp {
                    processes: table.clone(),
                    rebooted: false,
                };
                self.feed_app(id, &name, input, now);
            }
        }
        self.schedule(id, now);
    }

    /// Feeds one application of VM `id` and carries out what it asks.
    fn feed_app(&mut self, id: VmId, app: &str, input: managed::Input, now: Duration) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let Some(machine) = vm.guest.apps.iter_mut().find(|a| a.policy().name == app) else {
            return;
        };
        let actions = machine.handle(input, now);
        for action in actions {
            self.app_action(id, app, action, now);
        }
    }

    /// Feeds every application of VM `id` the same input.
    fn feed_apps(&mut self, id: VmId, input: &managed::Input, now: Duration) {
        let names: Vec<String> = self
            .vms
            .get(&id)
            .map(|vm| {
                vm.guest
                    .apps
                    .iter()
                    .map(|a| a.policy().name.clone())
                    .collect()
            })
            .unwrap_or_default();
        for name in names {
            self.feed_app(id, &name, input.clone(), now);
        }
    }

    fn app_action(&mut self, id: VmId, app: &str, action: managed::Action, now: Duration) {
        match action {
            managed::Action::Launch(spec) => {
                let pid = spec.id.as_str().to_owned();
                if let Some(vm) = self.vms.get_mut(&id) {
                    vm.guest.known.insert(pid.clone());
                }
                let waiter = Waiter::App {
                    app: app.to_owned(),
                    id: pid.clone(),
                    launch: true,
                };
                if let Err((_, why)) = self.request(id, HostMsg::LaunchProcess(spec), waiter) {
                    let answer = Err(WireError::new(ErrorCode::Internal, why));
                    self.feed_app(id, app, managed::Input::Launched { id: pid, answer }, now);
                }
            }
            managed::Action::Poll { id: pid } => {
                let msg = HostMsg::PollProcess {
                    id: Text::truncating(pid.as_str()),
                };
                let waiter = Waiter::App {
                    app: app.to_owned(),
                    id: pid,
                    launch: false,
                };
                // No session: the machine polls again when one is up.
                let _ = self.request(id, msg, waiter);
            }
            managed::Action::Release { id: pid } => {
                let msg = HostMsg::ReleaseProcess {
                    id: Text::truncating(pid.as_str()),
                };
                let _ = self.request(id, msg, Waiter::Release { id: pid });
            }
            managed::Action::RequestReset { reason } => {
                if let Some(vm) = self.vms.get(&id) {
                    tracing::error!(domain = %vm.domain.name, application = app, %reason, "managed application escalates to a reset of the VM");
                }
                let input = Input::ApplicationFailed {
                    application: app.to_owned(),
                };
                self.feed(id, input, now);
            }
            managed::Action::Note(note) => {
                let (level, note) = app_note(app, note);
                self.note_guest(id, now, level, HistoryKind::Process(note));
            }
        }
    }

    /// `appmonctl clear`: the applications that gave up start again with their restarts
    /// forgotten; returns their names.
    pub(super) fn clear_apps(&mut self, id: VmId, now: Duration) -> Vec<String> {
        let gave_up: Vec<String> = self
            .vms
            .get(&id)
            .map(|vm| {
                vm.guest
                    .apps
                    .iter()
                    .filter(|a| a.gave_up())
                    .map(|a| a.policy().name.clone())
                    .collect()
            })
            .unwrap_or_default();
        for name in &gave_up {
            self.feed_app(id, name, managed::Input::Clear, now);
        }
        self.schedule(id, now);
        gave_up
    }

    /// The applications' deadlines that are due at `now`.
    pub(super) fn tick_apps(&mut self, id: VmId, now: Duration) {
        let due: Vec<String> = self
            .vms
            .get(&id)
            .map(|vm| {
                vm.guest
                    .apps
                    .iter()
                    .filter(|a| a.next_deadline().is_some_and(|d| d <= now))
                    .map(|a| a.policy().name.clone())
                    .collect()
            })
            .unwrap_or_default();
        for name in due {
            self.feed_app(id, &name, managed::Input::Tick, now);
        }
    }

    /// The guest's State arrived on a new session: its process table is the truth.
    pub(super) fn guest_session_up(
        &mut self,
        id: VmId,
        processes: Vec<ProcessStatus>,
        now: Duration,
    ) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        vm.guest.processes = processes
            .iter()
            .map(|p| (p.id.as_str().to_owned(), p.clone()))
            .collect();
        // What the guest lists is what there is: ids launched before and gone from its table
        // are forgotten, so no sequence of sessions grows this set beyond one table.
        vm.guest.known = vm.guest.processes.keys().cloned().collect();
        let input = managed::Input::SessionUp {
            processes,
            rebooted: vm.guest.rebooted,
        };
        self.feed_apps(id, &input, now);
        self.schedule(id, now);
    }

    /// The session ended: what waits for the guest's answer will not get it.
    pub(super) fn guest_session_down(&mut self, id: VmId, now: Duration) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        for (_, waiter) in vm.guest.pending.drain() {
            if let Waiter::Control { reply, .. } = waiter {
                let _ = reply.send(Response::Error {
                    kind: ErrorKind::NoSession,
                    message: "the guest agent session ended before the answer came".into(),
                });
            }
        }
        self.feed_apps(id, &managed::Input::SessionDown, now);
    }

    /// A `Process` event: the managed application it belongs to takes it; an operator's
    /// process's end is noted; one this host agent never launched is logged and ignored.
    pub(super) fn guest_process(&mut self, id: VmId, status: ProcessStatus, now: Duration) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let pid = status.id.as_str().to_owned();
        if !vm.guest.known.contains(&pid) {
            let note = ProcessNote::Unclaimed {
                id: shown(&status.id),
            };
            self.note_guest(id, now, Level::Warn, HistoryKind::Process(note));
            return;
        }
        vm.guest.processes.insert(pid.clone(), status.clone());
        let owner = vm
            .guest
            .apps
            .iter()
            .find(|a| a.owns(&pid))
            .map(|a| a.policy().name.clone());
        match owner {
            Some(app) => self.feed_app(id, &app, managed::Input::Event(status), now),
            None => {
                if let Some(end) = end_of(&status.state) {
                    let note = ProcessNote::Ended {
                        application: None,
                        id: shown(&status.id),
                        end,
                    };
                    self.note_guest(id, now, Level::Info, HistoryKind::Process(note));
                }
            }
        }
        self.schedule(id, now);
    }

    pub(super) fn guest_monitors(&mut self, id: VmId, monitors: Vec<MonitorStatus>, now: Duration) {
        if let Some(vm) = self.vms.get_mut(&id) {
            let unix_ms = self.clock.wall_ms(now);
            let values = vm.counters.monitors.statuses(&monitors, unix_ms);
            vm.guest.monitors = monitors;
            if let Some(values) = values {
                self.counters_changed(id, CounterSet::Monitors, &values, unix_ms, now);
            }
        }
    }

    pub(super) fn guest_monitor(&mut self, id: VmId, event: MonitorEvent, now: Duration) {
        let (level, note) = monitor_note(&event);
        self.note_guest(id, now, level, HistoryKind::Monitor(note));
        if let Some(vm) = self.vms.get_mut(&id) {
            let unix_ms = self.clock.wall_ms(now);
            if let Some(values) = vm.counters.monitors.event(&event, unix_ms) {
                self.counters_changed(id, CounterSet::Monitors, &values, unix_ms, now);
            }
        }
    }

    /// A VM's counters of `set` took `values`: the alarm view judges them (the guest's own and
    /// the `Application monitors` entity alike) and the VM's history keeps what changed.
    pub(super) fn counters_changed(
        &mut self,
        id: VmId,
        set: CounterSet,
        values: &appmon_wire::CounterValues,
        unix_ms: u64,
        now: Duration,
    ) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let store = match set {
            CounterSet::Guest => &vm.counters.store,
            CounterSet::Monitors => vm.counters.monitors.store(),
        };
        let changed = super::counters::judge(&mut self.alarms, &vm.domain.name, store, values);
        vm.note_alarms(
            self.config.history_len,
            unix_ms,
            changed,
            &mut self.history_flush_at,
            now,
        );
    }

    /// The guest answered request `request`.
    pub(super) fn guest_reply(
        &mut self,
        id: VmId,
        request: RequestId,
        msg: GuestMsg,
        now: Duration,
    ) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let Some(waiter) = vm.guest.pending.remove(&request) else {
            tracing::debug!(domain = %vm.domain.name, request, "a reply nobody waits for");
            return;
        };
        if let GuestMsg::Process(status) = &msg {
            if vm.guest.known.contains(status.id.as_str()) {
                vm.guest
                    .processes
                    .insert(status.id.as_str().to_owned(), status.clone());
            }
        }
        match waiter {
            Waiter::App {
                app,
                id: pid,
                launch,
            } => {
                let answer = as_status(msg);
                let input = if launch {
                    managed::Input::Launched { id: pid, answer }
                } else {
                    managed::Input::Polled { id: pid, answer }
                };
                self.feed_app(id, &app, input, now);
                self.schedule(id, now);
            }
            Waiter::Release { id: pid } => match msg {
                GuestMsg::Ack => {
                    vm.guest.processes.remove(&pid);
                }
                other => {
                    tracing::debug!(domain = %vm.domain.name, process = %pid, answer = other.kind_name(), "release not taken")
                }
            },
            Waiter::Control { reply, call } => {
                let response = self.control_answer(id, call, msg, now);
                let _ = reply.send(response);
            }
        }
    }

    /// The answer to an operator's request, and its history entry.
    fn control_answer(
        &mut self,
        id: VmId,
        call: CallKind,
        msg: GuestMsg,
        now: Duration,
    ) -> Response {
        match (call, msg) {
            (_, GuestMsg::Error(e)) => guest_refused(&e),
            (CallKind::Launch { id: pid }, GuestMsg::Process(status)) => {
                let note = match &status.state {
                    ProcessState::Running { pid: os_pid } => Some((
                        Level::Info,
                        ProcessNote::Started {
                            application: None,
                            id: pid.clone(),
                            pid: *os_pid,
                        },
                    )),
                    ProcessState::FailedToStart { reason } => Some((
                        Level::Warn,
                        ProcessNote::Ended {
                            application: None,
                            id: pid.clone(),
                            end: ProcessEnd::FailedToStart {
                                reason: shown(reason),
                            },
                        },
                    )),
                    _ => None,
                };
                if let Some((level, note)) = note {
                    self.note_guest(id, now, level, HistoryKind::Process(note));
                }
                Response::Process {
                    process: process_view(&status),
                }
            }
            (CallKind::Signal { id: pid, signal }, GuestMsg::Process(status)) => {
                let note = ProcessNote::Signalled { id: pid, signal };
                self.note_guest(id, now, Level::Info, HistoryKind::Process(note));
                Response::Process {
                    process: process_view(&status),
                }
            }
            (CallKind::Poll, GuestMsg::Process(status)) => Response::Process {
                process: process_view(&status),
            },
            (CallKind::ReadOutput, GuestMsg::Output(chunk)) => Response::Output {
                output: OutputView {
                    offset: chunk.offset,
                    data: chunk.data.into_vec(),
                    total: chunk.total,
                    eof: chunk.eof,
                },
            },
            (CallKind::Release { id: pid }, GuestMsg::Ack) => {
                if let Some(vm) = self.vms.get_mut(&id) {
                    vm.guest.processes.remove(&pid);
                }
                Response::Done {
                    message: format!("released {pid}"),
                }
            }
            (call, other) => Response::Error {
                kind: ErrorKind::GuestRefused,
                message: format!(
                    "the guest agent answered {call:?} with {}",
                    other.kind_name()
                ),
            },
        }
    }

    /// An operator's request to VM `id`'s guest; answered when the guest answers.
    pub(super) fn guest_call(
        &mut self,
        id: VmId,
        call: crate::control::GuestCall,
        reply: oneshot::Sender<Response>,
    ) {
        use crate::control::GuestCall;
        let (msg, kind) = match call {
            GuestCall::Launch(spec) => {
                let pid = spec.id.as_str().to_owned();
                if let Some(vm) = self.vms.get_mut(&id) {
                    if vm.guest.apps.iter().any(|a| a.owns(&pid)) {
                        let _ = reply.send(Response::Error {
                            kind: ErrorKind::BadRequest,
                            message: format!("{pid} is named like a managed application's process"),
                        });
                        return;
                    }
                    vm.guest.known.insert(pid.clone());
                }
                (HostMsg::LaunchProcess(spec), CallKind::Launch { id: pid })
            }
            GuestCall::Poll { id: pid } => (HostMsg::PollProcess { id: pid }, CallKind::Poll),
            GuestCall::Signal { id: pid, signal } => (
                HostMsg::SignalProcess {
                    id: pid.clone(),
                    signal,
                },
                CallKind::Signal {
                    id: pid.as_str().to_owned(),
                    signal,
                },
            ),
            GuestCall::ReadOutput {
                id: pid,
                stream,
                from,
            } => (
                HostMsg::ReadOutput {
                    id: pid,
                    stream,
                    from,
                },
                CallKind::ReadOutput,
            ),
            GuestCall::Release { id: pid } => (
                HostMsg::ReleaseProcess { id: pid.clone() },
                CallKind::Release {
                    id: pid.as_str().to_owned(),
                },
            ),
        };
        let waiter = Waiter::Control { reply, call: kind };
        if let Err((Waiter::Control { reply, .. }, why)) = self.request(id, msg, waiter) {
            let _ = reply.send(Response::Error {
                kind: ErrorKind::NoSession,
                message: why,
            });
        }
    }

    /// `appmonctl ps`: the guest's table as last reported.
    pub(super) fn guest_processes(&self, id: VmId) -> Option<Vec<ProcessView>> {
        let vm = self.vms.get(&id)?;
        Some(vm.guest.processes.values().map(process_view).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_words_are_escaped_in_views_and_history() {
        let status = MonitorStatus {
            name: Text::truncating("m\u{1b}[2J"),
            application: Text::truncating("app\nforged line"),
            kind: appmon_wire::MonitorKind::Custom,
            mode: appmon_wire::MonitorMode::Both,
            phase: appmon_wire::MonitorPhase::Failed,
            restarts: 1,
            restart_count: 2,
            failure_action: appmon_wire::FailureAction::Notify,
            last_failure: Some(Text::truncating("bad\r")),
        };
        let event = MonitorEvent {
            monitor: Text::truncating("m\n"),
            kind: MonitorEventKind::Failed {
                reason: Text::truncating("\u{202e}x"),
            },
        };

        let view = monitor_view(&status);
        let (_, note) = monitor_note(&event);

        assert_eq!(view.name, "m\\u{1b}[2J");
        assert_eq!(view.application, "app\\nforged line");
        assert_eq!(view.last_failure.as_deref(), Some("bad\\r"));
        assert_eq!(note.monitor, "m\\n");
        assert!(!note
            .to_string()
            .chars()
            .any(|c| c.is_control() || c == '\u{202e}'));
    }

    #[test]
    fn processes_show_their_reason_code() {
        let end = end_of(&ProcessState::Killed { signal: 9 });
        assert_eq!(end.as_ref().and_then(ProcessEnd::reason_code), Some(137));
        assert_eq!(end_of(&ProcessState::Running { pid: 1 }), None);
        assert_eq!(end_of(&ProcessState::Unknown), Some(ProcessEnd::Lost));
    }
}
