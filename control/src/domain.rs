//! libvirt's view of a domain as appmon uses it: its state with libvirt's reason, and the
//! lifecycle events the backend maps from libvirt's callbacks. `appmon-libvirt-backend` produces
//! them (and re-exports them); the host agent's policy decides on them; the history and
//! `appmonctl` show them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A domain's state with libvirt's reason, as far as monitoring cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    Running(RunningReason),
    /// Paused for any reason; `Migrating` and `Saving` say that the domain is leaving.
    Paused(PausedReason),
    ShutOff(ShutOffReason),
    Crashed,
    /// Shutting down, or a state libvirt reports that we do not act on (pmsuspended, blocked).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunningReason {
    Booted,
    /// Arrived by migration: the destination of a live migration.
    Migrated,
    Restored,
    Unpaused,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PausedReason {
    User,
    Migrating,
    Saving,
    /// Incoming migration not finished (`paused (starting up)` / `paused (migrating)` on the
    /// destination before `Resumed Migrated`).
    StartingUp,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutOffReason {
    Shutdown,
    Destroyed,
    Crashed,
    Migrated,
    Saved,
    Failed,
    Other,
}

/// Lifecycle and other events, mapped from libvirt's callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainEvent {
    Defined,
    Undefined,
    Started(StartedReason),
    Suspended(PausedReason),
    Resumed(RunningReason),
    Stopped(ShutOffReason),
    /// A guest or host initiated shutdown finished (the `Stopped` event follows).
    ShutdownFinished,
    Crashed,
    /// The guest rebooted inside the running QEMU: `virsh reset`, `virsh reboot`, a guest
    /// reboot or a watchdog reset. libvirt may deliver several for one reboot.
    Rebooted,
    /// A watchdog device fired (with action reset, a `Rebooted` follows).
    Watchdog,
    /// The domain's metadata changed (someone ran `appmonctl enable` or `disable`).
    MetadataChanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartedReason {
    Booted,
    /// The incoming side of a migration has started; the domain is not here until
    /// `Resumed(Migrated)` (an aborted migration ends in `Stopped(Failed)` instead).
    Migrated,
    Restored,
    FromSnapshot,
    Wakeup,
    Other,
}

impl DomainEvent {
    /// Whether the event starts a new boot of the guest (the host agent counts the minimum
    /// uptime from it).
    pub fn starts_a_boot(self) -> bool {
        matches!(self, DomainEvent::Started(_) | DomainEvent::Rebooted)
    }
}

impl DomainState {
    pub fn is_running(self) -> bool {
        matches!(self, DomainState::Running(_))
    }
}

impl RunningReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RunningReason::Booted => "booted",
            RunningReason::Migrated => "migrated",
            RunningReason::Restored => "restored",
            RunningReason::Unpaused => "unpaused",
            RunningReason::Other => "other",
        }
    }
}

impl PausedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PausedReason::User => "user",
            PausedReason::Migrating => "migrating",
            PausedReason::Saving => "saving",
            PausedReason::StartingUp => "starting up",
            PausedReason::Other => "other",
        }
    }
}

impl ShutOffReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutOffReason::Shutdown => "shutdown",
            ShutOffReason::Destroyed => "destroyed",
            ShutOffReason::Crashed => "crashed",
            ShutOffReason::Migrated => "migrated",
            ShutOffReason::Saved => "saved",
            ShutOffReason::Failed => "failed",
            ShutOffReason::Other => "other",
        }
    }
}

impl StartedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StartedReason::Booted => "booted",
            StartedReason::Migrated => "migrated",
            StartedReason::Restored => "restored",
            StartedReason::FromSnapshot => "from snapshot",
            StartedReason::Wakeup => "wakeup",
            StartedReason::Other => "other",
        }
    }
}

/// `running (booted)`, `paused (user)`, `shut off (destroyed)`, `crashed`, `other`.
impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainState::Running(r) => write!(f, "running ({})", r.as_str()),
            DomainState::Paused(r) => write!(f, "paused ({})", r.as_str()),
            DomainState::ShutOff(r) => write!(f, "shut off ({})", r.as_str()),
            DomainState::Crashed => f.write_str("crashed"),
            DomainState::Other => f.write_str("other"),
        }
    }
}

/// `started (booted)`, `suspended (user)`, `rebooted`, ...
impl fmt::Display for DomainEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainEvent::Defined => f.write_str("defined"),
            DomainEvent::Undefined => f.write_str("undefined"),
            DomainEvent::Started(r) => write!(f, "started ({})", r.as_str()),
            DomainEvent::Suspended(r) => write!(f, "suspended ({})", r.as_str()),
            DomainEvent::Resumed(r) => write!(f, "resumed ({})", r.as_str()),
            DomainEvent::Stopped(r) => write!(f, "stopped ({})", r.as_str()),
            DomainEvent::ShutdownFinished => f.write_str("shutdown finished"),
            DomainEvent::Crashed => f.write_str("crashed"),
            DomainEvent::Rebooted => f.write_str("rebooted"),
            DomainEvent::Watchdog => f.write_str("watchdog fired"),
            DomainEvent::MetadataChanged => f.write_str("metadata changed"),
        }
    }
}
