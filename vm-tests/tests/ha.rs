//! The HA cases end to end: real guests under libvirt + QEMU (TCG), the guest agent and the demo
//! application inside, vhost-user-vsock between them, and the real `appmon-host` daemon, set up
//! the way an operator does it (`appmonctl enable DOMAIN --vsock-uds ...`).
//!
//! Each test asserts on what really happened: the boots on the guest console (each boot prints
//! its boot id), libvirt's state, the host agent's status and history from `appmonctl --json`,
//! the demo application's answers and the guest agent's own log lines on the console. The
//! intervals are small (failure interval 3-5 s, minimum uptime 5-20 s) and come from the policy
//! the test enables, never from magic numbers; "nothing happens" is observed all along the
//! stated time ([`TestVm::hold_for`]).
#![cfg(feature = "vm")]

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use appmon_control::{
    ConnectFailureKind, Decision, FailureAction, GuestEvent, MonitorKind, MonitorMode,
    MonitorPhase, MonitorReport, ResetCause,
};
use appmon_vm_tests::{
    policy_matches, test_host_config, test_policy, unix_ms_now, Config, ConsoleMark, Defaults,
    DemoError, DomainState, HistoryEntry, HostAgent, ResetMethod, Status, TestVm, VmConfig, VmView,
    DEFAULT_BOOT_TIMEOUT, DEMO_COMMAND_TIMEOUT, GUEST_AGENT_PORT, VSOCK_ECHO_PORT,
};
use appmon_wire::{
    decode_all, encode_frame, parse_boot_id, Capabilities, Frame, GuestMsg, Hello, HostMsg, Tag,
};

/// From the guest's ready marker to Green: the guest agent starts, the host agent connects
/// (its reconnect backoff is at most 1 s here), the demo application enables. A few seconds; the
/// bound is for a loaded CI machine.
const GREEN_TIMEOUT: Duration = Duration::from_secs(90);

/// Slack for the host agent to notice something it is told over a Unix socket or libvirt.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(30);

/// How late after the failure interval the host agent may decide to reset, by its own measure
/// (the decision's note "no heartbeat for X ms"). Its per-VM deadline timer fires within a few
/// ms (host-agent/README.md: 2 ms median, 7 ms max in the benchmark); measured here with two TCG
/// guests on 2 cores: 1-3 ms. 100 ms is still tight enough that a timer working in periodic
/// ticks (up to a tick late, e.g. 0-1000 ms for 1 s ticks) fails the test most of the time.
const RESET_TIMER_MARGIN: Duration = Duration::from_millis(100);

/// The same, seen from outside: from the last heartbeat (its age in `appmonctl show`, read
/// between two wall-clock readings) to the decision's history timestamp. This adds the time an
/// `appmonctl` call takes to reach the daemon, measured 6-14 ms here; a loaded CI machine may
/// take ten times that. Still well under a heartbeat period.
const RESET_DECISION_MARGIN: Duration = Duration::from_millis(500);

/// From the demo application taking `needreset` to the host agent's reset decision: `appmon
/// postAppState` in the guest, the guest agent, vsock, the host agent. Under TCG with a second
/// guest booting this measured 60-130 ms; "at once" means well inside one failure interval.
const NEEDRESET_LATENCY: Duration = Duration::from_secs(3);

/// The XML namespace of the host agent's monitoring metadata (libvirt-backend/README.md).
const MONITOR_NAMESPACE: &str = "https://appmon.dev/xmlns/monitor/1";

/// Bound for the demo application's answer to `needreset`, which the reset may cut off.
const NEEDRESET_ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The boot id the guest's /init printed last.
fn current_boot_id(vm: &TestVm) -> String {
    vm.boot_ids()
        .last()
        .cloned()
        .unwrap_or_else(|| vm.fail("no APPMON-INIT boot id on the console"))
}

/// Defines a guest, starts a host agent for it, enables monitoring with `policy` through
/// `appmonctl enable` while the domain is still shut off, boots it and waits until the host
/// agent reports it Green with this boot's id. (`let (vm, agent) = ...` drops the agent first.)
fn boot_monitored(
    config: VmConfig,
    policy: &Defaults,
    agent_config: Config,
) -> (TestVm, HostAgent) {
    let vm = TestVm::new(config);
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
    let boot = current_boot_id(&vm);
    let s = agent.wait_for_status(&vm, GREEN_TIMEOUT, "green with this boot's id", |s| {
        s.is(Status::Green) && s.guest_boot_id.as_deref() == Some(boot.as_str())
    });
    assert!(s.connected && s.enabled, "{}", s.summary());
    (vm, agent)
}

/// When the host agent saw the guest's current boot start (its minimum uptime counts from
/// there), as unix ms.
fn last_boot_ms(vm: &TestVm, s: &VmView) -> u64 {
    s.last_boot_event().map(|h| h.unix_ms).unwrap_or_else(|| {
        vm.fail(format!(
            "no Started/Rebooted event in the host agent's history:\n{}",
            s.history_text()
        ))
    })
}

/// The one check of "left alone and fine": Green, heartbeats arriving, no reset decided, the
/// same boots on the console, the domain running.
fn green_and_untouched(
    vm: &TestVm,
    agent: &HostAgent,
    policy: &Defaults,
    boots: &[String],
) -> Result<(), String> {
    let s = agent.try_show(vm.name()).map_err(|e| e.to_string())?;
    if !s.is(Status::Green) || !s.connected {
        return Err(format!("not green and connected: {}", s.summary()));
    }
    if s.last_heartbeat_age_ms
        .is_none_or(|a| a > ms(policy.failure_interval))
    {
        return Err(format!("heartbeats overdue: {}", s.summary()));
    }
    if let Some(d) = s.reset_decisions().first() {
        return Err(format!("the host agent decided to reset: {d}"));
    }
    let now = vm.boot_ids();
    if now != boots {
        return Err(format!(
            "the guest booted again: boots {now:?}, before {boots:?}"
        ));
    }
    if !s.domain_state.is_running() {
        return Err(format!("domain not running: {}", s.summary()));
    }
    Ok(())
}

/// The guest booted again since `mark` (a reset, or the power-cycle that completes it) and came
/// back Green by itself, with the boot id its console printed last, not one of `boots_before`'s.
fn green_again_after_reset(
    agent: &HostAgent,
    agent_config: &Config,
    vm: &TestVm,
    mark: ConsoleMark,
    boots_before: &[String],
) -> VmView {
    vm.wait_ready_since(mark, DEFAULT_BOOT_TIMEOUT);
    agent.wait_for_status(
        vm,
        agent_config.channel_timeout + 2 * DEFAULT_BOOT_TIMEOUT,
        "green again with a new boot id",
        |s| {
            s.is(Status::Green)
                && s.guest_boot_id.as_deref() == vm.boot_ids().last().map(String::as_str)
                && s.guest_boot_id.as_deref() != boots_before.last().map(String::as_str)
        },
    )
}

