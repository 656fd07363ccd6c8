use appmon_wire::text::Text;

use super::*;

fn counter(id: u32, name: &str, pace_ms: u32) -> CounterDesc {
    CounterDesc {
        id,
        name: Text::new(name).expect("short"),
        description: Text::default(),
        units: Text::new("#").expect("short"),
        kind: Text::default(),
        range_lower: None,
        range_upper: None,
        pace_ms,
    }
}

fn entity(name: &str, counters: Vec<CounterDesc>) -> EntityDesc {
    EntityDesc {
        name: Text::new(name).expect("short"),
        counters,
    }
}

fn whole(generation: u32, entities: Vec<EntityDesc>) -> CounterSchema {
    CounterSchema {
        generation,
        entities,
        complete: true,
    }
}

fn plants(generation: u32) -> CounterSchema {
    whole(
        generation,
        vec![
            entity("CPU", vec![counter(0, "CPU Total", 1000)]),
            entity("Plants", vec![counter(1, "tree", 2000)]),
            entity(
                "Delicious Fruits!!!",
                vec![counter(2, "pears", 2000), counter(3, "apples", 2000)],
            ),
        ],
    )
}

fn values(generation: u32, values: &[(u32, f64)]) -> CounterValues {
    CounterValues {
        generation,
        unix_ms: 0,
        values: values.to_vec(),
    }
}

fn latest(store: &CounterStore, entity: Option<&str>) -> Vec<(String, String, Option<f64>)> {
    store
        .latest(entity)
        .into_iter()
        .map(|l| {
            (
                l.entity.to_owned(),
                l.counter.name.to_string(),
                l.value.map(|(_, v)| v),
            )
        })
        .collect()
}

fn row(e: &str, c: &str, v: Option<f64>) -> (String, String, Option<f64>) {
    (e.to_owned(), c.to_owned(), v)
}

#[test]
fn values_are_filed_under_the_counters_the_schema_names() {
    let mut store = CounterStore::new();
    store.schema_part(plants(7)).expect("schema");
    assert_eq!(store.generation(), Some(7));
    assert_eq!(
        store.values(&values(7, &[(0, 12.5), (2, 3.0)]), 1000),
        Ok(2)
    );
    assert_eq!(
        latest(&store, None),
        [
            row("CPU", "CPU Total", Some(12.5)),
            row("Plants", "tree", None),
            row("Delicious Fruits!!!", "pears", Some(3.0)),
            row("Delicious Fruits!!!", "apples", None),
        ]
    );
    assert_eq!(
        latest(&store, Some("Delicious Fruits!!!")),
        [
            row("Delicious Fruits!!!", "pears", Some(3.0)),
            row("Delicious Fruits!!!", "apples", None)
        ]
    );
    let cpu = store.series("CPU", "CPU Total").expect("series");
    assert_eq!(
        cpu.latest(),
        Some((1000, 12.5)),
        "stamped with the host's time"
    );
}

#[test]
fn a_schema_in_parts_counts_from_its_last_part_and_merges_a_split_entity() {
    let mut store = CounterStore::new();
    let mut first = whole(3, vec![entity("Big", vec![counter(0, "a", 1000)])]);
    first.complete = false;
    let second = whole(3, vec![entity("Big", vec![counter(1, "b", 1000)])]);
    store.schema_part(first).expect("part 1");
    assert_eq!(store.generation(), None, "not complete yet");
    assert!(matches!(
        store.values(&values(3, &[(0, 1.0)]), 0),
        Err(CounterError::NoSchema { .. })
    ));
    store.schema_part(second).expect("part 2");
    assert_eq!(store.entities(), ["Big"]);
    assert_eq!(store.values(&values(3, &[(0, 1.0), (1, 2.0)]), 0), Ok(2));
}

#[test]
fn a_value_for_an_id_the_schema_never_named_refuses_the_whole_frame() {
    let mut store = CounterStore::new();
    store.schema_part(plants(1)).expect("schema");
    assert_eq!(
        store.values(&values(1, &[(0, 5.0), (99, 1.0)]), 0),
        Err(CounterError::UnknownId {
            generation: 1,
            id: 99
        })
    );
    assert_eq!(
        store.series("CPU", "CPU Total").and_then(Series::latest),
        None,
        "nothing of it stored"
    );
    assert_eq!(store.refused_frames(), 1);
    // Monitoring goes on: the next good frame is taken.
    assert_eq!(store.values(&values(1, &[(0, 6.0)]), 0), Ok(1));
}

#[test]
fn a_value_that_is_not_a_number_refuses_the_frame() {
    let mut store = CounterStore::new();
    store.schema_part(plants(1)).expect("schema");
    for bad in [f64::NAN, f64::INFINITY] {
        assert_eq!(
            store.values(&values(1, &[(0, 1.0), (1, bad)]), 0),
            Err(CounterError::NotANumber { id: 1 })
        );
    }
}

#[test]
fn values_of_another_generation_or_before_the_sessions_schema_are_refused() {
    let mut store = CounterStore::new();
    store.schema_part(plants(1)).expect("schema");
    assert_eq!(
        store.values(&values(2, &[(0, 1.0)]), 0),
        Err(CounterError::StaleGeneration { got: 2, have: 1 })
    );
    store.session_started();
    assert_eq!(
        store.values(&values(1, &[(0, 1.0)]), 0),
        Err(CounterError::NoSchema { generation: 1 })
    );
    // Between sessions the last values are still shown.
    assert_eq!(latest(&store, Some("CPU")), [row("CPU", "CPU Total", None)]);
    store.schema_part(plants(1)).expect("the session's schema");
    assert_eq!(store.values(&values(1, &[(0, 1.0)]), 0), Ok(1));
}

