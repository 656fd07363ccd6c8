//! No false reset (issue 19): a healthy guest whose application heartbeats once a second is
//! not reset when the host agent itself is stopped, when the domain is suspended, or when the
//! host agent is killed and restarted; and, as the control on the same guest, an application
//! that really falls silent is still reset within the failure interval + 100 ms.
//!
//! Everything is observed from outside as an operator would: `appmonctl show --json` (status,
//! history, reset decisions), the host agent's log, libvirt's state and the boots the guest's
//! console printed.
#![cfg(feature = "vm")]

use std::thread;
use std::time::{Duration, Instant};

use appmon_control::{Decision, HistoryKind, HostEvent, ResetCause, ResetMethod};
use appmon_vm_tests::{
    policy_matches, test_host_config, test_policy, unix_ms_now, Config, Defaults, DomainState,
    HostAgent, Status, TestVm, TwoHosts, VmConfig, DEFAULT_BOOT_TIMEOUT,
};
use nix::sys::signal::Signal;

/// From the guest's ready marker to Green (as in tests/ha.rs).
const GREEN_TIMEOUT: Duration = Duration::from_secs(90);
/// Slack for the host agent to notice something it is told over a Unix socket or libvirt.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(30);
/// How late after the failure interval the reset decision may come by the host's own note
/// (tests/ha.rs: the timer fires within a few ms; the drain of the guest's pending input before
/// the verdict adds one round trip to the session task).
const RESET_TIMER_MARGIN: Duration = Duration::from_millis(100);
/// How long the host agent is stopped each time: more than twice the failure interval.
const STOPPED: Duration = Duration::from_secs(7);
/// How long the domain stays suspended: three failure intervals.
const SUSPENDED: Duration = Duration::from_secs(9);
/// "Green within a few seconds of resume".
const GREEN_AFTER_RESUME: Duration = Duration::from_secs(10);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn policy() -> Defaults {
    Defaults {
        failure_interval: Duration::from_secs(3),
        min_uptime: Duration::from_secs(5),
        ..test_policy()
    }
}

/// Defines the guest, starts a host agent, enables monitoring, boots, waits for Green.
fn boot_monitored(name: &str, policy: &Defaults, agent_config: Config) -> (TestVm, HostAgent) {
    let vm = TestVm::new(VmConfig::new(name));
    vm.rig().require_guest_program("appmon-guest");
    vm.rig().require_guest_program("appmon-demo");
    let agent = HostAgent::start(&[&vm], agent_config);
    agent.enable(&vm, policy);
    agent.wait_for_status(
        &vm,
        NOTICE_TIMEOUT,
        "the policy given to appmonctl enable",
        |s| s.monitored && s.policy.as_ref().is_some_and(|p| policy_matches(policy, p)),
    );
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    let boot = vm
        .boot_ids()
        .last()
        .cloned()
        .unwrap_or_else(|| vm.fail("no boot id"));
    agent.wait_for_status(&vm, GREEN_TIMEOUT, "green with this boot's id", |s| {
        s.is(Status::Green) && s.guest_boot_id.as_deref() == Some(boot.as_str())
    });
    (vm, agent)
}

/// No reset decided, no new boot, the domain not off.
fn untouched(vm: &TestVm, agent: &HostAgent, boots: &[String]) -> Result<(), String> {
    let s = agent.try_show(vm.name()).map_err(|e| e.to_string())?;
    if let Some(d) = s.reset_decisions().first() {
        return Err(format!("the host agent decided to reset: {d}"));
    }
    if vm.boot_ids() != boots {
        return Err(format!("the guest booted again: {:?}", vm.boot_ids()));
    }
    Ok(())
}

