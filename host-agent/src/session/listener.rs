//! The session task of a VM whose guest agent announces itself (protocol 2): it listens where
//! the transport delivers guest → host connections, takes an announcement as the VM's session,
//! and dials only a guest agent that never announces (protocol 1).
//!
//! - Hybrid vsock: vhost-device-vsock turns a guest's connection to CID 2 port `P` into a
//!   connection to the Unix socket `<uds>_<P>`, which this task binds ([`Acceptor::bind_hybrid`])
//!   and removes when it ends.
//! - Kernel vhost-vsock: one AF_VSOCK listener of the host takes every guest's connection;
//!   [`super::vsock`] routes each to its VM's task by the peer's CID ([`Acceptor::Routed`]).
//!
//! A connection is first a *candidate*: it must send a Hello within the Hello timeout, and
//! that Hello must pass the version rule and [`Admission`] (rate, boot id). Until then it
//! touches nothing: a candidate that sends garbage or nothing is closed with a log line naming
//! the VM, and the live session goes on. An admitted announcement replaces the live session
//! (which ends as [`SessionEnd::Replaced`]) and is served by [`serve_framed`] on a quiet link:
//! the host answers the guest's Hello, sends what the supervisor asks, and sends no keepalive
//! of its own, so that nothing reaches a guest that rebooted under an idle connection.
//! [`HostCmd::Quiet`] (a reset or reboot under way) stops every dial until the next
//! announcement; [`HostCmd::CloseForReset`] also closes the live connection, while the guest
//! still runs, just before the host resets it.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use appmon_control::{ConnectFailure, ConnectFailureKind, SessionEnd};
use appmon_wire::report::error_chain;
use appmon_wire::{
    format_boot_id, negotiate, Frame, GuestMsg, Hello, HostCodec, HostMsg, WireMessage,
};
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::admission::{Admission, Verdict};
use super::endpoint::{Endpoint, GuestIo, SessionError};
use super::machine::{Link, LinkKind, Opening};
use super::messages::{HostCmd, SessionEvent, SessionMsg, VmId};
use super::settings::SessionConfig;
use super::shell::{frame_reader, serve_framed, Served};

/// Candidates read at once per VM; more are closed unread.
const MAX_CANDIDATES: usize = 4;
/// Log lines about connections closed unread, at most one per this long per VM.
const DROP_LOG_EVERY: Duration = Duration::from_secs(5);
/// The first pause between dials of a guest agent of protocol 1.
const DIAL_MIN: Duration = Duration::from_millis(250);

type Io = Box<dyn GuestIo>;

/// Where a VM's announcements come from.
pub enum Acceptor {
    /// The hybrid-vsock listening socket `<uds>_<port>`; removed when dropped.
    Unix {
        listener: UnixListener,
        path: SocketFile,
    },
    /// Connections the host's AF_VSOCK listener routed to this VM by its CID.
    Routed(super::vsock::Route),
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Acceptor::Unix { path, .. } => write!(f, "unix {}", path.path.display()),
            Acceptor::Routed(_) => f.write_str("routed AF_VSOCK"),
        }
    }
}

/// The Unix socket path where vhost-device-vsock delivers a guest's connections to host
/// port `port` of the VM whose backend socket is `uds`.
pub fn hybrid_listen_path(uds: &Path, port: u32) -> PathBuf {
    let mut path = uds.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// A socket file this task created; removed when dropped (the task ended or was aborted),
/// unless another has taken its path since (its inode tells).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    inode: Option<u64>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::symlink_metadata(&self.path).map(|m| m.ino());
        if self.inode.is_some() && ours.ok() == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Acceptor {
    /// Binds `<uds>_<port>`, replacing a socket file left there (by an earlier task of this
    /// VM, or an agent that died); refuses to touch a file that is not a socket.
    pub fn bind_hybrid(uds: &Path, port: u32) -> Result<Acceptor, SessionError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let path = hybrid_listen_path(uds, port);
        let fail = |source| SessionError::Listen {
            path: path.clone(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(fail(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                )));
            }
            std::fs::remove_file(&path).map_err(fail)?;
        }
        let listener = UnixListener::bind(&path).map_err(fail)?;
        let inode = std::fs::symlink_metadata(&path).ok().map(|m| m.ino());
        Ok(Acceptor::Unix {
            listener,
            path: SocketFile { path, inode },
        })
    }

    /// Describes where it listens, for logs and `show`.
    pub fn describe(&self) -> String {
        match self {
            Acceptor::Unix { path, .. } => format!("listening on {}", path.path.display()),
            Acceptor::Routed(_) => "listening on AF_VSOCK".to_owned(),
        }
    }

    async fn accept(&mut self) -> io::Result<Io> {
        match self {
            Acceptor::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                Ok(Box::new(stream))
            }
            Acceptor::Routed(route) => match route.rx.recv().await {
                Some(io) => Ok(io),
                None => std::future::pending().await,
            },
        }
    }
}

