//! The host transports: the dialer that announces this guest to the host, listeners that turn
//! connections into links, the virtio-serial port, and the per-link task that runs the frame
//! codec.
//!
//! The guest speaks first (protocol 2): [`announce`] connects to the host (vsock CID 2, the
//! configured port) when the agent starts and again whenever that link ends, after a jittered,
//! capped [`Backoff`]; its link opens with the guest's Hello ([`Opening::GuestFirst`]). The
//! AF_VSOCK listener stays for host agents of protocol 1, which dial the guest.
//!
//! A link task owns its stream. It decodes frames and hands them to the daemon as machine
//! events, and it writes what the daemon sends it through a small bounded queue. A link task
//! never decides anything: whether a bad frame ends a session is the machine's call.
//!
//! AF_VSOCK is opened only by [`bind_vsock`], and only when the configuration asks for it:
//! the development machines of this project are themselves VMs whose own vsock device belongs
//! to their infrastructure, so tests and benches use the Unix-socket host listener, which
//! behaves exactly like the vsock one.

use appmon_wire::report::error_chain;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use appmon_wire::{Frame, GuestCodec, GuestMsg, DELIMITER};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::unix::pipe;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY, VMADDR_CID_HOST};
use tracing::{debug, info, warn};

use crate::inbox::{Input, LinkCmd, Transport};
use crate::machine::{BadFrame, Event, LinkId, LinkKind, Opening};

/// Frames queued for one link before the daemon gives up on it as not reading.
pub const LINK_QUEUE: usize = 32;
/// Initial read buffer of a link: a heartbeat frame is 4 bytes, a Hello about 50.
const READ_BUFFER: usize = 512;
/// How long closing a link may take to flush what is queued.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a write to a link may block before the link is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a virtio-serial port whose host side is away is looked at again.
const SERIAL_RECHECK: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of file descriptors, say) or a failed port open.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The first pause between announcements; doubled after each failed one.
pub const ANNOUNCE_MIN: Duration = Duration::from_millis(100);
/// The longest pause between announcements: a host agent that starts (or restarts) sees every
/// running guest within this much.
pub const ANNOUNCE_MAX: Duration = Duration::from_secs(3);
/// A link that lived this long was a session, not a failed attempt: the next announcement
/// starts from [`ANNOUNCE_MIN`] again.
const ANNOUNCE_SETTLED: Duration = Duration::from_secs(10);
/// The least pause after a link that connected has ended. A host agent closes the session just
/// before it resets the guest and sends that guest nothing until the new boot announces itself;
/// an announcement from the old boot in between is host -> guest traffic in flight at the reset
/// (the host's refusal), which wedges a userspace vsock backend (the Debian guest's reset did
/// so under load). A restarted host agent still sees every guest within this much plus a pause.
pub const AFTER_SESSION: Duration = Duration::from_secs(2);
/// A link that lived this long counts as a session for [`AFTER_SESSION`].
const SESSION_HELD: Duration = Duration::from_secs(1);

/// The pauses between announcements: exponential from `min`, capped at `max`, each drawn
/// uniformly from its upper half so that guests rebooted together do not dial in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    /// `seed` makes the jitter (anything that differs between guests: the boot id, the time).
    pub fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
            seed: seed | 1,
        }
    }

    /// The pause before the next attempt.
    pub fn pause(&mut self) -> Duration {
        // xorshift64: jitter needs no cryptography, only guests that differ.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
        let pause = self.next.mul_f64(0.5 + fraction / 2.0);
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// A session worked: start again from the shortest pause.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A host transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on AF_VSOCK port {port}")]
    Vsock {
        port: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen for the host on Unix socket {path}")]
    Unix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is served by another running agent")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot open virtio-serial port {path}")]
    Serial {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// A fresh link id.
pub fn next_link_id() -> LinkId {
    NEXT_LINK.fetch_add(1, Ordering::Relaxed)
}

/// The address the vsock listener binds: any CID, `port`.
pub fn vsock_addr(port: u32) -> VsockAddr {
    VsockAddr::new(VMADDR_CID_ANY, port)
}

/// Binds the AF_VSOCK listener. Runs inside guests only (see the module documentation).
pub fn bind_vsock(port: u32) -> Result<VsockListener, TransportError> {
    VsockListener::bind(vsock_addr(port)).map_err(|source| TransportError::Vsock { port, source })
}

/// Accepts host connections on vsock for ever.
pub async fn serve_vsock(listener: VsockListener, inputs: mpsc::Sender<Input>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let transport = format!("vsock cid {} port {}", peer.cid(), peer.port());
                tokio::spawn(run_link(
                    LinkKind::Stream,
                    Opening::HostFirst,
                    Transport::Vsock,
                    transport,
                    stream,
                    inputs.clone(),
                ));
            }
            Err(e) => {
                warn!(error = %e, "vsock accept failed");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Announces this guest to the host over AF_VSOCK (CID 2, `port`) for ever. Runs inside guests
/// only (see the module documentation).
pub async fn announce_vsock(port: u32, seed: u64, inputs: mpsc::Sender<Input>) {
    let description = format!("vsock cid {VMADDR_CID_HOST} port {port} (announced)");
    let connect = move || VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, port));
    let backoff = Backoff::new(ANNOUNCE_MIN, ANNOUNCE_MAX, seed);
    announce(connect, Transport::Vsock, description, backoff, inputs).await;
}

