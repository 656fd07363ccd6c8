//! The listener over real Unix sockets in a temporary directory (what vhost-device-vsock
//! connects to as `<uds>_<port>`), with short timeouts.

use std::time::Duration;

use appmon_control::SessionEnd;
use appmon_wire::{Capabilities, Frame, GuestCodec, GuestMsg, Hello, HostMsg};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use super::*;
use crate::config::Config;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Hello within 300 ms.
fn config() -> Arc<SessionConfig> {
    let c = Config {
        hello_timeout: ms(300),
        ..Config::default()
    };
    Arc::new(SessionConfig::new(&c, [1; 16]))
}

struct Rig {
    _dir: tempfile::TempDir,
    path: PathBuf,
    events: mpsc::Receiver<SessionMsg>,
    commands: mpsc::Sender<HostCmd>,
    task: JoinHandle<()>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("temp dir");
    let uds = dir.path().join("vm.vsock");
    let acceptor = Acceptor::bind_hybrid(&uds, 5315).expect("bind");
    let path = hybrid_listen_path(&uds, 5315);
    let (to_supervisor, events) = mpsc::channel(64);
    let (commands, cmds) = mpsc::channel(8);
    let task = tokio::spawn(listen(
        1,
        1,
        "vm-under-test".into(),
        acceptor,
        None,
        config(),
        to_supervisor,
        cmds,
    ));
    Rig {
        _dir: dir,
        path,
        events,
        commands,
        task,
    }
}

type Guest = Framed<UnixStream, GuestCodec>;

impl Rig {
    async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.path).await.expect("connect")
    }

    /// A guest of boot `boot` announces itself and gets the host's Hello back.
    async fn announce(&mut self, boot: u8) -> Guest {
        let mut guest = Framed::new(self.connect().await, GuestCodec::new());
        let hello = Hello::new("guest test", [boot; 16], Capabilities::HEARTBEAT);
        guest
            .send(Frame::event(GuestMsg::Hello(hello)))
            .await
            .expect("send Hello");
        match guest.next().await {
            Some(Ok(Ok(Frame {
                msg: HostMsg::Hello(_),
                ..
            }))) => {}
            other => panic!("expected the host's Hello, got {other:?}"),
        }
        guest
    }

    async fn event(&mut self) -> SessionEvent {
        tokio::time::timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("an event in time")
            .expect("the listener runs")
            .event
    }

    async fn no_event_for(&mut self, d: Duration) {
        if let Ok(Some(msg)) = tokio::time::timeout(d, self.events.recv()).await {
            panic!("unexpected {:?}", msg.event);
        }
    }
}

async fn beat(guest: &mut Guest) {
    guest
        .send(Frame::event(GuestMsg::MarkActive))
        .await
        .expect("heartbeat");
}

/// Reads until the host closes the connection; fails if it stays open.
async fn closed_by_host(mut stream: UnixStream) {
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the host kept the connection open");
}

