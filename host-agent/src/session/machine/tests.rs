//! The session machine with a virtual clock: what the host answers, when it pings, and exactly
//! when and why a session ends.

use std::time::{Duration, Instant};

use appmon_control::SessionEnd;
use appmon_wire::{
    AppState, AppStatus, Capabilities, CounterSchema, CounterValues, ErrorCode, Frame, GuestMsg,
    GuestState, Hello, HostMsg, Tag, WireError, PROTOCOL_VERSION,
};

use super::*;
use crate::config::Config;
use crate::policy::GuestRequest;
use crate::session::{HostCmd, SessionConfig, SessionEvent};

const GUEST_BOOT: [u8; 16] = [7; 16];

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Hello 500 ms, ping every 200 ms, dead after 600 ms, 10 frames/s with a burst of 4, writes
/// bounded at 300 ms.
fn config() -> SessionConfig {
    let mut c = Config {
        hello_timeout: ms(500),
        ping_interval: ms(200),
        dead_after_pings: 3,
        ..Config::default()
    };
    c.session.frames_per_second = 10;
    c.session.burst = 4;
    c.session.write_timeout = ms(300);
    SessionConfig::new(&c, [1; 16])
}

fn dialed(kind: LinkKind) -> Link {
    Link {
        kind,
        opening: Opening::HostFirst,
        keepalive: Some(config().keepalive),
    }
}

fn guest_hello() -> Frame<GuestMsg> {
    Frame::event(GuestMsg::Hello(Hello::new(
        "appmon-guest test",
        GUEST_BOOT,
        Capabilities::HEARTBEAT,
    )))
}

/// A session driven at virtual times (milliseconds after it opened).
struct Rig {
    config: SessionConfig,
    session: Session,
    t0: Instant,
    now: Instant,
    first: Vec<Action>,
}

impl Rig {
    fn open(link: Link) -> Rig {
        let config = config();
        let t0 = Instant::now();
        let (session, first) = Session::open(&config, link, "vm", t0);
        Rig {
            config,
            session,
            t0,
            now: t0,
            first,
        }
    }

    /// A dialed stream session past its handshake at 0 ms.
    fn greeted() -> Rig {
        let mut rig = Rig::open(dialed(LinkKind::Stream));
        rig.feed(Event::Frame(guest_hello()));
        rig
    }

    fn at(&mut self, t: u64) -> &mut Rig {
        self.now = self.t0 + ms(t);
        self
    }

    fn feed(&mut self, event: Event) -> Vec<Action> {
        self.session.handle(&self.config, event, self.now)
    }

    fn frame(&mut self, frame: Frame<GuestMsg>) -> Vec<Action> {
        self.feed(Event::Frame(frame))
    }

    fn tick(&mut self, t: u64) -> Vec<Action> {
        self.at(t).feed(Event::Tick)
    }

    /// Ticks at every deadline up to `t` ms; returns what each produced, with its time.
    fn run_to(&mut self, t: u64) -> Vec<(u64, Action)> {
        let mut out = Vec::new();
        while let Some(at) = self.session.next_deadline() {
            let due = at.duration_since(self.t0).as_millis() as u64;
            if due > t {
                break;
            }
            for a in self.tick(due) {
                out.push((due, a));
            }
        }
        self.at(t);
        out
    }
}

fn ended(actions: &[Action]) -> Option<&SessionEnd> {
    actions.iter().find_map(|a| match a {
        Action::End(e) => Some(e),
        _ => None,
    })
}

fn sent(actions: &[Action]) -> Vec<&Frame<HostMsg>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(f) => Some(f),
            _ => None,
        })
        .collect()
}

#[test]
fn dialed_link_opens_with_the_hosts_hello_and_serial_with_a_resync_first() {
    let stream = Rig::open(dialed(LinkKind::Stream));
    let serial = Rig::open(dialed(LinkKind::Serial));

    assert!(matches!(
        stream.first.as_slice(),
        [Action::Send(Frame {
            tag: Tag::Event,
            msg: HostMsg::Hello(_)
        })]
    ));
    assert!(matches!(
        serial.first.as_slice(),
        [
            Action::Resync,
            Action::Send(Frame {
                msg: HostMsg::Hello(_),
                ..
            })
        ]
    ));
}

