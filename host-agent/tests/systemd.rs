//! The real `appmon-host` under a stand-in for systemd's notify socket, on libvirt's test
//! driver: `READY=1` once the control socket serves, watchdog keepalives while the supervisor
//! answers, `STOPPING=1` on SIGTERM (appmon-systemd's `ServiceManager::check_daemon`).

use std::process::Command;

use appmon_systemd::testing::ServiceManager;

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
    let manager = ServiceManager::bind(&dir.path().join("notify")).expect("bind notify socket");
    let mut host = Command::new(env!("CARGO_BIN_EXE_appmon-host"));
    host.arg("--config").arg(&config);
    manager.check_daemon(host, "control socket ", &control, |child| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap()
    });
}
