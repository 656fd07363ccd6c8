//! What the control socket shows of a VM ([`VmView`]), and the domain state libvirt's events
//! leave behind for it.

use std::time::Duration;

use appmon_control::{ConnectFailureView, PolicyView, Status, VmView};
use appmon_libvirt_backend::{
    DomainEvent, DomainState, PausedReason, RunningReason, StartedReason,
};
use appmon_wire::{format_boot_id, AppStatus};

use super::clock::Clock;
use super::guest::{application_view, monitor_view, process_view};
use super::vm::Vm;
use crate::policy::Monitoring;

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The control schema's status of the colour the guest is told.
pub(super) fn status(status: AppStatus) -> Status {
    match status {
        AppStatus::Green => Status::Green,
        AppStatus::Red => Status::Red,
        AppStatus::Gray => Status::Gray,
    }
}

/// `vm` at `now`; the history only for `show`.
pub(super) fn view(vm: &Vm, now: Duration, with_history: bool) -> VmView {
    let m = &vm.machine;
    let policy = m.policy().map(|p| PolicyView {
        failure_interval_ms: millis(p.failure_interval),
        min_uptime_ms: millis(p.min_uptime),
        max_resets: p.max_resets,
        reset_window_ms: millis(p.reset_window),
        reset_method: p.reset_method,
        channel_timeout_ms: millis(p.channel_timeout),
    });
    // While monitoring is enabled: the failure clock the policy judges by (from the Enable,
    // every heartbeat read, the domain running again). Otherwise the last heartbeat this host
    // agent read. Never the age a guest claims on its own: that is `claimed_heartbeat_age_ms`.
    let heartbeat = match m.monitoring() {
        Monitoring::Enabled { last_heartbeat } => Some(last_heartbeat),
        _ => vm.last_heartbeat,
    };
    VmView {
        name: vm.domain.name.clone(),
        uuid: vm.domain.uuid.clone(),
        monitored: m.policy().is_some(),
        spec_error: vm.spec.as_ref().err().map(|e| e.to_string()),
        status: m.status(now).map(status),
        enabled: m.enabled(),
        need_reset: m.need_reset(),
        last_heartbeat_age_ms: heartbeat.map(|h| millis(now.saturating_sub(h))),
        claimed_heartbeat_age_ms: vm
            .claimed_heartbeat
            .map(|(at, age)| age.saturating_add(millis(now.saturating_sub(at)))),
        resets_in_window: m.resets_in_window(now),
        gave_up: m.alarm().is_some(),
        alarm: m.alarm().map(|a| a.reason.clone()),
        connected: vm.connected,
        guest_boot_id: m.boot_id().map(|b| format_boot_id(&b)),
        guest_agent: vm.agent.clone(),
        domain_state: vm.state,
        transport: vm.session.as_ref().map(|s| s.endpoint.clone()),
        // Needs the wall clock: `connect_failure` below.
        connect_failure: None,
        policy,
        libvirt_lost: None,
        monitors: vm.guest.monitors.iter().map(monitor_view).collect(),
        applications: vm
            .guest
            .apps
            .iter()
            .map(|a| application_view(a, now))
            .collect(),
        processes: vm.guest.processes.values().map(process_view).collect(),
        history: if with_history {
            vm.history.iter().cloned().collect()
        } else {
            Vec::new()
        },
    }
}

/// While the VM has no session: the latest reason its connections fail, in wall-clock time.
pub(super) fn connect_failure(vm: &Vm, clock: &Clock) -> Option<ConnectFailureView> {
    let latest = vm.trouble.latest().filter(|_| !vm.connected)?;
    Some(ConnectFailureView {
        reason: latest.reason.clone(),
        last_unix_ms: clock.wall_ms(latest.last),
        first_unix_ms: clock.wall_ms(latest.first),
        times: latest.times,
    })
}

/// The domain state an event leaves behind, for display.
pub(super) fn state_after(state: DomainState, event: DomainEvent) -> DomainState {
    match event {
        DomainEvent::Started(StartedReason::Migrated) => {
            DomainState::Paused(PausedReason::StartingUp)
        }
        DomainEvent::Started(_) => DomainState::Running(RunningReason::Booted),
        DomainEvent::Suspended(r) => DomainState::Paused(r),
        DomainEvent::Resumed(r) => DomainState::Running(r),
        DomainEvent::Stopped(r) => DomainState::ShutOff(r),
        DomainEvent::Crashed => DomainState::Crashed,
        _ => state,
    }
}