/// The silence the policy judged, from its note that heartbeats were overdue.
fn silence_ms(note: &HistoryEntry) -> Option<u64> {
    match note.decision()? {
        Decision::HeartbeatsOverdue { silent_ms, .. } => Some(*silent_ms),
        _ => None,
    }
}

/// Whether `entry` is a decision to reset for `cause` (by whichever method).
fn resets_for(entry: &HistoryEntry, cause: ResetCause) -> bool {
    entry.reset_decision().is_some_and(|(_, c)| c == cause)
}

// --- 1 ----------------------------------------------------------------------------------------

#[test]
fn heartbeating_guest_is_not_reset() {
    let policy = Defaults {
        failure_interval: Duration::from_secs(4),
        min_uptime: Duration::from_secs(10),
        ..test_policy()
    };
    let (vm, agent) = boot_monitored(VmConfig::new("heartbeating"), &policy, test_host_config());
    let boots = vm.boot_ids();
    let s = agent.status(&vm);
    // Failures count only after the minimum uptime; from then on, three failure intervals.
    let counted_from = last_boot_ms(&vm, &s) + ms(policy.min_uptime);
    let until = counted_from.max(unix_ms_now()) + 3 * ms(policy.failure_interval);
    let beats_before = demo_heartbeats(&vm);
    let t0 = Instant::now();
    let checks = vm.hold_for(
        Duration::from_millis(until.saturating_sub(unix_ms_now())),
        "a heartbeating guest left alone and green",
        || green_and_untouched(&vm, &agent, &policy, &boots),
    );
    let beats = demo_heartbeats(&vm) - beats_before;
    let held = t0.elapsed();
    // The demo application beats once a second: the host really was fed all along.
    assert!(
        beats + 2 >= held.as_secs(),
        "{beats} heartbeats in {held:?}"
    );
    assert!(
        !agent.log().contains("resetting"),
        "the host agent logged a reset:\n{}",
        agent.log()
    );
    println!(
        "green and untouched for {:.1}s ({checks} checks, {beats} heartbeats), {:.1} failure intervals past the minimum uptime",
        held.as_secs_f64(),
        (unix_ms_now() - counted_from) as f64 / ms(policy.failure_interval) as f64
    );
}

/// The demo application's heartbeat count (`status`: `... heartbeats=N ...`).
fn demo_heartbeats(vm: &TestVm) -> u64 {
    let status = vm.demo_command("status");
    status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("heartbeats="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| vm.fail(format!("no heartbeat count in the demo's status: {status}")))
}

// --- 2 ----------------------------------------------------------------------------------------

#[test]
fn silent_application_is_reset_within_the_failure_interval() {
    let policy = Defaults {
        failure_interval: Duration::from_secs(4),
        min_uptime: Duration::from_secs(15),
        ..test_policy()
    };
    let agent_config = test_host_config();
    let (vm, agent) = boot_monitored(VmConfig::new("silent"), &policy, agent_config.clone());
    let fi = ms(policy.failure_interval);
    let boots = vm.boot_ids();

    // Before the minimum uptime a silent application would only be reset when it ends; stop
    // heartbeating after it, so that the failure interval alone decides. Green meanwhile.
    let counted_from = last_boot_ms(&vm, &agent.status(&vm)) + ms(policy.min_uptime);
    vm.hold_for(
        Duration::from_millis(counted_from.saturating_sub(unix_ms_now())),
        "green until the minimum uptime has passed",
        || green_and_untouched(&vm, &agent, &policy, &boots),
    );

    let mark = vm.console_mark();
    assert_eq!(vm.demo_command("stop"), "heartbeats stopped");
    let stopped_at = unix_ms_now();
    // The last heartbeat the host saw, from its age in `show`: (earliest, latest) as unix ms.
    let mut last_beat: Option<(u64, u64)> = None;
    let (s, decision) = vm.wait_for(
        policy.failure_interval + NOTICE_TIMEOUT,
        "the host agent's reset decision",
        || {
            let before = unix_ms_now();
            let s = agent.try_show(vm.name()).ok()?;
            let after = unix_ms_now();
            if let Some(d) = s.reset_decisions().first() {
                let d = (*d).clone();
                return Some((s, d));
            }
            if let Some(age) = s.last_heartbeat_age_ms {
                last_beat = Some((before - age, after - age));
            }
            None
        },
    );
    let Some((beat_earliest, beat_latest)) = last_beat else {
        vm.fail("no heartbeat age was ever shown before the decision")
    };
    assert!(
        decision.reset_decision() == Some((ResetMethod::Reset, ResetCause::HeartbeatsStopped)),
        "{decision}\n{}",
        s.history_text()
    );
    // A markActive already under way when the demo took `stop` may still arrive after it.
    assert!(
        decision.unix_ms > stopped_at,
        "decided before the application stopped"
    );
    // By the host's own clock: the silence it judged.
    let note = s
        .history
        .iter()
        .rev()
        .find(|h| silence_ms(h).is_some())
        .unwrap_or_else(|| vm.fail(format!("no silence note:\n{}", s.history_text())));
    let silence = silence_ms(note).unwrap_or_else(|| vm.fail(format!("unreadable note: {note}")));
    assert!(silence > fi, "reset before the failure interval: {note}");
    assert!(
        silence <= fi + ms(RESET_TIMER_MARGIN),
        "reset {} ms after the failure interval: {note}",
        silence - fi
    );
    // By the wall clock, from outside: last heartbeat to decision, at most (the earliest the
    // last heartbeat can have been) and at least.
    let gap_max = decision.unix_ms.saturating_sub(beat_earliest);
    let gap_min = decision.unix_ms.saturating_sub(beat_latest);
    assert!(
        gap_max <= fi + ms(RESET_DECISION_MARGIN),
        "reset {gap_max} ms after the last heartbeat (failure interval {fi} ms, margin {} ms)",
        ms(RESET_DECISION_MARGIN)
    );
    println!(
        "reset decided {gap_min}-{gap_max} ms after the last heartbeat (host's note: {silence} ms; failure interval {fi} ms); last heartbeat {} ms after `stop`",
        beat_earliest as i64 - stopped_at as i64
    );

    // The reset really happens, the guest boots again and comes back Green by itself.
    let s = green_again_after_reset(&agent, &agent_config, &vm, mark, &boots);
    assert!(
        s.find(|h| h
            .reset_done()
            .is_some_and(|(_, c)| c == ResetCause::HeartbeatsStopped))
            .is_some(),
        "{}",
        s.history_text()
    );
    let boots_after = vm.boot_ids();
    assert_ne!(boots_after.last(), boots.last(), "a new boot id");
    report_channel_path(&s, boots_after.len());

    // And stays Green once failures count again: through the new boot's minimum uptime and a
    // failure interval beyond it.
    let decisions = s.reset_decisions().len();
    let until = last_boot_ms(&vm, &s) + ms(policy.min_uptime) + fi;
    vm.hold_for(
        Duration::from_millis(until.saturating_sub(unix_ms_now())),
        "green after the reset, past the minimum uptime",
        || {
            let s = agent.try_show(vm.name()).map_err(|e| e.to_string())?;
            if !s.is(Status::Green) {
                return Err(s.summary());
            }
            if s.reset_decisions().len() != decisions || vm.boot_ids() != boots_after {
                return Err(format!("reset again:\n{}", s.history_text()));
            }
            Ok(())
        },
    );
}