#[test]
fn an_absurd_schema_is_refused_whole_and_the_last_good_one_stays() {
    let mut store = CounterStore::new();
    store.schema_part(plants(1)).expect("schema");
    let many: Vec<CounterDesc> = (0..=MAX_COUNTERS as u32)
        .map(|i| counter(i, &format!("c{i}"), 1000))
        .collect();
    assert_eq!(
        store.schema_part(whole(2, vec![entity("Huge", many)])),
        Err(CounterError::TooManyCounters { generation: 2 })
    );
    assert_eq!(store.generation(), Some(1));
    assert_eq!(store.values(&values(1, &[(0, 1.0)]), 0), Ok(1));
    // Further parts of the refused generation are refused without a look.
    assert_eq!(
        store.schema_part(whole(2, vec![])),
        Err(CounterError::RefusedGeneration { generation: 2 })
    );
    let entities: Vec<EntityDesc> = (0..=MAX_ENTITIES)
        .map(|i| entity(&format!("e{i}"), vec![]))
        .collect();
    assert_eq!(
        store.schema_part(whole(3, entities)),
        Err(CounterError::TooManyEntities { generation: 3 })
    );
    let mut part = whole(4, vec![]);
    part.complete = false;
    for _ in 0..MAX_PARTS {
        store.schema_part(part.clone()).expect("a part");
    }
    assert_eq!(
        store.schema_part(part),
        Err(CounterError::TooManyParts { generation: 4 })
    );
    assert_eq!(store.generation(), Some(1));
}

#[test]
fn duplicate_ids_or_names_in_a_schema_refuse_it() {
    let mut store = CounterStore::new();
    let dup_id = whole(
        1,
        vec![entity(
            "E",
            vec![counter(0, "a", 1000), counter(0, "b", 1000)],
        )],
    );
    assert_eq!(
        store.schema_part(dup_id),
        Err(CounterError::DuplicateId {
            generation: 1,
            id: 0
        })
    );
    let dup_name = whole(
        2,
        vec![
            entity("E", vec![counter(0, "a", 1000)]),
            entity("F", vec![]),
            entity("E", vec![counter(1, "a", 1000)]),
        ],
    );
    assert!(matches!(
        store.schema_part(dup_name),
        Err(CounterError::DuplicateName { .. })
    ));
    assert_eq!(store.generation(), None);
}

#[test]
fn each_counter_keeps_an_hour_at_its_pace() {
    let mut store = CounterStore::new();
    store.schema_part(plants(1)).expect("schema");
    assert_eq!(
        store.series("CPU", "CPU Total").map(Series::capacity),
        Some(3600)
    );
    assert_eq!(
        store.series("Plants", "tree").map(Series::capacity),
        Some(1800)
    );
    for i in 0..5000u32 {
        store
            .values(&values(1, &[(0, f64::from(i))]), u64::from(i) * 1000)
            .expect("values");
    }
    let cpu = store.series("CPU", "CPU Total").expect("series");
    let points: Vec<(u64, f64)> = cpu.points().collect();
    assert_eq!(points.len(), 3600);
    assert_eq!(
        points.first(),
        Some(&(1_400_000, 1400.0)),
        "the oldest went first"
    );
    assert_eq!(points.last(), Some(&(4_999_000, 4999.0)));
}

#[test]
fn a_new_generation_keeps_the_history_of_the_counters_it_still_names() {
    let mut store = CounterStore::new();
    store.schema_part(plants(1)).expect("schema");
    store
        .values(&values(1, &[(0, 1.0), (1, 2.0)]), 10)
        .expect("values");
    // Generation 2 renumbers the ids, drops `tree` and adds an interface.
    let next = whole(
        2,
        vec![
            entity("Terminal eth1", vec![counter(0, "Recvd bytes", 1000)]),
            entity("CPU", vec![counter(1, "CPU Total", 1000)]),
        ],
    );
    store.schema_part(next).expect("new generation");
    assert_eq!(
        store.series("CPU", "CPU Total").and_then(Series::latest),
        Some((10, 1.0))
    );
    assert!(store.series("Plants", "tree").is_none(), "forgotten");
    store.values(&values(2, &[(1, 3.0)]), 20).expect("values");
    assert_eq!(
        store.series("CPU", "CPU Total").map(|s| s.points().count()),
        Some(2)
    );
}

#[test]
fn a_vm_keeps_at_most_its_budget_of_points_however_many_counters_and_values() {
    let mut store = CounterStore::new();
    // The most counters a schema may name, at the fastest pace: far more than the budget.
    let counters: Vec<CounterDesc> = (0..MAX_COUNTERS as u32)
        .map(|i| counter(i, &format!("c{i}"), 100))
        .collect();
    store
        .schema_part(whole(1, vec![entity("E", counters)]))
        .expect("schema");
    let share = POINTS_BUDGET / MAX_COUNTERS;
    assert_eq!(store.series("E", "c0").map(Series::capacity), Some(share));
    let all: Vec<(u32, f64)> = (0..MAX_COUNTERS as u32).map(|i| (i, 1.0)).collect();
    for t in 0..(share as u64 + 100) {
        store.values(&values(1, &all), t).expect("values");
    }
    assert_eq!(store.stored_points(), POINTS_BUDGET);
    assert!(
        store.allocated_points() <= POINTS_BUDGET,
        "{}",
        store.allocated_points()
    );
}
