//! The I/O shell around [`Machine`]: one task owns the machine and everything it decides about.
//!
//! Listener tasks turn host connections into link tasks, the local API turns application
//! requests into inputs, and all of them talk to the owner task through one bounded channel of
//! [`Input`]s. The owner feeds the machine, carries out its actions (frames to links through
//! their queues, answers to applications through one-shot channels, closes), sleeps until the
//! machine's next deadline, and handles reload and shutdown. Nothing else touches the state.

use appmon_wire::report::error_chain;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use appmon_wire::{Capabilities, Frame, GuestMsg, HostMsg, Tag};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::api::ApiResponse;
use crate::config::{Config, ConfigError};
use crate::inbox::{Input, LinkCmd, Transport};
use crate::local::{self, LocalError};
use crate::logging::LogHandle;
use crate::machine::{Action, Event, LinkId, Machine, Settings, Ticket};
use crate::monitors;
use crate::processes::ProcessManager;
use crate::transport::{self, TransportError};
use appmon_systemd::notify::Notifier;

/// Where the kernel tells this boot's id.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// Inputs queued for the owner task.
const INPUT_QUEUE: usize = 64;

/// The daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("host transport")]
    Transport(#[from] TransportError),
    #[error("local API socket")]
    Local {
        path: PathBuf,
        #[source]
        source: LocalError,
    },
    #[error("configuration")]
    Config(#[from] ConfigError),
}

/// Knobs that are not configuration: the protocol's timeouts, shortened by tests.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub hello_timeout: Duration,
    pub request_timeout: Duration,
    /// The boot id to announce; `None` reads [`BOOT_ID_PATH`].
    pub boot_id: Option<[u8; 16]>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            hello_timeout: crate::machine::HELLO_TIMEOUT,
            request_timeout: crate::machine::REQUEST_TIMEOUT,
            boot_id: None,
        }
    }
}

/// Controls a running daemon.
#[derive(Debug, Clone)]
pub struct DaemonHandle {
    inputs: mpsc::Sender<Input>,
}

impl DaemonHandle {
    /// Asks the daemon to read its configuration file again.
    pub async fn reload(&self) {
        let _ = self.inputs.send(Input::Reload).await;
    }

    /// Asks the daemon to stop.
    pub async fn shutdown(&self) {
        let _ = self.inputs.send(Input::Shutdown).await;
    }

    /// Whether the owner task answers a request (the systemd watchdog's probe).
    pub async fn answers(&self) -> bool {
        let (reply, answer) = oneshot::channel();
        let request = Input::App {
            request: crate::api::ApiRequest::Status,
            reply,
        };
        self.inputs.send(request).await.is_ok() && answer.await.is_ok()
    }

    /// Whether the daemon has stopped.
    pub fn is_stopped(&self) -> bool {
        self.inputs.is_closed()
    }
}

struct LinkEntry {
    commands: mpsc::Sender<LinkCmd>,
    transport: Transport,
}

/// A running listener and what it owns on disk.
struct Listener {
    task: JoinHandle<()>,
    socket: Option<PathBuf>,
}

impl Listener {
    fn stop(self) {
        self.task.abort();
        if let Some(path) = self.socket {
            remove_socket(&path);
        }
    }
}

