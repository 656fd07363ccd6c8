//! How much memory one VM's counters take in the host agent: a [`CounterStore`] filled the way a
//! guest fills it, measured as the growth of this process's resident memory (VmRSS and RssAnon
//! from /proc/self/status, before and after). Each case runs in a child process of its own, so
//! memory one case freed does not hide the next one's.
//!
//!     cargo bench -p appmon-host-agent --bench counters_memory
//!
//! Cases: the worst a guest can do within the bounds (the most counters, every text at its
//! limit, the fastest pace, history filled to the budget), and what real guests send (the
//! standard counters of a small guest plus custom ones, at 1 s and 5 s, after an hour).

use appmon_host_agent::counters::{CounterStore, HISTORY, MAX_COUNTERS};
use appmon_wire::{CounterDesc, CounterSchema, CounterValues, EntityDesc, Text};

/// `VmRSS` and `RssAnon` of this process, KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn text<L: appmon_wire::text::Limit>(len: usize, seed: usize) -> Text<L> {
    let s: String = format!("{seed:08}")
        .chars()
        .cycle()
        .take(len.min(L::MAX))
        .collect();
    Text::truncating(s)
}

/// `counters` counters in entities of `per_entity`, texts `text_len` long (cut at their limits).
fn schema(counters: usize, per_entity: usize, text_len: usize, pace_ms: u32) -> Vec<EntityDesc> {
    (0..counters.div_ceil(per_entity))
        .map(|e| EntityDesc {
            name: text(text_len, e),
            counters: (e * per_entity..((e + 1) * per_entity).min(counters))
                .map(|i| CounterDesc {
                    id: i as u32,
                    name: text(text_len, i),
                    description: text(text_len * 4, i),
                    units: text(text_len, i),
                    kind: text(text_len, i),
                    range_lower: Some(0.0),
                    range_upper: Some(100.0),
                    pace_ms,
                })
                .collect(),
        })
        .collect()
}

struct Case {
    name: &'static str,
    counters: usize,
    text_len: usize,
    pace_ms: u32,
}

fn run(case: &Case) {
    let before = rss_kib();
    let mut store = CounterStore::new();
    store.session_started();
    let entities = schema(case.counters, 16, case.text_len, case.pace_ms);
    for part in CounterSchema::parts(1, entities) {
        if let Err(e) = store.schema_part(part) {
            eprintln!("{}: schema refused: {e}", case.name);
            return;
        }
    }
    let after_schema = rss_kib().1.saturating_sub(before.1);
    // Enough samples to fill every history to its capacity (an hour, or the budget's share).
    let samples = (HISTORY.as_millis() as u64).div_ceil(u64::from(case.pace_ms)) as usize;
    let mut at = 1_764_662_400_000u64;
    let values: Vec<(u32, f64)> = (0..case.counters as u32)
        .map(|i| (i, f64::from(i) + 0.5))
        .collect();
    for sample in 0..samples {
        at += u64::from(case.pace_ms);
        for frame in CounterValues::parts(1, at, &values) {
            // A value that changes, as real ones do (an integer half the time).
            let mut frame = frame;
            for v in &mut frame.values {
                v.1 += sample as f64;
            }
            if let Err(e) = store.values(&frame, at) {
                eprintln!("{}: values refused: {e}", case.name);
                return;
            }
        }
    }
    let after = rss_kib();
    let (rss, anon) = (
        after.0.saturating_sub(before.0),
        after.1.saturating_sub(before.1),
    );
    let points = store.stored_points();
    println!(
        "{:<50} {:>5} counters  pace {:>5} ms  {:>8} points  after schema +{:>6} KiB  full: VmRSS +{:>6} KiB, RssAnon +{:>6} KiB = {:>5.1} MiB",
        case.name,
        case.counters,
        case.pace_ms,
        points,
        after_schema,
        rss,
        anon,
        anon as f64 / 1024.0,
    );
    drop(store);
}

fn cases() -> [Case; 4] {
    [
        Case {
            name: "worst case: MAX_COUNTERS, texts at limit, 100 ms",
            counters: MAX_COUNTERS,
            text_len: 512,
            pace_ms: 100,
        },
        Case {
            name: "standard counters + 20 custom, 1 s, 1 h",
            counters: 120,
            text_len: 24,
            pace_ms: 1000,
        },
        Case {
            name: "standard counters + 20 custom, 5 s, 1 h",
            counters: 120,
            text_len: 24,
            pace_ms: 5000,
        },
        Case {
            name: "standard counters + 200 custom, 1 s, 1 h",
            counters: 300,
            text_len: 24,
            pace_ms: 1000,
        },
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args
        .iter()
        .position(|a| a == "--case")
        .and_then(|p| args.get(p + 1))
        .and_then(|n| n.parse::<usize>().ok())
    {
        if let Some(case) = cases().get(i) {
            run(case);
        }
        return;
    }
    let me = match std::env::current_exe() {
        Ok(me) => me,
        Err(e) => {
            eprintln!("counters_memory: cannot find its own executable: {e}");
            std::process::exit(1);
        }
    };
    for i in 0..cases().len() {
        match std::process::Command::new(&me)
            .args(["--case", &i.to_string()])
            .status()
        {
            Ok(s) if s.success() => {}
            other => eprintln!("counters_memory: case {i}: {other:?}"),
        }
    }
}
