//! MON: the counters the host agent keeps, served the way AppLogic's MON appliance serves them
//! (`/monapi`, seeds/003 "Überwachungs-API").
//!
//! - [`query`]: a `/monapi` URL parsed into what it asks for ([`MonQuery`]), or a 400 saying
//!   what was wrong; bounded (URL length, names per list).
//! - [`format`]: an answer as a tree of the seed's elements and its XML, JSON and UDL
//!   renderings; pure.
//! - [`alarms`]: MON's background alarms as a pure machine (thresholds with hysteresis, the
//!   alarm view of rules by domain glob).
//! - [`rules`]: the alarm view's rules: host.toml's and the run-time ones (kept in the state
//!   directory), merged.
//! - [`cache`]: rendered `/monapi` answers kept until the counters change.
//! - [`http`]: the HTTP service (axum), a thin shell: auth, parse, ask the supervisor (the one
//!   owner of the counters) for the tree, render.
//! - [`page`]: the web page at `/mon/`: the VMs at a glance, saved views of live charts
//!   (uPlot), the raised alarms.
//! - this file: [`answer`], the tree a query asks for, from the VMs' counter stores.
//!
//! The names: an `appliance` is a domain (its libvirt name), an `entity` a counter group as the
//! guest names it (`CPU`, `Memory`, `Volume vda`, `Terminal eth0`, a custom one), a `counter`
//! one counter. An appliance or entity nobody has is not an error: the answer is valid and
//! holds what matched, possibly nothing.

pub mod alarms;
pub mod cache;
pub mod format;
pub mod http;
pub mod page;
pub mod query;
pub mod rules;

pub use format::{Element, Value};
pub use query::{Call, Depth, Format, MonQuery, QueryError, Selector};

use crate::counters::CounterStore;

/// The thresholds of the alarm view on (domain, entity, counter), for `desc`.
pub type Thresholds<'a> = &'a dyn Fn(&str, &str, &str) -> Option<alarms::Threshold>;

/// The answer to `query` at `timestamp` (Unix seconds, the root's attribute) over `vms`
/// (domain name, its counter stores: the guest's, then the host's own of the guest, such as
/// the `Application monitors` entity), in the order given.
pub fn answer<'a>(
    query: &MonQuery,
    timestamp: u64,
    vms: impl IntoIterator<Item = (&'a str, Vec<&'a CounterStore>)>,
    thresholds: Thresholds<'_>,
) -> Element {
    let mut root = Element::new("response").attr("timestamp", Value::Number(timestamp as f64));
    for (domain, stores) in vms {
        if !query.apps.matches(domain) {
            continue;
        }
        let mut app = Element::new("appliance").text("name", domain);
        if query.call != Call::Desc(Depth::Appliances) {
            for store in stores {
                app.children
                    .extend(entities(query, domain, store, thresholds));
            }
        }
        root.children.push(app);
    }
    root
}

fn entities(
    query: &MonQuery,
    domain: &str,
    store: &CounterStore,
    thresholds: Thresholds<'_>,
) -> Vec<Element> {
    let mut out: Vec<Element> = Vec::new();
    for entity in store.entities() {
        if !query.ents.matches(entity) {
            continue;
        }
        let mut e = Element::new("entity").text("name", entity);
        if query.call != Call::Desc(Depth::Entities) {
            e.children = store
                .latest(Some(entity))
                .into_iter()
                .filter(|l| query.cnts.matches(l.counter.name.as_str()))
                .map(|l| {
                    let t = thresholds(domain, entity, l.counter.name.as_str());
                    counter(query.call, &l, t)
                })
                .collect();
        }
        out.push(e);
    }
    out
}

