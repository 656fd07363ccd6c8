//! What a session task and the supervisor tell each other.

use std::time::Instant;

use appmon_control::{ConnectFailure, SessionEnd};
use appmon_wire::{
    CounterSchema, CounterValues, GuestMsg, GuestState, HostMsg, MonitorEvent, MonitorStatus,
    ProcessStatus, RequestId,
};

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
    /// A connection did not become a session (every such failure: the supervisor decides
    /// which are worth a log line, `supervisor::trouble`).
    ConnectFailed(ConnectFailure),
    /// A launched process changed state (the guest's `Process` event).
    Process(ProcessStatus),
    /// The state of every application monitor in the guest.
    Monitors(Vec<MonitorStatus>),
    /// An application monitor reported something.
    Monitor(MonitorEvent),
    /// The guest's answer to the host's request `id` ([`HostCmd::Request`]).
    Reply {
        id: RequestId,
        msg: GuestMsg,
    },
    /// A part of the guest's counter schema, unchecked: the VM's counter store judges it.
    CounterSchema(CounterSchema),
    /// A set of counter values, stamped when its frame was read, unchecked like the schema.
    CounterValues {
        values: CounterValues,
        at: Instant,
    },
    /// The answer to [`HostCmd::Sync`]: everything the guest had sent before it was read and
    /// delivered ahead of this.
    Synced,
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
    /// The answer to a request. (The messages are boxed, here and in `Request`: every queue of
    /// commands allocates room for 32 of them when it is made, two queues per VM, so the size
    /// of a command is paid 64 times per VM whether or not any is ever sent.)
    Reply { id: RequestId, msg: Box<HostMsg> },
    /// The guest is being reset or rebooted: send it nothing (no keepalive, no dial) until it
    /// announces itself again.
    Quiet,
    /// The host is about to reset the guest: close its connection now, while the guest still
    /// runs (a connection open in a userspace vsock backend when the guest resets can leave a
    /// packet for it under way), and keep quiet as for [`HostCmd::Quiet`].
    CloseForReset,
    /// A request of the host's (launch, poll, signal, read output, release); `id` is one of
    /// [`host_request_id`]'s, so its reply comes back as [`SessionEvent::Reply`].
    Request { id: RequestId, msg: Box<HostMsg> },
    /// Read everything the guest has sent that is readable now, deliver it, then answer
    /// [`SessionEvent::Synced`]: the supervisor judges silence only on input that was read.
    Sync,
    /// The domain is paused (by a user, a migration, a save) or runs again: while paused the
    /// guest is sent nothing the host starts (no ping, no dial) and its silence is not judged;
    /// at resume the silence clock restarts.
    DomainPaused(bool),
}

/// Request ids the supervisor's requests use: the high bit set. The session's own pings count
/// below it, so a reply says by its id alone whether the supervisor waits for it.
pub const HOST_REQUEST_BIT: RequestId = 1 << 31;

/// The id of the supervisor's `n`-th request (wrapping within its half of the id space).
pub fn host_request_id(n: u32) -> RequestId {
    HOST_REQUEST_BIT | (n & !HOST_REQUEST_BIT)
}

/// Whether `id` is one of the supervisor's requests.
pub fn is_host_request(id: RequestId) -> bool {
    id & HOST_REQUEST_BIT != 0
}
