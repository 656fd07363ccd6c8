//! What every table of the configuration file shares: the error that names the file, line,
//! column and key, and the rule for durations in seconds. A leaf: the subsystems' own tables
//! ([`crate::monitors::config`], ...) use it without using [`crate::config`], which uses them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use appmon_wire::report::{locate, TextPosition};
use serde::{Deserialize, Deserializer};

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {}{message}", key_prefix(key))]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
    #[error(
        "{path}: no host transport is on: set vsock = true, virtio_serial or host_unix_socket"
    )]
    NoHostTransport { path: PathBuf },
}

fn key_prefix(key: &Option<String>) -> String {
    match key {
        Some(key) => format!("key `{key}`: "),
        None => String::new(),
    }
}

/// A [`ConfigError::Parse`] for the byte `offset` of `text`, the file at `path`.
pub fn parse_error(text: &str, path: &Path, offset: usize, message: String) -> ConfigError {
    let TextPosition { line, column, key } = locate(text, offset);
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        key,
        message,
    }
}

/// A duration written as whole seconds, at most a day.
pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = i64::deserialize(d)?;
    match u64::try_from(secs) {
        Ok(s) if s <= 24 * 3600 => Ok(Duration::from_secs(s)),
        _ => Err(serde::de::Error::custom(format_args!(
            "{secs} is not a number of seconds between 0 and 86400"
        ))),
    }
}