/// Logs whether a reset's guest channel came back by itself or the host agent had to
/// power-cycle (the vhost-device-vsock defect of ENVIRONMENT.md).
fn report_channel_path(s: &VmView, boots: usize) {
    if let Some(p) = s.find(|h| {
        h.reset_decision().is_some_and(|(m, c)| {
            m == ResetMethod::PowerCycle
                && matches!(
                    c,
                    ResetCause::ChannelLostAfterReset | ResetCause::ChannelLostAfterReboot
                )
        })
    }) {
        println!(
            "path: the guest channel did not come back; the host agent power-cycled ({}), {boots} boots",
            p.text
        );
    } else {
        println!("path: the guest channel came back by itself, {boots} boots");
    }
}

// --- 3 ----------------------------------------------------------------------------------------

#[test]
fn application_needreset_resets_the_guest_at_once() {
    // vSphere's defaults: neither the failure interval nor the minimum uptime can be why the
    // guest is reset within seconds of booting.
    let policy = Defaults {
        failure_interval: Duration::from_secs(30),
        min_uptime: Duration::from_secs(120),
        ..test_policy()
    };
    let agent_config = test_host_config();
    let (vm, agent) = boot_monitored(VmConfig::new("needreset"), &policy, agent_config.clone());
    let boots = vm.boot_ids();

    let mark = vm.console_mark();
    let sent = unix_ms_now();
    // The demo application answers once `appmon postAppState` returns, and the host agent
    // resets at once: the reset may well come before the answer. So the command runs beside
    // the test, which watches the host agent meanwhile.
    let (s, answer) = thread::scope(|scope| {
        let command = scope.spawn(|| vm.try_demo_command("needreset", NEEDRESET_ANSWER_TIMEOUT));
        let s = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "a reset decision", |s| {
            !s.reset_decisions().is_empty()
        });
        let answer = command
            .join()
            .unwrap_or_else(|_| vm.fail("the demo command thread panicked"));
        (s, answer)
    });
    match &answer {
        Ok(text) => assert_eq!(text, "needReset posted"),
        // The guest was reset before the answer was out.
        Err(DemoError::NoAnswer { .. } | DemoError::Read { .. }) => {}
        Err(e) => vm.fail(format!("needreset: {e}")),
    }
    println!("the demo application's answer: {answer:?}");
    let decision = s.reset_decisions()[0].clone();
    assert!(
        decision.reset_decision() == Some((ResetMethod::Reset, ResetCause::NeedReset)),
        "{}",
        s.history_text()
    );
    let posted = s
        .find(|h| h.decision() == Some(&Decision::NeedResetPosted))
        .unwrap_or_else(|| {
            vm.fail(format!(
                "needReset not in the history:\n{}",
                s.history_text()
            ))
        });
    assert!(posted.unix_ms <= decision.unix_ms);
    let latency = decision.unix_ms.saturating_sub(sent);
    assert!(
        latency <= ms(NEEDRESET_LATENCY),
        "reset decided {latency} ms after the demo was told to post needReset"
    );
    assert!(latency < ms(policy.failure_interval));
    println!(
        "needReset: posted {} ms and decided {latency} ms after the command",
        posted.unix_ms.saturating_sub(sent)
    );

    let s = green_again_after_reset(&agent, &agent_config, &vm, mark, &boots);
    assert!(!s.need_reset, "the new boot has no pending needReset");
    assert!(
        s.find(|h| h
            .reset_done()
            .is_some_and(|(_, c)| c == ResetCause::NeedReset))
            .is_some(),
        "{}",
        s.history_text()
    );
    report_channel_path(&s, vm.boot_ids().len());
}

// --- 4 ----------------------------------------------------------------------------------------

#[test]
fn resets_stop_after_the_maximum_in_the_window_and_the_agent_gives_up() {
    // Every boot the application beats three times, then falls silent. The default method,
    // `reset`: each attempt is one boot for one failure, with no recovery power-cycle (the
    // guest announces itself after each reset).
    let policy = Defaults {
        failure_interval: Duration::from_secs(3),
        min_uptime: Duration::from_secs(5),
        max_resets: 2,
        reset_window: Duration::from_secs(3600),
        reset_method: ResetMethod::Reset,
    };
    let agent_config = test_host_config();
    let max = policy.max_resets as usize;
    let (vm, agent) = boot_monitored(
        VmConfig::new("giveup").cmdline_arg("appmon.demo=stop-after:3"),
        &policy,
        agent_config.clone(),
    );

    // Each round: silence, reset, boot, Green again.
    let round = policy.failure_interval + DEFAULT_BOOT_TIMEOUT + GREEN_TIMEOUT;
    let s = agent.wait_for_status(
        &vm,
        round * (policy.max_resets + 1),
        "the host agent to give up",
        |s| s.gave_up,
    );
    let decisions = s.reset_decisions();
    assert_eq!(
        decisions.len(),
        max,
        "exactly max_resets attempts:\n{}",
        s.history_text()
    );
    for d in &decisions {
        assert_eq!(
            d.reset_decision(),
            Some((ResetMethod::Reset, ResetCause::HeartbeatsStopped)),
            "{d}"
        );
    }
    assert_eq!(s.resets_in_window, max);
    assert!(s.is(Status::Red), "{}", s.summary());
    let gave_up = s
        .find(|h| {
            matches!(
                h.decision(),
                Some(Decision::GaveUp { max_resets, .. }) if *max_resets as usize == max
            )
        })
        .unwrap_or_else(|| vm.fail(format!("no gave-up note:\n{}", s.history_text())));
    // The alarm `show` reports is the one the policy noted.
    assert_eq!(
        s.alarm.as_deref(),
        Some(gave_up.text.as_str()),
        "{}",
        s.summary()
    );
    assert!(decisions.iter().all(|d| d.unix_ms <= gave_up.unix_ms));
    assert!(
        agent.log().contains("ALARM"),
        "the host agent logs the alarm:\n{}",
        agent.log()
    );
    // Every attempt was a boot: the first boot and one per attempt.
    let boots = vm.wait_for(DEFAULT_BOOT_TIMEOUT, "the last reset's boot", || {
        let b = vm.boot_ids();
        (b.len() == max + 1).then_some(b)
    });

    // Having given up, it stays down: three failure intervals of a silent application, and no
    // reset.
    vm.hold_for(
        3 * policy.failure_interval,
        "no reset after giving up",
        || {
            let now = agent.try_show(vm.name()).map_err(|e| e.to_string())?;
            if !now.gave_up || now.reset_decisions().len() != max {
                return Err(format!("{}\n{}", now.summary(), now.history_text()));
            }
            if vm.boot_ids() != boots {
                return Err(format!("the guest booted again: {:?}", vm.boot_ids()));
            }
            if !now.domain_state.is_running() {
                return Err(now.summary());
            }
            Ok(())
        },
    );
    println!(
        "gave up after {max} resets ({} boots): {}",
        boots.len(),
        gave_up.text
    );
}

