//! Processes the host launches in the guest (Serviceguard's cmappserver): launch, poll, signal,
//! read output, release.
//!
//! - [`allowlist`]: the `[processes]` configuration and the decision on what may run (pure).
//! - [`table`]: every launched process until the host releases it, and the answers to the
//!   host's requests (pure).
//! - [`spawn`]: starting a process as a user in a session of its own, its output drained into
//!   bounded tails, its end awaited, its group signalled.
//! - this module: [`ProcessManager`], the thin shell that starts processes through [`spawn`],
//!   learns of their ends, and turns each host request into the machine
//!   events that answer it.
//!
//! # Life of a launch
//!
//! A `LaunchProcess` is checked for shape and room ([`table::Table::check_launch`]:
//! `BadRequest`, `RateLimited`), then against the allowlist ([`allowlist`]: `NotAllowed`,
//! logged as a warning in the guest). What fails after that is the guest's state, not the
//! request: a user missing from `/etc/passwd`, a working directory that does not exist, a
//! program that cannot be executed. Such a launch is answered `FailedToStart { reason }` and
//! stays in the table like any ended process, so a host that lost the answer with its session
//! finds it in the next State. A started process is answered `Running { pid }`; its end is sent
//! as a `Process` event and kept until the host releases it.
//!
//! # Ownership
//!
//! Launched processes belong to the agent, not to a host session: a session that ends, or a
//! host agent that restarts, changes nothing for them, and every new session gets the table in
//! its State. The table reaches the machine as [`Event::ProcessTable`] whenever it changes and
//! before every new session's handshake.
//!
//! # When the agent itself stops or dies
//!
//! Launched processes do not outlive the agent. On a clean stop (SIGTERM) each running
//! process's group gets SIGTERM, and SIGKILL after `processes.stop_grace`; if the agent dies
//! without stopping, the kernel kills each launched process (PR_SET_PDEATHSIG, SIGKILL).
//! Why: a process that outlived its agent could not be managed any more. Its stdout and stderr
//! pipes end with the agent (its next write would get SIGPIPE), no new agent can learn its exit
//! status (`wait` is for the parent only), and the host, finding it gone from the next agent's
//! table, restarts it by its policy: a survivor would then run twice. Surviving an agent restart
//! would take a per-process keeper holding the pipes and the exit status (as conmon or
//! containerd's shims do), a separate program for a case the host's restart policy already
//! covers. Children a launched process started itself, and detached from its process group, are
//! not followed (PR_SET_PDEATHSIG reaches the direct child only).

pub mod allowlist;
pub mod spawn;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appmon_wire::report::error_chain;
use appmon_wire::{
    ErrorCode, GuestMsg, HostMsg, LaunchSpec, ProcessId, ProcessState, ProcessStatus, RequestId,
    Text,
};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::machine::{Event, SessionSeq};
use crate::users::{UserDb, GROUP, PASSWD};
use allowlist::ProcessesConfig;
use spawn::{Ended, Launch, Tail};
use table::{command_line, Entry, Refusal, SignalTarget, Table};

/// After SIGKILL at a stop, how long the agent waits for its processes' ends to be reported.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// A launched process ended.
#[derive(Debug)]
pub struct Exit {
    id: ProcessId,
    pid: u32,
    ended: Ended,
}

/// The shell around the process table. Owned by the daemon's owner task; every method runs
/// there (processes are started from that thread: see [`spawn`]).
#[derive(Debug)]
pub struct ProcessManager {
    config: ProcessesConfig,
    table: Table,
    passwd: PathBuf,
    group: PathBuf,
    /// Each process's waiter sends its one end here: at most one message per process in the
    /// table, so the channel is bounded by `processes.max`.
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits_rx: mpsc::UnboundedReceiver<Exit>,
}

impl ProcessManager {
    pub fn new(config: ProcessesConfig) -> ProcessManager {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        ProcessManager {
            table: Table::new(config.max as usize),
            config,
            passwd: PathBuf::from(PASSWD),
            group: PathBuf::from(GROUP),
            exits_tx,
            exits_rx,
        }
    }

    /// Resolves users from these files instead of the system's.
    pub fn with_user_files(mut self, passwd: &Path, group: &Path) -> ProcessManager {
        self.passwd = passwd.to_owned();
        self.group = group.to_owned();
        self
    }

