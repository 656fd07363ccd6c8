//! What goes to the host and when: the counter schema and the value frames, as a pure machine.
//!
//! [`Sampler`] holds the schema (one generation: the standard counters the kernel offers, then
//! the custom counters of ccad.conf, ids in that order) and, per ccad.conf block, the values
//! of the sets its pipe delivered and not yet sent. It is fed the standard readings of each
//! standard pace, the sets of the pipes, the session and reloads, and the clock; it returns the
//! messages to send. It reads no clock and does no I/O (the shell in [`super`] does).
//!
//! - A session that takes counters gets the whole schema first ([`Sampler::session`]), then
//!   values; a session that does not (an older host, or one without the `COUNTERS`
//!   capability) gets nothing, and nothing is encoded for it.
//! - The schema changes (a new generation, sent at once) when the standard counters' shape
//!   changes (an interface or a volume came or went) or a reload changes ccad.conf or the pace.
//! - Standard values go out at each standard sample; a custom set goes out when it ends, but a
//!   block sends at most one frame per pace: sets that end faster are merged (the latest value
//!   of each counter) and go out when the pace allows. So a feeder looping without a pause
//!   cannot flood the host.

use std::time::{Duration, Instant};

use appmon_wire::text::Text;
use appmon_wire::{CounterDesc, CounterSchema, CounterValues, EntityDesc, GuestMsg};

use super::ccad::CcadConfig;
use super::standard::{Def, EntityReading};

