//! appmon's guest agent: the `appmon-guest` daemon that runs inside each VM, the `appmon`
//! command applications use, and a client library for Rust applications.
//!
//! Applications talk to the daemon over a local Unix socket with vSphere HA's application
//! monitoring verbs (enable, disable, markActive, isEnabled, getAppStatus, postAppState); the
//! daemon serves the host agent over the `appmon-wire` protocol on AF_VSOCK, a virtio-serial
//! port or (for development and tests) a Unix socket, forwards the application's heartbeats,
//! and keeps the application's state across host sessions.
//!
//! # Modules
//!
//! - [`machine`]: all of the agent's logic as a pure state machine `(state, event, now) ->
//!   (state, actions)`: the host session, the handshake, the application's state, the automatic
//!   re-enable after Gray.
//! - [`daemon`]: the I/O shell: one task owns the machine, feeds it events from the host links,
//!   the local API and the clock, and carries out its actions; reload and shutdown.
//! - [`processes`]: processes the host launches (cmappserver): the allowlist, the process table,
//!   and the shell that starts, signals and reaps them.
//! - [`transport`]: the host listeners (vsock, Unix socket) and the virtio-serial port, and the
//!   per-link task that runs the frame codec.
//! - [`counters`]: the CCA counters: standard ones from /proc and /sys, custom ones from
//!   ccad.conf and its named pipes, streamed to the host.
//! - [`local`]: the local API socket server.
//! - [`api`]: the local API's JSON-lines messages.
//! - [`client`]: a blocking client for applications.
//! - [`cli`]: the `appmon` command.
//! - [`config`]: the configuration file, `/etc/appmon/guest.toml`.
//! - [`monitors`]: application monitors (PowerHA's process and custom monitors): their own
//!   pure machine and the task that runs it; they reach the host through the daemon.
//! - [`exec`]: runs a command once with bounded time and output (the monitors' checks and
//!   commands).
//! - [`logging`]: tracing to stderr.
//! - [`users`]: user names resolved from `/etc/passwd` and `/etc/group`.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod exec;
pub mod local;
pub mod logging;
pub mod machine;
pub mod monitors;
pub mod processes;
pub mod transport;
pub mod users;

/// The agent's name and version, as its Hello and `appmon status` show it.
pub fn agent_name() -> String {
    format!("appmon-guest {}", env!("CARGO_PKG_VERSION"))
}
