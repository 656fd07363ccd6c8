//! One VM's counters as its guest sent them: the schema and a bounded history per counter, for
//! MON's charts and `appmonctl counters`. Pure: frames and the host's clock in, errors out; the
//! caller logs a refused frame and goes on.
//!
//! # What it keeps
//!
//! The schema of the last complete generation (its parts gathered as they come, see
//! [`appmon_wire::CounterSchema`]) and, per counter, its description and its values with the
//! host's time of arrival (a guest's clock is its own; charts of several VMs share the
//! host's). History is kept per `(entity, counter name)`, so a new generation (a reload, an
//! interface that appeared) keeps the history of every counter it still names; a counter it no
//! longer names is forgotten.
//!
//! # Bounds (per VM)
//!
//! - A schema names at most [`MAX_COUNTERS`] counters in at most [`MAX_ENTITIES`] entities and
//!   [`MAX_PARTS`] parts; a larger one is refused whole (the last good schema stays).
//! - Each counter keeps an hour at its pace ([`HISTORY`]); all of a VM's counters together keep
//!   at most [`POINTS_BUDGET`] points of 16 bytes: 16 MiB, enough for an hour of 291 counters at
//!   a 1 s pace or 1456 at 5 s. More counters than that share the budget evenly (each keeps a
//!   shorter window). Points are allocated as they arrive, never ahead.
//! - A values frame is taken whole or not at all: one id the schema never named, or a value that
//!   is not a number, refuses the frame.
//!
//! # Sessions
//!
//! [`CounterStore::session_started`] on every new session: values wait for that session's
//! schema, so values a guest sent before its schema (or an agent that restarted and numbers
//! anew) are never filed under the wrong counter.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use appmon_wire::{CounterDesc, CounterSchema, CounterValues, EntityDesc};

/// The most counters one VM's schema may name.
pub const MAX_COUNTERS: usize = 2048;
/// The most entities one VM's schema may have.
pub const MAX_ENTITIES: usize = 512;
/// The most parts one schema generation may come in.
pub const MAX_PARTS: usize = 64;
/// How much history each counter keeps, at its pace.
pub const HISTORY: Duration = Duration::from_secs(3600);
/// The most points one VM keeps, all counters together (16 bytes each: 16 MiB).
pub const POINTS_BUDGET: usize = 1 << 20;
/// Paces below this are taken as this for sizing a history.
const MIN_PACE_MS: u32 = 100;

/// A frame the store refused; the store is as it was before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    #[error("counter schema generation {generation} names more than {MAX_COUNTERS} counters")]
    TooManyCounters { generation: u32 },
    #[error("counter schema generation {generation} has more than {MAX_ENTITIES} entities")]
    TooManyEntities { generation: u32 },
    #[error("counter schema generation {generation} comes in more than {MAX_PARTS} parts")]
    TooManyParts { generation: u32 },
    #[error("counter schema generation {generation} names counter id {id} twice")]
    DuplicateId { generation: u32, id: u32 },
    #[error("counter schema generation {generation} names `{entity}`/`{counter}` twice")]
    DuplicateName {
        generation: u32,
        entity: String,
        counter: String,
    },
    #[error("counter schema generation {generation} was refused already; its later parts are too")]
    RefusedGeneration { generation: u32 },
    #[error("counter values of generation {generation} before any schema of this session")]
    NoSchema { generation: u32 },
    #[error("counter values of generation {got}, but the schema is generation {have}")]
    StaleGeneration { got: u32, have: u32 },
    #[error("counter values name id {id}, which schema generation {generation} does not")]
    UnknownId { generation: u32, id: u32 },
    #[error("counter values give counter id {id} a value that is not a number")]
    NotANumber { id: u32 },
}

/// One counter: what the schema says of it and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub entity: String,
    pub desc: CounterDesc,
    /// (host time of arrival in Unix milliseconds, value), oldest first.
    points: VecDeque<(u64, f64)>,
    capacity: usize,
}

impl Series {
    /// The values, oldest first.
    pub fn points(&self) -> impl Iterator<Item = (u64, f64)> + '_ {
        self.points.iter().copied()
    }

    /// The newest value, if any arrived.
    pub fn latest(&self) -> Option<(u64, f64)> {
        self.points.back().copied()
    }

    /// How many points this counter keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn push(&mut self, at: u64, value: f64) {
        if self.capacity == 0 {
            return;
        }
        while self.points.len() >= self.capacity {
            self.points.pop_front();
        }
        // Grow by doubling, but never past the capacity: the budget is what is allocated.
        if self.points.len() == self.points.capacity() {
            let more = self
                .points
                .len()
                .max(8)
                .min(self.capacity - self.points.len());
            self.points.reserve_exact(more);
        }
        self.points.push_back((at, value));
    }
}

