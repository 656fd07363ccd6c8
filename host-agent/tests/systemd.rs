//! The real `appmon-host` under a stand-in for systemd's notify socket, on libvirt's test
//! driver: `READY=1` once the control socket serves, watchdog keepalives while the supervisor
//! answers, `STOPPING=1` on SIGTERM.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let control = dir.path().join("ctl.sock");
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "uri = \"test:///default\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\n",
            dir.path().join("state").display(),
            control.display()
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_appmon-host"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .spawn()
        .expect("start appmon-host");

    let ready = recv(&notify);
    assert!(
        ready.starts_with("READY=1\nSTATUS=control socket "),
        "first notification: {ready:?}"
    );
    UnixStream::connect(&control).expect("READY=1 only once the control socket serves");

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
    assert!(status.success(), "appmon-host exited {status}");
}
