//! What the daemon's owner task and the tasks around it say to each other: the [`Input`]s that
//! listener, link and local-API tasks queue for the owner, and the [`LinkCmd`]s the owner sends
//! a link task back.
//!
//! These types have a room of their own so that the tasks that send them ([`crate::transport`],
//! [`crate::local`]) and the task that receives them ([`crate::daemon`]) each depend on this
//! module, never on one another.

use appmon_wire::{Frame, GuestMsg};
use tokio::sync::{mpsc, oneshot};

use crate::api::{ApiRequest, ApiResponse};
use crate::machine::{Event, LinkId, LinkKind, Opening};

/// What the owner task receives.
#[derive(Debug)]
pub enum Input {
    /// A link came up; `commands` reaches its task.
    LinkUp {
        link: LinkId,
        kind: LinkKind,
        opening: Opening,
        transport: Transport,
        description: String,
        commands: mpsc::Sender<LinkCmd>,
    },
    /// A machine event from a link.
    Event(Event),
    /// An application's request and where its answer goes.
    App {
        request: ApiRequest,
        reply: oneshot::Sender<ApiResponse>,
    },
    /// Read the configuration file again (SIGHUP).
    Reload,
    /// Stop (SIGTERM, SIGINT).
    Shutdown,
}

/// Which configured transport a link came from, so a reload can close the links of a
/// transport it removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Vsock,
    Unix,
    Serial,
}

/// What the daemon tells a link task.
#[derive(Debug)]
pub enum LinkCmd {
    Send(Frame<GuestMsg>),
    /// Write a bare delimiter (see [`crate::machine::Action::Resync`]).
    Resync,
    Close(String),
}