fn counter(
    call: Call,
    latest: &crate::counters::Latest<'_>,
    threshold: Option<alarms::Threshold>,
) -> Element {
    let c = latest.counter;
    let e = Element::new("counter").text("name", c.name.as_str());
    let range = |r: Option<f64>| r.map_or(Value::Empty, Value::Number);
    match call {
        Call::Desc(Depth::Descriptions) => e
            .text("description", c.description.as_str())
            .text("units", c.units.as_str())
            // Alarm thresholds are the host's (the alarm view), not the guest's.
            .attr("alarm_below", range(threshold.and_then(|t| t.below())))
            .attr("alarm_above", range(threshold.and_then(|t| t.above())))
            .attr("range_lower", range(c.range_lower))
            .attr("range_upper", range(c.range_upper))
            .attr("pace", Value::Number(f64::from(c.pace_ms))),
        Call::Desc(_) => e,
        Call::Val => e.attr(
            "value",
            latest.value.map_or(Value::Empty, |(_, v)| Value::Number(v)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use appmon_wire::{CounterDesc, CounterSchema, CounterValues, EntityDesc, Text};

    use super::*;

    fn store(counters: &[(&str, &str, f64)]) -> CounterStore {
        let mut entities: Vec<EntityDesc> = Vec::new();
        for (i, (entity, name, _)) in counters.iter().enumerate() {
            let desc = CounterDesc {
                id: i as u32,
                name: Text::truncating(*name),
                description: Text::truncating(format!("{name} of {entity}")),
                units: Text::truncating("#"),
                kind: Text::default(),
                range_lower: Some(0.0),
                range_upper: None,
                pace_ms: 1000,
            };
            match entities.last_mut() {
                Some(e) if e.name.as_str() == *entity => e.counters.push(desc),
                _ => entities.push(EntityDesc {
                    name: Text::truncating(*entity),
                    counters: vec![desc],
                }),
            }
        }
        let mut s = CounterStore::new();
        s.session_started();
        s.schema_part(CounterSchema {
            generation: 1,
            entities,
            complete: true,
        })
        .expect("schema");
        let values: Vec<(u32, f64)> = counters
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u32, c.2))
            .collect();
        s.values(
            &CounterValues {
                generation: 1,
                unix_ms: 0,
                values,
            },
            1,
        )
        .expect("values");
        s
    }

    fn web() -> CounterStore {
        store(&[
            ("Terminal in", "Sent bytes", 23234.0),
            ("Terminal in", "Received bytes", 690432.0),
            ("CPU", "CPU Total", 12.5),
        ])
    }

    fn render(path: &str, stores: &[(&str, &CounterStore)]) -> String {
        let q = query::parse(path, Some("fmt=xml")).expect("valid");
        format::xml(&answer(
            &q,
            1194967464,
            stores.iter().map(|&(d, s)| (d, vec![s])),
            &|_, _, _| None,
        ))
    }

    #[test]
    fn desc_lists_appliances_then_entities_then_counters() {
        let (w, i) = (web(), store(&[("CPU", "CPU Total", 1.0)]));
        let vms = [("main.web", &w), ("main.in", &i)];

        assert_eq!(
            render("/monapi/desc", &vms),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <response timestamp=\"1194967464\">\n   \
             <appliance name=\"main.web\" />\n   \
             <appliance name=\"main.in\" />\n\
             </response>\n"
        );
        let entities = render("/monapi/desc/main.web", &vms);
        assert!(
            entities.contains("<entity name=\"Terminal in\" />"),
            "{entities}"
        );
        assert!(entities.contains("<entity name=\"CPU\" />"), "{entities}");
        assert!(!entities.contains("main.in"), "{entities}");
        let names = render("/monapi/desc/main.web/Terminal%20in", &vms);
        assert!(names.contains("<counter name=\"Sent bytes\" />"), "{names}");
        assert!(!names.contains("CPU"), "{names}");
    }

    #[test]
    fn desc_of_counters_has_every_attribute_of_the_seed() {
        let w = web();

        let text = render(
            "/monapi/desc/main.web/Terminal%20in/Sent%20bytes",
            &[("main.web", &w)],
        );

        assert!(
            text.contains(
                "<counter name=\"Sent bytes\" description=\"Sent bytes of Terminal in\" units=\"#\" \
                 alarm_below=\"\" alarm_above=\"\" range_lower=\"0\" range_upper=\"\" pace=\"1000\" />"
            ),
            "{text}"
        );
        assert!(!text.contains("Received bytes"), "{text}");
    }

    #[test]
    fn val_gives_values_and_omitted_parts_are_wildcards() {
        let (w, i) = (web(), store(&[("CPU", "CPU Total", 1.0)]));
        let vms = [("main.web", &w), ("main.in", &i)];

        let text = render("/monapi/val/main.web", &vms);

        assert!(
            text.contains("<counter name=\"Sent bytes\" value=\"23234\" />"),
            "{text}"
        );
        assert!(
            text.contains("<counter name=\"CPU Total\" value=\"12.5\" />"),
            "{text}"
        );
        assert!(!text.contains("main.in"), "{text}");
        let cpu = render("/monapi/val/*/CPU/CPU%20Total", &vms);
        assert_eq!(cpu.matches("<counter ").count(), 2, "{cpu}");
    }

    #[test]
    fn unknown_appliance_or_entity_is_an_empty_valid_answer() {
        let w = web();

        let none = render("/monapi/val/nobody", &[("main.web", &w)]);
        let no_entity = render("/monapi/val/main.web/Nothing", &[("main.web", &w)]);

        assert_eq!(
            none,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<response timestamp=\"1194967464\" />\n"
        );
        assert!(
            no_entity.contains("<appliance name=\"main.web\" />"),
            "{no_entity}"
        );
    }
}
