//! The policy with a virtual clock: table-driven cases and property tests.

#![allow(clippy::collapsible_match)]

use super::*;
use appmon_libvirt_backend::{PausedReason, ShutOffReason};
use proptest::prelude::*;

const S: u64 = 1000;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn running() -> DomainState {
    DomainState::Running(RunningReason::Booted)
}

/// Drives a machine with a virtual clock, waking it at its own deadlines like the supervisor.
struct Sim {
    m: VmMachine,
    now: Duration,
    /// Answer every reset with ResetDone at once.
    auto_done: bool,
    /// Answer every [`Action::DrainInput`] with [`Input::InputDrained`] at once.
    auto_drain: bool,
    log: Vec<(Duration, Action)>,
}

impl Sim {
    fn new(policy: Policy) -> Self {
        Sim {
            m: VmMachine::new(Duration::ZERO, running(), Some(policy)),
            now: Duration::ZERO,
            auto_done: true,
            auto_drain: true,
            log: Vec::new(),
        }
    }

    /// A policy without minimum uptime, to test one rule at a time.
    fn quick() -> Self {
        Self::new(Policy {
            min_uptime: Duration::ZERO,
            ..Policy::default()
        })
    }

    fn feed(&mut self, input: Input) {
        let actions = self.m.handle(input, self.now);
        let mut reset = false;
        let mut drain = false;
        for a in actions {
            reset |= matches!(a, Action::Reset { .. });
            drain |= matches!(a, Action::DrainInput);
            self.log.push((self.now, a));
        }
        // The session task has nothing more to read: it answers at once.
        if drain && self.auto_drain {
            self.feed(Input::InputDrained);
        }
        if reset && self.auto_done {
            self.feed(Input::ResetDone);
        }
    }

    /// Advances to `t` ms, ticking at every deadline on the way.
    fn run_to(&mut self, t: u64) {
        let target = ms(t);
        while let Some(d) = self.m.next_deadline(self.now) {
            if d > target {
                break;
            }
            self.now = d;
            self.feed(Input::Tick);
        }
        self.now = self.now.max(target);
    }

    fn at(&mut self, t: u64, input: Input) {
        self.run_to(t);
        self.feed(input);
    }

    /// A libvirt event for the domain at `t`.
    fn domain_at(&mut self, t: u64, event: DomainEvent) {
        self.at(t, Input::Domain(event));
    }

    fn resets(&self) -> Vec<(u64, ResetMethod, ResetCause)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Reset { method, cause } => Some((t.as_millis() as u64, *method, *cause)),
                _ => None,
            })
            .collect()
    }

    fn alarms(&self) -> usize {
        self.log
            .iter()
            .filter(|(_, a)| matches!(a, Action::Alarm { .. }))
            .count()
    }

    fn status(&self) -> Option<AppStatus> {
        self.m.status(self.now)
    }

    /// Guest connects, says hello and enables.
    fn guest_enables(&mut self, t: u64, boot: u8) {
        self.at(
            t,
            Input::GuestHello {
                boot_id: [boot; 16],
            },
        );
        self.feed(Input::Enable);
    }
}

#[test]
fn heartbeats_keep_it_green() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    for t in (10..600).step_by(10) {
        sim.at(t * S, Input::Heartbeat);
        assert_eq!(sim.status(), Some(AppStatus::Green), "at {t} s");
    }
    assert!(sim.resets().is_empty());
}

#[test]
fn silence_past_failure_interval_resets_one_ms_after_it() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.at(10 * S, Input::Heartbeat);
    sim.run_to(100 * S);
    assert_eq!(
        sim.resets(),
        vec![(
            40 * S + 1,
            ResetMethod::Reset,
            ResetCause::HeartbeatsStopped
        )]
    );
}

#[test]
fn one_second_failure_interval_is_precise() {
    let mut sim = Sim::new(Policy {
        failure_interval: ms(S),
        min_uptime: Duration::ZERO,
        ..Policy::default()
    });
    sim.guest_enables(0, 1);
    for t in (250..=5_250).step_by(500) {
        sim.at(t, Input::Heartbeat);
    }
    sim.run_to(20 * S);
    assert_eq!(sim.resets()[0].0, 6_251);
}

#[test]
fn status_turns_red_when_heartbeats_are_overdue() {
    let mut sim = Sim::new(Policy::default());
    sim.guest_enables(0, 1);
    sim.run_to(31 * S);
    assert_eq!(sim.status(), Some(AppStatus::Red));
    assert!(sim
        .log
        .iter()
        .any(|(_, a)| *a == Action::SendStatus(AppStatus::Red)));
    assert!(sim.resets().is_empty(), "inside min uptime");
}

#[test]
fn inside_min_uptime_no_reset() {
    let mut sim = Sim::new(Policy::default());
    sim.guest_enables(0, 1);
    sim.run_to(119 * S);
    assert!(sim.resets().is_empty());
    sim.run_to(121 * S);
    assert_eq!(sim.resets()[0].0, 120 * S);
}

#[test]
fn need_reset_resets_at_once_even_inside_min_uptime() {
    let mut sim = Sim::new(Policy::default());
    sim.guest_enables(0, 1);
    sim.at(5 * S, Input::PostAppState(AppState::NeedReset));
    assert_eq!(
        sim.resets(),
        vec![(5 * S, ResetMethod::Reset, ResetCause::NeedReset)]
    );
}

#[test]
fn need_reset_while_gray_or_disabled_is_ignored() {
    let mut sim = Sim::quick();
    sim.at(0, Input::GuestHello { boot_id: [1; 16] });
    sim.feed(Input::PostAppState(AppState::NeedReset));
    sim.feed(Input::Disable);
    sim.feed(Input::PostAppState(AppState::NeedReset));
    sim.run_to(1000 * S);
    assert!(sim.resets().is_empty());
}

#[test]
fn need_reset_taken_back_does_not_reset() {
    let mut sim = Sim::quick();
    sim.auto_done = false;
    sim.guest_enables(0, 1);
    sim.feed(Input::Disable);
    sim.feed(Input::Enable);
    sim.feed(Input::PostAppState(AppState::Ok));
    sim.at(S, Input::Heartbeat);
    assert!(sim.resets().is_empty());
}

#[test]
fn max_resets_then_gave_up_until_the_window_has_room() {
    let mut sim = Sim::new(Policy {
        min_uptime: Duration::ZERO,
        channel_timeout: ms(3600 * S),
        ..Policy::default()
    });
    for (i, t) in [0u64, 100, 200, 300].into_iter().enumerate() {
        sim.guest_enables(t * S, i as u8 + 1);
        sim.feed(Input::PostAppState(AppState::NeedReset));
    }
    assert_eq!(sim.resets().len(), 3);
    assert_eq!(sim.alarms(), 1);
    assert!(sim.m.alarm().is_some());
    assert_eq!(sim.status(), Some(AppStatus::Red));
    // The first reset leaves the window at 3600 s: the failure still holds, so it resets.
    sim.run_to(3599 * S);
    assert_eq!(sim.resets().len(), 3);
    sim.run_to(3601 * S);
    assert_eq!(sim.resets().len(), 4);
    assert_eq!(sim.resets()[3].0, 3600 * S);
}

