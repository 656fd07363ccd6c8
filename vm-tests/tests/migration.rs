//! Monitoring over the virtio-serial channel, and across what moves or stops a guest without
//! booting it: live migration between two real libvirt daemons (hosts `a` and `b` of
//! [`TwoHosts`], each with its own real `appmon-host`), an aborted migration, suspend/resume and
//! save/restore (issue 17, cases 0-4), and a guest on vsock across a migration (case 5).
//!
//! The guests of cases 0-4 have no vsock device (QEMU 7.2 refuses to migrate or save vhost-user-vsock,
//! MIGRATION.md): the guest agent serves the host on the virtio-serial channel
//! `org.appmon.agent.0`, which the host agent finds in the live domain XML (`appmonctl enable
//! --channel-name`), and the test steers the application through a second channel,
//! `org.appmon.t`. The application is a guest script that calls `appmon markActive` once a
//! second and prints each heartbeat, numbered, on the console (`[beat] BEAT n=<n> up=<uptime>`):
//! that its loop was never interrupted is read there.
#![cfg(feature = "vm")]

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use appmon_control::{Decision, DomainEvent, ResetCause, RunningReason};
use appmon_vm_tests::{
    policy_matches, test_host_config, test_policy, unix_ms_now, ConsoleMark, Defaults, DomainState,
    HistoryEntry, HostAgent, LibvirtHost, Status, TestVm, TwoHosts, VmConfig, VmView, VsockBackend,
    DEFAULT_BOOT_TIMEOUT,
};

/// The guest agent's channel (the host agent's default name).
const AGENT_CHANNEL: &str = "org.appmon.agent.0";
/// The test's channel to the application script (`appctl` in the guest).
const CONTROL_CHANNEL: &str = "org.appmon.t";
/// Boot to Green: the guest agent starts, the host agent connects, the application enables.
const GREEN_TIMEOUT: Duration = Duration::from_secs(90);
/// Slack for the host agent to notice something libvirt or the guest told it.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(30);
/// How late after the failure interval the host agent may decide, by its own measure (its
/// "no heartbeat for X ms" note); ha.rs has the reasoning.
const RESET_TIMER_MARGIN: Duration = Duration::from_millis(100);
/// From the application's `stop` (the script printed it: its last heartbeat was at most one
/// period and one `appmon markActive` earlier) to the reset decision, by the wall clock.
const STOP_TO_RESET_MARGIN: Duration = Duration::from_millis(2500);
/// The longest pause between two heartbeats of the application that still counts as an
/// uninterrupted loop: its 1 s sleep, one `appmon markActive` under TCG, and a migration's
/// pause of the guest (50-200 ms, MIGRATION.md).
const MAX_BEAT_GAP: Duration = Duration::from_millis(3000);

const GUEST_CONFIG: &str = "vsock = false\nvirtio_serial = \"org.appmon.agent.0\"\n";

/// The application: enables, then `appmon markActive` once a second, each numbered; while
/// /tmp/beat.stop exists it is silent (it "hangs").
const BEAT_SCRIPT: &str = r#"#!/bin/sh
until out=$(/bin/appmon enable 2>&1); do echo "BEAT-ENABLE-FAILED $out"; sleep 1; done
echo "BEAT-ENABLED"
n=0
while :; do
  if [ -e /tmp/beat.stop ]; then sleep 0.1; continue; fi
  n=$((n + 1))
  if out=$(/bin/appmon markActive 2>&1); then
    echo "BEAT n=$n up=$(cut -d' ' -f1 /proc/uptime)"
  else
    echo "BEAT-FAILED n=$n $out"
  fi
  sleep 1
done
"#;

/// Takes one command per line from the test's channel: `stop` and `resume` the application.
const APPCTL_SCRIPT: &str = r#"#!/bin/sh
P=/dev/virtio-ports/org.appmon.t
while :; do
  if [ -e $P ] && read -r cmd <$P; then
    case $cmd in
      stop) touch /tmp/beat.stop ;;
      resume) rm -f /tmp/beat.stop ;;
    esac
    echo "APPCTL $cmd up=$(cut -d' ' -f1 /proc/uptime)"
  else
    sleep 0.3
  fi
