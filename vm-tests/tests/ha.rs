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

use appmon_control::{Decision, ResetCause};
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
    // Every boot the application beats three times, then falls silent. Power-cycles: the reset
    // method the other cases do not cover, and every attempt is then one boot for one failure
    // (an in-QEMU reset on this rig costs a recovery power-cycle, which counts as an attempt).
    let policy = Defaults {
        failure_interval: Duration::from_secs(3),
        min_uptime: Duration::from_secs(5),
        max_resets: 2,
        reset_window: Duration::from_secs(3600),
        reset_method: ResetMethod::PowerCycle,
    };
    let agent_config = test_host_config();
    let max = policy.max_resets as usize;
    let (vm, agent) = boot_monitored(
        VmConfig::new("giveup").cmdline_arg("appmon.demo=stop-after:3"),
        &policy,
        agent_config.clone(),
    );

    // Each round: silence, power-cycle, boot, Green again.
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
            Some((ResetMethod::PowerCycle, ResetCause::HeartbeatsStopped)),
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
        "gave up after {max} power-cycles ({} boots): {}",
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

    // And the real host agent gets there the same way.
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
    let line = vm.wait_for_console_line(mark, "host connected", NOTICE_TIMEOUT);
    assert!(line.contains("transport=vsock cid 2 port "), "{line}");
    println!("guest agent: {line}");
}
