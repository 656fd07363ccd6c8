//! The messages of the protocol, one enum per direction.
//!
//! Variant order is the wire format: postcard encodes an enum variant as its index. New variants
//! are only ever appended, never inserted or reordered (the golden fixtures in `tests/golden.rs`
//! fail if that rule is broken). See the crate documentation for the version rule.

use serde::{Deserialize, Serialize};

use crate::text::{limits, Blob, Text};

/// The vsock port the guest agent listens on, as Serviceguard's cmappserver did.
pub const DEFAULT_VSOCK_PORT: u32 = 5315;

/// Identifies one request; the reply names it. Chosen by the requester, unique per session.
pub type RequestId = u32;

/// Names a process the host asked the guest to launch. Chosen by the host.
pub type ProcessId = Text<limits::ProcessId>;

/// Messages a guest agent sends to the host agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GuestMsg {
    /// First frame of a session: who we are and what we speak.
    Hello(Hello),
    /// A typed error, as a reply to a request or about an event frame the guest could not take.
    Error(WireError),
    /// The guest's whole monitoring state, sent after every handshake so that a host agent that
    /// restarted, or a new host after a migration, loses nothing.
    State(GuestState),
    /// The application asks to be monitored (vSphere `VMGuestAppMonitor_Enable`).
    Enable,
    /// The application stops monitoring (`VMGuestAppMonitor_Disable`).
    Disable,
    /// A heartbeat (`VMGuestAppMonitor_MarkActive`).
    MarkActive,
    /// `VMGuestAppMonitor_PostAppState`: the application asks for a reset, or takes that back.
    PostAppState(AppState),
    /// Request: what is my status? Answered with [`HostMsg::AppStatus`].
    GetAppStatus,
    /// Request: does the host monitor me? Answered with [`HostMsg::Enabled`].
    IsEnabled,
    /// Names every counter once; later [`GuestMsg::CounterValues`] refer to the ids.
    CounterSchema(CounterSchema),
    /// A set of counter values, by id.
    CounterValues(CounterValues),
    /// A launched process changed state (event), or the answer to a launch/poll/signal (reply).
    Process(ProcessStatus),
    /// An application monitor inside the guest reported something.
    Monitor(MonitorEvent),
    /// Success reply to a request that has nothing else to say.
    Ack,
    /// Liveness probe; answered with [`GuestMsg::Pong`] or [`HostMsg::Pong`].
    Ping,
    /// Answer to a [`HostMsg::Ping`].
    Pong,
    /// Reply to [`HostMsg::ReadOutput`]: a piece of a launched process's output. (Protocol 2.)
    Output(OutputChunk),
    /// The state of every application monitor, sent after `State` on every session and whenever
    /// a monitor's state changes. (Protocol 2.)
    Monitors(Vec<MonitorStatus>),
}

impl GuestMsg {
    /// The oldest protocol version in which this message has its current shape: a peer sends it
    /// only on a session whose negotiated version is at least this (crate docs, "Version
    /// rule"). Protocol 2 added `Output` and `Monitors` and gave `Process`, `Monitor` and
    /// `CounterSchema` the shapes they have now; protocol 1 never sent those.
    pub fn since_protocol(&self) -> u16 {
        match self {
            GuestMsg::Output(_)
            | GuestMsg::Monitors(_)
            | GuestMsg::Process(_)
            | GuestMsg::Monitor(_)
            | GuestMsg::CounterSchema(_) => 2,
            _ => 1,
        }
    }
}

