//! The application monitors' logic as a pure state machine: `(state, event, now) -> actions`.
//!
//! [`Monitors`] holds every configured monitor, grouped by the application it watches, and
//! decides when to check, when to run an application's start, cleanup and restart commands,
//! and what to tell the host. It runs nothing and reads no clock: the shell in
//! [`super::shell`] carries out its [`Action`]s and feeds back their results as [`Event`]s.
//!
//! # The rules (PowerHA's application monitors, seeds/002)
//!
//! - **Startup.** When the agent starts ([`Event::Begin`]), every startup-mode monitor
//!   (`startup` or `both`) of an application checks once whether the application already runs,
//!   bounded by its stabilization interval (a check that has not answered by then is "not
//!   running"). If one of them finds it running, the start command is not run. Only when all
//!   of them found it not running does the start command run, once. An application without
//!   startup monitors is started at once (if it has a start command).
//! - **Long-running.** A `long-running` or `both` monitor checks at its monitor interval,
//!   beginning one stabilization interval after the application was started (or found running
//!   at startup, counted from the agent's start). A process monitor also reports its
//!   processes' end between checks, at once; such a report is a check result like any other.
//!   A check that does not answer within its bound (plus [`ANSWER_GRACE`]) failed.
//! - **Failure.** A failed check is a failure of the application. While the monitor's restarts
//!   within its restart interval (a sliding window) are fewer than its restart count, the
//!   cleanup command runs, then the restart command, and every monitor of the application waits
//!   one stabilization interval again; restarts are counted when the restart command is run,
//!   so no window of that length ever holds more than the restart count. Once they are used
//!   up the monitor gives up and takes its failure action, once: notify (the event alone),
//!   stop heartbeats ([`Action::Heartbeats`]) or needReset ([`Action::NeedReset`]). It keeps
//!   checking; a check that passes again is `Recovered`, and gives the heartbeats back.
//! - **One thing at a time per application.** While a start, cleanup or restart command runs,
//!   the application's monitors do not check, and results of checks from before are dropped
//!   (every check has an id; only the monitor's current one counts).
//! - **Adopting** ([`Event::Begin`] with `adopt`, after a configuration reload): no startup
//!   checks and no start command; the applications are taken as they are and long-running
//!   monitors begin after their stabilization interval.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use appmon_wire::{
    FailureAction, MonitorEvent, MonitorEventKind, MonitorKind, MonitorMode, MonitorPhase,
    MonitorStatus, Text,
};
use tracing::debug;

use super::config::MonitorConfig;

/// A monitor: its index in the configuration.
pub type MonitorId = usize;
/// An application: its index in [`Monitors::applications`].
pub type AppId = usize;
/// Names one check; only the monitor's latest counts.
pub type CheckId = u64;
/// Names one command run.
pub type RunId = u64;

/// How long after a check's or command's own bound the machine stops waiting for its answer
/// (the executor kills at the bound and answers; this only covers an executor that does not).
pub const ANSWER_GRACE: Duration = Duration::from_secs(5);
/// The bound of one look at the process table or a pid file.
pub const PROCESS_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the machine needs to know of one monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSpec {
    pub name: String,
    pub application: String,
    pub kind: MonitorKind,
    pub mode: MonitorMode,
    pub stabilization: Duration,
    pub interval: Duration,
    /// The bound of one long-running check.
    pub check_timeout: Duration,
    pub restart_count: u32,
    pub restart_interval: Duration,
    pub failure_action: FailureAction,
    /// It names the application's start command.
    pub starts: bool,
    /// It names a cleanup command, run before each of its restarts.
    pub cleans_up: bool,
    /// The bound of its start, cleanup and restart commands.
    pub command_timeout: Duration,
}

impl From<&MonitorConfig> for MonitorSpec {
    fn from(c: &MonitorConfig) -> Self {
        MonitorSpec {
            name: c.name().to_owned(),
            application: c.application().to_owned(),
            kind: c.kind,
            mode: c.mode,
            stabilization: c.stabilization_interval,
            interval: c.monitor_interval,
            check_timeout: match c.kind {
                MonitorKind::Process => PROCESS_CHECK_TIMEOUT,
                MonitorKind::Custom => c.check_timeout(),
            },
            restart_count: c.restart_count,
            restart_interval: c.restart_interval(),
            failure_action: c.failure_action,
            starts: c.start.is_some(),
            cleans_up: c.cleanup.is_some(),
            command_timeout: c.command_timeout,
        }
    }
}