    /// A reloaded configuration: applies to later launches; running processes are untouched.
    pub fn set_config(&mut self, config: ProcessesConfig) {
        if config != self.config {
            info!(
                entries = config.allow.len(),
                max = config.max,
                "process allowlist reloaded"
            );
        }
        self.table.set_max(config.max as usize);
        self.config = config;
    }

    /// The table as the next State must carry it.
    pub fn table_event(&self) -> Event {
        Event::ProcessTable(self.table.statuses())
    }

    /// Answers one host request of `session`: the reply first, then what else changed.
    pub fn request(&mut self, session: SessionSeq, id: RequestId, msg: HostMsg) -> Vec<Event> {
        let mut events = Vec::new();
        let answer = match msg {
            HostMsg::LaunchProcess(spec) => {
                let answer = self.launch(spec);
                let changed = matches!(answer, Ok(GuestMsg::Process(_)));
                events.push(reply(session, id, answer));
                if changed {
                    events.push(self.table_event());
                }
                return events;
            }
            HostMsg::PollProcess { id } => self.table.poll(id.as_str()).map(GuestMsg::Process),
            HostMsg::SignalProcess { id, signal } => self.signal(&id, signal),
            HostMsg::ReadOutput { id, stream, from } => self
                .table
                .read_output(&id, stream, from)
                .map(GuestMsg::Output),
            HostMsg::ReleaseProcess { id: process } => {
                let released = self.table.release(process.as_str());
                let changed = released.is_ok();
                if changed {
                    info!(id = %process, "released by the host");
                }
                events.push(reply(session, id, released.map(|()| GuestMsg::Ack)));
                if changed {
                    events.push(self.table_event());
                }
                return events;
            }
            other => Err(Refusal {
                code: ErrorCode::BadRequest,
                message: format!(
                    "{} is not a process request",
                    appmon_wire::WireMessage::kind_name(&other)
                ),
            }),
        };
        events.push(reply(session, id, answer));
        events
    }

