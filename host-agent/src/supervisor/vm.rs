//! One VM as the supervisor holds it: libvirt's view of the domain, its policy machine, its
//! session task, its event history and its counters.

use std::collections::VecDeque;
use std::time::Duration;

use appmon_control::{AlarmEvent, HistoryEntry, HistoryKind, Level};
use appmon_libvirt_backend::{DomainInfo, DomainRef, DomainState, MonitorSpec, SpecError};
use appmon_wire::format_boot_id;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::clock::Clock;
use super::counters::VmCounters;
use super::guest::GuestWork;
use super::trouble::Trouble;
use crate::persist::{AlarmEntry, ClusterTookEntry, ResetEntry, VmRecord};
use crate::policy::VmMachine;
use crate::session::HostCmd;

/// A running session task of a VM. Dropping it ends the task.
pub(super) struct SessionHandle {
    /// Which task of the VM (a new task gets a new number): messages of an older one are stale.
    pub task: u64,
    /// The endpoint it serves, as described in logs and `show`.
    pub endpoint: String,
    pub cmds: mpsc::Sender<HostCmd>,
    pub join: JoinHandle<()>,
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.join.abort();
    }
}

/// A VM's event history: the newest entries, at most a configured number.
#[derive(Debug, Default)]
pub(super) struct History {
    entries: VecDeque<HistoryEntry>,
}

impl History {
    /// Appends `entry`, dropping the oldest ones beyond `cap` (0 keeps nothing).
    pub fn push(&mut self, cap: usize, entry: HistoryEntry) {
        if cap == 0 {
            return;
        }
        while self.entries.len() >= cap {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    pub fn iter(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.entries.iter()
    }
}

/// How long the supervisor lets history entries gather before it writes them to the state
/// directory: a burst of events costs one write per VM, and a crash loses at most this much.
pub(super) const HISTORY_FLUSH: Duration = Duration::from_secs(1);

/// The history flush rule, for every place that notes an entry: the first entry after a write
/// sets the flush time, one [`HISTORY_FLUSH`] on.
pub(super) fn flush_after(flush_at: &mut Option<Duration>, now: Duration) {
    flush_at.get_or_insert(now + HISTORY_FLUSH);
}

pub(super) struct Vm {
    pub domain: DomainRef,
    pub state: DomainState,
    pub spec: Result<Option<MonitorSpec>, SpecError>,
    pub vsock_cid: Option<u32>,
    pub machine: VmMachine,
    pub session: Option<SessionHandle>,
    /// The guest agent said Hello on the current session.
    pub connected: bool,
    pub agent: Option<String>,
    /// The last heartbeat this host agent read, monitored or not (for `show`): its own
    /// measurement, never what the guest claims.
    pub last_heartbeat: Option<Duration>,
    /// The guest's own account of its application's last heartbeat (its `State`): when the
    /// claim arrived and the age it claimed. Shown marked as the guest's claim.
    pub claimed_heartbeat: Option<(Duration, u64)>,
    pub history: History,
    /// The deadline the heap holds for this VM, if any.
    pub scheduled: Option<Duration>,
    /// The libvirt event sequence number of the last event for this domain.
    pub last_event_seq: u64,
    /// Why the guest agent could not be reached, as last recorded: recorded once per cause.
    pub unreachable: Option<String>,
    /// Why its connections do not become sessions, while they do not.
    pub trouble: Trouble,
    /// The history has entries the state directory does not have yet.
    pub history_unsaved: bool,
    /// Its monitors, launched processes, managed applications and requests in flight.
    pub guest: GuestWork,
    /// The counters its guest agent sends (kept across sessions, replaced by a new schema).
    pub counters: VmCounters,
}

impl Vm {
    /// A VM first seen in `info`, with its machine and the history it starts with.
    pub fn new(info: &DomainInfo, machine: VmMachine, history: History) -> Vm {
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
            claimed_heartbeat: None,
            history,
            scheduled: None,
            last_event_seq: 0,
            unreachable: None,
            trouble: Trouble::default(),
            history_unsaved: false,
            guest: GuestWork::default(),
            counters: VmCounters::default(),
        }
    }

    /// The earliest of its policy's and its applications' deadlines after `now`.
    pub fn next_deadline(&self, now: Duration) -> Option<Duration> {
        let policy = self.machine.next_deadline(now);
        let apps = self.guest.next_deadline(now);
        policy.into_iter().chain(apps).min()
    }

    /// Adds a history entry.
    pub fn note(&mut self, cap: usize, unix_ms: u64, level: Level, kind: HistoryKind) {
        self.history
            .push(cap, HistoryEntry::new(unix_ms, level, kind));
        self.history_unsaved = true;
    }

    /// Notes the alarm view's changes of one values frame ([`super::counters::judge`]) and
    /// schedules their write.
    pub fn note_alarms(
        &mut self,
        cap: usize,
        unix_ms: u64,
        changed: Vec<(Level, AlarmEvent)>,
        flush_at: &mut Option<Duration>,
        now: Duration,
    ) {
        for (level, event) in changed {
            self.note(cap, unix_ms, level, HistoryKind::Alarm(event));
            flush_after(flush_at, now);
        }
    }

    /// Queues a command for the session, if there is one. A session that cannot take it is not
    /// draining its queue (its guest does not read): the write timeout ends such a session;
    /// make sure of it without waiting.
    pub fn send(&self, cmd: HostCmd) {
        let Some(session) = &self.session else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = session.cmds.try_send(cmd) {
            tracing::warn!(domain = %self.domain.name, "guest session is stuck: restarting it");
            session.join.abort();
        }
    }

    /// What is kept of the VM across restarts: its resets in the window and its alarm.
    pub fn record(&self, clock: &Clock) -> VmRecord {
        VmRecord {
            uuid: self.domain.uuid.clone(),
            name: self.domain.name.clone(),
            resets: self
                .machine
                .resets()
                .map(|r| ResetEntry {
                    unix_ms: clock.wall_ms(r.at),
                    method: r.method,
                    reason: r.reason.clone(),
                })
                .collect(),
            alarm: self.machine.alarm().map(|a| AlarmEntry {
                unix_ms: clock.wall_ms(a.at),
                reason: a.reason.clone(),
                cluster_took: a.cluster_took.map(|took| ClusterTookEntry {
                    boot_id: took.boot_id.as_ref().map(format_boot_id),
                }),
            }),
            history: self.history.iter().cloned().collect(),
        }
    }
}
