//! One task per monitored VM: connects to the guest agent, speaks the session protocol, and
//! relays what the guest says to the supervisor as typed [`SessionMsg`]s.
//!
//! # Protocol (host side)
//!
//! 1. Connect by the spec's transport and send `Event Hello`. The guest answers `Event Hello`
//!    (its boot id) and `Event State`; once the State is in, the supervisor pushes `Event
//!    AppStatus` with the current status, on every connection (see [`crate::policy`]).
//!    Incompatible versions get `Error(IncompatibleVersion)` and the session ends. A guest
//!    silent for `hello_timeout` after the connection is dropped.
//! 2. Requests (`Enable`, `Disable`, `PostAppState`, `GetAppStatus`, `IsEnabled`) go to the
//!    supervisor, which answers through [`HostCmd::Reply`]; `Ping` is answered here. Heartbeats
//!    (`Event MarkActive`) are stamped with their arrival time and forwarded. Requests this host
//!    agent does not handle get `Error(NotAllowed)`; an unknown message kind gets
//!    `Error(Unsupported)`; an `Error` is never answered.
//! 3. Every `ping_interval` the host sends `Request Ping`; a guest that sends no frame at all for
//!    `ping_interval * dead_after_pings` is dead: the session ends and reconnects.
//!
//! # Bounds against a hostile guest
//!
//! The codec's frame limit; a read buffer that starts small; a token bucket on received frames
//! whose exhaustion ends the session; a timeout on every write, so a guest that does not read
//! cannot hold the task; any frame error other than an unknown kind ends the session (on a
//! virtio-serial channel, which has no connection to end, bad frames are skipped and only the
//! token bucket ends it). A session's end is logged with the reason and never touches another
//! VM: each VM has its own task, its own command queue, and the shared queue to the supervisor is
//! only fed at the rate the token bucket allows.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use appmon_libvirt_backend::Transport;
use appmon_wire::{
    negotiate, AppState, Capabilities, ErrorCode, Frame, FrameError, GuestMsg, GuestState, Hello,
    HostCodec, HostMsg, RequestId, Tag, WireError,
};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::config::SessionLimits;

/// Identifies a VM inside the supervisor.
pub type VmId = u64;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no vsock CID: neither the spec nor the domain's <vsock> device names one")]
    NoCid,
    #[error("connecting to {endpoint} failed")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hybrid vsock handshake on {endpoint} failed")]
    Hybrid {
        endpoint: String,
        #[source]
        source: appmon_wire::hybrid::HybridError,
    },
    #[error("connecting to {endpoint} timed out")]
    ConnectTimeout { endpoint: String },
    #[error("the domain has no virtio-serial channel named {name} with a socket path")]
    NoChannel { name: String },
    #[error("looking up the channel {name} in the domain XML failed: {reason}")]
    ChannelLookup { name: String, reason: String },
}

/// Finds a channel's socket path in the live domain XML (blocking; run off the runtime).
pub type ChannelLookup = Arc<dyn Fn() -> Result<Option<PathBuf>, String> + Send + Sync>;