/// A counter's latest value, as `appmonctl counters` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest<'a> {
    pub entity: &'a str,
    pub counter: &'a CounterDesc,
    /// Host time of arrival, Unix milliseconds, and the value; `None` before the first value.
    pub value: Option<(u64, f64)>,
}

#[derive(Debug, Clone, Default)]
struct Assembly {
    generation: u32,
    entities: Vec<EntityDesc>,
    parts: usize,
    counters: usize,
}

/// The complete schema in use.
#[derive(Debug, Clone)]
struct Schema {
    generation: u32,
    /// Entity names in schema order, with the range of their counters in `series`.
    entities: Vec<(String, std::ops::Range<usize>)>,
    /// Counter id -> index in `series`.
    by_id: HashMap<u32, usize>,
}

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct CounterStore {
    /// The last complete schema; shown also between sessions.
    schema: Option<Schema>,
    /// The schema arrived in the current session: values are taken.
    live: bool,
    assembly: Option<Assembly>,
    /// A generation refused whole: its further parts are refused without a look.
    refused: Option<u32>,
    /// Every counter of the last complete schema, in its order (kept across sessions until a
    /// new schema replaces it).
    series: Vec<Series>,
    /// Frames refused since the store was made.
    refused_frames: u64,
}

impl CounterStore {
    pub fn new() -> CounterStore {
        CounterStore::default()
    }

    /// A new session: values wait for its schema. The history stays.
    pub fn session_started(&mut self) {
        self.live = false;
        self.assembly = None;
        self.refused = None;
    }

    /// The generation of the schema in use, if a complete one arrived in this session.
    pub fn generation(&self) -> Option<u32> {
        self.schema
            .as_ref()
            .filter(|_| self.live)
            .map(|s| s.generation)
    }

    /// The (entity, counter name) of `id` in the schema in use.
    pub fn name_of(&self, id: u32) -> Option<(&str, &str)> {
        let schema = self.schema.as_ref()?;
        let series = self.series.get(*schema.by_id.get(&id)?)?;
        Some((series.entity.as_str(), series.desc.name.as_str()))
    }

    /// Whether a complete schema ever arrived (its counters are shown, also between sessions).
    pub fn has_schema(&self) -> bool {
        self.schema.is_some()
    }

    /// Frames refused so far.
    pub fn refused_frames(&self) -> u64 {
        self.refused_frames
    }

    /// Points kept, all counters together (at most [`POINTS_BUDGET`]).
    pub fn stored_points(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }

    /// Points allocated for, all counters together (at most [`POINTS_BUDGET`]).
    pub fn allocated_points(&self) -> usize {
        self.series.iter().map(|s| s.points.capacity()).sum()
    }

    /// Takes one part of a schema. The schema changes when the last part of a generation is in.
    pub fn schema_part(&mut self, part: CounterSchema) -> Result<(), CounterError> {
        let result = self.take_part(part);
        if result.is_err() {
            self.refused_frames += 1;
        }
        result
    }

    fn take_part(&mut self, part: CounterSchema) -> Result<(), CounterError> {
        let generation = part.generation;
        if self.refused == Some(generation) {
            return Err(CounterError::RefusedGeneration { generation });
        }
        let mut assembly = match self.assembly.take() {
            Some(a) if a.generation == generation => a,
            // A part of another generation starts that one afresh.
            _ => Assembly {
                generation,
                ..Assembly::default()
            },
        };
        let refuse = |store: &mut CounterStore, e: CounterError| {
            store.refused = Some(generation);
            Err(e)
        };
        assembly.parts += 1;
        if assembly.parts > MAX_PARTS {
            return refuse(self, CounterError::TooManyParts { generation });
        }
        for entity in part.entities {
            assembly.counters += entity.counters.len();
            if assembly.counters > MAX_COUNTERS {
                return refuse(self, CounterError::TooManyCounters { generation });
            }
            match assembly.entities.last_mut() {
                Some(last) if last.name == entity.name => last.counters.extend(entity.counters),
                _ => {
                    if assembly.entities.len() >= MAX_ENTITIES {
                        return refuse(self, CounterError::TooManyEntities { generation });
                    }
                    assembly.entities.push(entity);
                }
            }
        }
        if !part.complete {
            self.assembly = Some(assembly);
            return Ok(());
        }
        match self.install(assembly) {
            Ok(()) => Ok(()),
            Err(e) => refuse(self, e),
        }
    }