#[test]
fn zero_max_resets_only_raises_the_alarm() {
    let mut sim = Sim::new(Policy {
        max_resets: 0,
        min_uptime: Duration::ZERO,
        ..Policy::default()
    });
    sim.guest_enables(0, 1);
    sim.run_to(10_000 * S);
    assert!(sim.resets().is_empty());
    assert_eq!(sim.alarms(), 1);
}

#[test]
fn operator_clear_lets_it_reset_again() {
    let mut sim = Sim::new(Policy {
        max_resets: 1,
        min_uptime: Duration::ZERO,
        channel_timeout: ms(3600 * S),
        ..Policy::default()
    });
    sim.guest_enables(0, 1);
    sim.feed(Input::PostAppState(AppState::NeedReset));
    sim.guest_enables(10 * S, 2);
    sim.feed(Input::PostAppState(AppState::NeedReset));
    assert_eq!((sim.resets().len(), sim.alarms()), (1, 1));
    sim.at(20 * S, Input::Clear);
    assert!(sim.m.alarm().is_none());
    assert_eq!(sim.resets().len(), 2, "needReset still pending");
}

#[test]
fn pause_gap_is_not_a_failure() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.at(10 * S, Input::Heartbeat);
    sim.domain_at(20 * S, DomainEvent::Suspended(PausedReason::User));
    sim.domain_at(200 * S, DomainEvent::Resumed(RunningReason::Unpaused));
    sim.run_to(229 * S);
    assert!(sim.resets().is_empty());
    sim.run_to(300 * S);
    assert_eq!(sim.resets()[0].0, 230 * S + 1, "clock restarted at resume");
}

#[test]
fn a_paused_domain_is_not_shown_red_and_is_judged_again_from_its_resume() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.at(10 * S, Input::Heartbeat);
    sim.domain_at(20 * S, DomainEvent::Suspended(PausedReason::User));
    sim.run_to(150 * S);
    assert_eq!(sim.status(), Some(AppStatus::Green), "paused: not judged");
    sim.domain_at(150 * S, DomainEvent::Resumed(RunningReason::Unpaused));
    sim.run_to(170 * S);
    assert_eq!(
        sim.status(),
        Some(AppStatus::Green),
        "within an interval of the resume"
    );
    sim.run_to(180 * S + 1);
    assert_eq!(
        sim.status(),
        Some(AppStatus::Red),
        "silent for an interval after the resume"
    );
}

#[test]
fn missed_heartbeat_during_migration_does_not_reset() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.domain_at(29 * S, DomainEvent::Suspended(PausedReason::Migrating));
    sim.domain_at(100 * S, DomainEvent::Stopped(ShutOffReason::Migrated));
    sim.run_to(1000 * S);
    assert!(sim.resets().is_empty());
}

#[test]
fn save_and_restore_gap_is_not_a_failure() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.domain_at(5 * S, DomainEvent::Suspended(PausedReason::Saving));
    sim.domain_at(6 * S, DomainEvent::Stopped(ShutOffReason::Saved));
    sim.domain_at(500 * S, DomainEvent::Started(StartedReason::Restored));
    // The restored guest reconnects with its old boot id and state.
    sim.at(501 * S, Input::GuestHello { boot_id: [1; 16] });
    sim.feed(Input::GuestState(guest_state(true, Some(0))));
    assert_eq!(sim.status(), Some(AppStatus::Green));
    sim.run_to(530 * S);
    assert!(sim.resets().is_empty());
}

#[test]
fn migrated_in_domain_is_gray_until_enable() {
    let mut sim = Sim::quick();
    sim.domain_at(0, DomainEvent::Started(StartedReason::Migrated));
    sim.domain_at(S, DomainEvent::Resumed(RunningReason::Migrated));
    sim.at(2 * S, Input::GuestHello { boot_id: [1; 16] });
    sim.feed(Input::GuestState(guest_state(true, Some(100))));
    assert_eq!(sim.status(), Some(AppStatus::Gray));
    assert!(sim
        .log
        .iter()
        .any(|(_, a)| *a == Action::SendStatus(AppStatus::Gray)));
    sim.run_to(1000 * S);
    assert!(sim.resets().is_empty(), "Gray never resets");
    sim.feed(Input::Enable);
    assert_eq!(sim.status(), Some(AppStatus::Green));
}

#[test]
fn reboot_clears_enable() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.domain_at(10 * S, DomainEvent::Rebooted);
    assert_eq!(sim.status(), Some(AppStatus::Red));
    assert!(!sim.m.enabled());
    sim.at(11 * S, Input::GuestHello { boot_id: [2; 16] });
    sim.run_to(1000 * S);
    assert!(sim.resets().is_empty());
}

#[test]
fn gray_after_restart_ignores_the_guests_enabled_state() {
    // A fresh machine is what a restarted host agent has.
    let mut sim = Sim::quick();
    sim.at(0, Input::GuestHello { boot_id: [1; 16] });
    sim.feed(Input::GuestState(GuestState {
        need_reset: true,
        ..guest_state(true, Some(0))
    }));
    assert_eq!(sim.status(), Some(AppStatus::Gray));
    sim.run_to(1000 * S);
    assert!(sim.resets().is_empty());
}

#[test]
fn channel_timeout_falls_back_to_power_cycle() {
    let mut sim = Sim::new(Policy {
        min_uptime: Duration::ZERO,
        channel_timeout: ms(5 * S),
        ..Policy::default()
    });
    sim.guest_enables(0, 1);
    sim.feed(Input::PostAppState(AppState::NeedReset));
    sim.run_to(4 * S);
    assert_eq!(sim.resets().len(), 1);
    sim.run_to(10 * S);
    assert_eq!(
        sim.resets()[1],
        (
            5 * S,
            ResetMethod::PowerCycle,
            ResetCause::ChannelLostAfterReset
        )
    );
}

#[test]
fn fallback_power_cycle_completes_the_reset_without_a_slot_of_its_own() {
    let mut sim = Sim::new(Policy {
        min_uptime: Duration::ZERO,
        max_resets: 1,
        channel_timeout: ms(5 * S),
        ..Policy::default()
    });
    sim.guest_enables(0, 1);
    sim.feed(Input::PostAppState(AppState::NeedReset));
    sim.run_to(10 * S);
    let resets = sim.resets();
    assert_eq!(resets.len(), 2, "the reset and its power-cycle: {resets:?}");
    assert_eq!(resets[1].2, ResetCause::ChannelLostAfterReset);
    assert_eq!(sim.m.resets_in_window(ms(10 * S)), 1);
    assert!(sim.m.alarm().is_none(), "one remedy, not two: no alarm");
}