/// Messages the host agent sends to a guest agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostMsg {
    /// First frame of a session: who we are and what we speak.
    Hello(Hello),
    /// A typed error, as a reply to a request or about an event frame the host could not take.
    Error(WireError),
    /// The guest's status as the host sees it. Sent when it changes and as the reply to
    /// [`GuestMsg::GetAppStatus`], [`GuestMsg::Enable`] and [`GuestMsg::Disable`].
    AppStatus(AppStatus),
    /// Reply to [`GuestMsg::IsEnabled`].
    Enabled(bool),
    /// Success reply to a request that has nothing else to say.
    Ack,
    /// Request: start a process in the guest (Serviceguard cmappmgr → cmappserver).
    LaunchProcess(LaunchSpec),
    /// Request: how is this process doing? Answered with [`GuestMsg::Process`].
    PollProcess { id: ProcessId },
    /// Request: send a signal to a launched process. Answered with [`GuestMsg::Process`].
    SignalProcess { id: ProcessId, signal: i32 },
    /// Liveness probe; answered with [`GuestMsg::Pong`].
    Ping,
    /// Answer to a [`GuestMsg::Ping`].
    Pong,
    /// Request: the output a launched process wrote since `from`. Answered with
    /// [`GuestMsg::Output`]. (Protocol 2.)
    ReadOutput {
        id: ProcessId,
        stream: OutputStream,
        from: u64,
    },
    /// Request: the host has read how this process ended; the guest forgets it. Answered with
    /// `Ack`, or `Error(NotFound)`, or `Error(BadRequest)` for a process still running.
    /// (Protocol 2.)
    ReleaseProcess { id: ProcessId },
}

/// Capability bits a peer announces in its [`Hello`]. Unknown bits are ignored, so new ones can
/// be added without a protocol version change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// Heartbeats, needReset, Green/Red/Gray.
    pub const HEARTBEAT: Capabilities = Capabilities(1 << 0);
    /// Launch, poll and signal processes.
    pub const PROCESSES: Capabilities = Capabilities(1 << 1);
    /// Application monitors (process and custom).
    pub const MONITORS: Capabilities = Capabilities(1 << 2);
    /// Counter schema and values.
    pub const COUNTERS: Capabilities = Capabilities(1 << 3);

    /// No capability at all.
    pub const fn empty() -> Self {
        Capabilities(0)
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits both sides have.
    pub const fn intersection(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }
}

impl std::ops::BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        Capabilities(self.0 | rhs.0)
    }
}

/// The first frame either side sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The newest protocol version this peer speaks.
    pub protocol: u16,
    /// The oldest protocol version this peer still speaks.
    pub min_protocol: u16,
    /// Program name and version, for logs (`appmon-guest 0.1.0`).
    pub agent: Text<limits::AgentName>,
    /// The guest's kernel boot id (`/proc/sys/kernel/random/boot_id`), or for the host agent a
    /// random id per process start. A change tells the peer it talks to a rebooted or restarted
    /// agent.
    pub boot_id: [u8; 16],
    /// What this peer can do.
    pub capabilities: Capabilities,
}

/// The application's state as vSphere's `PostAppState` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AppState {
    /// `appStateOk`: no reset wanted (clears a pending needReset).
    Ok,
    /// `appStateNeedReset`: reset this VM now.
    NeedReset,
}

/// The status the guest sees, as vSphere defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AppStatus {
    /// Monitoring is on and heartbeats arrive.
    Green,
    /// Not monitored, or failed: a reset is coming if monitoring is on.
    Red,
    /// The host has no state for this guest (after a migration or a host-agent restart): enable
    /// again, then mark active.
    Gray,
}

impl AppStatus {
    /// The lower-case name the `appmon` CLI prints.
    pub fn as_str(self) -> &'static str {
        match self {
            AppStatus::Green => "green",
            AppStatus::Red => "red",
            AppStatus::Gray => "gray",
        }
    }
}

impl std::fmt::Display for AppStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the guest agent knows about its monitoring, sent in full after each handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestState {
    /// The application has enabled monitoring.
    pub enabled: bool,
    /// The application posted needReset and has not taken it back.
    pub need_reset: bool,
    /// Milliseconds since the last heartbeat, measured when this frame was built; `None` if the
    /// application has not sent one since it enabled.
    pub last_heartbeat_age_ms: Option<u64>,
    /// Heartbeats received from applications since the agent started.
    pub heartbeats: u64,
    /// The status the host last told this guest, if any.
    pub last_status: Option<AppStatus>,
    /// Processes launched for the host whose state the host has not yet read to the end.
    pub processes: Vec<ProcessStatus>,
}

/// What the host asks the guest to launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub id: ProcessId,
    /// Program and arguments; `argv[0]` is looked up in the guest's allowlist.
    pub argv: Vec<Text<limits::Argument>>,
    /// Extra environment, on top of a minimal one.
    pub env: Vec<(Text<limits::EnvName>, Text<limits::Argument>)>,
    pub cwd: Option<Text<limits::Argument>>,
    /// The user to run as; `None` means the allowlist's default.
    pub user: Option<Text<limits::UserName>>,
}

