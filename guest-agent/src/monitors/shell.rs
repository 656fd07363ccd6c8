//! The task that owns the monitors' [`Monitors`] machine: it feeds it the clock and the
//! results of checks and commands, carries out its actions on tasks of their own, and tells the
//! daemon what concerns the host session and the application.
//!
//! Towards the daemon it only ever sends [`Input`]s: monitor events and states as
//! [`Event::Outbound`] (the session machine sends them on the established session, or drops
//! them), the heartbeat rule as [`Event::WithholdHeartbeats`], and needReset as the
//! application's own `postAppState` request. The daemon reaches it through a [`Handle`]: a new
//! host session (every state again), `appmon monitors`, a reloaded configuration.

use std::collections::HashMap;
use std::time::Instant;

use appmon_wire::{GuestMsg, MonitorEvent, MonitorEventKind, MonitorKind, MonitorStatus};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::config::{CommandLine, MonitorConfig};
use super::machine::{self, Action, MonitorId, Monitors, Op, Verdict};
use super::{custom, process};
use crate::api::{ApiRequest, ApiResponse, PostedState};
use crate::exec::{self, CommandSpec, Limits};
use crate::inbox::Input;
use crate::machine::Event;

/// Output kept of a start, cleanup or restart command, for the log.
const COMMAND_OUTPUT: usize = 4096;

/// What the daemon asks of the monitors.
#[derive(Debug)]
enum Request {
    SessionEstablished,
    List(oneshot::Sender<ApiResponse>),
    Reload(Vec<MonitorConfig>),
}

/// Reaches the monitors' task; dropping it stops the task (and kills what it runs).
#[derive(Debug)]
pub struct Handle {
    requests: mpsc::UnboundedSender<Request>,
    task: JoinHandle<()>,
}

impl Handle {
    /// A host session was established: send every monitor's state.
    pub fn session_established(&self) {
        let _ = self.requests.send(Request::SessionEstablished);
    }

    /// Every monitor's state, into `reply` (`appmon monitors`).
    pub fn list(&self, reply: oneshot::Sender<ApiResponse>) {
        let _ = self.requests.send(Request::List(reply));
    }

    /// Takes a reloaded configuration's monitors (nothing happens when they are the same).
    pub fn reload(&self, monitors: Vec<MonitorConfig>) {
        let _ = self.requests.send(Request::Reload(monitors));
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the monitors' task. When the agent starts, startup checks and start commands begin
/// at once; `adopt` (a reload) takes the applications as they are (see [`machine`]).
pub fn spawn(monitors: Vec<MonitorConfig>, daemon: mpsc::Sender<Input>, adopt: bool) -> Handle {
    let (requests, rx) = mpsc::unbounded_channel();
    let (results, results_rx) = mpsc::unbounded_channel();
    let shell = Shell {
        machine: machine_for(&monitors),
        configs: monitors,
        daemon,
        results,
        checks: HashMap::new(),
        runs: Vec::new(),
        last_sent: None,
    };
    let task = tokio::spawn(shell.run(rx, results_rx, adopt));
    Handle { requests, task }
}

fn machine_for(configs: &[MonitorConfig]) -> Monitors {
    Monitors::new(configs.iter().map(machine::MonitorSpec::from).collect())
}

struct Shell {
    configs: Vec<MonitorConfig>,
    machine: Monitors,
    daemon: mpsc::Sender<Input>,
    results: mpsc::UnboundedSender<machine::Event>,
    /// Each monitor's check or watch under way.
    checks: HashMap<MonitorId, JoinHandle<()>>,
    /// Commands under way.
    runs: Vec<JoinHandle<()>>,
    last_sent: Option<Vec<MonitorStatus>>,
}

impl Shell {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Request>,
        mut results: mpsc::UnboundedReceiver<machine::Event>,
        adopt: bool,
    ) {
        info!(
            monitors = self.configs.len(),
            adopt, "application monitors starting"
        );
        self.feed(machine::Event::Begin { adopt }).await;
        loop {
            let deadline = self
                .machine
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                request = requests.recv() => match request {
                    None => break,
                    Some(Request::SessionEstablished) => {
                        let states = self.machine.statuses(now());
                        self.last_sent = Some(states.clone());
                        self.outbound(GuestMsg::Monitors(states)).await;
                    }
                    Some(Request::List(reply)) => {
                        let monitors = self.machine.statuses(now());
                        let _ = reply.send(ApiResponse::Monitors { monitors });
                    }
                    Some(Request::Reload(configs)) => self.reload(configs).await,
                },
                Some(event) = results.recv() => self.feed(event).await,
                () = sleep_until(deadline) => self.feed(machine::Event::Tick).await,
            }
        }
        self.stop_all();
    }

