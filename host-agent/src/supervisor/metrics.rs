//! `/metrics`: the host agent's state in Prometheus's text exposition (prometheus-client),
//! built on each scrape from what the supervisor holds, so that VMs and counters that went away
//! go away from the exposition too.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `appmon_guest_value` | gauge | `domain`, `entity`, `counter` | every guest counter's latest value |
//! | `appmon_vms` | gauge | `status` (`green`/`red`/`gray`/`unmonitored`) | VMs by status |
//! | `appmon_vm_gave_up` | gauge | `domain` | 1 while a monitored VM's "gave up" alarm stands |
//! | `appmon_guest_sessions` | gauge | | guest agents connected |
//! | `appmon_resets_total` | counter | `cause` | resets decided since the start |
//! | `appmon_session_ends_total` | counter | `reason` | guest sessions ended since the start (`bad_frame`: decode errors) |
//! | `appmon_guest_frames_refused_total` | counter | `domain` | counter frames dropped per VM |
//! | `appmon_alarm_raised` | gauge | `domain`, `entity`, `counter`, `side` | 1 per raised alarm of MON's alarm view |
//!
//! Label values a guest chose (entity and counter names) are escaped by the encoder.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::view;
use super::vm::Vm;
use crate::mon::alarms::{AlarmView, Side};
use crate::session::VmId;

type Labels = Vec<(&'static str, String)>;

/// What `/metrics` counts since the host agent started.
#[derive(Debug, Default)]
pub(super) struct HostCounts {
    resets: BTreeMap<String, u64>,
    session_ends: BTreeMap<String, u64>,
}

impl HostCounts {
    pub fn reset(&mut self, cause: &impl serde::Serialize) {
        *self.resets.entry(variant(cause)).or_default() += 1;
    }

    pub fn session_end(&mut self, reason: &impl serde::Serialize) {
        *self.session_ends.entry(variant(reason)).or_default() += 1;
    }
}

/// A serde enum's variant name (`snake_case` in appmon-control).
fn variant(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(map)) => map.keys().next().cloned().unwrap_or_default(),
        _ => "other".into(),
    }
}

/// The exposition of `vms` and `counts` at `now`.
pub(super) fn exposition(
    vms: &HashMap<VmId, Vm>,
    counts: &HostCounts,
    alarms: &AlarmView,
    now: Duration,
) -> String {
    let mut registry = Registry::default();

    let counters = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let by_status = Family::<Labels, Gauge>::default();
    let gave_up = Family::<Labels, Gauge>::default();
    let sessions = Gauge::<i64>::default();
    let refused = Family::<Labels, Counter>::default();
    for status in ["green", "red", "gray", "unmonitored"] {
        by_status
            .get_or_create(&vec![("status", status.to_owned())])
            .set(0);
    }
    let mut sorted: Vec<&Vm> = vms.values().collect();
    sorted.sort_unstable_by(|a, b| a.domain.name.cmp(&b.domain.name));
    for vm in sorted {
        let domain = &vm.domain.name;
        let v = view::view(vm, now, false);
        let status = match (v.monitored, v.status) {
            (true, Some(s)) => s.as_str(),
            _ => "unmonitored",
        };
        by_status
            .get_or_create(&vec![("status", status.to_owned())])
            .inc();
        if v.monitored {
            gave_up
                .get_or_create(&vec![("domain", domain.clone())])
                .set(i64::from(v.gave_up));
        }
        if vm.connected {
            sessions.inc();
        }
        let store = &vm.counters.store;
        if store.refused_frames() > 0 {
            refused
                .get_or_create(&vec![("domain", domain.clone())])
                .inc_by(store.refused_frames());
        }
        let all = vm
            .counters
            .stores()
            .into_iter()
            .flat_map(|s| s.latest(None));
        for latest in all {
            if let Some((_, value)) = latest.value {
                counters
                    .get_or_create(&vec![
                        ("domain", domain.clone()),
                        ("entity", latest.entity.to_owned()),
                        ("counter", latest.counter.name.as_str().to_owned()),
                    ])
                    .set(value);
            }
        }
    }
    let resets = Family::<Labels, Counter>::default();
    for (cause, n) in &counts.resets {
        resets
            .get_or_create(&vec![("cause", cause.clone())])
            .inc_by(*n);
    }
    let ends = Family::<Labels, Counter>::default();
    for (reason, n) in &counts.session_ends {
        ends.get_or_create(&vec![("reason", reason.clone())])
            .inc_by(*n);
    }

    let raised = Family::<Labels, Gauge>::default();
    for (domain, entity, counter, side) in alarms.raised() {
        let side = match side {
            Side::Below => "below",
            Side::Above => "above",
        };
        raised
            .get_or_create(&vec![
                ("domain", domain.to_owned()),
                ("entity", entity.to_owned()),
                ("counter", counter.to_owned()),
                ("side", side.to_owned()),
            ])
            .set(1);
    }
    registry.register(
        "appmon_alarm_raised",
        "1 for each raised alarm of MON's alarm view",
        raised,
    );
    registry.register(
        "appmon_guest_value",
        "A guest counter's latest value, as its guest agent sent it",
        counters,
    );
    registry.register(
        "appmon_vms",
        "VMs this host agent watches, by status",
        by_status,
    );
    registry.register(
        "appmon_vm_gave_up",
        "1 while a monitored VM's reset budget is spent and the host agent gave up",
        gave_up,
    );
    registry.register(
        "appmon_guest_sessions",
        "Guest agents connected to this host agent",
        sessions,
    );
    registry.register(
        "appmon_resets",
        "Resets decided since the start, by cause",
        resets,
    );
    registry.register(
        "appmon_session_ends",
        "Guest sessions ended since the start, by reason (bad_frame: decode errors)",
        ends,
    );
    registry.register(
        "appmon_guest_frames_refused",
        "Counter frames from a guest dropped since the host agent began watching it",
        refused,
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        tracing::error!(error = %e, "encoding /metrics failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use appmon_control::{ResetCause, SessionEnd};

    use super::*;

    #[test]
    fn variants_are_named_as_the_control_schema_spells_them() {
        assert_eq!(variant(&ResetCause::NeedReset), "need_reset");
        assert_eq!(
            variant(&SessionEnd::BadFrame { error: "x".into() }),
            "bad_frame"
        );
        assert_eq!(variant(&SessionEnd::ClosedByGuest), "closed_by_guest");
    }

    #[test]
    fn empty_host_exposes_its_families_and_ends_with_eof() {
        let mut counts = HostCounts::default();
        counts.reset(&ResetCause::HeartbeatsStopped);
        counts.session_end(&SessionEnd::ClosedByGuest);

        let text = exposition(
            &HashMap::new(),
            &counts,
            &AlarmView::default(),
            Duration::ZERO,
        );

        assert!(text.contains("appmon_vms{status=\"green\"} 0"), "{text}");
        assert!(
            text.contains("appmon_resets_total{cause=\"heartbeats_stopped\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("appmon_session_ends_total{reason=\"closed_by_guest\"} 1"),
            "{text}"
        );
        assert!(text.contains("appmon_guest_sessions 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
