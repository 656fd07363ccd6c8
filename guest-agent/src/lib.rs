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
//! - [`inbox`]: what the tasks around the owner send it ([`inbox::Input`]) and what it sends a
//!   link task back ([`inbox::LinkCmd`]).
//! - [`transport`]: the host listeners (vsock, Unix socket) and the virtio-serial port, and the
//!   per-link task that runs the frame codec.
//! - [`counters`]: the CCA counters: standard ones from /proc and /sys, custom ones from
//!   ccad.conf and its named pipes, streamed to the host.
//! - [`local`]: the local API socket server.
//! - [`api`]: the local API's JSON-lines messages.
//! - [`client`]: a blocking client for applications.
//! - [`cli`]: the `appmon` command, and its exit codes.
//! - [`config`]: the configuration file, `/etc/appmon/guest.toml`.
//! - [`config_base`]: what every table of that file shares (its error, the seconds rule).
//! - [`monitors`]: application monitors (PowerHA's process and custom monitors): their own
//!   pure machine and the task that runs it; they reach the host through the daemon.
//! - [`exec`]: runs a command once with bounded time and output (the monitors' checks and
//!   commands).
//! - [`logging`]: tracing to stderr.
//! - [`users`]: user names resolved from `/etc/passwd` and `/etc/group`.
//! - `testing` (cargo feature `testing`): the daemon on a thread of its own, for tests here and
//!   in the host agent.
//!
//! # Which module uses which
//!
//! Every use points one way; `tests/modules.rs` reads the `crate::` paths of each module and
//! checks them against this list, which has no cycle:
//!
//! - `api`, `users`, `exec`, `config_base`: nothing of this crate
//! - `machine` → `api`
//! - `inbox` → `api`, `machine`
//! - `transport` → `inbox`, `machine`
//! - `counters` → `inbox`, `machine`
//! - `processes` → `machine`, `users`
//! - `monitors` → `api`, `config_base`, `exec`, `inbox`, `machine`, `users`
//! - `config` → `config_base`, `counters`, `monitors`, `processes`
//! - `logging` → `config`
//! - `local` → `api`, `inbox`, `transport`
//! - `daemon` → `api`, `config`, `counters`, `inbox`, `local`, `logging`, `machine`, `monitors`,
//!   `processes`, `transport`
//! - `testing` → `config`, `daemon`
//! - `client` → `api`, `config`
//! - `cli` → `api`, `client`, `config`

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod config_base;
pub mod counters;
pub mod daemon;
pub mod exec;
pub mod inbox;
pub mod local;
pub mod logging;
pub mod machine;
pub mod monitors;
pub mod processes;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
pub mod users;

/// The agent's name and version, as its Hello and `appmon status` show it.
pub fn agent_name() -> String {
    format!("appmon-guest {}", env!("CARGO_PKG_VERSION"))
}
