//! appmon's host agent: resets a VM through libvirt when its application stops sending
//! heartbeats or asks for a reset, and never otherwise.
//!
//! # Modules
//!
//! - [`policy`]: the per-VM monitoring policy, a pure state machine with a virtual clock.
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod fake;
pub mod persist;
pub mod policy;
pub mod session;
pub mod sim;
pub mod supervisor;
