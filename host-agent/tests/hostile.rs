//! A hostile guest cannot hurt the host: garbage, oversized frames, floods, a silent peer and
//! one that never reads what the host writes each lose their own session (logged in their history), while well-behaved guests beside them
//! keep their timing and a silent one among them is still reset on time.

mod common;

use std::path::Path;

use appmon_control::{SessionEnd, Status};
use appmon_wire::{Capabilities, Frame, GuestCodec, GuestMsg, Hello, HostMsg};
use common::sim::GuestSim;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;

#[derive(Debug, Clone, Copy)]
enum Hostility {
    Garbage,
    Oversized,
    Flood,
    Silent,
    SlowWriter,
    NonReader,
}

async fn hybrid_ok(s: &mut UnixStream) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b).await? == 0 || b[0] == b'\n' {
            break;
        }
    }
    s.write_all(b"OK 1\n").await
}

/// Takes the host's Hello and answers with a valid one as agent `agent`; `None` when the host
/// did not greet or the answer could not be written.
async fn greeted(
    s: UnixStream,
    agent: &str,
    boot_byte: u8,
) -> Option<Framed<UnixStream, GuestCodec>> {
    let mut framed = Framed::new(s, GuestCodec::new());
    if !matches!(
        framed.next().await,
        Some(Ok(Ok(Frame {
            msg: HostMsg::Hello(_),
            ..
        })))
    ) {
        return None;
    }
    let hello = Hello::new(agent, [boot_byte; 16], Capabilities::HEARTBEAT);
    framed
        .send(Frame::event(GuestMsg::Hello(hello)))
        .await
        .ok()?;
    Some(framed)
}

