//! A managed application (Serviceguard's cmappmgr): a command the host has the guest launch,
//! polls, and restarts by a policy. A pure state machine, `(state, input, now) -> (state,
//! actions)`, one per application of a VM; the supervisor feeds it the guest's answers and
//! events and carries out its actions (`supervisor/guest.rs`).
//!
//! # Rules
//!
//! - **Launch** when a guest session is up and nothing of the application runs: at the start,
//!   after a restart delay, after a reset. Nothing is sent while no session is up; what was
//!   due is done when the next one comes.
//! - **Ids**: launch *n* of application `db` is process `db.<n>`. On every new session the
//!   guest's table is read: a running `db.<n>` is adopted (a host-agent restart loses nothing),
//!   `<n>` never goes back, and an ended one the machine was not told about is taken as the end
//!   it is.
//! - **Polls** every `poll_interval` while the process runs and a session is up; its end also
//!   arrives as an event. Either way the end is taken once, logged with its reason code (the
//!   exit code, or 128 + the signal), and the process released in the guest.
//! - **An end is a failure**, whatever its code: a managed application is a service that is
//!   meant to run. So is a launch that failed to start, and a process the guest no longer
//!   knows (the guest agent restarted, or the guest rebooted by itself): `lost`.
//! - **Restart** after `restart_delay` while fewer than `max_restarts` restarts were decided
//!   within the last `restart_window`. Then `on_failure`: `GiveUp` stops there (the VM is left
//!   alone), `Reset` asks for a reset of the VM ([`Action::RequestReset`], which goes through
//!   the VM's own reset budget and may be refused there). After the reset the guest comes back
//!   with a new boot id, and the application starts afresh with its restarts forgotten: the
//!   reset was the escalation, the new boot gets the whole budget again. No reset is ever
//!   requested unless `on_failure` is `Reset` and the restarts are spent.
//! - **Refusals**: a launch the guest refuses as not allowed or malformed is a configuration
//!   error that no restart and no reset can mend: the machine gives up at once and says why. A
//!   refusal for room or an internal error is retried after a poll interval, not counted.
//! - **Gave up** stays until an operator clears it ([`Input::Clear`]), which forgets the
//!   restarts and launches again.

use std::collections::VecDeque;
use std::time::Duration;

use appmon_libvirt_backend::spec::{ApplicationSpec, OnFailure};
use appmon_wire::{ErrorCode, LaunchSpec, ProcessState, ProcessStatus, Text, WireError};

/// Defaults for what an application's metadata leaves out.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(600);
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(1);

/// An application's effective settings: its metadata on top of the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPolicy {
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub cwd: Option<String>,
    pub poll_interval: Duration,
    pub max_restarts: u32,
    pub restart_window: Duration,
    pub restart_delay: Duration,
    pub on_failure: OnFailure,
}

impl AppPolicy {
    pub fn from_spec(spec: &ApplicationSpec) -> AppPolicy {
        AppPolicy {
            name: spec.name.clone(),
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            user: spec.user.clone(),
            cwd: spec.cwd.clone(),
            poll_interval: spec.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL),
            max_restarts: spec.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS),
            restart_window: spec.restart_window.unwrap_or(DEFAULT_RESTART_WINDOW),
            restart_delay: spec.restart_delay.unwrap_or(DEFAULT_RESTART_DELAY),
            on_failure: spec.on_failure.unwrap_or(OnFailure::GiveUp),
        }
    }
}

/// What happens to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A guest session is up and sent its State; `rebooted` when its boot id is not the last
    /// session's.
    SessionUp {
        processes: Vec<ProcessStatus>,
        rebooted: bool,
    },
    SessionDown,
    /// The guest's answer to [`Action::Launch`] of process `id`.
    Launched {
        id: String,
        answer: Result<ProcessStatus, WireError>,
    },
    /// The guest's answer to [`Action::Poll`].
    Polled {
        id: String,
        answer: Result<ProcessStatus, WireError>,
    },
    /// A `Process` event from the guest.
    Event(ProcessStatus),
    /// An operator cleared a given-up application.
    Clear,
    Tick,
}

