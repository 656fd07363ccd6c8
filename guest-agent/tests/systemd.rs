//! The real `appmon-guest` under a stand-in for systemd's notify socket: it says `READY=1` once
//! applications can connect, pets the watchdog while its owner task answers, says `STOPPING=1`
//! on SIGTERM, and keeps `NOTIFY_SOCKET` from what it starts. Unix sockets only, never AF_VSOCK.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_appmon-guest");

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the read timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_watchdog_and_stopping_reach_the_service_manager() {
    let dir = tempfile::tempdir().expect("temp dir");
    let api = dir.path().join("app.sock");
    let config = dir.path().join("guest.toml");
    std::fs::write(
        &config,
        format!(
            "vsock = false\nhost_unix_socket = \"{}\"\nsocket = \"{}\"\n",
            dir.path().join("host.sock").display(),
            api.display()
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .spawn()
        .expect("start appmon-guest");

    let ready = recv(&notify);
    assert!(
        ready.starts_with("READY=1\nSTATUS="),
        "first notification: {ready:?}"
    );
    UnixStream::connect(&api).expect("READY=1 only once applications can connect");

    let started = Instant::now();
    let mut keepalives = 0;
    while started.elapsed() < Duration::from_millis(900) {
        assert_eq!(recv(&notify), "WATCHDOG=1");
        keepalives += 1;
    }
    assert!(
        keepalives >= 3,
        "{keepalives} keepalives in 0.9 s at a 0.4 s watchdog"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut last = String::new();
    while last != "STOPPING=1" {
        last = recv(&notify);
        assert!(
            last == "WATCHDOG=1" || last == "STOPPING=1",
            "unexpected {last:?}"
        );
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "appmon-guest exited {status}");
}