/// A launched process and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub id: ProcessId,
    pub state: ProcessState,
    /// The command line, shortened for listings.
    pub command: Text<limits::Command>,
    /// The user it runs as.
    pub user: Text<limits::UserName>,
    /// Guest wall-clock time of the start, milliseconds since the Unix epoch; 0 if it never
    /// started.
    pub started_unix_ms: u64,
    /// Bytes written to stdout and stderr so far (the guest keeps only a tail of each).
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// The life of a launched process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessState {
    /// Started, still running.
    Running { pid: u32 },
    /// Exited with this code.
    Exited { code: i32 },
    /// Killed by this signal.
    Killed { signal: i32 },
    /// Could not be started; why.
    FailedToStart { reason: Text<limits::Reason> },
    /// The guest knows no process by that id.
    Unknown,
}

/// What an application monitor in the guest reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorEvent {
    /// The monitor's name from the guest configuration.
    pub monitor: Text<limits::MonitorName>,
    pub kind: MonitorEventKind,
}

/// The things a monitor has to say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MonitorEventKind {
    /// The startup check found the application already running: its start command is not run.
    StartupOk,
    /// The startup check did not find the application running within the stabilization
    /// interval: the start command runs.
    StartupFailed { reason: Text<limits::Reason> },
    /// The start command ran; `ok` is whether it succeeded within its bound.
    Started { ok: bool },
    /// The long-running check failed.
    Failed { reason: Text<limits::Reason> },
    /// The restart command ran (attempt counts from 1 within the restart interval); `ok` is
    /// whether it succeeded within its bound.
    Restarted { attempt: u32, ok: bool },
    /// Restarts are used up; the failure action was taken.
    ActionTaken { action: FailureAction },
    /// The application is healthy again after a failure.
    Recovered,
}

/// What an application monitor watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MonitorKind {
    /// A process by name (owner, instance count) or pid file.
    Process,
    /// A command whose exit code is the verdict.
    Custom,
}

/// When a monitor runs (PowerHA's monitor modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MonitorMode {
    Startup,
    LongRunning,
    Both,
}

/// Where a monitor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MonitorPhase {
    /// Within the stabilization interval.
    Stabilizing,
    /// Checking, and the last check passed.
    Healthy,
    /// The last check failed; a restart may follow.
    Failed,
    /// Restarts are used up and the failure action was taken.
    GaveUp,
    /// Not checking (a startup-only monitor after its startup check).
    Idle,
}

/// One application monitor's state, as `appmon monitors` and `appmonctl show` list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorStatus {
    pub name: Text<limits::MonitorName>,
    /// The application it watches (several monitors may watch one application).
    pub application: Text<limits::MonitorName>,
    pub kind: MonitorKind,
    pub mode: MonitorMode,
    pub phase: MonitorPhase,
    /// Restarts within the current restart interval, and how many are allowed.
    pub restarts: u32,
    pub restart_count: u32,
    pub failure_action: FailureAction,
    /// Why the last check failed, if one did.
    pub last_failure: Option<Text<limits::Reason>>,
}

/// Which output stream of a launched process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A piece of a launched process's output. The guest keeps a bounded tail of each stream; bytes
/// before the tail are gone, which `offset > from` tells the reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub id: ProcessId,
    pub stream: OutputStream,
    /// Position of `data[0]` in the stream (bytes since the process started).
    pub offset: u64,
    pub data: Blob<limits::OutputChunk>,
    /// Bytes the process has written to this stream so far.
    pub total: u64,
    /// The stream is closed (the process ended) and `data` reaches its end.
    pub eof: bool,
}

/// What a monitor does once its restarts are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureAction {
    /// Only report it.
    Notify,
    /// Stop sending heartbeats: the host resets the VM after the failure interval.
    StopHeartbeats,
    /// Post needReset: the host resets the VM at once.
    NeedReset,
}

