//! Proptest strategies for every message of both directions.

#![allow(dead_code)]

use appmon_wire::text::{Blob, Limit};
use appmon_wire::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

pub fn string() -> impl Strategy<Value = String> {
    // Zero bytes, control characters and multi-byte characters are the interesting cases for
    // COBS, postcard and escaping.
    prop_oneof![
        "[a-z0-9 _./-]{0,24}",
        "\\PC{0,12}",
        "\\PC{0,6}[\n\r\u{1b}\u{202e}\\\\]\\PC{0,6}",
        Just("\0\0\0".to_string())
    ]
}

/// A bounded text field (the strategies' strings are all within every limit).
pub fn text<L: Limit>() -> impl Strategy<Value = Text<L>> {
    string().prop_map(Text::truncating)
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        Just(0.0),
        Just(-1.5)
    ]
}

pub fn tag() -> impl Strategy<Value = Tag> {
    prop_oneof![
        Just(Tag::Event),
        any::<u32>().prop_map(Tag::Request),
        any::<u32>().prop_map(Tag::Reply),
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u16>(),
        any::<u16>(),
        text(),
        any::<[u8; 16]>(),
        any::<u64>(),
    )
        .prop_map(|(protocol, min_protocol, agent, boot_id, caps)| Hello {
            protocol,
            min_protocol,
            agent,
            boot_id,
            capabilities: Capabilities(caps),
        })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        any::<u32>().prop_map(|kind| ErrorCode::Unsupported { kind }),
        (any::<u16>(), any::<u16>())
            .prop_map(|(ours, theirs)| ErrorCode::IncompatibleVersion { ours, theirs }),
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::NotAllowed),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::RateLimited),
        Just(ErrorCode::Internal),
    ]
}

fn wire_error() -> impl Strategy<Value = WireError> {
    (error_code(), text()).prop_map(|(code, message)| WireError { code, message })
}

fn app_status() -> impl Strategy<Value = AppStatus> {
    prop_oneof![
        Just(AppStatus::Green),
        Just(AppStatus::Red),
        Just(AppStatus::Gray)
    ]
}

fn process_state() -> impl Strategy<Value = ProcessState> {
    prop_oneof![
        any::<u32>().prop_map(|pid| ProcessState::Running { pid }),
        any::<i32>().prop_map(|code| ProcessState::Exited { code }),
        any::<i32>().prop_map(|signal| ProcessState::Killed { signal }),
        text().prop_map(|reason| ProcessState::FailedToStart { reason }),
        Just(ProcessState::Unknown),
    ]
}

