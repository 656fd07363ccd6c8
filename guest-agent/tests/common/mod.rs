//! Test helpers: an in-process agent on Unix sockets, a test host peer speaking the wire codec,
//! and bounded waits. AF_VSOCK is never opened: every config here has `vsock = false`.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use appmon_guest_agent::client::Client;
use appmon_guest_agent::config::Config;
use appmon_guest_agent::daemon::{DaemonHandle, Tuning};
use appmon_guest_agent::testing::Background;
use appmon_wire::{Capabilities, Frame, GuestMsg, GuestState, Hello, HostCodec, HostMsg};
use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

/// How long any single wait in these tests may take before it fails.
pub const WAIT: Duration = Duration::from_secs(5);

pub const BOOT_ID: [u8; 16] = [0x42; 16];

/// An agent running on its own thread and runtime, as `appmon-guest` runs it.
pub struct Agent {
    /// First, so that it stops before the directory with its sockets goes.
    daemon: Background,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub host_socket: PathBuf,
    pub api_socket: PathBuf,
    pub handle: DaemonHandle,
}

/// The configuration every test agent starts from, plus `extra` lines.
pub fn test_config(dir: &Path, extra: &str) -> String {
    format!(
        "vsock = false\nhost_unix_socket = \"{}\"\nsocket = \"{}\"\nlog_level = \"debug\"\n{extra}",
        dir.join("host.sock").display(),
        dir.join("app.sock").display(),
    )
}

impl Agent {
    pub fn start(extra: &str) -> Agent {
        Agent::start_tuned(extra, Tuning::default())
    }

    pub fn start_tuned(extra: &str, mut tuning: Tuning) -> Agent {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("guest.toml");
        std::fs::write(&config_path, test_config(dir.path(), extra)).expect("write config");
        let config = Config::load(&config_path).expect("test config is valid");
        assert!(!config.vsock, "tests never open AF_VSOCK");
        tuning.boot_id = Some(BOOT_ID);
        let daemon = Background::start(config, Some(config_path.clone()), tuning)
            .unwrap_or_else(|e| panic!("agent starts: {}", appmon_wire::report::error_chain(&e)));
        Agent {
            host_socket: dir.path().join("host.sock"),
            api_socket: dir.path().join("app.sock"),
            config_path,
            dir,
            handle: daemon.handle().clone(),
            daemon,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.api_socket)
    }

    /// Runs blocking client calls off the test's runtime.
    pub async fn app<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> R + Send + 'static,
    ) -> R {
        let mut client = self.client();
        bounded(tokio::task::spawn_blocking(move || f(&mut client)))
            .await
            .expect("client thread")
    }

    pub async fn connect_host(&self) -> Host {
        Host::connect(&self.host_socket).await
    }

    /// Stops the agent and waits for its thread.
    pub async fn stop(self) {
        bounded(self.daemon.stop()).await;
    }
}

/// A test host agent on the Unix-socket host listener.
pub struct Host {
    pub framed: Framed<UnixStream, HostCodec>,
}

impl Host {
    pub async fn connect(path: &Path) -> Host {
        let stream = bounded(UnixStream::connect(path))
            .await
            .expect("connect to the host socket");
        Host {
            framed: Framed::new(stream, HostCodec::new()),
        }
    }

    pub async fn send(&mut self, frame: Frame<HostMsg>) {
        bounded(self.framed.send(frame)).await.expect("send");
    }

    /// The next frame from the guest.
    pub async fn recv(&mut self) -> Frame<GuestMsg> {
        match bounded(self.framed.next()).await {
            Some(Ok(Ok(frame))) => frame,
            other => panic!("expected a frame from the guest, got {other:?}"),
        }
    }

    /// Sends a Hello and reads the guest's Hello and State.
    pub async fn handshake(&mut self) -> (Hello, GuestState) {
        let hello = Hello::new("appmon-host test", [7; 16], Capabilities::HEARTBEAT);
        self.send(Frame::event(HostMsg::Hello(hello))).await;
        let hello = match self.recv().await {
            Frame {
                tag: appmon_wire::Tag::Event,
                msg: GuestMsg::Hello(h),
            } => h,
            other => panic!("expected the guest's Hello, got {other:?}"),
        };
        let state = match self.recv().await {
            Frame {
                tag: appmon_wire::Tag::Event,
                msg: GuestMsg::State(s),
            } => s,
            other => panic!("expected the guest's State, got {other:?}"),
        };
        (hello, state)
    }

    /// Waits until the guest closes the connection; fails on any frame or after [`WAIT`].
    pub async fn expect_closed(&mut self) {
        match bounded(self.framed.next()).await {
            None => {}
            Some(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the guest to close the connection, got {other:?}"),
        }
    }

    /// Proves that nothing was sent before now: a Ping's Pong is the very next frame.
    pub async fn expect_nothing_pending(&mut self, id: u32) {
        self.send(Frame::request(id, HostMsg::Ping)).await;
        assert_eq!(self.recv().await, Frame::reply(id, GuestMsg::Pong));
    }
}

/// Awaits `f`, failing the test after [`WAIT`].
pub async fn bounded<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?}"),
    }
}

/// Polls `cond` until it holds, failing after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::DEBUG)
        .try_init();
}
