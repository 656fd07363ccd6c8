//! The real `appmon-guest` under a stand-in for systemd's notify socket: it says `READY=1` once
//! applications can connect, pets the watchdog while its owner task answers, and says
//! `STOPPING=1` on SIGTERM (appmon-systemd's `ServiceManager::check_daemon`). Unix sockets only,
//! never AF_VSOCK.

use std::process::Command;

use appmon_systemd::testing::ServiceManager;

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
    let manager = ServiceManager::bind(&dir.path().join("notify")).expect("bind notify socket");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_appmon-guest"));
    agent.arg("--config").arg(&config);
    manager.check_daemon(agent, "", &api, |child| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap()
    });
}