/// The daemon: the machine's owner task and its listeners.
pub struct Daemon {
    config: Config,
    config_path: Option<PathBuf>,
    machine: Machine,
    /// The processes launched for the host: they belong to the agent, not to a session.
    processes: ProcessManager,
    inputs: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Input>,
    links: HashMap<LinkId, LinkEntry>,
    waiting: HashMap<Ticket, oneshot::Sender<ApiResponse>>,
    next_ticket: Ticket,
    host_listeners: HashMap<Transport, Listener>,
    api: Option<Listener>,
    log: Option<LogHandle>,
    /// The counters subsystem, when `[counters] enabled`.
    counters: Option<crate::counters::Counters>,
    /// The application monitors' task, when any are configured.
    monitors: Option<monitors::Handle>,
    /// Seeds the jitter of the announcements: differs between guests and boots.
    jitter_seed: u64,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("config", &self.config)
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Binds every configured transport and the local API socket. Must run inside a tokio
    /// runtime. `config_path` is what [`Input::Reload`] reads again.
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
        tuning: Tuning,
        log: Option<LogHandle>,
    ) -> Result<(Daemon, DaemonHandle), DaemonError> {
        let boot_id = tuning.boot_id.unwrap_or_else(read_boot_id);
        let mut settings = Settings::new(crate::agent_name(), boot_id);
        settings.reenable_heartbeat_window = config.reenable_heartbeat_window;
        settings.hello_timeout = tuning.hello_timeout;
        settings.request_timeout = tuning.request_timeout;
        settings.capabilities = settings.capabilities | Capabilities::PROCESSES;
        if config.counters.enabled {
            settings.capabilities = settings.capabilities | Capabilities::COUNTERS;
        }
        if !config.monitors.is_empty() {
            settings.capabilities = settings.capabilities | Capabilities::MONITORS;
        }
        let (inputs, rx) = mpsc::channel(INPUT_QUEUE);
        let mut daemon = Daemon {
            config: config.clone(),
            config_path,
            machine: Machine::new(settings),
            processes: ProcessManager::new(config.processes.clone()),
            inputs: inputs.clone(),
            rx,
            links: HashMap::new(),
            waiting: HashMap::new(),
            next_ticket: 1,
            host_listeners: HashMap::new(),
            api: None,
            log,
            counters: None,
            monitors: None,
            jitter_seed: jitter_seed(&boot_id),
        };
        // The API socket last: once applications can connect, the agent is fully up.
        let started = daemon
            .start_host_transports(&config)
            .and_then(|()| daemon.start_api(&config));
        if let Err(e) = started {
            daemon.stop_listeners();
            return Err(e);
        }
        if config.counters.enabled {
            let counters =
                crate::counters::Counters::start(config.counters.clone(), inputs.clone());
            daemon.counters = Some(counters);
        }
        daemon.start_monitors(&config, false);
        info!(
            agent = %crate::agent_name(),
            boot_id = %appmon_wire::format_boot_id(&boot_id),
            "guest agent started"
        );
        Ok((daemon, DaemonHandle { inputs }))
    }

    /// Runs until [`Input::Shutdown`].
    pub async fn run(mut self) {
        loop {
            let deadline = self
                .machine
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            let input = tokio::select! {
                input = self.rx.recv() => input,
                () = sleep_until(deadline) => {
                    self.feed(Event::Tick);
                    continue;
                }
                exit = self.processes.next_exit() => {
                    for event in self.processes.on_exit(exit) {
                        self.feed(event);
                    }
                    continue;
                }
            };
            match input {
                Some(Input::Shutdown) | None => break,
                Some(Input::Reload) => {
                    self.reload();
                    // ccad.conf is read again even when guest.toml is absent or broken.
                    if let Some(counters) = &self.counters {
                        counters.reload(&self.config.counters);
                    }
                }
                Some(Input::LinkUp {
                    link,
                    kind,
                    opening,
                    transport,
                    description,
                    commands,
                }) => {
                    self.links.insert(
                        link,
                        LinkEntry {
                            commands,
                            transport,
                        },
                    );
                    self.feed(Event::LinkUp {
                        link,
                        kind,
                        opening,
                        transport: description,
                    });
                }
                Some(Input::Event(event)) => {
                    if let Event::LinkDown { link, .. } = event {
                        self.links.remove(&link);
                    }
                    if let Event::Frame {
                        frame:
                            Frame {
                                msg: HostMsg::Hello(_),
                                ..
                            },
                        ..
                    } = &event
                    {
                        // A new session's State carries the table with today's byte counts.
                        let table = self.processes.table_event();
                        self.feed(table);
                    }
                    self.feed(event);
                }
                Some(Input::App {
                    request: crate::api::ApiRequest::Monitors,
                    reply,
                }) if self.monitors.is_some() => {
                    if let Some(monitors) = &self.monitors {
                        monitors.list(reply);
                    }
                }
                Some(Input::App { request, reply }) => {
                    let ticket = self.next_ticket;
                    self.next_ticket += 1;
                    self.waiting.insert(ticket, reply);
                    self.feed(Event::App { ticket, request });
                }
            }
        }
        self.shut_down().await;
    }

    fn feed(&mut self, event: Event) {
        let now = tokio::time::Instant::now().into_std();
        for action in self.machine.handle(event, now) {
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Send { link, frame } => self.command_link(link, LinkCmd::Send(frame)),
            Action::Resync { link } => self.command_link(link, LinkCmd::Resync),
            Action::Close { link, reason } => {
                self.command_link(link, LinkCmd::Close(reason));
            }
            Action::Answer { ticket, response } => {
                if let Some(reply) = self.waiting.remove(&ticket) {
                    // The application may have gone; its request took effect all the same.
                    let _ = reply.send(response);
                }
            }
            Action::HostRequest { session, id, msg } => {
                for event in self.processes.request(session, id, msg) {
                    self.feed(event);
                }
            }
            Action::SessionEstablished {
                session,
                version,
                capabilities,
            } => {
                debug!(session, "host session established");
                if let Some(counters) = &self.counters {
                    counters.session_established(version, capabilities);
                }
                if let Some(monitors) = &self.monitors {
                    monitors.session_established();
                }
            }
        }
    }

    fn command_link(&mut self, link: LinkId, command: LinkCmd) {
        let Some(entry) = self.links.get(&link) else {
            return;
        };
        match entry.commands.try_send(command) {
            Ok(()) => {}
            // A heartbeat behind a full queue adds nothing to the ones queued before it: an
            // application that beats faster than the host reads must not cost the session.
            // Nor must a sample of counter values: the next one supersedes it.
            Err(mpsc::error::TrySendError::Full(LinkCmd::Send(Frame {
                tag: Tag::Event,
                msg: GuestMsg::MarkActive | GuestMsg::CounterValues(_),
            }))) => debug!(
                link,
                "heartbeat or counter values dropped: the host link's queue is full"
            ),
            Err(_) => {
                // Its queue is full (the host does not read) or its task is gone: dropping
                // the only sender ends the task, which reports the link down.
                warn!(link, "host link does not keep up; closing it");
                self.links.remove(&link);
            }
        }
    }

    fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            info!("reload asked, but the agent runs without a configuration file");
            return;
        };
        let new = match Config::load(&path) {
            Ok(new) => new,
            Err(e) => {
                error!(error = %error_chain(&e), "configuration not reloaded; keeping the running one");
                return;
            }
        };
        info!(path = %path.display(), "reloading configuration");
        if let Some(log) = &self.log {
            log.set_level(new.log_level);
        }
        self.machine
            .set_reenable_heartbeat_window(new.reenable_heartbeat_window);
        self.processes.set_config(new.processes.clone());
        let old = self.config.clone();
        if !old.same_api_socket(&new) {
            if let Some(api) = self.api.take() {
                api.stop();
            }
            if let Err(e) = self.start_api(&new) {
                error!(error = %error_chain(&e), "local API socket not moved; applications cannot reach the agent");
            }
        } else if old.socket_mode != new.socket_mode || old.socket_group != new.socket_group {
            if let Err(e) =
                local::set_access(&new.socket, new.socket_mode, new.socket_group.as_deref())
            {
                error!(error = %error_chain(&e), "local API socket access not changed");
            }
        }
        if !old.same_host_transports(&new) {
            self.restart_host_transports(&old, &new);
        }
        if old.monitors != new.monitors {
            match &self.monitors {
                Some(monitors) if !new.monitors.is_empty() => monitors.reload(new.monitors.clone()),
                _ => self.start_monitors(&new, true),
            }
        }
        self.config = new;
    }

    /// Starts (or, without any configured, stops) the application monitors' task.
    fn start_monitors(&mut self, config: &Config, adopt: bool) {
        self.monitors = (!config.monitors.is_empty())
            .then(|| monitors::spawn(config.monitors.clone(), self.inputs.clone(), adopt));
    }

    /// Restarts the host transports whose settings changed; the others, and a session on
    /// them, stay as they are.
    fn restart_host_transports(&mut self, old: &Config, new: &Config) {
        let changed = [
            (
                Transport::Vsock,
                old.vsock != new.vsock || old.port != new.port,
            ),
            (
                Transport::Unix,
                old.host_unix_socket != new.host_unix_socket,
            ),
            (Transport::Serial, old.virtio_serial != new.virtio_serial),
        ];
        for (transport, changed) in changed {
            if !changed {
                continue;
            }
            if let Some(listener) = self.host_listeners.remove(&transport) {
                listener.stop();
            }
            let links: Vec<LinkId> = self
                .links
                .iter()
                .filter(|(_, l)| l.transport == transport)
                .map(|(id, _)| *id)
                .collect();
            for link in links {
                // A serial link ran inside the aborted task: tell the machine it is gone.
                // A stream link is told to close and reports itself down.
                if transport == Transport::Serial {
                    self.links.remove(&link);
                    self.feed(Event::LinkDown {
                        link,
                        reason: "transport removed by a reload".into(),
                    });
                } else {
                    self.command_link(link, LinkCmd::Close("transport changed by a reload".into()));
                }
            }
            if let Err(e) = self.start_host_transport(transport, new) {
                error!(error = %error_chain(&e), ?transport, "host transport not started");
            }
        }
    }

    fn start_api(&mut self, config: &Config) -> Result<(), DaemonError> {
        let listener = local::bind(
            &config.socket,
            config.socket_mode,
            config.socket_group.as_deref(),
        )
        .map_err(|source| DaemonError::Local {
            path: config.socket.clone(),
            source,
        })?;
        info!(path = %config.socket.display(), mode = %format_args!("{:04o}", config.socket_mode), "local API socket listening");
        let task = tokio::spawn(local::serve(listener, self.inputs.clone()));
        self.api = Some(Listener {
            task,
            socket: Some(config.socket.clone()),
        });
        Ok(())
    }

    fn start_host_transports(&mut self, config: &Config) -> Result<(), DaemonError> {
        for transport in [Transport::Vsock, Transport::Unix, Transport::Serial] {
            self.start_host_transport(transport, config)?;
        }
        Ok(())
    }

    fn start_host_transport(
        &mut self,
        transport: Transport,
        config: &Config,
    ) -> Result<(), DaemonError> {
        let inputs = self.inputs.clone();
        let listener = match transport {
            Transport::Vsock if config.vsock => {
                // Announce to the host (protocol 2) and listen for a host that dials (1).
                let listener = transport::bind_vsock(config.port)?;
                info!(
                    port = config.port,
                    "listening for the host on AF_VSOCK; announcing this guest to it (CID 2)"
                );
                let (port, seed) = (config.port, self.jitter_seed);
                Listener {
                    task: tokio::spawn(async move {
                        tokio::join!(
                            transport::serve_vsock(listener, inputs.clone()),
                            transport::announce_vsock(port, seed, inputs),
                        );
                    }),
                    socket: None,
                }
            }
            Transport::Unix => {
                let Some(path) = &config.host_unix_socket else {
                    return Ok(());
                };
                let listener: UnixListener = transport::bind_unix(path)?;
                info!(path = %path.display(), "listening for the host on a Unix socket");
                Listener {
                    task: tokio::spawn(transport::serve_unix(listener, inputs)),
                    socket: Some(path.clone()),
                }
            }
            Transport::Serial => {
                let Some(path) = &config.virtio_serial else {
                    return Ok(());
                };
                info!(path = %path.display(), "serving the host on a virtio-serial port");
                Listener {
                    task: tokio::spawn(transport::serve_serial(path.clone(), inputs)),
                    socket: None,
                }
            }
            Transport::Vsock => return Ok(()),
        };
        self.host_listeners.insert(transport, listener);
        Ok(())
    }

    fn stop_listeners(&mut self) {
        if let Some(api) = self.api.take() {
            api.stop();
        }
        for (_, listener) in self.host_listeners.drain() {
            listener.stop();
        }
    }

    async fn shut_down(&mut self) {
        info!("stopping");
        self.counters = None;
        // Checks and commands under way are killed; the applications run on.
        self.monitors = None;
        self.stop_listeners();
        let mut open: Vec<LinkId> = Vec::new();
        for (link, entry) in self.links.drain() {
            // A virtio-serial link ran inside its listener's task, stopped above.
            if entry.transport == Transport::Serial {
                continue;
            }
            if entry
                .commands
                .try_send(LinkCmd::Close("agent stopping".into()))
                .is_ok()
            {
                open.push(link);
            }
        }
        // Let the link tasks send what is queued and close; each bounds its own close.
        let closing = async {
            while !open.is_empty() {
                match self.rx.recv().await {
                    Some(Input::Event(Event::LinkDown { link, .. })) => open.retain(|l| *l != link),
                    Some(_) => {}
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
        self.processes.stop().await;
        info!("stopped");
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "cannot remove socket file");
        }
    }
}

