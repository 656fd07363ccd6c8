//! The JSON forms are a published schema (host-agent/README.md): pinned here.

use super::*;

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serialises")
}

#[test]
fn requests_have_a_stable_json_form() {
    let show = Request::Show {
        domain: "vm1".into(),
    };
    assert_eq!(json(&show), r#"{"cmd":"show","domain":"vm1"}"#);
    assert_eq!(
        serde_json::from_str::<Request>(r#"{"cmd":"list"}"#).expect("parses"),
        Request::List
    );
    assert!(serde_json::from_str::<Request>(r#"{"cmd":"show","domain":"a","x":1}"#).is_err());
}

#[test]
fn vocabulary_is_spelled_as_operators_write_it() {
    assert_eq!(json(&ResetMethod::PowerCycle), r#""power-cycle""#);
    assert_eq!(json(&ResetCause::NeedReset), r#""need_reset""#);
    assert_eq!(
        json(&DomainEvent::Started(StartedReason::Booted)),
        r#"{"started":"booted"}"#
    );
    assert_eq!(json(&DomainEvent::Rebooted), r#""rebooted""#);
    assert_eq!(
        json(&DomainState::Paused(PausedReason::StartingUp)),
        r#"{"paused":"starting_up"}"#
    );
    assert_eq!(json(&Status::Gray), r#""gray""#);
    for m in [ResetMethod::Reset, ResetMethod::PowerCycle] {
        assert_eq!(ResetMethod::parse(m.as_str()), Some(m));
        assert_eq!(json(&m), format!("\"{m}\""));
    }
}

#[test]
fn history_entries_carry_their_kind_typed_and_in_words() {
    let entry = HistoryEntry::new(
        7,
        Level::Warn,
        HistoryKind::Decision(Decision::Reset {
            method: ResetMethod::Reset,
            cause: ResetCause::HeartbeatsStopped,
            in_window: 1,
            max_resets: 3,
            completes_reset: false,
        }),
    );

    assert_eq!(
        json(&entry),
        r#"{"unix_ms":7,"level":"warn","kind":{"decision":{"reset":{"method":"reset","cause":"heartbeats_stopped","in_window":1,"max_resets":3,"completes_reset":false}}},"text":"reset: heartbeats stopped (1 of 3 in the window)"}"#
    );
    assert_eq!(
        entry.reset_decision(),
        Some((ResetMethod::Reset, ResetCause::HeartbeatsStopped))
    );
    let back: HistoryEntry = serde_json::from_str(&json(&entry)).expect("parses");
    assert_eq!(back, entry);
}

#[test]
fn a_vm_that_left_says_why_in_json_and_in_words() {
    let entry = HistoryEntry::new(
        9,
        Level::Info,
        HistoryKind::Decision(Decision::Left {
            why: "migrated away".into(),
        }),
    );
    assert_eq!(
        json(&entry),
        r#"{"unix_ms":9,"level":"info","kind":{"decision":{"left":{"why":"migrated away"}}},"text":"left this host (migrated away): no longer monitored here"}"#
    );
    let back: HistoryEntry = serde_json::from_str(&json(&entry)).expect("parses");
    assert_eq!(back, entry);
}

#[test]
fn libvirt_and_guest_entries_read_as_before() {
    let boot = HistoryEntry::new(
        1,
        Level::Info,
        HistoryKind::Libvirt(DomainEvent::Started(StartedReason::Booted)),
    );
    let ended = HistoryEntry::new(
        2,
        Level::Warn,
        HistoryKind::Guest(GuestEvent::SessionEnded {
            reason: SessionEnd::NoHello { within_ms: 500 },
        }),
    );

    assert!(boot.is_boot_event());
    assert_eq!(boot.text, "started (booted)");
    assert_eq!(
        ended.text,
        "session ended: no Hello within 500 ms of the connection"
    );
    assert_eq!(
        json(&ended.kind),
        r#"{"guest":{"session_ended":{"reason":{"no_hello":{"within_ms":500}}}}}"#
    );
}

#[test]
fn show_document_round_trips_with_its_version() {
    let view = VmView {
        name: "vm1".into(),
        uuid: "u".into(),
        monitored: true,
        spec_error: None,
        status: Some(Status::Green),
        enabled: true,
        need_reset: false,
        last_heartbeat_age_ms: Some(120),
        claimed_heartbeat_age_ms: None,
        resets_in_window: 0,
        gave_up: false,
        alarm: None,
        connected: true,
        guest_boot_id: Some("b".into()),
        guest_agent: Some("appmon-guest 0.1.0".into()),
        domain_state: DomainState::Running(RunningReason::Booted),
        transport: Some("hybrid vsock /x port 5315".into()),
        connect_failure: None,
        policy: Some(PolicyView {
            failure_interval_ms: 4000,
            min_uptime_ms: 15000,
            max_resets: 3,
            reset_window_ms: 3_600_000,
            reset_method: ResetMethod::Reset,
            channel_timeout_ms: 30_000,
        }),
        libvirt_lost: None,
        monitors: vec![MonitorView {
            name: "m".into(),
            application: "app".into(),
            kind: MonitorKind::Process,
            mode: MonitorMode::Both,
            phase: MonitorPhase::Healthy,
            restarts: 0,
            restart_count: 2,
            failure_action: FailureAction::NeedReset,
            last_failure: None,
        }],
        applications: Vec::new(),
        processes: vec![ProcessView {
            id: "db.1".into(),
            state: ProcessState::Running { pid: 7 },
            command: "/bin/db".into(),
            user: "root".into(),
            started_unix_ms: 1,
            stdout_bytes: 0,
            stderr_bytes: 0,
        }],
        history: vec![HistoryEntry::new(
            1,
            Level::Info,
            HistoryKind::Operator(OperatorAction::MetadataWritten),
        )],
    };
    let text = json(&ShowDocument::new(view.clone()));

    assert!(
        text.starts_with(r#"{"schema_version":1,"domain":{"name":"vm1""#),
        "{text}"
    );
    let back: ShowDocument = serde_json::from_str(&text).expect("parses");
    assert_eq!(back.domain, view);
    assert!(back.domain.is(Status::Green));
}

#[test]
fn readers_ignore_fields_they_do_not_know() {
    let text = r#"{"schema_version":1,"domains":[],"future":true}"#;
    let doc: ListDocument = serde_json::from_str(text).expect("parses");
    assert!(doc.domains.is_empty());
}

#[test]
fn guest_work_has_a_stable_json_form() {
    let monitor = HistoryEntry::new(
        2,
        Level::Warn,
        HistoryKind::Monitor(MonitorNote {
            monitor: "m".into(),
            report: MonitorReport::Restarted {
                attempt: 1,
                ok: true,
            },
        }),
    );
    let process = HistoryEntry::new(
        3,
        Level::Warn,
        HistoryKind::Process(ProcessNote::Ended {
            application: Some("db".into()),
            id: "db.1".into(),
            end: ProcessEnd::Killed { signal: 9 },
        }),
    );

    assert_eq!(
        json(&monitor),
        r#"{"unix_ms":2,"level":"warn","kind":{"monitor":{"monitor":"m","report":{"restarted":{"attempt":1,"ok":true}}}},"text":"monitor m: restarted, attempt 1 (ok: true)"}"#
    );
    assert_eq!(
        json(&process),
        r#"{"unix_ms":3,"level":"warn","kind":{"process":{"ended":{"application":"db","id":"db.1","end":{"killed":{"signal":9}}}}},"text":"application db: process db.1 killed by signal 9, reason code 137"}"#
    );
    assert_eq!(
        json(&ResetCause::ManagedApplication),
        r#""managed_application""#
    );
    let launch: Request = serde_json::from_str(
        r#"{"cmd":"launch","domain":"vm1","launch":{"id":"run.1","argv":["/bin/true"]}}"#,
    )
    .expect("parses");
    assert_eq!(
        launch,
        Request::Launch {
            domain: "vm1".into(),
            launch: LaunchRequest {
                id: "run.1".into(),
                argv: vec!["/bin/true".into()],
                env: Vec::new(),
                cwd: None,
                user: None,
            },
        }
    );
}

#[test]
fn counters_request_names_its_entity_only_when_asked() {
    let all = Request::Counters {
        domain: "vm1".into(),
        entity: None,
    };
    let cpu = Request::Counters {
        domain: "vm1".into(),
        entity: Some("CPU".into()),
    };

    assert_eq!(json(&all), r#"{"cmd":"counters","domain":"vm1"}"#);
    assert_eq!(
        json(&cpu),
        r#"{"cmd":"counters","domain":"vm1","entity":"CPU"}"#
    );
    assert_eq!(
        serde_json::from_str::<Request>(r#"{"cmd":"counters","domain":"vm1"}"#).expect("parses"),
        all
    );
}

#[test]
fn an_older_view_without_guest_work_still_reads() {
    let text = r#"{"name":"vm1","uuid":"u","monitored":false,"spec_error":null,"status":null,"enabled":false,"need_reset":false,"last_heartbeat_age_ms":null,"resets_in_window":0,"gave_up":false,"alarm":null,"connected":false,"guest_boot_id":null,"guest_agent":null,"domain_state":"other","transport":null,"policy":null}"#;
    let view: VmView = serde_json::from_str(text).expect("parses");
    assert!(view.monitors.is_empty() && view.processes.is_empty());
}

#[test]
fn counters_document_round_trips_with_its_version() {
    let view = CountersView {
        domain: "vm1".into(),
        generation: Some(2),
        refused_frames: 1,
        entities: vec![EntityView {
            name: "CPU".into(),
            counters: vec![CounterView {
                name: "CPU Total".into(),
                description: "CPU use, all CPUs".into(),
                units: "%".into(),
                kind: String::new(),
                pace_ms: 1000,
                range_lower: Some(0.0),
                range_upper: Some(100.0),
                value: Some(12.5),
                unix_ms: Some(1_764_662_400_123),
            }],
        }],
    };
    let text = json(&CountersDocument::new(view.clone()));

    assert!(
        text.starts_with(r#"{"schema_version":1,"counters":{"domain":"vm1","generation":2"#),
        "{text}"
    );
    let back: CountersDocument = serde_json::from_str(&text).expect("parses");
    assert_eq!(back.counters, view);
    assert_eq!(
        back.counters
            .counter("CPU", "CPU Total")
            .and_then(|c| c.value),
        Some(12.5)
    );
}

#[test]
fn a_connect_failure_entry_reads_as_its_reason() {
    let entry = HistoryEntry::new(
        3,
        Level::Warn,
        HistoryKind::Guest(GuestEvent::ConnectFailed {
            reason: ConnectFailure::new(ConnectFailureKind::DialBadReply, "bad reply \"NOPE\""),
            held_back: 2,
        }),
    );
    assert_eq!(
        entry.text,
        "no session: the vsock backend answered the dial wrongly: bad reply \"NOPE\" (2 earlier changes of reason not recorded: too many)"
    );
    assert_eq!(
        json(&entry.kind),
        r#"{"guest":{"connect_failed":{"reason":{"kind":"dial_bad_reply","detail":"bad reply \"NOPE\""},"held_back":2}}}"#
    );
    let back: HistoryEntry = serde_json::from_str(&json(&entry)).expect("parses");
    assert_eq!(back, entry);
}

#[test]
fn the_host_agents_own_time_reads_as_what_happened_to_it() {
    let pause = HistoryEntry::new(
        5,
        Level::Warn,
        HistoryKind::Host(HostEvent::SchedulingPause { paused_ms: 7012 }),
    );
    let moved = HistoryEntry::new(
        6,
        Level::Warn,
        HistoryKind::Host(HostEvent::WallClockMoved { by_ms: -3_600_000 }),
    );

    assert_eq!(
        pause.text,
        "the host agent was not scheduled for 7012 ms: failure clocks restarted, nothing judged on the gap"
    );
    assert_eq!(
        json(&pause.kind),
        r#"{"host":{"scheduling_pause":{"paused_ms":7012}}}"#
    );
    assert_eq!(
        json(&moved.kind),
        r#"{"host":{"wall_clock_moved":{"by_ms":-3600000}}}"#
    );
    assert_eq!(pause.kind.name(), "host");
    for entry in [pause, moved] {
        let back: HistoryEntry = serde_json::from_str(&json(&entry)).expect("parses");
        assert_eq!(back, entry);
    }
}