#[test]
fn channel_back_with_new_boot_id_cancels_the_fallback() {
    let mut sim = Sim::new(Policy {
        min_uptime: Duration::ZERO,
        channel_timeout: ms(5 * S),
        ..Policy::default()
    });
    sim.guest_enables(0, 1);
    sim.feed(Input::PostAppState(AppState::NeedReset));
    sim.at(S, Input::ChannelClosed);
    // The old guest's hello (same boot id) does not count.
    sim.at(2 * S, Input::GuestHello { boot_id: [1; 16] });
    sim.at(3 * S, Input::GuestHello { boot_id: [2; 16] });
    sim.run_to(100 * S);
    assert_eq!(sim.resets().len(), 1);
}

#[test]
fn power_cycle_method_does_not_wait_for_the_channel() {
    let mut sim = Sim::new(Policy {
        min_uptime: Duration::ZERO,
        reset_method: ResetMethod::PowerCycle,
        channel_timeout: ms(S),
        ..Policy::default()
    });
    sim.guest_enables(0, 1);
    sim.feed(Input::PostAppState(AppState::NeedReset));
    sim.run_to(100 * S);
    assert_eq!(
        sim.resets(),
        vec![(0, ResetMethod::PowerCycle, ResetCause::NeedReset)]
    );
}

#[test]
fn guest_reboot_without_channel_coming_back_power_cycles() {
    let mut sim = Sim::new(Policy {
        min_uptime: Duration::ZERO,
        channel_timeout: ms(5 * S),
        ..Policy::default()
    });
    sim.guest_enables(0, 1);
    sim.domain_at(S, DomainEvent::Rebooted);
    sim.feed(Input::Domain(DomainEvent::Rebooted));
    sim.run_to(100 * S);
    assert_eq!(
        sim.resets(),
        vec![(
            6 * S,
            ResetMethod::PowerCycle,
            ResetCause::ChannelLostAfterReboot
        )]
    );
}

#[test]
fn refused_reset_is_retried_at_the_next_deadline() {
    let mut sim = Sim::quick();
    sim.auto_done = false;
    sim.guest_enables(0, 1);
    sim.run_to(31 * S);
    assert_eq!(sim.resets().len(), 1);
    sim.feed(Input::ResetFailed {
        error: "not supported".into(),
    });
    sim.run_to(61 * S - 1);
    assert_eq!(sim.resets().len(), 1);
    sim.run_to(62 * S);
    assert_eq!(sim.resets()[1].0, 61 * S);
}

#[test]
fn metadata_removed_stops_monitoring() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.at(5 * S, Input::Policy(None));
    sim.run_to(1000 * S);
    assert!(sim.resets().is_empty());
    assert_eq!(sim.status(), None);
}

#[test]
fn machine_without_policy_never_acts() {
    let mut m = VmMachine::new(Duration::ZERO, running(), None);
    for input in [
        Input::GuestHello { boot_id: [1; 16] },
        Input::Enable,
        Input::PostAppState(AppState::NeedReset),
        Input::Tick,
    ] {
        let actions = m.handle(input, ms(1000 * S));
        assert!(actions.is_empty(), "{actions:?}");
    }
    assert_eq!(m.next_deadline(Duration::ZERO), None);
}

#[test]
fn libvirt_outage_is_not_a_failure() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.at(10 * S, Input::HypervisorLost);
    sim.at(100 * S, Input::DomainState(running()));
    sim.run_to(129 * S);
    assert!(sim.resets().is_empty());
}

#[test]
fn reconnect_adopts_a_newer_heartbeat_from_the_guest() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.at(20 * S, Input::ChannelClosed);
    sim.at(25 * S, Input::GuestHello { boot_id: [1; 16] });
    sim.feed(Input::GuestState(guest_state(true, Some(1000))));
    sim.run_to(54 * S);
    assert!(sim.resets().is_empty());
    sim.run_to(60 * S);
    assert_eq!(sim.resets()[0].0, 54 * S + 1);
}

#[test]
fn reconnect_adopts_disable_from_the_guest() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.at(20 * S, Input::GuestHello { boot_id: [1; 16] });
    sim.feed(Input::GuestState(guest_state(false, None)));
    sim.run_to(1000 * S);
    assert!(sim.resets().is_empty());
    assert_eq!(sim.status(), Some(AppStatus::Red));
}

fn pushed(actions: &[Action]) -> Vec<AppStatus> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendStatus(s) => Some(*s),
            _ => None,
        })
        .collect()
}

#[test]
fn status_is_pushed_once_the_guests_state_is_in_not_at_hello() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.at(10 * S, Input::ChannelClosed);
    sim.run_to(11 * S);

    let at_hello = sim
        .m
        .handle(Input::GuestHello { boot_id: [1; 16] }, sim.now);
    let at_tick = sim.m.handle(Input::Tick, sim.now);
    let at_state = sim
        .m
        .handle(Input::GuestState(guest_state(false, None)), sim.now);

    // Host-side the guest was still enabled (Green); its State says disabled: it hears Red,
    // and never the stale Green.
    assert_eq!(pushed(&at_hello), vec![]);
    assert_eq!(pushed(&at_tick), vec![]);
    assert_eq!(pushed(&at_state), vec![AppStatus::Red]);
}

#[test]
fn every_session_is_told_its_status_even_when_it_did_not_change() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    let first = sim
        .m
        .handle(Input::GuestState(guest_state(true, Some(0))), sim.now);
    sim.at(5 * S, Input::Heartbeat);
    sim.at(6 * S, Input::ChannelClosed);

    sim.at(7 * S, Input::GuestHello { boot_id: [1; 16] });
    let again = sim
        .m
        .handle(Input::GuestState(guest_state(true, Some(500))), sim.now);
    let later = sim.m.handle(Input::Heartbeat, sim.now);

    assert_eq!(pushed(&first), vec![AppStatus::Green]);
    assert_eq!(pushed(&again), vec![AppStatus::Green]);
    assert_eq!(pushed(&later), vec![], "then only changes");
}

#[test]
fn a_guest_that_talks_without_a_state_still_hears_its_status() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.at(5 * S, Input::ChannelClosed);
    sim.at(6 * S, Input::GuestHello { boot_id: [1; 16] });

    let beat = sim.m.handle(Input::Heartbeat, sim.now);

    assert_eq!(pushed(&beat), vec![AppStatus::Green]);
}

#[test]
fn a_guest_back_before_libvirts_answer_keeps_what_it_said_since() {
    let mut sim = Sim::quick();
    sim.auto_done = false;
    sim.guest_enables(0, 1);
    sim.at(5 * S, Input::PostAppState(AppState::NeedReset));
    // The rebooted guest is back and enables before the reset call's result is in.
    sim.at(6 * S, Input::ChannelClosed);
    sim.at(7 * S, Input::GuestHello { boot_id: [2; 16] });
    sim.feed(Input::GuestState(guest_state(false, None)));
    sim.feed(Input::Enable);

    sim.at(8 * S, Input::ResetDone);

    assert!(sim.m.enabled());
    assert_eq!(sim.m.pending(), Pending::Idle);
    assert_eq!(sim.status(), Some(AppStatus::Green));
    for t in (18..=200).step_by(10) {
        sim.at(t * S, Input::Heartbeat);
    }
    assert_eq!(sim.resets().len(), 1, "no power-cycle: the channel is back");
}