// --- 5 ----------------------------------------------------------------------------------------

#[test]
fn host_agent_restart_is_gray_in_the_guest_then_green_without_a_reset() {
    let policy = Defaults {
        failure_interval: Duration::from_secs(4),
        min_uptime: Duration::from_secs(10),
        ..test_policy()
    };
    let (vm, mut agent) = boot_monitored(VmConfig::new("restart"), &policy, test_host_config());
    let boots = vm.boot_ids();
    wait_guest_sees(&vm, "green");

    let status = agent.stop();
    assert!(
        status.success(),
        "appmon-host exits cleanly on SIGTERM: {status}"
    );
    wait_guest_sees(&vm, "gray");
    // Away for longer than a failure interval: the heartbeats it missed must not count.
    vm.hold_for(
        2 * policy.failure_interval,
        "the guest runs on while no host agent runs",
        || {
            if vm.boot_ids() != boots {
                return Err(format!("the guest booted again: {:?}", vm.boot_ids()));
            }
            match vm.state() {
                DomainState::Running => Ok(()),
                other => Err(format!("domain {other}")),
            }
        },
    );

    let mark = vm.console_mark();
    agent.launch();
    let ready = unix_ms_now();
    // The guest agent enables again by itself when the new host agent says Gray.
    vm.wait_for_console_line(mark, "host said Gray: enabled again", GREEN_TIMEOUT);
    let s = agent.wait_for(&vm, Status::Green, GREEN_TIMEOUT);
    assert_eq!(s.guest_boot_id.as_ref(), boots.last());
    wait_guest_sees(&vm, "green");

    // No reset: through the restarted agent's minimum uptime (counted from when it found the
    // domain) and three failure intervals beyond it.
    let until = ready + ms(policy.min_uptime) + 3 * ms(policy.failure_interval);
    vm.hold_for(
        Duration::from_millis(until.saturating_sub(unix_ms_now())),
        "green and not reset after the restart",
        || green_and_untouched(&vm, &agent, &policy, &boots),
    );
    let log = agent.log();
    assert!(!log.contains("resetting"), "{log}");
}

/// Waits until the guest agent tells the application `status` (`appmon getAppStatus`).
fn wait_guest_sees(vm: &TestVm, status: &str) {
    vm.wait_until(
        GREEN_TIMEOUT,
        &format!("the guest to see {status} (appmon getAppStatus)"),
        || {
            vm.try_demo_command("appstatus", DEMO_COMMAND_TIMEOUT)
                .is_ok_and(|s| s == status)
        },
    );
}

// --- 6 ----------------------------------------------------------------------------------------

/// Streams data through the guest's vsock-echo until told to stop: host → guest traffic in
/// flight all the time.
struct Streamer {
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    handle: thread::JoinHandle<String>,
}

