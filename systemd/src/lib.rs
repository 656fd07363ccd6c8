//! What appmon's two daemons need from systemd, and nothing when they run without it.
//!
//! - [`notify`]: the `sd_notify(3)` protocol written against its specification: `READY=1` once
//!   the daemon serves, `STOPPING=1`, and `WATCHDOG=1` keepalives. Only when the service manager set `NOTIFY_SOCKET`; otherwise every call is a
//!   no-op.
//! - [`watchdog`]: the keepalive task. It pets systemd's watchdog only after the daemon's owner
//!   task answered a probe, so a wedged owner (not merely a live runtime) gets the daemon
//!   restarted.
//! - `testing` (feature `testing`): a stand-in for the service manager's end, and the check
//!   every daemon's own test runs under it.
//! - [`journal`]: log lines for journald: no timestamp of our own (journald stamps every line)
//!   and a `<N>` syslog priority prefix, so `journalctl -p warning` filters appmon's lines.
//!
//! # Which module uses which
//!
//! `watchdog` → `notify`; `journal` stands alone.

pub mod journal;
pub mod notify;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watchdog;