/// Untouched, Green, heartbeats at most a failure interval old.
fn green_and_untouched(
    vm: &TestVm,
    agent: &HostAgent,
    policy: &Defaults,
    boots: &[String],
) -> Result<(), String> {
    untouched(vm, agent, boots)?;
    let s = agent.try_show(vm.name()).map_err(|e| e.to_string())?;
    if !s.is(Status::Green) || !s.connected {
        return Err(format!("not green and connected: {}", s.summary()));
    }
    if s.last_heartbeat_age_ms
        .is_none_or(|a| a > ms(policy.failure_interval))
    {
        return Err(format!("heartbeats overdue: {}", s.summary()));
    }
    if !s.domain_state.is_running() {
        return Err(format!("domain not running: {}", s.summary()));
    }
    Ok(())
}

/// Holds until the minimum uptime of the current host agent's view of this boot has passed.
fn past_min_uptime(vm: &TestVm, agent: &HostAgent, policy: &Defaults, boots: &[String]) {
    let s = agent.status(vm);
    let booted = s
        .last_boot_event()
        .map(|h| h.unix_ms)
        .unwrap_or_else(|| vm.fail(format!("no boot event:\n{}", s.history_text())));
    let from_ready = agent
        .ready_at()
        .map(|at| unix_ms_now() - ms(at.elapsed()))
        .unwrap_or(0);
    let counted_from = booted.max(from_ready) + ms(policy.min_uptime);
    vm.hold_for(
        Duration::from_millis(counted_from.saturating_sub(unix_ms_now())),
        "green until the minimum uptime has passed",
        || green_and_untouched(vm, agent, policy, boots),
    );
}

