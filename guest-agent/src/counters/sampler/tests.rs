use std::path::Path;

use super::*;
use crate::counters::ccad;
use crate::counters::standard::{CPU_IDLE, CPU_TOTAL, NET_RX_BYTES};

const PLANTS: &str = include_str!("../../../tests/seed/plants.ccad.conf");
const APACHE: &str = include_str!("../../../tests/seed/apache.ccad.conf");

fn config(text: &str) -> CcadConfig {
    ccad::parse(text, Path::new("/etc/ccad.conf"))
        .expect("valid")
        .config
}

fn reading(name: &str, counters: &[(&'static Def, Option<f64>)]) -> EntityReading {
    EntityReading {
        name: name.into(),
        counters: counters.to_vec(),
    }
}

fn cpu(total: Option<f64>) -> Vec<EntityReading> {
    vec![reading(
        "CPU",
        &[(&CPU_IDLE, total.map(|t| 100.0 - t)), (&CPU_TOTAL, total)],
    )]
}

/// The schema's parts, or a failure naming what came instead.
fn schema(msgs: &[GuestMsg]) -> Vec<CounterSchema> {
    msgs.iter()
        .filter_map(|m| match m {
            GuestMsg::CounterSchema(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn values(msgs: &[GuestMsg]) -> Vec<CounterValues> {
    msgs.iter()
        .filter_map(|m| match m {
            GuestMsg::CounterValues(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

/// (entity, counter, id) of a schema.
fn names(parts: &[CounterSchema]) -> Vec<(String, String, u32)> {
    parts
        .iter()
        .flat_map(|p| &p.entities)
        .flat_map(|e| {
            e.counters
                .iter()
                .map(|c| (e.name.to_string(), c.name.to_string(), c.id))
        })
        .collect()
}

struct Rig {
    sampler: Sampler,
    start: Instant,
}

impl Rig {
    fn new(ccad: &str) -> Rig {
        Rig {
            sampler: Sampler::new(100, 1000, &config(ccad)),
            start: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }
}

#[test]
fn a_session_that_takes_counters_gets_the_schema_naming_each_counter_once() {
    let mut rig = Rig::new(PLANTS);
    assert!(
        rig.sampler.standard(&cpu(None), 1).is_empty(),
        "no session, nothing sent"
    );
    let msgs = rig.sampler.session(true);
    let parts = schema(&msgs);
    assert_eq!(parts.len(), 1);
    assert!(parts[0].complete);
    assert_eq!(parts[0].generation, rig.sampler.generation());
    let got = names(&parts);
    let want = [
        ("CPU", "CPU Idle", 0),
        ("CPU", "CPU Total", 1),
        ("Plants", "tree", 2),
        ("Delicious Fruits!!!", "pears", 3),
        ("Delicious Fruits!!!", "apples", 4),
        ("Vegetables", "potato", 5),
        ("Vegetables", "tomato", 6),
    ]
    .map(|(e, c, i)| (e.to_owned(), c.to_owned(), i));
    assert_eq!(got, want);
    let tree = &parts[0].entities[1].counters[0];
    assert_eq!((tree.units.as_str(), tree.pace_ms), ("#", 2000));
    assert_eq!(parts[0].entities[0].counters[1].units.as_str(), "%");
}

#[test]
fn a_session_without_counters_gets_nothing_at_all() {
    let mut rig = Rig::new(APACHE);
    assert!(rig.sampler.session(false).is_empty());
    assert!(rig.sampler.standard(&cpu(Some(5.0)), 1).is_empty());
    assert!(rig.sampler.custom_set(&[(0, 1.0)], rig.at(0), 1).is_empty());
}

#[test]
fn standard_values_go_out_by_id_and_a_rate_without_value_is_left_out() {
    let mut rig = Rig::new("");
    rig.sampler.standard(&cpu(None), 1);
    rig.sampler.session(true);
    let first = rig.sampler.standard(&cpu(None), 2);
    // Listed in the schema, but no value yet: an empty values frame is not sent at all.
    assert!(values(&first).is_empty(), "{first:?}");
    let msgs = rig.sampler.standard(&cpu(Some(42.0)), 1_700_000_000_000);
    assert!(schema(&msgs).is_empty(), "same shape, no new schema");
    let v = values(&msgs);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].values, [(0, 58.0), (1, 42.0)]);
    assert_eq!(
        (v[0].generation, v[0].unix_ms),
        (rig.sampler.generation(), 1_700_000_000_000)
    );
}

#[test]
fn a_new_interface_is_a_new_generation_sent_before_its_values() {
    let mut rig = Rig::new("");
    rig.sampler.standard(&cpu(Some(1.0)), 1);
    rig.sampler.session(true);
    let before = rig.sampler.generation();
    let mut readings = cpu(Some(2.0));
    readings.push(reading("Terminal eth1", &[(&NET_RX_BYTES, Some(10.0))]));
    let msgs = rig.sampler.standard(&readings, 2);
    assert!(
        matches!(msgs.first(), Some(GuestMsg::CounterSchema(_))),
        "{msgs:?}"
    );
    assert_eq!(rig.sampler.generation(), before.wrapping_add(1));
    assert_eq!(
        names(&schema(&msgs))
            .last()
            .map(|(e, c, _)| (e.as_str(), c.as_str())),
        Some(("Terminal eth1", "Recvd bytes"))
    );
    assert_eq!(values(&msgs)[0].values, [(0, 98.0), (1, 2.0), (2, 10.0)]);
    assert_eq!(values(&msgs)[0].generation, rig.sampler.generation());
}

#[test]
fn a_custom_set_goes_out_when_it_ends_with_ids_after_the_standard_ones() {
    let mut rig = Rig::new(APACHE);
    rig.sampler.standard(&cpu(Some(1.0)), 1);
    rig.sampler.session(true);
    let msgs = rig
        .sampler
        .custom_set(&[(0, 31.0), (3, 34.0)], rig.at(0), 5);
    let v = values(&msgs);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].values, [(2, 31.0), (5, 34.0)]);
    assert_eq!(v[0].unix_ms, 5);
}

#[test]
fn sets_faster_than_the_pace_are_merged_and_go_out_at_the_pace() {
    let mut rig = Rig::new(APACHE);
    rig.sampler.session(true);
    assert_eq!(
        values(&rig.sampler.custom_set(&[(0, 1.0)], rig.at(0), 0)).len(),
        1
    );
    // Three more sets within the block's 1 s pace: held, merged, the latest values kept.
    assert!(rig
        .sampler
        .custom_set(&[(0, 2.0), (1, 7.0)], rig.at(100), 100)
        .is_empty());
    assert!(rig
        .sampler
        .custom_set(&[(0, 3.0)], rig.at(200), 200)
        .is_empty());
    assert_eq!(rig.sampler.next_deadline(), Some(rig.at(1000)));
    assert!(rig.sampler.tick(rig.at(999)).is_empty());
    let v = values(&rig.sampler.tick(rig.at(1000)));
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].values, [(0, 3.0), (1, 7.0)]);
    assert_eq!(v[0].unix_ms, 200, "stamped with the last set's end");
    assert_eq!(rig.sampler.next_deadline(), None);
    // A set that ends a pace after the last frame goes out at once again.
    assert_eq!(
        values(&rig.sampler.custom_set(&[(2, 4.0)], rig.at(2000), 2000)).len(),
        1
    );
}

#[test]
fn blocks_keep_their_own_paces() {
    let mut rig = Rig::new(&format!("{APACHE}\n{PLANTS}"));
    rig.sampler.session(true);
    // Apache's counters are 0..4 (pace 1 s), Plants' 4..9 (pace 2 s).
    rig.sampler.custom_set(&[(0, 1.0), (4, 1.0)], rig.at(0), 0);
    assert!(rig
        .sampler
        .custom_set(&[(0, 2.0), (4, 2.0)], rig.at(500), 500)
        .is_empty());
    let at_1s = values(&rig.sampler.tick(rig.at(1000)));
    assert_eq!(at_1s.len(), 1);
    assert_eq!(at_1s[0].values, [(0, 2.0)]);
    assert_eq!(rig.sampler.next_deadline(), Some(rig.at(2000)));
    let at_2s = values(&rig.sampler.tick(rig.at(2000)));
    assert_eq!(at_2s[0].values, [(4, 2.0)]);
}

#[test]
fn a_reload_that_changes_the_counters_is_a_new_generation_and_one_that_does_not_is_silent() {
    let mut rig = Rig::new(APACHE);
    rig.sampler.standard(&cpu(None), 1);
    rig.sampler.session(true);
    let g = rig.sampler.generation();
    assert!(rig.sampler.reconfigure(1000, &config(APACHE)).is_empty());
    assert_eq!(rig.sampler.generation(), g);
    let msgs = rig.sampler.reconfigure(1000, &config(PLANTS));
    assert_eq!(rig.sampler.generation(), g + 1);
    assert_eq!(schema(&msgs).len(), 1);
    assert_eq!(rig.sampler.counter_count(), 2 + 5);
    // The standard pace is in the schema too.
    assert_eq!(
        schema(&rig.sampler.reconfigure(5000, &config(PLANTS))).len(),
        1
    );
    assert_eq!(rig.sampler.generation(), g + 2);
}

#[test]
fn a_reload_while_no_session_takes_counters_sends_the_new_schema_with_the_next_session() {
    let mut rig = Rig::new(APACHE);
    assert!(rig.sampler.reconfigure(1000, &config(PLANTS)).is_empty());
    let parts = schema(&rig.sampler.session(true));
    assert_eq!(parts[0].generation, rig.sampler.generation());
    assert_eq!(names(&parts).len(), 5);
}

#[test]
fn a_schema_too_large_for_a_frame_goes_out_in_parts() {
    let mut text = String::from("counters Big {\n");
    for i in 0..ccad::MAX_COUNTERS {
        text.push_str(&format!("counter c{i}: desc = \"{}\"\n", "d".repeat(400)));
    }
    text.push('}');
    let mut rig = Rig::new(&text);
    let parts = schema(&rig.sampler.session(true));
    assert!(parts.len() > 1);
    assert!(parts
        .iter()
        .all(|p| p.generation == rig.sampler.generation()));
    assert!(parts.last().is_some_and(|p| p.complete));
    assert_eq!(names(&parts).len(), ccad::MAX_COUNTERS);
}
