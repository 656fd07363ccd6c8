//! The `Hello` exchange, as a pure function of both hellos.
//!
//! Both sides send a [`Hello`] as their first frame: the side that opened the connection first,
//! the other in answer (see the crate primer for who opens it). Each then runs [`negotiate`] on
//! the pair: the session speaks the newest version both know, and the capabilities both have. A
//! peer that answers with `Error` of kind [`ErrorCode::IncompatibleVersion`] ends the session.

use crate::message::{Capabilities, ErrorCode, Hello, WireError};
use crate::text::{limits, Text};

/// The newest protocol version this build speaks.
///
/// - 1: the host dials the guest agent and speaks first.
/// - 2: the guest agent announces itself: it connects to the host and speaks first (the host
///   still dials a guest that spoke version 1); process output and release
///   (`ReadOutput`, `ReleaseProcess`, `Output`), monitor states (`Monitors`), and the
///   counter, process and monitor shapes that version 1 never sent.
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// What a session agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    pub version: u16,
    pub capabilities: Capabilities,
    pub peer_agent: Text<limits::AgentName>,
    pub peer_boot_id: [u8; 16],
}

impl Hello {
    /// A hello for this build's protocol range. An agent name over its limit is cut.
    pub fn new(agent: impl Into<String>, boot_id: [u8; 16], capabilities: Capabilities) -> Self {
        Hello {
            protocol: PROTOCOL_VERSION,
            min_protocol: MIN_PROTOCOL_VERSION,
            agent: Text::truncating(agent),
            boot_id,
            capabilities,
        }
    }
}

/// Agrees on a version and capabilities, or says why the two cannot talk.
pub fn negotiate(ours: &Hello, theirs: &Hello) -> Result<Agreement, WireError> {
    let version = ours.protocol.min(theirs.protocol);
    let floor = ours.min_protocol.max(theirs.min_protocol);
    if theirs.min_protocol > theirs.protocol || version < floor {
        return Err(WireError::new(
            ErrorCode::IncompatibleVersion {
                ours: ours.protocol,
                theirs: theirs.protocol,
            },
            format!(
                "{} speaks protocol {}..={}, we speak {}..={}",
                theirs.agent,
                theirs.min_protocol,
                theirs.protocol,
                ours.min_protocol,
                ours.protocol
            ),
        ));
    }
    Ok(Agreement {
        version,
        capabilities: ours.capabilities.intersection(theirs.capabilities),
        peer_agent: theirs.agent.clone(),
        peer_boot_id: theirs.boot_id,
    })
}

/// Parses a boot id in the form the kernel prints it (`/proc/sys/kernel/random/boot_id`).
pub fn parse_boot_id(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.trim().bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (byte, pair) in id.iter_mut().zip(hex.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(id)
}

/// Formats a boot id as the kernel does, for logs.
pub fn format_boot_id(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(min: u16, max: u16, caps: Capabilities) -> Hello {
        Hello {
            protocol: max,
            min_protocol: min,
            agent: Text::truncating(format!("peer {min}..={max}")),
            boot_id: [7; 16],
            capabilities: caps,
        }
    }

    #[test]
    fn overlapping_ranges_agree_on_the_newest_common_version() {
        let ours = hello(1, 3, Capabilities::HEARTBEAT);
        let theirs = hello(2, 5, Capabilities::HEARTBEAT);
        let agreed = negotiate(&ours, &theirs).expect("ranges overlap");
        assert_eq!(agreed.version, 3);
    }

    #[test]
    fn disjoint_ranges_are_an_incompatible_version_error() {
        let ours = hello(1, 1, Capabilities::HEARTBEAT);
        let theirs = hello(2, 4, Capabilities::HEARTBEAT);
        let err = negotiate(&ours, &theirs).expect_err("ranges do not overlap");
        assert_eq!(
            err.code,
            ErrorCode::IncompatibleVersion { ours: 1, theirs: 4 }
        );
    }

    #[test]
    fn inverted_peer_range_is_refused() {
        let ours = hello(1, 1, Capabilities::HEARTBEAT);
        let theirs = hello(3, 1, Capabilities::HEARTBEAT);
        assert!(negotiate(&ours, &theirs).is_err());
    }

    #[test]
    fn capabilities_are_the_intersection() {
        let ours = hello(1, 1, Capabilities::HEARTBEAT | Capabilities::PROCESSES);
        let theirs = hello(1, 1, Capabilities::HEARTBEAT | Capabilities::COUNTERS);
        let agreed = negotiate(&ours, &theirs).expect("same version");
        assert_eq!(agreed.capabilities, Capabilities::HEARTBEAT);
    }

    #[test]
    fn boot_id_round_trips_through_the_kernel_format() {
        let text = "0f3c2a8e-5b1d-4e6f-9a7b-c8d9e0f1a2b3";
        let id = parse_boot_id(text).expect("valid boot id");
        assert_eq!(format_boot_id(&id), text);
    }

    #[test]
    fn malformed_boot_ids_are_refused() {
        for bad in [
            "",
            "xyz",
            "0f3c2a8e-5b1d-4e6f-9a7b-c8d9e0f1a2",
            "zz3c2a8e5b1d4e6f9a7bc8d9e0f1a2b3",
        ] {
            assert_eq!(parse_boot_id(bad), None, "{bad:?}");
        }
    }
}