/// What the supervisor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `LaunchProcess` to the guest.
    Launch(LaunchSpec),
    /// Send `PollProcess`.
    Poll { id: String },
    /// Send `ReleaseProcess`: the end has been read.
    Release { id: String },
    /// Reset the VM through its reset budget.
    RequestReset { reason: String },
    /// Log it and keep it in the VM's history.
    Note(Note),
}

/// How a process ended, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Exited(i32),
    Killed(i32),
    FailedToStart(String),
    /// The guest no longer knows it (its agent restarted, or it rebooted by itself).
    Lost,
}

impl End {
    /// The reason code cmappmgr exits with: the exit code, or 128 + the signal.
    pub fn reason_code(&self) -> Option<i32> {
        match self {
            End::Exited(code) => Some(*code),
            End::Killed(signal) => Some(128 + signal),
            End::FailedToStart(_) | End::Lost => None,
        }
    }
}

/// A typed entry for the log and the VM's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Started {
        id: String,
        pid: u32,
    },
    /// A running process of an earlier host agent, taken over.
    Adopted {
        id: String,
        pid: u32,
    },
    Ended {
        id: String,
        end: End,
    },
    /// A restart is decided: `attempt` of `max` within the window, after the delay.
    Restarting {
        attempt: u32,
        max: u32,
        after: Duration,
    },
    /// The restarts are spent: a VM reset is requested.
    Escalated,
    GaveUp {
        reason: String,
    },
    /// The guest refused a launch; `retrying` when it is tried again later.
    Refused {
        id: String,
        error: String,
        retrying: bool,
    },
    Cleared,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Launch as soon as a session is up.
    Due,
    /// A launch request is out.
    Launching {
        id: String,
    },
    Running {
        id: String,
        pid: u32,
        next_poll: Duration,
    },
    /// Launch at `until`.
    Waiting {
        until: Duration,
    },
    /// Asked for a VM reset; launch afresh on the guest's next boot.
    AwaitingReset,
    GaveUp,
}

/// One managed application. See the module documentation.
#[derive(Debug, Clone)]
pub struct AppMachine {
    policy: AppPolicy,
    phase: Phase,
    session: bool,
    /// When restarts were decided, within the window.
    restarts: VecDeque<Duration>,
    /// The last launch number used.
    launches: u64,
}

impl AppMachine {
    pub fn new(policy: AppPolicy) -> AppMachine {
        AppMachine {
            policy,
            phase: Phase::Due,
            session: false,
            restarts: VecDeque::new(),
            launches: 0,
        }
    }

    pub fn policy(&self) -> &AppPolicy {
        &self.policy
    }

    /// The process the machine watches, if one runs.
    pub fn running(&self) -> Option<(&str, u32)> {
        match &self.phase {
            Phase::Running { id, pid, .. } => Some((id, *pid)),
            _ => None,
        }
    }

    pub fn gave_up(&self) -> bool {
        self.phase == Phase::GaveUp
    }

    /// Restarts decided within the window ending at `now`.
    pub fn restarts_in_window(&self, now: Duration) -> usize {
        self.restarts
            .iter()
            .filter(|t| now.saturating_sub(**t) < self.policy.restart_window)
            .count()
    }

    /// Whether process `id` is one of this application's launches.
    pub fn owns(&self, id: &str) -> bool {
        launch_number(&self.policy.name, id).is_some()
    }