#[test]
fn a_mere_reconnect_during_a_reset_is_not_the_guest_coming_back() {
    let mut sim = Sim::quick();
    sim.auto_done = false;
    sim.guest_enables(0, 1);
    sim.at(5 * S, Input::PostAppState(AppState::NeedReset));
    sim.at(6 * S, Input::ChannelClosed);
    sim.at(7 * S, Input::GuestHello { boot_id: [1; 16] });
    sim.feed(Input::GuestState(guest_state(true, Some(0))));

    sim.at(8 * S, Input::ResetDone);

    assert!(!sim.m.enabled(), "the reset still wipes the guest's state");
    match sim.m.pending() {
        Pending::AwaitingChannel { old_boot, .. } => assert_eq!(old_boot, Some([1; 16])),
        other => panic!("{other:?}"),
    }
    sim.run_to(100 * S);
    assert_eq!(sim.resets()[1].1, ResetMethod::PowerCycle);
}

fn guest_state(enabled: bool, age: Option<u64>) -> GuestState {
    GuestState {
        enabled,
        need_reset: false,
        last_heartbeat_age_ms: age,
        heartbeats: 0,
        last_status: None,
        processes: Vec::new(),
    }
}

// ---- property tests ----

#[derive(Debug, Clone)]
enum Step {
    Heartbeat,
    Enable,
    Disable,
    NeedReset,
    Ok,
    Event(DomainEvent),
    State(DomainState),
    HypervisorLost,
    RemoveSpec,
    AddSpec,
    Hello(u8),
    GuestState(bool, bool),
    Closed,
    Clear,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => Just(Step::Heartbeat),
        2 => Just(Step::Enable),
        1 => Just(Step::Disable),
        1 => Just(Step::NeedReset),
        1 => Just(Step::Ok),
        1 => prop_oneof![
            Just(PausedReason::User),
            Just(PausedReason::Migrating),
            Just(PausedReason::Saving),
            Just(PausedReason::StartingUp),
        ].prop_map(|r| Step::Event(DomainEvent::Suspended(r))),
        1 => prop_oneof![Just(RunningReason::Unpaused), Just(RunningReason::Migrated)]
            .prop_map(|r| Step::Event(DomainEvent::Resumed(r))),
        1 => prop_oneof![Just(StartedReason::Booted), Just(StartedReason::Migrated)]
            .prop_map(|r| Step::Event(DomainEvent::Started(r))),
        1 => prop_oneof![Just(ShutOffReason::Destroyed), Just(ShutOffReason::Migrated)]
            .prop_map(|r| Step::Event(DomainEvent::Stopped(r))),
        1 => Just(Step::Event(DomainEvent::Rebooted)),
        1 => prop_oneof![
            Just(DomainState::Running(RunningReason::Booted)),
            Just(DomainState::Paused(PausedReason::Migrating)),
            Just(DomainState::ShutOff(ShutOffReason::Shutdown)),
        ].prop_map(Step::State),
        1 => Just(Step::HypervisorLost),
        1 => Just(Step::RemoveSpec),
        1 => Just(Step::AddSpec),
        2 => (0u8..3).prop_map(Step::Hello),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(e, n)| Step::GuestState(e, n)),
        1 => Just(Step::Closed),
        1 => Just(Step::Clear),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        1u64..5,
        0u64..10,
        0u32..4,
        10u64..60,
        any::<bool>(),
        1u64..8,
    )
        .prop_map(|(fi, mu, max, win, pc, ct)| Policy {
            failure_interval: ms(fi * S),
            min_uptime: ms(mu * S),
            max_resets: max,
            reset_window: ms(win * S),
            reset_method: if pc {
                ResetMethod::PowerCycle
            } else {
                ResetMethod::Reset
            },
            channel_timeout: ms(ct * S),
            cluster_resource: None,
        })
}

/// An independent, simpler account of what the machine has been told.
#[derive(Debug)]
struct Model {
    phase: Phase,
    spec: bool,
    enabled: bool,
    gray: bool,
    /// Latest of: heartbeat while enabled, enable, entering running.
    activity: Duration,
    need_reset: bool,
    boot: Option<u8>,
    /// A reset was issued or an enabled guest rebooted, and no new boot id has said hello.
    awaiting_since: Option<Duration>,
    cleared_at: Option<Duration>,
    /// The boot id when the reset in flight was issued...
    boot_at_reset: Option<u8>,
    /// ...and whether another one said hello before its result: the guest is back, and the
    /// result wipes nothing.
    back_during_reset: bool,
    /// The last reset issued was an in-place `reset`, which a fallback power-cycle may complete.
    after_plain_reset: bool,
}

impl Model {
    fn state_gone(&mut self) {
        self.enabled = false;
        self.need_reset = false;
    }