/// Where the guest agent is reached.
#[derive(Clone)]
pub enum Endpoint {
    /// vhost-user-vsock backend socket: `CONNECT <port>\n`, `OK <port>\n`.
    Hybrid { path: PathBuf, port: u32 },
    /// A virtio-serial channel's host-side socket.
    Channel { path: PathBuf },
    /// A virtio-serial channel found by name in the live XML at each connection attempt.
    ChannelByName { name: String, lookup: ChannelLookup },
    /// Kernel vhost-vsock. Never connected on a development machine.
    Vsock { cid: u32, port: u32 },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A connected byte stream to a guest.
pub trait GuestIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> GuestIo for T {}

impl Endpoint {
    /// The endpoint of a spec's transport. `domain_cid` is the CID of the domain's `<vsock>`.
    pub fn from_transport(
        transport: &Transport,
        domain_cid: Option<u32>,
        lookup: ChannelLookup,
    ) -> Result<Endpoint, SessionError> {
        Ok(match transport {
            Transport::HybridVsock { path, port } => Endpoint::Hybrid {
                path: path.clone(),
                port: *port,
            },
            Transport::Channel {
                path: Some(path), ..
            } => Endpoint::Channel { path: path.clone() },
            Transport::Channel { path: None, name } => Endpoint::ChannelByName {
                name: name.clone(),
                lookup,
            },
            Transport::Vsock { cid, port } => Endpoint::Vsock {
                cid: cid.or(domain_cid).ok_or(SessionError::NoCid)?,
                port: *port,
            },
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Endpoint::Hybrid { path, port } => {
                format!("hybrid vsock {} port {port}", path.display())
            }
            Endpoint::Channel { path } => format!("channel {}", path.display()),
            Endpoint::ChannelByName { name, .. } => format!("channel {name}"),
            Endpoint::Vsock { cid, port } => format!("vsock cid {cid} port {port}"),
        }
    }

    /// Whether the transport has connection boundaries (vsock) or not (virtio-serial).
    pub fn is_stream(&self) -> bool {
        !matches!(
            self,
            Endpoint::Channel { .. } | Endpoint::ChannelByName { .. }
        )
    }

    /// Connects, including the hybrid vsock handshake.
    pub async fn connect(&self, limit: Duration) -> Result<Box<dyn GuestIo>, SessionError> {
        let endpoint = self.describe();
        let attempt = async {
            match self {
                Endpoint::Hybrid { path, port } => {
                    let mut s = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|source| SessionError::Connect {
                            endpoint: endpoint.clone(),
                            source,
                        })?;
                    appmon_wire::hybrid::connect_handshake(&mut s, *port)
                        .await
                        .map_err(|source| SessionError::Hybrid {
                            endpoint: endpoint.clone(),
                            source,
                        })?;
                    Ok(Box::new(s) as Box<dyn GuestIo>)
                }
                Endpoint::Channel { path } => unix(path, &endpoint).await,
                Endpoint::ChannelByName { name, lookup } => {
                    let lookup = lookup.clone();
                    let found = tokio::task::spawn_blocking(move || lookup())
                        .await
                        .map_err(|e| SessionError::ChannelLookup {
                            name: name.clone(),
                            reason: e.to_string(),
                        })?
                        .map_err(|reason| SessionError::ChannelLookup {
                            name: name.clone(),
                            reason,
                        })?
                        .ok_or_else(|| SessionError::NoChannel { name: name.clone() })?;
                    unix(&found, &endpoint).await
                }
                Endpoint::Vsock { cid, port } => {
                    let addr = tokio_vsock::VsockAddr::new(*cid, *port);
                    let s = tokio_vsock::VsockStream::connect(addr)
                        .await
                        .map_err(|source| SessionError::Connect {
                            endpoint: endpoint.clone(),
                            source,
                        })?;
                    Ok(Box::new(s) as Box<dyn GuestIo>)
                }
            }
        };
        timeout(limit, attempt)
            .await
            .map_err(|_| SessionError::ConnectTimeout {
                endpoint: endpoint.clone(),
            })?
    }
}

async fn unix(path: &std::path::Path, endpoint: &str) -> Result<Box<dyn GuestIo>, SessionError> {
    let s = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| SessionError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
    Ok(Box::new(s))
}

/// A request from the guest that the supervisor answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRequest {
    Enable,
    Disable,
    PostAppState(AppState),
    GetAppStatus,
    IsEnabled,
}

/// What a session tells the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The handshake succeeded.
    Hello {
        boot_id: [u8; 16],
        agent: String,
    },
    State(GuestState),
    /// A heartbeat, stamped when its frame was read.
    Heartbeat {
        at: Instant,
    },
    /// `id` is `None` when the guest sent it as an event (no reply wanted).
    Request {
        id: Option<RequestId>,
        req: GuestRequest,
    },
    /// The connection ended (after a Hello or not); the task reconnects.
    Closed {
        reason: String,
    },
}

/// A [`SessionEvent`] with who it is from.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionMsg {
    pub vm: VmId,
    /// Which session task of the VM (a new task gets a new number).
    pub task: u64,
    pub event: SessionEvent,
}

/// What the supervisor tells a session.
#[derive(Debug, Clone, PartialEq)]
pub enum HostCmd {
    /// `Event AppStatus`.
    Status(appmon_wire::AppStatus),
    /// The answer to a request.
    Reply { id: RequestId, msg: HostMsg },
}

