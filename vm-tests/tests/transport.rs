//! The guest speaks first (issue 10): the guest agent announces itself to the host (vsock CID
//! 2, which vhost-device-vsock delivers to the host agent's `<uds>_<port>`), and the host agent
//! sends a guest nothing between a reset or reboot and its next announcement. So a `reset`
//! brings a guest back without the recovery power-cycle, and a guest that reboots by itself
//! is never power-cycled because of the host's own traffic.
//!
//! The test itself sends the guest nothing over vsock while it reboots: the resets come from the
//! demo application's own needReset (`appmon.demo=needreset-after:N`), the reboot from a
//! `reboot-in` command answered seconds before it happens.
#![cfg(feature = "vm")]

use std::time::{Duration, Instant};

use appmon_control::{Decision, GuestEvent, ResetCause};
use appmon_vm_tests::{
    test_host_config, test_policy, unix_ms_now, Config, Defaults, HistoryEntry, HostAgent,
    ResetMethod, Status, TestVm, VmConfig, VmView, DEFAULT_BOOT_TIMEOUT,
};

/// From the guest's ready marker to Green (see ha.rs).
const GREEN_TIMEOUT: Duration = Duration::from_secs(90);
/// Slack for the host agent to notice something.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(30);
/// Resets in a row.
const RESETS: usize = 20;

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
    agent.wait_for_status(&vm, NOTICE_TIMEOUT, "monitored", |s| s.monitored);
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    let boot = vm
        .boot_ids()
        .last()
        .cloned()
        .unwrap_or_else(|| vm.fail("no boot id on the console"));
    agent.wait_for_status(&vm, GREEN_TIMEOUT, "green with this boot's id", |s| {
        s.is(Status::Green) && s.guest_boot_id.as_deref() == Some(boot.as_str())
    });
    (vm, agent)
}

/// No power-cycle of any kind in the history: not as a reset, not as a reset's recovery.
fn power_cycles(s: &VmView) -> Vec<&HistoryEntry> {
    s.history
        .iter()
        .filter(|h| {
            h.reset_decision()
                .is_some_and(|(m, _)| m == ResetMethod::PowerCycle)
        })
        .collect()
}

/// min / median / max of `values`, in ms.
fn spread(values: &mut [u64]) -> (u64, u64, u64) {
    values.sort_unstable();
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2
    };
    (values[0], median, values[n - 1])
}