    /// Makes a complete schema the one in use: checks it, keeps the history of the counters it
    /// still names, sizes every history within the budget.
    fn install(&mut self, assembly: Assembly) -> Result<(), CounterError> {
        let generation = assembly.generation;
        let total: usize = assembly.entities.iter().map(|e| e.counters.len()).sum();
        let share = POINTS_BUDGET / total.max(1);
        let mut old: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, s) in self.series.iter().enumerate() {
            old.insert((s.entity.as_str(), s.desc.name.as_str()), i);
        }
        let mut taken: Vec<Option<usize>> = Vec::with_capacity(total);
        let mut by_id = HashMap::with_capacity(total);
        let mut names: HashMap<(&str, &str), ()> = HashMap::with_capacity(total);
        let mut entities = Vec::with_capacity(assembly.entities.len());
        for entity in &assembly.entities {
            let start = taken.len();
            for counter in &entity.counters {
                if by_id.insert(counter.id, taken.len()).is_some() {
                    return Err(CounterError::DuplicateId {
                        generation,
                        id: counter.id,
                    });
                }
                let key = (entity.name.as_str(), counter.name.as_str());
                if names.insert(key, ()).is_some() {
                    return Err(CounterError::DuplicateName {
                        generation,
                        entity: entity.name.as_str().to_owned(),
                        counter: counter.name.as_str().to_owned(),
                    });
                }
                taken.push(old.get(&key).copied());
            }
            entities.push((entity.name.as_str().to_owned(), start..taken.len()));
        }
        drop(old);
        drop(names);
        let mut previous: Vec<Option<Series>> = std::mem::take(&mut self.series)
            .into_iter()
            .map(Some)
            .collect();
        let mut series = Vec::with_capacity(total);
        let mut from = taken.into_iter();
        for entity in assembly.entities {
            let name = entity.name.into_string();
            for desc in entity.counters {
                let pace = u64::from(desc.pace_ms.max(MIN_PACE_MS));
                let hour = (HISTORY.as_millis() as u64).div_ceil(pace) as usize;
                let capacity = hour.min(share);
                let kept = from.next().flatten().and_then(|i| previous[i].take());
                let mut s = kept.unwrap_or_else(|| Series {
                    entity: name.clone(),
                    desc: desc.clone(),
                    points: VecDeque::new(),
                    capacity,
                });
                s.desc = desc;
                s.capacity = capacity;
                while s.points.len() > capacity {
                    s.points.pop_front();
                }
                s.points.shrink_to(capacity);
                series.push(s);
            }
        }
        self.series = series;
        self.schema = Some(Schema {
            generation,
            entities,
            by_id,
        });
        self.live = true;
        Ok(())
    }

    /// Takes a values frame that arrived at `at` (host time, Unix milliseconds). Returns how
    /// many values were stored.
    pub fn values(&mut self, values: &CounterValues, at: u64) -> Result<usize, CounterError> {
        let result = self.take_values(values, at);
        if result.is_err() {
            self.refused_frames += 1;
        }
        result
    }

    fn take_values(&mut self, v: &CounterValues, at: u64) -> Result<usize, CounterError> {
        let Some(schema) = self.schema.as_ref().filter(|_| self.live) else {
            return Err(CounterError::NoSchema {
                generation: v.generation,
            });
        };
        if schema.generation != v.generation {
            return Err(CounterError::StaleGeneration {
                got: v.generation,
                have: schema.generation,
            });
        }
        // Check the whole frame before storing any of it.
        for &(id, value) in &v.values {
            if !schema.by_id.contains_key(&id) {
                return Err(CounterError::UnknownId {
                    generation: v.generation,
                    id,
                });
            }
            if !value.is_finite() {
                return Err(CounterError::NotANumber { id });
            }
        }
        for &(id, value) in &v.values {
            if let Some(series) = schema.by_id.get(&id).and_then(|&i| self.series.get_mut(i)) {
                series.push(at, value);
            }
        }
        Ok(v.values.len())
    }

    /// Every counter of the last complete schema (also between sessions), in schema order,
    /// with its latest value; only those of `entity` when one is named.
    pub fn latest(&self, entity: Option<&str>) -> Vec<Latest<'_>> {
        let Some(schema) = &self.schema else {
            return Vec::new();
        };
        schema
            .entities
            .iter()
            .filter(|(name, _)| entity.is_none_or(|e| e == name))
            .flat_map(|(_, range)| &self.series[range.clone()])
            .map(|s| Latest {
                entity: &s.entity,
                counter: &s.desc,
                value: s.latest(),
            })
            .collect()
    }

    /// The entity names of the last complete schema, in order.
    pub fn entities(&self) -> Vec<&str> {
        self.schema
            .as_ref()
            .map(|s| s.entities.iter().map(|(n, _)| n.as_str()).collect())
            .unwrap_or_default()
    }

    /// One counter's history (also between sessions, until a new schema replaces it).
    pub fn series(&self, entity: &str, counter: &str) -> Option<&Series> {
        self.series
            .iter()
            .find(|s| s.entity == entity && s.desc.name.as_str() == counter)
    }
}

pub mod monitors;

#[cfg(test)]
mod tests;
