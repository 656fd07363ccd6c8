//! What a session task and the supervisor tell each other.

use std::time::Instant;

use appmon_control::SessionEnd;
use appmon_wire::{GuestState, HostMsg, RequestId};

use crate::policy::GuestRequest;

/// Identifies a VM inside the supervisor.
pub type VmId = u64;

/// What a session tells the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The handshake succeeded.
    Hello {
        boot_id: [u8; 16],
        agent: String,
    },
    State(GuestState),
    /// A heartbeat, stamped when its frame was read.
    Heartbeat {
        at: Instant,
    },
    /// `id` is `None` when the guest sent it as an event (no reply wanted).
    Request {
        id: Option<RequestId>,
        req: GuestRequest,
    },
    /// The connection ended (after a Hello or not); the task reconnects.
    Closed {
        reason: SessionEnd,
    },
}

/// A [`SessionEvent`] with who it is from.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionMsg {
    pub vm: VmId,
    /// Which session task of the VM (a new task gets a new number).
    pub task: u64,
    pub event: SessionEvent,
}

/// What the supervisor tells a session.
#[derive(Debug, Clone, PartialEq)]
pub enum HostCmd {
    /// `Event AppStatus`.
    Status(appmon_wire::AppStatus),
    /// The answer to a request.
    Reply { id: RequestId, msg: HostMsg },
    /// The guest is being reset or rebooted: send it nothing (no keepalive, no dial) until it
    /// announces itself again.
    Quiet,
    /// The host is about to reset the guest: close its connection now, while the guest still
    /// runs (a connection open in a userspace vsock backend when the guest resets can leave a
    /// packet for it under way), and keep quiet as for [`HostCmd::Quiet`].
    CloseForReset,
}
