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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn spec(name: &str, app: &str, kind: MonitorKind, mode: MonitorMode) -> MonitorSpec {
        MonitorSpec {
            name: name.into(),
            application: app.into(),
            kind,
            mode,
            stabilization: 10 * S,
            interval: 5 * S,
            check_timeout: 3 * S,
            restart_count: 2,
            restart_interval: 100 * S,
            failure_action: FailureAction::NeedReset,
            starts: true,
            cleans_up: false,
            command_timeout: 20 * S,
        }
    }

    fn process(name: &str, mode: MonitorMode) -> MonitorSpec {
        spec(name, "app", MonitorKind::Process, mode)
    }

    /// The machine and a virtual clock.
    struct Rig {
        m: Monitors,
        t0: Instant,
        now: Instant,
    }

    impl Rig {
        fn new(specs: Vec<MonitorSpec>) -> Rig {
            let now = Instant::now();
            Rig {
                m: Monitors::new(specs),
                t0: now,
                now,
            }
        }

        fn at(&mut self, secs: f64) -> &mut Rig {
            self.now = self.t0 + Duration::from_secs_f64(secs);
            self
        }

        fn feed(&mut self, event: Event) -> Vec<Action> {
            self.m.handle(event, self.now)
        }

        fn begin(&mut self) -> Vec<Action> {
            self.feed(Event::Begin { adopt: false })
        }

        fn tick(&mut self) -> Vec<Action> {
            self.feed(Event::Tick)
        }

        fn answer(&mut self, check: &(MonitorId, CheckId), verdict: Verdict) -> Vec<Action> {
            self.feed(Event::Checked {
                monitor: check.0,
                id: check.1,
                verdict,
            })
        }

        fn ran(&mut self, run: RunId, ok: bool) -> Vec<Action> {
            self.feed(Event::Ran {
                run,
                ok,
                detail: String::new(),
            })
        }

        fn phase(&self, monitor: MonitorId) -> MonitorPhase {
            self.m.statuses(self.now)[monitor].phase
        }

        /// Brings the application up with its start command, to the first long-running check.
        fn started_and_checking(&mut self) -> (MonitorId, CheckId) {
            let out = self.begin();
            let startup = checks(&out);
            let out = if startup.is_empty() {
                out
            } else {
                self.answer(&startup[0], fail("not running"))
            };
            let run = runs(&out)[0].0;
            self.ran(run, true);
            let out = self.at(10.0).tick();
            checks(&out)[0]
        }
    }

    fn fail(reason: &str) -> Verdict {
        Verdict::Fail(reason.into())
    }

    fn checks(out: &[Action]) -> Vec<(MonitorId, CheckId)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Check { monitor, id, .. } => Some((*monitor, *id)),
                _ => None,
            })
            .collect()
    }

    fn runs(out: &[Action]) -> Vec<(RunId, Op)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Run { run, op, .. } => Some((*run, *op)),
                _ => None,
            })
            .collect()
    }

    fn events(out: &[Action]) -> Vec<MonitorEventKind> {
        out.iter()
            .filter_map(|a| match a {
                Action::Report(e) => Some(e.kind.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_application_found_running_at_startup_is_not_started_again() {
        let mut rig = Rig::new(vec![process("p", MonitorMode::Both)]);

        let out = rig.begin();
        let startup = checks(&out);
        let out = rig.at(0.2).answer(&startup[0], Verdict::Pass);

        assert!(runs(&out).is_empty(), "{out:?}");
        assert_eq!(events(&out), vec![MonitorEventKind::StartupOk]);
        assert_eq!(rig.phase(0), MonitorPhase::Stabilizing);
        // Long-running checks begin one stabilization interval after the agent's start.
        assert_eq!(rig.m.next_deadline(), Some(rig.t0 + 10 * S));
        assert!(checks(&rig.at(9.9).tick()).is_empty());
        assert_eq!(checks(&rig.at(10.0).tick()).len(), 1);
    }

    #[test]
    fn the_startup_check_is_bounded_by_the_stabilization_interval() {
        let mut rig = Rig::new(vec![process("p", MonitorMode::Startup)]);

        let out = rig.begin();

        assert!(matches!(
            out[0],
            Action::Check {
                purpose: Purpose::Startup,
                timeout,
                ..
            } if timeout == 10 * S
        ));
    }

    #[test]
    fn a_failed_startup_check_runs_the_start_command_once() {
        let mut rig = Rig::new(vec![process("p", MonitorMode::Startup)]);
        let startup = checks(&rig.begin());

        let out = rig.answer(&startup[0], fail("0 of 1 instances of `p` running"));
        let run = runs(&out);
        let done = rig.at(1.0).ran(run[0].0, true);

        assert_eq!(run.len(), 1);
        assert_eq!(run[0].1, Op::Start);
        assert_eq!(events(&done), vec![MonitorEventKind::Started { ok: true }]);
        assert_eq!(rig.phase(0), MonitorPhase::Idle, "startup-only rests");
        assert_eq!(rig.m.next_deadline(), None);
    }

    #[test]
    fn a_startup_check_that_never_answers_counts_as_not_running_at_the_deadline() {
        let mut rig = Rig::new(vec![process("p", MonitorMode::Both)]);
        rig.begin();

        let out = rig.at(15.0).tick();

        assert_eq!(runs(&out).len(), 1, "{out:?}");
        assert!(
            matches!(&events(&out)[0], MonitorEventKind::StartupFailed { reason } if reason.as_str().contains("stabilization"))
        );
    }

    #[test]
    fn one_startup_monitor_finding_the_application_running_is_enough_not_to_start_it() {
        let mut rig = Rig::new(vec![
            process("proc", MonitorMode::Startup),
            spec("ping", "app", MonitorKind::Custom, MonitorMode::Both),
        ]);
        let startup = checks(&rig.begin());
        assert_eq!(startup.len(), 2);

        let first = rig.answer(&startup[1], fail("no answer"));
        let second = rig.answer(&startup[0], Verdict::Pass);

        assert!(runs(&first).is_empty() && runs(&second).is_empty());
    }

    #[test]
    fn a_long_running_monitor_without_startup_monitors_starts_the_application_at_once() {
        let mut rig = Rig::new(vec![process("p", MonitorMode::LongRunning)]);

        let out = rig.begin();

        assert_eq!(runs(&out).len(), 1);
        assert!(checks(&out).is_empty(), "no startup check: {out:?}");
    }

    #[test]
    fn long_running_checks_follow_the_monitor_interval() {
        let mut rig = Rig::new(vec![process("p", MonitorMode::LongRunning)]);
        let first = rig.started_and_checking();

        rig.at(10.5).answer(&first, Verdict::Pass);

        assert_eq!(rig.phase(0), MonitorPhase::Healthy);
        assert_eq!(
            rig.m.next_deadline(),
            Some(rig.t0 + Duration::from_secs_f64(15.5))
        );
        assert_eq!(checks(&rig.at(15.5).tick()).len(), 1);
    }

    #[test]
    fn a_process_end_reported_between_checks_restarts_at_once() {
        let mut rig = Rig::new(vec![process("p", MonitorMode::LongRunning)]);
        let check = rig.started_and_checking();
        rig.at(10.1).answer(&check, Verdict::Pass);

        // The watch reports with the passed check's id, long before the next interval.
        let out = rig.at(11.0).answer(&check, fail("process 42 (p) ended"));

        assert_eq!(runs(&out), vec![(runs(&out)[0].0, Op::Restart)]);
        assert!(matches!(&events(&out)[0], MonitorEventKind::Failed { .. }));
    }

    #[test]
    fn cleanup_runs_before_the_restart() {
        let mut spec = process("p", MonitorMode::LongRunning);
        spec.cleans_up = true;
        let mut rig = Rig::new(vec![spec]);
        let check = rig.started_and_checking();

        let out = rig.answer(&check, fail("gone"));
        let cleanup = runs(&out);
        let out = rig.ran(cleanup[0].0, false);

        assert_eq!(cleanup[0].1, Op::Cleanup);
        assert_eq!(
            runs(&out)[0].1,
            Op::Restart,
            "a failed cleanup still restarts"
        );
    }

    #[test]
    fn results_of_checks_from_before_a_restart_are_dropped() {
        let mut rig = Rig::new(vec![process("p", MonitorMode::LongRunning)]);
        let check = rig.started_and_checking();
        let out = rig.answer(&check, fail("gone"));
        let restart = runs(&out)[0].0;
        rig.ran(restart, true);

        let late = rig.answer(&check, fail("gone again, but this is old news"));

        assert!(late.is_empty(), "{late:?}");
        assert_eq!(rig.phase(0), MonitorPhase::Stabilizing);
    }

    #[test]
    fn after_the_restart_count_the_failure_action_is_taken_once() {
        let mut rig = Rig::new(vec![process("p", MonitorMode::LongRunning)]);
        let mut check = rig.started_and_checking();
        let mut t = 10.0;
        for attempt in 1..=2 {
            let out = rig.at(t).answer(&check, fail("gone"));
            let run = runs(&out)[0].0;
            let done = rig.ran(run, true);
            assert_eq!(
                events(&done),
                vec![MonitorEventKind::Restarted { attempt, ok: true }]
            );
            t += 10.0;
            check = checks(&rig.at(t).tick())[0];
        }

        let out = rig.answer(&check, fail("gone"));

        assert!(runs(&out).is_empty());
        assert_eq!(
            events(&out)[1],
            MonitorEventKind::ActionTaken {
                action: FailureAction::NeedReset
            }
        );
        assert!(out.contains(&Action::NeedReset { monitor: 0 }));
        assert_eq!(rig.phase(0), MonitorPhase::GaveUp);
        // Still failing: no second action.
        let next = checks(&rig.at(t + 5.0).tick())[0];
        let again = rig.answer(&next, fail("gone"));
        assert!(events(&again).is_empty() && !again.contains(&Action::NeedReset { monitor: 0 }));
    }

    #[test]
    fn restarts_older_than_the_restart_interval_no_longer_count() {
        let mut s = process("p", MonitorMode::LongRunning);
        s.restart_count = 1;
        s.restart_interval = 30 * S;
        let mut rig = Rig::new(vec![s]);
        let check = rig.started_and_checking();
        let out = rig.at(10.0).answer(&check, fail("gone"));
        rig.ran(runs(&out)[0].0, true);
        assert_eq!(rig.m.statuses(rig.now)[0].restarts, 1);

        let check = checks(&rig.at(41.0).tick())[0];
        let out = rig.answer(&check, fail("gone"));

        assert_eq!(
            runs(&out).len(),
            1,
            "the first restart left the window at 40 s"
        );
        assert_eq!(rig.m.statuses(rig.now)[0].restarts, 1);
    }

    #[test]
    fn stop_heartbeats_withholds_them_until_the_check_passes_again() {
        let mut s = process("p", MonitorMode::LongRunning);
        s.restart_count = 0;
        s.failure_action = FailureAction::StopHeartbeats;
        let mut rig = Rig::new(vec![s]);
        let check = rig.started_and_checking();

        let gave_up = rig.answer(&check, fail("gone"));
        let next = checks(&rig.at(15.0).tick())[0];
        let passed = rig.answer(&next, Verdict::Pass);

        assert!(gave_up.contains(&Action::Heartbeats {
            withheld_by: Some("p".into())
        }));
        assert!(passed.contains(&Action::Heartbeats { withheld_by: None }));
        assert_eq!(events(&passed), vec![MonitorEventKind::Recovered]);
        assert_eq!(rig.phase(0), MonitorPhase::Healthy);
    }

    #[test]
    fn a_check_that_does_not_answer_fails_after_its_bound_and_the_grace() {
        let mut s = spec("c", "app", MonitorKind::Custom, MonitorMode::LongRunning);
        s.restart_count = 0;
        s.failure_action = FailureAction::Notify;
        let mut rig = Rig::new(vec![s]);
        rig.started_and_checking();

        assert!(events(&rig.at(17.9).tick()).is_empty());
        let out = rig.at(18.0).tick();

        assert!(
            matches!(&events(&out)[0], MonitorEventKind::Failed { reason } if reason.as_str().contains("did not answer"))
        );
        assert_eq!(rig.phase(0), MonitorPhase::GaveUp);
    }

    #[test]
    fn while_one_monitor_restarts_the_application_the_others_wait() {
        let mut rig = Rig::new(vec![
            process("proc", MonitorMode::LongRunning),
            spec("ping", "app", MonitorKind::Custom, MonitorMode::LongRunning),
        ]);
        let out = rig.begin();
        assert_eq!(runs(&out).len(), 1, "one start for the application");
        rig.ran(runs(&out)[0].0, true);
        let both = checks(&rig.at(10.0).tick());
        assert_eq!(both.len(), 2);

        let out = rig.answer(&both[0], fail("gone"));
        let late = rig.answer(&both[1], fail("db does not answer"));
        let after = rig.at(30.0).tick();

        assert_eq!(runs(&out).len(), 1);
        assert!(
            late.is_empty(),
            "the other monitor's old check is dropped: {late:?}"
        );
        assert!(
            checks(&after).is_empty(),
            "nobody checks during the restart: {after:?}"
        );
        assert_eq!(rig.phase(1), MonitorPhase::Stabilizing);
    }

    #[test]
    fn adopting_runs_no_startup_check_and_no_start() {
        let mut rig = Rig::new(vec![process("p", MonitorMode::Both)]);

        let out = rig.feed(Event::Begin { adopt: true });

        assert!(out.is_empty(), "{out:?}");
        assert_eq!(checks(&rig.at(10.0).tick()).len(), 1);
    }

    #[test]
    fn statuses_name_monitor_application_and_counts() {
        let mut rig = Rig::new(vec![spec(
            "db-proc",
            "db",
            MonitorKind::Process,
            MonitorMode::Both,
        )]);
        rig.begin();

        let s = &rig.m.statuses(rig.now)[0];

        assert_eq!((s.name.as_str(), s.application.as_str()), ("db-proc", "db"));
        assert_eq!((s.restarts, s.restart_count), (0, 2));
        assert_eq!(s.phase, MonitorPhase::Stabilizing);
    }

    // ---- properties ------------------------------------------------------------------------

    #[derive(Debug, Clone)]
    enum Step {
        /// Time passes (ms) and the clock ticks.
        Wait(u64),
        /// The oldest check still open answers (or the latest, with `newest`).
        Answer { newest: bool, pass: bool },
        /// A process monitor's watch reports its processes' end, for the id of a past check.
        Watch { which: usize },
        /// The oldest command finishes.
        Ran { ok: bool },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..20_000).prop_map(Step::Wait),
            (any::<bool>(), any::<bool>()).prop_map(|(newest, pass)| Step::Answer { newest, pass }),
            (0usize..8).prop_map(|which| Step::Watch { which }),
            any::<bool>().prop_map(|ok| Step::Ran { ok }),
        ]
    }

    fn specs() -> impl Strategy<Value = Vec<MonitorSpec>> {
        let one = (
            0usize..2,
            prop_oneof![
                Just(MonitorMode::Startup),
                Just(MonitorMode::LongRunning),
                Just(MonitorMode::Both)
            ],
            any::<bool>(),
            (0u32..4, 1u64..60, 0u64..20, 1u64..10),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(app, mode, custom, (count, window, stab, interval), starts, cleans)| {
                    let kind = if custom {
                        MonitorKind::Custom
                    } else {
                        MonitorKind::Process
                    };
                    MonitorSpec {
                        name: String::new(),
                        application: format!("app{app}"),
                        kind,
                        mode,
                        stabilization: Duration::from_secs(stab),
                        interval: Duration::from_secs(interval),
                        check_timeout: 3 * S,
                        restart_count: count,
                        restart_interval: Duration::from_secs(window),
                        failure_action: FailureAction::NeedReset,
                        starts,
                        cleans_up: cleans,
                        command_timeout: 5 * S,
                    }
                },
            );
        proptest::collection::vec(one, 1..4).prop_map(|mut v| {
            for (i, s) in v.iter_mut().enumerate() {
                s.name = format!("m{i}");
            }
            v
        })
    }

    /// What a run of steps produced: every action with its time, and the checks asked for while
    /// a command of the same application ran.
    struct Drive {
        m: Monitors,
        log: Vec<(Instant, Action)>,
        checks_during_commands: Vec<String>,
    }

    /// Runs `steps` against a machine, answering its checks and commands as they say.
    fn drive(specs: Vec<MonitorSpec>, steps: &[Step]) -> Drive {
        let mut now = Instant::now();
        let mut d = Drive {
            m: Monitors::new(specs),
            log: Vec::new(),
            checks_during_commands: Vec::new(),
        };
        let mut open_checks: Vec<(MonitorId, CheckId)> = Vec::new();
        let mut past_checks: Vec<(MonitorId, CheckId)> = Vec::new();
        // Commands under way: (run, app, until the machine stops waiting).
        let mut open_runs: Vec<(RunId, AppId, Instant)> = Vec::new();
        let mut event = Event::Begin { adopt: false };
        let mut steps = steps.iter();
        loop {
            if let Event::Ran { run, .. } = &event {
                open_runs.retain(|r| r.0 != *run);
            }
            open_runs.retain(|r| now < r.2);
            for action in d.m.handle(event, now) {
                match &action {
                    Action::Check { monitor, id, .. } => {
                        let app = d.m.mons[*monitor].app;
                        if open_runs.iter().any(|r| r.1 == app) {
                            d.checks_during_commands
                                .push(format!("{action:?} at {now:?}"));
                        }
                        open_checks.push((*monitor, *id));
                        past_checks.push((*monitor, *id));
                    }
                    Action::Run {
                        run, app, timeout, ..
                    } => {
                        open_runs.retain(|r| r.1 != *app);
                        open_runs.push((*run, *app, now + *timeout + ANSWER_GRACE));
                    }
                    _ => {}
                }
                d.log.push((now, action));
            }
            let Some(step) = steps.next() else {
                return d;
            };
            event = match step {
                Step::Wait(ms) => {
                    now += Duration::from_millis(*ms);
                    Event::Tick
                }
                Step::Answer { newest, pass } => {
                    if open_checks.is_empty() {
                        Event::Tick
                    } else {
                        let (monitor, id) = if *newest {
                            open_checks.pop().expect("one")
                        } else {
                            open_checks.remove(0)
                        };
                        let verdict = if *pass { Verdict::Pass } else { fail("no") };
                        Event::Checked {
                            monitor,
                            id,
                            verdict,
                        }
                    }
                }
                Step::Watch { which } => match past_checks.get(which % past_checks.len().max(1)) {
                    Some(&(monitor, id)) => Event::Checked {
                        monitor,
                        id,
                        verdict: fail("process ended"),
                    },
                    None => Event::Tick,
                },
                Step::Ran { ok } => match open_runs.first() {
                    Some(&(run, _, _)) => Event::Ran {
                        run,
                        ok: *ok,
                        detail: String::new(),
                    },
                    None => Event::Tick,
                },
            };
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Never two instances started at startup: each application's start command runs at
        /// most once, and never after one of its startup monitors found it running.
        #[test]
        fn an_application_is_started_at_most_once_and_never_when_found_running(
            specs in specs(),
            steps in proptest::collection::vec(step(), 0..80),
        ) {
            let Drive { m, log, .. } = drive(specs.clone(), &steps);
            for (app, name) in m.applications().enumerate() {
                let starts = log.iter().filter(|(_, a)| matches!(a, Action::Run { app: x, op: Op::Start, .. } if *x == app)).count();
                prop_assert!(starts <= 1, "{name} started {starts} times: {log:?}");
                let found_running = log.iter().position(|(_, a)| matches!(a, Action::Report(e)
                    if e.kind == MonitorEventKind::StartupOk
                    && specs.iter().any(|s| s.name == e.monitor.as_str() && s.application == name)));
                if let Some(at) = found_running {
                    prop_assert!(!log.iter().any(|(_, a)| matches!(a, Action::Run { app: x, op: Op::Start, .. } if *x == app)),
                        "{name} found running at action {at} and started anyway: {log:?}");
                }
            }
        }

        /// No window of a restart interval ever holds more restarts by a monitor than its
        /// restart count, whatever the checks say and whenever.
        #[test]
        fn never_more_restarts_than_the_count_within_the_restart_interval(
            specs in specs(),
            steps in proptest::collection::vec(step(), 0..120),
        ) {
            let Drive { log, .. } = drive(specs.clone(), &steps);
            for (id, spec) in specs.iter().enumerate() {
                let times: Vec<Instant> = log.iter().filter_map(|(t, a)| match a {
                    Action::Run { monitor, op: Op::Restart, .. } if *monitor == id => Some(*t),
                    _ => None,
                }).collect();
                for (i, t) in times.iter().enumerate() {
                    let within = times[..=i].iter().filter(|r| t.saturating_duration_since(**r) < spec.restart_interval).count();
                    prop_assert!(within <= spec.restart_count as usize,
                        "{}: {within} restarts within {:?} (count {}): {times:?}", spec.name, spec.restart_interval, spec.restart_count);
                }
            }
        }

        /// While an application's command runs, none of its monitors checks; the heartbeat
        /// rule is only ever sent when it changes.
        #[test]
        fn no_check_while_a_command_of_the_application_runs(
            specs in specs(),
            steps in proptest::collection::vec(step(), 0..80),
        ) {
            let Drive { log, checks_during_commands, .. } = drive(specs, &steps);
            prop_assert!(checks_during_commands.is_empty(), "{checks_during_commands:?}");
            let mut withheld = None;
            for (_, a) in &log {
                if let Action::Heartbeats { withheld_by } = a {
                    prop_assert_ne!(&withheld, withheld_by, "a repeated heartbeat action");
                    withheld = withheld_by.clone();
                }
            }
        }
    }
}
