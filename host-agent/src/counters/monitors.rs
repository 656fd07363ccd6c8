//! The host's counters of a guest's application monitors: the entity
//! [`ENTITY`] (`Application monitors`), six counters per monitor, made from what the guest
//! agent reports over the session (its monitor list and its monitors' events) and kept in a
//! [`CounterStore`] of their own beside the guest's counters, so that `appmonctl counters`,
//! `/monapi`, `/metrics` and the alarm view see them as any other counter.
//!
//! Per monitor `M` (in the order the guest lists its monitors):
//!
//! | counter | value |
//! |---|---|
//! | `M state` | 0 idle, 1 stabilizing, 2 healthy, 3 failed, 4 gave up |
//! | `M healthy` | 1 while healthy, else 0 |
//! | `M restarts` | restarts within the current restart interval (the guest's count) |
//! | `M restart count` | restarts allowed within the restart interval |
//! | `M failures` | failed checks reported since the host agent started |
//! | `M failure actions` | failure actions taken since the host agent started |
//!
//! Pure: no clock, no I/O; the supervisor passes the wall-clock time of each report.

use std::collections::HashMap;

use appmon_wire::{
    CounterDesc, CounterSchema, CounterValues, EntityDesc, MonitorEvent, MonitorEventKind,
    MonitorPhase, MonitorStatus, Text,
};

use super::CounterStore;

/// The entity's name.
pub const ENTITY: &str = "Application monitors";

/// The counters per monitor: (name suffix, description, units).
const COUNTERS: [(&str, &str, &str); 6] = [
    (
        "state",
        "the monitor's state: 0 idle, 1 stabilizing, 2 healthy, 3 failed, 4 gave up",
        "state",
    ),
    (
        "healthy",
        "1 while the monitor finds the application healthy",
        "bool",
    ),
    (
        "restarts",
        "restarts within the current restart interval",
        "#",
    ),
    (
        "restart count",
        "restarts allowed within the restart interval",
        "#",
    ),
    (
        "failures",
        "failed checks reported since the host agent started",
        "#",
    ),
    (
        "failure actions",
        "failure actions taken (restarts used up) since the host agent started",
        "#",
    ),
];

/// What the host counted of one monitor's events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    failures: u64,
    actions: u64,
}

/// One VM's application-monitor counters.
#[derive(Debug, Default)]
pub struct MonitorCounters {
    store: CounterStore,
    /// The monitors of the schema in use, in the guest's order, with their last status.
    monitors: Vec<MonitorStatus>,
    tallies: HashMap<String, Tally>,
    generation: u32,
}

impl MonitorCounters {
    /// The counters, for the readers of counter stores.
    pub fn store(&self) -> &CounterStore {
        &self.store
    }

    /// The guest's monitor list at `unix_ms`: a new schema when the monitors changed, then
    /// every value; returns the values frame the store took (for the alarm view).
    pub fn statuses(&mut self, monitors: &[MonitorStatus], unix_ms: u64) -> Option<CounterValues> {
        let names = |ms: &[MonitorStatus]| -> Vec<String> {
            ms.iter().map(|m| m.name.as_str().to_owned()).collect()
        };
        if monitors.is_empty() && !self.store.has_schema() {
            return None;
        }
        if names(monitors) != names(&self.monitors) || !self.store.has_schema() {
            self.generation = self.generation.wrapping_add(1);
            self.store.session_started();
            let schema = CounterSchema {
                generation: self.generation,
                // No monitor left: a schema without the entity.
                entities: (!monitors.is_empty())
                    .then(|| EntityDesc {
                        name: Text::truncating(ENTITY),
                        counters: monitors
                            .iter()
                            .enumerate()
                            .flat_map(|(i, m)| {
                                COUNTERS.iter().enumerate().map(
                                    move |(k, &(suffix, description, units))| CounterDesc {
                                        id: (i * COUNTERS.len() + k) as u32,
                                        name: Text::truncating(format!(
                                            "{} {suffix}",
                                            m.name.as_str()
                                        )),
                                        description: Text::truncating(description),
                                        units: Text::truncating(units),
                                        kind: Text::default(),
                                        range_lower: Some(0.0),
                                        range_upper: None,
                                        pace_ms: 0,
                                    },
                                )
                            })
                            .collect(),
                    })
                    .into_iter()
                    .collect(),
                complete: true,
            };
            if let Err(e) = self.store.schema_part(schema) {
                // Bounded by the wire's monitor list; say so rather than lose it silently.
                tracing::warn!(error = %e, "application monitor counters not kept");
                return None;
            }
        }
        self.monitors = monitors.to_vec();
        self.tallies
            .retain(|name, _| monitors.iter().any(|m| m.name.as_str() == name));
        self.emit(unix_ms)
    }

