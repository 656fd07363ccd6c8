//! Test support for this crate's tests and benchmarks and for other crates' (cargo feature
//! `testing`; never part of a product build): a scripted guest agent behind a Unix socket. It
//! serves the hybrid vsock `CONNECT`/`OK` handshake (or none, as a virtio-serial channel),
//! answers the host's Hello with its own and its state, heartbeats at a set interval, answers
//! pings, enables when it is told Gray, and records what the host says: a peer whose every move
//! a test controls; and the frame of a Hello with an over-long agent name
//! ([`hello_with_agent_of`]). [`browser`] drives the
//! MON page in headless Chromium.

pub mod browser;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use appmon_wire::{
    AppStatus, Capabilities, Frame, GuestCodec, GuestMsg, GuestState, Hello, HostMsg, Tag,
};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::codec::Framed;

/// What the simulated guest does and has seen.
#[derive(Debug)]
pub struct Shared {
    /// Heartbeat period; `None` sends none.
    heartbeat_every: Mutex<Option<Duration>>,
    boot_id: Mutex<[u8; 16]>,
    /// Reported in the State after Hello.
    enabled: AtomicBool,
    /// Send `Request Enable` when told Gray.
    auto_enable: AtomicBool,
    /// Accept connections (else close them at once, as a guest whose channel did not come back).
    accept: AtomicBool,
    answer_pings: AtomicBool,
    statuses: Mutex<Vec<AppStatus>>,
    replies: Mutex<Vec<HostMsg>>,
    last_heartbeat: Mutex<Option<Instant>>,
    /// The same moment on the wall clock, to compare with the host agent's history.
    last_heartbeat_wall: Mutex<Option<SystemTime>>,
    heartbeats: AtomicU64,
    connections: AtomicU64,
    outbox: Mutex<Option<mpsc::UnboundedSender<Frame<GuestMsg>>>>,
    changed: Notify,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handle on one simulated guest.
#[derive(Debug, Clone)]
pub struct GuestSim {
    pub shared: Arc<Shared>,
}

impl GuestSim {
    /// A guest that heartbeats every `every` once enabled.
    pub fn new(boot: u8, every: Option<Duration>) -> Self {
        GuestSim {
            shared: Arc::new(Shared {
                heartbeat_every: Mutex::new(every),
                boot_id: Mutex::new([boot; 16]),
                enabled: AtomicBool::new(false),
                auto_enable: AtomicBool::new(true),
                accept: AtomicBool::new(true),
                answer_pings: AtomicBool::new(true),
                statuses: Mutex::new(Vec::new()),
                replies: Mutex::new(Vec::new()),
                last_heartbeat: Mutex::new(None),
                last_heartbeat_wall: Mutex::new(None),
                heartbeats: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                outbox: Mutex::new(None),
                changed: Notify::new(),
                next_id: AtomicU64::new(1000),
            }),
        }
    }