/// Connects to the host with `connect`, runs the link (the guest's Hello first), and connects
/// again when it ends, pausing as `backoff` says; until the daemon stops.
pub async fn announce<C, F, S>(
    mut connect: C,
    transport: Transport,
    description: String,
    mut backoff: Backoff,
    inputs: mpsc::Sender<Input>,
) where
    C: FnMut() -> F,
    F: std::future::Future<Output = io::Result<S>>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut failures = 0u32;
    loop {
        let mut least = Duration::ZERO;
        match connect().await {
            Ok(stream) => {
                failures = 0;
                let started = tokio::time::Instant::now();
                run_link(
                    LinkKind::Stream,
                    Opening::GuestFirst,
                    transport,
                    description.clone(),
                    stream,
                    inputs.clone(),
                )
                .await;
                if started.elapsed() >= ANNOUNCE_SETTLED {
                    backoff.reset();
                }
                // A link that was a session for a while: the host may have closed it to reset
                // the guest. One that ended at once (a refused or replaced link) is retried at
                // the backoff's pace, so that what the application asks meanwhile is not held.
                if started.elapsed() >= SESSION_HELD {
                    least = AFTER_SESSION;
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    info!(to = %description, error = %e, "cannot announce this guest to the host yet; retrying");
                } else {
                    debug!(to = %description, error = %e, failures, "host still not reachable");
                }
            }
        }
        if inputs.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.pause().max(least)).await;
    }
}