/// A candidate that said Hello: its reader (which may hold what followed the Hello), its
/// writer and the Hello.
struct Greeted {
    reader: FramedRead<ReadHalf<Io>, HostCodec>,
    writer: WriteHalf<Io>,
    hello: Hello,
}

/// Reads a candidate's first frame; it must be a Hello, within the Hello timeout.
async fn greet(io: Io, config: Arc<SessionConfig>) -> Result<Greeted, ConnectFailure> {
    use ConnectFailureKind as Kind;
    let (r, writer) = tokio::io::split(io);
    let mut reader = frame_reader(r, &config);
    let first = match timeout(config.hello_timeout, reader.next()).await {
        Err(_) => {
            let within = config.hello_timeout.as_millis();
            return Err(ConnectFailure::new(
                Kind::NoHello,
                format!("none within {within} ms"),
            ));
        }
        Ok(None) => {
            return Err(ConnectFailure::new(
                Kind::ClosedEarly,
                "closed with no Hello",
            ))
        }
        Ok(Some(Err(e))) => return Err(ConnectFailure::new(Kind::ReadFailed, e.to_string())),
        Ok(Some(Ok(Err(e)))) => return Err(ConnectFailure::new(Kind::NotAFrame, error_chain(&e))),
        Ok(Some(Ok(Ok(frame)))) => frame,
    };
    match first.msg {
        GuestMsg::Hello(hello) => Ok(Greeted {
            reader,
            writer,
            hello,
        }),
        other => Err(ConnectFailure::new(
            Kind::NotHelloFirst,
            format!("sent {} first", other.kind_name()),
        )),
    }
}

/// What a connection task tells the listener.
enum ConnEvent {
    /// Boxed: the queue of these, one per VM, allocates room for 32 when it is made.
    Session(Box<SessionEvent>),
    Ended(Served),
}

/// The live connection of a VM. Dropping it ends its task.
struct Current {
    conn: u64,
    dialed: bool,
    cmds: mpsc::Sender<HostCmd>,
    join: JoinHandle<()>,
}

impl Drop for Current {
    fn drop(&mut self) {
        self.join.abort();
    }
}

/// How a connection starts.
enum Start {
    /// An admitted announcement: the guest's Hello was read.
    Announced(Greeted),
    /// A dialed guest agent: the host speaks first and keeps the link alive.
    Dialed(Io),
}

type Pending<T> = FuturesUnordered<Pin<Box<dyn Future<Output = T> + Send>>>;

