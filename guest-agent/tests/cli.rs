//! The real binaries: `appmon-guest` started as a process (Unix sockets only, never vsock) and
//! `appmon` run against it, checking exit codes and output; signals and config errors.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use appmon_wire::{AppStatus, ErrorCode, Frame, GuestMsg, HostMsg, Tag, WireError};
use common::{test_config, wait_until, Host, WAIT};

const AGENT: &str = env!("CARGO_BIN_EXE_appmon-guest");
const APPMON: &str = env!("CARGO_BIN_EXE_appmon");

/// `appmon-guest` as a child process; killed by pid on drop.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    api: PathBuf,
}

impl Daemon {
    fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("guest.toml");
        let text = test_config(dir.path(), extra);
        assert!(text.contains("vsock = false"), "tests never open AF_VSOCK");
        std::fs::write(&config, text).expect("write config");
        let child = Command::new(AGENT)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start appmon-guest");
        let api = dir.path().join("app.sock");
        let mut daemon = Daemon {
            child,
            dir,
            config,
            api,
        };
        let api = daemon.api.clone();
        wait_until(WAIT, "the agent's API socket", || {
            std::os::unix::net::UnixStream::connect(&api).is_ok()
        });
        assert!(daemon.child.try_wait().expect("poll").is_none());
        daemon
    }

    fn appmon(&self, args: &[&str]) -> Output {
        appmon(&self.api, args)
    }

    fn signal(&self, signal: i32) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let signal = nix::sys::signal::Signal::try_from(signal).expect("signal");
        nix::sys::signal::kill(pid, signal).expect("signal the agent");
    }

    /// Waits for the process to end; returns its exit code and stderr.
    fn wait(&mut self) -> (Option<i32>, String) {
        let child = &mut self.child;
        wait_until(WAIT, "appmon-guest to exit", || {
            child.try_wait().expect("poll").is_some()
        });
        let status = child.wait().expect("wait");
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            pipe.read_to_string(&mut stderr).expect("stderr");
        }
        (status.code(), stderr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn appmon(socket: &Path, args: &[&str]) -> Output {
    Command::new(APPMON)
        .arg("--socket")
        .arg(socket)
        .arg("--timeout")
        .arg("5")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run appmon")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn verbs_and_exit_codes_against_a_running_agent_without_a_host() {
    let agent = Daemon::start("");

    let o = agent.appmon(&["isEnabled"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), "false");

    let o = agent.appmon(&["markActive"]);
    assert_eq!(
        o.status.code(),
        Some(4),
        "markActive before enable is refused"
    );
    assert!(stderr(&o).contains("not enabled"), "{}", stderr(&o));

    let o = agent.appmon(&["enable"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("recorded"), "{}", stderr(&o));

    let o = agent.appmon(&["markActive"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let o = agent.appmon(&["getAppStatus"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "gray");

    let o = agent.appmon(&["postAppState", "appStateNeedReset"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let o = agent.appmon(&["status"]);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert!(text.contains("enabled           true"), "{text}");
    assert!(text.contains("need reset        true"), "{text}");
    assert!(text.contains("heartbeats        1"), "{text}");
    assert!(text.contains("host session      none"), "{text}");

    let o = agent.appmon(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(json["reenables"], 0);

    let o = agent.appmon(&["postAppState", "needReset"]);
    assert_eq!(o.status.code(), Some(2), "a wrong state is a usage error");
    let o = agent.appmon(&["markactive"]);
    assert_eq!(o.status.code(), Some(2), "an unknown verb is a usage error");

    let o = agent.appmon(&["disable"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn an_agent_that_is_not_running_is_exit_code_3() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = appmon(&dir.path().join("nobody.sock"), &["getAppStatus"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("not reachable"), "{}", stderr(&o));
}

#[test]
fn a_host_error_is_exit_code_5_and_a_host_yes_is_exit_code_0() {
    let agent = Daemon::start("");
    let host_socket = agent.dir.path().join("host.sock");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let api = agent.api.clone();
    runtime.block_on(async {
        let mut host = Host::connect(&host_socket).await;
        host.handshake().await;

        let enable = tokio::task::spawn_blocking({
            let api = api.clone();
            move || appmon(&api, &["enable"])
        });
        let request = host.recv().await;
        let Tag::Request(id) = request.tag else {
            panic!("expected a request, got {request:?}");
        };
        let refusal = WireError::new(ErrorCode::NotAllowed, "monitoring is off on this host");
        host.send(Frame::reply(id, HostMsg::Error(refusal))).await;
        let o = common::bounded(enable).await.expect("appmon");
        assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
        assert!(stderr(&o).contains("monitoring is off"), "{}", stderr(&o));

        let asked = tokio::task::spawn_blocking(move || appmon(&api, &["isEnabled"]));
        let request = host.recv().await;
        assert_eq!(request.msg, GuestMsg::IsEnabled);
        let Tag::Request(id) = request.tag else {
            panic!("expected a request");
        };
        host.send(Frame::reply(id, HostMsg::Enabled(true))).await;
        let o = common::bounded(asked).await.expect("appmon");
        assert_eq!(o.status.code(), Some(0));
        assert_eq!(stdout(&o), "true");

        host.send(Frame::event(HostMsg::AppStatus(AppStatus::Green)))
            .await;
        host.expect_nothing_pending(9).await;
        let api = agent.api.clone();
        let o = common::bounded(tokio::task::spawn_blocking(move || {
            appmon(&api, &["getAppStatus"])
        }))
        .await
        .expect("appmon");
        assert_eq!(stdout(&o), "green");
    });
    // The host is gone: gray again.
    wait_until(WAIT, "the agent to notice the host left", || {
        stdout(&agent.appmon(&["getAppStatus"])) == "gray"
    });
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_sockets() {
    let mut agent = Daemon::start("");
    let host = agent.dir.path().join("host.sock");
    assert!(host.exists());
    agent.signal(libc::SIGTERM);
    let (code, log) = agent.wait();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(!agent.api.exists());
    assert!(!host.exists());
}

#[test]
fn sigint_stops_cleanly_too() {
    let mut agent = Daemon::start("");
    agent.signal(libc::SIGINT);
    let (code, log) = agent.wait();
    assert_eq!(code, Some(0), "{log}");
    assert!(!agent.api.exists());
}

#[test]
fn sighup_reloads_and_a_broken_reload_keeps_the_running_configuration() {
    let mut agent = Daemon::start("");
    std::fs::write(&agent.config, "vsock = false\nport = \"x\"\n").expect("break config");
    agent.signal(libc::SIGHUP);
    let config = agent.config.clone();
    // The agent still answers; the log names the file, line and key.
    wait_until(WAIT, "the reload to be handled", || {
        agent.appmon(&["getAppStatus"]).status.code() == Some(0)
    });
    agent.signal(libc::SIGTERM);
    let (code, log) = agent.wait();
    assert_eq!(code, Some(0), "{log}");
    let expected = format!("{}:2:8: key `port`", config.display());
    assert!(log.contains(&expected), "{log}");
    assert!(log.contains("keeping the running one"), "{log}");
}

#[test]
fn a_broken_config_file_is_refused_at_start_naming_file_line_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("guest.toml");
    std::fs::write(&config, "vsock = false\n\nsocket_mode = 660\n").expect("write");
    let o = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run appmon-guest");
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:3:15: key `socket_mode`", config.display())),
        "{err}"
    );
}

#[test]
fn check_validates_the_config_without_starting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("guest.toml");
    std::fs::write(&config, test_config(dir.path(), "")).expect("write");
    let o = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .output()
        .expect("run appmon-guest");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!dir.path().join("app.sock").exists());
}

#[test]
fn a_second_agent_on_the_same_socket_refuses_to_start() {
    let agent = Daemon::start("");
    let o = Command::new(AGENT)
        .arg("--config")
        .arg(&agent.config)
        .stdin(Stdio::null())
        .output()
        .expect("run a second appmon-guest");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("served by another running agent"),
        "{}",
        stderr(&o)
    );
    // The first one is untouched.
    assert_eq!(agent.appmon(&["getAppStatus"]).status.code(), Some(0));
}