done
"#;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A guest without vsock, its agent on the channel, the beating application and its control.
fn channel_vm_config(test: &str) -> VmConfig {
    VmConfig::new(test)
        .without_vsock()
        .extra_devices_xml(format!(
            "    <channel type='unix'><source mode='bind'/><target type='virtio' name='{AGENT_CHANNEL}'/></channel>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='{CONTROL_CHANNEL}'/></channel>"
        ))
        .guest_config(GUEST_CONFIG)
        .guest_script("/etc/appmon/init.d/beat", BEAT_SCRIPT)
        .guest_script("/etc/appmon/init.d/appctl", APPCTL_SCRIPT)
        .cmdline_arg("appmon.skip=appmon-demo,vsock-echo")
}

/// One heartbeat the application printed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Beat {
    n: u64,
    uptime: f64,
}

/// The application's heartbeats on the console since `mark`; fails the test on a failed one.
fn beats_since(vm: &TestVm, mark: ConsoleMark) -> Vec<Beat> {
    let text = vm.console_since(mark);
    let mut beats = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("[beat] ") else {
            continue;
        };
        if rest.starts_with("BEAT-FAILED") {
            vm.fail(format!("the application's markActive failed: {line}"));
        }
        let Some(fields) = rest.strip_prefix("BEAT ") else {
            continue;
        };
        let field = |k: &str| {
            fields
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_owned)
        };
        if let (Some(n), Some(up)) = (field("n="), field("up=")) {
            if let (Ok(n), Ok(uptime)) = (n.parse(), up.parse()) {
                beats.push(Beat { n, uptime });
            }
        }
    }
    beats
}

/// Checks that the heartbeats are one loop, never interrupted: consecutive numbers, no pause
/// longer than [`MAX_BEAT_GAP`] (by the guest's own uptime), and returns the longest pause.
fn assert_uninterrupted(vm: &TestVm, beats: &[Beat]) -> Duration {
    let mut longest = 0.0f64;
    for w in beats.windows(2) {
        if w[1].n != w[0].n + 1 {
            vm.fail(format!(
                "the application's heartbeat loop was interrupted: {:?} then {:?}",
                w[0], w[1]
            ));
        }
        longest = longest.max(w[1].uptime - w[0].uptime);
    }
    let longest = Duration::from_secs_f64(longest.max(0.0));
    assert!(
        longest <= MAX_BEAT_GAP,
        "a pause of {longest:?} between two heartbeats"
    );
    longest
}

/// Sends `cmd` to the application through the control channel, whose socket `outside` is,
/// and returns once the guest printed that it took it (as unix ms then).
fn app_command(vm: &TestVm, socket: PathBuf, cmd: &str) -> u64 {
    let mark = vm.console_mark();
    let mut stream = vm.wait_for(
        NOTICE_TIMEOUT,
        &format!("a connection to the control channel {}", socket.display()),
        || UnixStream::connect(&socket).ok(),
    );
    if let Err(e) = stream.write_all(format!("{cmd}\n").as_bytes()) {
        vm.fail(format!("cannot write to {}: {e}", socket.display()));
    }
    vm.wait_for_console_line(mark, &format!("APPCTL {cmd}"), NOTICE_TIMEOUT);
    unix_ms_now()
}

/// The control channel's socket of a guest on the rig's libvirtd, or on `host`.
fn control_socket(vm: &TestVm, host: Option<&LibvirtHost>) -> PathBuf {
    let inside = vm.wait_for(
        NOTICE_TIMEOUT,
        "the control channel in the live XML",
        || vm.channel_socket(CONTROL_CHANNEL),
    );
    match host {
        Some(h) => h.outside(&inside),
        None => inside,
    }
}

/// The boot id the guest's /init printed last.
fn current_boot_id(vm: &TestVm) -> String {
    vm.boot_ids()
        .last()
        .cloned()
        .unwrap_or_else(|| vm.fail("no APPMON-INIT boot id on the console"))
}

fn green_with_boot(agent: &HostAgent, vm: &TestVm, boot: &str, timeout: Duration) -> VmView {
    agent.wait_for_status(vm, timeout, &format!("green with boot id {boot}"), |s| {
        s.is(Status::Green) && s.connected && s.guest_boot_id.as_deref() == Some(boot)
    })
}

/// The silence the policy judged, from its note that heartbeats were overdue.
fn silence_ms(note: &HistoryEntry) -> Option<u64> {
    match note.decision()? {
        Decision::HeartbeatsOverdue { silent_ms, .. } => Some(*silent_ms),
        _ => None,
    }
}

