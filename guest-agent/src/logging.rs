//! Logs through `tracing` to stderr: plain text without colours unless stderr is a terminal, so
//! syslog and the VM rig's console read it as it is; under systemd, journald's form (a `<N>`
//! priority, no timestamp: `appmon_systemd::journal`).

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, Registry};

use crate::config::LogLevel;

/// Changes the log level of a running daemon (on reload).
#[derive(Debug, Clone)]
pub struct LogHandle(reload::Handle<LevelFilter, Registry>);

impl LogHandle {
    pub fn set_level(&self, level: LogLevel) {
        let _ = self
            .0
            .modify(|filter| *filter = LevelFilter::from_level(level.as_tracing()));
    }
}

/// Installs the global subscriber. Returns `None` if one is installed already (tests).
pub fn init(level: LogLevel) -> Option<LogHandle> {
    let (filter, handle) = reload::Layer::new(LevelFilter::from_level(level.as_tracing()));
    let journal = appmon_systemd::journal::stderr_is_journal();
    let (plain, journald) = if journal {
        let output = fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(appmon_systemd::journal::JournalFormat::default());
        (None, Some(output))
    } else {
        let output = fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false);
        (Some(output), None)
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(journald)
        .try_init()
        .ok()?;
    Some(LogHandle(handle))
}