    /// A monitor's event at `unix_ms`: counted; returns the values frame the store took.
    pub fn event(&mut self, event: &MonitorEvent, unix_ms: u64) -> Option<CounterValues> {
        let tally = self
            .tallies
            .entry(event.monitor.as_str().to_owned())
            .or_default();
        match event.kind {
            MonitorEventKind::Failed { .. } => tally.failures += 1,
            MonitorEventKind::ActionTaken { .. } => tally.actions += 1,
            _ => return None,
        }
        self.emit(unix_ms)
    }

    fn emit(&mut self, unix_ms: u64) -> Option<CounterValues> {
        if self.monitors.is_empty() {
            return None;
        }
        let values = CounterValues {
            generation: self.generation,
            unix_ms,
            values: self
                .monitors
                .iter()
                .enumerate()
                .flat_map(|(i, m)| {
                    let t = self
                        .tallies
                        .get(m.name.as_str())
                        .copied()
                        .unwrap_or_default();
                    let state = match m.phase {
                        MonitorPhase::Idle => 0.0,
                        MonitorPhase::Stabilizing => 1.0,
                        MonitorPhase::Healthy => 2.0,
                        MonitorPhase::Failed => 3.0,
                        MonitorPhase::GaveUp => 4.0,
                    };
                    let healthy = if m.phase == MonitorPhase::Healthy {
                        1.0
                    } else {
                        0.0
                    };
                    [
                        state,
                        healthy,
                        f64::from(m.restarts),
                        f64::from(m.restart_count),
                        t.failures as f64,
                        t.actions as f64,
                    ]
                    .into_iter()
                    .enumerate()
                    .map(move |(k, v)| ((i * COUNTERS.len() + k) as u32, v))
                })
                .collect(),
        };
        self.store.values(&values, unix_ms).ok().map(|_| values)
    }
}

#[cfg(test)]
mod tests {
    use appmon_wire::{FailureAction, MonitorKind, MonitorMode};

    use super::*;

    fn status(name: &str, phase: MonitorPhase, restarts: u32) -> MonitorStatus {
        MonitorStatus {
            name: Text::truncating(name),
            application: Text::truncating("app"),
            kind: MonitorKind::Process,
            mode: MonitorMode::Both,
            phase,
            restarts,
            restart_count: 2,
            failure_action: FailureAction::NeedReset,
            last_failure: None,
        }
    }

    fn value(c: &MonitorCounters, counter: &str) -> Option<f64> {
        c.store()
            .latest(Some(ENTITY))
            .iter()
            .find(|l| l.counter.name.as_str() == counter)
            .and_then(|l| l.value.map(|(_, v)| v))
    }

    #[test]
    fn six_counters_per_monitor_follow_its_status_and_events() {
        let mut c = MonitorCounters::default();
        c.statuses(
            &[
                status("web", MonitorPhase::Healthy, 0),
                status("db", MonitorPhase::Stabilizing, 0),
            ],
            1000,
        )
        .expect("values");
        let failed = MonitorEvent {
            monitor: Text::truncating("web"),
            kind: MonitorEventKind::Failed {
                reason: Text::truncating("gone"),
            },
        };
        c.event(&failed, 2000).expect("counted");
        c.event(&failed, 3000).expect("counted");
        let restarted = MonitorEvent {
            monitor: Text::truncating("web"),
            kind: MonitorEventKind::Restarted {
                attempt: 1,
                ok: true,
            },
        };
        assert!(c.event(&restarted, 3500).is_none(), "not a counted event");
        c.statuses(
            &[
                status("web", MonitorPhase::Failed, 2),
                status("db", MonitorPhase::Healthy, 0),
            ],
            4000,
        )
        .expect("values");

        assert_eq!(c.store().entities(), [ENTITY]);
        assert_eq!(c.store().latest(None).len(), 12);
        assert_eq!(
            c.store().generation(),
            Some(1),
            "the same monitors: one schema"
        );
        for (counter, want) in [
            ("web state", 3.0),
            ("web healthy", 0.0),
            ("web restarts", 2.0),
            ("web restart count", 2.0),
            ("web failures", 2.0),
            ("web failure actions", 0.0),
            ("db state", 2.0),
            ("db healthy", 1.0),
            ("db failures", 0.0),
        ] {
            assert_eq!(value(&c, counter), Some(want), "{counter}");
        }
    }

    #[test]
    fn a_changed_monitor_list_is_a_new_schema_and_forgets_the_gone_ones() {
        let mut c = MonitorCounters::default();
        c.statuses(&[status("web", MonitorPhase::Healthy, 0)], 1000);
        c.event(
            &MonitorEvent {
                monitor: Text::truncating("web"),
                kind: MonitorEventKind::ActionTaken {
                    action: FailureAction::Notify,
                },
            },
            1500,
        );

        c.statuses(&[status("db", MonitorPhase::Idle, 0)], 2000);

        assert_eq!(c.store().generation(), Some(2));
        assert_eq!(value(&c, "web state"), None);
        assert_eq!(value(&c, "db state"), Some(0.0));
        assert!(c.tallies.is_empty(), "{:?}", c.tallies);
        assert!(c.statuses(&[], 3000).is_none(), "no monitor: no values");
        assert!(c.store().latest(None).is_empty());
    }
}