impl Streamer {
    fn start(vm: &TestVm) -> Streamer {
        let mut conn = vm.connect(VSOCK_ECHO_PORT, Duration::from_secs(30));
        let timeouts = conn
            .set_read_timeout(Some(Duration::from_secs(5)))
            .and_then(|()| conn.set_write_timeout(Some(Duration::from_secs(5))));
        timeouts.unwrap_or_else(|e| vm.fail(format!("vsock-echo socket: {e}")));
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let (s, e) = (stop.clone(), echoed.clone());
        let handle = thread::spawn(move || {
            let chunk: Vec<u8> = (0..16 * 1024u32).map(|i| (i % 251) as u8).collect();
            let mut back = vec![0u8; chunk.len()];
            while !s.load(Ordering::Relaxed) {
                if let Err(err) = conn.write_all(&chunk) {
                    return format!("write: {err}");
                }
                if let Err(err) = conn.read_exact(&mut back) {
                    return format!("read: {err}");
                }
                if back != chunk {
                    return "echo differs".into();
                }
                e.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            "stopped".into()
        });
        Streamer {
            stop,
            echoed,
            handle,
        }
    }

    fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Stops it; returns the bytes echoed and how the stream ended.
    fn finish(self) -> (u64, String) {
        self.stop.store(true, Ordering::Relaxed);
        let end = self
            .handle
            .join()
            .unwrap_or_else(|_| "streamer panicked".into());
        (self.echoed.load(Ordering::Relaxed), end)
    }
}

#[test]
fn guest_reboot_with_vsock_traffic_in_flight_stays_monitored() {
    let policy = Defaults {
        failure_interval: Duration::from_secs(4),
        min_uptime: Duration::from_secs(10),
        ..test_policy()
    };
    let agent_config = Config {
        channel_timeout: Duration::from_secs(30),
        ..test_host_config()
    };
    let (vm, agent) = boot_monitored(VmConfig::new("reboot"), &policy, agent_config.clone());
    vm.rig().require_guest_program("vsock-echo");
    let boots = vm.boot_ids();

    let streamer = Streamer::start(&vm);
    vm.wait_until(NOTICE_TIMEOUT, "256 KiB echoed through vsock", || {
        streamer.echoed() >= 256 * 1024
    });
    let mark = vm.console_mark();
    let echoed_before = streamer.echoed();
    assert_eq!(vm.demo_command("reboot"), "rebooting");
    vm.wait_ready_since(mark, DEFAULT_BOOT_TIMEOUT);
    // Either the channel comes back by itself, or the host agent notices within its channel
    // timeout that it did not and power-cycles: both end Green with the newest boot.
    let s = agent.wait_for_status(
        &vm,
        agent_config.channel_timeout + 2 * DEFAULT_BOOT_TIMEOUT,
        "green again with the newest boot id",
        |s| {
            s.is(Status::Green)
                && s.connected
                && s.guest_boot_id.as_deref() == vm.boot_ids().last().map(String::as_str)
                && s.guest_boot_id.as_deref() != boots.last().map(String::as_str)
        },
    );
    let (echoed, end) = streamer.finish();
    assert!(
        s.find(|h| matches!(h.decision(), Some(Decision::RebootedAwaitingChannel { .. })))
            .is_some(),
        "the host agent saw the reboot:\n{}",
        s.history_text()
    );
    for d in s.reset_decisions() {
        assert!(
            d.reset_decision()
                == Some((ResetMethod::PowerCycle, ResetCause::ChannelLostAfterReboot)),
            "only a recovery power-cycle may follow a guest's own reboot: {d}"
        );
    }
    let boots_after = vm.boot_ids();
    println!(
        "{} KiB echoed before the reboot, {} KiB in all; the stream ended with: {end}",
        echoed_before / 1024,
        echoed / 1024
    );
    report_channel_path(&s, boots_after.len());
    assert!(boots_after.len() >= 2);
    assert_eq!(s.guest_boot_id.as_ref(), boots_after.last());
}

// --- 7 ----------------------------------------------------------------------------------------

#[test]
fn domain_without_monitoring_metadata_is_never_touched() {
    // The application enables (recorded by the guest agent: no host comes) and falls silent
    // after two heartbeats. Were the domain monitored with the host agent's defaults, it would
    // be reset a few seconds later.
    let defaults = Defaults {
        failure_interval: Duration::from_secs(3),
        min_uptime: Duration::from_secs(5),
        ..test_policy()
    };
    let vm = TestVm::new(VmConfig::new("unmonitored").cmdline_arg("appmon.demo=stop-after:2"));
    vm.rig().require_guest_program("appmon-guest");
    let agent = HostAgent::start(
        &[&vm],
        Config {
            defaults: defaults.clone(),
            ..test_host_config()
        },
    );
    let xml = || vm.virsh_ok(&["dumpxml", "--inactive", vm.name()]);
    let xml_before = xml();
    assert!(
        !xml_before.contains(MONITOR_NAMESPACE),
        "no monitoring metadata:\n{xml_before}"
    );

    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    let boots = vm.boot_ids();
    vm.wait_for_console_line(
        Default::default(),
        "appmon-demo: stopping heartbeats after",
        GREEN_TIMEOUT,
    );
    let hold = defaults.min_uptime + 3 * defaults.failure_interval;
    vm.hold_for(hold, "a domain without metadata left alone", || {
        let list = agent.try_list().map_err(|e| e.to_string())?;
        let Some(s) = list.iter().find(|s| s.name == vm.name()) else {
            return Err(format!("not listed by the host agent: {list:?}"));
        };
        if s.monitored || s.status.is_some() || s.connected || s.transport.is_some() {
            return Err(format!("monitored or connected: {}", s.summary()));
        }
        if vm.boot_ids() != boots {
            return Err(format!("the guest booted again: {:?}", vm.boot_ids()));
        }
        match vm.state() {
            DomainState::Running => Ok(()),
            other => Err(format!("domain {other}")),
        }
    });
    let s = agent.status(&vm);
    let decisions: Vec<_> = s.history.iter().filter(|h| h.libvirt().is_none()).collect();
    assert!(decisions.is_empty(), "{}", s.history_text());
    assert_eq!(xml(), xml_before, "the domain definition was not touched");
    assert!(
        !vm.console().contains("host connected"),
        "no host reached the guest agent"
    );
    assert_eq!(vm.demo_command("appstatus"), "gray");

    // The control: the same host agent acts on the same silent guest once the operator
    // enables monitoring. So only the missing metadata kept it away.
    let mark = vm.console_mark();
    agent.enable(&vm, &defaults);
    let s = agent.wait_for_status(
        &vm,
        defaults.failure_interval + NOTICE_TIMEOUT,
        "a reset once monitored",
        |s| !s.reset_decisions().is_empty(),
    );
    assert!(
        resets_for(s.reset_decisions()[0], ResetCause::HeartbeatsStopped),
        "{}",
        s.history_text()
    );
    vm.wait_ready_since(mark, DEFAULT_BOOT_TIMEOUT);
}

// --- 7b ---------------------------------------------------------------------------------------

/// A misconfigured guest (issue 11, finding 3): its agent announces itself on host port 5316,
/// where no host agent listens, and listens for dials there too. The host agent listens on 5315
/// and, hearing nothing, dials the guest on 5315 through the real vhost-user-vsock backend,
/// which refuses every time. `appmonctl show` says why there is no session and how often; the
/// log and the history say it once per change of reason, not once per dial.
#[test]
fn a_guest_on_the_wrong_port_shows_why_it_has_no_session() {
    let vm = TestVm::new(VmConfig::new("wrongport").guest_config("vsock = true\nport = 5316\n"));
    vm.rig().require_guest_program("appmon-guest");
    let agent = HostAgent::start(
        &[&vm],
        Config {
            dial_after: Duration::from_secs(1),
            ..test_host_config()
        },
    );
    agent.enable(&vm, &test_policy());
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    vm.wait_for_console_line(
        Default::default(),
        "listening for the host on AF_VSOCK",
        GREEN_TIMEOUT,
    );
    // Dials about once a second (the reconnect backoff is at most 1 s here): five of them.
    let s = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "five failed dials counted", |s| {
        s.connect_failure.as_ref().is_some_and(|f| f.times >= 5)
    });
    assert!(!s.connected, "{}", s.summary());
    let failure = s.connect_failure.as_ref().expect("a reason");
    // The real backend drops a refused CONNECT as a broken pipe, a reset or a close: one kind.
    assert_eq!(
        failure.reason.kind,
        ConnectFailureKind::DialRefused,
        "{}",
        failure.reason
    );
    assert!(failure.reason.detail.contains("5315"), "{}", failure.reason);
    let entries: Vec<_> = s
        .history
        .iter()
        .filter(|h| matches!(h.guest(), Some(GuestEvent::ConnectFailed { .. })))
        .collect();
    // One entry per change of reason (a dial while the guest still boots might fail another
    // way first), never one per dial.
    assert!(
        !entries.is_empty() && entries.len() <= 2,
        "{}",
        s.history_text()
    );
    let logged = agent
        .log()
        .lines()
        .filter(|l| l.contains("no session with the guest agent"))
        .count();
    assert_eq!(logged, entries.len(), "{}", agent.log());
    let text = agent
        .ctl_ok(&["show", vm.name()])
        .unwrap_or_else(|e| vm.fail(format!("appmonctl show: {e}")));
    let line = text
        .lines()
        .find(|l| l.contains("no session: "))
        .unwrap_or_else(|| vm.fail(format!("no `no session` line in appmonctl show:\n{text}")));
    assert!(
        line.contains("no session: the guest refused the dial: ") && line.contains(" times since "),
        "{line}"
    );
    println!("appmonctl show: {}", line.trim());
    assert!(s.reset_decisions().is_empty(), "{}", s.history_text());
}