/// Waits for the reset decision after the application was stopped at `stopped_ms` and checks
/// it came one failure interval after its last heartbeat: by the host's own note (within
/// [`RESET_TIMER_MARGIN`]) and by the wall clock from the stop.
fn assert_reset_on_time(agent: &HostAgent, vm: &TestVm, policy: &Defaults, stopped_ms: u64) {
    let fi = ms(policy.failure_interval);
    let s = agent.wait_for_status(
        vm,
        policy.failure_interval + NOTICE_TIMEOUT,
        "the reset decision",
        |s| !s.reset_decisions().is_empty(),
    );
    let decision = s.reset_decisions()[0].clone();
    assert_eq!(
        decision.reset_decision(),
        Some((policy.reset_method, ResetCause::HeartbeatsStopped)),
        "{}",
        s.history_text()
    );
    let note = s
        .history
        .iter()
        .rev()
        .find(|h| silence_ms(h).is_some())
        .unwrap_or_else(|| vm.fail(format!("no silence note:\n{}", s.history_text())));
    let silence = silence_ms(note).unwrap_or_default();
    assert!(silence > fi, "reset before the failure interval: {note}");
    assert!(
        silence <= fi + ms(RESET_TIMER_MARGIN),
        "reset {} ms after the failure interval: {note}",
        silence - fi
    );
    let after_stop = decision.unix_ms.saturating_sub(stopped_ms);
    assert!(
        after_stop <= fi + ms(STOP_TO_RESET_MARGIN),
        "reset {after_stop} ms after the application stopped (failure interval {fi} ms)\n{}",
        s.history_text()
    );
    println!(
        "{}: reset decided {after_stop} ms after the application stopped (host's note: {silence} ms without a heartbeat; failure interval {fi} ms)",
        vm.name()
    );
}

/// Holds "no reset decided" for `duration`, while `what`.
fn hold_no_reset(agent: &HostAgent, vm: &TestVm, duration: Duration, what: &str) {
    vm.hold_for(duration, what, || {
        let s = agent.try_show(vm.name()).map_err(|e| e.to_string())?;
        match s.reset_decisions().first() {
            Some(d) => Err(format!("the host agent decided to reset: {d}")),
            None => Ok(()),
        }
    });
}

// --- 0 and 4: one host ---------------------------------------------------------------------------