/// Names each counter once. Values refer to counters by `id`.
///
/// A schema larger than one frame goes out in parts with the same `generation`, the last with
/// `complete` set; a receiver replaces what it had for the VM when a part of a new generation
/// arrives and knows the schema whole at `complete`. A new session or a configuration change
/// sends a schema again (with a new generation on a change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterSchema {
    /// Bumped on every schema change; values carry the generation they belong to.
    pub generation: u32,
    pub entities: Vec<EntityDesc>,
    /// This is the last part of the generation's schema.
    pub complete: bool,
}

/// A group of counters (`CPU`, `Memory`, `Volume vda`, `Terminal eth0`, or a custom entity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityDesc {
    pub name: Text<limits::CounterName>,
    pub counters: Vec<CounterDesc>,
}

/// One counter's description, as `/monapi/desc` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterDesc {
    pub id: u32,
    pub name: Text<limits::CounterName>,
    pub description: Text<limits::Description>,
    pub units: Text<limits::Units>,
    /// The counter's type as configured (ccad.conf `type`, e.g. `MAX`); empty if none.
    pub kind: Text<limits::CounterKind>,
    pub range_lower: Option<f64>,
    pub range_upper: Option<f64>,
    /// How often the value is refreshed, in milliseconds.
    pub pace_ms: u32,
}

impl CounterSchema {
    /// The schema of `generation`, cut into as many parts as it takes for each to fit one frame
    /// ([`crate::MAX_FRAME_LEN`]), the last with `complete` set. Entities stay in order; an
    /// entity too large for what is left of a part continues in the next one under the same
    /// name, so a receiver appends the counters of an entity it already has. Always at least one
    /// part, even for no entities at all.
    pub fn parts(generation: u32, entities: Vec<EntityDesc>) -> Vec<CounterSchema> {
        let mut parts = Vec::new();
        let mut current: Vec<EntityDesc> = Vec::new();
        let mut size = SCHEMA_OVERHEAD;
        for entity in entities {
            let head = text_len(entity.name.as_str()) + VARINT_MAX;
            if size + head > SCHEMA_PART_BUDGET && !current.is_empty() {
                parts.push(std::mem::take(&mut current));
                size = SCHEMA_OVERHEAD;
            }
            size += head;
            current.push(EntityDesc {
                name: entity.name.clone(),
                counters: Vec::new(),
            });
            for counter in entity.counters {
                let len = counter.encoded_len();
                let holds_something =
                    current.len() > 1 || current.last().is_some_and(|e| !e.counters.is_empty());
                if size + len > SCHEMA_PART_BUDGET && holds_something {
                    // Close this part; the entity goes on in the next one.
                    if current.last().is_some_and(|e| e.counters.is_empty()) {
                        current.pop();
                    }
                    parts.push(std::mem::take(&mut current));
                    current.push(EntityDesc {
                        name: entity.name.clone(),
                        counters: Vec::new(),
                    });
                    size = SCHEMA_OVERHEAD + head;
                }
                size += len;
                if let Some(open) = current.last_mut() {
                    open.counters.push(counter);
                }
            }
        }
        parts.push(current);
        let last = parts.len() - 1;
        parts
            .into_iter()
            .enumerate()
            .map(|(i, entities)| CounterSchema {
                generation,
                entities,
                complete: i == last,
            })
            .collect()
    }

    /// How many counters this part names.
    pub fn counter_count(&self) -> usize {
        self.entities.iter().map(|e| e.counters.len()).sum()
    }
}

impl CounterDesc {
    /// The bytes postcard writes for this description (an upper bound for the varints).
    fn encoded_len(&self) -> usize {
        let range = |r: Option<f64>| if r.is_some() { 9 } else { 1 };
        2 * VARINT_MAX
            + text_len(self.name.as_str())
            + text_len(self.description.as_str())
            + text_len(self.units.as_str())
            + text_len(self.kind.as_str())
            + range(self.range_lower)
            + range(self.range_upper)
    }
}

/// The most bytes a postcard varint of a `u32` takes.
const VARINT_MAX: usize = 5;
/// A schema part's own fields, the frame's tag and kind, with room to spare.
const SCHEMA_OVERHEAD: usize = 32;
/// What the postcard bytes of one schema part may add up to: COBS adds a byte per 254.
const SCHEMA_PART_BUDGET: usize = crate::MAX_FRAME_LEN / 255 * 254 - 64;
/// The most (id, value) pairs one [`CounterValues`] frame carries: each takes at most 14 bytes
/// packed (a 5-byte id, a marker and an 8-byte float), so this many fit one frame.
pub const MAX_VALUES_PER_FRAME: usize = 4096;