/// Binds a Unix socket, replacing a stale socket file that no agent serves any more.
pub fn bind_unix(path: &Path) -> Result<UnixListener, TransportError> {
    clear_stale_socket(path)?;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|source| TransportError::Unix {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    UnixListener::bind(path).map_err(|source| TransportError::Unix {
        path: path.to_owned(),
        source,
    })
}

/// Removes `path` if it is a socket nobody listens on; refuses to touch anything else.
pub fn clear_stale_socket(path: &Path) -> Result<(), TransportError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(TransportError::Unix {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(TransportError::NotASocket {
            path: path.to_owned(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(TransportError::InUse {
            path: path.to_owned(),
        });
    }
    info!(path = %path.display(), "removing a stale socket file");
    std::fs::remove_file(path).map_err(|source| TransportError::Unix {
        path: path.to_owned(),
        source,
    })
}

/// Accepts host connections on a Unix socket for ever, exactly as [`serve_vsock`] does.
pub async fn serve_unix(listener: UnixListener, inputs: mpsc::Sender<Input>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(run_link(
                    LinkKind::Stream,
                    Opening::HostFirst,
                    Transport::Unix,
                    "unix".to_owned(),
                    stream,
                    inputs.clone(),
                ));
            }
            Err(e) => {
                warn!(error = %e, "host socket accept failed");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Serves the host on a virtio-serial port for ever: opens it, runs it as a link, and opens it
/// again if it fails.
pub async fn serve_serial(path: PathBuf, inputs: mpsc::Sender<Input>) {
    loop {
        match SerialPort::open(&path) {
            Ok(port) => {
                let transport = format!("virtio-serial {}", path.display());
                run_link(
                    LinkKind::Serial,
                    Opening::HostFirst,
                    Transport::Serial,
                    transport,
                    port,
                    inputs.clone(),
                )
                .await;
            }
            Err(e) => warn!(error = %error_chain(&e), "virtio-serial port unavailable"),
        }
        if inputs.is_closed() {
            return;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Runs one link until it closes: registers it with the daemon, then relays frames both ways.
pub async fn run_link<S>(
    kind: LinkKind,
    opening: Opening,
    transport: Transport,
    description: String,
    stream: S,
    inputs: mpsc::Sender<Input>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::with_capacity(stream, GuestCodec::new(), READ_BUFFER);
    let (mut link, mut commands) =
        match register(kind, opening, transport, &description, &inputs).await {
            Some(registered) => registered,
            None => return,
        };
    let mut reading = true;
    let mut host_away = false;
    let mut paused_until: Option<tokio::time::Instant> = None;
    let reason = loop {
        tokio::select! {
            () = sleep_until(paused_until), if paused_until.is_some() => paused_until = None,
            command = commands.recv() => match command {
                Some(LinkCmd::Send(frame)) => {
                    match tokio::time::timeout(WRITE_TIMEOUT, framed.send(frame)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break format!("write failed: {}", error_chain(&e)),
                        Err(_) => break "the host did not read for 5 s".to_owned(),
                    }
                }
                Some(LinkCmd::Resync) => {
                    let resync = async {
                        SinkExt::<Frame<GuestMsg>>::flush(&mut framed)
                            .await
                            .map_err(|e| error_chain(&e))?;
                        let port = framed.get_mut();
                        port.write_all(&[DELIMITER]).await.map_err(|e| e.to_string())?;
                        port.flush().await.map_err(|e| e.to_string())
                    };
                    if let Err(e) = resync.await {
                        break format!("write failed: {e}");
                    }
                }
                Some(LinkCmd::Close(reason)) => {
                    // Send what is queued (an error frame, say) before closing.
                    let close = SinkExt::<Frame<GuestMsg>>::close(&mut framed);
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
                    break reason;
                }
                None => break "agent stopped".to_owned(),
            },
            item = framed.next(), if reading && paused_until.is_none() => match item {
                Some(Ok(Ok(frame))) => {
                    host_away = false;
                    if inputs.send(Input::Event(Event::Frame { link, frame })).await.is_err() {
                        break "agent stopped".to_owned();
                    }
                }
                Some(Ok(Err(error))) => {
                    host_away = false;
                    let bad = BadFrame::from(&error);
                    // A broken stream is about to be closed by the machine: read no more of it.
                    if kind == LinkKind::Stream && matches!(bad, BadFrame::Broken(_)) {
                        reading = false;
                    }
                    if inputs.send(Input::Event(Event::BadFrame { link, error: bad })).await.is_err() {
                        break "agent stopped".to_owned();
                    }
                }
                Some(Err(e)) => break format!("read failed: {e}"),
                None if kind == LinkKind::Serial => {
                    // The host side of the port is not connected. The port stays open (data
                    // sent to a closed port is lost); what the host sends next belongs to a
                    // new session, on a new link. Look again in a moment: the port reads
                    // 0 bytes at once for as long as the host is away.
                    if !host_away {
                        debug!(link, "virtio-serial host side closed");
                        host_away = true;
                        let _ = inputs.send(Input::Event(Event::LinkDown {
                            link,
                            reason: "host side of the port closed".to_owned(),
                        })).await;
                        match register(kind, opening, transport, &description, &inputs).await {
                            Some((l, c)) => (link, commands) = (l, c),
                            None => return,
                        }
                    }
                    paused_until = Some(tokio::time::Instant::now() + SERIAL_RECHECK);
                }
                None => break "host closed the connection".to_owned(),
            },
        }
    };
    let _ = inputs
        .send(Input::Event(Event::LinkDown { link, reason }))
        .await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn register(
    kind: LinkKind,
    opening: Opening,
    transport: Transport,
    description: &str,
    inputs: &mpsc::Sender<Input>,
) -> Option<(LinkId, mpsc::Receiver<LinkCmd>)> {
    let link = next_link_id();
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let up = Input::LinkUp {
        link,
        kind,
        opening,
        transport,
        description: description.to_owned(),
        commands: tx,
    };
    inputs.send(up).await.ok()?;
    Some((link, rx))
}

/// A virtio-serial port (`/dev/virtio-ports/<name>`): a character device opened once, read
/// and written through two descriptors of that one open file (a port may be open only once,
/// and data sent to a port nobody holds open is thrown away).
///
/// A read of 0 bytes means the host side is not connected; [`run_link`] then ends the session
/// and looks again a little later, keeping the port open.
#[derive(Debug)]
pub struct SerialPort {
    rx: pipe::Receiver,
    tx: pipe::Sender,
}

impl SerialPort {
    pub fn open(path: &Path) -> Result<SerialPort, TransportError> {
        let serial_error = |source| TransportError::Serial {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(serial_error)?;
        let meta = file.metadata().map_err(serial_error)?;
        if !meta.file_type().is_char_device() {
            return Err(serial_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a character device",
            )));
        }
        // dup(2) shares the open file: no second open of the port.
        let write_half = file.try_clone().map_err(serial_error)?;
        Ok(SerialPort {
            rx: pipe::Receiver::from_file_unchecked(file).map_err(serial_error)?,
            tx: pipe::Sender::from_file_unchecked(write_half).map_err(serial_error)?,
        })
    }
}

impl AsyncRead for SerialPort {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.rx).poll_read(cx, buf)
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tx).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tx).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A port has no write side to shut: the next session writes to it again.
        Poll::Ready(Ok(()))
    }
}

/// Connects to a Unix-socket host listener: what a test host or a development host does.
pub async fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_listener_binds_any_cid_on_the_configured_port() {
        // Only the address is built here: AF_VSOCK is never opened outside a guest.
        let addr = vsock_addr(5315);
        assert_eq!(addr.cid(), VMADDR_CID_ANY);
        assert_eq!(addr.port(), 5315);
    }

    #[test]
    fn announcement_pauses_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(3));
        let mut backoff = Backoff::new(min, max, 0x5eed);
        let mut nominal = min;
        for _ in 0..12 {
            let pause = backoff.pause();
            assert!(
                pause >= nominal / 2 && pause <= nominal,
                "{pause:?} for {nominal:?}"
            );
            nominal = (nominal * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.pause() <= min);
    }

    #[test]
    fn announcement_jitter_differs_between_guests() {
        let pauses = |seed| {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(3), seed);
            (0..6).map(|_| b.pause()).collect::<Vec<_>>()
        };
        assert_ne!(pauses(1), pauses(2));
    }

    #[tokio::test]
    async fn announcing_sends_the_guest_hello_first_and_dials_again_when_the_link_ends() {
        use appmon_wire::{Capabilities, Hello, HostCodec, HostMsg};
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("host.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let (inputs, mut rx) = mpsc::channel(16);
        let target = path.clone();
        let dialer = tokio::spawn(announce(
            move || UnixStream::connect(target.clone()),
            Transport::Unix,
            "unix (announced)".into(),
            Backoff::new(Duration::from_millis(10), Duration::from_millis(40), 7),
            inputs,
        ));
        for round in 0..2 {
            let (stream, _) = listener.accept().await.expect("the guest dials");
            // The daemon keeps a link's command queue for as long as the link lives.
            let _commands = match rx.recv().await {
                Some(Input::LinkUp {
                    opening,
                    kind,
                    commands,
                    ..
                }) => {
                    assert_eq!(
                        (opening, kind),
                        (Opening::GuestFirst, LinkKind::Stream),
                        "round {round}"
                    );
                    commands
                }
                other => panic!("expected LinkUp, got {other:?}"),
            };
            // The host answers and hangs up, which ends the link: the dialer must come back.
            let mut host = Framed::new(stream, HostCodec::new());
            let hello = Hello::new("host test", [3; 16], Capabilities::HEARTBEAT);
            host.send(Frame::event(HostMsg::Hello(hello)))
                .await
                .expect("send");
            match rx.recv().await {
                Some(Input::Event(Event::Frame { .. })) => {}
                other => panic!("expected the host's Hello as a frame, got {other:?}"),
            }
            drop(host);
            match rx.recv().await {
                Some(Input::Event(Event::LinkDown { .. })) => {}
                other => panic!("expected LinkDown, got {other:?}"),
            }
        }
        dialer.abort();
    }

    #[test]
    fn link_ids_are_unique() {
        let a = next_link_id();
        let b = next_link_id();
        assert_ne!(a, b);
    }

    #[test]
    fn a_regular_file_is_never_removed_as_a_stale_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("not-a-socket");
        std::fs::write(&path, b"keep me").expect("write");
        let err = clear_stale_socket(&path).expect_err("not a socket");
        assert!(matches!(err, TransportError::NotASocket { .. }), "{err}");
        assert!(path.exists());
    }

    #[test]
    fn a_socket_nobody_serves_is_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        clear_stale_socket(&path).expect("stale socket removed");
        assert!(!path.exists());
    }

    #[test]
    fn a_socket_in_use_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("live.sock");
        let _live = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let err = clear_stale_socket(&path).expect_err("in use");
        assert!(matches!(err, TransportError::InUse { .. }), "{err}");
        assert!(path.exists());
    }

    #[test]
    fn a_missing_serial_port_is_an_error_naming_it() {
        let err = SerialPort::open(Path::new("/dev/virtio-ports/appmon-test-absent"))
            .expect_err("no such port");
        assert!(err.to_string().contains("appmon-test-absent"), "{err}");
    }
}