/// A seed for the announcements' jitter: the boot id folded, mixed with the time.
fn jitter_seed(boot_id: &[u8; 16]) -> u64 {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos().into());
    for chunk in boot_id.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        seed ^= u64::from_le_bytes(word);
    }
    seed
}

/// This boot's id; zeros (and a warning) where the kernel does not tell it.
pub fn read_boot_id() -> [u8; 16] {
    match std::fs::read_to_string(BOOT_ID_PATH) {
        Ok(text) => match appmon_wire::parse_boot_id(&text) {
            Some(id) => id,
            None => {
                warn!(path = BOOT_ID_PATH, "malformed boot id; announcing zeros");
                [0; 16]
            }
        },
        Err(e) => {
            warn!(path = BOOT_ID_PATH, error = %e, "cannot read the boot id; announcing zeros");
            [0; 16]
        }
    }
}

/// SIGHUP, SIGINT and SIGTERM, caught from the moment this is called.
pub fn catch_signals() -> std::io::Result<signal_hook_tokio::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    signal_hook_tokio::Signals::new([SIGHUP, SIGINT, SIGTERM])
}

/// Forwards SIGHUP to [`Input::Reload`] and SIGTERM/SIGINT to [`Input::Shutdown`] (telling
/// systemd the daemon stops).
pub fn forward_signals(
    mut signals: signal_hook_tokio::Signals,
    handle: DaemonHandle,
    notifier: Notifier,
) -> JoinHandle<()> {
    use futures::StreamExt;
    tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            if signal == signal_hook::consts::SIGHUP {
                info!("SIGHUP: reloading the configuration");
                handle.reload().await;
            } else {
                info!(signal, "stop signal");
                let _ = notifier.stopping();
                handle.shutdown().await;
                return;
            }
        }
    })
}