#[test]
fn twenty_resets_in_a_row_each_come_back_green_without_a_power_cycle() {
    // Each boot the demo application enables (Green), beats three times (300 ms apart) and
    // posts needReset: the host agent resets at once with the default method, `reset`. The
    // 21st needReset finds the window full and gives up, which ends the run.
    let policy = Defaults {
        max_resets: RESETS as u32,
        reset_method: ResetMethod::Reset,
        ..test_policy()
    };
    let agent_config = Config {
        history_len: 2000,
        ..test_host_config()
    };
    let config = VmConfig::new("resets20")
        .cmdline_arg("appmon.demo=needreset-after:3")
        .cmdline_arg("appmon.demo.interval=300");
    let t0 = Instant::now();
    let (vm, agent) = boot_monitored(config, &policy, agent_config.clone());
    let boots_before = vm.boot_ids().len();
    let s = agent.wait_for_status(
        &vm,
        RESETS as u32 * (DEFAULT_BOOT_TIMEOUT + NOTICE_TIMEOUT),
        "twenty resets, then the host agent gives up",
        |s| s.gave_up,
    );
    let elapsed = t0.elapsed();
    let decisions = s.reset_decisions();
    assert_eq!(decisions.len(), RESETS, "{}", s.history_text());
    for d in &decisions {
        assert_eq!(
            d.reset_decision(),
            Some((ResetMethod::Reset, ResetCause::NeedReset)),
            "{d}"
        );
    }
    assert!(
        power_cycles(&s).is_empty(),
        "no power-cycle: {:?}",
        power_cycles(&s)
    );
    assert!(
        s.find(|h| h.decision().is_some_and(|d| matches!(
            d,
            Decision::ResetDone {
                method: ResetMethod::PowerCycle,
                ..
            }
        )))
        .is_none(),
        "{}",
        s.history_text()
    );
    assert_eq!(
        vm.boot_ids().len(),
        boots_before + RESETS,
        "one boot per reset"
    );

    // Per reset: the decision, the next boot's announcement (the guest agent's Hello with a
    // new boot id), and Green (the application's Enable in that session).
    let mut to_announcement = Vec::new();
    let mut to_green = Vec::new();
    let history = &s.history;
    let connected = |h: &HistoryEntry| match h.guest() {
        Some(GuestEvent::Connected { boot_id, .. }) => Some(boot_id.clone()),
        _ => None,
    };
    for d in &decisions {
        let at = history
            .iter()
            .position(|h| std::ptr::eq(h, *d))
            .unwrap_or_else(|| vm.fail("a decision not in the history"));
        let old_boot = history[..at].iter().rev().find_map(connected);
        // The guest agent of the boot being reset may redial before the reset lands: the
        // announcement is the first one of another boot.
        let announced = history[at..]
            .iter()
            .position(|h| connected(h).is_some_and(|b| Some(&b) != old_boot.as_ref()))
            .map(|i| at + i)
            .unwrap_or_else(|| {
                vm.fail(format!(
                    "no announcement of a new boot after the reset of {}:\n{}",
                    d.unix_ms,
                    s.history_text()
                ))
            });
        let green = history[announced..]
            .iter()
            .find(|h| {
                matches!(
                    h.decision(),
                    Some(Decision::ApplicationEnabled | Decision::GuestReportsEnabled)
                )
            })
            .unwrap_or_else(|| {
                vm.fail(format!(
                    "not Green after the reset of {}:\n{}",
                    d.unix_ms,
                    s.history_text()
                ))
            });
        assert!(
            history[at..announced].iter().any(|h| matches!(
                h.decision(),
                Some(Decision::ResetDone {
                    method: ResetMethod::Reset,
                    ..
                })
            )),
            "libvirt carried the reset out before the new boot announced itself:\n{}",
            s.history_text()
        );
        to_announcement.push(history[announced].unix_ms - d.unix_ms);
        to_green.push(green.unix_ms - d.unix_ms);
    }
    let (a_min, a_med, a_max) = spread(&mut to_announcement);
    let (g_min, g_med, g_max) = spread(&mut to_green);
    println!(
        "{RESETS} resets in {:.0} s, no power-cycle: reset decision -> announcement min {a_min} / median {a_med} / max {a_max} ms; -> Green min {g_min} / median {g_med} / max {g_max} ms",
        elapsed.as_secs_f64()
    );
    assert!(s.alarm.is_some(), "{}", s.summary());
}

#[test]
fn a_guest_that_reboots_by_itself_comes_back_green_without_a_power_cycle_or_a_reset() {
    let policy = Defaults {
        failure_interval: Duration::from_secs(4),
        min_uptime: Duration::from_secs(5),
        ..test_policy()
    };
    let agent_config = test_host_config();
    let (vm, agent) = boot_monitored(VmConfig::new("selfreboot"), &policy, agent_config.clone());
    let boots = vm.boot_ids();
    let mark = vm.console_mark();
    // Answered at once; the guest reboots 3 s later with no connection of the test open and
    // its application heartbeating until then.
    assert_eq!(vm.demo_command("reboot-in 3"), "rebooting in 3 s");
    let asked = unix_ms_now();
    vm.wait_ready_since(mark, DEFAULT_BOOT_TIMEOUT);
    let s = agent.wait_for_status(
        &vm,
        GREEN_TIMEOUT,
        "green again with the new boot id",
        |s| {
            s.is(Status::Green)
                && s.connected
                && s.guest_boot_id.as_deref() == vm.boot_ids().last().map(String::as_str)
                && s.guest_boot_id.as_deref() != boots.last().map(String::as_str)
        },
    );
    assert_eq!(vm.boot_ids().len(), boots.len() + 1, "one reboot");
    assert!(
        s.find(|h| matches!(h.decision(), Some(Decision::RebootedAwaitingChannel { .. })))
            .is_some(),
        "the host agent saw the reboot:\n{}",
        s.history_text()
    );
    assert!(
        s.find(|h| matches!(h.decision(), Some(Decision::ChannelBack { .. })))
            .is_some(),
        "the guest came back by itself:\n{}",
        s.history_text()
    );
    assert!(
        s.reset_decisions().is_empty(),
        "no reset, no power-cycle:\n{}",
        s.history_text()
    );
    assert_eq!(s.resets_in_window, 0, "no reset counted");
    let rebooted = s
        .find(|h| matches!(h.decision(), Some(Decision::RebootedAwaitingChannel { .. })))
        .map_or(0, |h| h.unix_ms);
    println!(
        "rebooted {} ms after the command; Green again {} ms after the reboot",
        rebooted.saturating_sub(asked),
        unix_ms_now().saturating_sub(rebooted)
    );
}
