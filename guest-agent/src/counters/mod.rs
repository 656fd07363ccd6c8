//! Counters, as AppLogic's CCA agent collects them: the standard counters of the guest
//! (CPU, memory, scheduler, file system, volumes, network interfaces) and custom counters
//! declared in ccad.conf and fed through named pipes, streamed to the host.
//!
//! # Modules
//!
//! - [`standard`]: the standard counters, read from /proc and /sys (parsing and rates pure).
//! - [`ccad`]: the ccad.conf parser (pure).
//! - [`pipe`]: the named pipes: the line parser (pure) and the reader.
//! - [`sampler`]: the schema and what to send when (a pure machine).
//! - this module: [`CountersConfig`] (the `[counters]` table of guest.toml) and [`Counters`],
//!   the task that owns all of it.
//!
//! # How it runs
//!
//! One task owns the [`sampler::Sampler`]. It reads the standard counters every `pace_ms`
//! (off the runtime's thread: a box with many open files takes a while), takes the complete
//! sets of the pipe readers (one task per pipe), and sends what the sampler returns to the
//! daemon as [`Event::Outbound`] messages, which the machine puts on the host session. The
//! daemon tells it when a session is established (with whether it takes counters: protocol 2
//! and the `COUNTERS` capability on both sides) and when to reload. A reload reads ccad.conf
//! again; a broken one is logged with its file, line and column and the last good one stays.
//! Pipes are created when missing and never removed (a feeder writing while the agent
//! restarts must find a FIFO, not create a file).

pub mod ccad;
pub mod pipe;
pub mod sampler;
pub mod standard;

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use appmon_wire::report::error_chain;
use appmon_wire::{Capabilities, GuestMsg};
use serde::{Deserialize, Deserializer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::inbox::Input;
use crate::machine::Event;
use ccad::CcadConfig;
use pipe::{PipeParser, PipeSet};
use sampler::Sampler;

/// The standard counters' pace unless guest.toml says otherwise.
pub const DEFAULT_PACE_MS: u32 = 5000;

/// The `[counters]` table of guest.toml.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountersConfig {
    /// Collect counters and offer them to the host (capability `COUNTERS`). A change takes
    /// effect when the agent starts again.
    pub enabled: bool,
    /// How often the standard counters are read and sent, in milliseconds.
    #[serde(deserialize_with = "pace")]
    pub pace_ms: u32,
    /// Where custom counters are declared; none when the file does not exist.
    pub ccad_conf: PathBuf,
}

impl Default for CountersConfig {
    fn default() -> Self {
        CountersConfig {
            enabled: true,
            pace_ms: DEFAULT_PACE_MS,
            ccad_conf: PathBuf::from(ccad::DEFAULT_CCAD_CONF),
        }
    }
}

fn pace<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let ms = i64::deserialize(d)?;
    match u32::try_from(ms) {
        Ok(ms) if (ccad::MIN_PACE_MS..=ccad::MAX_PACE_MS).contains(&ms) => Ok(ms),
        _ => Err(serde::de::Error::custom(format_args!(
            "{ms} is not a pace in milliseconds from {} to {}",
            ccad::MIN_PACE_MS,
            ccad::MAX_PACE_MS
        ))),
    }
}

/// Whether a session of protocol `version` with `capabilities` (both sides') takes counters.
pub fn session_takes_counters(version: u16, capabilities: Capabilities) -> bool {
    version >= 2 && capabilities.contains(Capabilities::COUNTERS)
}

enum Command {
    Session { wants: bool },
    Reload(CountersConfig),
}

/// Complete sets queued from the pipe readers.
const SET_QUEUE: usize = 16;
/// Commands queued for the counters task.
const COMMAND_QUEUE: usize = 8;