/// Everything `appmon-guest` does after parsing its arguments: start, tell systemd it is ready
/// (when `notifier` has a service manager), serve with watchdog keepalives, stop on a signal.
/// Runs on a current-thread runtime: the agent is small and mostly idle.
pub fn run_daemon(
    config: Config,
    config_path: Option<PathBuf>,
    log: Option<LogHandle>,
    notifier: Notifier,
) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Caught before any socket exists: a signal sent as soon as the agent answers is
        // handled, not fatal.
        let signals = catch_signals()?;
        let (daemon, handle) = Daemon::start(config, config_path, Tuning::default(), log)?;
        if let Some(problem) = notifier.problem() {
            warn!("{problem}");
        }
        if let Err(e) = notifier.ready("serving applications and the host") {
            warn!(error = %e, "cannot tell systemd the agent is ready");
        }
        let probe = handle.clone();
        let watchdog = appmon_systemd::watchdog::spawn(notifier.clone(), move || {
            let probe = probe.clone();
            async move { probe.answers().await }
        });
        let signals = forward_signals(signals, handle, notifier);
        daemon.run().await;
        signals.abort();
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        Ok(())
    })
}

/// The appmon guest agent: serves the host agent over vsock (or virtio-serial) and
/// applications over a local socket. SIGHUP reloads the configuration; SIGTERM stops.
#[derive(Debug, clap::Parser)]
#[command(name = "appmon-guest", version)]
pub struct Args {
    /// Configuration file. Without this option, /etc/appmon/guest.toml is read if it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration and exit (0 good, 2 broken).
    #[arg(long)]
    pub check: bool,
}
