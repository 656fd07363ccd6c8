//! A VM's counters in the supervisor: the pure store of [`crate::counters`] fed with what the
//! VM's session delivers, the frames it refuses logged without letting a guest flood the log,
//! and what `appmonctl counters` sees of them.
//!
//! A refused frame is dropped whole and logged at warn, its error escaped (a guest's counter
//! names are in some of them); the VM's monitoring goes on untouched. Per VM at most one such
//! line per [`REFUSAL_LOG_EVERY`]: the refusals in between are counted and the next line says
//! how many there were. `appmonctl counters` shows the VM's total.

use std::time::Duration;

use appmon_control::{
    AlarmEvent, AlarmSide, CounterView, CountersView, EntityView, ErrorKind, Finite, Level,
    Response,
};
use appmon_wire::{escape, CounterSchema, CounterValues};

use crate::counters::monitors::MonitorCounters;
use crate::counters::{CounterError, CounterStore, Latest};
use crate::mon::alarms::{AlarmView, Side, Transition};
use crate::mon::{self, Element, MonQuery};

/// At most one log line about refused counter frames per VM this often.
pub(super) const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// One of a VM's two sets of counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CounterSet {
    /// The counters the guest sends.
    Guest,
    /// The host's `Application monitors` entity, kept from the guest's monitor reports.
    Monitors,
}

/// One VM's counters and the state of its refusal log.
#[derive(Debug, Default)]
pub(super) struct VmCounters {
    pub store: CounterStore,
    /// The host's counters of the guest's application monitors (`Application monitors`).
    pub monitors: MonitorCounters,
    log: RefusalLog,
}

impl VmCounters {
    /// The guest's counter store, then the host's of the guest.
    pub fn stores(&self) -> [&CounterStore; 2] {
        [&self.store, self.monitors.store()]
    }

    /// A new session of the VM's guest: its values wait for that session's schema.
    pub fn session_started(&mut self) {
        self.store.session_started();
    }

    /// Takes a schema part received at `now`.
    pub fn schema(&mut self, domain: &str, part: CounterSchema, now: Duration) {
        let generation = part.generation;
        let complete = part.complete;
        match self.store.schema_part(part) {
            Ok(()) if complete => {
                tracing::debug!(domain, generation, "counter schema in use");
            }
            Ok(()) => {}
            Err(e) => self.refused(domain, &e, now),
        }
    }

    /// Takes a values frame received at `now`, `unix_ms` on the host's wall clock; whether it
    /// was taken.
    pub fn values(
        &mut self,
        domain: &str,
        values: &CounterValues,
        unix_ms: u64,
        now: Duration,
    ) -> bool {
        match self.store.values(values, unix_ms) {
            Ok(_) => true,
            Err(e) => {
                self.refused(domain, &e, now);
                false
            }
        }
    }

    fn refused(&mut self, domain: &str, error: &CounterError, now: Duration) {
        if let Some(suppressed) = self.log.allow(now) {
            let error = error.to_string();
            tracing::warn!(
                domain,
                error = %escape(&error),
                more_since_last_line = suppressed,
                "counter frame from the guest dropped; monitoring goes on"
            );
        }
    }
}

/// Lets one line through per [`REFUSAL_LOG_EVERY`] and counts the ones held back.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Duration>,
    held_back: u64,
}

