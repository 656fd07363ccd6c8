//! `appmon-host`: the host agent daemon. All logic lives in the library; this wires signals,
//! logging and the libvirt backend.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use appmon_host_agent::config::{Config, DEFAULT_CONFIG_PATH};
use appmon_host_agent::daemon::Args;
use appmon_libvirt_backend::{ConnectOptions, LibvirtHypervisor};
use appmon_systemd::notify::Notifier;
use appmon_wire::report::error_chain;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

fn load(path: &std::path::Path) -> Result<Config, String> {
    match Config::load(path) {
        Ok(c) => Ok(c),
        // A missing default file means: all defaults.
        Err(appmon_host_agent::config::ConfigError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound
                && path == std::path::Path::new(DEFAULT_CONFIG_PATH) =>
        {
            Ok(Config::default())
        }
        Err(e) => Err(error_chain(&e)),
    }
}

fn main() -> ExitCode {
    // First, while this is the only thread.
    let notifier = Notifier::from_env();
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    if appmon_systemd::journal::stderr_is_journal() {
        // journald stamps each line and reads the `<N>` priority.
        logs.event_format(appmon_systemd::journal::JournalFormat::default())
            .init();
    } else {
        // Colour codes only for a person at a terminal: a log file or syslog gets plain text.
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    if let Some(problem) = notifier.problem() {
        tracing::warn!("{problem}");
    }
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("appmon-host: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("appmon-host")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("appmon-host: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, args.config, notifier)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("appmon-host: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, config_path: PathBuf, notifier: Notifier) -> Result<(), String> {
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (reload_tx, reload) = mpsc::channel(4);
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP: {e}"))?;
    let stopping = notifier.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = hup.recv() => match load(&config_path) {
                    Ok(c) => { let _ = reload_tx.send(c).await; }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded"),
                },
            }
        }
        let _ = stopping.stopping();
        let _ = shutdown_tx.send(true);
    });

    // libvirtd may not be up yet: keep trying, off the runtime threads.
    let mut wait = shutdown.clone();
    let (hv, events) = loop {
        let uri = config.uri.clone();
        let options = ConnectOptions {
            reconnect_max: config.libvirt_reconnect_max,
            ..ConnectOptions::default()
        };
        match tokio::task::spawn_blocking(move || LibvirtHypervisor::open_with(&uri, options)).await
        {
            Ok(Ok(opened)) => break opened,
            Ok(Err(e)) => {
                tracing::error!(uri = %config.uri, error = %error_chain(&e), "cannot connect to libvirt; retrying in 5 s")
            }
            Err(e) => return Err(format!("libvirt connection task failed: {e}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = wait.changed() => return Ok(()),
        }
    };
    appmon_host_agent::daemon::run_notifying(
        config,
        Arc::new(hv),
        events,
        reload,
        shutdown,
        notifier,
    )
    .await
    .map_err(|e| error_chain(&e))
}