    async fn reload(&mut self, configs: Vec<MonitorConfig>) {
        if configs == self.configs {
            return;
        }
        info!(
            monitors = configs.len(),
            "monitor configuration changed: adopting the applications as they are (no startup checks, no start commands)"
        );
        self.stop_all();
        self.machine = machine_for(&configs);
        self.configs = configs;
        self.feed(machine::Event::Begin { adopt: true }).await;
    }

    fn stop_all(&mut self) {
        for (_, task) in self.checks.drain() {
            task.abort();
        }
        for task in self.runs.drain(..) {
            task.abort();
        }
    }

    async fn feed(&mut self, event: machine::Event) {
        if let machine::Event::Ran { run, ok, detail } = &event {
            if !ok {
                warn!(run, "{detail}");
            }
        }
        let actions = self.machine.handle(event, now());
        for action in actions {
            self.act(action).await;
        }
        self.runs.retain(|t| !t.is_finished());
        let states = self.machine.statuses(now());
        if self.last_sent.as_ref() != Some(&states) {
            self.last_sent = Some(states.clone());
            self.outbound(GuestMsg::Monitors(states)).await;
        }
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Check {
                monitor,
                id,
                purpose: _,
                timeout,
            } => {
                if let Some(old) = self.checks.remove(&monitor) {
                    old.abort();
                }
                let Some(config) = self.configs.get(monitor) else {
                    return;
                };
                let results = self.results.clone();
                let task = match (config.kind, config.target(), &config.command) {
                    (MonitorKind::Process, Some(target), _) => {
                        tokio::spawn(process_check(monitor, id, target, results))
                    }
                    (_, _, Some(command)) => {
                        let command = command.get_ref().clone();
                        tokio::spawn(async move {
                            let verdict = custom::check(&command, timeout).await;
                            let _ = results.send(machine::Event::Checked {
                                monitor,
                                id,
                                verdict,
                            });
                        })
                    }
                    _ => {
                        // The configuration check makes this impossible; fail loudly all the same.
                        let _ = results.send(machine::Event::Checked {
                            monitor,
                            id,
                            verdict: Verdict::Fail("nothing to check configured".into()),
                        });
                        return;
                    }
                };
                self.checks.insert(monitor, task);
            }
            Action::Run {
                run,
                app,
                op,
                monitor,
                timeout,
            } => {
                let Some(command) = self.command_for(app, op, monitor) else {
                    let _ = self.results.send(machine::Event::Ran {
                        run,
                        ok: false,
                        detail: format!("monitor `{}`: no {op:?} command", self.name(monitor)),
                    });
                    return;
                };
                let label = format!(
                    "monitor `{}`: {} command `{}`",
                    self.name(monitor),
                    op_name(op),
                    command.display()
                );
                info!("{label}: running");
                let results = self.results.clone();
                self.runs.push(tokio::spawn(async move {
                    let report = exec::run(
                        &CommandSpec::new(command.0),
                        Limits {
                            time: timeout,
                            output: COMMAND_OUTPUT,
                        },
                    )
                    .await;
                    let ok = report.outcome.success();
                    let detail = format!("{label}: {}", report.summary());
                    if ok {
                        info!("{detail}");
                    }
                    let _ = results.send(machine::Event::Ran { run, ok, detail });
                }));
            }
            Action::Report(event) => {
                log_event(&event);
                self.outbound(GuestMsg::Monitor(event)).await;
            }
            Action::NeedReset { monitor } => {
                warn!(
                    "monitor `{}`: posting needReset for the application",
                    self.name(monitor)
                );
                // The application's own path: the session machine records it and sends it
                // now or with the state of the next session. No one waits for the answer.
                let (reply, _) = oneshot::channel();
                self.to_daemon(Input::App {
                    request: ApiRequest::PostAppState {
                        state: PostedState::NeedReset,
                    },
                    reply,
                })
                .await;
            }
            Action::Heartbeats { withheld_by } => {
                self.to_daemon(Input::Event(Event::WithholdHeartbeats(withheld_by)))
                    .await;
            }
        }
    }

    /// The command `monitor` names for `op`: a restart without a restart command runs the
    /// monitor's start command, or else the application's.
    fn command_for(&self, app: usize, op: Op, monitor: MonitorId) -> Option<CommandLine> {
        let config = self.configs.get(monitor)?;
        let starter = || {
            self.machine
                .starter(app)
                .and_then(|s| self.configs.get(s))
                .and_then(|c| c.start.as_ref())
        };
        let command = match op {
            Op::Start => config.start.as_ref(),
            Op::Cleanup => config.cleanup.as_ref(),
            Op::Restart => config
                .restart
                .as_ref()
                .or(config.start.as_ref())
                .or_else(starter),
        };
        command.map(|c| c.get_ref().clone())
    }

    fn name(&self, monitor: MonitorId) -> &str {
        self.configs.get(monitor).map_or("?", MonitorConfig::name)
    }

    async fn outbound(&self, msg: GuestMsg) {
        self.to_daemon(Input::Event(Event::Outbound(msg))).await;
    }

    async fn to_daemon(&self, input: Input) {
        if self.daemon.send(input).await.is_err() {
            error!("the daemon is gone; monitors cannot report");
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // Checks and commands under way die with the monitors (their process groups with them).
        self.stop_all();
    }
}

