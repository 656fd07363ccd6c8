//! The host agent's configuration file (`Config::parse`): an operator's TOML, any text. No
//! panic; what parses passes the checks; a parse error names a line and column inside the text.
#![no_main]

use std::path::Path;

use appmon_host_agent::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("host.toml")) {
        Ok(config) => {
            assert!(!config.defaults.failure_interval.is_zero());
            assert!(!config.defaults.reset_window.is_zero());
            assert!(!config.ping_interval.is_zero());
            assert!(config.dead_after_pings >= 1);
            assert!(config.session.frames_per_second >= 1 && config.session.burst >= 1);
            let _ = config.manages("vm-1");
        }
        Err(ConfigError::Parse { line, column, .. }) => {
            let lines = text.matches('\n').count() + 1;
            assert!((1..=lines).contains(&line), "line {line} of {lines}: {text:?}");
            assert!(column >= 1);
        }
        Err(_) => {}
    }
});
