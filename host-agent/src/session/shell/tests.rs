//! The shell over `tokio::io::duplex` with tokio's paused clock: the machine's decisions
//! happen at exactly the times it names, and what the guest sent is read before a deadline.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use appmon_wire::{AppStatus, Capabilities, Frame, GuestCodec, GuestMsg, Hello, HostMsg, Tag};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use super::*;
use crate::config::Config;
use crate::session::Keepalive;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Hello 500 ms, ping every 200 ms, dead after 600 ms, writes bounded at 300 ms.
fn config() -> SessionConfig {
    let mut c = Config {
        hello_timeout: ms(500),
        ping_interval: ms(200),
        dead_after_pings: 3,
        ..Config::default()
    };
    c.session.write_timeout = ms(300);
    SessionConfig::new(&c, [1; 16])
}

fn dialed() -> Link {
    Link {
        kind: LinkKind::Stream,
        opening: Opening::HostFirst,
        keepalive: Some(Keepalive {
            ping_interval: ms(200),
            dead_after: ms(600),
        }),
    }
}

/// A link served on one end of a duplex pipe of `capacity` bytes; the other end is the guest.
struct Pipe {
    guest: Framed<DuplexStream, GuestCodec>,
    commands: mpsc::Sender<HostCmd>,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    served: JoinHandle<Served>,
}

fn serve(capacity: usize, link: Link) -> Pipe {
    let (host_end, guest_end) = tokio::io::duplex(capacity);
    let (commands, mut cmds) = mpsc::channel(64);
    let (tx, events) = mpsc::unbounded_channel();
    let served = tokio::spawn(async move {
        let config = config();
        let deliver = |event| {
            let tx = tx.clone();
            async move { tx.send(event).is_ok() }
        };
        serve_link(host_end, link, &config, "vm", &mut cmds, deliver).await
    });
    Pipe {
        guest: Framed::new(guest_end, GuestCodec::new()),
        commands,
        events,
        served,
    }
}

impl Pipe {
    async fn host_says(&mut self) -> Frame<HostMsg> {
        match self.guest.next().await {
            Some(Ok(Ok(frame))) => frame,
            other => panic!("no frame from the host: {other:?}"),
        }
    }

    async fn guest_says(&mut self, frame: Frame<GuestMsg>) {
        self.guest.send(frame).await.expect("guest writes");
    }

    async fn hello(&mut self) {
        let hello = Hello::new("appmon-guest test", [7; 16], Capabilities::HEARTBEAT);
        self.guest_says(Frame::event(GuestMsg::Hello(hello))).await;
    }
}

#[tokio::test(start_paused = true)]
async fn host_speaks_first_and_relays_the_guests_hello_and_heartbeat() {
    let mut pipe = serve(4096, dialed());

    let first = pipe.host_says().await;
    pipe.hello().await;
    pipe.guest_says(Frame::event(GuestMsg::MarkActive)).await;

    assert!(matches!(first.msg, HostMsg::Hello(_)), "{first:?}");
    assert!(matches!(
        pipe.events.recv().await,
        Some(SessionEvent::Hello { boot_id, .. }) if boot_id == [7; 16]
    ));
    assert!(matches!(
        pipe.events.recv().await,
        Some(SessionEvent::Heartbeat { .. })
    ));
    pipe.commands
        .send(HostCmd::Status(AppStatus::Green))
        .await
        .expect("command");
    assert_eq!(
        pipe.host_says().await,
        Frame::event(HostMsg::AppStatus(AppStatus::Green))
    );
}

#[tokio::test(start_paused = true)]
async fn silent_guest_is_dropped_at_exactly_the_hello_timeout() {
    let start = Instant::now();
    let mut pipe = serve(4096, dialed());
    pipe.host_says().await;

    let served = (&mut pipe.served).await.expect("task");

    assert_eq!(
        served,
        Served::Ended(SessionEnd::NoHello { within_ms: 500 })
    );
    assert_eq!(start.elapsed(), ms(500));
}

#[tokio::test(start_paused = true)]
async fn greeted_guest_that_answers_nothing_is_dead_after_three_pings() {
    let start = Instant::now();
    let mut pipe = serve(4096, dialed());
    pipe.host_says().await;
    pipe.hello().await;

    let pings = [pipe.host_says().await, pipe.host_says().await];
    let served = (&mut pipe.served).await.expect("task");

    assert!(
        pings.iter().all(|p| matches!(
            p,
            Frame {
                tag: Tag::Request(_),
                msg: HostMsg::Ping
            }
        )),
        "{pings:?}"
    );
    assert_eq!(
        served,
        Served::Ended(SessionEnd::ChannelDead { silent_ms: 600 })
    );
    assert_eq!(start.elapsed(), ms(600));
}

#[tokio::test(start_paused = true)]
async fn guest_that_does_not_read_loses_its_session_at_the_write_timeout() {
    // A pipe of 64 bytes the guest never reads: the host's writes stall once it is full.
    let pipe = serve(64, dialed());
    let start = Instant::now();
    for _ in 0..40 {
        pipe.commands
            .send(HostCmd::Status(AppStatus::Red))
            .await
            .expect("command");
    }

    let served = pipe.served.await.expect("task");

    assert_eq!(
        served,
        Served::Ended(SessionEnd::WriteTimeout { after_ms: 300 })
    );
    assert_eq!(start.elapsed(), ms(300));
}

