//! Reconciliation: what the supervisor's VMs should be, given what libvirt says of their
//! domains. Pure decisions; the supervisor carries them out.
//!
//! Domain states from a listing or lookup are applied only if no libvirt event for that domain
//! arrived after the call was issued (a sequence number per event): a stale "running" must never
//! override a newer "paused", and a stale listing must not drop a domain that an event since
//! announced.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use appmon_libvirt_backend::{DomainState, MonitorSpec, SpecError, Transport};
use appmon_wire::parse_boot_id;

use super::clock::Clock;
use super::vm::Vm;
use crate::config::Config;
use crate::persist::VmRecord;
use crate::policy::{Alarm, ClusterTook, Policy, ResetRecord};
use crate::session::{ChannelLookup, Endpoint, SessionError, VmId};

/// The effective policy of a domain's metadata: `None` when it has none or it is broken.
pub(super) fn policy_of(
    config: &Config,
    spec: &Result<Option<MonitorSpec>, SpecError>,
) -> Option<Policy> {
    match spec {
        Ok(Some(spec)) => Some(config.policy_for(spec)),
        _ => None,
    }
}

/// Whether a state read by a call issued at event sequence `seq` is newer than every event
/// of the VM's domain.
pub(super) fn is_fresh(vm: &Vm, seq: u64) -> bool {
    vm.last_event_seq <= seq
}

/// The VMs a listing issued at `seq` no longer has (and no event announced since).
pub(super) fn gone(vms: &HashMap<VmId, Vm>, listed: &HashSet<String>, seq: u64) -> Vec<VmId> {
    vms.iter()
        .filter(|(_, vm)| !listed.contains(&vm.domain.uuid) && is_fresh(vm, seq))
        .map(|(id, _)| *id)
        .collect()
}

/// Reset history and alarm of a persisted record, on `clock` (resets too old for the clock are
/// dropped: they are outside every window).
pub(super) fn restore(clock: &Clock, record: &VmRecord) -> (Vec<ResetRecord>, Option<Alarm>) {
    let resets = record
        .resets
        .iter()
        .filter_map(|r| {
            Some(ResetRecord {
                at: clock.from_wall_ms(r.unix_ms)?,
                method: r.method,
                reason: r.reason.clone(),
            })
        })
        .collect();
    let alarm = record.alarm.as_ref().map(|a| Alarm {
        at: clock.from_wall_ms(a.unix_ms).unwrap_or(Duration::ZERO),
        reason: a.reason.clone(),
        cluster_took: a.cluster_took.as_ref().map(|took| ClusterTook {
            // An id that does not parse matches no boot: the next Hello counts as a new one.
            boot_id: took.boot_id.as_deref().and_then(parse_boot_id),
        }),
    });
    (resets, alarm)
}

/// What to do with a VM's session task.
#[derive(Debug)]
pub(super) enum SessionPlan {
    /// The running task serves the right endpoint.
    Keep,
    /// No session: not monitored, no valid spec, or the domain is not alive.
    Stop,
    /// Monitored and alive, but its transport names no reachable endpoint.
    Unreachable(SessionError),
    /// (Re)start the task for this endpoint.
    Start(Endpoint),
}

/// The session task `vm` should have. `lookup` makes the channel lookup for a spec whose
/// virtio-serial channel is found by name.
pub(super) fn session_plan(
    vm: &Vm,
    lookup: impl FnOnce(&MonitorSpec) -> ChannelLookup,
) -> SessionPlan {
    let spec = match (&vm.spec, vm.machine.policy()) {
        (Ok(Some(spec)), Some(_)) => spec,
        _ => return SessionPlan::Stop,
    };
    if matches!(vm.state, DomainState::ShutOff(_) | DomainState::Crashed) {
        return SessionPlan::Stop;
    }
    match Endpoint::from_transport(&spec.transport, vm.vsock_cid, lookup(spec)) {
        Ok(e)
            if vm
                .session
                .as_ref()
                .is_some_and(|s| s.endpoint == e.describe()) =>
        {
            SessionPlan::Keep
        }
        Ok(e) => SessionPlan::Start(e),
        Err(e) => SessionPlan::Unreachable(e),
    }
}

/// The virtio-serial channel name a spec's guest agent opens.
pub(super) fn channel_name(spec: &MonitorSpec) -> &str {
    match &spec.transport {
        Transport::Channel { name, .. } => name,
        _ => appmon_libvirt_backend::DEFAULT_CHANNEL_NAME,
    }
}