    fn enter(&mut self, phase: Phase, now: Duration) {
        if phase == Phase::Running && self.phase != Phase::Running {
            self.activity = self.activity.max(now);
        }
        self.phase = phase;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn rules_hold_for_every_event_sequence(
        policy in policy(),
        steps in prop::collection::vec((0u64..6_000, step(), any::<bool>(), 0u64..3_000), 1..80),
    ) {
        let mut m = VmMachine::new(Duration::ZERO, running(), Some(policy.clone()));
        let mut model = Model {
            phase: Phase::Running, spec: true, enabled: false, gray: true,
            activity: Duration::ZERO, need_reset: false, boot: None,
            awaiting_since: None, cleared_at: None, boot_at_reset: None,
            back_during_reset: false, after_plain_reset: false,
        };
        let mut now = Duration::ZERO;
        let mut resets: Vec<Duration> = Vec::new();
        // A reset waiting for its result: (answer ok?, when).
        let mut in_flight: Option<(bool, Duration)> = None;

        let check = |actions: &[Action], now: Duration, model: &mut Model,
                         resets: &mut Vec<Duration>, in_flight: &mut Option<(bool, Duration)>,
                         ok: bool, delay: u64| -> Result<(), TestCaseError> {
            for a in actions {
                if let Action::Reset { method, cause } = a {
                    prop_assert!(model.spec, "reset without a spec");
                    prop_assert_eq!(model.phase, Phase::Running, "reset while not running");
                    prop_assert!(in_flight.is_none(), "two resets in flight");
                    match cause {
                        ResetCause::HeartbeatsStopped => {
                            prop_assert!(model.enabled && !model.gray, "heartbeat reset while not enabled");
                            prop_assert!(now.saturating_sub(model.activity) > policy.failure_interval,
                                "heartbeat reset at {:?} but activity at {:?}", now, model.activity);
                        }
                        ResetCause::NeedReset => {
                            prop_assert!(model.enabled && model.need_reset, "needReset reset without needReset");
                        }
                        ResetCause::ManagedApplication => {
                            prop_assert!(false, "no managed application failed in these sequences");
                        }
                        ResetCause::ChannelLostAfterReset | ResetCause::ChannelLostAfterReboot => {
                            let since = model.awaiting_since;
                            prop_assert!(since.is_some_and(|s| now >= s + policy.channel_timeout),
                                "channel recovery without a wait: {:?}", since);
                        }
                    }
                    // The power-cycle that completes a reset is part of that reset's attempt;
                    // every other reset is an attempt of its own.
                    if *cause == ResetCause::ChannelLostAfterReset {
                        prop_assert!(model.after_plain_reset,
                            "a fallback power-cycle without an in-place reset before it");
                    } else {
                        resets.push(now);
                    }
                    model.after_plain_reset = *method == ResetMethod::Reset
                        && *cause != ResetCause::ChannelLostAfterReset;
                    let since_clear = model.cleared_at.unwrap_or(Duration::ZERO);
                    let in_window = resets.iter()
                        .filter(|&&t| t >= since_clear && now.saturating_sub(t) < policy.reset_window)
                        .count();
                    prop_assert!(in_window <= policy.max_resets as usize,
                        "{} resets in the window, max {}", in_window, policy.max_resets);
                    model.awaiting_since = None;
                    model.boot_at_reset = model.boot;
                    model.back_during_reset = false;
                    *in_flight = Some((ok, now + ms(delay)));
                }
            }
            Ok(())
        };

        for (gap, step, ok, delay) in steps {
            let target = now + ms(gap);
            // Deliver a reset result or a tick, whichever is first, until the next step.
            loop {
                let tick = m.next_deadline(now);
                let result = in_flight.map(|(_, at)| at);
                let next = [tick, result].into_iter().flatten().filter(|&d| d <= target).min();
                let Some(at) = next else { break };
                now = at.max(now);
                let input = match in_flight {
                    Some((good, at)) if at <= now => {
                        in_flight = None;
                        if good {
                            if !model.back_during_reset {
                                model.state_gone();
                                if policy.reset_method == ResetMethod::Reset {
                                    model.awaiting_since = Some(now);
                                }
                            }
                            Input::ResetDone
                        } else {
                            Input::ResetFailed { error: "refused".into() }
                        }
                    }
                    _ => Input::Tick,
                };
                let actions = m.handle(input, now);
                check(&actions, now, &mut model, &mut resets, &mut in_flight, ok, delay)?;
            }
            now = target;
            let input = match step {
                Step::Heartbeat => {
                    if model.enabled { model.activity = now; }
                    Input::Heartbeat
                }
                Step::Enable => {
                    if model.spec {
                        model.enabled = true; model.gray = false; model.activity = now;
                        model.need_reset = false;
                    }
                    Input::Enable
                }
                Step::Disable => {
                    if model.spec { model.enabled = false; model.gray = false; model.need_reset = false; }
                    Input::Disable
                }
                Step::NeedReset => {
                    if model.enabled { model.need_reset = true; }
                    Input::PostAppState(AppState::NeedReset)
                }
                Step::Ok => { model.need_reset = false; Input::PostAppState(AppState::Ok) }
                Step::Event(e) => {
                    match e {
                        DomainEvent::Started(StartedReason::Migrated) => {
                            model.phase = Phase::Paused; model.gray = true; model.state_gone();
                            model.awaiting_since = None;
                        }
                        DomainEvent::Started(_) => {
                            model.state_gone(); model.enter(Phase::Running, now);
                            model.awaiting_since = None;
                        }
                        DomainEvent::Suspended(_) => model.enter(Phase::Paused, now),
                        DomainEvent::Resumed(RunningReason::Migrated) => {
                            model.gray = true; model.state_gone(); model.awaiting_since = None;
                            model.enter(Phase::Running, now);
                        }
                        DomainEvent::Resumed(_) => model.enter(Phase::Running, now),
                        DomainEvent::Stopped(_) => {
                            model.enter(Phase::Off, now); model.state_gone();
                            model.awaiting_since = None;
                        }
                        DomainEvent::Rebooted => {
                            if in_flight.is_none() && model.awaiting_since.is_none() {
                                if model.enabled { model.awaiting_since = Some(now); }
                                model.state_gone();
                            }
                        }
                        _ => {}
                    }
                    Input::Domain(e)
                }
                Step::State(s) => { model.enter(Phase::from_state(s), now); Input::DomainState(s) }
                Step::HypervisorLost => { model.enter(Phase::Unknown, now); Input::HypervisorLost }
                Step::RemoveSpec => {
                    model.spec = false; model.gray = true; model.state_gone();
                    model.awaiting_since = None;
                    Input::Policy(None)
                }
                Step::AddSpec => {
                    if !model.spec { model.gray = true; model.state_gone(); }
                    model.spec = true;
                    Input::Policy(Some(policy.clone()))
                }
                Step::Hello(b) => {
                    if in_flight.is_some() && model.boot_at_reset.is_some_and(|old| old != b) {
                        model.back_during_reset = true;
                    }
                    if model.boot.is_some_and(|old| old != b) && !model.gray {
                        model.state_gone();
                    }
                    if model.boot != Some(b) { model.awaiting_since = None; }
                    model.boot = Some(b);
                    Input::GuestHello { boot_id: [b; 16] }
                }
                Step::GuestState(enabled, need) => {
                    if model.spec && !model.gray {
                        if enabled && !model.enabled { model.activity = now; }
                        model.enabled = enabled;
                        if !enabled { model.need_reset = false; }
                        if need && enabled { model.need_reset = true; }
                    }
                    Input::GuestState(GuestState {
                        need_reset: need,
                        ..guest_state(enabled, None)
                    })
                }
                Step::Closed => Input::ChannelClosed,
                Step::Clear => {
                    model.cleared_at = Some(now);
                    if model.enabled { model.activity = model.activity.max(now); }
                    Input::Clear
                }
            };
            let actions = m.handle(input, now);
            check(&actions, now, &mut model, &mut resets, &mut in_flight, ok, delay)?;
        }
    }
}

/// A guest past its handshake (Hello and State in, not enabled); `handle`'s actions.
fn greeted_machine() -> VmMachine {
    let mut m = VmMachine::new(Duration::ZERO, running(), Some(Policy::default()));
    m.handle(Input::GuestHello { boot_id: [1; 16] }, Duration::ZERO);
    m.handle(
        Input::GuestState(GuestState {
            enabled: false,
            need_reset: false,
            last_heartbeat_age_ms: None,
            heartbeats: 0,
            last_status: None,
            processes: Vec::new(),
        }),
        Duration::ZERO,
    );
    m
}

#[test]
fn guest_requests_are_answered_by_the_policy_and_a_status_reply_replaces_the_push() {
    use appmon_wire::HostMsg;
    let guest = |id, request| Input::Guest { id, request };
    let reply = |msg| Action::Reply { id: 7, msg };
    // (request, id, what the guest is sent)
    let cases: Vec<(GuestRequest, Option<u32>, Vec<Action>)> = vec![
        (
            GuestRequest::Enable,
            Some(7),
            vec![reply(HostMsg::AppStatus(AppStatus::Green))],
        ),
        // The same Enable as an event: no reply, so the new status is pushed.
        (
            GuestRequest::Enable,
            None,
            vec![Action::SendStatus(AppStatus::Green)],
        ),
        (
            GuestRequest::GetAppStatus,
            Some(7),
            vec![reply(HostMsg::AppStatus(AppStatus::Gray))],
        ),
        (
            GuestRequest::IsEnabled,
            Some(7),
            vec![reply(HostMsg::Enabled(false))],
        ),
        (
            GuestRequest::PostAppState(AppState::Ok),
            Some(7),
            vec![reply(HostMsg::Ack)],
        ),
        // Disabled is Red (vSphere: not monitored).
        (
            GuestRequest::Disable,
            Some(7),
            vec![reply(HostMsg::AppStatus(AppStatus::Red))],
        ),
    ];
    for (request, id, want) in cases {
        let mut m = greeted_machine();
        // The State push of the handshake is out (Gray).
        m.handle(Input::Tick, Duration::ZERO);

        let got: Vec<Action> = m
            .handle(guest(id, request), ms(10))
            .into_iter()
            .filter(|a| !matches!(a, Action::Note { .. }))
            .collect();

        assert_eq!(got, want, "{request:?} with id {id:?}");
    }
}

#[test]
fn a_status_told_in_a_reply_is_not_pushed_again() {
    let mut m = greeted_machine();
    m.handle(Input::Tick, Duration::ZERO);
    m.handle(
        Input::Guest {
            id: Some(1),
            request: GuestRequest::Enable,
        },
        ms(10),
    );

    let later = m.handle(Input::Heartbeat, ms(20));

    assert!(
        !later.iter().any(|a| matches!(a, Action::SendStatus(_))),
        "{later:?}"
    );
}

fn app_failed() -> Input {
    Input::ApplicationFailed {
        application: "db".into(),
    }
}

fn managed_resets(sim: &Sim) -> Vec<u64> {
    sim.resets()
        .into_iter()
        .filter(|r| r.2 == ResetCause::ManagedApplication)
        .map(|r| r.0)
        .collect()
}

/// What went to the guest (status pushes and replies) in the log, with its time.
fn sent_to_guest(sim: &Sim) -> Vec<(u64, Action)> {
    sim.log
        .iter()
        .filter(|(_, a)| matches!(a, Action::SendStatus(_) | Action::Reply { .. }))
        .map(|(t, a)| (t.as_millis() as u64, a.clone()))
        .collect()
}

#[test]
fn managed_application_escalation_resets_at_once_without_heartbeats_and_once() {
    let mut sim = Sim::new(Policy {
        reset_method: ResetMethod::PowerCycle,
        ..Policy::default()
    });
    sim.at(0, Input::GuestHello { boot_id: [1; 16] });

    sim.at(5 * S, app_failed());
    sim.run_to(1000 * S);

    assert_eq!(managed_resets(&sim), vec![5 * S]);
}

#[test]
fn managed_application_escalation_goes_through_the_reset_budget() {
    let mut sim = Sim::new(Policy {
        reset_method: ResetMethod::PowerCycle,
        max_resets: 1,
        ..Policy::default()
    });
    sim.at(0, Input::GuestHello { boot_id: [1; 16] });
    sim.at(S, app_failed());
    sim.at(10 * S, Input::GuestHello { boot_id: [2; 16] });

    sim.at(20 * S, app_failed());

    assert_eq!(managed_resets(&sim), vec![S]);
    assert_eq!(sim.alarms(), 1);
}

#[test]
fn managed_application_escalation_while_paused_resets_nothing() {
    let mut sim = Sim::new(Policy::default());
    sim.domain_at(
        0,
        DomainEvent::Suspended(appmon_libvirt_backend::PausedReason::User),
    );

    sim.at(S, app_failed());
    sim.run_to(1000 * S);

    assert!(sim.resets().is_empty());
}

#[test]
fn nothing_is_sent_to_the_guest_from_a_reset_decision_until_its_next_hello() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.feed(Input::GuestState(guest_state(true, Some(0))));
    sim.run_to(35 * S);
    assert_eq!(sim.resets().len(), 1);
    let reset_at = sim.resets()[0].0;
    let silence_at = sim
        .log
        .iter()
        .position(|(_, a)| matches!(a, Action::Silence))
        .expect("a Silence action");
    let reset_pos = sim
        .log
        .iter()
        .position(|(_, a)| matches!(a, Action::Reset { .. }))
        .expect("the reset");
    assert!(silence_at < reset_pos, "Silence goes before the reset");
    sim.at(
        40 * S,
        Input::Guest {
            id: Some(3),
            request: GuestRequest::GetAppStatus,
        },
    );
    let during: Vec<_> = sent_to_guest(&sim)
        .into_iter()
        .filter(|(t, _)| *t >= reset_at)
        .collect();
    assert!(during.is_empty(), "sent while silent: {during:?}");
    assert!(sim.m.silent());
    sim.at(50 * S, Input::GuestHello { boot_id: [2; 16] });
    assert!(!sim.m.silent());
    sim.feed(Input::GuestState(guest_state(true, Some(0))));
    assert!(
        sent_to_guest(&sim)
            .iter()
            .any(|(t, a)| *t == 50 * S && matches!(a, Action::SendStatus(_))),
        "the new session gets its status: {:?}",
        sent_to_guest(&sim)
    );
}