/// Session settings shared by all VMs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hello: Hello,
    pub hello_timeout: Duration,
    pub ping_interval: Duration,
    pub dead_after: Duration,
    pub reconnect_max: Duration,
    pub limits: SessionLimits,
}

impl SessionConfig {
    pub fn new(config: &crate::config::Config, host_boot_id: [u8; 16]) -> Self {
        SessionConfig {
            hello: Hello::new(
                format!("appmon-host {}", env!("CARGO_PKG_VERSION")),
                host_boot_id,
                Capabilities::HEARTBEAT,
            ),
            hello_timeout: config.hello_timeout,
            ping_interval: config.ping_interval,
            dead_after: config.ping_interval * config.dead_after_pings,
            reconnect_max: config.reconnect_max,
            limits: config.session.clone(),
        }
    }
}

/// One VM's session task: connects, serves, reconnects with backoff, until aborted.
pub async fn run(
    vm: VmId,
    task: u64,
    domain: String,
    endpoint: Endpoint,
    config: Arc<SessionConfig>,
    to_supervisor: mpsc::Sender<SessionMsg>,
    mut cmds: mpsc::Receiver<HostCmd>,
) {
    let min_backoff = Duration::from_millis(50);
    let mut backoff = min_backoff;
    let mut failures = 0u32;
    let send = |event| {
        let tx = to_supervisor.clone();
        async move { tx.send(SessionMsg { vm, task, event }).await.is_ok() }
    };
    loop {
        // Commands for a connection that is gone are of no use.
        while cmds.try_recv().is_ok() {}
        let connect_limit = config.hello_timeout.max(Duration::from_secs(1));
        match endpoint.connect(connect_limit).await {
            Ok(io) => {
                failures = 0;
                let started = Instant::now();
                let reason =
                    serve(io, endpoint.is_stream(), &config, &domain, &mut cmds, &send).await;
                match &reason {
                    End::Supervisor => return,
                    End::Reason(text) => {
                        tracing::warn!(domain, reason = %text, "guest session ended");
                        if !send(SessionEvent::Closed {
                            reason: text.clone(),
                        })
                        .await
                        {
                            return;
                        }
                    }
                }
                if started.elapsed() > config.reconnect_max {
                    backoff = min_backoff;
                }
            }
            Err(e) => {
                failures += 1;
                let text = appmon_wire::report::error_chain(&e);
                if failures == 1 {
                    tracing::warn!(domain, error = %text, "cannot reach the guest agent; retrying");
                } else {
                    tracing::debug!(domain, error = %text, failures, "still cannot reach the guest agent");
                }
            }
        }
        let wake = Instant::now() + backoff;
        backoff = (backoff * 2).min(config.reconnect_max.max(min_backoff));
        loop {
            tokio::select! {
                _ = sleep_until(wake) => break,
                cmd = cmds.recv() => if cmd.is_none() { return },
            }
        }
    }
}

/// Why a connection ended.
enum End {
    /// The supervisor dropped the command channel: stop for good.
    Supervisor,
    Reason(String),
}