// --- 8 ----------------------------------------------------------------------------------------

#[test]
fn guest_agent_is_reached_over_af_vsock() {
    let vm = TestVm::new(VmConfig::new("afvsock").guest_config("vsock = true\nport = 5315\n"));
    vm.rig().require_guest_program("appmon-guest");
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    let boot = current_boot_id(&vm);
    let boot_bytes =
        parse_boot_id(&boot).unwrap_or_else(|| vm.fail(format!("bad boot id {boot:?}")));
    let listening = vm.wait_for_console_line(
        Default::default(),
        "listening for the host on AF_VSOCK",
        GREEN_TIMEOUT,
    );
    assert!(listening.contains("port=5315"), "{listening}");

    // Speak the protocol ourselves, through the guest's vhost-user-vsock device.
    let mark = vm.console_mark();
    let mut conn = vm.connect(GUEST_AGENT_PORT, GREEN_TIMEOUT);
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| vm.fail(e));
    let hello = Hello::new("vm-tests", [0x42; 16], Capabilities::HEARTBEAT);
    let bytes = encode_frame(&Frame::event(HostMsg::Hello(hello)))
        .unwrap_or_else(|e| vm.fail(format!("encoding Hello: {e}")));
    conn.write_all(&bytes).unwrap_or_else(|e| vm.fail(e));
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    // The guest answers with its Hello and its State: two frames, two delimiters.
    while got.iter().filter(|&&b| b == 0).count() < 2 {
        match conn.read(&mut buf) {
            Ok(0) => vm.fail(format!("the guest agent closed after {} bytes", got.len())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => vm.fail(format!("reading the guest's Hello: {e}")),
        }
    }
    drop(conn);
    let frames = decode_all::<GuestMsg>(&got);
    let guest_hello = match frames.first() {
        Some(Ok(Frame {
            tag: Tag::Event,
            msg: GuestMsg::Hello(h),
        })) => h.clone(),
        other => vm.fail(format!("expected the guest's Hello, got {other:?}")),
    };
    assert_eq!(
        guest_hello.boot_id, boot_bytes,
        "the Hello carries the boot id this guest's /init printed"
    );
    assert!(
        guest_hello.agent.as_str().starts_with("appmon-guest "),
        "{}",
        guest_hello.agent
    );
    assert!(
        matches!(
            frames.get(1),
            Some(Ok(Frame {
                msg: GuestMsg::State(_),
                ..
            }))
        ),
        "{frames:?}"
    );
    // The guest agent accepted us on its AF_VSOCK listener, from the host's CID 2.
    let line = vm.wait_for_console_line(mark, "host connected", NOTICE_TIMEOUT);
    assert!(line.contains("transport=vsock cid 2 port "), "{line}");

    // The real host agent: the guest agent announces itself to it (protocol 2), connecting
    // to CID 2, which vhost-device-vsock delivers to the host agent's `<uds>_5315`.
    let policy = test_policy();
    let mark = vm.console_mark();
    let agent = HostAgent::start(&[&vm], test_host_config());
    agent.enable(&vm, &policy);
    let s = agent.wait_for_status(&vm, GREEN_TIMEOUT, "the host agent's session", |s| {
        s.connected && s.is(Status::Green)
    });
    assert_eq!(s.guest_boot_id.as_deref(), Some(boot.as_str()));
    assert!(
        s.transport
            .as_deref()
            .is_some_and(|t| t.contains(&vm.vsock_uds().display().to_string())),
        "{:?}",
        s.transport
    );
    let line = vm.wait_for_console_line(mark, "host session established", NOTICE_TIMEOUT);
    assert!(
        line.contains("transport=vsock cid 2 port 5315 (announced)"),
        "{line}"
    );
    println!("guest agent: {line}");
}

// --- 9 ----------------------------------------------------------------------------------------

/// The guest agent's application monitors (guest.toml `[[monitor]]`) in one boot and the reset
/// that ends it. A process monitor `monapp` (mode both) starts the test application
/// `/etc/appmon/monapp` (a shell loop, so its process name is `monapp`), a custom monitor
/// `hang` runs a check that hangs once `/tmp/hang` exists. `monitor-scenario`, a script in
/// init.d, drives them in order and prints `MONTEST ...` lines; the guest agent's own log lines
/// come as `[appmon-guest] ...`.
const MONITOR_CONFIG: &str = r#"port = 5315

[[monitor]]
name = "monapp"
kind = "process"
mode = "both"
process = "monapp"
owner = "root"
instances = 1
stabilization_interval = 2
monitor_interval = 30
restart_count = 2
restart_interval = 600
failure_action = "need-reset"
start = "/etc/appmon/monapp-start"
cleanup = "/etc/appmon/monapp-stop"
command_timeout = 10

[[monitor]]
name = "hang"
kind = "custom"
command = "/etc/appmon/hang-check"
timeout = 2
stabilization_interval = 1
monitor_interval = 2
restart_count = 0
failure_action = "notify"
"#;

/// The monitored application: its process name is the script's name.
const MONAPP: &str = "#!/bin/sh\necho $$ > /run/monapp.pid\nwhile :; do sleep 1; done\n";

/// Its start command: one console line per start (MONAPP-START), then the application,
/// detached from the agent's output pipe as an init script would.
const MONAPP_START: &str = "#!/bin/sh\n\
echo \"MONAPP-START uptime=$(cut -d' ' -f1 /proc/uptime)\" >/dev/console\n\
/etc/appmon/monapp </dev/null >/dev/null 2>&1 &\n";

const MONAPP_STOP: &str = "#!/bin/sh\nkill \"$(cat /run/monapp.pid)\" 2>/dev/null\nexit 0\n";

/// Healthy until /tmp/hang exists; then it hangs, with a child of its own.
const HANG_CHECK: &str = "#!/bin/sh\n[ -e /tmp/hang ] || exit 0\nsleep 31337 &\nwait\n";