/// The standard counters' shape: entity names and their counters.
type Shape = Vec<(String, Vec<&'static Def>)>;

/// One custom counter as the schema names it.
#[derive(Debug, Clone)]
struct Custom {
    block: usize,
    desc: CounterDesc,
}

#[derive(Debug, Clone)]
struct BlockState {
    pace: Duration,
    /// Values by custom counter index, latest last, each counter once.
    pending: Vec<(usize, f64)>,
    /// When the pending values were complete (the last set's end), guest wall clock.
    pending_unix_ms: u64,
    last_sent: Option<Instant>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Sampler {
    generation: u32,
    wants: bool,
    standard_pace_ms: u32,
    shape: Shape,
    /// The custom entities: name and the indices of their counters in `custom`.
    custom_entities: Vec<(Text<appmon_wire::text::limits::CounterName>, Vec<usize>)>,
    custom: Vec<Custom>,
    blocks: Vec<BlockState>,
}

impl Sampler {
    /// A sampler whose first schema is `generation`: the caller picks it so that an agent
    /// that restarted does not reuse the generation numbers of its last life.
    pub fn new(generation: u32, standard_pace_ms: u32, ccad: &CcadConfig) -> Sampler {
        let mut sampler = Sampler {
            generation,
            wants: false,
            standard_pace_ms,
            shape: Vec::new(),
            custom_entities: Vec::new(),
            custom: Vec::new(),
            blocks: Vec::new(),
        };
        sampler.take_config(ccad);
        sampler
    }

    /// The generation of the current schema.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// How many counters the schema names.
    pub fn counter_count(&self) -> usize {
        self.shape.iter().map(|(_, c)| c.len()).sum::<usize>() + self.custom.len()
    }

    /// A session was established: whether it takes counters. One that does gets the schema.
    pub fn session(&mut self, wants: bool) -> Vec<GuestMsg> {
        self.wants = wants;
        if wants {
            self.schema()
        } else {
            Vec::new()
        }
    }

    /// A reload: a new generation if anything the schema says changed (sent at once), and the
    /// pending custom values of the old configuration dropped. Returns nothing when nothing
    /// changed.
    pub fn reconfigure(&mut self, standard_pace_ms: u32, ccad: &CcadConfig) -> Vec<GuestMsg> {
        let mut next = Sampler {
            generation: self.generation,
            wants: self.wants,
            standard_pace_ms,
            shape: self.shape.clone(),
            custom_entities: Vec::new(),
            custom: Vec::new(),
            blocks: Vec::new(),
        };
        next.take_config(ccad);
        if next.entities() == self.entities() {
            return Vec::new();
        }
        next.generation = self.generation.wrapping_add(1);
        *self = next;
        if self.wants {
            self.schema()
        } else {
            Vec::new()
        }
    }

    /// One standard sample: a new schema first if the kernel's counters changed, then the
    /// values this sample has.
    pub fn standard(&mut self, readings: &[EntityReading], unix_ms: u64) -> Vec<GuestMsg> {
        let shape: Shape = readings
            .iter()
            .map(|e| (e.name.clone(), e.counters.iter().map(|(d, _)| *d).collect()))
            .collect();
        let mut out = Vec::new();
        if shape != self.shape {
            self.shape = shape;
            self.generation = self.generation.wrapping_add(1);
            if self.wants {
                out.extend(self.schema());
            }
        }
        if !self.wants {
            return out;
        }
        let mut id = 0u32;
        let mut values = Vec::new();
        for entity in readings {
            for (_, value) in &entity.counters {
                if let Some(v) = value {
                    values.push((id, *v));
                }
                id += 1;
            }
        }
        out.extend(self.values(unix_ms, &values));
        out
    }

    /// A set ended on a pipe: `values` by custom counter index. Sent now for each block whose
    /// pace allows, else when it does.
    pub fn custom_set(
        &mut self,
        values: &[(usize, f64)],
        now: Instant,
        unix_ms: u64,
    ) -> Vec<GuestMsg> {
        for &(index, value) in values {
            let Some(custom) = self.custom.get(index) else {
                continue;
            };
            let Some(block) = self.blocks.get_mut(custom.block) else {
                continue;
            };
            match block.pending.iter_mut().find(|(i, _)| *i == index) {
                Some(slot) => slot.1 = value,
                None => block.pending.push((index, value)),
            }
            block.pending_unix_ms = unix_ms;
        }
        self.tick(now)
    }

    /// Sends what is due.
    pub fn tick(&mut self, now: Instant) -> Vec<GuestMsg> {
        let base = self.custom_base();
        let mut out = Vec::new();
        for b in 0..self.blocks.len() {
            let block = &self.blocks[b];
            let due = block.last_sent.is_none_or(|t| now >= t + block.pace);
            if block.pending.is_empty() || !due {
                continue;
            }
            let block = &mut self.blocks[b];
            let pending = std::mem::take(&mut block.pending);
            let unix_ms = block.pending_unix_ms;
            block.last_sent = Some(now);
            if !self.wants {
                continue;
            }
            let values: Vec<(u32, f64)> = pending
                .into_iter()
                .map(|(i, v)| (base + i as u32, v))
                .collect();
            out.extend(self.values(unix_ms, &values));
        }
        out
    }

    /// When [`Sampler::tick`] has something to send.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.blocks
            .iter()
            .filter(|b| !b.pending.is_empty())
            .filter_map(|b| b.last_sent.map(|t| t + b.pace))
            .min()
    }

    fn custom_base(&self) -> u32 {
        self.shape.iter().map(|(_, c)| c.len() as u32).sum()
    }

    fn take_config(&mut self, ccad: &CcadConfig) {
        self.custom.clear();
        self.custom_entities.clear();
        self.blocks = ccad
            .blocks
            .iter()
            .map(|b| BlockState {
                pace: Duration::from_millis(u64::from(b.pace_ms)),
                pending: Vec::new(),
                pending_unix_ms: 0,
                last_sent: None,
            })
            .collect();
        for (b, block) in ccad.blocks.iter().enumerate() {
            for entity in &block.entities {
                let mut members = Vec::new();
                for counter in &entity.counters {
                    members.push(self.custom.len());
                    self.custom.push(Custom {
                        block: b,
                        desc: CounterDesc {
                            id: 0,
                            name: counter.name.clone(),
                            description: counter.description.clone(),
                            units: counter.units.clone(),
                            kind: counter.kind.clone(),
                            range_lower: counter.range_lower,
                            range_upper: counter.range_upper,
                            pace_ms: block.pace_ms,
                        },
                    });
                }
                self.custom_entities.push((entity.name.clone(), members));
            }
        }
    }

    /// The schema's entities, ids given in order.
    fn entities(&self) -> Vec<EntityDesc> {
        let mut id = 0u32;
        let mut next = || {
            let this = id;
            id += 1;
            this
        };
        let mut entities = Vec::new();
        for (name, defs) in &self.shape {
            entities.push(EntityDesc {
                name: Text::truncating(name.as_str()),
                counters: defs
                    .iter()
                    .map(|d| CounterDesc {
                        id: next(),
                        name: Text::truncating(d.name),
                        description: Text::truncating(d.description),
                        units: Text::truncating(d.units),
                        kind: Text::default(),
                        range_lower: None,
                        range_upper: None,
                        pace_ms: self.standard_pace_ms,
                    })
                    .collect(),
            });
        }
        for (name, members) in &self.custom_entities {
            entities.push(EntityDesc {
                name: name.clone(),
                counters: members
                    .iter()
                    .map(|&i| CounterDesc {
                        id: next(),
                        ..self.custom[i].desc.clone()
                    })
                    .collect(),
            });
        }
        entities
    }

    fn schema(&self) -> Vec<GuestMsg> {
        CounterSchema::parts(self.generation, self.entities())
            .into_iter()
            .map(GuestMsg::CounterSchema)
            .collect()
    }

    fn values(&self, unix_ms: u64, values: &[(u32, f64)]) -> Vec<GuestMsg> {
        CounterValues::parts(self.generation, unix_ms, values)
            .into_iter()
            .map(GuestMsg::CounterValues)
            .collect()
    }
}

#[cfg(test)]
mod tests;