    /// When [`Input::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        match self.phase {
            Phase::Running { next_poll, .. } if self.session => Some(next_poll),
            Phase::Waiting { until } => Some(until),
            _ => None,
        }
    }

    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::SessionUp {
                processes,
                rebooted,
            } => {
                self.session = true;
                self.reconcile(&processes, rebooted, now, &mut out);
            }
            Input::SessionDown => self.session = false,
            Input::Launched { id, answer } => self.launched(id, answer, now, &mut out),
            Input::Polled { id, answer } => match answer {
                Ok(status) if status.id.as_str() == id => self.observed(&status, now, &mut out),
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::NotFound => {
                    if self.is_current(&id) {
                        self.ended(&id, End::Lost, false, now, &mut out);
                    }
                }
                Err(_) => {}
            },
            Input::Event(status) => self.observed(&status, now, &mut out),
            Input::Clear => {
                if self.phase == Phase::GaveUp {
                    self.restarts.clear();
                    self.phase = Phase::Due;
                    out.push(Action::Note(Note::Cleared));
                }
            }
            Input::Tick => {}
        }
        self.advance(now, &mut out);
        out
    }

    /// Does what is due at `now`: launches and polls.
    fn advance(&mut self, now: Duration, out: &mut Vec<Action>) {
        if let Phase::Waiting { until } = self.phase {
            if now >= until {
                self.phase = Phase::Due;
            }
        }
        if !self.session {
            return;
        }
        match &mut self.phase {
            Phase::Due => self.launch(out),
            Phase::Running { id, next_poll, .. } if now >= *next_poll => {
                *next_poll = now + self.policy.poll_interval;
                out.push(Action::Poll { id: id.clone() });
            }
            _ => {}
        }
    }

    fn launch(&mut self, out: &mut Vec<Action>) {
        self.launches += 1;
        let id = format!("{}.{}", self.policy.name, self.launches);
        let p = &self.policy;
        out.push(Action::Launch(LaunchSpec {
            id: Text::truncating(id.clone()),
            argv: p
                .argv
                .iter()
                .map(|a| Text::truncating(a.as_str()))
                .collect(),
            env: p
                .env
                .iter()
                .map(|(k, v)| (Text::truncating(k.as_str()), Text::truncating(v.as_str())))
                .collect(),
            cwd: p.cwd.as_deref().map(Text::truncating),
            user: p.user.as_deref().map(Text::truncating),
        }));
        self.phase = Phase::Launching { id };
    }

    fn is_current(&self, id: &str) -> bool {
        match &self.phase {
            Phase::Launching { id: current } | Phase::Running { id: current, .. } => current == id,
            _ => false,
        }
    }

    /// A new session's table: adopt, take ends, or find the process lost.
    fn reconcile(
        &mut self,
        table: &[ProcessStatus],
        rebooted: bool,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        let ours: Vec<&ProcessStatus> = table.iter().filter(|p| self.owns(p.id.as_str())).collect();
        if let Some(max) = ours
            .iter()
            .filter_map(|p| launch_number(&self.policy.name, p.id.as_str()))
            .max()
        {
            self.launches = self.launches.max(max);
        }
        // Ends of ours that are not the current process: read by nobody; release them.
        let current = match &self.phase {
            Phase::Launching { id } | Phase::Running { id, .. } => Some(id.clone()),
            _ => None,
        };
        for p in &ours {
            let stale = Some(p.id.as_str()) != current.as_deref()
                && !matches!(p.state, ProcessState::Running { .. });
            if stale {
                out.push(Action::Release {
                    id: p.id.as_str().to_owned(),
                });
            }
        }
        match (&self.phase, current) {
            (Phase::AwaitingReset, _) if rebooted => self.phase = Phase::Due,
            (Phase::Launching { .. } | Phase::Running { .. }, Some(id)) => {
                match ours.iter().find(|p| p.id.as_str() == id) {
                    Some(status) => {
                        let launching = matches!(self.phase, Phase::Launching { .. });
                        if launching {
                            if let ProcessState::Running { pid } = status.state {
                                out.push(Action::Note(Note::Started {
                                    id: id.clone(),
                                    pid,
                                }));
                            }
                        }
                        self.observed(status, now, out);
                    }
                    // A launch the guest never got: launch again, not a restart.
                    None if matches!(self.phase, Phase::Launching { .. }) => {
                        self.phase = Phase::Due
                    }
                    None => self.ended(&id, End::Lost, false, now, out),
                }
            }
            (Phase::Due, _) => {
                // A host agent that started anew: a running launch of ours is adopted.
                if let Some((id, pid)) = ours
                    .iter()
                    .filter_map(|p| match p.state {
                        ProcessState::Running { pid } => Some((p.id.as_str().to_owned(), pid)),
                        _ => None,
                    })
                    .max_by_key(|(id, _)| launch_number(&self.policy.name, id))
                {
                    out.push(Action::Note(Note::Adopted {
                        id: id.clone(),
                        pid,
                    }));
                    self.phase = Phase::Running {
                        id,
                        pid,
                        next_poll: now + self.policy.poll_interval,
                    };
                }
            }
            _ => {}
        }
    }

    /// A status of one of ours, from a poll, an event or a table.
    fn observed(&mut self, status: &ProcessStatus, now: Duration, out: &mut Vec<Action>) {
        let id = status.id.as_str();
        if !self.is_current(id) {
            return;
        }
        match &status.state {
            ProcessState::Running { pid } => {
                if let Phase::Launching { .. } = self.phase {
                    self.phase = Phase::Running {
                        id: id.to_owned(),
                        pid: *pid,
                        next_poll: now + self.policy.poll_interval,
                    };
                }
            }
            ProcessState::Exited { code } => self.ended(id, End::Exited(*code), true, now, out),
            ProcessState::Killed { signal } => self.ended(id, End::Killed(*signal), true, now, out),
            ProcessState::FailedToStart { reason } => self.ended(
                id,
                End::FailedToStart(reason.as_str().to_owned()),
                true,
                now,
                out,
            ),
            ProcessState::Unknown => self.ended(id, End::Lost, false, now, out),
        }
    }

    fn launched(
        &mut self,
        id: String,
        answer: Result<ProcessStatus, WireError>,
        now: Duration,
        out: &mut Vec<Action>,
    ) {
        if self.phase != (Phase::Launching { id: id.clone() }) {
            return;
        }
        match answer {
            Ok(status) => {
                if let ProcessState::Running { pid } = status.state {
                    out.push(Action::Note(Note::Started {
                        id: id.clone(),
                        pid,
                    }));
                }
                self.observed(&status, now, out);
            }
            Err(e) => {
                let permanent = matches!(e.code, ErrorCode::NotAllowed | ErrorCode::BadRequest);
                out.push(Action::Note(Note::Refused {
                    id,
                    error: e.to_string(),
                    retrying: !permanent,
                }));
                if permanent {
                    self.give_up(format!("the guest refused the launch: {e}"), out);
                } else {
                    self.phase = Phase::Waiting {
                        until: now + self.policy.poll_interval,
                    };
                }
            }
        }
    }

    /// The current process ended: log, release, then restart, escalate or give up.
    fn ended(&mut self, id: &str, end: End, release: bool, now: Duration, out: &mut Vec<Action>) {
        out.push(Action::Note(Note::Ended {
            id: id.to_owned(),
            end: end.clone(),
        }));
        if release {
            out.push(Action::Release { id: id.to_owned() });
        }
        let window = self.policy.restart_window;
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= window)
        {
            self.restarts.pop_front();
        }
        let max = self.policy.max_restarts;
        if self.restarts.len() < max as usize {
            self.restarts.push_back(now);
            out.push(Action::Note(Note::Restarting {
                attempt: self.restarts.len() as u32,
                max,
                after: self.policy.restart_delay,
            }));
            self.phase = Phase::Waiting {
                until: now + self.policy.restart_delay,
            };
            return;
        }
        match self.policy.on_failure {
            OnFailure::Reset => {
                let reason = format!(
                    "managed application {} ended ({}) and its {max} restarts within {:?} are spent",
                    self.policy.name,
                    describe(&end),
                    window
                );
                out.push(Action::Note(Note::Escalated));
                out.push(Action::RequestReset { reason });
                self.restarts.clear();
                self.phase = Phase::AwaitingReset;
            }
            OnFailure::GiveUp => self.give_up(
                format!(
                    "ended ({}) and its {max} restarts within {:?} are spent",
                    describe(&end),
                    window
                ),
                out,
            ),
        }
    }

    fn give_up(&mut self, reason: String, out: &mut Vec<Action>) {
        out.push(Action::Note(Note::GaveUp { reason }));
        self.phase = Phase::GaveUp;
    }
}

/// `n` when `id` is `<name>.<n>`.
fn launch_number(name: &str, id: &str) -> Option<u64> {
    id.strip_prefix(name)?.strip_prefix('.')?.parse().ok()
}

fn describe(end: &End) -> String {
    match end {
        End::Exited(code) => format!("exit code {code}"),
        End::Killed(signal) => format!("killed by signal {signal}, reason code {}", 128 + signal),
        End::FailedToStart(reason) => format!("failed to start: {reason}"),
        End::Lost => "lost: the guest no longer knows it".into(),
    }
}

#[cfg(test)]
mod tests;