/// Case 0 and case 4 in one boot (the reset comes last): monitored over the virtio-serial
/// channel, Green; suspended and then saved, each for longer than the failure interval, with no
/// reset and Green again on the same boot; then the application falls silent and the guest is
/// reset within the failure interval and comes back Green.
#[test]
fn channel_guest_survives_pause_and_save_and_is_reset_when_silent() {
    let policy = Defaults {
        failure_interval: Duration::from_secs(4),
        min_uptime: Duration::from_secs(10),
        ..test_policy()
    };
    let fi = policy.failure_interval;
    let vm = TestVm::new(channel_vm_config("chan"));
    vm.rig().require_guest_program("appmon-guest");
    let agent = HostAgent::start(&[&vm], test_host_config());
    agent.enable_channel(&vm, AGENT_CHANNEL, &policy);
    agent.wait_for_status(&vm, NOTICE_TIMEOUT, "the policy of appmonctl enable", |s| {
        s.monitored
            && s.policy
                .as_ref()
                .is_some_and(|p| policy_matches(&policy, p))
    });
    let mark = vm.console_mark();
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    let boot = current_boot_id(&vm);
    let s = green_with_boot(&agent, &vm, &boot, GREEN_TIMEOUT);
    assert!(
        s.transport
            .as_deref()
            .is_some_and(|t| t.contains(AGENT_CHANNEL)),
        "transport: {:?}",
        s.transport
    );
    // Past the minimum uptime, so that a missed heartbeat would count.
    hold_no_reset(
        &agent,
        &vm,
        policy.min_uptime,
        "green through the minimum uptime",
    );

    // Case 4a: suspend for two failure intervals, resume.
    vm.virsh_ok(&["suspend", vm.name()]);
    hold_no_reset(&agent, &vm, 2 * fi, "suspended for two failure intervals");
    vm.virsh_ok(&["resume", vm.name()]);
    let t0 = Instant::now();
    green_with_boot(&agent, &vm, &boot, NOTICE_TIMEOUT);
    println!(
        "suspend/resume: green {} ms after the resume",
        t0.elapsed().as_millis()
    );
    hold_no_reset(&agent, &vm, 2 * fi, "green after the resume");

    // Case 4b: save for two failure intervals, restore: a new domain id, a new channel path.
    let path_before = vm.channel_socket(AGENT_CHANNEL);
    let saved = vm.dir().join("saved.img");
    let saved_arg = saved.to_string_lossy().into_owned();
    let t0 = Instant::now();
    vm.virsh_ok(&["save", vm.name(), &saved_arg]);
    let save_took = t0.elapsed();
    hold_no_reset(&agent, &vm, 2 * fi, "saved for two failure intervals");
    let t0 = Instant::now();
    vm.virsh_ok(&["restore", &saved_arg]);
    let restore_took = t0.elapsed();
    let _ = std::fs::remove_file(&saved);
    let t0 = Instant::now();
    green_with_boot(&agent, &vm, &boot, NOTICE_TIMEOUT);
    println!(
        "save {:.1}s, restore {:.1}s, green {} ms after the restore; channel {:?} -> {:?}",
        save_took.as_secs_f64(),
        restore_took.as_secs_f64(),
        t0.elapsed().as_millis(),
        path_before,
        vm.channel_socket(AGENT_CHANNEL)
    );
    hold_no_reset(&agent, &vm, 2 * fi, "green after the restore");
    assert_eq!(
        vm.boot_ids(),
        std::slice::from_ref(&boot),
        "no boot since the first"
    );
    let beats = beats_since(&vm, mark);
    assert!(beats.len() > 10, "{beats:?}");
    for w in beats.windows(2) {
        assert_eq!(w[1].n, w[0].n + 1, "the heartbeat loop went on: {beats:?}");
    }

    // Case 0: the application falls silent: reset one failure interval later, Green again.
    // (Restored counts as a new start: the minimum uptime counts from there.)
    let s = agent.status(&vm);
    let counted_from = s.last_boot_event().map_or(0, |h| h.unix_ms) + ms(policy.min_uptime);
    hold_no_reset(
        &agent,
        &vm,
        Duration::from_millis(counted_from.saturating_sub(unix_ms_now())),
        "green until the minimum uptime after the restore",
    );
    let reset_mark = vm.console_mark();
    let stopped = app_command(&vm, control_socket(&vm, None), "stop");
    assert_reset_on_time(&agent, &vm, &policy, stopped);
    vm.wait_ready_since(reset_mark, DEFAULT_BOOT_TIMEOUT);
    let new_boot = current_boot_id(&vm);
    assert_ne!(new_boot, boot);
    green_with_boot(&agent, &vm, &new_boot, GREEN_TIMEOUT);
}

// --- 1, 2, 3: two hosts ----------------------------------------------------------------------------

/// The migration time libvirt measured (`domjobinfo --completed` on the destination): (time
/// elapsed, downtime) in ms, when it says.
fn job_times(host: &LibvirtHost, vm: &TestVm) -> (Option<u64>, Option<u64>) {
    let info = host
        .virsh(&["domjobinfo", "--completed", vm.name()])
        .unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
    };
    (field("Time elapsed:"), field("Total downtime:"))
}

/// The source and destination host agents of a guest on `from` (agents of a and b, in order).
fn agents_of<'h>(
    from: &LibvirtHost,
    agents: &[&'h HostAgent; 2],
) -> (&'h HostAgent, &'h HostAgent) {
    if from.label() == "a" {
        (agents[0], agents[1])
    } else {
        (agents[1], agents[0])
    }
}

/// When the destination's host agent saw the guest arrive and when the application was enabled
/// again there (unix ms, its history's times).
struct Arrival {
    resumed_ms: u64,
    enabled_ms: u64,
}

