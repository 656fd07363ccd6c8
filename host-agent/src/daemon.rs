//! Wires the daemon together: state directory, control socket, supervisor.

use std::path::PathBuf;
use std::sync::Arc;

use appmon_libvirt_backend::{BackendEvent, Hypervisor};
use appmon_systemd::notify::Notifier;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::control::{self, ControlError, ControlRequest};
use crate::mon;
use crate::persist::{PersistError, StateDir};
use crate::supervisor::{Inputs, Supervisor};
use appmon_wire::report::error_chain;

/// The appmon host agent: watches the applications in libvirt's domains and resets a domain
/// through libvirt when its application stops heartbeating or asks for a reset. SIGHUP reloads
/// the configuration; SIGTERM stops.
#[derive(Debug, clap::Parser)]
#[command(name = "appmon-host", version)]
pub struct Args {
    /// Configuration file. A missing default file means every setting at its default.
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Check the configuration and exit (0 good, 2 broken).
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("state directory")]
    State(#[from] PersistError),
    #[error("control socket")]
    Control(#[from] ControlError),
    #[error("cannot listen for MON's HTTP service on {addr}")]
    Mon {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A fresh random id for this host-agent start, sent in every Hello.
pub fn host_boot_id() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

/// Runs the daemon until `shutdown` turns true. `backend` is the hypervisor's event channel.
pub async fn run(
    config: Config,
    hv: Arc<dyn Hypervisor>,
    backend: mpsc::UnboundedReceiver<BackendEvent>,
    reload: mpsc::Receiver<Config>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    run_notifying(config, hv, backend, reload, shutdown, Notifier::default()).await
}

/// [`run`], telling systemd through `notifier` when the control socket serves (`READY=1`) and
/// petting its watchdog while the supervisor answers.
pub async fn run_notifying(
    config: Config,
    hv: Arc<dyn Hypervisor>,
    backend: mpsc::UnboundedReceiver<BackendEvent>,
    reload: mpsc::Receiver<Config>,
    shutdown: watch::Receiver<bool>,
    notifier: Notifier,
) -> Result<(), DaemonError> {
    let state = StateDir::open(&config.state_dir)?;
    let (records, problems) = state.load_all()?;
    for problem in &problems {
        tracing::error!(error = %error_chain(problem), "state file ignored: that VM starts with an empty reset history");
    }
    tracing::info!(dir = %state.path().display(), vms = records.len(), "reset history loaded");
    let writer = state.writer()?;
    // MON's port before the control socket: a port in use fails the start with nothing to undo.
    let mon_listener = match config.mon.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Mon { addr, source })?,
        ),
        None => None,
    };
    let listener = control::bind(&config.control_socket)?;
    let socket = config.control_socket.clone();
    tracing::info!(socket = %socket.display(), uri = %config.uri, "appmon-host ready");
    let (control_tx, control_rx) = mpsc::channel(64);
    // The supervisor answers a control request only from its loop: a keepalive proves the loop.
    let probe = control_tx.clone();
    let watchdog = appmon_systemd::watchdog::spawn(notifier.clone(), move || {
        let probe = probe.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            probe.send((ControlRequest::List, reply)).await.is_ok() && answer.await.is_ok()
        }
    });
    let server = tokio::spawn(control::serve(listener, control_tx, shutdown.clone()));
    let (mon_tx, mon_rx) = mpsc::channel(256);
    let render_cache = config.mon.render_cache;
    let mon_config = config.mon.clone();
    let views_dir = config.state_dir.join("views");
    let supervisor = Supervisor::new(config, hv, writer, records, host_boot_id());
    let mon = mon_listener.map(|listener| {
        let views = mon::page::views::ViewStore::new(views_dir);
        let router = mon::http::router(mon_tx.clone(), &mon_config, views);
        let router = match render_cache {
            true => mon::http::with_render_cache(router, supervisor.mon_epoch()),
            false => router,
        };
        tokio::spawn(mon::http::serve(listener, router, shutdown.clone()))
    });
    if let Err(e) = notifier.ready(&format!("control socket {}", socket.display())) {
        tracing::warn!(error = %e, "cannot tell systemd the agent is ready");
    }
    supervisor
        .run(Inputs {
            backend,
            control: control_rx,
            reload,
            mon: mon_rx,
            shutdown,
        })
        .await;
    server.abort();
    drop(mon_tx);
    if let Some(mon) = mon {
        mon.abort();
    }
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!("appmon-host stopped");
    Ok(())
}