/// A token bucket: `rate` tokens a second, at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token; `false` when there is none.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Serves one connection until it ends.
async fn serve<F, Fut>(
    io: Box<dyn GuestIo>,
    is_stream: bool,
    config: &SessionConfig,
    domain: &str,
    cmds: &mut mpsc::Receiver<HostCmd>,
    send: F,
) -> End
where
    F: Fn(SessionEvent) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let limits = &config.limits;
    let (r, mut w) = tokio::io::split(io);
    if !is_stream {
        // A lone delimiter ends whatever partial frame the guest's reader holds.
        match timeout(limits.write_timeout, w.write_all(&[appmon_wire::DELIMITER])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return End::Reason(format!("write failed: {e}")),
            Err(_) => return End::Reason("write timed out".into()),
        }
    }
    let mut reader = FramedRead::with_capacity(
        r,
        HostCodec::with_max_frame(limits.max_frame),
        limits.read_buffer,
    );
    let mut writer = FramedWrite::new(w, HostCodec::with_max_frame(limits.max_frame));
    // The default 8 KiB write buffer would be most of a session's memory; host frames are small
    // and the buffer grows on demand.
    *writer.write_buffer_mut() = bytes::BytesMut::with_capacity(limits.read_buffer);
    macro_rules! write {
        ($frame:expr) => {
            match timeout(limits.write_timeout, writer.send($frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return End::Reason(format!(
                        "write failed: {}",
                        appmon_wire::report::error_chain(&e)
                    ))
                }
                Err(_) => {
                    return End::Reason(format!(
                        "guest does not read: a write took more than {} ms",
                        limits.write_timeout.as_millis()
                    ))
                }
            }
        };
    }
    write!(Frame::event(HostMsg::Hello(config.hello.clone())));

    let start = Instant::now();
    let mut bucket = TokenBucket::new(limits.frames_per_second, limits.burst, start);
    let mut greeted = false;
    let mut last_rx = start;
    let mut next_ping = start + config.ping_interval;
    let mut ping_id: RequestId = 0;
    loop {
        let deadline = if greeted {
            next_ping.min(last_rx + config.dead_after)
        } else {
            start + config.hello_timeout
        };
        tokio::select! {
            item = reader.next() => {
                let now = Instant::now();
                let item = match item {
                    None => return End::Reason("guest closed the connection".into()),
                    Some(Err(e)) => return End::Reason(format!("read failed: {e}")),
                    Some(Ok(item)) => item,
                };
                if !bucket.take(now) {
                    return End::Reason(format!(
                        "guest floods: more than {} frames/s (burst {})",
                        limits.frames_per_second, limits.burst
                    ));
                }
                last_rx = now;
                let frame = match item {
                    Ok(frame) => frame,
                    Err(FrameError::UnknownKind { tag, kind, .. }) => {
                        tracing::debug!(domain, kind, "unknown message kind from the guest");
                        let err = HostMsg::Error(WireError::new(
                            ErrorCode::Unsupported { kind },
                            format!("message kind {kind} is newer than this host agent"),
                        ));
                        match tag {
                            Tag::Request(id) => write!(Frame::reply(id, err)),
                            Tag::Event => write!(Frame::event(err)),
                            Tag::Reply(_) => {}
                        }
                        continue;
                    }
                    Err(e) if is_stream => {
                        return End::Reason(format!("bad frame: {}", appmon_wire::report::error_chain(&e)))
                    }
                    Err(e) => {
                        tracing::warn!(domain, error = %appmon_wire::report::error_chain(&e), "bad frame on the channel skipped");
                        continue;
                    }
                };
                if !greeted {
                    match frame.msg {
                        GuestMsg::Hello(theirs) => match negotiate(&config.hello, &theirs) {
                            Ok(agreed) => {
                                greeted = true;
                                next_ping = now + config.ping_interval;
                                tracing::info!(domain, agent = %agreed.peer_agent,
                                    boot_id = %appmon_wire::format_boot_id(&agreed.peer_boot_id),
                                    version = agreed.version, "guest agent connected");
                                if !send(SessionEvent::Hello { boot_id: agreed.peer_boot_id, agent: agreed.peer_agent.to_string() }).await {
                                    return End::Supervisor;
                                }
                            }
                            Err(err) => {
                                let text = err.message.clone();
                                write!(Frame::event(HostMsg::Error(err)));
                                return End::Reason(format!("incompatible guest agent: {text}"));
                            }
                        },
                        GuestMsg::Error(e) => {
                            return End::Reason(format!("guest refused the session: {e}"));
                        }
                        other => {
                            if let Tag::Request(id) = frame.tag {
                                write!(Frame::reply(id, HostMsg::Error(WireError::new(
                                    ErrorCode::BadRequest,
                                    format!("{} before Hello", other_name(&other)),
                                ))));
                            }
                        }
                    }
                    continue;
                }
                let id = match frame.tag {
                    Tag::Request(id) => Some(id),
                    _ => None,
                };
                let event = match frame.msg {
                    GuestMsg::MarkActive => {
                        if let Some(id) = id {
                            write!(Frame::reply(id, HostMsg::Ack));
                        }
                        Some(SessionEvent::Heartbeat { at: now })
                    }
                    GuestMsg::State(state) => Some(SessionEvent::State(state)),
                    GuestMsg::Enable => Some(SessionEvent::Request { id, req: GuestRequest::Enable }),
                    GuestMsg::Disable => Some(SessionEvent::Request { id, req: GuestRequest::Disable }),
                    GuestMsg::PostAppState(s) => Some(SessionEvent::Request { id, req: GuestRequest::PostAppState(s) }),
                    GuestMsg::GetAppStatus => Some(SessionEvent::Request { id, req: GuestRequest::GetAppStatus }),
                    GuestMsg::IsEnabled => Some(SessionEvent::Request { id, req: GuestRequest::IsEnabled }),
                    GuestMsg::Ping => {
                        if let Some(id) = id {
                            write!(Frame::reply(id, HostMsg::Pong));
                        }
                        None
                    }
                    GuestMsg::Pong | GuestMsg::Ack if id.is_none() => None,
                    GuestMsg::Error(e) => {
                        tracing::info!(domain, error = %e, "guest reported an error");
                        if matches!(e.code, ErrorCode::IncompatibleVersion { .. }) {
                            return End::Reason(format!("guest refused the session: {e}"));
                        }
                        None
                    }
                    GuestMsg::Hello(_) => {
                        if let Some(id) = id {
                            write!(Frame::reply(id, HostMsg::Error(WireError::new(ErrorCode::BadRequest, "Hello twice"))));
                        }
                        None
                    }
                    other => {
                        if let Some(id) = id {
                            write!(Frame::reply(id, HostMsg::Error(WireError::new(
                                ErrorCode::NotAllowed,
                                format!("{} is not handled by this host agent", other_name(&other)),
                            ))));
                        }
                        None
                    }
                };
                if let Some(event) = event {
                    if !send(event).await {
                        return End::Supervisor;
                    }
                }
            }
            cmd = cmds.recv() => {
                match cmd {
                    None => return End::Supervisor,
                    Some(HostCmd::Status(s)) => write!(Frame::event(HostMsg::AppStatus(s))),
                    Some(HostCmd::Reply { id, msg }) => write!(Frame::reply(id, msg)),
                }
            }
            _ = sleep_until(deadline) => {
                let now = Instant::now();
                if !greeted {
                    return End::Reason(format!(
                        "no Hello within {} ms of the connection",
                        config.hello_timeout.as_millis()
                    ));
                }
                if now >= last_rx + config.dead_after {
                    return End::Reason(format!(
                        "channel dead: no frame for {} ms",
                        now.duration_since(last_rx).as_millis()
                    ));
                }
                if now >= next_ping {
                    ping_id = ping_id.wrapping_add(1).max(1);
                    next_ping = now + config.ping_interval;
                    write!(Frame::request(ping_id, HostMsg::Ping));
                }
            }
        }
    }
}

