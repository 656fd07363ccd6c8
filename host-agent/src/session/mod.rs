//! Guest sessions: one task per monitored VM connects to the guest agent, speaks the session
//! protocol, and relays what the guest says to the supervisor as typed [`SessionMsg`]s.
//!
//! # Modules
//!
//! - [`machine`]: one session as a pure state machine (handshake, keepalive, token bucket,
//!   dispatch, the end of a session and its reason), tested with a virtual clock.
//! - [`shell`]: the thin I/O around it: reads frames, writes what the machine asks (each write
//!   bounded by the write timeout), sleeps until the machine's next deadline; and the dial loop
//!   that connects and reconnects with backoff. Tested over `tokio::io::duplex`.
//! - [`endpoint`]: where the guest agent is reached and connecting to it.
//! - `messages`: what a session task and the supervisor tell each other ([`SessionEvent`],
//!   [`HostCmd`]); `settings`: what every session shares ([`SessionConfig`]).
//!
//! # Protocol (host side)
//!
//! 1. On a link the host dialed, the host sends `Event Hello` first (a link the guest opened
//!    would start with the guest's Hello, answered by the host's: [`machine::Opening`]). The
//!    guest answers `Event Hello` (its boot id) and `Event State`; once the State is in, the
//!    supervisor pushes `Event AppStatus` with the current status, on every connection (see
//!    [`crate::policy`]). Incompatible versions get `Error(IncompatibleVersion)` and the
//!    session ends. A guest silent for `hello_timeout` after the connection is dropped.
//! 2. Requests (`Enable`, `Disable`, `PostAppState`, `GetAppStatus`, `IsEnabled`) go to the
//!    supervisor, whose policy machine answers through [`HostCmd::Reply`]; `Ping` is answered
//!    here. Heartbeats (`Event MarkActive`) are stamped with the time they were read and
//!    forwarded, and so are the guest's `Process`, `Monitors` and `Monitor` events.
//!    Counter schema parts and values (the host's Hello offers `COUNTERS`) go to the
//!    supervisor as they are, values stamped like heartbeats; the VM's counter store judges
//!    them. Requests this
//!    host agent does not handle get `Error(NotAllowed)`; an unknown message kind gets
//!    `Error(Unsupported)`; an `Error` is never answered.
//! 4. The supervisor's own requests (launch, poll, signal, read output, release:
//!    [`HostCmd::Request`]) carry ids with the high bit set ([`host_request_id`]); a reply with
//!    such an id goes back to the supervisor as [`SessionEvent::Reply`], whatever it says. The
//!    session's pings count below that bit, and their answers stay here.
//! 3. Every `ping_interval` the host sends `Request Ping`; a guest that sends no frame at all for
//!    `ping_interval * dead_after_pings` is dead: the session ends and reconnects.
//!
//! # Bounds against a hostile guest
//!
//! The codec's frame limit; a read buffer that starts small; a token bucket on received frames
//! whose exhaustion ends the session; a timeout on every write, so a guest that does not read
//! cannot hold the task; any frame error other than an unknown kind ends the session (on a
//! virtio-serial channel, which has no connection to end, bad frames are skipped and only the
//! token bucket ends it). A session's end is logged with the reason and never touches another
//! VM: each VM has its own task, its own command queue, and the shared queue to the supervisor is
//! only fed at the rate the token bucket allows.

mod messages;
mod settings;

pub mod admission;
pub mod endpoint;
pub mod listener;
pub mod machine;
pub mod shell;
pub mod vsock;

/// Commands queued per connection before its session counts as stuck.
const SESSION_QUEUE: usize = 32;

pub use self::endpoint::{ChannelLookup, Endpoint, GuestIo, SessionError};
pub use self::listener::{listen, Acceptor};
pub use self::machine::{Link, LinkKind, Opening};
pub use self::messages::{
    host_request_id, is_host_request, HostCmd, SessionEvent, SessionMsg, VmId,
};
pub use self::settings::{Keepalive, SessionConfig};
pub use self::shell::run;