fn text_len(text: &str) -> usize {
    VARINT_MAX + text.len()
}

impl CounterValues {
    /// `values` of one sample in as many frames as it takes ([`MAX_VALUES_PER_FRAME`] each);
    /// none for no values.
    pub fn parts(generation: u32, unix_ms: u64, values: &[(u32, f64)]) -> Vec<CounterValues> {
        values
            .chunks(MAX_VALUES_PER_FRAME)
            .map(|chunk| CounterValues {
                generation,
                unix_ms,
                values: chunk.to_vec(),
            })
            .collect()
    }
}

/// A set of counter values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterValues {
    /// The schema generation the ids belong to.
    pub generation: u32,
    /// Guest wall-clock time of the sample, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// (counter id, value) pairs. Values round-trip bit for bit; see [`compact_values`].
    #[serde(with = "compact_values")]
    pub values: Vec<(u32, f64)>,
}

/// Counter values on the wire (binary formats): one byte string of entries, each a varint
/// counter id and then either a varint `zigzag(v) << 1` for an integral value, or the byte 0x01
/// and the 8 little-endian bytes of the `f64`. Human-readable formats (JSON) see plain pairs.
///
/// Why not plain postcard pairs: most counters count bytes, packets and files, and as varints
/// they are half the size of a float and free of the zero bytes that cut COBS into short blocks;
/// and postcard's per-field calls cost more than the values themselves. Measured on a
/// 200-counter frame, this layout makes encode + decode several times faster. Only values that
/// convert back exactly take the integer form (|v| < 2^53, not -0.0), so the receiver sees the
/// very `f64` that was sent.
pub mod compact_values {
    use serde::de::Visitor;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Largest magnitude below which every integer is an exact `f64`.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    /// Marks a raw float; integers are even.
    const FLOAT: u8 = 0x01;

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn take_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *bytes.get(*at)?;
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// Appends the binary form of `values` to `out`.
    pub fn pack(values: &[(u32, f64)], out: &mut Vec<u8>) {
        out.reserve(values.len() * 6);
        for &(id, v) in values {
            put_varint(out, u64::from(id));
            // `abs() < EXACT` is false for NaN and the infinities; the casts are one
            // instruction each way, where `fract()` is a libm call.
            if v.abs() < EXACT && (v as i64) as f64 == v && !(v == 0.0 && v.is_sign_negative()) {
                let i = v as i64;
                let zigzag = ((i << 1) ^ (i >> 63)) as u64;
                put_varint(out, zigzag << 1);
            } else {
                out.push(FLOAT);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// Reads the binary form back; says at which byte it went wrong.
    pub fn unpack(bytes: &[u8]) -> Result<Vec<(u32, f64)>, String> {
        // At least two bytes per entry: never reserve more than the input can fill.
        let mut out = Vec::with_capacity(bytes.len() / 2);
        let mut at = 0;
        while at < bytes.len() {
            let start = at;
            let id = take_varint(bytes, &mut at)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("bad counter id at byte {start}"))?;
            let tagged =
                take_varint(bytes, &mut at).ok_or_else(|| format!("bad value at byte {at}"))?;
            let value = if tagged == u64::from(FLOAT) {
                let raw = bytes
                    .get(at..at + 8)
                    .ok_or_else(|| format!("float cut short at byte {at}"))?;
                at += 8;
                let mut le = [0u8; 8];
                le.copy_from_slice(raw);
                f64::from_le_bytes(le)
            } else if tagged & 1 == 0 {
                let zigzag = tagged >> 1;
                let i = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
                i as f64
            } else {
                return Err(format!("unknown value form {tagged} at byte {start}"));
            };
            out.push((id, value));
        }
        Ok(out)
    }

    pub fn serialize<S: Serializer>(values: &[(u32, f64)], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.collect_seq(values);
        }
        let mut buf = Vec::new();
        pack(values, &mut buf);
        s.serialize_bytes(&buf)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u32, f64)>, D::Error> {
        if d.is_human_readable() {
            return Vec::deserialize(d);
        }
        struct Packed;
        impl Visitor<'_> for Packed {
            type Value = Vec<(u32, f64)>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("packed counter values")
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
                unpack(bytes).map_err(|e| E::custom(format_args!("counter values: {e}")))
            }
        }
        d.deserialize_bytes(Packed)
    }
}