#[test]
fn nofalse_stopped_agent_suspended_domain_killed_agent_do_not_reset_a_heartbeating_guest() {
    let policy = policy();
    let fi = policy.failure_interval;
    let (vm, mut agent) = boot_monitored("nofalse", &policy, test_host_config());
    let boots = vm.boot_ids();
    past_min_uptime(&vm, &agent, &policy, &boots);

    // (1) The host agent is not scheduled for more than twice the failure interval, three
    // times; meanwhile the guest's heartbeats wait in the session socket.
    for round in 1..=3 {
        agent.signal(Signal::SIGSTOP);
        thread::sleep(STOPPED);
        agent.signal(Signal::SIGCONT);
        let t0 = Instant::now();
        vm.hold_for(
            fi + Duration::from_secs(1),
            &format!("green and untouched after stop {round}"),
            || green_and_untouched(&vm, &agent, &policy, &boots),
        );
        println!(
            "stop {round}: {STOPPED:?} stopped, green and untouched for {:?} after",
            t0.elapsed()
        );
    }
    let log = agent.log();
    let pauses = log.matches("process pause detected").count();
    assert!(
        pauses >= 3,
        "the host agent saw {pauses} pauses of 3:\n{log}"
    );
    // Each pause is in the VM's history too, with its length.
    let s = agent.status(&vm);
    let recorded: Vec<u64> = s
        .history
        .iter()
        .filter_map(|h| match &h.kind {
            HistoryKind::Host(HostEvent::SchedulingPause { paused_ms }) => Some(*paused_ms),
            _ => None,
        })
        .collect();
    assert!(
        recorded.len() >= 3 && recorded.iter().all(|&ms| ms >= 1000),
        "pauses in the history: {recorded:?}\n{}",
        s.history_text()
    );
    println!("pauses in the history (ms): {recorded:?}");

    // (2) The domain suspended for three failure intervals: never Red, nothing decided.
    vm.virsh_ok(&["suspend", vm.name()]);
    agent.wait_for_status(
        &vm,
        NOTICE_TIMEOUT,
        "the host agent sees the domain paused",
        |s| matches!(s.domain_state, appmon_control::DomainState::Paused(_)),
    );
    vm.hold_for(SUSPENDED, "suspended: never red, not reset", || {
        untouched(&vm, &agent, &boots)?;
        let s = agent.try_show(vm.name()).map_err(|e| e.to_string())?;
        if s.is(Status::Red) {
            return Err(format!("red while paused: {}", s.summary()));
        }
        Ok(())
    });
    vm.virsh_ok(&["resume", vm.name()]);
    let resumed = Instant::now();
    agent.wait_for_status(
        &vm,
        GREEN_AFTER_RESUME,
        "green again after the resume",
        |s| s.is(Status::Green) && s.domain_state.is_running(),
    );
    println!(
        "suspended {SUSPENDED:?}: green {:?} after the resume",
        resumed.elapsed()
    );
    vm.hold_for(2 * fi, "green and untouched after the resume", || {
        green_and_untouched(&vm, &agent, &policy, &boots)
    });
    let state = vm.state();
    if state != DomainState::Running {
        vm.fail(format!("domain {state} after the resume"));
    }

    // (3) The host agent killed (SIGKILL: no goodbye) and started again: the history it had is
    // still there, and it does not reset.
    let before = agent.status(&vm);
    // The history is written a second after its last entry.
    thread::sleep(Duration::from_millis(1500));
    let status = agent.kill();
    println!("host agent killed: {status}");
    agent.launch();
    let after = agent.wait_for(&vm, Status::Green, GREEN_TIMEOUT);
    let kept = before
        .history
        .iter()
        .filter(|h| {
            after
                .history
                .iter()
                .any(|a| a.unix_ms == h.unix_ms && a.text == h.text)
        })
        .count();
    assert_eq!(
        kept,
        before.history.len(),
        "history lost across the restart\nbefore:\n{}\nafter:\n{}",
        before.history_text(),
        after.history_text()
    );
    assert!(
        after
            .history
            .iter()
            .any(|h| matches!(h.libvirt(), Some(appmon_control::DomainEvent::Suspended(_)))),
        "the suspend before the restart is not in the history:\n{}",
        after.history_text()
    );
    past_min_uptime(&vm, &agent, &policy, &boots);
    vm.hold_for(fi, "green and untouched after the restart", || {
        green_and_untouched(&vm, &agent, &policy, &boots)
    });

    // The control: the application really stops; the reset still comes within the failure
    // interval + 100 ms by the host's own measure.
    assert_eq!(vm.demo_command("stop"), "heartbeats stopped");
    let stopped_at = unix_ms_now();
    let (s, decision) = vm.wait_for(fi + NOTICE_TIMEOUT, "the reset decision", || {
        let s = agent.try_show(vm.name()).ok()?;
        let d = s.reset_decisions().first().map(|d| (*d).clone())?;
        Some((s, d))
    });
    assert_eq!(
        decision.reset_decision(),
        Some((ResetMethod::Reset, ResetCause::HeartbeatsStopped)),
        "{}",
        s.history_text()
    );
    assert!(
        decision.unix_ms > stopped_at,
        "decided before the application stopped"
    );
    let silent = s
        .history
        .iter()
        .rev()
        .find_map(|h| match h.decision() {
            Some(Decision::HeartbeatsOverdue { silent_ms, .. }) => Some(*silent_ms),
            _ => None,
        })
        .unwrap_or_else(|| vm.fail(format!("no silence note:\n{}", s.history_text())));
    assert!(
        silent > ms(fi),
        "reset before the failure interval: {silent} ms"
    );
    assert!(
        silent <= ms(fi) + ms(RESET_TIMER_MARGIN),
        "reset {} ms after the failure interval",
        silent - ms(fi)
    );
    println!(
        "control: reset decided after {silent} ms of silence (failure interval {} ms)",
        ms(fi)
    );
}

/// The guest agent's channel (the host agent's default name) for the private libvirtd's guest:
/// the two-host harness's guests use virtio-serial (tests/migration.rs).
const AGENT_CHANNEL: &str = "org.appmon.agent.0";
/// How long libvirtd stays down.
const LIBVIRTD_DOWN: Duration = Duration::from_secs(8);

/// The application: enables, then `appmon markActive` once a second.
const BEAT_SCRIPT: &str = r#"#!/bin/sh
until out=$(/bin/appmon enable 2>&1); do echo "BEAT-ENABLE-FAILED $out"; sleep 1; done
echo "BEAT-ENABLED"
while :; do
  /bin/appmon markActive >/dev/null 2>&1 || echo "BEAT-FAILED"
  sleep 1