#[test]
fn a_reboot_of_its_own_silences_the_host_until_the_guest_says_hello() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.feed(Input::GuestState(guest_state(true, Some(0))));
    sim.domain_at(5 * S, DomainEvent::Rebooted);
    assert!(sim.log.iter().any(|(_, a)| matches!(a, Action::Silence)));
    assert!(sim.m.silent());
    let before = sent_to_guest(&sim).len();
    sim.at(6 * S, Input::Heartbeat);
    sim.at(7 * S, Input::ChannelClosed);
    assert_eq!(
        sent_to_guest(&sim).len(),
        before,
        "{:?}",
        sent_to_guest(&sim)
    );
    sim.at(20 * S, Input::GuestHello { boot_id: [2; 16] });
    assert!(!sim.m.silent());
    assert!(sim.resets().is_empty());
}

#[test]
fn migrated_in_guest_is_reset_one_failure_interval_after_it_falls_silent_without_a_minimum_uptime()
{
    // vSphere's defaults: minimum uptime 120 s, failure interval 30 s. A guest that did not
    // boot here does not wait for the minimum uptime.
    let mut sim = Sim::new(Policy::default());
    let fi = 30 * S;
    sim.domain_at(0, DomainEvent::Started(StartedReason::Migrated));
    sim.domain_at(S, DomainEvent::Resumed(RunningReason::Migrated));
    sim.at(S + 100, Input::GuestHello { boot_id: [1; 16] });
    sim.feed(Input::GuestState(guest_state(true, Some(100))));
    sim.at(2 * S, Input::Enable);
    assert_eq!(sim.status(), Some(AppStatus::Green));
    sim.run_to(2 * S + fi);
    assert!(sim.resets().is_empty(), "not before the failure interval");
    sim.run_to(2 * S + fi + S);
    assert_eq!(
        sim.resets().iter().map(|r| r.2).collect::<Vec<_>>(),
        [ResetCause::HeartbeatsStopped],
        "one failure interval after the Enable, not after the minimum uptime"
    );
    assert!(sim.resets()[0].0 <= 2 * S + fi + 1, "{:?}", sim.resets());
}