#[tokio::test]
async fn an_announcement_becomes_the_session() {
    let mut rig = rig();
    let mut guest = rig.announce(1).await;
    assert!(matches!(rig.event().await, SessionEvent::Hello { boot_id, .. } if boot_id == [1; 16]));
    beat(&mut guest).await;
    assert!(matches!(rig.event().await, SessionEvent::Heartbeat { .. }));
    rig.commands
        .send(HostCmd::Status(appmon_wire::AppStatus::Green))
        .await
        .expect("command");
    match guest.next().await {
        Some(Ok(Ok(Frame {
            msg: HostMsg::AppStatus(appmon_wire::AppStatus::Green),
            ..
        }))) => {}
        other => panic!("expected the status, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_or_silence_on_a_new_connection_is_closed_and_the_session_goes_on() {
    let mut rig = rig();
    let mut guest = rig.announce(1).await;
    assert!(matches!(rig.event().await, SessionEvent::Hello { .. }));

    let mut garbage = rig.connect().await;
    garbage
        .write_all(b"\x01\x02GET / HTTP/1.0\r\n\x00")
        .await
        .expect("write");
    closed_by_host(garbage).await;
    let silent = rig.connect().await;
    closed_by_host(silent).await;
    let mut early = Framed::new(rig.connect().await, GuestCodec::new());
    early
        .send(Frame::event(GuestMsg::MarkActive))
        .await
        .expect("send");
    closed_by_host(early.into_inner()).await;
    // Each is a failure for the supervisor to judge, and nothing else.
    let mut kinds = Vec::new();
    for _ in 0..3 {
        match rig.event().await {
            SessionEvent::ConnectFailed(failure) => kinds.push(failure.kind),
            other => panic!("expected a failed announcement, got {other:?}"),
        }
    }
    kinds.sort_by_key(|k| k.as_str());
    let mut expected = [
        ConnectFailureKind::NotAFrame,
        ConnectFailureKind::NoHello,
        ConnectFailureKind::NotHelloFirst,
    ];
    expected.sort_by_key(|k| k.as_str());
    assert_eq!(kinds, expected);
    rig.no_event_for(ms(100)).await;

    beat(&mut guest).await;
    assert!(matches!(rig.event().await, SessionEvent::Heartbeat { .. }));
}

#[tokio::test]
async fn a_new_boot_replaces_the_session_and_an_older_boot_is_refused() {
    let mut rig = rig();
    let _first = rig.announce(1).await;
    assert!(matches!(rig.event().await, SessionEvent::Hello { .. }));
    let mut second = rig.announce(2).await;
    assert_eq!(
        rig.event().await,
        SessionEvent::Closed {
            reason: SessionEnd::Replaced
        }
    );
    assert!(matches!(rig.event().await, SessionEvent::Hello { boot_id, .. } if boot_id == [2; 16]));

    let mut stale = Framed::new(rig.connect().await, GuestCodec::new());
    let hello = Hello::new("guest test", [1; 16], Capabilities::HEARTBEAT);
    stale
        .send(Frame::event(GuestMsg::Hello(hello)))
        .await
        .expect("send");
    closed_by_host(stale.into_inner()).await;
    match rig.event().await {
        SessionEvent::ConnectFailed(failure) => {
            assert_eq!(failure.kind, ConnectFailureKind::OlderBoot, "{failure}");
        }
        other => panic!("expected a refused announcement, got {other:?}"),
    }
    rig.no_event_for(ms(100)).await;
    beat(&mut second).await;
    assert!(matches!(rig.event().await, SessionEvent::Heartbeat { .. }));
}

#[tokio::test]
async fn a_flood_of_connections_is_cut_and_the_session_goes_on() {
    let mut rig = rig();
    let mut guest = rig.announce(1).await;
    assert!(matches!(rig.event().await, SessionEvent::Hello { .. }));
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(rig.connect().await);
    }
    // The ones beyond the burst are closed unread at once, long before the Hello timeout.
    let mut closed_at_once = 0;
    for stream in &mut flood {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(ms(50), stream.read(&mut buf)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 40 - 8 - 1,
        "closed at once: {closed_at_once}"
    );
    beat(&mut guest).await;
    assert!(matches!(rig.event().await, SessionEvent::Heartbeat { .. }));
}

#[tokio::test]
async fn the_listening_socket_is_removed_when_the_task_ends() {
    let mut rig = rig();
    let path = rig.path.clone();
    assert!(path.exists());
    rig.task.abort();
    let _ = (&mut rig.task).await;
    assert!(!path.exists());
}

/// Every VM has a queue of commands from the supervisor, one per connection and one of
/// connection events, and tokio allocates room for 32 items when a queue is made: an item's size
/// is paid about 100 times per VM (about 10 KiB of a VM's memory before the big messages were
/// boxed, 2 KiB after).
#[test]
fn per_vm_queues_hold_small_items() {
    assert!(
        std::mem::size_of::<HostCmd>() <= 24,
        "HostCmd is {} bytes: box the big variant",
        std::mem::size_of::<HostCmd>()
    );
    assert!(
        std::mem::size_of::<(u64, ConnEvent)>() <= 48,
        "a connection event is {} bytes: box the big variant",
        std::mem::size_of::<(u64, ConnEvent)>()
    );
}