done
"#;

#[test]
fn nofalse_libvirtd_killed_and_restarted_does_not_reset_and_show_tells_the_outage() {
    let policy = policy();
    let mut two = TwoHosts::start();
    let config = VmConfig::new("nofalse-lv")
        .without_vsock()
        .extra_devices_xml(format!(
            "    <channel type='unix'><source mode='bind'/><target type='virtio' name='{AGENT_CHANNEL}'/></channel>"
        ))
        .guest_config(format!("vsock = false\nvirtio_serial = \"{AGENT_CHANNEL}\"\n"))
        .guest_script("/etc/appmon/init.d/beat", BEAT_SCRIPT)
        .cmdline_arg("appmon.skip=appmon-demo,vsock-echo");
    let vm = TestVm::new_on(config, two.a().uri());
    vm.rig().require_guest_program("appmon-guest");
    two.attach_logs(&vm);
    let agent = HostAgent::start_on(two.a(), &[&vm], test_host_config());
    agent.enable_channel(&vm, AGENT_CHANNEL, &policy);
    agent.wait_for_status(&vm, NOTICE_TIMEOUT, "the policy of appmonctl enable", |s| {
        s.monitored
            && s.policy
                .as_ref()
                .is_some_and(|p| policy_matches(&policy, p))
    });
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    let boot = vm
        .boot_ids()
        .last()
        .cloned()
        .unwrap_or_else(|| vm.fail("no boot id"));
    agent.wait_for_status(&vm, GREEN_TIMEOUT, "green with this boot's id", |s| {
        s.is(Status::Green) && s.guest_boot_id.as_deref() == Some(boot.as_str())
    });
    let boots = vm.boot_ids();
    past_min_uptime(&vm, &agent, &policy, &boots);

    // libvirtd killed; `show` tells the outage while it lasts; started again after 8 s.
    let killed_at = unix_ms_now();
    let outage = thread::scope(|s| {
        let restart = s.spawn(|| two.a_mut().kill_and_restart(LIBVIRTD_DOWN));
        let seen = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "show tells libvirt is away", |s| {
            s.libvirt_lost.is_some()
        });
        if let Err(e) = untouched(&vm, &agent, &boots) {
            vm.fail(e);
        }
        let text = agent
            .ctl_ok(&["show", vm.name()])
            .unwrap_or_else(|e| vm.fail(e));
        assert!(
            text.contains("UNREACHABLE since"),
            "show during the outage:\n{text}"
        );
        let down = restart
            .join()
            .unwrap_or_else(|_| vm.fail("the libvirtd restart panicked"))
            .unwrap_or_else(|e| vm.fail(e));
        (seen, down, text)
    });
    let (seen, down, text) = outage;
    let lost = seen
        .libvirt_lost
        .as_ref()
        .unwrap_or_else(|| vm.fail("no outage"));
    assert!(
        lost.since_unix_ms >= killed_at.saturating_sub(1000),
        "outage since {} but libvirtd was killed at {killed_at}",
        lost.since_unix_ms
    );
    println!("libvirtd down for {down:?}; show said during the outage:\n{text}");

    // Back: the outage is gone from `show` and its loss and return are in the history; no reset
    // through two failure intervals.
    let back = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "libvirt back in show", |s| {
        s.libvirt_lost.is_none() && s.is(Status::Green)
    });
    let history = back.history_text();
    assert!(
        history.contains("libvirt connection lost") && history.contains("libvirt connection back"),
        "the history does not record the loss and the return:\n{history}"
    );
    vm.hold_for(
        2 * policy.failure_interval,
        "green and untouched after libvirtd came back",
        || green_and_untouched(&vm, &agent, &policy, &boots),
    );
    assert!(!agent.log().contains("resetting"), "{}", agent.log());
}
