//! Application monitors (PowerHA's, seeds/002): process monitors and custom monitors, in
//! startup, long-running or both modes, which start, restart and clean up the application they
//! watch and take a failure action once their restarts are used up: notify, stop the
//! application's heartbeats, or post needReset.
//!
//! - [`config`]: the `[[monitor]]` tables of the configuration file.
//! - [`machine`]: all of the monitors' logic, a pure state machine with a virtual clock.
//! - [`shell`]: the task that owns the machine, carries out its actions and reports to the
//!   daemon (events and states for the host, heartbeats withheld, needReset).
//! - [`process`]: process monitors' checks (`/proc`, pid files) and pidfd watches.
//! - [`custom`]: custom monitors' checks (a command, its exit code, its timeout).
//!
//! Commands run through [`crate::exec`].

pub mod config;
pub mod custom;
pub mod machine;
pub mod process;
pub mod shell;

pub use shell::{spawn, Handle};