/// Checks an arrival: the destination's host agent `dst` took the guest up Gray (`arrived by
/// migration`), it is Green there with the same boot and was enabled again after the arrival,
/// with no reset; the source's host agent `src` dropped it without a reset.
fn assert_arrived(src: &HostAgent, dst: &HostAgent, to: &str, vm: &TestVm, boot: &str) -> Arrival {
    let s = green_with_boot(dst, vm, boot, NOTICE_TIMEOUT);
    let resumed_ms = s
        .find(|h| h.libvirt() == Some(DomainEvent::Resumed(RunningReason::Migrated)))
        .map(|h| h.unix_ms)
        .unwrap_or_else(|| {
            vm.fail(format!(
                "no Resumed(Migrated) on {to}:\n{}",
                s.history_text()
            ))
        });
    let gray = s
        .find(|h| h.decision() == Some(&Decision::ArrivedByMigration))
        .unwrap_or_else(|| {
            vm.fail(format!(
                "not taken up as arrived by migration:\n{}",
                s.history_text()
            ))
        });
    let enabled_ms = s
        .history
        .iter()
        .find(|h| h.unix_ms >= gray.unix_ms && h.decision() == Some(&Decision::ApplicationEnabled))
        .map(|h| h.unix_ms)
        .unwrap_or_else(|| {
            vm.fail(format!(
                "no Enable after the arrival:\n{}",
                s.history_text()
            ))
        });
    assert!(s.reset_decisions().is_empty(), "{}", s.history_text());
    // The source let go of it (`appmonctl show` exits 4: unknown domain), without a reset.
    vm.wait_until(NOTICE_TIMEOUT, "the source's host agent to drop it", || {
        src.try_show(vm.name()).is_err_and(|e| e.code() == Some(4))
    });
    assert!(
        !src.log().contains("resetting"),
        "the source's host agent logged a reset:\n{}",
        src.log()
    );
    Arrival {
        resumed_ms,
        enabled_ms,
    }
}

/// Migrates the guest to the other host and checks the arrival ([`assert_arrived`]). Returns
/// the destination.
fn migrate_and_arrive<'a>(
    two: &'a TwoHosts,
    agents: &[&HostAgent; 2],
    vm: &TestVm,
    boot: &str,
) -> &'a LibvirtHost {
    let from = two
        .host_of(&vm.uri())
        .unwrap_or_else(|| vm.fail("on no host"));
    let to = two.other(from);
    let (src, dst) = agents_of(from, agents);
    let m = two.migrate(vm);
    let arrival = assert_arrived(src, dst, to.label(), vm, boot);
    let (elapsed, downtime) = job_times(to, vm);
    println!(
        "migration {} -> {}: virsh migrate {} ms, QEMU job {:?} ms, downtime {:?} ms; gray -> green (enabled again) {} ms after Resumed(Migrated)",
        from.label(),
        to.label(),
        m.wall.as_millis(),
        elapsed,
        downtime,
        arrival.enabled_ms.saturating_sub(arrival.resumed_ms)
    );
    to
}

