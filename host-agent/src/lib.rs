//! appmon's host agent: resets a VM through libvirt when its application stops sending
//! heartbeats or asks for a reset (needReset), and never otherwise.
//!
//! # Architecture
//!
//! ```text
//!  libvirt backend ──BackendEvent──┐
//!  (event-loop thread)             │
//!  session task per VM ─SessionMsg─┼──> supervisor task ──Action──> executors
//!  (bounded, shared queue)         │    owns every VmMachine,        spawn_blocking: reset,
//!  control socket ─ControlRequest──┘    deadline heap, sessions,     power-cycle, set_spec,
//!  (appmonctl)                          event history                lookups; writer thread:
//!                                                                    state files
//! ```
//!
//! # Modules
//!
//! - [`policy`] — the per-VM monitoring policy, a pure state machine with a virtual clock. Its
//!   documentation is the policy.
//! - [`managed`] — a managed application's launch/poll/restart policy (cmappmgr), a pure state
//!   machine with a virtual clock; not wired into the supervisor yet.
//! - [`supervisor`] — the one task that owns all VM state, timers and sessions.
//! - [`session`] — one task per monitored VM: transports, handshake, keepalive, hostile-guest
//!   bounds.
//! - [`config`] — `/etc/appmon/host.toml`.
//! - [`persist`] — the state directory (reset history and alarms across restarts).
//! - [`control`] — the local control socket; [`ctl`] — the `appmonctl` command line.
//! - [`daemon`] — wires them together for `appmon-host`.
//! - `testing` (cargo feature `testing`) — a scripted guest agent for the tests and benchmarks.
//!
//! The tests and benchmarks run it against real libvirt (its test driver, in process or in a
//! private libvirtd) with scripted guest peers and the real guest agent on Unix sockets.
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod managed;
pub mod persist;
pub mod policy;
pub mod session;
pub mod supervisor;
#[cfg(feature = "testing")]
pub mod testing;