fn other_name(msg: &GuestMsg) -> &'static str {
    use appmon_wire::WireMessage;
    msg.kind_name()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_lookup() -> ChannelLookup {
        Arc::new(|| Ok(None))
    }

    #[test]
    fn vsock_cid_comes_from_the_spec_first_then_the_domain() {
        let spec_cid = Transport::Vsock {
            cid: Some(7),
            port: 5315,
        };
        let no_cid = Transport::Vsock { cid: None, port: 9 };
        match Endpoint::from_transport(&spec_cid, Some(3), no_lookup()) {
            Ok(Endpoint::Vsock { cid: 7, port: 5315 }) => {}
            other => panic!("{other:?}"),
        }
        match Endpoint::from_transport(&no_cid, Some(3), no_lookup()) {
            Ok(Endpoint::Vsock { cid: 3, port: 9 }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Endpoint::from_transport(&no_cid, None, no_lookup()),
            Err(SessionError::NoCid)
        ));
    }

    #[test]
    fn vsock_endpoint_describes_its_address() {
        let e = Endpoint::Vsock {
            cid: 42,
            port: 5315,
        };
        assert_eq!(e.describe(), "vsock cid 42 port 5315");
        assert!(e.is_stream());
        let addr = tokio_vsock::VsockAddr::new(42, 5315);
        assert_eq!((addr.cid(), addr.port()), (42, 5315));
    }

    #[test]
    fn channel_without_path_is_found_by_name() {
        let t = Transport::Channel {
            path: None,
            name: "org.appmon.agent.0".into(),
        };
        let e = Endpoint::from_transport(&t, None, no_lookup()).expect("endpoint");
        assert!(!e.is_stream());
        assert_eq!(e.describe(), "channel org.appmon.agent.0");
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert!((0..5).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }
}