/// The running counters: their task, and the pipe readers it started. Dropping it stops them.
#[derive(Debug)]
pub struct Counters {
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl Counters {
    /// Loads ccad.conf, creates its pipes and starts sampling. Must run inside a tokio runtime.
    /// A broken ccad.conf is logged and leaves only the standard counters.
    pub fn start(config: CountersConfig, outbound: mpsc::Sender<Input>) -> Counters {
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let task = tokio::spawn(run(config, outbound, rx));
        Counters { commands, task }
    }

    /// A host session was established.
    pub fn session_established(&self, version: u16, capabilities: Capabilities) {
        let wants = session_takes_counters(version, capabilities);
        self.command(Command::Session { wants });
    }

    /// Reads ccad.conf again and takes `config`'s pace and path.
    pub fn reload(&self, config: &CountersConfig) {
        self.command(Command::Reload(config.clone()));
    }

    fn command(&self, command: Command) {
        // Never blocks the daemon; the queue only fills if the task is gone.
        if self.commands.try_send(command).is_err() {
            error!("the counters task does not take commands; counters stay as they are");
        }
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The task's state: the sampler, the configuration, the pipe readers.
struct Shell {
    config: CountersConfig,
    ccad: CcadConfig,
    sampler: Sampler,
    outbound: mpsc::Sender<Input>,
    readers: Vec<JoinHandle<()>>,
    sets: mpsc::Sender<PipeSet>,
    /// Counts reader starts; readers tag their sets with it, so a set still queued from a
    /// reader of the last configuration is not taken for the new one's counters.
    epoch: usize,
}

impl Drop for Shell {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// ccad.conf as the log should tell it; `None` when it cannot be used.
fn load_ccad(config: &CountersConfig) -> Option<CcadConfig> {
    match ccad::load(&config.ccad_conf) {
        Ok(None) => {
            debug!(path = %config.ccad_conf.display(), "no ccad.conf: no custom counters");
            Some(CcadConfig::default())
        }
        Ok(Some(parsed)) => {
            for w in &parsed.warnings {
                warn!(
                    "{}:{}:{}: {}",
                    config.ccad_conf.display(),
                    w.line,
                    w.column,
                    w.message
                );
            }
            Some(parsed.config)
        }
        Err(e) => {
            error!(error = %error_chain(&e), "custom counters not loaded");
            None
        }
    }
}

async fn run(
    config: CountersConfig,
    outbound: mpsc::Sender<Input>,
    mut commands: mpsc::Receiver<Command>,
) {
    let ccad = load_ccad(&config).unwrap_or_default();
    // Generations go on from the wall clock, so an agent that restarted does not reuse the
    // numbers of its last life with another schema.
    let generation = (unix_ms() / 1000) as u32;
    let (sets, mut set_rx) = mpsc::channel(SET_QUEUE);
    let mut shell = Shell {
        sampler: Sampler::new(generation, config.pace_ms, &ccad),
        config,
        ccad,
        outbound,
        readers: Vec::new(),
        sets,
        epoch: 0,
    };
    shell.start_readers();
    info!(
        pace_ms = shell.config.pace_ms,
        custom = shell.ccad.counters().count(),
        "counters started"
    );
    // The first sample before anything else, so that the first schema a session gets already
    // has the standard counters (their rates get values from the next sample on).
    let mut previous = read_standard().await;
    if let Some(first) = &previous {
        let readings = standard::readings(None, first);
        shell.sampler.standard(&readings, unix_ms());
    }
    let mut interval = standard_interval(shell.config.pace_ms);
    loop {
        let deadline = shell
            .sampler
            .next_deadline()
            .map(tokio::time::Instant::from_std);
        let msgs = tokio::select! {
            _ = interval.tick() => {
                let Some(snapshot) = read_standard().await else {
                    continue;
                };
                let readings = standard::readings(previous.as_ref(), &snapshot);
                previous = Some(snapshot);
                shell.sampler.standard(&readings, unix_ms())
            }
            Some(set) = set_rx.recv() => {
                let values = shell.custom_indices(set);
                debug!(values = values.len(), "a custom counter set ended");
                shell.sampler.custom_set(&values, Instant::now(), unix_ms())
            }
            () = sleep_until(deadline) => shell.sampler.tick(Instant::now()),
            command = commands.recv() => match command {
                None => break,
                Some(Command::Session { wants }) => {
                    debug!(wants, "host session: counters {}", if wants { "on" } else { "off" });
                    shell.sampler.session(wants)
                }
                Some(Command::Reload(config)) => {
                    let pace_changed = config.pace_ms != shell.config.pace_ms;
                    let msgs = shell.reload(config);
                    if pace_changed {
                        interval = standard_interval(shell.config.pace_ms);
                    }
                    msgs
                }
            },
        };
        for msg in msgs {
            if shell
                .outbound
                .send(Input::Event(Event::Outbound(msg)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// One sample of the standard counters, read off the runtime's thread (a box with many open
/// files takes a while to stat them all).
async fn read_standard() -> Option<standard::Snapshot> {
    match tokio::task::spawn_blocking(|| standard::read(Instant::now())).await {
        Ok(snapshot) => Some(snapshot),
        Err(e) => {
            error!(error = %e, "reading the standard counters failed");
            None
        }
    }
}

/// Ticks every pace, the first a pace from now.
fn standard_interval(pace_ms: u32) -> tokio::time::Interval {
    let pace = std::time::Duration::from_millis(u64::from(pace_ms));
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + pace, pace);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Shell {
    /// A pipe set's values by custom counter index (each parser numbers its counters by
    /// their place in the whole file, as the sampler does); none from a reader of an older
    /// configuration.
    fn custom_indices(&self, set: PipeSet) -> Vec<(usize, f64)> {
        if set.pipe != self.epoch {
            return Vec::new();
        }
        set.values
    }

    /// One reader per distinct pipe path of ccad.conf.
    fn start_readers(&mut self) {
        for reader in self.readers.drain(..) {
            reader.abort();
        }
        self.epoch += 1;
        let mut paths: Vec<&PathBuf> = Vec::new();
        for block in &self.ccad.blocks {
            if !paths.contains(&&block.pipe) {
                paths.push(&block.pipe);
            }
        }
        for path in paths {
            let names = self
                .ccad
                .counters()
                .enumerate()
                .filter(|(_, (block, _, _))| &block.pipe == path)
                .map(|(i, (_, _, counter))| (counter.key.clone(), i));
            let parser = PipeParser::new(names);
            let receiver = match pipe::create_fifo(path).and_then(|()| pipe::open(path)) {
                Ok(receiver) => receiver,
                Err(e) => {
                    error!(error = %error_chain(&e), "custom counters of this pipe get no values");
                    continue;
                }
            };
            info!(path = %path.display(), "reading custom counters from the named pipe");
            self.readers.push(tokio::spawn(pipe::run(
                self.epoch,
                path.clone(),
                receiver,
                parser,
                self.sets.clone(),
            )));
        }
    }

    fn reload(&mut self, config: CountersConfig) -> Vec<GuestMsg> {
        if config.enabled != self.config.enabled {
            warn!("counters `enabled` changed: that takes effect when the agent starts again");
        }
        let Some(ccad) = load_ccad(&config) else {
            error!(
                path = %config.ccad_conf.display(),
                "ccad.conf not reloaded; keeping the last good custom counters"
            );
            return Vec::new();
        };
        let changed = ccad != self.ccad;
        let msgs = self.sampler.reconfigure(config.pace_ms, &ccad);
        self.config = config;
        self.ccad = ccad;
        // Readers restart when the file changed, and also when it did not: a pipe that could
        // not be opened before (a regular file in the way) gets another chance.
        self.start_readers();
        info!(
            custom = self.ccad.counters().count(),
            changed,
            generation = self.sampler.generation(),
            "counters reloaded"
        );
        msgs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_protocol_2_sessions_with_the_capability_take_counters() {
        let both = Capabilities::HEARTBEAT | Capabilities::COUNTERS;
        assert!(session_takes_counters(2, both));
        assert!(!session_takes_counters(1, both));
        assert!(!session_takes_counters(2, Capabilities::HEARTBEAT));
    }
}
