//! Golden bytes: the wire format of a message never changes once released. If one of these
//! fails, an existing variant or field was changed or reordered; append instead (crate docs,
//! "Version rule").

use appmon_wire::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check<M: WireMessage + PartialEq>(frame: Frame<M>, expected: &str) {
    let bytes = encode_frame(&frame).expect("encodes");
    assert_eq!(hex(&bytes), expected, "{frame:?}");
    let back = decode_all::<M>(&bytes)
        .pop()
        .expect("one frame")
        .expect("decodes");
    assert_eq!(back, frame);
}

#[test]
fn golden_guest_frames() {
    check(Frame::event(GuestMsg::MarkActive), "03020500");
    check(Frame::request(1, GuestMsg::Enable), "0103010300");
    check(Frame::request(300, GuestMsg::GetAppStatus), "0104ac020700");
    check(
        Frame::event(GuestMsg::PostAppState(AppState::NeedReset)),
        "0402060100",
    );
    check(
        Frame::event(GuestMsg::Hello(Hello {
            protocol: 1,
            min_protocol: 1,
            agent: "appmon-guest 0.1.0".into(),
            boot_id: [0xab; 16],
            capabilities: Capabilities::HEARTBEAT | Capabilities::PROCESSES,
        })),
        "0202270101126170706d6f6e2d677565737420302e312e30abababababababababababababababab0300",
    );
    check(
        Frame::event(GuestMsg::State(GuestState {
            enabled: true,
            need_reset: false,
            last_heartbeat_age_ms: Some(1500),
            heartbeats: 7,
            last_status: Some(AppStatus::Green),
            processes: vec![ProcessStatus {
                id: "db".into(),
                state: ProcessState::Exited { code: 3 },
                command: "db".into(),
                user: "root".into(),
                started_unix_ms: 1,
                stdout_bytes: 2,
                stderr_bytes: 0,
            }],
        })),
        "040202010601dc0b07011101026462010602646204726f6f7401020100",
    );
    check(
        Frame::event(GuestMsg::CounterValues(CounterValues {
            generation: 2,
            unix_ms: 1_700_000_000_000,
            values: vec![(1, 0.5), (2, 1024.0)],
        })),
        "0d020a0280d095ffbc310d0101010101010106e03f02802000",
    );
    check(
        Frame::reply(
            9,
            GuestMsg::Error(WireError::new(ErrorCode::Unsupported { kind: 99 }, "newer")),
        ),
        "040109010863056e6577657200",
    );
}

/// The kinds and shapes protocol 2 added (crate docs, "Version rule").
#[test]
fn golden_protocol_2_frames() {
    check(
        Frame::event(GuestMsg::CounterSchema(CounterSchema {
            generation: 1,
            entities: vec![EntityDesc {
                name: "Plants".into(),
                counters: vec![CounterDesc {
                    id: 1,
                    name: "tree".into(),
                    description: "Any tree".into(),
                    units: "#".into(),
                    kind: "MAX".into(),
                    range_lower: None,
                    range_upper: None,
                    pace_ms: 2000,
                }],
            }],
            complete: true,
        })),
        "220209010106506c616e74730101047472656508416e7920747265650123034d41580104d00f0100",
    );
    check(
        Frame::reply(
            3,
            GuestMsg::Output(OutputChunk {
                id: "job".into(),
                stream: OutputStream::Stderr,
                offset: 0,
                data: appmon_wire::text::Blob::new(b"hi\n".to_vec()).expect("small"),
                total: 3,
                eof: true,
            }),
        ),
        "09010310036a6f6201070368690a030100",
    );
    check(
        Frame::event(GuestMsg::Monitors(vec![MonitorStatus {
            name: "db".into(),
            application: "db".into(),
            kind: MonitorKind::Process,
            mode: MonitorMode::Both,
            phase: MonitorPhase::Healthy,
            restarts: 0,
            restart_count: 3,
            failure_action: FailureAction::NeedReset,
            last_failure: None,
        }])),
        "0a0211010264620264620302010303020100",
    );
    check(
        Frame::event(GuestMsg::Monitor(MonitorEvent {
            monitor: "db".into(),
            kind: MonitorEventKind::Restarted {
                attempt: 2,
                ok: true,
            },
        })),
        "09020c02646204020100",
    );
    check(
        Frame::request(
            7,
            HostMsg::ReadOutput {
                id: "job".into(),
                stream: OutputStream::Stdout,
                from: 300,
            },
        ),
        "0107070a036a6f6203ac0200",
    );
    check(
        Frame::request(8, HostMsg::ReleaseProcess { id: "job".into() }),
        "0107080b036a6f6200",
    );
}

#[test]
fn golden_host_frames() {
    check(
        Frame::event(HostMsg::AppStatus(AppStatus::Gray)),
        "0402020200",
    );
    check(
        Frame::reply(1, HostMsg::AppStatus(AppStatus::Green)),
        "040101020100",
    );
    check(Frame::reply(2, HostMsg::Enabled(true)), "050102030100");
    check(
        Frame::request(
            5,
            HostMsg::LaunchProcess(LaunchSpec {
                id: "app1".into(),
                argv: vec!["/bin/true".into()],
                env: vec![("A".into(), "1".into())],
                cwd: Some("/".into()),
                user: None,
            }),
        ),
        "011b0505046170703101092f62696e2f74727565010141013101012f0100",
    );
    check(
        Frame::request(
            6,
            HostMsg::SignalProcess {
                id: "app1".into(),
                signal: 15,
            },
        ),
        "0109060704617070311e00",
    );
}