/// Looks for the processes; while they run, watches them and looks again when one ends.
async fn process_check(
    monitor: MonitorId,
    id: machine::CheckId,
    target: super::config::ProcessTarget,
    results: mpsc::UnboundedSender<machine::Event>,
) {
    let send = |verdict| {
        let _ = results.send(machine::Event::Checked {
            monitor,
            id,
            verdict,
        });
    };
    let mut found = match look(&target).await {
        Ok(found) => found,
        Err(reason) => return send(Verdict::Fail(reason)),
    };
    send(Verdict::Pass);
    loop {
        let Some(watch) = process::Watch::open(&found) else {
            return;
        };
        let ended = watch.ended().await;
        match look(&target).await {
            Ok(now) => found = now,
            Err(reason) => {
                return send(Verdict::Fail(format!(
                    "process {} ({}) ended: {reason}",
                    ended.pid, ended.name
                )))
            }
        }
    }
}

async fn look(target: &super::config::ProcessTarget) -> Result<Vec<process::Found>, String> {
    let target = target.clone();
    tokio::task::spawn_blocking(move || process::check(&target))
        .await
        .unwrap_or_else(|e| Err(format!("the process check failed: {e}")))
}

fn log_event(event: &MonitorEvent) {
    let m = &event.monitor;
    match &event.kind {
        MonitorEventKind::StartupOk => {
            info!("monitor `{m}`: startup check found the application running: not starting it")
        }
        MonitorEventKind::StartupFailed { reason } => {
            info!("monitor `{m}`: startup check: not running ({reason})")
        }
        MonitorEventKind::Started { ok } => info!("monitor `{m}`: application started (ok: {ok})"),
        MonitorEventKind::Failed { reason } => warn!("monitor `{m}`: check failed: {reason}"),
        MonitorEventKind::Restarted { attempt, ok } => {
            info!("monitor `{m}`: application restarted, attempt {attempt} (ok: {ok})")
        }
        MonitorEventKind::ActionTaken { action } => {
            warn!("monitor `{m}`: restarts used up: failure action {action:?}")
        }
        MonitorEventKind::Recovered => info!("monitor `{m}`: application healthy again"),
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Start => "start",
        Op::Cleanup => "cleanup",
        Op::Restart => "restart",
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