/// A guest end whose bytes the host can read only while `open`; closed, it reads nothing and
/// registers no waker, so only a timer wakes the host. That is a host agent that was not
/// scheduled while the guest's frame sat in its socket.
struct Gated {
    inner: DuplexStream,
    open: Arc<AtomicBool>,
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.open.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One round: a heartbeat waits in the pipe while the host is not scheduled past the
/// channel-dead deadline; the host's first look after that must read it, not judge the gap.
/// Returns the outcome: the heartbeat (and when it was stamped), or the end of the session.
async fn host_wakes_past_the_deadline_with_a_heartbeat_waiting() -> Result<Duration, Served> {
    let (host_end, guest_end) = tokio::io::duplex(4096);
    let open = Arc::new(AtomicBool::new(true));
    let host_end = Gated {
        inner: host_end,
        open: open.clone(),
    };
    let (_commands, mut cmds) = mpsc::channel(4);
    let (tx, mut events) = mpsc::unbounded_channel();
    let served = tokio::spawn(async move {
        let config = config();
        let deliver = |event| {
            let tx = tx.clone();
            async move { tx.send(event).is_ok() }
        };
        serve_link(host_end, dialed(), &config, "vm", &mut cmds, deliver).await
    });
    let mut guest = Framed::new(guest_end, GuestCodec::new());
    let _hello = guest.next().await;
    let hello = Hello::new("appmon-guest test", [7; 16], Capabilities::HEARTBEAT);
    guest
        .send(Frame::event(GuestMsg::Hello(hello)))
        .await
        .expect("hello");
    assert!(matches!(
        events.recv().await,
        Some(SessionEvent::Hello { .. })
    ));
    let greeted = Instant::now();

    open.store(false, Ordering::SeqCst);
    guest
        .send(Frame::event(GuestMsg::MarkActive))
        .await
        .expect("heartbeat");
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    open.store(true, Ordering::SeqCst);
    tokio::time::advance(ms(650)).await;

    let outcome = tokio::select! {
        event = events.recv() => match event {
            Some(SessionEvent::Heartbeat { at }) => Ok(Instant::from_std(at) - greeted),
            other => panic!("unexpected {other:?}"),
        },
        end = served => Err(end.expect("task")),
    };
    outcome
}

#[tokio::test(start_paused = true)]
async fn a_frame_waiting_to_be_read_wins_over_a_deadline_that_passed_meanwhile() {
    // Twenty rounds: were input and deadline taken in either order, about a third of them
    // would end the session as dead.
    for round in 0..20 {
        let outcome = host_wakes_past_the_deadline_with_a_heartbeat_waiting().await;

        assert_eq!(outcome, Ok(ms(650)), "round {round}");
    }
}

#[tokio::test(start_paused = true)]
async fn guest_first_link_answers_the_guests_hello_and_a_quiet_one_never_pings() {
    let mut pipe = serve(
        4096,
        Link {
            kind: LinkKind::Stream,
            opening: Opening::GuestFirst,
            keepalive: None,
        },
    );

    pipe.hello().await;
    let answer = pipe.host_says().await;
    tokio::time::sleep(Duration::from_secs(3600)).await;

    assert!(matches!(answer.msg, HostMsg::Hello(_)), "{answer:?}");
    assert!(!pipe.served.is_finished(), "a quiet session is not judged");
    pipe.guest_says(Frame::request(3, GuestMsg::Ping)).await;
    assert_eq!(pipe.host_says().await, Frame::reply(3, HostMsg::Pong));
}

#[tokio::test(start_paused = true)]
async fn flooding_guest_gets_exactly_its_burst_through_then_loses_the_session() {
    let mut pipe = serve(1 << 20, dialed());
    pipe.host_says().await;
    pipe.hello().await;

    // The default bucket: 50 frames/s, a burst of 200, of which the Hello took one. All at
    // the same instant of the paused clock, so nothing refills.
    for _ in 0..250 {
        pipe.guest_says(Frame::event(GuestMsg::MarkActive)).await;
    }
    let served = (&mut pipe.served).await.expect("task");

    let mut heartbeats = 0;
    while let Ok(event) = pipe.events.try_recv() {
        heartbeats += usize::from(matches!(event, SessionEvent::Heartbeat { .. }));
    }
    assert_eq!(heartbeats, 199);
    assert_eq!(
        served,
        Served::Ended(SessionEnd::Flood {
            frames_per_second: 50,
            burst: 200
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_frame_past_the_size_limit_ends_the_session_as_a_bad_frame() {
    let mut pipe = serve(1 << 20, dialed());
    pipe.host_says().await;
    pipe.hello().await;

    // No delimiter ever: one endless frame.
    let endless = vec![0x41u8; 2 * appmon_wire::MAX_FRAME_LEN];
    tokio::io::AsyncWriteExt::write_all(pipe.guest.get_mut(), &endless)
        .await
        .expect("write");
    let served = (&mut pipe.served).await.expect("task");

    match served {
        Served::Ended(SessionEnd::BadFrame { error }) => {
            assert!(error.contains("exceeds"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn sync_is_answered_after_every_frame_that_was_already_readable() {
    let mut pipe = serve(4096, dialed());
    pipe.host_says().await;
    pipe.hello().await;
    assert!(matches!(
        pipe.events.recv().await,
        Some(SessionEvent::Hello { .. })
    ));

    // Three heartbeats wait in the pipe when the supervisor asks for a sync.
    for _ in 0..3 {
        pipe.guest_says(Frame::event(GuestMsg::MarkActive)).await;
    }
    pipe.commands
        .send(HostCmd::Sync)
        .await
        .expect("session runs");

    let mut seen = Vec::new();
    while let Some(event) = pipe.events.recv().await {
        let synced = event == SessionEvent::Synced;
        seen.push(event);
        if synced {
            break;
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        seen[..3]
            .iter()
            .all(|e| matches!(e, SessionEvent::Heartbeat { .. })),
        "{seen:?}"
    );
}