#[test]
fn guest_first_link_waits_for_the_guests_hello_and_answers_it() {
    let mut rig = Rig::open(Link {
        opening: Opening::GuestFirst,
        ..dialed(LinkKind::Stream)
    });
    assert!(rig.first.is_empty(), "{:?}", rig.first);

    let actions = rig.at(30).frame(guest_hello());

    assert!(matches!(
        actions.as_slice(),
        [
            Action::Send(Frame {
                msg: HostMsg::Hello(_),
                ..
            }),
            Action::Deliver(SessionEvent::Hello {
                boot_id: GUEST_BOOT,
                ..
            })
        ]
    ));
}

#[test]
fn guest_without_hello_is_dropped_exactly_at_the_hello_timeout() {
    let mut rig = Rig::open(dialed(LinkKind::Stream));

    assert_eq!(rig.session.next_deadline(), Some(rig.t0 + ms(500)));
    assert!(rig.tick(499).is_empty());
    assert_eq!(
        ended(&rig.tick(500)),
        Some(&SessionEnd::NoHello { within_ms: 500 })
    );
    assert_eq!(rig.session.next_deadline(), None);
    assert!(rig.tick(600).is_empty(), "nothing after the end");
}

#[test]
fn keepalive_pings_each_interval_and_a_guest_silent_for_dead_after_is_dead() {
    let mut rig = Rig::greeted();

    let seen = rig.run_to(1000);

    let pings: Vec<u64> = seen
        .iter()
        .filter(|(_, a)| {
            matches!(
                a,
                Action::Send(Frame {
                    msg: HostMsg::Ping,
                    ..
                })
            )
        })
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(pings, [200, 400]);
    let ends: Vec<_> = seen
        .iter()
        .filter_map(|(t, a)| match a {
            Action::End(e) => Some((*t, e.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [(600, SessionEnd::ChannelDead { silent_ms: 600 })]);
}

#[test]
fn any_frame_from_the_guest_keeps_the_channel_alive() {
    let mut rig = Rig::greeted();
    rig.run_to(550);
    rig.at(550).frame(Frame::reply(1, GuestMsg::Pong));

    let seen = rig.run_to(1100);

    assert!(
        seen.iter()
            .all(|(t, a)| !matches!(a, Action::End(_)) || *t == 1150),
        "{seen:?}"
    );
    assert_eq!(
        ended(&rig.tick(1150)),
        Some(&SessionEnd::ChannelDead { silent_ms: 600 })
    );
}

#[test]
fn quiet_link_never_pings_and_never_judges_silence() {
    let mut rig = Rig::open(Link {
        keepalive: None,
        ..dialed(LinkKind::Stream)
    });
    rig.frame(guest_hello());

    assert_eq!(rig.session.next_deadline(), None);
    assert!(rig.tick(3_600_000).is_empty());
}

#[test]
fn flooding_guest_loses_its_session_at_the_first_frame_past_the_bucket() {
    let mut rig = Rig::greeted(); // the Hello took one of 4 tokens
    for _ in 0..3 {
        assert_eq!(ended(&rig.frame(Frame::event(GuestMsg::MarkActive))), None);
    }

    let actions = rig.frame(Frame::event(GuestMsg::MarkActive));

    assert_eq!(
        ended(&actions),
        Some(&SessionEnd::Flood {
            frames_per_second: 10,
            burst: 4
        })
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Deliver(_))));
}

#[test]
fn the_bucket_refills_at_its_rate() {
    let mut rig = Rig::greeted();
    for _ in 0..3 {
        rig.frame(Frame::event(GuestMsg::MarkActive));
    }

    // 10 frames/s: one token every 100 ms.
    assert_eq!(
        ended(&rig.at(100).frame(Frame::event(GuestMsg::MarkActive))),
        None
    );
    assert!(ended(&rig.at(100).frame(Frame::event(GuestMsg::MarkActive))).is_some());
}

#[test]
fn guest_messages_are_dispatched_or_answered() {
    let req = |msg| Frame::request(9, msg);
    let ev = |msg| Frame::event(msg);
    let to_supervisor = |req: GuestRequest, id| Action::Deliver(SessionEvent::Request { id, req });
    let reply = |msg| Action::Send(Frame::reply(9, msg));
    let not_handled = |kind: &str| {
        reply(HostMsg::Error(WireError::new(
            ErrorCode::NotAllowed,
            format!("{kind} is not handled by this host agent"),
        )))
    };
    let state = GuestState {
        enabled: true,
        need_reset: false,
        last_heartbeat_age_ms: Some(3),
        heartbeats: 1,
        last_status: None,
        processes: Vec::new(),
    };
    let cases: Vec<(Frame<GuestMsg>, Vec<Action>)> = vec![
        (
            ev(GuestMsg::State(state.clone())),
            vec![Action::Deliver(SessionEvent::State(state))],
        ),
        (
            req(GuestMsg::Enable),
            vec![to_supervisor(GuestRequest::Enable, Some(9))],
        ),
        (
            ev(GuestMsg::Disable),
            vec![to_supervisor(GuestRequest::Disable, None)],
        ),
        (
            req(GuestMsg::PostAppState(AppState::NeedReset)),
            vec![to_supervisor(
                GuestRequest::PostAppState(AppState::NeedReset),
                Some(9),
            )],
        ),
        (
            req(GuestMsg::GetAppStatus),
            vec![to_supervisor(GuestRequest::GetAppStatus, Some(9))],
        ),
        (
            req(GuestMsg::IsEnabled),
            vec![to_supervisor(GuestRequest::IsEnabled, Some(9))],
        ),
        (req(GuestMsg::Ping), vec![reply(HostMsg::Pong)]),
        (ev(GuestMsg::Ping), vec![]),
        (Frame::reply(4, GuestMsg::Pong), vec![]),
        (Frame::reply(4, GuestMsg::Ack), vec![]),
        (req(GuestMsg::Pong), vec![not_handled("Pong")]),
        (
            req(guest_hello().msg),
            vec![reply(HostMsg::Error(WireError::new(
                ErrorCode::BadRequest,
                "Hello twice",
            )))],
        ),
        (ev(guest_hello().msg), vec![]),
        (
            ev(GuestMsg::Error(WireError::new(ErrorCode::BadRequest, "x"))),
            vec![],
        ),
    ];
    for (frame, want) in cases {
        let mut rig = Rig::greeted();
        let got = rig.at(10).frame(frame.clone());
        assert_eq!(got, want, "{frame:?}");
    }
}

#[test]
fn heartbeat_is_stamped_when_read_and_acked_only_when_asked() {
    let mut rig = Rig::greeted();
    let at = rig.t0 + ms(40);

    let as_event = rig.at(40).frame(Frame::event(GuestMsg::MarkActive));
    let as_request = rig.at(40).frame(Frame::request(5, GuestMsg::MarkActive));

    assert_eq!(as_event, [Action::Deliver(SessionEvent::Heartbeat { at })]);
    assert_eq!(
        as_request,
        [
            Action::Send(Frame::reply(5, HostMsg::Ack)),
            Action::Deliver(SessionEvent::Heartbeat { at })
        ]
    );
}

#[test]
fn counter_frames_go_to_the_supervisor_values_stamped_when_read() {
    let mut rig = Rig::greeted();
    let at = rig.t0 + ms(40);
    let schema = CounterSchema {
        generation: 3,
        entities: Vec::new(),
        complete: true,
    };
    let values = CounterValues {
        generation: 3,
        unix_ms: 1,
        values: vec![(1, 2.5)],
    };

    let got_schema = rig
        .at(40)
        .frame(Frame::event(GuestMsg::CounterSchema(schema.clone())));
    let got_values = rig
        .at(40)
        .frame(Frame::request(6, GuestMsg::CounterValues(values.clone())));

    assert_eq!(
        got_schema,
        [Action::Deliver(SessionEvent::CounterSchema(schema))]
    );
    assert_eq!(
        got_values,
        [
            Action::Send(Frame::reply(6, HostMsg::Ack)),
            Action::Deliver(SessionEvent::CounterValues { values, at })
        ]
    );
}

#[test]
fn the_hosts_hello_offers_counters() {
    let rig = Rig::open(dialed(LinkKind::Stream));

    let hello = sent(&rig.first)
        .into_iter()
        .find_map(|f| match &f.msg {
            HostMsg::Hello(h) => Some(h.clone()),
            _ => None,
        })
        .expect("the host's Hello");

    assert!(hello.capabilities.contains(Capabilities::COUNTERS));
}

#[test]
fn before_hello_requests_get_bad_request_and_events_are_ignored() {
    let mut rig = Rig::open(dialed(LinkKind::Stream));

    let request = rig.frame(Frame::request(3, GuestMsg::MarkActive));
    let event = rig.frame(Frame::event(GuestMsg::MarkActive));

    assert_eq!(
        request,
        [Action::Send(Frame::reply(
            3,
            HostMsg::Error(WireError::new(
                ErrorCode::BadRequest,
                "MarkActive before Hello"
            ))
        ))]
    );
    assert!(event.is_empty());
    assert!(!rig.session.greeted());
}

#[test]
fn guest_error_before_hello_or_incompatibility_after_ends_the_session() {
    let refusal = WireError::new(
        ErrorCode::IncompatibleVersion {
            ours: PROTOCOL_VERSION + 1,
            theirs: PROTOCOL_VERSION,
        },
        "too old",
    );
    let mut before = Rig::open(dialed(LinkKind::Stream));
    let mut after = Rig::greeted();

    let a = before.frame(Frame::event(GuestMsg::Error(refusal.clone())));
    let b = after.frame(Frame::event(GuestMsg::Error(refusal.clone())));

    for actions in [a, b] {
        assert_eq!(
            ended(&actions),
            Some(&SessionEnd::GuestRefused {
                error: refusal.to_string()
            })
        );
    }
}

#[test]
fn incompatible_hello_is_told_why_and_ends_the_session() {
    let mut rig = Rig::open(dialed(LinkKind::Stream));
    let mut hello = Hello::new("appmon-guest future", GUEST_BOOT, Capabilities::HEARTBEAT);
    hello.min_protocol = PROTOCOL_VERSION + 1;
    hello.protocol = PROTOCOL_VERSION + 5;

    let actions = rig.frame(Frame::event(GuestMsg::Hello(hello)));

    let errors: Vec<_> = sent(&actions)
        .into_iter()
        .filter(|f| matches!(f.msg, HostMsg::Error(ref e) if matches!(e.code, ErrorCode::IncompatibleVersion { .. })))
        .collect();
    assert_eq!(errors.len(), 1, "{actions:?}");
    assert!(matches!(
        ended(&actions),
        Some(SessionEnd::Incompatible { .. })
    ));
}

#[test]
fn unknown_kinds_are_answered_unsupported_except_replies() {
    let unsupported = |kind| {
        HostMsg::Error(WireError::new(
            ErrorCode::Unsupported { kind },
            format!("message kind {kind} is newer than this host agent"),
        ))
    };
    let mut rig = Rig::greeted();

    let request = rig.feed(Event::BadFrame(BadFrame::UnknownKind {
        tag: Tag::Request(4),
        kind: 900,
    }));
    let event = rig.feed(Event::BadFrame(BadFrame::UnknownKind {
        tag: Tag::Event,
        kind: 901,
    }));
    let reply = rig.feed(Event::BadFrame(BadFrame::UnknownKind {
        tag: Tag::Reply(4),
        kind: 902,
    }));

    assert_eq!(request, [Action::Send(Frame::reply(4, unsupported(900)))]);
    assert_eq!(event, [Action::Send(Frame::event(unsupported(901)))]);
    assert!(reply.is_empty());
}

#[test]
fn bad_frame_ends_a_stream_session_but_is_skipped_on_a_serial_channel() {
    let mut stream = Rig::greeted();
    let mut serial = Rig::open(dialed(LinkKind::Serial));
    serial.frame(guest_hello());
    let bad = || Event::BadFrame(BadFrame::Broken("not COBS".into()));

    assert_eq!(
        ended(&stream.feed(bad())),
        Some(&SessionEnd::BadFrame {
            error: "not COBS".into()
        })
    );
    assert!(serial.feed(bad()).is_empty());
}

#[test]
fn transport_outcomes_end_the_session_with_their_reason() {
    let cases = [
        (Event::Closed, SessionEnd::ClosedByGuest),
        (
            Event::ReadFailed("reset by peer".into()),
            SessionEnd::ReadFailed {
                error: "reset by peer".into(),
            },
        ),
        (
            Event::WriteTimedOut,
            SessionEnd::WriteTimeout { after_ms: 300 },
        ),
        (
            Event::WriteFailed("broken pipe".into()),
            SessionEnd::WriteFailed {
                error: "broken pipe".into(),
            },
        ),
    ];
    for (event, want) in cases {
        let mut rig = Rig::greeted();
        assert_eq!(ended(&rig.feed(event)), Some(&want));
    }
}

#[test]
fn supervisor_commands_become_frames() {
    let mut rig = Rig::greeted();

    let status = rig.feed(Event::Command(HostCmd::Status(AppStatus::Green)));
    let reply = rig.feed(Event::Command(HostCmd::Reply {
        id: 8,
        msg: Box::new(HostMsg::Enabled(true)),
    }));

    assert_eq!(
        status,
        [Action::Send(Frame::event(HostMsg::AppStatus(
            AppStatus::Green
        )))]
    );
    assert_eq!(
        reply,
        [Action::Send(Frame::reply(8, HostMsg::Enabled(true)))]
    );
}

#[test]
fn process_and_monitor_frames_reach_the_supervisor_and_replies_to_its_requests_come_back() {
    use crate::session::host_request_id;
    use appmon_wire::{MonitorEvent, MonitorEventKind, ProcessState, ProcessStatus, Text};
    let mut rig = Rig::greeted();
    let status = ProcessStatus {
        id: Text::truncating("db.1"),
        state: ProcessState::Exited { code: 3 },
        command: Text::truncating("/bin/db"),
        user: Text::truncating("root"),
        started_unix_ms: 1,
        stdout_bytes: 0,
        stderr_bytes: 0,
    };
    let event = MonitorEvent {
        monitor: Text::truncating("m"),
        kind: MonitorEventKind::Recovered,
    };
    let request = host_request_id(5);

    let launch = rig.at(10).feed(Event::Command(HostCmd::Request {
        id: request,
        msg: Box::new(HostMsg::PollProcess {
            id: Text::truncating("db.1"),
        }),
    }));
    // Frames 200 ms apart: within the token bucket.
    let process = rig
        .at(200)
        .frame(Frame::event(GuestMsg::Process(status.clone())));
    let monitors = rig
        .at(400)
        .frame(Frame::event(GuestMsg::Monitors(Vec::new())));
    let monitor = rig
        .at(600)
        .frame(Frame::event(GuestMsg::Monitor(event.clone())));
    let answer = rig
        .at(800)
        .frame(Frame::reply(request, GuestMsg::Process(status.clone())));
    let pong = rig.at(1000).frame(Frame::reply(4, GuestMsg::Pong));

    assert_eq!(
        launch,
        [Action::Send(Frame::request(
            request,
            HostMsg::PollProcess {
                id: Text::truncating("db.1")
            }
        ))]
    );
    assert_eq!(
        process,
        [Action::Deliver(SessionEvent::Process(status.clone()))]
    );
    assert_eq!(
        monitors,
        [Action::Deliver(SessionEvent::Monitors(Vec::new()))]
    );
    assert_eq!(monitor, [Action::Deliver(SessionEvent::Monitor(event))]);
    assert_eq!(
        answer,
        [Action::Deliver(SessionEvent::Reply {
            id: request,
            msg: GuestMsg::Process(status)
        })]
    );
    assert_eq!(pong, []);
}

#[test]
fn the_host_says_it_takes_processes_and_monitors() {
    let caps = config().hello.capabilities;
    assert!(
        caps.contains(Capabilities::PROCESSES | Capabilities::MONITORS | Capabilities::HEARTBEAT)
    );
}

#[test]
fn sync_is_answered_synced() {
    let mut rig = Rig::greeted();

    assert_eq!(
        rig.at(10).feed(Event::Command(HostCmd::Sync)),
        [Action::Deliver(SessionEvent::Synced)]
    );
}

#[test]
fn a_paused_domain_is_not_pinged_nor_judged_and_its_silence_restarts_at_resume() {
    let mut rig = Rig::greeted();
    rig.run_to(100);
    rig.at(100)
        .feed(Event::Command(HostCmd::DomainPaused(true)));

    assert_eq!(rig.session.next_deadline(), None);
    assert!(rig.tick(5_000).is_empty());

    rig.at(5_000)
        .feed(Event::Command(HostCmd::DomainPaused(false)));
    let seen = rig.run_to(6_000);
    let first_ping = seen
        .iter()
        .find(|(_, a)| {
            matches!(
                a,
                Action::Send(Frame {
                    msg: HostMsg::Ping,
                    ..
                })
            )
        })
        .map(|(t, _)| *t);
    assert_eq!(first_ping, Some(5_200));
    let ends: Vec<_> = seen
        .iter()
        .filter_map(|(t, a)| match a {
            Action::End(e) => Some((*t, e.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [(5_600, SessionEnd::ChannelDead { silent_ms: 600 })]);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// [`config`] with the default flood bounds: a backlog read at once after a stop is no
    /// flood.
    fn roomy() -> SessionConfig {
        let mut c = Config {
            hello_timeout: ms(500),
            ping_interval: ms(200),
            dead_after_pings: 3,
            ..Config::default()
        };
        c.session.write_timeout = ms(300);
        SessionConfig::new(&c, [1; 16])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        /// The guest sends something at least once per `dead_after` (600 ms); the host agent is
        /// not scheduled during arbitrary stretches, and reads what was sent meanwhile when it
        /// wakes, before it looks at a deadline (the shell's `biased` select). The link is
        /// never declared dead.
        #[test]
        fn a_link_whose_guest_speaks_within_dead_after_is_never_dead(
            gaps in prop::collection::vec(1u64..600, 1..60),
            stops in prop::collection::vec((0u64..3_000, 0u64..3_000), 0..4),
        ) {
            let config = roomy();
            let t0 = Instant::now();
            let (mut session, _) = Session::open(&config, dialed(LinkKind::Stream), "vm", t0);
            session.handle(&config, Event::Frame(guest_hello()), t0);
            let mut sends = Vec::new();
            let mut t = 0u64;
            for g in gaps {
                t += g;
                sends.push(t);
            }
            let mut windows = Vec::new();
            let mut at = 0u64;
            for (gap, len) in stops {
                at += gap;
                windows.push((at, at + len));
                at += len;
            }
            let wake_of = |t: u64| {
                windows.iter().find(|(a, b)| *a <= t && t < *b).map_or(t, |(_, b)| *b)
            };
            let end = wake_of(t);
            let mut read = 0usize;
            loop {
                let deadline = session
                    .next_deadline()
                    .map(|d| wake_of(d.duration_since(t0).as_millis() as u64));
                let next_read = sends.get(read).map(|&s| wake_of(s));
                let Some(now) = [deadline, next_read].into_iter().flatten().min() else {
                    break;
                };
                if now > end {
                    break;
                }
                let at = t0 + ms(now);
                let mut out = Vec::new();
                // Input first: everything readable at the wake.
                while sends.get(read).is_some_and(|&s| wake_of(s) <= now) {
                    read += 1;
                    out.extend(session.handle(
                        &config,
                        Event::Frame(Frame::event(GuestMsg::MarkActive)),
                        at,
                    ));
                }
                if deadline == Some(now) {
                    out.extend(session.handle(&config, Event::Tick, at));
                }
                let end = out.iter().find(|a| matches!(a, Action::End(_)));
                prop_assert!(end.is_none(), "{:?} at {} ms; sends {:?}, stops {:?}", end, now, sends, windows);
            }
            prop_assert_eq!(read, sends.len());
        }
    }
}