/// One VM's session task: see the module documentation. Runs until aborted or the
/// supervisor is gone.
#[allow(clippy::too_many_arguments)]
pub async fn listen(
    vm: VmId,
    task: u64,
    domain: String,
    mut acceptor: Acceptor,
    dial: Option<Endpoint>,
    config: Arc<SessionConfig>,
    to_supervisor: mpsc::Sender<SessionMsg>,
    mut cmds: mpsc::Receiver<HostCmd>,
) {
    let deliver = |event| {
        let tx = to_supervisor.clone();
        async move { tx.send(SessionMsg { vm, task, event }).await.is_ok() }
    };
    let dial_after = dial.as_ref().map(|_| config.dial_after);
    let mut admission = Admission::new(Instant::now().into_std(), dial_after);
    let mut candidates: Pending<Result<Greeted, ConnectFailure>> = FuturesUnordered::new();
    let mut dialing: Pending<Result<Io, SessionError>> = FuturesUnordered::new();
    let (conn_tx, mut conn_rx) = mpsc::channel::<(u64, ConnEvent)>(64);
    let mut current: Option<Current> = None;
    let mut next_conn = 1u64;
    let mut dial_pause = DIAL_MIN;
    let mut unread = 0u64;
    let mut unread_logged: Option<Instant> = None;
    // The domain is paused: no dial.
    let mut paused = false;
    tracing::info!(domain, at = %acceptor.describe(), "waiting for the guest agent to announce itself");
    loop {
        let dial_at = admission
            .next_dial()
            .filter(|_| current.is_none() && dialing.is_empty() && !paused)
            .map(Instant::from_std);
        tokio::select! {
            accepted = acceptor.accept() => match accepted {
                Ok(io) => {
                    let now = Instant::now();
                    if candidates.len() < MAX_CANDIDATES && admission.connection(now.into_std()) {
                        candidates.push(Box::pin(greet(io, config.clone())));
                    } else {
                        unread += 1;
                        if unread_logged.is_none_or(|at| now >= at + DROP_LOG_EVERY) {
                            tracing::warn!(domain, closed_unread = unread, "guest announces itself too often: connections closed unread");
                            unread_logged = Some(now);
                            unread = 0;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(domain, error = %e, "accepting a guest connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(greeted) = candidates.next() => {
                // Failures go to the supervisor, which logs and records changes of reason.
                let greeted = match greeted {
                    Ok(greeted) => greeted,
                    Err(failure) => {
                        if !deliver(SessionEvent::ConnectFailed(failure)).await {
                            return;
                        }
                        continue;
                    }
                };
                if let Err(err) = negotiate(&config.hello, &greeted.hello) {
                    let failure = ConnectFailure::new(ConnectFailureKind::Incompatible, err.to_string());
                    let mut writer = FramedWrite::new(greeted.writer, HostCodec::with_max_frame(config.limits.max_frame));
                    let _ = timeout(config.limits.write_timeout, writer.send(Frame::event(HostMsg::Error(err)))).await;
                    if !deliver(SessionEvent::ConnectFailed(failure)).await {
                        return;
                    }
                    continue;
                }
                let boot_id = greeted.hello.boot_id;
                match admission.hello(boot_id, Instant::now().into_std()) {
                    Verdict::Admit => {}
                    Verdict::OlderBoot => {
                        let detail = format!("boot {} is older than the current session's", format_boot_id(&boot_id));
                        let failure = ConnectFailure::new(ConnectFailureKind::OlderBoot, detail);
                        if !deliver(SessionEvent::ConnectFailed(failure)).await {
                            return;
                        }
                        continue;
                    }
                    Verdict::BeingReset => {
                        tracing::info!(domain, boot_id = %format_boot_id(&boot_id), "announcement refused: this boot is being reset");
                        continue;
                    }
                }
                if current.take().is_some()
                    && !deliver(SessionEvent::Closed { reason: SessionEnd::Replaced }).await
                {
                    return;
                }
                let conn = next_conn;
                next_conn += 1;
                current = Some(spawn_conn(conn, Start::Announced(greeted), &domain, &config, &conn_tx));
            }
            Some(dialed) = dialing.next() => match dialed {
                Ok(io) if current.is_none() && !admission.is_quiet() => {
                    dial_pause = DIAL_MIN;
                    let conn = next_conn;
                    next_conn += 1;
                    current = Some(spawn_conn(conn, Start::Dialed(io), &domain, &config, &conn_tx));
                }
                // An announcement came first, or the guest is being reset: not needed.
                Ok(_) => {}
                Err(e) => {
                    admission.dial_again(Instant::now().into_std(), dial_pause);
                    dial_pause = (dial_pause * 2).min(config.reconnect_max.max(DIAL_MIN));
                    if !deliver(SessionEvent::ConnectFailed(e.connect_failure())).await {
                        return;
                    }
                }
            },
            Some((conn, event)) = conn_rx.recv() => {
                let Some(live) = current.as_ref().filter(|c| c.conn == conn) else {
                    continue;
                };
                match event {
                    ConnEvent::Session(event) => {
                        let event = *event;
                        if let (true, SessionEvent::Hello { boot_id, .. }) = (live.dialed, &event) {
                            admission.record(*boot_id);
                        }
                        if !deliver(event).await {
                            return;
                        }
                    }
                    ConnEvent::Ended(Served::Stopped) => return,
                    ConnEvent::Ended(Served::Ended(reason)) => {
                        let dialed = live.dialed;
                        current = None;
                        tracing::warn!(domain, %reason, "guest session ended");
                        if !deliver(SessionEvent::Closed { reason }).await {
                            return;
                        }
                        if dialed {
                            admission.dial_again(Instant::now().into_std(), dial_pause);
                        }
                    }
                }
            }
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(HostCmd::CloseForReset) => {
                    admission.closed_for_reset(Instant::now().into_std());
                    dialing.clear();
                    if current.take().is_some()
                        && !deliver(SessionEvent::Closed { reason: SessionEnd::ClosedForReset }).await
                    {
                        return;
                    }
                }
                // No live connection: nothing to read.
                Some(HostCmd::Sync) if current.is_none() => {
                    if !deliver(SessionEvent::Synced).await {
                        return;
                    }
                }
                Some(cmd) => {
                    if let HostCmd::DomainPaused(now_paused) = cmd {
                        paused = now_paused;
                        if paused {
                            dialing.clear();
                        }
                    }
                    if cmd == HostCmd::Quiet {
                        admission.quiet();
                        dialing.clear();
                    }
                    if let Some(live) = &current {
                        if let Err(mpsc::error::TrySendError::Full(_)) = live.cmds.try_send(cmd) {
                            tracing::warn!(domain, "guest session is stuck: closing it");
                            current = None;
                            let reason = SessionEnd::WriteTimeout { after_ms: u64::try_from(config.limits.write_timeout.as_millis()).unwrap_or(u64::MAX) };
                            if !deliver(SessionEvent::Closed { reason }).await {
                                return;
                            }
                        }
                    }
                }
            },
            () = sleep_or_never(dial_at) => {
                admission.dialing();
                if let Some(endpoint) = dial.clone() {
                    let limit = config.hello_timeout.max(Duration::from_secs(1));
                    dialing.push(Box::pin(async move { endpoint.connect(limit).await }));
                }
            }
        }
    }
}

async fn sleep_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Serves a connection on a task of its own, reporting to the listener as connection `conn`.
fn spawn_conn(
    conn: u64,
    start: Start,
    domain: &str,
    config: &Arc<SessionConfig>,
    events: &mpsc::Sender<(u64, ConnEvent)>,
) -> Current {
    let (cmd_tx, mut cmd_rx) = mpsc::channel(super::SESSION_QUEUE);
    let (domain, config, events) = (domain.to_owned(), config.clone(), events.clone());
    let dialed = matches!(start, Start::Dialed(_));
    let join = tokio::spawn(async move {
        let tell = |event| {
            let events = events.clone();
            async move {
                events
                    .send((conn, ConnEvent::Session(Box::new(event))))
                    .await
                    .is_ok()
            }
        };
        let served = match start {
            Start::Announced(greeted) => {
                // Quiet: the guest keeps the link alive by speaking; the host never pings.
                let link = Link {
                    kind: LinkKind::Stream,
                    opening: Opening::GuestFirst,
                    keepalive: None,
                };
                let hello = Frame::event(GuestMsg::Hello(greeted.hello));
                serve_framed(
                    greeted.reader,
                    greeted.writer,
                    Some(hello),
                    link,
                    &config,
                    &domain,
                    &mut cmd_rx,
                    tell,
                )
                .await
            }
            Start::Dialed(io) => {
                let link = Link {
                    kind: LinkKind::Stream,
                    opening: Opening::HostFirst,
                    keepalive: Some(config.keepalive),
                };
                super::shell::serve_link(io, link, &config, &domain, &mut cmd_rx, tell).await
            }
        };
        let _ = events.send((conn, ConnEvent::Ended(served))).await;
    });
    Current {
        conn,
        dialed,
        cmds: cmd_tx,
        join,
    }
}

#[cfg(test)]
mod tests;
