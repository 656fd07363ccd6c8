//! Counters from a guest through the real host agent: a scripted guest sends a schema and
//! values, `appmonctl counters` shows them; frames the store refuses (an id the schema never
//! named, a schema of absurd size) are dropped while the VM's monitoring goes on.

mod common;

use appmon_control::{CountersView, Status};
use appmon_wire::{CounterDesc, CounterSchema, CounterValues, EntityDesc, Frame, GuestMsg, Text};
use common::sim::GuestSim;
use common::*;

fn counter(id: u32, name: &str, description: &str) -> CounterDesc {
    CounterDesc {
        id,
        name: Text::truncating(name),
        description: Text::truncating(description),
        units: Text::truncating("#"),
        kind: Text::truncating(""),
        range_lower: None,
        range_upper: None,
        pace_ms: 1000,
    }
}

fn entity(name: &str, counters: Vec<CounterDesc>) -> EntityDesc {
    EntityDesc {
        name: Text::truncating(name),
        counters,
    }
}

/// `CPU Total` (id 1) and a custom `Demo`/`requests` (id 2) whose description tries to forge
/// a line.
fn schema(generation: u32) -> Vec<Frame<GuestMsg>> {
    CounterSchema::parts(
        generation,
        vec![
            entity("CPU", vec![counter(1, "CPU Total", "all CPUs")]),
            entity(
                "Demo",
                vec![counter(2, "requests", "served\nvm OK: forged line")],
            ),
        ],
    )
    .into_iter()
    .map(|p| Frame::event(GuestMsg::CounterSchema(p)))
    .collect()
}

fn values(generation: u32, pairs: &[(u32, f64)]) -> Frame<GuestMsg> {
    Frame::event(GuestMsg::CounterValues(CounterValues {
        generation,
        unix_ms: 0,
        values: pairs.to_vec(),
    }))
}

fn value(view: &CountersView, entity: &str, name: &str) -> Option<f64> {
    view.counter(entity, name).and_then(|c| c.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_counters_are_shown_and_bad_frames_dropped_while_monitoring_goes_on() {
    let lab = Lab::in_process("counters");
    let guest = GuestSim::new(1, Some(ms(200)));
    let (_g, _) = lab.guest_domain("vm", &guest);
    let host = lab.start_host(lab.config()).await;
    let vm = lab.name("vm");
    host.wait_show(&vm, ms(5000), |v| v.is(Status::Green)).await;

    for frame in schema(1) {
        assert!(guest.send(frame));
    }
    assert!(guest.send(values(1, &[(1, 12.5), (2, 3.0)])));
    let shown = host
        .wait_counters(&vm, ms(3000), |c| value(c, "Demo", "requests") == Some(3.0))
        .await;
    assert_eq!(value(&shown, "CPU", "CPU Total"), Some(12.5), "{shown:?}");
    assert_eq!(shown.generation, Some(1));

    // An id the schema never named: the whole frame is dropped and counted.
    assert!(guest.send(values(1, &[(1, 99.0), (77, 1.0)])));
    let refused = host
        .wait_counters(&vm, ms(3000), |c| c.refused_frames == 1)
        .await;
    assert_eq!(refused.refused_frames, 1, "{refused:?}");
    assert_eq!(value(&refused, "CPU", "CPU Total"), Some(12.5));

    // A schema of absurd size, in frames each within the limit: refused whole, the last good
    // one stays in use.
    let huge: Vec<CounterDesc> = (0..3000)
        .map(|i| counter(100 + i, &format!("c{i}"), "x"))
        .collect();
    for part in CounterSchema::parts(2, vec![entity("Huge", huge)]) {
        assert!(guest.send(Frame::event(GuestMsg::CounterSchema(part))));
    }
    assert!(guest.send(values(1, &[(1, 20.0), (2, 4.0)])));
    let after = host
        .wait_counters(&vm, ms(3000), |c| value(c, "Demo", "requests") == Some(4.0))
        .await;
    assert_eq!(after.generation, Some(1), "{after:?}");
    assert!(after.refused_frames >= 2, "{after:?}");
    assert!(after.entities.iter().all(|e| e.name != "Huge"));

    // Text: one entity, the guest's words escaped; an unknown entity is exit code 3.
    let (code, out, err) = host.ctl(&["counters", &vm, "Demo"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r"served\nvm OK: forged line"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("vm OK")), "{out}");
    assert!(!out.contains("CPU Total"), "{out}");
    let (code, _, err) = host.ctl(&["counters", &vm, "Nope"]).await;
    assert_eq!(code, appmon_host_agent::ctl::EXIT_UNKNOWN_DOMAIN, "{err}");
    assert!(err.contains("Nope") && err.contains("Demo"), "{err}");

    // Monitoring went on all along: same session, Green, no reset.
    let view = host.show(&vm).await;
    assert!(view.is(Status::Green), "{view}");
    assert!(view.connected);
    assert!(view.reset_decisions().is_empty(), "{view}");
    assert_eq!(guest.connections(), 1);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_waits_for_its_schema_and_keeps_the_last_values_shown() {
    let lab = Lab::in_process("counters-session");
    let guest = GuestSim::new(1, Some(ms(200)));
    let (_g, _) = lab.guest_domain("vm", &guest);
    let host = lab.start_host(lab.config()).await;
    let vm = lab.name("vm");
    host.wait_show(&vm, ms(5000), |v| v.is(Status::Green)).await;
    for frame in schema(1) {
        assert!(guest.send(frame));
    }
    assert!(guest.send(values(1, &[(2, 5.0)])));
    host.wait_counters(&vm, ms(3000), |c| value(c, "Demo", "requests") == Some(5.0))
        .await;

    guest.disconnect();
    assert!(
        guest
            .wait(ms(5000), |g| g.connections() == 2 && g.connected())
            .await
    );
    // Values of the old generation before the new session's schema are not taken.
    assert!(guest.send(values(1, &[(2, 6.0)])));
    let between = host
        .wait_counters(&vm, ms(3000), |c| c.refused_frames == 1)
        .await;
    assert_eq!(between.generation, None, "{between:?}");
    assert_eq!(value(&between, "Demo", "requests"), Some(5.0));

    for frame in schema(7) {
        assert!(guest.send(frame));
    }
    assert!(guest.send(values(7, &[(2, 8.0)])));
    let after = host
        .wait_counters(&vm, ms(3000), |c| value(c, "Demo", "requests") == Some(8.0))
        .await;
    assert_eq!(after.generation, Some(7));
    host.stop().await;
}