    /// Waits for the next process to end. Never resolves while none runs.
    pub async fn next_exit(&mut self) -> Exit {
        match self.exits_rx.recv().await {
            Some(exit) => exit,
            // The manager holds a sender itself: the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// Takes a process's end: its event for the host and the new table.
    pub fn on_exit(&mut self, exit: Exit) -> Vec<Event> {
        let Some(status) = self.table.ended(exit.id.as_str(), exit.pid, exit.ended) else {
            return Vec::new();
        };
        info!(
            id = %exit.id,
            pid = exit.pid,
            how = %describe(&status.state),
            stdout_bytes = status.stdout_bytes,
            stderr_bytes = status.stderr_bytes,
            "launched process ended"
        );
        vec![
            Event::Outbound(GuestMsg::Process(status)),
            self.table_event(),
        ]
    }

    /// Ends every running process: SIGTERM to its group, SIGKILL after the stop grace.
    pub async fn stop(&mut self) {
        let running = self.table.running();
        if running.is_empty() {
            return;
        }
        let grace = self.config.stop_grace;
        info!(
            processes = running.len(),
            grace_s = grace.as_secs(),
            "stopping launched processes"
        );
        for (_, pid) in &running {
            let _ = spawn::signal_group(*pid, Signal::SIGTERM);
        }
        self.collect_ends(grace).await;
        let left = self.table.running();
        if left.is_empty() {
            return;
        }
        warn!(
            processes = left.len(),
            "launched processes outlived the stop grace; killing them"
        );
        for (_, pid) in &left {
            let _ = spawn::signal_group(*pid, Signal::SIGKILL);
        }
        self.collect_ends(KILL_WAIT).await;
    }

    async fn collect_ends(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.table.running().is_empty() {
            match tokio::time::timeout_at(deadline, self.exits_rx.recv()).await {
                Ok(Some(exit)) => {
                    self.on_exit(exit);
                }
                _ => return,
            }
        }
    }

    fn launch(&mut self, spec: LaunchSpec) -> Result<GuestMsg, Refusal> {
        self.table.check_launch(&spec)?;
        let permit = self.config.check(&spec).map_err(|why| {
            warn!(id = %spec.id, command = %command_line(spec.argv.iter().map(Text::as_str)), reason = %why, "launch refused: not on the allowlist");
            Refusal {
                code: ErrorCode::NotAllowed,
                message: why.0,
            }
        })?;
        let command = command_line(spec.argv.iter().map(Text::as_str));
        let user: Text<_> = Text::truncating(permit.user.clone());
        let started_unix_ms = unix_ms();
        let stdout = Tail::shared(self.config.output_tail);
        let stderr = Tail::shared(self.config.output_tail);
        let mut entry = Entry {
            state: ProcessState::Running { pid: 0 },
            command: command.clone(),
            user,
            started_unix_ms,
            stdout,
            stderr,
        };
        match self.start(&spec, &permit) {
            Ok(started) => {
                let pid = started.pid;
                info!(id = %spec.id, %command, user = %permit.user, pid, "launched for the host");
                entry.state = ProcessState::Running { pid };
                entry.stdout = started.stdout;
                entry.stderr = started.stderr;
                let exits = self.exits_tx.clone();
                let id = spec.id.clone();
                let (child, drains) = (started.child, started.drains);
                tokio::spawn(async move {
                    let ended = match spawn::finish(child, pid, drains, spawn::DRAIN_GRACE).await {
                        Ok(ended) => ended,
                        Err(e) => {
                            error!(%id, pid, error = %error_chain(&e), "cannot learn how the process ended; reporting exit code -1");
                            Ended::Exited(-1)
                        }
                    };
                    let _ = exits.send(Exit { id, pid, ended });
                });
            }
            Err(reason) => {
                warn!(id = %spec.id, %command, user = %permit.user, %reason, "launch failed to start");
                entry.state = ProcessState::FailedToStart {
                    reason: Text::truncating(reason),
                };
                lock_close(&entry);
                entry.started_unix_ms = 0;
            }
        }
        Ok(GuestMsg::Process(self.table.insert(spec.id, entry)))
    }

    /// Resolves the user and directory and starts the process; says why not.
    fn start(
        &self,
        spec: &LaunchSpec,
        permit: &allowlist::Permit,
    ) -> Result<spawn::Started, String> {
        let users = UserDb::load(&self.passwd, &self.group).map_err(|e| error_chain(&e))?;
        let identity = users.lookup(&permit.user).map_err(|e| error_chain(&e))?;
        match std::fs::metadata(&permit.cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", permit.cwd.display())),
            Err(e) => return Err(format!("working directory {}: {e}", permit.cwd.display())),
        }
        let mut env = spawn::minimal_env(Some(&identity));
        for (name, value) in &spec.env {
            spawn::set_env(&mut env, name.as_str(), value.as_str());
        }
        let launch = Launch {
            program: PathBuf::from(spec.argv[0].as_str()),
            args: spec.argv[1..]
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            env,
            cwd: permit.cwd.clone(),
            identity: Some(identity),
            die_with_agent: true,
        };
        spawn::start(&launch, self.config.output_tail).map_err(|e| error_chain(&e))
    }

    fn signal(&mut self, id: &ProcessId, number: i32) -> Result<GuestMsg, Refusal> {
        let signal = spawn::signal_from(number).map_err(|e| Refusal {
            code: ErrorCode::BadRequest,
            message: e.to_string(),
        })?;
        match self.table.signal_target(id.as_str())? {
            SignalTarget::Ended(status) => Ok(GuestMsg::Process(status)),
            SignalTarget::Group(pid) => {
                match spawn::signal_group(pid, signal) {
                    Ok(()) => info!(%id, pid, %signal, "signalled for the host"),
                    // The group ended between its last report and now: its end is on its way.
                    Err(e) => warn!(%id, pid, error = %error_chain(&e), "signal not delivered"),
                }
                self.table.poll(id.as_str()).map(GuestMsg::Process)
            }
        }
    }

    /// The processes in the table, for tests and status.
    pub fn statuses(&self) -> Vec<ProcessStatus> {
        self.table.statuses()
    }
}

fn reply(session: SessionSeq, id: RequestId, answer: Result<GuestMsg, Refusal>) -> Event {
    let msg = answer.unwrap_or_else(|refusal| GuestMsg::Error(refusal.to_wire()));
    Event::ReplyToHost { session, id, msg }
}

/// A process that never started has no output to wait for.
fn lock_close(entry: &Entry) {
    spawn::lock(&entry.stdout).close();
    spawn::lock(&entry.stderr).close();
}

fn describe(state: &ProcessState) -> String {
    match state {
        ProcessState::Running { pid } => format!("running as pid {pid}"),
        ProcessState::Exited { code } => format!("exited with code {code}"),
        ProcessState::Killed { signal } => format!("killed by signal {signal}"),
        ProcessState::FailedToStart { reason } => format!("failed to start: {reason}"),
        ProcessState::Unknown => "unknown".into(),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
