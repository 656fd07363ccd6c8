//! A guest's words are data (issue 11): whatever a guest puts into the strings it sends (its
//! agent name, the text of its errors), the host agent logs each event on exactly one line,
//! with no control character, no terminal escape and no bidirectional override in it, and hands
//! the supervisor (and so the history and `appmonctl`) only the escaped text.
//!
//! The session machine is driven directly; its log lines are captured by a `fmt` subscriber
//! into a buffer, beside a layer that counts the events.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use appmon_control::GuestEvent;
use appmon_host_agent::config::Config;
use appmon_host_agent::session::machine::{Action, Event, Session};
use appmon_host_agent::session::{Link, LinkKind, Opening, SessionConfig, SessionEvent};
use appmon_wire::{Capabilities, ErrorCode, Frame, GuestMsg, Hello, WireError};
use proptest::prelude::*;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Counts every event, whatever its level.
struct Count(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> Layer<S> for Count {
    fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with the log captured; returns the log text and the number of events.
fn captured(f: impl FnOnce()) -> (String, usize) {
    let buffer = Buffer::default();
    let events = Arc::new(AtomicUsize::new(0));
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
        )
        .with(Count(events.clone()));
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).expect("utf-8 log");
    (text, events.load(Ordering::SeqCst))
}

/// What may reach a terminal or a log file from a guest: no control character (the line's own
/// newline aside), no bidirectional override or isolate.
fn clean(text: &str) -> Result<(), char> {
    match text.chars().find(|&c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
    }) {
        Some(c) => Err(c),
        None => Ok(()),
    }
}

/// Strings a hostile guest would pick: forged log lines, terminal escapes, bidi overrides, NULs,
/// and anything else.
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n2026-12-02T00:00:00Z ERROR appmon_host_agent: resetting domain=other".to_string()),
        Just("\r\x1b[2K\x1b[31mforged\x1b[0m".to_string()),
        Just("\u{202e}txt.exe".to_string()),
        Just("\0\x07\x08\t\x0b\x0c\x7f\u{85}\u{2028}".to_string()),
        any::<String>(),
        "[a-z ]{0,16}",
    ];
    prop::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

fn config() -> SessionConfig {
    SessionConfig::new(&Config::default(), [1; 16])
}

/// A session past its handshake with a guest that calls itself `agent`, and what it did.
fn greeted(config: &SessionConfig, agent: &str) -> (Session, Vec<Action>) {
    let link = Link {
        kind: LinkKind::Stream,
        opening: Opening::HostFirst,
        keepalive: None,
    };
    let now = Instant::now();
    let (mut session, _) = Session::open(config, link, "vm", now);
    let hello = Hello::new(agent, [7; 16], Capabilities::HEARTBEAT);
    let actions = session.handle(
        config,
        Event::Frame(Frame::event(GuestMsg::Hello(hello))),
        now,
    );
    assert!(session.greeted(), "{actions:?}");
    (session, actions)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_guest_string_is_logged_on_one_line_and_escaped(agent in hostile(), error in hostile()) {
        let config = config();
        let mut delivered = Vec::new();
        let (log, events) = captured(|| {
            let (mut session, actions) = greeted(&config, &agent);
            delivered.extend(actions);
            let now = Instant::now();
            for code in [ErrorCode::BadRequest, ErrorCode::IncompatibleVersion { ours: 9, theirs: 1 }] {
                let frame = Frame::event(GuestMsg::Error(WireError::new(code, error.clone())));
                delivered.extend(session.handle(&config, Event::Frame(frame), now));
            }
        });
        prop_assert!(events >= 2, "the connect and the guest's errors are logged: {log}");
        prop_assert_eq!(log.matches('\n').count(), events, "one line per event: {}", log);
        prop_assert_eq!(clean(&log), Ok(()), "{}", log);
        for action in &delivered {
            // What the supervisor keeps and shows: the agent's name and the reasons sessions end.
            let shown = match action {
                Action::Deliver(SessionEvent::Hello { agent, .. }) => GuestEvent::Connected {
                    agent: agent.clone(),
                    boot_id: "-".into(),
                }
                .to_string(),
                Action::End(reason) => GuestEvent::SessionEnded { reason: reason.clone() }.to_string(),
                _ => continue,
            };
            prop_assert!(!shown.contains('\n'), "{}", shown);
            prop_assert_eq!(clean(&shown), Ok(()), "{}", shown);
        }
    }
}

#[test]
fn a_forged_log_line_in_the_agent_name_stays_inside_its_own_line() {
    let config = config();
    let forged = "x\n2026-12-02T00:00:00Z ERROR resetting domain=other";
    let (log, events) = captured(|| {
        greeted(&config, forged);
    });
    assert_eq!(events, 1, "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(
        log.contains("x\\n2026"),
        "the newline is shown escaped: {log}"
    );
}
