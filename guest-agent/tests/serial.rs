//! The virtio-serial transport, with a pseudo-terminal in raw mode standing in for the port:
//! a character device without connection semantics, read and written through one open file.

mod common;

use std::os::fd::OwnedFd;

use appmon_wire::{Capabilities, Frame, GuestMsg, Hello, HostCodec, HostMsg, DELIMITER};
use common::{bounded, Agent};
use futures::{SinkExt, StreamExt};
use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio_util::codec::{FramedRead, FramedWrite};

/// The host end of the pseudo-terminal.
struct PtyHost {
    read: pipe::Receiver,
    write: pipe::Sender,
    _slave: OwnedFd,
}

/// A raw pseudo-terminal; returns the host end and the path the agent opens.
fn pty() -> (PtyHost, String) {
    let pty = openpty(None, None).expect("openpty");
    let mut termios = tcgetattr(&pty.slave).expect("tcgetattr");
    cfmakeraw(&mut termios);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).expect("raw mode");
    let path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&pty.slave)
    ))
    .expect("slave path");
    let master = std::fs::File::from(pty.master);
    set_nonblocking(&master);
    let dup = master.try_clone().expect("dup");
    let host = PtyHost {
        read: pipe::Receiver::from_file_unchecked(master).expect("read half"),
        write: pipe::Sender::from_file_unchecked(dup).expect("write half"),
        // Held open so the line stays up whatever the agent does.
        _slave: pty.slave,
    };
    (host, path.display().to_string())
}

fn set_nonblocking(file: &std::fs::File) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(file, FcntlArg::F_GETFL).expect("flags");
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(file, FcntlArg::F_SETFL(flags)).expect("nonblocking");
}

fn hello() -> Frame<HostMsg> {
    Frame::event(HostMsg::Hello(Hello::new(
        "appmon-host serial test",
        [3; 16],
        Capabilities::HEARTBEAT,
    )))
}

#[tokio::test]
async fn a_host_on_virtio_serial_gets_a_delimiter_hello_and_state_and_survives_garbage() {
    let (mut pty, path) = pty();
    let agent = Agent::start(&format!("virtio_serial = \"{path}\"\n"));
    agent.app(|c| c.enable()).await.expect("enable");

    // A host that joins mid-stream: leftovers of some older frame first, then its Hello.
    pty.write
        .write_all(&[0x05, 0x11, 0x22])
        .await
        .expect("write");
    pty.write.write_all(&[DELIMITER]).await.expect("write");
    let mut frames = FramedWrite::new(&mut pty.write, HostCodec::new());
    bounded(frames.send(hello())).await.expect("hello");

    // The agent's first byte is a bare delimiter, then Hello and State.
    let mut first = [0u8; 1];
    bounded(pty.read.read_exact(&mut first))
        .await
        .expect("read");
    assert_eq!(first[0], DELIMITER);
    let mut incoming = FramedRead::new(&mut pty.read, HostCodec::new());
    let mut next = async || match bounded(incoming.next()).await {
        Some(Ok(Ok(frame))) => frame,
        other => panic!("expected a frame, got {other:?}"),
    };
    assert!(matches!(next().await.msg, GuestMsg::Hello(_)));
    match next().await.msg {
        GuestMsg::State(state) => assert!(state.enabled),
        other => panic!("expected State, got {other:?}"),
    }

    // Garbage mid-session: skipped, and the session goes on.
    frames
        .get_mut()
        .write_all(&[0x09, 0x01, 0x00])
        .await
        .expect("garbage");
    bounded(frames.send(Frame::request(8, HostMsg::Ping)))
        .await
        .expect("ping");
    assert_eq!(next().await, Frame::reply(8, GuestMsg::Pong));

    // Heartbeats go out on the port.
    agent.app(|c| c.mark_active()).await.expect("beat");
    assert_eq!(next().await, Frame::event(GuestMsg::MarkActive));

    // A new Hello is a new session: the full state again.
    bounded(frames.send(hello())).await.expect("hello again");
    assert!(matches!(next().await.msg, GuestMsg::Hello(_)));
    match next().await.msg {
        GuestMsg::State(state) => assert_eq!(state.heartbeats, 1),
        other => panic!("expected State, got {other:?}"),
    }
    let status = agent.app(|c| c.status()).await.expect("status");
    assert_eq!(status.sessions, 2);
    assert!(status
        .session
        .transport
        .is_some_and(|t| t.starts_with("virtio-serial /dev/pts/")),);
    agent.stop().await;
}