fn process_status() -> impl Strategy<Value = ProcessStatus> {
    (
        text(),
        process_state(),
        text(),
        text(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(id, state, command, user, started_unix_ms, stdout_bytes, stderr_bytes)| {
                ProcessStatus {
                    id,
                    state,
                    command,
                    user,
                    started_unix_ms,
                    stdout_bytes,
                    stderr_bytes,
                }
            },
        )
}

fn guest_state() -> impl Strategy<Value = GuestState> {
    (
        any::<bool>(),
        any::<bool>(),
        option::of(any::<u64>()),
        any::<u64>(),
        option::of(app_status()),
        vec(process_status(), 0..4),
    )
        .prop_map(
            |(enabled, need_reset, last_heartbeat_age_ms, heartbeats, last_status, processes)| {
                GuestState {
                    enabled,
                    need_reset,
                    last_heartbeat_age_ms,
                    heartbeats,
                    last_status,
                    processes,
                }
            },
        )
}

fn failure_action() -> impl Strategy<Value = FailureAction> {
    prop_oneof![
        Just(FailureAction::Notify),
        Just(FailureAction::StopHeartbeats),
        Just(FailureAction::NeedReset)
    ]
}

fn monitor_event() -> impl Strategy<Value = MonitorEvent> {
    let kind = prop_oneof![
        Just(MonitorEventKind::StartupOk),
        text().prop_map(|reason| MonitorEventKind::StartupFailed { reason }),
        any::<bool>().prop_map(|ok| MonitorEventKind::Started { ok }),
        text().prop_map(|reason| MonitorEventKind::Failed { reason }),
        (any::<u32>(), any::<bool>())
            .prop_map(|(attempt, ok)| MonitorEventKind::Restarted { attempt, ok }),
        failure_action().prop_map(|action| MonitorEventKind::ActionTaken { action }),
        Just(MonitorEventKind::Recovered),
    ];
    (text(), kind).prop_map(|(monitor, kind)| MonitorEvent { monitor, kind })
}

fn monitor_status() -> impl Strategy<Value = MonitorStatus> {
    (
        (text(), text()),
        prop_oneof![Just(MonitorKind::Process), Just(MonitorKind::Custom)],
        prop_oneof![
            Just(MonitorMode::Startup),
            Just(MonitorMode::LongRunning),
            Just(MonitorMode::Both)
        ],
        prop_oneof![
            Just(MonitorPhase::Stabilizing),
            Just(MonitorPhase::Healthy),
            Just(MonitorPhase::Failed),
            Just(MonitorPhase::GaveUp),
            Just(MonitorPhase::Idle)
        ],
        (any::<u32>(), any::<u32>()),
        failure_action(),
        option::of(text()),
    )
        .prop_map(
            |(
                (name, application),
                kind,
                mode,
                phase,
                (restarts, restart_count),
                failure_action,
                last_failure,
            )| {
                MonitorStatus {
                    name,
                    application,
                    kind,
                    mode,
                    phase,
                    restarts,
                    restart_count,
                    failure_action,
                    last_failure,
                }
            },
        )
}

fn output_stream() -> impl Strategy<Value = OutputStream> {
    prop_oneof![Just(OutputStream::Stdout), Just(OutputStream::Stderr)]
}

fn output_chunk() -> impl Strategy<Value = OutputChunk> {
    (
        text(),
        output_stream(),
        any::<u64>(),
        vec(any::<u8>(), 0..64),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(id, stream, offset, data, total, eof)| OutputChunk {
            id,
            stream,
            offset,
            data: Blob::new(data).expect("small"),
            total,
            eof,
        })
}

fn counter_schema() -> impl Strategy<Value = CounterSchema> {
    let counter = (
        any::<u32>(),
        (text(), text(), text(), text()),
        option::of(finite()),
        option::of(finite()),
        any::<u32>(),
    )
        .prop_map(
            |(id, (name, description, units, kind), range_lower, range_upper, pace_ms)| {
                CounterDesc {
                    id,
                    name,
                    description,
                    units,
                    kind,
                    range_lower,
                    range_upper,
                    pace_ms,
                }
            },
        );
    let entity =
        (text(), vec(counter, 0..5)).prop_map(|(name, counters)| EntityDesc { name, counters });
    (any::<u32>(), vec(entity, 0..4), any::<bool>()).prop_map(|(generation, entities, complete)| {
        CounterSchema {
            generation,
            entities,
            complete,
        }
    })
}

fn counter_values() -> impl Strategy<Value = CounterValues> {
    (
        any::<u32>(),
        any::<u64>(),
        vec((any::<u32>(), finite()), 0..40),
    )
        .prop_map(|(generation, unix_ms, values)| CounterValues {
            generation,
            unix_ms,
            values,
        })
}

fn launch_spec() -> impl Strategy<Value = LaunchSpec> {
    (
        text(),
        vec(text(), 0..5),
        vec((text(), text()), 0..4),
        option::of(text()),
        option::of(text()),
    )
        .prop_map(|(id, argv, env, cwd, user)| LaunchSpec {
            id,
            argv,
            env,
            cwd,
            user,
        })
}

pub fn guest_msg() -> impl Strategy<Value = GuestMsg> {
    prop_oneof![
        hello().prop_map(GuestMsg::Hello),
        wire_error().prop_map(GuestMsg::Error),
        guest_state().prop_map(GuestMsg::State),
        Just(GuestMsg::Enable),
        Just(GuestMsg::Disable),
        Just(GuestMsg::MarkActive),
        prop_oneof![Just(AppState::Ok), Just(AppState::NeedReset)].prop_map(GuestMsg::PostAppState),
        Just(GuestMsg::GetAppStatus),
        Just(GuestMsg::IsEnabled),
        counter_schema().prop_map(GuestMsg::CounterSchema),
        counter_values().prop_map(GuestMsg::CounterValues),
        process_status().prop_map(GuestMsg::Process),
        monitor_event().prop_map(GuestMsg::Monitor),
        Just(GuestMsg::Ack),
        Just(GuestMsg::Ping),
        Just(GuestMsg::Pong),
        output_chunk().prop_map(GuestMsg::Output),
        vec(monitor_status(), 0..4).prop_map(GuestMsg::Monitors),
    ]
}

pub fn host_msg() -> impl Strategy<Value = HostMsg> {
    prop_oneof![
        hello().prop_map(HostMsg::Hello),
        wire_error().prop_map(HostMsg::Error),
        app_status().prop_map(HostMsg::AppStatus),
        any::<bool>().prop_map(HostMsg::Enabled),
        Just(HostMsg::Ack),
        launch_spec().prop_map(HostMsg::LaunchProcess),
        text().prop_map(|id| HostMsg::PollProcess { id }),
        (text(), any::<i32>()).prop_map(|(id, signal)| HostMsg::SignalProcess { id, signal }),
        Just(HostMsg::Ping),
        Just(HostMsg::Pong),
        (text(), output_stream(), any::<u64>())
            .prop_map(|(id, stream, from)| HostMsg::ReadOutput { id, stream, from }),
        text().prop_map(|id| HostMsg::ReleaseProcess { id }),
    ]
}

pub fn guest_frame() -> impl Strategy<Value = Frame<GuestMsg>> {
    (tag(), guest_msg()).prop_map(|(tag, msg)| Frame { tag, msg })
}

pub fn host_frame() -> impl Strategy<Value = Frame<HostMsg>> {
    (tag(), host_msg()).prop_map(|(tag, msg)| Frame { tag, msg })
}