#[test]
fn no_status_is_pushed_to_a_paused_domain() {
    let mut sim = Sim::quick();
    sim.guest_enables(0, 1);
    sim.feed(Input::GuestState(guest_state(true, Some(0))));
    let before = sent_to_guest(&sim).len();
    sim.domain_at(S, DomainEvent::Suspended(PausedReason::User));
    sim.at(2 * S, Input::Disable);
    assert_eq!(sent_to_guest(&sim).len(), before);
    sim.domain_at(3 * S, DomainEvent::Resumed(RunningReason::Unpaused));
    assert!(sent_to_guest(&sim).len() > before, "pushed on resume");
}

// --- reading pending input and scheduling pauses ----------------------------------------------

fn reset_times(sim: &Sim) -> Vec<Duration> {
    sim.resets().into_iter().map(|(t, _, _)| ms(t)).collect()
}

/// A guest whose channel is up and whose application enabled at 0 (no minimum uptime).
fn connected(failure_interval: u64) -> Sim {
    let mut sim = Sim::new(Policy {
        failure_interval: ms(failure_interval),
        min_uptime: Duration::ZERO,
        ..Policy::default()
    });
    sim.at(0, Input::GuestHello { boot_id: [1; 16] });
    sim.at(0, Input::Enable);
    sim
}

#[test]
fn heartbeat_verdict_waits_for_the_pending_input_to_be_read() {
    let mut sim = connected(5 * S);
    sim.auto_drain = false;

    sim.run_to(5 * S + 1);

    assert!(sim.resets().is_empty(), "{:?}", sim.resets());
    assert!(sim
        .log
        .iter()
        .any(|(t, a)| *t == ms(5 * S + 1) && *a == Action::DrainInput));
    // What was pending is a heartbeat: read before the verdict, it is no failure.
    sim.at(5 * S + 3, Input::Heartbeat);
    sim.at(5 * S + 4, Input::InputDrained);
    sim.run_to(10 * S);
    assert!(sim.resets().is_empty(), "{:?}", sim.resets());
}

#[test]
fn drained_input_without_a_heartbeat_resets_at_once() {
    let mut sim = connected(5 * S);
    sim.auto_drain = false;

    sim.run_to(5 * S + 1);
    sim.at(5 * S + 3, Input::InputDrained);

    assert_eq!(reset_times(&sim), vec![ms(5 * S + 3)]);
}

#[test]
fn a_session_that_does_not_answer_the_drain_is_judged_after_the_drain_wait() {
    let mut sim = connected(5 * S);
    sim.auto_drain = false;

    sim.run_to(5 * S + 1 + DRAIN_WAIT.as_millis() as u64);

    assert_eq!(reset_times(&sim), vec![ms(5 * S + 1) + DRAIN_WAIT]);
}

#[test]
fn a_guest_without_a_channel_is_judged_without_a_drain() {
    let mut sim = Sim::quick();
    sim.auto_drain = false;
    sim.at(0, Input::Enable);

    sim.run_to(31 * S);

    assert_eq!(reset_times(&sim), vec![ms(30 * S + 1)]);
    assert!(!sim.log.iter().any(|(_, a)| *a == Action::DrainInput));
}

#[test]
fn scheduling_pause_restarts_the_failure_clock_from_the_wake() {
    let mut sim = connected(5 * S);
    sim.at(4 * S, Input::Heartbeat);

    // Stopped from 4.5 s to 16.5 s: on waking, before any deadline is judged.
    sim.now = ms(16_500);
    sim.feed(Input::SchedulingPause { paused: ms(12 * S) });
    sim.run_to(21_500);
    assert!(sim.resets().is_empty(), "{:?}", sim.resets());

    // And a really silent application is still reset one failure interval after the wake.
    sim.run_to(22 * S);
    assert_eq!(reset_times(&sim), vec![ms(21_501)]);
}

#[test]
fn scheduling_pause_during_a_reset_under_way_decides_nothing_twice() {
    let mut sim = connected(5 * S);
    sim.auto_done = false;
    sim.run_to(5 * S + 1);
    assert_eq!(sim.resets().len(), 1);

    sim.now = ms(20 * S);
    sim.feed(Input::SchedulingPause { paused: ms(14 * S) });
    sim.at(20 * S + 5, Input::ResetDone);
    sim.run_to(21 * S);

    assert_eq!(sim.resets().len(), 1);
    assert!(sim.log.iter().any(|(_, a)| matches!(
        a,
        Action::Note {
            decision: Decision::ResetDone { .. },
            ..
        }
    )));
}

/// How long the supervisor must not have been scheduled before it says so
/// (`scheduling_pause`'s default).
const PAUSE_BOUND: u64 = S;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// The guest sends a heartbeat at least once per failure interval; the host agent is not
    /// scheduled during arbitrary stretches (what was sent then is read at the wake). Whatever
    /// the order of reads, the pause report and the deadlines at a wake, nothing is reset.
    #[test]
    fn no_reset_while_heartbeats_were_sent_within_the_interval(
        fi in 1u64..10,
        gaps in prop::collection::vec(0.0f64..1.0, 1..40),
        pauses in prop::collection::vec((0u64..15_000, 0u64..40_000, any::<bool>()), 0..5),
    ) {
        let fi = fi * S;
        let mut m = VmMachine::new(Duration::ZERO, running(), Some(Policy {
            failure_interval: ms(fi),
            min_uptime: Duration::ZERO,
            ..Policy::default()
        }));
        m.handle(Input::GuestHello { boot_id: [1; 16] }, Duration::ZERO);
        m.handle(Input::Enable, Duration::ZERO);
        // When the guest sends: every gap at most the failure interval.
        let mut sends = Vec::new();
        let mut t = 0u64;
        for g in gaps {
            t += 1 + (g * (fi - 1) as f64) as u64;
            sends.push(ms(t));
        }
        // When the host agent is not scheduled: [from, to), and whether a deadline is judged
        // before what was sent meanwhile is read.
        let mut stops: Vec<(Duration, Duration, bool)> = Vec::new();
        let mut at = 0u64;
        for (gap, len, tick_first) in pauses {
            at += gap;
            stops.push((ms(at), ms(at + len), tick_first));
            at += len;
        }
        let wake_of = |t: Duration| {
            stops.iter().find(|(a, b, _)| *a <= t && t < *b).map_or(t, |(_, b, _)| *b)
        };
        // Until the last heartbeat was read.
        let end = wake_of(ms(t));
        let mut now = Duration::ZERO;
        let mut read = 0usize;
        let mut reported = 0usize;
        let mut actions: Vec<Action> = Vec::new();
        loop {
            let deadline = m.next_deadline(now).map(wake_of);
            let next_read = sends.get(read).map(|&s| wake_of(s));
            let Some(t) = [deadline, next_read].into_iter().flatten().min() else { break };
            if t > end {
                break;
            }
            now = t;
            // Waking from a stop the supervisor notices, before anything else.
            let mut tick_first = false;
            while let Some(&(a, b, first)) = stops.get(reported) {
                if b > now {
                    break;
                }
                reported += 1;
                if b == now {
                    tick_first = first;
                    if b - a > ms(PAUSE_BOUND) {
                        actions.extend(m.handle(Input::SchedulingPause { paused: b - a }, now));
                    }
                }
            }
            let due = deadline == Some(now);
            let readable = |read: usize| sends.get(read).is_some_and(|&s| wake_of(s) <= now);
            if due && (tick_first || !readable(read)) {
                let out = m.handle(Input::Tick, now);
                let drain = out.contains(&Action::DrainInput);
                actions.extend(out);
                if drain {
                    while readable(read) {
                        read += 1;
                        actions.extend(m.handle(Input::Heartbeat, now));
                    }
                    actions.extend(m.handle(Input::InputDrained, now));
                }
            } else {
                while readable(read) {
                    read += 1;
                    actions.extend(m.handle(Input::Heartbeat, now));
                }
            }
            let reset = actions.iter().find(|a| matches!(a, Action::Reset { .. }));
            prop_assert!(reset.is_none(), "{:?} at {:?}; sends {:?}, stops {:?}", reset, now, sends, stops);
        }
        prop_assert_eq!(read, sends.len());
    }
}