/// A typed error carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub code: ErrorCode,
    /// A sentence for logs; never parsed. A peer's words: shown escaped.
    pub message: Text<limits::ErrorMessage>,
}

/// Why a peer refused something. A peer never answers an `Error` frame with another error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The message kind is newer than this peer; the session goes on.
    Unsupported { kind: u32 },
    /// The protocol version ranges do not overlap; the session ends.
    IncompatibleVersion { ours: u16, theirs: u16 },
    /// The request made no sense in this state (say, MarkActive before Hello).
    BadRequest,
    /// Policy forbids it (a launch not on the guest's allowlist).
    NotAllowed,
    /// No such thing (an unknown process id).
    NotFound,
    /// The peer is rate-limiting this session.
    RateLimited,
    /// Something failed inside the peer.
    Internal,
}

impl WireError {
    /// An error with this sentence, cut to the limit if it is longer.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: Text::truncating(message),
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// What the framing layer needs to know about a message enum.
pub trait WireMessage: Serialize + serde::de::DeserializeOwned + std::fmt::Debug {
    /// How many variants this build knows; a received kind at or above it is "unsupported".
    const KINDS: u32;
    /// The variant index as it goes on the wire.
    fn kind(&self) -> u32;
    /// The variant name, for logs.
    fn kind_name(&self) -> &'static str;
    /// The name of the variant with this index, for errors about a frame that did not decode;
    /// `"unknown"` past the known kinds.
    fn name_of_kind(kind: u32) -> &'static str;
    /// The fieldless message of this kind, if the kind has no fields. Such a message is its
    /// kind number alone on the wire, so the codec can skip serde for it: heartbeats are the
    /// most frequent frames there are.
    fn unit(kind: u32) -> Option<Self>;
    /// Whether [`WireMessage::unit`] has a message for `kind`, without making (and dropping) it.
    fn is_unit(kind: u32) -> bool;
}

macro_rules! wire_message {
    ($ty:ident { $($kind:literal => $variant:ident),* $(,)? } units { $($unit:ident),* $(,)? }) => {
        impl WireMessage for $ty {
            const KINDS: u32 = [$($kind),*].len() as u32;

            fn kind(&self) -> u32 {
                match self {
                    $($ty::$variant { .. } => $kind,)*
                }
            }

            fn kind_name(&self) -> &'static str {
                match self {
                    $($ty::$variant { .. } => stringify!($variant),)*
                }
            }

            fn name_of_kind(kind: u32) -> &'static str {
                match kind {
                    $($kind => stringify!($variant),)*
                    _ => "unknown",
                }
            }

            fn unit(kind: u32) -> Option<Self> {
                $(if kind == $ty::$unit.kind() {
                    return Some($ty::$unit);
                })*
                None
            }

            fn is_unit(kind: u32) -> bool {
                $(kind == $ty::$unit.kind())||*
            }
        }
    };
}

// The numbers are the postcard variant indices, i.e. declaration order; a unit test checks that
// each one matches what postcard actually writes.
wire_message!(GuestMsg {
    0 => Hello,
    1 => Error,
    2 => State,
    3 => Enable,
    4 => Disable,
    5 => MarkActive,
    6 => PostAppState,
    7 => GetAppStatus,
    8 => IsEnabled,
    9 => CounterSchema,
    10 => CounterValues,
    11 => Process,
    12 => Monitor,
    13 => Ack,
    14 => Ping,
    15 => Pong,
    16 => Output,
    17 => Monitors,
} units {
    Enable, Disable, MarkActive, GetAppStatus, IsEnabled, Ack, Ping, Pong
});

wire_message!(HostMsg {
    0 => Hello,
    1 => Error,
    2 => AppStatus,
    3 => Enabled,
    4 => Ack,
    5 => LaunchProcess,
    6 => PollProcess,
    7 => SignalProcess,
    8 => Ping,
    9 => Pong,
    10 => ReadOutput,
    11 => ReleaseProcess,
} units {
    Ack, Ping, Pong
});