/// Cases 1-3 on one boot: an aborted migration (no reset on either side, monitoring goes on at
/// the source), live migration a -> b -> a with the application heartbeating throughout (no
/// reset, Gray then Green on each arrival, its heartbeat loop never interrupted), and the
/// application falling silent right after arriving on b (b resets it within the failure
/// interval).
#[test]
fn live_migration_moves_monitoring_without_a_reset() {
    let policy = Defaults {
        failure_interval: Duration::from_secs(4),
        min_uptime: Duration::from_secs(10),
        ..test_policy()
    };
    let fi = policy.failure_interval;
    let two = TwoHosts::start();
    let vm = TestVm::new_on(channel_vm_config("mig"), two.a().uri());
    vm.rig().require_guest_program("appmon-guest");
    two.attach_logs(&vm);
    let agent_a = HostAgent::start_on(two.a(), &[&vm], test_host_config());
    let agent_b = HostAgent::start_on(two.b(), &[&vm], test_host_config());
    agent_a.enable_channel(&vm, AGENT_CHANNEL, &policy);
    agent_a.wait_for_status(&vm, NOTICE_TIMEOUT, "the policy of appmonctl enable", |s| {
        s.monitored
            && s.policy
                .as_ref()
                .is_some_and(|p| policy_matches(&policy, p))
    });
    let mark = vm.console_mark();
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    let boot = current_boot_id(&vm);
    green_with_boot(&agent_a, &vm, &boot, GREEN_TIMEOUT);
    hold_no_reset(
        &agent_a,
        &vm,
        policy.min_uptime,
        "green through the minimum uptime",
    );

    // Case 3: an aborted migration. Throttled to 1 MiB/s it runs long enough to be aborted
    // once the destination has its incoming domain.
    std::thread::scope(|s| {
        let migration = s.spawn(|| two.try_migrate(&vm, &["--bandwidth", "1"]));
        vm.wait_until(NOTICE_TIMEOUT, "the incoming domain on b", || {
            two.b().virsh(&["domstate", vm.name()]).is_ok()
        });
        std::thread::sleep(Duration::from_secs(1));
        vm.virsh_ok(&["domjobabort", vm.name()]);
        let result = migration
            .join()
            .unwrap_or_else(|_| vm.fail("the migration thread panicked"));
        assert!(result.is_err(), "the migration was not aborted: {result:?}");
    });
    assert_eq!(vm.uri(), two.a().uri());
    assert_eq!(vm.state(), DomainState::Running);
    hold_no_reset(
        &agent_a,
        &vm,
        2 * fi,
        "green at the source after the aborted migration",
    );
    green_with_boot(&agent_a, &vm, &boot, NOTICE_TIMEOUT);
    if let Ok(s) = agent_b.try_show(vm.name()) {
        assert!(s.reset_decisions().is_empty(), "b: {}", s.history_text());
    }

    // Case 1: a -> b -> a, heartbeating throughout.
    let to = migrate_and_arrive(&two, &[&agent_a, &agent_b], &vm, &boot);
    assert_eq!(to.label(), "b");
    hold_no_reset(&agent_b, &vm, 2 * fi, "green on b");
    let to = migrate_and_arrive(&two, &[&agent_a, &agent_b], &vm, &boot);
    assert_eq!(to.label(), "a");
    // a kept what it knew of the guest when it left, and took it up again on its return.
    let s = agent_a.status(&vm);
    let left = Decision::Left {
        why: "migrated away".into(),
    };
    assert!(
        s.find(|h| h.decision() == Some(&left)).is_some(),
        "a's history does not say that the guest left:\n{}",
        s.history_text()
    );
    hold_no_reset(&agent_a, &vm, 2 * fi, "green on a again");
    assert_eq!(
        vm.boot_ids(),
        std::slice::from_ref(&boot),
        "no boot since the first"
    );
    let beats = beats_since(&vm, mark);
    let longest = assert_uninterrupted(&vm, &beats);
    println!(
        "{} heartbeats of one uninterrupted loop through the aborted migration and a -> b -> a; longest pause {} ms",
        beats.len(),
        longest.as_millis()
    );
    for agent in [&agent_a, &agent_b] {
        assert!(
            !agent.log().contains("resetting"),
            "a host agent logged a reset:\n{}",
            agent.log()
        );
    }

    // Case 2: silent right after arriving on b: b resets it within the failure interval.
    let to = migrate_and_arrive(&two, &[&agent_a, &agent_b], &vm, &boot);
    let reset_mark = vm.console_mark();
    let stopped = app_command(&vm, control_socket(&vm, Some(to)), "stop");
    assert_reset_on_time(&agent_b, &vm, &policy, stopped);
    vm.wait_ready_since(reset_mark, DEFAULT_BOOT_TIMEOUT);
    let new_boot = current_boot_id(&vm);
    assert_ne!(new_boot, boot);
    green_with_boot(&agent_b, &vm, &new_boot, GREEN_TIMEOUT);
    assert!(
        !agent_a.log().contains("resetting"),
        "host a reset a guest that had left:\n{}",
        agent_a.log()
    );
}

// --- 5: vsock across a migration ----------------------------------------------------------------