// ---- inside a cluster ----

fn escalations(sim: &Sim) -> Vec<(u64, String)> {
    sim.log
        .iter()
        .filter_map(|(t, a)| match a {
            Action::Escalate { resource } => Some((t.as_millis() as u64, resource.clone())),
            _ => None,
        })
        .collect()
}

fn in_cluster(policy: Policy) -> Policy {
    Policy {
        cluster_resource: Some("vm_web".into()),
        ..policy
    }
}

/// A cluster VM with a budget of two resets, judged on needReset alone.
fn cluster_sim_of_two_resets() -> Sim {
    Sim::new(in_cluster(Policy {
        min_uptime: Duration::ZERO,
        max_resets: 2,
        channel_timeout: ms(3600 * S),
        ..Policy::default()
    }))
}

#[test]
fn giving_up_on_a_cluster_vm_escalates_once_with_the_alarm() {
    let mut sim = cluster_sim_of_two_resets();
    for (i, t) in [0u64, 100, 200, 300].into_iter().enumerate() {
        sim.guest_enables(t * S, i as u8 + 1);
        sim.feed(Input::PostAppState(AppState::NeedReset));
    }
    assert_eq!(sim.resets().len(), 2);
    assert_eq!(sim.alarms(), 1);
    assert_eq!(escalations(&sim), vec![(200 * S, "vm_web".to_string())]);
}

#[test]
fn the_vm_the_cluster_starts_again_after_a_give_up_gets_its_full_budget() {
    let mut sim = cluster_sim_of_two_resets();
    for (i, t) in [0u64, 100, 200].into_iter().enumerate() {
        sim.guest_enables(t * S, i as u8 + 1);
        sim.feed(Input::PostAppState(AppState::NeedReset));
    }
    assert_eq!((sim.resets().len(), sim.alarms()), (2, 1));
    sim.at(201 * S, Input::ClusterTookOver);

    // While Pacemaker stops the old domain, its guest (boot 3) goes silent and comes back with
    // the same boot: the alarm stands and it is never reset again.
    sim.at(250 * S, Input::GuestHello { boot_id: [3; 16] });
    sim.feed(Input::Enable);
    sim.run_to(299 * S);
    assert_eq!(sim.resets().len(), 2, "{:?}", sim.resets());
    assert!(sim.m.alarm().is_some());

    // The VM the cluster started again (a new boot, same UUID so the same record): the alarm
    // and the window are forgotten, it is reset in place up to the budget, then appmon gives up
    // and escalates a second time.
    for (i, t) in [300u64, 400, 500].into_iter().enumerate() {
        sim.guest_enables(t * S, i as u8 + 10);
        sim.feed(Input::PostAppState(AppState::NeedReset));
    }
    assert_eq!(sim.resets().len(), 4, "{:?}", sim.resets());
    assert_eq!(sim.alarms(), 2);
    assert_eq!(escalations(&sim).len(), 2);
    let started_again = sim.log.iter().any(|(t, a)| {
        *t == ms(300 * S)
            && matches!(
                a,
                Action::Note {
                    decision: Decision::ClusterStartedAgain { forgotten: 2 },
                    ..
                }
            )
    });
    assert!(started_again, "{:?}", sim.log);
}

#[test]
fn a_cluster_taking_over_without_a_give_up_forgets_nothing() {
    let mut sim = cluster_sim_of_two_resets();
    sim.guest_enables(0, 1);
    sim.feed(Input::PostAppState(AppState::NeedReset));
    sim.at(10 * S, Input::ClusterTookOver);
    for (i, t) in [100u64, 200].into_iter().enumerate() {
        sim.guest_enables(t * S, i as u8 + 2);
        sim.feed(Input::PostAppState(AppState::NeedReset));
    }

    // No alarm was raised when the cluster took over (an escalated power-cycle): the window
    // holds the first reset, so the third request gives up.
    assert_eq!(sim.resets().len(), 2, "{:?}", sim.resets());
    assert_eq!(sim.alarms(), 1);
}

#[test]
fn giving_up_without_a_cluster_does_not_escalate() {
    let mut sim = Sim::new(Policy {
        min_uptime: Duration::ZERO,
        max_resets: 1,
        channel_timeout: ms(3600 * S),
        ..Policy::default()
    });
    for (i, t) in [0u64, 100].into_iter().enumerate() {
        sim.guest_enables(t * S, i as u8 + 1);
        sim.feed(Input::PostAppState(AppState::NeedReset));
    }
    assert_eq!(sim.alarms(), 1);
    assert!(escalations(&sim).is_empty());
}

#[test]
fn a_cluster_vm_is_never_power_cycled_its_power_cycle_is_escalated() {
    // The reset does not bring the channel back: the power-cycle that would complete it goes
    // to the cluster instead.
    let mut sim = Sim::new(in_cluster(Policy {
        min_uptime: Duration::ZERO,
        channel_timeout: ms(5 * S),
        ..Policy::default()
    }));
    sim.guest_enables(0, 1);
    sim.feed(Input::PostAppState(AppState::NeedReset));
    sim.run_to(100 * S);
    assert_eq!(
        sim.resets(),
        vec![(0, ResetMethod::Reset, ResetCause::NeedReset)]
    );
    assert_eq!(escalations(&sim), vec![(5 * S, "vm_web".to_string())]);

    // reset-method power-cycle: every reset goes to the cluster, and takes its slot.
    let mut sim = Sim::new(in_cluster(Policy {
        min_uptime: Duration::ZERO,
        reset_method: ResetMethod::PowerCycle,
        ..Policy::default()
    }));
    sim.guest_enables(0, 1);
    sim.feed(Input::PostAppState(AppState::NeedReset));
    assert!(sim.resets().is_empty());
    assert_eq!(escalations(&sim), vec![(0, "vm_web".to_string())]);
    assert_eq!(sim.m.resets_in_window(sim.now), 1);
}