/// Drives the monitors, once per boot (its respawn loop would start it again: it ends in a
/// long sleep). Every wait is bounded; a MONTEST-FAIL line says which one ran out.
const MONITOR_SCENARIO: &str = r#"#!/bin/sh
say() { echo "MONTEST $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
phase() { appmon monitors 2>/dev/null | awk -v m="$1" '$1 == m { print $5 }'; }
wait_phase() { # MONITOR PHASE TENTHS
  i=0
  while [ "$(phase "$1")" != "$2" ]; do
    i=$((i + 1))
    if [ "$i" -gt "$3" ]; then say "FAIL $1 never $2"; exec sleep 1000000; fi
    sleep 0.1
  done
}
json() { say "monitors $(appmon monitors --json | tr -d '\n')"; }

wait_phase monapp healthy 600
wait_phase hang healthy 600
say "healthy uptime=$(up)"

# (3) A custom check that hangs is killed at its timeout and counted as a failure.
touch /tmp/hang
wait_phase hang gave 200
sleep 0.5
say "hang-leftovers=$(ps | grep -c '[s]leep 31337')"
# Listed while it still hangs: once the check passes again the monitor is healthy.
json
rm -f /tmp/hang

# (2) The agent restarts; its startup check finds monapp running and does not start it again.
say "agent-restart uptime=$(up)"
kill "$(pidof appmon-guest)"
sleep 2
i=0
until appmon monitors >/dev/null 2>&1; do
  i=$((i + 1)); [ "$i" -gt 300 ] && { say "FAIL the agent did not come back"; exec sleep 1000000; }
  sleep 0.1
done
# The application enabled monitoring with the agent that ended; it does so again.
appmon enable >/dev/null 2>&1 || appmon enable
wait_phase monapp healthy 600
say "agent-restarted uptime=$(up)"

# (1) monapp is killed three times: noticed at once, restarted twice, then needReset.
for n in 1 2 3; do
  wait_phase monapp healthy 600
  t0=$(up)
  kill -9 "$(cat /run/monapp.pid)"
  i=0
  while [ "$(phase monapp)" = healthy ]; do
    i=$((i + 1)); [ "$i" -gt 600 ] && { say "FAIL kill $n not noticed"; exec sleep 1000000; }
    sleep 0.05
  done
  say "noticed kill $n after $(awk -v a="$t0" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }') s"
done
exec sleep 1000000
"#;

fn monitor_vm_config() -> VmConfig {
    VmConfig::new("monitors")
        .guest_config(MONITOR_CONFIG)
        .guest_script("/etc/appmon/monapp", MONAPP)
        .guest_script("/etc/appmon/monapp-start", MONAPP_START)
        .guest_script("/etc/appmon/monapp-stop", MONAPP_STOP)
        .guest_script("/etc/appmon/hang-check", HANG_CHECK)
        .guest_script("/etc/appmon/init.d/monitor-scenario", MONITOR_SCENARIO)
}

/// The `appmon monitors --json` the scenario printed first after `mark`.
fn printed_monitors(vm: &TestVm, mark: ConsoleMark) -> Vec<appmon_wire::MonitorStatus> {
    let line = vm.wait_for_console_line(mark, "MONTEST monitors ", NOTICE_TIMEOUT);
    let json = line
        .split_once("MONTEST monitors ")
        .map(|(_, j)| j)
        .unwrap_or_default();
    serde_json::from_str(json)
        .unwrap_or_else(|e| vm.fail(format!("appmon monitors --json: {e}: {json}")))
}

/// The values of the host's `Application monitors` counters of `vm` (`appmonctl --json
/// counters VM "Application monitors"`), by counter name; `None` until the entity exists.
fn monitor_counters(
    agent: &HostAgent,
    vm: &TestVm,
) -> Option<std::collections::BTreeMap<String, f64>> {
    let out = agent
        .ctl_ok(&["--json", "counters", vm.name(), "Application monitors"])
        .ok()?;
    let doc: appmon_control::CountersDocument = serde_json::from_str(&out)
        .unwrap_or_else(|e| vm.fail(format!("appmonctl counters --json: {e}: {out}")));
    Some(
        doc.counters
            .entities
            .iter()
            .flat_map(|e| &e.counters)
            .filter_map(|c| c.value.map(|v| (c.name.clone(), v)))
            .collect(),
    )
}

/// The console of the first boot only.
fn first_boot(text: &str) -> &str {
    match text.match_indices("APPMON-INIT boot_id=").nth(1) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[test]
fn application_monitors_restart_then_need_reset_and_the_host_resets() {
    // vSphere's defaults: only the monitor's needReset can reset this guest within two minutes
    // (the agent restart of step 2 silences the demo application's heartbeats for a moment).
    let policy = Defaults {
        failure_interval: Duration::from_secs(30),
        min_uptime: Duration::from_secs(120),
        ..test_policy()
    };
    let agent_config = test_host_config();
    let (vm, agent) = boot_monitored(monitor_vm_config(), &policy, agent_config.clone());
    let boots = vm.boot_ids();
    let boot = ConsoleMark::default();
    let scenario = Duration::from_secs(90);
    let fail_fast = |vm: &TestVm| {
        if let Some(line) = vm.console().lines().find(|l| l.contains("MONTEST FAIL")) {
            vm.fail(format!("the guest scenario failed: {line}"));
        }
    };

    // The first start: not running at startup, so the start command ran, once.
    vm.wait_for_console_line(boot, "MONTEST healthy", scenario);
    vm.wait_for_console_line(boot, "monitor `monapp`: startup check: not running (0 of 1 instance of `monapp` owned by root running)", Duration::ZERO);
    assert_eq!(vm.marker_count("MONAPP-START"), 1);
    // The host shows both monitors as the guest lists them, and keeps the startup in history.
    let s = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "both monitors shown", |s| {
        s.monitors.iter().any(|m| m.name == "monapp") && s.monitors.iter().any(|m| m.name == "hang")
    });
    let monapp = s.monitors.iter().find(|m| m.name == "monapp").cloned();
    let monapp = monapp.unwrap_or_else(|| vm.fail("no monapp"));
    assert_eq!(
        (
            monapp.kind,
            monapp.mode,
            monapp.restart_count,
            monapp.failure_action
        ),
        (
            MonitorKind::Process,
            MonitorMode::Both,
            2,
            FailureAction::NeedReset
        ),
        "{monapp:?}"
    );
    // Reports made before the session was up are not sent again (the state is); the start
    // command's comes after the startup check, at the start of the stabilization interval.
    let s = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "monapp's start in the history", |s| {
        s.find(|h| {
            h.monitor().is_some_and(|m| {
                m.monitor == "monapp"
                    && matches!(
                        m.report,
                        MonitorReport::StartupFailed { .. } | MonitorReport::Started { ok: true }
                    )
            })
        })
        .is_some()
    });
    println!("{}", s.history_text());

    // (3) The hanging check: killed at its 2 s timeout with its child, a failure, notify.
    let leftovers = vm.wait_for_console_line(boot, "MONTEST hang-leftovers=", scenario);
    fail_fast(&vm);
    assert!(leftovers.ends_with("hang-leftovers=0"), "{leftovers}");
    let failed = vm.wait_for_console_line(boot, "monitor `hang`: check failed:", Duration::ZERO);
    assert!(failed.contains("timed out after 2 s: killed"), "{failed}");
    vm.wait_for_console_line(
        boot,
        "monitor `hang`: restarts used up: failure action Notify",
        Duration::ZERO,
    );
    let listed = printed_monitors(&vm, boot);
    let hang = listed
        .iter()
        .find(|m| m.name == "hang")
        .unwrap_or_else(|| vm.fail("no `hang` listed"));
    assert_eq!(hang.phase, appmon_wire::MonitorPhase::GaveUp, "{hang:?}");
    assert!(
        hang.last_failure
            .as_ref()
            .is_some_and(|f| f.as_str().contains("timed out")),
        "{hang:?}"
    );
    // The host sees the same: the failure it last listed (its phase moves on once the check
    // passes again), and the failure and the action in its history.
    let s = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "hang's failure, on the host", |s| {
        s.monitors.iter().any(|m| {
            m.name == "hang"
                && m.last_failure
                    .as_deref()
                    .is_some_and(|f| f.contains("timed out"))
                && matches!(m.phase, MonitorPhase::GaveUp | MonitorPhase::Healthy)
        })
    });
    // And as counters of the `Application monitors` entity: six per monitor.
    let counters = vm.wait_for(NOTICE_TIMEOUT, "hang's failure as a counter", || {
        monitor_counters(&agent, &vm).filter(|c| {
            c.get("hang failures").is_some_and(|&v| v >= 1.0)
                && c.get("hang failure actions").is_some_and(|&v| v >= 1.0)
        })
    });
    for monitor in ["monapp", "hang"] {
        for counter in [
            "state",
            "healthy",
            "restarts",
            "restart count",
            "failures",
            "failure actions",
        ] {
            let name = format!("{monitor} {counter}");
            assert!(counters.contains_key(&name), "no {name}: {counters:?}");
        }
    }
    assert_eq!(counters.len(), 12, "{counters:?}");
    assert_eq!(
        counters.get("monapp restart count"),
        Some(&2.0),
        "{counters:?}"
    );
    println!("Application monitors after hang gave up: {counters:?}");
    let hang_failed = |r: &MonitorReport| matches!(r, MonitorReport::Failed { reason } if reason.contains("timed out"));
    let notified = |r: &MonitorReport| {
        *r == MonitorReport::ActionTaken {
            action: FailureAction::Notify,
        }
    };
    for (what, report) in [
        ("a failure", &hang_failed as &dyn Fn(&MonitorReport) -> bool),
        ("the notify action", &notified),
    ] {
        assert!(
            s.find(|h| h
                .monitor()
                .is_some_and(|m| m.monitor == "hang" && report(&m.report)))
                .is_some(),
            "no {what} of hang in the host's history:\n{}",
            s.history_text()
        );
    }

    // (2) The agent restarted: the application runs, so it is not started a second time.
    let restart = vm.wait_for_console_line(boot, "MONTEST agent-restart ", scenario);
    let restarted = vm.wait_for_console_line(boot, "MONTEST agent-restarted", scenario);
    fail_fast(&vm);
    let text = vm.console();
    let after_restart = text
        .split_once(restart.as_str())
        .map_or("", |(_, rest)| rest);
    assert!(
        after_restart.contains(
            "monitor `monapp`: startup check found the application running: not starting it"
        ),
        "no startup-ok after the agent restart:\n{}",
        vm.console_tail(60)
    );
    assert_eq!(
        vm.marker_count("MONAPP-START"),
        1,
        "started again after the agent restart"
    );
    println!("{restart} / {restarted}");

    // (1) Killed three times: each noticed at once (the monitor interval is 30 s), restarted
    // twice (with cleanup), then needReset, and the host agent resets the guest.
    let mark = vm.console_mark();
    let s = agent.wait_for_status(&vm, scenario, "a reset decision", |s| {
        fail_fast(&vm);
        !s.reset_decisions().is_empty()
    });
    let decision = s.reset_decisions()[0].clone();
    // The kills were counted as monapp's failures (the third may be cut by the reset).
    let counters =
        monitor_counters(&agent, &vm).unwrap_or_else(|| vm.fail("no Application monitors"));
    assert!(
        counters.get("monapp failures").is_some_and(|&v| v >= 2.0),
        "{counters:?}"
    );
    println!("Application monitors at the reset: {counters:?}");
    // The host kept the monitor's restarts in its history before the reset.
    for attempt in [1, 2] {
        assert!(
            s.find(|h| {
                h.monitor().is_some_and(|m| m.monitor == "monapp"
                && matches!(m.report, MonitorReport::Restarted { attempt: a, .. } if a == attempt))
            })
            .is_some(),
            "no restart {attempt} of monapp in the host's history:\n{}",
            s.history_text()
        );
    }
    assert!(
        decision
            .text
            .starts_with("reset: the application asked for a reset (needReset)"),
        "{}",
        s.history_text()
    );
    // The third kill's needReset may reset the guest before the scenario prints that it noticed.
    for n in 1..=3 {
        let needle = format!("MONTEST noticed kill {n} after ");
        if n == 3 && !vm.console().contains(&needle) {
            continue;
        }
        let line = vm.wait_for_console_line(boot, &needle, Duration::ZERO);
        let secs: f64 = line
            .rsplit("after ")
            .next()
            .and_then(|t| t.trim_end_matches(" s").parse().ok())
            .unwrap_or_else(|| vm.fail(format!("unreadable: {line}")));
        assert!(
            secs < 5.0,
            "kill {n} noticed after {secs} s, not at once: {line}"
        );
        println!("{line}");
    }
    let text = vm.console();
    let boot1 = first_boot(&text);
    assert_eq!(
        appmon_vm_tests::console::marker_lines(boot1, "MONAPP-START").count(),
        3,
        "one start and two restarts"
    );
    for needle in [
        "monitor `monapp`: cleanup command `/etc/appmon/monapp-stop`: running",
        "monitor `monapp`: application restarted, attempt 1 (ok: true)",
        "monitor `monapp`: application restarted, attempt 2 (ok: true)",
    ] {
        assert!(
            boot1.contains(needle),
            "no {needle:?} on the console:\n{}",
            vm.console_tail(80)
        );
    }
    assert!(
        !boot1.contains("attempt 3"),
        "a third restart:\n{}",
        vm.console_tail(80)
    );
    // Its last words may be cut by the reset they caused.
    println!(
        "guest agent logged the failure action before the reset: {}",
        boot1.contains("monitor `monapp`: posting needReset for the application")
    );

    let s = green_again_after_reset(&agent, &agent_config, &vm, mark, &boots);
    assert!(
        s.find(|h| h
            .reset_done()
            .is_some_and(|(_, c)| c == ResetCause::NeedReset))
            .is_some(),
        "{}",
        s.history_text()
    );
    report_channel_path(&s, vm.boot_ids().len());
}
