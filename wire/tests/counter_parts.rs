//! A counter schema or a values sample larger than one frame goes out in parts that each fit
//! a frame and that add up to the whole again.

use appmon_wire::*;

fn counter(id: u32, desc_len: usize) -> CounterDesc {
    CounterDesc {
        id,
        name: Text::new(format!("counter {id}")).expect("short"),
        description: Text::new("d".repeat(desc_len)).expect("within the limit"),
        units: "bytes/s".into(),
        kind: "MAX".into(),
        range_lower: Some(0.0),
        range_upper: None,
        pace_ms: 1000,
    }
}

fn entity(name: &str, ids: std::ops::Range<u32>, desc_len: usize) -> EntityDesc {
    EntityDesc {
        name: Text::new(name).expect("short"),
        counters: ids.map(|id| counter(id, desc_len)).collect(),
    }
}

/// The parts merged back: consecutive entities of the same name are one.
fn merged(parts: &[CounterSchema]) -> Vec<EntityDesc> {
    let mut out: Vec<EntityDesc> = Vec::new();
    for part in parts {
        for e in &part.entities {
            match out.last_mut() {
                Some(last) if last.name == e.name => last.counters.extend(e.counters.clone()),
                _ => out.push(e.clone()),
            }
        }
    }
    out
}

fn assert_each_fits(parts: &[CounterSchema]) {
    for (i, part) in parts.iter().enumerate() {
        let frame = Frame::event(GuestMsg::CounterSchema(part.clone()));
        let bytes = encode_frame(&frame).unwrap_or_else(|e| panic!("part {i} encodes: {e}"));
        assert!(
            bytes.len() <= MAX_FRAME_LEN + 1,
            "part {i}: {} bytes",
            bytes.len()
        );
        assert_eq!(part.complete, i == parts.len() - 1, "part {i}");
        assert!(
            part.entities.iter().all(|e| !e.counters.is_empty()) || parts.len() == 1,
            "part {i} carries an empty entity piece"
        );
    }
}

#[test]
fn a_small_schema_is_one_complete_part() {
    let entities = vec![entity("CPU", 0..8, 40), entity("Memory", 8..27, 40)];
    let parts = CounterSchema::parts(7, entities.clone());
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].generation, 7);
    assert!(parts[0].complete);
    assert_eq!(parts[0].entities, entities);
}

#[test]
fn no_counters_at_all_is_still_one_complete_part() {
    let parts = CounterSchema::parts(1, Vec::new());
    assert_eq!(parts.len(), 1);
    assert!(parts[0].complete);
    assert!(parts[0].entities.is_empty());
}

#[test]
fn a_schema_larger_than_a_frame_is_cut_into_parts_that_each_fit_and_add_up() {
    // 3000 counters with descriptions at the protocol's limit: several frames' worth.
    let entities = vec![
        entity("Big", 0..1500, 512),
        entity("Small", 1500..1502, 10),
        entity("Bigger", 1502..3000, 512),
    ];
    let parts = CounterSchema::parts(3, entities.clone());
    assert!(parts.len() > 3, "{} parts", parts.len());
    assert!(parts.iter().all(|p| p.generation == 3));
    assert_each_fits(&parts);
    assert_eq!(merged(&parts), entities);
    let total: usize = parts.iter().map(CounterSchema::counter_count).sum();
    assert_eq!(total, 3000);
}

#[test]
fn many_small_entities_are_packed_not_sent_one_per_frame() {
    let entities: Vec<EntityDesc> = (0..400)
        .map(|i| entity(&format!("Terminal eth{i}"), i * 4..i * 4 + 4, 30))
        .collect();
    let parts = CounterSchema::parts(1, entities.clone());
    assert!(parts.len() <= 3, "{} parts", parts.len());
    assert_each_fits(&parts);
    assert_eq!(merged(&parts), entities);
}

#[test]
fn values_beyond_one_frame_are_cut_into_frames_that_fit() {
    // The worst case for size: large ids and values that need the float form.
    let values: Vec<(u32, f64)> = (0..10_000u32)
        .map(|i| (u32::MAX - i, 0.1 + f64::from(i)))
        .collect();
    let parts = CounterValues::parts(2, 1_700_000_000_000, &values);
    assert_eq!(parts.len(), 10_000usize.div_ceil(MAX_VALUES_PER_FRAME));
    let mut back = Vec::new();
    for part in &parts {
        assert_eq!((part.generation, part.unix_ms), (2, 1_700_000_000_000));
        let bytes = encode_frame(&Frame::event(GuestMsg::CounterValues(part.clone())))
            .expect("a full values part fits a frame");
        assert!(bytes.len() <= MAX_FRAME_LEN + 1);
        back.extend(part.values.iter().copied());
    }
    assert_eq!(back, values);
    assert!(CounterValues::parts(2, 0, &[]).is_empty());
}
