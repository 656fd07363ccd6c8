//! MON's web page at `/mon/`: the monitored VMs with their status and resets at a glance, views
//! of live line charts of their counters (made, edited and deleted on the page, kept in
//! `<state_dir>/views/`, [`views`]), and the alarm view's raised alarms.
//!
//! The page is static HTML, CSS and JavaScript embedded in the binary, with uPlot (npm
//! `uplot`, installed from `host-agent/web/package-lock.json` and embedded by `build.rs`)
//! drawing the charts; it needs no other network access. It asks this service for JSON:
//!
//! ```text
//! GET    /mon/api/overview        the VMs, their status, last history, counters; raised alarms
//! POST   /mon/api/series          {"since_ms":…, "counters":[{domain,entity,counter}…]}: points
//! GET    /mon/api/views           the saved views, and the files that could not be read
//! PUT    /mon/api/views/<name>    saves a view (the body, JSON); last write wins
//! DELETE /mon/api/views/<name>    removes it
//! ```
//!
//! Every name in these answers may come from a guest (entities, counters, units, history
//! texts): the page puts them in the document only as text (`textContent`, attribute values set
//! through the DOM), never as markup.
//!
//! The overview and the series are built by the supervisor, the one owner of the counters
//! ([`answer`], asked over [`super::http::MonCall::Page`]); the views are files, read and
//! written by the handlers themselves.

pub(super) mod routes;
pub mod views;

use appmon_control::{HistoryEntry, Status, VmView};
use serde::{Deserialize, Serialize};

use crate::counters::CounterStore;
use crate::mon::alarms::Side;
use views::CounterRef;

/// The most history entries a VM shows on the page (the newest).
pub const HISTORY_SHOWN: usize = 8;
/// The most points a series answer holds per counter (the newest).
pub const MAX_POINTS: usize = 4000;

/// What the page asks the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    Overview,
    Series(SeriesAsk),
}

/// `POST /mon/api/series`: the points of `counters` that arrived at or after `since_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesAsk {
    pub since_ms: u64,
    pub counters: Vec<CounterRef>,
}

/// The supervisor's answer, sent to the page as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Overview(Overview),
    Series(Vec<SeriesAnswer>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    pub now_ms: u64,
    pub vms: Vec<VmSummary>,
    pub alarms: Vec<RaisedAlarm>,
}

/// A VM at a glance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmSummary {
    pub name: String,
    pub monitored: bool,
    /// `Green`, `Red`, `Gray`, or `null` when unknown.
    pub status: Option<Status>,
    pub connected: bool,
    pub resets_in_window: usize,
    pub gave_up: bool,
    /// The newest history entries, newest last.
    pub history: Vec<HistoryEntry>,
    pub entities: Vec<EntitySummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntitySummary {
    pub name: String,
    pub counters: Vec<CounterSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CounterSummary {
    pub name: String,
    pub units: String,
    pub value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RaisedAlarm {
    pub domain: String,
    pub entity: String,
    pub counter: String,
    /// `below` or `above` its threshold.
    pub side: &'static str,
}

/// One counter's points; `gone` when no VM has it (any more).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesAnswer {
    #[serde(flatten)]
    pub counter: CounterRef,
    pub gone: bool,
    pub units: String,
    /// Arrival times, Unix milliseconds, oldest first.
    pub t: Vec<u64>,
    pub v: Vec<f64>,
}

/// The answer to `ask` at `now_ms` over `vms` (each VM's control view, with its history, and
/// its counters) and the raised alarms.
pub fn answer<'a>(
    ask: &Ask,
    now_ms: u64,
    vms: impl IntoIterator<Item = (VmView, &'a CounterStore)>,
    alarms: impl IntoIterator<Item = (&'a str, &'a str, &'a str, Side)>,
) -> Answer {
    match ask {
        Ask::Overview => {
            let mut vms: Vec<VmSummary> = vms
                .into_iter()
                .map(|(view, store)| summary(view, store))
                .collect();
            vms.sort_by(|a, b| a.name.cmp(&b.name));
            let alarms = alarms
                .into_iter()
                .map(|(domain, entity, counter, side)| RaisedAlarm {
                    domain: domain.to_owned(),
                    entity: entity.to_owned(),
                    counter: counter.to_owned(),
                    side: match side {
                        Side::Below => "below",
                        Side::Above => "above",
                    },
                })
                .collect();
            Answer::Overview(Overview {
                now_ms,
                vms,
                alarms,
            })
        }
        Ask::Series(ask) => {
            let vms: Vec<(VmView, &CounterStore)> = vms.into_iter().collect();
            Answer::Series(
                ask.counters
                    .iter()
                    .map(|c| series(c, ask.since_ms, &vms))
                    .collect(),
            )
        }
    }
}

fn summary(view: VmView, store: &CounterStore) -> VmSummary {
    let mut history = view.history;
    let skip = history.len().saturating_sub(HISTORY_SHOWN);
    history.drain(..skip);
    let entities = store
        .entities()
        .into_iter()
        .map(|entity| EntitySummary {
            name: entity.to_owned(),
            counters: store
                .latest(Some(entity))
                .into_iter()
                .map(|l| CounterSummary {
                    name: l.counter.name.as_str().to_owned(),
                    units: l.counter.units.as_str().to_owned(),
                    value: l.value.map(|(_, v)| v),
                })
                .collect(),
        })
        .collect();
    VmSummary {
        name: view.name,
        monitored: view.monitored,
        status: view.status,
        connected: view.connected,
        resets_in_window: view.resets_in_window,
        gave_up: view.gave_up,
        history,
        entities,
    }
}

fn series(c: &CounterRef, since_ms: u64, vms: &[(VmView, &CounterStore)]) -> SeriesAnswer {
    let found = vms
        .iter()
        .find(|(v, _)| v.name == c.domain)
        .and_then(|(_, store)| store.series(&c.entity, &c.counter));
    let mut out = SeriesAnswer {
        counter: c.clone(),
        gone: found.is_none(),
        units: String::new(),
        t: Vec::new(),
        v: Vec::new(),
    };
    if let Some(s) = found {
        out.units = s.desc.units.as_str().to_owned();
        let points: Vec<(u64, f64)> = s.points().filter(|(t, _)| *t >= since_ms).collect();
        let skip = points.len().saturating_sub(MAX_POINTS);
        for (t, v) in &points[skip..] {
            out.t.push(*t);
            out.v.push(*v);
        }
    }
    out
}

/// The page's files: (path under `/mon/`, content type, bytes).
pub const ASSETS: [(&str, &str, &[u8]); 5] = [
    ("", "text/html; charset=utf-8", include_bytes!("index.html")),
    (
        "page.js",
        "text/javascript; charset=utf-8",
        include_bytes!("page.js"),
    ),
    (
        "page.css",
        "text/css; charset=utf-8",
        include_bytes!("page.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!(concat!(env!("APPMON_UPLOT_DIR"), "/dist/uPlot.iife.min.js")),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!(concat!(env!("APPMON_UPLOT_DIR"), "/dist/uPlot.min.css")),
    ),
];

/// The asset at `path` (under `/mon/`).
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, ct, bytes)| (*ct, *bytes))
}
