//! The settings every session shares, from the host agent's configuration.

use std::time::Duration;

use appmon_wire::{Capabilities, Hello};

use crate::config::SessionLimits;

/// The keepalive of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// A `Request Ping` this often.
    pub ping_interval: Duration,
    /// No frame at all for this long: the channel is dead.
    pub dead_after: Duration,
}

/// Session settings shared by all VMs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hello: Hello,
    pub hello_timeout: Duration,
    /// The keepalive of a dialed link.
    pub keepalive: Keepalive,
    pub reconnect_max: Duration,
    /// No announcement this long after a listener started: dial (see [`super::admission`]).
    pub dial_after: Duration,
    pub limits: SessionLimits,
}

impl SessionConfig {
    pub fn new(config: &crate::config::Config, host_boot_id: [u8; 16]) -> Self {
        SessionConfig {
            hello: Hello::new(
                format!("appmon-host {}", env!("CARGO_PKG_VERSION")),
                host_boot_id,
                // Counters: the guest agent sends its schema and values only to a host that
                // says it takes them (and speaks protocol 2).
                Capabilities::HEARTBEAT
                    | Capabilities::COUNTERS
                    | Capabilities::PROCESSES
                    | Capabilities::MONITORS,
            ),
            hello_timeout: config.hello_timeout,
            keepalive: Keepalive {
                ping_interval: config.ping_interval,
                dead_after: config.ping_interval * config.dead_after_pings,
            },
            reconnect_max: config.reconnect_max,
            dial_after: config.dial_after,
            limits: config.session.clone(),
        }
    }
}