    /// Binds `path` and serves connections there until the returned task is aborted.
    pub fn listen(
        &self,
        path: &Path,
        hybrid: bool,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = UnixListener::bind(path)?;
        let shared = self.shared.clone();
        Ok(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if !shared.accept.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, hybrid, shared).await;
                });
            }
        }))
    }

    /// Announces itself as a guest agent of protocol 2 does: connects to `<uds>_<port>` (where
    /// vhost-device-vsock delivers a guest's connections to the host), says Hello first, and
    /// connects again 50 ms after each connection ends, until the returned task is aborted.
    /// While [`GuestSim::set_accept`] is off it does not connect (a guest that is not back).
    pub fn announce(&self, uds: &Path, port: u32) -> tokio::task::JoinHandle<()> {
        let mut path = uds.as_os_str().to_owned();
        path.push(format!("_{port}"));
        let path = std::path::PathBuf::from(path);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                if shared.accept.load(Ordering::SeqCst) {
                    if let Ok(stream) = UnixStream::connect(&path).await {
                        let _ = serve_opened(stream, false, true, shared.clone()).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    pub fn set_heartbeat(&self, every: Option<Duration>) {
        *lock(&self.shared.heartbeat_every) = every;
    }

    pub fn set_boot_id(&self, boot: u8) {
        *lock(&self.shared.boot_id) = [boot; 16];
    }

    pub fn set_enabled_in_state(&self, enabled: bool) {
        self.shared.enabled.store(enabled, Ordering::SeqCst);
    }

    pub fn set_auto_enable(&self, on: bool) {
        self.shared.auto_enable.store(on, Ordering::SeqCst);
    }

    pub fn set_accept(&self, on: bool) {
        self.shared.accept.store(on, Ordering::SeqCst);
    }

    pub fn set_answer_pings(&self, on: bool) {
        self.shared.answer_pings.store(on, Ordering::SeqCst);
    }

    /// Sends a frame on the current connection; `false` when there is none.
    pub fn send(&self, frame: Frame<GuestMsg>) -> bool {
        lock(&self.shared.outbox)
            .as_ref()
            .is_some_and(|tx| tx.send(frame).is_ok())
    }

    /// Sends a request with a fresh id; returns the id.
    pub fn request(&self, msg: GuestMsg) -> Option<u32> {
        let id = self.shared.next_id.fetch_add(1, Ordering::SeqCst) as u32;
        self.send(Frame::request(id, msg)).then_some(id)
    }

    /// Cuts the current connection.
    pub fn disconnect(&self) {
        lock(&self.shared.outbox).take();
    }

    pub fn statuses(&self) -> Vec<AppStatus> {
        lock(&self.shared.statuses).clone()
    }

    pub fn replies(&self) -> Vec<HostMsg> {
        lock(&self.shared.replies).clone()
    }

    pub fn last_heartbeat(&self) -> Option<Instant> {
        *lock(&self.shared.last_heartbeat)
    }

    /// When the last heartbeat was sent, in milliseconds since the Unix epoch (fractional).
    pub fn last_heartbeat_unix_ms(&self) -> Option<f64> {
        lock(&self.shared.last_heartbeat_wall).map(unix_ms)
    }

    pub fn heartbeats(&self) -> u64 {
        self.shared.heartbeats.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn connected(&self) -> bool {
        lock(&self.shared.outbox).is_some()
    }

    /// Waits until `pred` holds or `limit` passes; returns whether it held.
    pub async fn wait(&self, limit: Duration, pred: impl Fn(&GuestSim) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.shared.changed.notified();
            if pred(self) {
                return true;
            }
            // Also poll: some conditions (time) change without a notification.
            let step = Instant::now() + Duration::from_millis(20);
            let _ = tokio::time::timeout_at(step.min(deadline), notified).await;
            if Instant::now() >= deadline {
                return pred(self);
            }
        }
    }
}

async fn serve(stream: UnixStream, hybrid: bool, shared: Arc<Shared>) -> std::io::Result<()> {
    serve_opened(stream, hybrid, false, shared).await
}

/// Serves one connection: `guest_first` when the guest opened it to announce itself.
async fn serve_opened(
    mut stream: UnixStream,
    hybrid: bool,
    guest_first: bool,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    if hybrid {
        let mut line = Vec::new();
        loop {
            let mut b = [0u8; 1];
            if stream.read(&mut b).await? == 0 {
                return Ok(());
            }
            if b[0] == b'\n' || line.len() > 64 {
                break;
            }
            line.push(b[0]);
        }
        stream.write_all(b"OK 1073741824\n").await?;
    }
    let mut framed = Framed::with_capacity(stream, GuestCodec::new(), 256);
    let boot_id = *lock(&shared.boot_id);
    let hello = Frame::event(GuestMsg::Hello(Hello::new(
        "appmon-guest sim",
        boot_id,
        Capabilities::HEARTBEAT,
    )));
    if guest_first {
        framed
            .send(hello.clone())
            .await
            .map_err(std::io::Error::other)?;
    }
    // The host's Hello: first on a dialed connection, the answer on an announced one.
    match framed.next().await {
        Some(Ok(Ok(Frame {
            msg: HostMsg::Hello(_),
            ..
        }))) => {}
        _ => return Ok(()),
    }
    if !guest_first {
        framed.send(hello).await.map_err(std::io::Error::other)?;
    }
    let enabled = shared.enabled.load(Ordering::SeqCst);
    framed
        .send(Frame::event(GuestMsg::State(GuestState {
            enabled,
            need_reset: false,
            last_heartbeat_age_ms: enabled.then_some(0),
            heartbeats: shared.heartbeats.load(Ordering::SeqCst),
            last_status: None,
            processes: Vec::new(),
        })))
        .await
        .map_err(std::io::Error::other)?;
    let (tx, mut outbox) = mpsc::unbounded_channel();
    *lock(&shared.outbox) = Some(tx);
    shared.connections.fetch_add(1, Ordering::SeqCst);
    shared.changed.notify_waiters();
    let mut next_beat = Instant::now();
    let result = loop {
        let every = *lock(&shared.heartbeat_every);
        // Without heartbeats, look again now and then: the test may turn them on while the
        // host sends nothing.
        let beat_at = Some(match every {
            Some(_) => next_beat,
            None => {
                next_beat = Instant::now() + Duration::from_millis(50);
                next_beat
            }
        });
        tokio::select! {
            item = framed.next() => {
                let frame = match item {
                    Some(Ok(Ok(frame))) => frame,
                    Some(Ok(Err(_))) => continue,
                    Some(Err(e)) => break Err(e),
                    None => break Ok(()),
                };
                match (frame.tag, frame.msg) {
                    (Tag::Request(id), HostMsg::Ping) if shared.answer_pings.load(Ordering::SeqCst) => {
                        framed.send(Frame::reply(id, GuestMsg::Pong)).await.map_err(std::io::Error::other)?;
                    }
                    (Tag::Event, HostMsg::AppStatus(s)) => {
                        lock(&shared.statuses).push(s);
                        if s == AppStatus::Gray && shared.auto_enable.load(Ordering::SeqCst) {
                            let id = shared.next_id.fetch_add(1, Ordering::SeqCst) as u32;
                            framed.send(Frame::request(id, GuestMsg::Enable)).await.map_err(std::io::Error::other)?;
                            shared.enabled.store(true, Ordering::SeqCst);
                        }
                    }
                    (Tag::Reply(_), msg) => {
                        if let HostMsg::AppStatus(s) = &msg {
                            lock(&shared.statuses).push(*s);
                        }
                        lock(&shared.replies).push(msg);
                    }
                    _ => {}
                }
                shared.changed.notify_waiters();
            }
            out = outbox.recv() => match out {
                Some(frame) => framed.send(frame).await.map_err(std::io::Error::other)?,
                None => break Ok(()),
            },
            _ = async { match beat_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                if let Some(every) = every {
                    next_beat = (next_beat + every).max(Instant::now());
                    if shared.enabled.load(Ordering::SeqCst) {
                        framed.send(Frame::event(GuestMsg::MarkActive)).await.map_err(std::io::Error::other)?;
                        *lock(&shared.last_heartbeat) = Some(Instant::now());
                        *lock(&shared.last_heartbeat_wall) = Some(SystemTime::now());
                        shared.heartbeats.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    };
    lock(&shared.outbox).take();
    shared.changed.notify_waiters();
    result
}

/// The encoded frame of a Hello whose agent name is `len` bytes: what a hostile guest sends
/// past the wire's limit on that name (which [`Hello::new`] would cut).
pub fn hello_with_agent_of(len: usize) -> Vec<u8> {
    let marker = "\u{1}MARKER\u{1}";
    let encoded = appmon_wire::encode_frame(&Frame::event(GuestMsg::Hello(Hello::new(
        marker,
        [4; 16],
        Capabilities::HEARTBEAT,
    ))))
    .expect("a Hello encodes");
    let mut raw = encoded[..encoded.len() - 1].to_vec();
    let n = appmon_wire::cobs::decode_in_place(&mut raw).expect("our own COBS decodes");
    raw.truncate(n);
    // postcard: a string is its length as a varint, then its bytes.
    let mut old = vec![marker.len() as u8];
    old.extend_from_slice(marker.as_bytes());
    let at = raw
        .windows(old.len())
        .position(|w| w == old.as_slice())
        .expect("the name in the encoding");
    let mut name = Vec::new();
    let mut v = len;
    while v >= 0x80 {
        name.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    name.push(v as u8);
    name.extend(std::iter::repeat_n(b'n', len));
    raw.splice(at..at + old.len(), name);
    let mut out = Vec::new();
    appmon_wire::cobs::encode(&raw, &mut out);
    out.push(0);
    out
}

/// A wall-clock moment in milliseconds since the Unix epoch, fractional.
pub fn unix_ms(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}