impl MonitorSpec {
    fn at_startup(&self) -> bool {
        matches!(self.mode, MonitorMode::Startup | MonitorMode::Both)
    }

    fn long_running(&self) -> bool {
        matches!(self.mode, MonitorMode::LongRunning | MonitorMode::Both)
    }
}

/// A check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
}

/// Why a check runs: a startup check is bounded by the stabilization interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Startup,
    LongRunning,
}

/// An application command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Cleanup,
    Restart,
}

/// What happens to the monitors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The agent started (`adopt: false`) or took a new configuration (`adopt: true`).
    Begin { adopt: bool },
    /// A check's answer, or a process monitor's report that its processes ended.
    Checked {
        monitor: MonitorId,
        id: CheckId,
        verdict: Verdict,
    },
    /// A command finished: `ok` is exit code 0 within its bound; `detail` says how it ended.
    Ran {
        run: RunId,
        ok: bool,
        detail: String,
    },
    /// Time passed.
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Check `monitor` within `timeout`; answer with [`Event::Checked`] and this `id`. A
    /// process monitor whose check passed reports with the same id when its processes end.
    Check {
        monitor: MonitorId,
        id: CheckId,
        purpose: Purpose,
        timeout: Duration,
    },
    /// Run `op` of the application, the command `monitor` names for it, within `timeout`;
    /// answer with [`Event::Ran`].
    Run {
        run: RunId,
        app: AppId,
        op: Op,
        monitor: MonitorId,
        timeout: Duration,
    },
    /// Tell the host (and the log).
    Report(MonitorEvent),
    /// A monitor gave up with failure action needReset: post it as the application would.
    NeedReset { monitor: MonitorId },
    /// Which monitors (names, comma-separated) withhold the application's heartbeats now;
    /// `None`: none do any more. Emitted on every change.
    Heartbeats { withheld_by: Option<String> },
}

