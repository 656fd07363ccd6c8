//! The guest agent's configuration file (`Config::parse`): an operator's TOML, any text. No
//! panic; what parses is within range; an error names a line and column inside the text.
#![no_main]

use std::path::Path;

use appmon_guest_agent::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("guest.toml")) {
        Ok(config) => {
            assert!(config.socket_mode <= 0o777);
            assert!(config.port != 0 && config.port != u32::MAX);
            assert!(config.vsock || config.virtio_serial.is_some() || config.host_unix_socket.is_some());
        }
        Err(ConfigError::Parse { line, column, .. }) => {
            let lines = text.matches('\n').count() + 1;
            assert!((1..=lines).contains(&line), "line {line} of {lines}: {text:?}");
            assert!(column >= 1);
        }
        Err(_) => {}
    }
});
