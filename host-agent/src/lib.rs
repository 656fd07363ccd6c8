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
//!   documentation is the policy: every rule of when to reset, what the guest is told and what
//!   it is answered is decided there, and nowhere else.
//! - [`managed`] — a managed application's launch/poll/restart policy (cmappmgr), a pure state
//!   machine with a virtual clock; the supervisor runs one per application of a VM.
//! - [`session`] — one task per monitored VM: [`session::machine`] is a session as a pure
//!   machine (handshake, keepalive, hostile-guest bounds, why a session ends),
//!   [`session::shell`] its thin I/O and the dial loop, [`session::endpoint`] the transports.
//! - [`supervisor`] — the one task that owns all VM state, timers and sessions, in rooms:
//!   its clock, each VM and its history ring, reconciliation with libvirt, the blocking libvirt
//!   calls, and the views `appmonctl` sees.
//! - [`counters`] — one VM's counters: the schema its guest sent and a bounded history per
//!   counter (pure; the supervisor keeps one per VM and feeds it what the session delivers).
//! - [`mon`] — MON's `/monapi`: its URLs parsed and bounded, its answers built from the VMs'
//!   counters and rendered as XML, JSON or UDL (pure), and the HTTP service around them.
//! - [`cluster`] — the Pacemaker shell: whether a cluster resource is started here (before an
//!   in-place reset) and `crm_resource --fail` when the policy escalates.
//! - [`config`] — `/etc/appmon/host.toml`.
//! - [`persist`] — the state directory (reset history and alarms across restarts).
//! - [`control`] — the local control socket; [`ctl`] — the `appmonctl` command line. Their
//!   schema (requests, answers, views, typed history) is the `appmon-control` crate's.
//! - [`daemon`] — wires them together for `appmon-host`.
//! - `testing` (cargo feature `testing`) — a scripted guest agent for the tests and benchmarks.
//!
//! Dependencies between the modules go one way: `policy`, `managed` and `counters` use none of
//! the others; `mon` uses `counters` and `config` (its HTTP service asks the supervisor over a
//! channel); `session` uses `policy` (the guest's requests) and `config`; `supervisor` uses all
//! of these; the control socket and `appmonctl` use only `appmon-control` and the backend's
//! spec.
//!
//! The tests and benchmarks run it against real libvirt (its test driver, in process or in a
//! private libvirtd) with scripted guest peers and the real guest agent on Unix sockets.
pub mod cluster;
pub mod config;
pub mod control;
pub mod counters;
pub mod ctl;
pub mod daemon;
pub mod managed;
pub mod mon;
pub mod persist;
pub mod policy;
pub mod session;
pub mod supervisor;
#[cfg(feature = "testing")]
pub mod testing;
