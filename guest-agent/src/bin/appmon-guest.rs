//! `appmon-guest`: the guest agent daemon. All logic is in the library (appmon_guest_agent).

use std::path::PathBuf;
use std::process::ExitCode;

use appmon_guest_agent::config::{Config, DEFAULT_CONFIG_PATH};
use appmon_guest_agent::daemon::Args;
use appmon_guest_agent::{daemon, logging};
use appmon_systemd::notify::Notifier;
use appmon_wire::report::error_chain;
use clap::Parser;

fn main() -> ExitCode {
    // First, while this is the only thread: taken out of the environment of what the agent starts.
    let notifier = Notifier::from_env();
    let args = Args::parse();
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let config = match &args.config {
        Some(path) => Config::load(path),
        None => Config::load_or_default(&path),
    };
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("appmon-guest: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    let log = logging::init(config.log_level);
    match daemon::run_daemon(config, Some(path), log, notifier) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", error_chain(e.as_ref()));
            eprintln!("appmon-guest: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