async fn hostile_peer(path: &Path, kind: Hostility) -> tokio::task::JoinHandle<()> {
    let listener = UnixListener::bind(path).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if hybrid_ok(&mut s).await.is_err() {
                    return;
                }
                match kind {
                    Hostility::Garbage => {
                        // Frames that are not COBS/postcard, delimiters included.
                        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
                        let _ = s.write_all(&junk).await;
                        let mut sink = [0u8; 1024];
                        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                    Hostility::Oversized => {
                        // One endless frame: no delimiter, ever.
                        let chunk = vec![0x41u8; 16 * 1024];
                        for _ in 0..64 {
                            if s.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                    Hostility::Flood => {
                        let Some(mut framed) = greeted(s, "flood", 7).await else {
                            return;
                        };
                        for _ in 0..1_000_000 {
                            if framed
                                .send(Frame::event(GuestMsg::MarkActive))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Hostility::SlowWriter => {
                        // A valid Hello, one byte every 100 ms: never complete in time.
                        let hello = Hello::new("slow", [5; 16], Capabilities::HEARTBEAT);
                        let Ok(bytes) =
                            appmon_wire::encode_frame(&Frame::event(GuestMsg::Hello(hello)))
                        else {
                            return;
                        };
                        for b in bytes {
                            if s.write_all(&[b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(ms(100)).await;
                        }
                    }
                    Hostility::NonReader => {
                        // Takes the host's Hello, then only writes: pings below the flood
                        // limit, each asking for a Pong it never reads, until the host's writes
                        // stall on the full socket buffer and it gives up on the session.
                        let Some(mut framed) = greeted(s, "deaf", 9).await else {
                            return;
                        };
                        // At most a minute at 45 frames/s (the limit here is 50/s).
                        for id in 1..=2700u32 {
                            if framed
                                .send(Frame::request(id, GuestMsg::Ping))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            tokio::time::sleep(ms(22)).await;
                        }
                    }
                    Hostility::Silent => {
                        // Connects and then neither reads nor writes.
                        std::future::pending::<()>().await;
                        drop(s);
                    }
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_lose_their_sessions_and_cost_others_nothing() {
    let lab = Lab::in_process("hostile");
    let mut tasks = Vec::new();
    for (name, kind) in [
        ("garbage", Hostility::Garbage),
        ("oversized", Hostility::Oversized),
        ("flood", Hostility::Flood),
        ("silent", Hostility::Silent),
        ("slow", Hostility::SlowWriter),
        ("deaf", Hostility::NonReader),
    ] {
        let path = lab.sock(name);
        tasks.push(hostile_peer(&path, kind).await);
        lab.running(name, Some(&hybrid_spec(&path)));
    }
    let mut good = Vec::new();
    for (i, name) in ["good1", "good2", "good3"].into_iter().enumerate() {
        let g = GuestSim::new(i as u8 + 1, Some(ms(200)));
        tasks.push(lab.guest_domain(name, &g).0);
        good.push(g);
    }
    let mut config = lab.config();
    config.session.max_frame = 4096;
    config.session.frames_per_second = 50;
    config.session.burst = 100;
    config.session.write_timeout = ms(300);
    let host = lab.start_host(config).await;

    for g in &good {
        assert!(g.wait(ms(5000), |g| g.heartbeats() >= 3).await);
    }
    // Each loses its session for its own reason, with the configured bound in it.
    type Reason = fn(&SessionEnd) -> bool;
    let reasons: [(&str, Reason); 6] = [
        ("garbage", |e| matches!(e, SessionEnd::BadFrame { .. })),
        (
            "oversized",
            |e| matches!(e, SessionEnd::BadFrame { error } if error.contains("exceeds 4096 bytes")),
        ),
        ("flood", |e| {
            *e == SessionEnd::Flood {
                frames_per_second: 50,
                burst: 100,
            }
        }),
        ("silent", |e| *e == SessionEnd::NoHello { within_ms: 500 }),
        ("slow", |e| *e == SessionEnd::NoHello { within_ms: 500 }),
        // Some hundred unread Pongs fill a Unix socket's send buffer: seconds at 45/s.
        ("deaf", |e| *e == SessionEnd::WriteTimeout { after_ms: 300 }),
    ];
    for (name, reason) in reasons {
        let view = host
            .wait_show(&lab.name(name), ms(30_000), |v| session_ended(v, reason))
            .await;
        assert!(session_ended(&view, reason), "{name}: {view}");
        assert!(!view.enabled);
    }
    // While the hostile peers keep reconnecting, a good guest that stops is reset on time.
    good[1].set_heartbeat(None);
    let view = host
        .wait_show(&lab.name("good2"), ms(5000), |v| {
            !v.reset_decisions().is_empty()
        })
        .await;
    let reset = view.reset_decisions();
    let reset = reset.first().expect("good2 reset");
    let last = good[1].last_heartbeat_unix_ms().expect("beats");
    // Both in whole milliseconds: never more than the true gap rounded down.
    let latency = reset.unix_ms as i64 - last.floor() as i64;
    assert!(
        (1000..=1400).contains(&latency),
        "reset {latency} ms after the last heartbeat"
    );
    let before = [good[0].heartbeats(), good[2].heartbeats()];
    tokio::time::sleep(ms(1000)).await;
    assert!(good[0].heartbeats() > before[0] && good[2].heartbeats() > before[1]);
    // (good2's simulated guest does not reboot, so a power-cycle may follow the reset.)
    for name in [
        "garbage",
        "oversized",
        "flood",
        "silent",
        "slow",
        "deaf",
        "good1",
        "good3",
    ] {
        let view = host.show(&lab.name(name)).await;
        assert!(
            view.reset_decisions().is_empty(),
            "only the silent good guest is reset, not {name}: {view}"
        );
    }
    let view = host.show(&lab.name("good1")).await;
    assert!(view.is(Status::Green), "{view}");
    host.stop().await;
    for t in tasks {
        t.abort();
    }
}

// ---- issue 11: a guest's words are data, its connection failures are visible ----

/// The host agent's log lines (INFO and up) of every test of this file, captured once for the
/// process: each test reads the lines naming its own domains.
fn log_lines() -> Vec<String> {
    use std::sync::{Arc, Mutex, OnceLock};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static LOG: OnceLock<Buffer> = OnceLock::new();
    let buffer = LOG.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        buffer
    });
    let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    text.lines().map(str::to_owned).collect()
}

/// Where the host agent listens for the announcements of the guest at `uds`.
fn announce_path(uds: &Path) -> std::path::PathBuf {
    let mut path = uds.as_os_str().to_owned();
    path.push("_5315");
    path.into()
}

/// Connects to the host agent's listening socket once it exists.
async fn connect_when_listening(path: &Path) -> UnixStream {
    let deadline = tokio::time::Instant::now() + ms(5000);
    loop {
        if let Ok(s) = UnixStream::connect(path).await {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never listened",
            path.display()
        );
        tokio::time::sleep(ms(20)).await;
    }
}

/// Reads until the host closes the connection (at most 5 s).
async fn until_closed(s: &mut UnixStream) {
    let mut sink = [0u8; 4096];
    let closed = tokio::time::timeout(ms(5000), async {
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "the host never closed the connection");
}

fn connect_failures(view: &appmon_control::VmView) -> Vec<(appmon_control::ConnectFailure, u64)> {
    view.history
        .iter()
        .filter_map(|h| match h.guest() {
            Some(appmon_control::GuestEvent::ConnectFailed { reason, held_back }) => {
                Some((reason.clone(), *held_back))
            }
            _ => None,
        })
        .collect()
}

/// The log lines that name domain `name` and say `what`.
fn lines_of(name: &str, what: &str) -> Vec<String> {
    let domain = format!("domain={name}");
    log_lines()
        .into_iter()
        .filter(|l| l.contains(&domain) && l.contains(what))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_one_line_and_one_entry_per_change_of_reason() {
    use appmon_control::ConnectFailureKind;
    log_lines();
    let lab = Lab::in_process("reasons");
    let path = lab.sock("loop");
    lab.running("loop", Some(&hybrid_spec(&path)));
    let mut config = lab.config();
    // This guest calls in: no dial is wanted (and none is made once it has called).
    config.dial_after = std::time::Duration::from_secs(600);
    let host = lab.start_host(config).await;
    let at = announce_path(&path);
    // Three connections sending garbage, three closed at once, three of garbage again; paced
    // within the listener's rate, so that each is read.
    for garbage in [true, false, true] {
        for _ in 0..3 {
            let mut s = connect_when_listening(&at).await;
            if garbage {
                s.write_all(b"\x01\x02GET / HTTP/1.0\r\n\x00")
                    .await
                    .expect("write");
            } else {
                s.shutdown().await.expect("shutdown");
            }
            until_closed(&mut s).await;
            tokio::time::sleep(ms(150)).await;
        }
    }
    let name = lab.name("loop");
    let view = host
        .wait_show(&name, ms(5000), |v| {
            connect_failures(v).len() == 3
                && v.connect_failure.as_ref().is_some_and(|f| f.times == 3)
        })
        .await;
    // Nothing more comes of them later.
    tokio::time::sleep(ms(300)).await;
    let view = {
        let again = host.show(&name).await;
        assert_eq!(connect_failures(&again), connect_failures(&view), "{again}");
        again
    };
    let entries = connect_failures(&view);
    assert_eq!(entries.len(), 3, "{view}");
    let (first, second) = (&entries[0].0, &entries[1].0);
    assert_eq!(first.kind, ConnectFailureKind::NotAFrame, "{first}");
    assert_ne!(first, second);
    assert_eq!(
        &entries[2].0, first,
        "garbage again is the first reason again"
    );
    assert!(second.kind == ConnectFailureKind::ClosedEarly, "{second}");
    assert!(entries.iter().all(|(_, held_back)| *held_back == 0));
    let failure = view.connect_failure.as_ref().expect("the latest reason");
    assert_eq!(&failure.reason, first);
    assert_eq!(failure.times, 3);
    assert!(failure.first_unix_ms < failure.last_unix_ms, "{failure:?}");
    assert!(!view.connected);

    // One log line per change of reason, and no other line about these connections.
    let lines = lines_of(&name, "no session with the guest agent");
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(
        lines_of(&name, "WARN").len(),
        3,
        "no other warning about them"
    );

    let (code, out, _) = host.ctl(&["show", &name]).await;
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.contains("no session:"))
        .unwrap_or_else(|| panic!("no `no session` line in:\n{out}"));
    assert!(
        line.contains(&format!("no session: {first} (at ")) && line.contains(", 3 times since "),
        "{line}"
    );
    let (_, json, _) = host.ctl(&["--json", "show", &name]).await;
    assert!(json.contains("\"connect_failure\""), "{json}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dial_is_one_entry_until_its_reason_changes() {
    use appmon_control::ConnectFailureKind;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    log_lines();
    let lab = Lab::in_process("dials");
    let path = lab.sock("nope");
    // A vsock backend whose guest never listens right: four dials answered `NOPE`, then every
    // one dropped at once, as a backend does when nothing listens on the port in the guest.
    let listener = UnixListener::bind(&path).expect("bind");
    let dials = Arc::new(AtomicU32::new(0));
    let counted = dials.clone();
    let backend = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                while matches!(s.read(&mut b).await, Ok(1)) && b[0] != b'\n' {}
                if n <= 4 {
                    let _ = s.write_all(b"NOPE\n").await;
                }
            });
        }
    });
    lab.running("nope", Some(&hybrid_spec(&path)));
    let host = lab.start_host(lab.config()).await;
    let name = lab.name("nope");
    let view = host
        .wait_show(&name, ms(10_000), |v| {
            v.connect_failure.as_ref().is_some_and(|f| f.times >= 3)
                && connect_failures(v).len() == 2
        })
        .await;
    let entries = connect_failures(&view);
    assert_eq!(entries.len(), 2, "{view}");
    assert!(
        entries[0].0.kind == ConnectFailureKind::DialBadReply
            && entries[0].0.detail.contains("\"NOPE\""),
        "{:?}",
        entries[0]
    );
    assert!(
        entries[1].0.kind == ConnectFailureKind::DialRefused,
        "{:?}",
        entries[1]
    );
    let failure = view.connect_failure.as_ref().expect("the latest reason");
    assert_eq!(failure.reason, entries[1].0);
    // Every dial after the fourth failed for the second reason, and was counted.
    tokio::time::sleep(ms(600)).await;
    let view = host.show(&name).await;
    let failure = view.connect_failure.as_ref().expect("the latest reason");
    let dialed = dials.load(Ordering::SeqCst);
    assert!(
        (u64::from(dialed) - 4).abs_diff(failure.times) <= 1,
        "{dialed} dials, {} counted",
        failure.times
    );
    assert_eq!(connect_failures(&view).len(), 2, "{view}");
    assert_eq!(lines_of(&name, "no session with the guest agent").len(), 2);
    let (_, out, _) = host.ctl(&["show", &name]).await;
    assert!(
        out.contains("no session: the guest refused the dial: "),
        "{out}"
    );
    host.stop().await;
    backend.abort();
}

/// What may reach a terminal from a guest: no control character but the line ends, no
/// bidirectional override or isolate.
fn terminal_safe(text: &str) -> bool {
    !text.chars().any(|c| {
        (c.is_control() && c != '\n')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_log_line_in_an_announced_agent_name_stays_data() {
    use appmon_control::{ConnectFailureKind, GuestEvent};
    log_lines();
    let lab = Lab::in_process("forged");
    let (forger, huge) = (lab.sock("forger"), lab.sock("huge"));
    lab.running("forger", Some(&hybrid_spec(&forger)));
    lab.running("huge", Some(&hybrid_spec(&huge)));
    let host = lab.start_host(lab.config()).await;
    let victim = lab.name("victim");
    let forged = format!(
        "x\n2026-12-02T00:00:00.000000Z ERROR appmon_host_agent: resetting domain={victim}\x1b[2J\u{202e}"
    );
    assert!(forged.len() <= 128);
    let mut session = Framed::new(
        connect_when_listening(&announce_path(&forger)).await,
        GuestCodec::new(),
    );
    session
        .send(Frame::event(GuestMsg::Hello(Hello::new(
            &forged,
            [3; 16],
            Capabilities::HEARTBEAT,
        ))))
        .await
        .expect("hello");
    let name = lab.name("forger");
    let view = host.wait_show(&name, ms(5000), |v| v.connected).await;

    // Shown escaped, in the view, the history and appmonctl's text and JSON.
    let agent = view.guest_agent.clone().expect("agent");
    assert_eq!(agent, appmon_wire::text::escape(&forged));
    assert!(terminal_safe(&agent) && !agent.contains('\n'), "{agent:?}");
    assert!(view.history.iter().any(|h| matches!(
        h.guest(),
        Some(GuestEvent::Connected { agent: a, .. }) if *a == agent
    )));
    for args in [
        vec!["show", name.as_str()],
        vec!["--json", "show", name.as_str()],
    ] {
        let (code, out, _) = host.ctl(&args).await;
        assert_eq!(code, 0);
        assert!(terminal_safe(&out), "{args:?}: {out:?}");
        assert!(!out.lines().any(|l| l.starts_with("2026-12-02")), "{out}");
    }
    // The log has no line of the forger's making, and the name is on its own event's line.
    let lines = log_lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("2026-12-02T00:00:00.000000Z")),
        "a forged line"
    );
    assert!(lines
        .iter()
        .filter(|l| l.contains(&format!("resetting domain={victim}")))
        .all(|l| l.contains("x\\n2026-12-02") && terminal_safe(l)));
    assert!(
        lines.iter().any(|l| l.contains("x\\n2026-12-02")),
        "the name is logged, escaped"
    );

    // A 60,000-byte name is refused as it is read, naming the field, its length and the limit;
    // the guest calling again and again leaves one history entry, not the name.
    let frame = common::sim::hello_with_agent_of(60_000);
    for _ in 0..4 {
        let mut s = connect_when_listening(&announce_path(&huge)).await;
        let _ = s.write_all(&frame).await;
        until_closed(&mut s).await;
    }
    let huge_name = lab.name("huge");
    let view = host
        .wait_show(&huge_name, ms(5000), |v| {
            v.connect_failure.as_ref().is_some_and(|f| f.times == 4)
        })
        .await;
    let failure = view.connect_failure.as_ref().expect("refused");
    assert_eq!(failure.reason.kind, ConnectFailureKind::NotAFrame);
    let why = &failure.reason.detail;
    assert!(
        why.contains("agent name") && why.contains("60000") && why.contains("128"),
        "{why}"
    );
    assert_eq!(connect_failures(&view).len(), 1);
    let (_, json, _) = host.ctl(&["--json", "show", &huge_name]).await;
    assert!(
        json.len() < 16 * 1024,
        "show --json is {} bytes",
        json.len()
    );
    assert!(!json.contains(&"n".repeat(200)));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_heartbeat_age_is_shown_as_the_guests_claim_not_measured() {
    use appmon_wire::GuestState;
    let lab = Lab::in_process("claims");
    let path = lab.sock("claims");
    lab.running("claims", Some(&hybrid_spec(&path)));
    let host = lab.start_host(lab.config()).await;
    let mut session = Framed::new(
        connect_when_listening(&announce_path(&path)).await,
        GuestCodec::new(),
    );
    session
        .send(Frame::event(GuestMsg::Hello(Hello::new(
            "claims",
            [6; 16],
            Capabilities::HEARTBEAT,
        ))))
        .await
        .expect("hello");
    // Never enabled, no heartbeat ever sent, yet it claims one u64::MAX ms ago.
    let state = GuestState {
        enabled: false,
        need_reset: false,
        last_heartbeat_age_ms: Some(u64::MAX),
        heartbeats: 0,
        last_status: None,
        processes: Vec::new(),
    };
    session
        .send(Frame::event(GuestMsg::State(state)))
        .await
        .expect("state");
    let name = lab.name("claims");
    let view = host
        .wait_show(&name, ms(5000), |v| v.claimed_heartbeat_age_ms.is_some())
        .await;
    assert!(view.is(Status::Gray), "{view}");
    assert_eq!(view.last_heartbeat_age_ms, None, "no heartbeat was read");
    assert_eq!(view.claimed_heartbeat_age_ms, Some(u64::MAX));
    let (_, out, _) = host.ctl(&["show", &name]).await;
    let line = out
        .lines()
        .find(|l| l.starts_with("last heartbeat:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.starts_with("last heartbeat:  - ago (the guest claims "),
        "measured, then the claim as one: {line}"
    );
    host.stop().await;
}
