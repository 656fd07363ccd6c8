//! One VM's counters as `appmonctl counters` sees them: the schema the guest sent, grouped by
//! entity, each counter with its latest value.
//!
//! Every string here except `domain` comes from the guest: a reader that shows them escapes
//! them (`appmonctl` does, with `appmon_wire::escape`).

use serde::{Deserialize, Serialize};

/// A VM's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountersView {
    /// The domain's name in libvirt.
    pub domain: String,
    /// The schema generation of the current session; `None` while the current session has sent
    /// no complete schema yet (the counters shown are then the last session's, if any).
    pub generation: Option<u32>,
    /// Counter frames the host agent refused from this VM since it started watching it (an id
    /// the schema never named, a schema over the bounds, ...), each logged.
    pub refused_frames: u64,
    /// In schema order; only the asked-for entity when one was named.
    pub entities: Vec<EntityView>,
}

/// An entity (a group of counters: `CPU`, `Memory`, `Volume vda`, or a custom one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityView {
    pub name: String,
    pub counters: Vec<CounterView>,
}

/// One counter and its latest value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterView {
    pub name: String,
    pub description: String,
    pub units: String,
    /// The counter's type as the guest configured it (ccad.conf `type`); empty if none.
    pub kind: String,
    pub pace_ms: u32,
    pub range_lower: Option<f64>,
    pub range_upper: Option<f64>,
    /// The latest value; `None` before the first one arrived.
    pub value: Option<f64>,
    /// When the host received that value, Unix milliseconds.
    pub unix_ms: Option<u64>,
}

impl CountersView {
    /// The counter `name` of entity `entity`, if the view has it.
    pub fn counter(&self, entity: &str, name: &str) -> Option<&CounterView> {
        self.entities
            .iter()
            .filter(|e| e.name == entity)
            .flat_map(|e| &e.counters)
            .find(|c| c.name == name)
    }
}
