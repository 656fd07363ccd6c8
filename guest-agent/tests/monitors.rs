//! Application monitors in the real daemon, in process: a process monitor on a pid file starts
//! its application, notices the application's end at once, restarts it, and once its restarts
//! are used up withholds the heartbeats; the host peer sees the events and states, the local API
//! lists them.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use appmon_guest_agent::client::ClientError;
use appmon_wire::{
    Capabilities, FailureAction, Frame, GuestMsg, MonitorEventKind, MonitorPhase, MonitorStatus,
};
use common::{Agent, Host};

/// Far longer than the test: only the pidfd watch can notice the end in time.
const MONITOR_INTERVAL_S: u64 = 600;

fn config(dir: &Path) -> String {
    let pid_file = dir.join("app.pid");
    let start = dir.join("start");
    std::fs::write(
        &start,
        format!(
            "#!/bin/sh\nsleep 300 </dev/null >/dev/null 2>&1 &\necho $! > {}\necho started\n",
            pid_file.display()
        ),
    )
    .expect("start script");
    std::fs::set_permissions(&start, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    format!(
        r#"
[[monitor]]
name = "app-pid"
kind = "process"
mode = "both"
pid_file = "{}"
stabilization_interval = 1
monitor_interval = {MONITOR_INTERVAL_S}
restart_count = 1
restart_interval = 600
failure_action = "stop-heartbeats"
start = "{}"
command_timeout = 10
"#,
        pid_file.display(),
        start.display()
    )
}

fn app_pid(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("app.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills the application's sleep at the end, whatever happened.
struct Reap<'a>(&'a Path);

impl Drop for Reap<'_> {
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string(self.0.join("app.pid")) {
            if let Ok(pid) = text.trim().parse() {
                kill(pid);
            }
        }
    }
}

async fn monitors(agent: &Agent) -> Vec<MonitorStatus> {
    agent.app(|c| c.monitors()).await.expect("monitors")
}

async fn wait_for_phase(agent: &Agent, phase: MonitorPhase) -> MonitorStatus {
    let start = Instant::now();
    loop {
        let list = monitors(agent).await;
        if list[0].phase == phase {
            return list[0].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never {phase:?}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next monitor event from the guest, skipping state updates.
async fn next_event(host: &mut Host) -> MonitorEventKind {
    loop {
        match host.recv().await {
            Frame {
                msg: GuestMsg::Monitor(event),
                ..
            } => {
                assert_eq!(event.monitor, "app-pid");
                return event.kind;
            }
            Frame {
                msg: GuestMsg::Monitors(_) | GuestMsg::MarkActive,
                ..
            } => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_process_monitor_restarts_its_application_then_withholds_the_heartbeats() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _reap = Reap(dir.path());
    let agent = Agent::start(&config(dir.path()));

    // Not running at startup: the start command ran; healthy after the stabilization interval.
    let healthy = wait_for_phase(&agent, MonitorPhase::Healthy).await;
    assert_eq!((healthy.restarts, healthy.restart_count), (0, 1));
    assert_eq!(healthy.failure_action, FailureAction::StopHeartbeats);
    assert!(healthy
        .last_failure
        .as_ref()
        .is_some_and(|f| f.as_str().contains("does not exist")));
    let first = app_pid(dir.path());

    let mut host = agent.connect_host().await;
    let (hello, _) = host.handshake().await;
    assert!(hello.capabilities.contains(Capabilities::MONITORS));
    match host.recv().await.msg {
        GuestMsg::Monitors(list) => assert_eq!(list[0].phase, MonitorPhase::Healthy),
        other => panic!("expected the monitors' states after the State, got {other:?}"),
    }
    let enabling = tokio::task::spawn_blocking({
        let mut client = agent.client();
        move || client.enable()
    });
    let enable = host.recv().await;
    host.send(Frame::reply(
        match enable.tag {
            appmon_wire::Tag::Request(id) => id,
            other => panic!("{other:?}"),
        },
        appmon_wire::HostMsg::Ack,
    ))
    .await;
    enabling.await.expect("thread").expect("enable");

    // Killed: noticed at once (the monitor interval is 10 minutes), restarted.
    let killed = Instant::now();
    kill(first);
    match next_event(&mut host).await {
        MonitorEventKind::Failed { reason } => {
            assert!(
                reason.as_str().contains(&format!("pid {first}")),
                "{reason}"
            )
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(
        next_event(&mut host).await,
        MonitorEventKind::Restarted {
            attempt: 1,
            ok: true
        }
    );
    let healthy = wait_for_phase(&agent, MonitorPhase::Healthy).await;
    assert_eq!(healthy.restarts, 1);
    let second = app_pid(dir.path());
    assert_ne!(first, second);
    agent
        .app(|c| c.mark_active())
        .await
        .expect("heartbeats flow");

    // Killed again: the one restart is used up: heartbeats are withheld.
    kill(second);
    // The pass after the restart's stabilization said Recovered before the kill.
    assert_eq!(next_event(&mut host).await, MonitorEventKind::Recovered);
    assert!(matches!(
        next_event(&mut host).await,
        MonitorEventKind::Failed { .. }
    ));
    assert_eq!(
        next_event(&mut host).await,
        MonitorEventKind::ActionTaken {
            action: FailureAction::StopHeartbeats
        }
    );
    let gave_up = wait_for_phase(&agent, MonitorPhase::GaveUp).await;
    assert!(gave_up.last_failure.is_some());
    match agent.app(|c| c.mark_active()).await {
        Err(ClientError::Refused { message }) => {
            assert!(message.contains("withheld"), "{message}")
        }
        other => panic!("expected a refused markActive, got {other:?}"),
    }
    let status = agent.app(|c| c.status()).await.expect("status");
    assert_eq!(status.heartbeats_withheld_by.as_deref(), Some("app-pid"));
    agent.stop().await;
}
