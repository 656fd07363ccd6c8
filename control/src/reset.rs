//! How a VM is reset, and why: the policy decides both, libvirt-backend carries the method out,
//! the history and the state directory record them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a VM is reset. In JSON and in a domain's metadata: `reset`, `power-cycle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResetMethod {
    /// virDomainReset, and a power-cycle if the guest does not come back.
    Reset,
    /// Destroy and start: robust where an in-place reset can wedge a device backend.
    PowerCycle,
}

impl ResetMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetMethod::Reset => "reset",
            ResetMethod::PowerCycle => "power-cycle",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "reset" => Some(ResetMethod::Reset),
            "power-cycle" => Some(ResetMethod::PowerCycle),
            _ => None,
        }
    }
}

impl fmt::Display for ResetMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the policy reset a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetCause {
    HeartbeatsStopped,
    NeedReset,
    /// The guest channel did not come back after our reset.
    ChannelLostAfterReset,
    /// The guest rebooted by itself and its channel did not come back.
    ChannelLostAfterReboot,
    /// A managed application's restarts in the guest are spent and its policy escalates to a
    /// reset of the VM.
    ManagedApplication,
}

impl fmt::Display for ResetCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResetCause::HeartbeatsStopped => "heartbeats stopped",
            ResetCause::NeedReset => "the application asked for a reset (needReset)",
            ResetCause::ChannelLostAfterReset => "guest channel did not come back after reset",
            ResetCause::ChannelLostAfterReboot => "guest channel lost after reboot",
            ResetCause::ManagedApplication => "a managed application's restarts are spent",
        })
    }
}