#[derive(Debug, Clone)]
struct InFlight {
    id: CheckId,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct Mon {
    spec: MonitorSpec,
    app: AppId,
    phase: MonitorPhase,
    /// Results with this id count: the check in flight, or the passed check a process
    /// monitor keeps watching.
    accept: CheckId,
    check: Option<InFlight>,
    next_check: Option<Instant>,
    /// When its restart commands were run, within the restart interval.
    restarts: VecDeque<Instant>,
    last_failure: Option<String>,
    gave_up: bool,
    /// A failure since the last passing check: the next pass is `Recovered`.
    failed: bool,
    withholding: bool,
}

#[derive(Debug, Clone)]
enum AppPhase {
    /// Before [`Event::Begin`].
    Waiting,
    /// Startup checks under way.
    Startup {
        began: Instant,
        pending: Vec<MonitorId>,
    },
    /// A command runs.
    Busy {
        run: RunId,
        op: Op,
        by: MonitorId,
        deadline: Instant,
        /// The restart's attempt number (cleanup and restart).
        attempt: u32,
    },
    /// Monitors check on their own.
    Up,
}

#[derive(Debug, Clone)]
struct App {
    name: String,
    monitors: Vec<MonitorId>,
    /// The monitor whose start command starts it.
    starter: Option<MonitorId>,
    phase: AppPhase,
}

/// The monitors' logic. See the module documentation.
#[derive(Debug, Clone)]
pub struct Monitors {
    mons: Vec<Mon>,
    apps: Vec<App>,
    next_id: u64,
    withheld: Option<String>,
}

impl Monitors {
    pub fn new(specs: Vec<MonitorSpec>) -> Monitors {
        let mut apps: Vec<App> = Vec::new();
        let mut mons = Vec::with_capacity(specs.len());
        for (id, spec) in specs.into_iter().enumerate() {
            let app = match apps.iter().position(|a| a.name == spec.application) {
                Some(a) => a,
                None => {
                    apps.push(App {
                        name: spec.application.clone(),
                        monitors: Vec::new(),
                        starter: None,
                        phase: AppPhase::Waiting,
                    });
                    apps.len() - 1
                }
            };
            apps[app].monitors.push(id);
            if spec.starts && apps[app].starter.is_none() {
                apps[app].starter = Some(id);
            }
            mons.push(Mon {
                spec,
                app,
                phase: MonitorPhase::Stabilizing,
                accept: 0,
                check: None,
                next_check: None,
                restarts: VecDeque::new(),
                last_failure: None,
                gave_up: false,
                failed: false,
                withholding: false,
            });
        }
        Monitors {
            mons,
            apps,
            next_id: 1,
            withheld: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.mons.is_empty()
    }

    /// The applications' names, by [`AppId`].
    pub fn applications(&self) -> impl Iterator<Item = &str> {
        self.apps.iter().map(|a| a.name.as_str())
    }

    /// The application's starter: the monitor whose start command it runs.
    pub fn starter(&self, app: AppId) -> Option<MonitorId> {
        self.apps.get(app).and_then(|a| a.starter)
    }

    pub fn spec(&self, monitor: MonitorId) -> Option<&MonitorSpec> {
        self.mons.get(monitor).map(|m| &m.spec)
    }

    /// Every monitor's state, as the host and `appmon monitors` see it.
    pub fn statuses(&self, now: Instant) -> Vec<MonitorStatus> {
        self.mons
            .iter()
            .map(|m| MonitorStatus {
                name: Text::truncating(m.spec.name.clone()),
                application: Text::truncating(m.spec.application.clone()),
                kind: m.spec.kind,
                mode: m.spec.mode,
                phase: if m.gave_up {
                    MonitorPhase::GaveUp
                } else {
                    m.phase
                },
                restarts: u32::try_from(
                    m.restarts
                        .iter()
                        .filter(|t| in_window(**t, now, m.spec.restart_interval))
                        .count(),
                )
                .unwrap_or(u32::MAX),
                restart_count: m.spec.restart_count,
                failure_action: m.spec.failure_action,
                last_failure: m.last_failure.clone().map(Text::truncating),
            })
            .collect()
    }

    /// The earliest time at which [`Event::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let apps = self.apps.iter().filter_map(|a| match a.phase {
            AppPhase::Busy { deadline, .. } => Some(deadline),
            _ => None,
        });
        let mons = self.mons.iter().flat_map(|m| {
            let up = matches!(self.apps[m.app].phase, AppPhase::Up);
            let check = m.check.as_ref().map(|c| c.deadline);
            check.into_iter().chain(m.next_check.filter(|_| up))
        });
        apps.chain(mons).min()
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Begin { adopt } => self.begin(adopt, now, &mut out),
            Event::Checked {
                monitor,
                id,
                verdict,
            } => self.on_checked(monitor, id, verdict, now, &mut out),
            Event::Ran { run, ok, detail } => self.on_ran(run, ok, &detail, now, &mut out),
            Event::Tick => self.on_tick(now, &mut out),
        }
        self.update_heartbeats(&mut out);
        out
    }

    // ---- startup -------------------------------------------------------------------------

    fn begin(&mut self, adopt: bool, now: Instant, out: &mut Vec<Action>) {
        for app in 0..self.apps.len() {
            if adopt {
                self.app_up(app, now, now);
                continue;
            }
            let pending: Vec<MonitorId> = self.apps[app]
                .monitors
                .iter()
                .copied()
                .filter(|&m| self.mons[m].spec.at_startup())
                .collect();
            if pending.is_empty() {
                self.start_app(app, now, out);
                continue;
            }
            for &m in &self.apps[app].monitors.clone() {
                self.quiet(m, MonitorPhase::Stabilizing);
            }
            for &m in &pending {
                let timeout = self.mons[m].spec.stabilization;
                self.issue_check(m, Purpose::Startup, timeout, now, out);
            }
            self.apps[app].phase = AppPhase::Startup {
                began: now,
                pending,
            };
        }
    }

    fn startup_verdict(
        &mut self,
        app: AppId,
        m: MonitorId,
        verdict: Verdict,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let AppPhase::Startup { began, pending } = &mut self.apps[app].phase else {
            return;
        };
        let began = *began;
        pending.retain(|&p| p != m);
        let all_answered = pending.is_empty();
        match verdict {
            Verdict::Pass => {
                out.push(report(&self.mons[m].spec, MonitorEventKind::StartupOk));
                // Running already: not started a second time. Long-running checks begin one
                // stabilization interval after the agent's start.
                self.app_up(app, began, now);
            }
            Verdict::Fail(reason) => {
                self.mons[m].last_failure = Some(reason.clone());
                out.push(report(
                    &self.mons[m].spec,
                    MonitorEventKind::StartupFailed {
                        reason: Text::truncating(reason),
                    },
                ));
                if all_answered {
                    self.start_app(app, now, out);
                }
            }
        }
    }

    /// Runs the application's start command, or takes it as started when it has none.
    fn start_app(&mut self, app: AppId, now: Instant, out: &mut Vec<Action>) {
        match self.apps[app].starter {
            Some(starter) => self.run(app, Op::Start, starter, 0, now, out),
            None => self.app_up(app, now, now),
        }
    }

    /// The application is up as of `since`: long-running monitors check one stabilization
    /// interval after it (never before `now`), startup-only monitors rest.
    fn app_up(&mut self, app: AppId, since: Instant, now: Instant) {
        self.apps[app].phase = AppPhase::Up;
        for m in self.apps[app].monitors.clone() {
            let mon = &mut self.mons[m];
            mon.accept = 0;
            mon.check = None;
            if mon.spec.long_running() {
                mon.phase = MonitorPhase::Stabilizing;
                mon.next_check = Some((since + mon.spec.stabilization).max(now));
            } else {
                mon.phase = MonitorPhase::Idle;
                mon.next_check = None;
            }
        }
    }

    // ---- checks --------------------------------------------------------------------------

    fn issue_check(
        &mut self,
        m: MonitorId,
        purpose: Purpose,
        timeout: Duration,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let id = self.fresh_id();
        let mon = &mut self.mons[m];
        mon.accept = id;
        mon.check = Some(InFlight {
            id,
            deadline: now + timeout + ANSWER_GRACE,
        });
        mon.next_check = None;
        out.push(Action::Check {
            monitor: m,
            id,
            purpose,
            timeout,
        });
    }

    /// Stops a monitor's checks: nothing in flight counts any more.
    fn quiet(&mut self, m: MonitorId, phase: MonitorPhase) {
        let mon = &mut self.mons[m];
        mon.accept = 0;
        mon.check = None;
        mon.next_check = None;
        mon.phase = phase;
    }

    fn on_checked(
        &mut self,
        m: MonitorId,
        id: CheckId,
        verdict: Verdict,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(mon) = self.mons.get_mut(m) else {
            return;
        };
        if id == 0 || id != mon.accept {
            debug!(monitor = %mon.spec.name, id, "a result of an earlier check; dropped");
            return;
        }
        mon.check = None;
        let app = mon.app;
        match self.apps[app].phase {
            AppPhase::Startup { .. } => self.startup_verdict(app, m, verdict, now, out),
            AppPhase::Up => self.long_running_verdict(m, verdict, now, out),
            AppPhase::Waiting | AppPhase::Busy { .. } => {}
        }
    }

    fn long_running_verdict(
        &mut self,
        m: MonitorId,
        verdict: Verdict,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let mon = &mut self.mons[m];
        mon.next_check = Some(now + mon.spec.interval);
        let reason = match verdict {
            Verdict::Pass => {
                if mon.failed || mon.gave_up {
                    out.push(report(&mon.spec, MonitorEventKind::Recovered));
                }
                mon.failed = false;
                mon.gave_up = false;
                mon.withholding = false;
                mon.phase = MonitorPhase::Healthy;
                return;
            }
            Verdict::Fail(reason) => reason,
        };
        mon.last_failure = Some(reason.clone());
        if mon.gave_up {
            // Given up already: the action was taken once; it waits for a pass.
            return;
        }
        mon.failed = true;
        mon.phase = MonitorPhase::Failed;
        out.push(report(
            &mon.spec,
            MonitorEventKind::Failed {
                reason: Text::truncating(reason),
            },
        ));
        let window = mon.spec.restart_interval;
        mon.restarts.retain(|t| in_window(*t, now, window));
        let used = u32::try_from(mon.restarts.len()).unwrap_or(u32::MAX);
        if used < mon.spec.restart_count {
            let app = mon.app;
            let attempt = used + 1;
            for other in self.apps[app].monitors.clone() {
                let phase = if other == m {
                    MonitorPhase::Failed
                } else {
                    MonitorPhase::Stabilizing
                };
                self.quiet(other, phase);
            }
            let op = if self.mons[m].spec.cleans_up {
                Op::Cleanup
            } else {
                Op::Restart
            };
            self.run(app, op, m, attempt, now, out);
        } else {
            mon.gave_up = true;
            let action = mon.spec.failure_action;
            out.push(report(&mon.spec, MonitorEventKind::ActionTaken { action }));
            match action {
                FailureAction::Notify => {}
                FailureAction::StopHeartbeats => mon.withholding = true,
                FailureAction::NeedReset => out.push(Action::NeedReset { monitor: m }),
            }
        }
    }

    // ---- commands ------------------------------------------------------------------------

    fn run(
        &mut self,
        app: AppId,
        op: Op,
        by: MonitorId,
        attempt: u32,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let run = self.fresh_id();
        let timeout = self.mons[by].spec.command_timeout;
        if op == Op::Restart {
            // Counted when it runs: no restart interval ever holds more than the count.
            self.mons[by].restarts.push_back(now);
        }
        if op == Op::Start {
            for m in self.apps[app].monitors.clone() {
                self.quiet(m, MonitorPhase::Stabilizing);
            }
        }
        self.apps[app].phase = AppPhase::Busy {
            run,
            op,
            by,
            deadline: now + timeout + ANSWER_GRACE,
            attempt,
        };
        out.push(Action::Run {
            run,
            app,
            op,
            monitor: by,
            timeout,
        });
    }

    fn on_ran(&mut self, run: RunId, ok: bool, detail: &str, now: Instant, out: &mut Vec<Action>) {
        let Some(app) = self
            .apps
            .iter()
            .position(|a| matches!(a.phase, AppPhase::Busy { run: r, .. } if r == run))
        else {
            debug!(run, "result of a command no one waits for; dropped");
            return;
        };
        let AppPhase::Busy {
            op, by, attempt, ..
        } = self.apps[app].phase
        else {
            return;
        };
        match op {
            Op::Start => {
                out.push(report(
                    &self.mons[by].spec,
                    MonitorEventKind::Started { ok },
                ));
                self.app_up(app, now, now);
            }
            Op::Cleanup => {
                if !ok {
                    debug!(monitor = %self.mons[by].spec.name, detail, "cleanup failed; restarting all the same");
                }
                self.run(app, Op::Restart, by, attempt, now, out);
            }
            Op::Restart => {
                out.push(report(
                    &self.mons[by].spec,
                    MonitorEventKind::Restarted { attempt, ok },
                ));
                self.app_up(app, now, now);
            }
        }
    }

    // ---- time ----------------------------------------------------------------------------

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        for app in 0..self.apps.len() {
            if let AppPhase::Busy { run, deadline, .. } = self.apps[app].phase {
                if now >= deadline {
                    self.on_ran(run, false, "no answer within its bound", now, out);
                }
            }
        }
        for m in 0..self.mons.len() {
            let app = self.mons[m].app;
            if let Some(check) = &self.mons[m].check {
                if now >= check.deadline {
                    let id = check.id;
                    let why = match self.apps[app].phase {
                        AppPhase::Startup { .. } => "no answer within the stabilization interval",
                        _ => "the check did not answer within its bound",
                    };
                    self.on_checked(m, id, Verdict::Fail(why.into()), now, out);
                }
            }
            let due = self.mons[m].next_check.is_some_and(|t| now >= t);
            if due && self.mons[m].check.is_none() && matches!(self.apps[app].phase, AppPhase::Up) {
                let timeout = self.mons[m].spec.check_timeout;
                self.issue_check(m, Purpose::LongRunning, timeout, now, out);
            }
        }
    }

    fn update_heartbeats(&mut self, out: &mut Vec<Action>) {
        let names: Vec<&str> = self
            .mons
            .iter()
            .filter(|m| m.withholding)
            .map(|m| m.spec.name.as_str())
            .collect();
        let now = (!names.is_empty()).then(|| names.join(", "));
        if now != self.withheld {
            self.withheld = now.clone();
            out.push(Action::Heartbeats { withheld_by: now });
        }
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// Whether a restart at `t` still counts at `now`: within the last `window`.
fn in_window(t: Instant, now: Instant, window: Duration) -> bool {
    now.saturating_duration_since(t) < window
}

fn report(spec: &MonitorSpec, kind: MonitorEventKind) -> Action {
    Action::Report(MonitorEvent {
        monitor: Text::truncating(spec.name.clone()),
        kind,
    })
}