/// Case 5: a guest whose agent talks to the host over vsock migrates a -> b with the workaround
/// of MIGRATION.md (its vsock device unplugged on a, plugged in again on b against b's own
/// vhost-device-vsock), which resets its vsock connection as kernel vhost-vsock does on a
/// migration. The guest agent announces itself to b's host agent (the guest speaks first), b
/// took the guest up Gray on its arrival and it is Green again with the same boot, with no reset
/// on either side and the application's heartbeat loop never interrupted.
#[test]
fn vsock_guest_announces_itself_to_the_destination_after_migration() {
    let policy = Defaults {
        failure_interval: Duration::from_secs(6),
        min_uptime: Duration::from_secs(10),
        ..test_policy()
    };
    let fi = policy.failure_interval;
    let two = TwoHosts::start();
    let config = VmConfig::new("vsockmig")
        .guest_script("/etc/appmon/init.d/beat", BEAT_SCRIPT)
        .cmdline_arg("appmon.skip=appmon-demo,vsock-echo");
    let vm = TestVm::new_on(config, two.a().uri());
    vm.rig().require_guest_program("appmon-guest");
    two.attach_logs(&vm);
    let dest_backend = VsockBackend::start(vm.rig());
    vm.attach_log("vhost-device-vsock-b", &dest_backend.log_path());
    let agent_a = HostAgent::start_on(two.a(), &[&vm], test_host_config());
    let agent_b = HostAgent::start_on(two.b(), &[&vm], test_host_config());
    agent_a.enable(&vm, &policy);
    agent_a.wait_for_status(&vm, NOTICE_TIMEOUT, "the policy of appmonctl enable", |s| {
        s.monitored
            && s.policy
                .as_ref()
                .is_some_and(|p| policy_matches(&policy, p))
    });
    let mark = vm.console_mark();
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    let boot = current_boot_id(&vm);
    green_with_boot(&agent_a, &vm, &boot, GREEN_TIMEOUT);
    hold_no_reset(
        &agent_a,
        &vm,
        policy.min_uptime,
        "green through the minimum uptime",
    );

    let source_uds = vm.vsock_uds();
    let m = two.migrate_vsock(&vm, (&source_uds, &vm.vhost_user_socket()), &dest_backend);
    let replugged_ms = unix_ms_now().saturating_sub(ms(m.replugged_at.elapsed()));
    assert_eq!(vm.uri(), two.b().uri());
    let arrival = assert_arrived(&agent_a, &agent_b, "b", &vm, &boot);
    let s = agent_b.status(&vm);
    let dest_uds = dest_backend.vsock_uds().to_string_lossy().into_owned();
    assert!(
        s.transport
            .as_deref()
            .is_some_and(|t| t.contains(&dest_uds)),
        "b's transport is not its own backend's {dest_uds}: {:?}",
        s.transport
    );
    println!(
        "vsock migration a -> b: unplug {} ms, virsh migrate {} ms, replug {} ms; gray -> green (enabled again) {} ms after Resumed(Migrated), {} ms after the replug",
        m.unplug.as_millis(),
        m.migration.wall.as_millis(),
        m.replug.as_millis(),
        arrival.enabled_ms.saturating_sub(arrival.resumed_ms),
        arrival.enabled_ms.saturating_sub(replugged_ms)
    );
    hold_no_reset(&agent_b, &vm, 2 * fi, "green on b");
    green_with_boot(&agent_b, &vm, &boot, NOTICE_TIMEOUT);
    assert_eq!(
        vm.boot_ids(),
        std::slice::from_ref(&boot),
        "no boot since the first"
    );
    let beats = beats_since(&vm, mark);
    let longest = assert_uninterrupted(&vm, &beats);
    println!(
        "{} heartbeats of one uninterrupted loop through the vsock migration; longest pause {} ms",
        beats.len(),
        longest.as_millis()
    );
    for agent in [&agent_a, &agent_b] {
        assert!(
            !agent.log().contains("resetting"),
            "a host agent logged a reset:\n{}",
            agent.log()
        );
    }
}

/// The two-host harness itself: two daemons with their own host UUIDs, no domains of the rig's
/// libvirtd, and nothing left once dropped.
#[test]
fn two_hosts_are_separate_libvirt_daemons_and_leave_nothing_behind() {
    let two = TwoHosts::start();
    let uuid = |h: &LibvirtHost| {
        let caps = h
            .virsh(&["capabilities"])
            .unwrap_or_else(|e| panic!("host {}: {e}", h.label()));
        caps.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("<uuid>")
                    .and_then(|r| r.strip_suffix("</uuid>"))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no host uuid in the capabilities of {}", h.label()))
    };
    let (ua, ub) = (uuid(two.a()), uuid(two.b()));
    assert_ne!(ua, ub);
    for h in [two.a(), two.b()] {
        let list = h.virsh(&["list", "--all", "--name"]).unwrap_or_default();
        assert!(
            list.trim().is_empty(),
            "host {} has domains: {list}",
            h.label()
        );
    }
    let dir = two.dir().to_path_buf();
    let pids = [two.a().pid(), two.b().pid()];
    drop(two);
    assert!(!dir.exists(), "{} is left", dir.display());
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z")),
            "libvirtd {pid} still runs"
        );
    }
}