impl RefusalLog {
    /// `Some(held back since the last line)` when a line may be written at `now`.
    fn allow(&mut self, now: Duration) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_sub(last) < REFUSAL_LOG_EVERY => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// The answer to `counters DOMAIN [ENTITY]`: an unknown entity is an error naming it.
pub(super) fn answer(domain: &str, counters: &VmCounters, entity: Option<&str>) -> Response {
    if let Some(wanted) = entity {
        let known: Vec<&str> = counters
            .stores()
            .into_iter()
            .flat_map(|s| s.entities())
            .collect();
        if !known.contains(&wanted) {
            return Response::Error {
                kind: ErrorKind::UnknownEntity,
                message: format!(
                    "{domain} has no counter entity {:?} (its entities: {})",
                    escape(wanted),
                    known
                        .iter()
                        .map(|e| format!("{:?}", escape(e)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
        }
    }
    Response::Counters {
        counters: Box::new(view(domain, counters, entity)),
    }
}

/// Judges a values frame the store took against the alarm view; returns the history entries
/// of what changed (the guest's names escaped), logged here.
pub(super) fn judge(
    alarms: &mut AlarmView,
    domain: &str,
    store: &CounterStore,
    values: &CounterValues,
) -> Vec<(Level, AlarmEvent)> {
    let mut out = Vec::new();
    if alarms.is_empty() {
        return out;
    }
    for &(id, value) in &values.values {
        let Some((entity, counter)) = store.name_of(id) else {
            continue;
        };
        for t in alarms.value(domain, entity, counter, value) {
            let (entity, counter) = (escape(entity).into_owned(), escape(counter).into_owned());
            let side = |s: Side| match s {
                Side::Below => AlarmSide::Below,
                Side::Above => AlarmSide::Above,
            };
            let (level, event) = match t {
                Transition::Raised {
                    side: s,
                    value,
                    threshold,
                } => (
                    Level::Warn,
                    AlarmEvent::Raised {
                        entity,
                        counter,
                        side: side(s),
                        value: Finite(value),
                        threshold: Finite(threshold),
                    },
                ),
                Transition::Cleared { side: s, value } => (
                    Level::Info,
                    AlarmEvent::Cleared {
                        entity,
                        counter,
                        side: side(s),
                        value: Finite(value),
                    },
                ),
            };
            match level {
                Level::Warn => tracing::warn!(domain, "{event}"),
                _ => tracing::info!(domain, "{event}"),
            }
            out.push((level, event));
        }
    }
    out
}

/// MON's answer to `query` at `unix_secs`: every VM whose guest sent a schema is an appliance,
/// by domain name.
pub(super) fn mon_answer<'a>(
    query: &MonQuery,
    unix_secs: u64,
    vms: impl Iterator<Item = (&'a str, &'a VmCounters)>,
    alarms: &AlarmView,
) -> Element {
    let mut appliances: Vec<(&str, Vec<&CounterStore>)> = vms
        .filter(|(_, c)| c.stores().iter().any(|s| s.has_schema()))
        .map(|(name, c)| (name, c.stores().to_vec()))
        .collect();
    appliances.sort_unstable_by_key(|(name, _)| *name);
    mon::answer(query, unix_secs, appliances, &|d, e, c| {
        alarms.threshold(d, e, c)
    })
}

/// The VM's counters in schema order, grouped by entity.
pub(super) fn view(domain: &str, counters: &VmCounters, entity: Option<&str>) -> CountersView {
    let store = &counters.store;
    let mut entities: Vec<EntityView> = Vec::new();
    let all = counters.stores().into_iter().flat_map(|s| s.latest(entity));
    for latest in all {
        let counter = counter_view(&latest);
        match entities.last_mut() {
            Some(last) if last.name == latest.entity => last.counters.push(counter),
            _ => entities.push(EntityView {
                name: latest.entity.to_owned(),
                counters: vec![counter],
            }),
        }
    }
    CountersView {
        domain: domain.to_owned(),
        generation: store.generation(),
        refused_frames: store.refused_frames(),
        entities,
    }
}

fn counter_view(latest: &Latest<'_>) -> CounterView {
    let c = latest.counter;
    CounterView {
        name: c.name.as_str().to_owned(),
        description: c.description.as_str().to_owned(),
        units: c.units.as_str().to_owned(),
        kind: c.kind.as_str().to_owned(),
        pace_ms: c.pace_ms,
        range_lower: c.range_lower,
        range_upper: c.range_upper,
        value: latest.value.map(|(_, v)| v),
        unix_ms: latest.value.map(|(at, _)| at),
    }
}

#[cfg(test)]
mod tests {
    use appmon_wire::{CounterDesc, EntityDesc, Text};

    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn schema(generation: u32) -> CounterSchema {
        let counter = |id: u32, name: &str| CounterDesc {
            id,
            name: Text::truncating(name),
            description: Text::truncating("d"),
            units: Text::truncating("%"),
            kind: Text::truncating(""),
            range_lower: None,
            range_upper: None,
            pace_ms: 1000,
        };
        CounterSchema {
            generation,
            entities: vec![
                EntityDesc {
                    name: Text::truncating("CPU"),
                    counters: vec![counter(1, "CPU Total"), counter(2, "CPU User")],
                },
                EntityDesc {
                    name: Text::truncating("Demo"),
                    counters: vec![counter(3, "requests")],
                },
            ],
            complete: true,
        }
    }

    fn values(generation: u32, pairs: &[(u32, f64)]) -> CounterValues {
        CounterValues {
            generation,
            unix_ms: 0,
            values: pairs.to_vec(),
        }
    }

    #[test]
    fn refusal_log_lets_one_line_through_per_period_and_counts_the_rest() {
        let mut log = RefusalLog::default();

        let got: Vec<Option<u64>> = [0, 1, 5, 9, 10, 11, 25]
            .into_iter()
            .map(|t| log.allow(secs(t)))
            .collect();

        assert_eq!(
            got,
            [Some(0), None, None, None, Some(3), None, Some(1)],
            "a line at 0, 10 and 25 s, each saying how many were held back"
        );
    }

    #[test]
    fn unknown_id_is_dropped_and_counted_and_the_next_good_frame_is_taken() {
        let mut c = VmCounters::default();
        c.session_started();
        c.schema("vm", schema(1), secs(0));

        c.values("vm", &values(1, &[(1, 10.0), (99, 1.0)]), 1000, secs(1));
        c.values("vm", &values(1, &[(1, 20.0), (3, 7.0)]), 2000, secs(2));

        let view = view("vm", &c, None);
        assert_eq!(view.refused_frames, 1);
        let total = view.counter("CPU", "CPU Total").expect("CPU Total");
        assert_eq!((total.value, total.unix_ms), (Some(20.0), Some(2000)));
        assert_eq!(
            view.counter("Demo", "requests").and_then(|c| c.value),
            Some(7.0)
        );
    }

    #[test]
    fn view_groups_by_entity_in_schema_order_and_filters_one() {
        let mut c = VmCounters::default();
        c.session_started();
        c.schema("vm", schema(1), secs(0));

        let all = view("vm", &c, None);
        let demo = view("vm", &c, Some("Demo"));

        let names = |v: &CountersView| -> Vec<(String, usize)> {
            v.entities
                .iter()
                .map(|e| (e.name.clone(), e.counters.len()))
                .collect()
        };
        assert_eq!(names(&all), [("CPU".into(), 2), ("Demo".into(), 1)]);
        assert_eq!(names(&demo), [("Demo".into(), 1)]);
        assert_eq!(all.generation, Some(1));
        assert_eq!(all.counter("CPU", "CPU User").and_then(|c| c.value), None);
    }

    #[test]
    fn unknown_entity_is_an_error_naming_it_escaped() {
        let mut c = VmCounters::default();
        c.session_started();
        c.schema("vm", schema(1), secs(0));

        let answer = answer("vm", &c, Some("No\nSuch"));

        match answer {
            Response::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::UnknownEntity);
                assert!(message.contains(r#""No\\nSuch""#), "{message}");
                assert!(!message.contains('\n'), "{message}");
            }
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn a_new_session_keeps_the_last_values_shown_until_its_schema_arrives() {
        let mut c = VmCounters::default();
        c.session_started();
        c.schema("vm", schema(1), secs(0));
        c.values("vm", &values(1, &[(1, 10.0)]), 1000, secs(1));

        c.session_started();
        c.values("vm", &values(1, &[(1, 30.0)]), 3000, secs(3));
        let between = view("vm", &c, None);
        c.schema("vm", schema(2), secs(4));
        c.values("vm", &values(2, &[(1, 40.0)]), 5000, secs(5));
        let after = view("vm", &c, None);

        assert_eq!(between.generation, None);
        assert_eq!(
            between.counter("CPU", "CPU Total").and_then(|c| c.value),
            Some(10.0),
            "values before the new session's schema are dropped"
        );
        assert_eq!(between.refused_frames, 1);
        assert_eq!(after.generation, Some(2));
        assert_eq!(
            after.counter("CPU", "CPU Total").and_then(|c| c.value),
            Some(40.0)
        );
    }
}
