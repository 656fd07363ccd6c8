//! One guest session as a pure state machine: `(state, event, now) -> actions`.
//!
//! [`Session`] holds one link's handshake, keepalive and token bucket, turns what the guest
//! sends into [`SessionEvent`]s for the supervisor, answers what the host agent answers by
//! itself (`Ping`, message kinds it does not know, requests it does not take, requests before
//! the Hello) and decides when the session ends and why ([`SessionEnd`]). It does no I/O and
//! reads no clock: the shell ([`super::shell`]) feeds it frames, read and write outcomes,
//! commands and [`Event::Tick`] at [`Session::next_deadline`], and carries out its
//! [`Action`]s. The tests drive it with a virtual clock.
//!
//! # Parameters of a link
//!
//! Who speaks first and whether the host keeps the link alive are parameters ([`Link`]), not
//! assumptions: a link the host dialed to a guest agent of the first protocol version opens
//! with the host's Hello ([`Opening::HostFirst`]); a link the guest opened answers the guest's
//! Hello ([`Opening::GuestFirst`]). [`Link::keepalive`] `None` is a quiet link: the host sends
//! no ping and judges no silence on it.
//!
//! # Silence is judged on input that was read
//!
//! The channel-dead and Hello deadlines are decided only at a [`Event::Tick`]; the shell reads
//! every frame that is already there before it ticks, so a frame that arrived before a deadline
//! is never counted late.

use std::time::{Duration, Instant};

use appmon_control::SessionEnd;
use appmon_wire::{
    negotiate, ErrorCode, Frame, FrameError, GuestMsg, HostMsg, RequestId, Tag, WireError,
    WireMessage,
};

use super::messages::{is_host_request, HostCmd, SessionEvent};
pub use super::settings::Keepalive;
use super::settings::SessionConfig;
use crate::policy::GuestRequest;

/// The kind of transport under a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A connected stream (vsock, a Unix socket): a bad frame ends the session.
    Stream,
    /// A virtio-serial channel: no connection to end; bad frames are skipped, and the host
    /// writes a lone delimiter first so the guest's reader drops any partial frame it holds.
    Serial,
}

/// Who speaks first on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The host sends its Hello as soon as the link is up (the host dialed).
    HostFirst,
    /// The guest sends its Hello first; the host answers with its own.
    GuestFirst,
}

/// One link's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub kind: LinkKind,
    pub opening: Opening,
    /// `None`: quiet, no ping and no channel-dead verdict.
    pub keepalive: Option<Keepalive>,
}

/// A received frame that could not be decoded, reduced to what the machine decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadFrame {
    /// A message kind newer than this build: answered with `Unsupported`, the session goes on.
    UnknownKind { tag: Tag, kind: u32 },
    /// Anything else: the decoder's error in words.
    Broken(String),
}

impl From<&FrameError> for BadFrame {
    fn from(error: &FrameError) -> Self {
        match *error {
            FrameError::UnknownKind { tag, kind, .. } => BadFrame::UnknownKind { tag, kind },
            ref other => BadFrame::Broken(appmon_wire::report::error_chain(other)),
        }
    }
}

/// What happens to a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A frame from the guest.
    Frame(Frame<GuestMsg>),
    /// Bytes from the guest that are not a frame this build takes.
    BadFrame(BadFrame),
    /// The guest closed the link.
    Closed,
    ReadFailed(String),
    /// A write did not finish within the write timeout.
    WriteTimedOut,
    WriteFailed(String),
    /// The supervisor's command.
    Command(HostCmd),
    /// Time passed: check deadlines.
    Tick,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write a lone frame delimiter.
    Resync,
    /// Write a frame.
    Send(Frame<HostMsg>),
    /// Tell the supervisor.
    Deliver(SessionEvent),
    /// Close the link: the session is over.
    End(SessionEnd),
}

/// A token bucket: `rate` tokens a second, at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token; `false` when there is none.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    link: Link,
    /// For logs.
    domain: String,
    hello_timeout: Duration,
    write_timeout: Duration,
    frames_per_second: u32,
    burst: u32,
    greeted: bool,
    opened: Instant,
    last_rx: Instant,
    next_ping: Instant,
    ping_id: RequestId,
    bucket: TokenBucket,
    ended: bool,
    /// The domain is paused: no ping, no verdict on silence.
    held: bool,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Session {
    /// A session on a link that came up at `now`, and what to do first.
    pub fn open(
        config: &SessionConfig,
        link: Link,
        domain: &str,
        now: Instant,
    ) -> (Self, Vec<Action>) {
        let limits = &config.limits;
        let session = Session {
            link,
            domain: domain.to_string(),
            hello_timeout: config.hello_timeout,
            write_timeout: limits.write_timeout,
            frames_per_second: limits.frames_per_second,
            burst: limits.burst,
            greeted: false,
            opened: now,
            last_rx: now,
            next_ping: now,
            ping_id: 0,
            bucket: TokenBucket::new(limits.frames_per_second, limits.burst, now),
            ended: false,
            held: false,
        };
        let mut out = Vec::new();
        if link.kind == LinkKind::Serial {
            out.push(Action::Resync);
        }
        if link.opening == Opening::HostFirst {
            out.push(Action::Send(Frame::event(HostMsg::Hello(
                config.hello.clone(),
            ))));
        }
        (session, out)
    }

    /// Whether the guest's Hello was taken.
    pub fn greeted(&self) -> bool {
        self.greeted
    }

    /// When the session wants an [`Event::Tick`]; `None` when only input can move it.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.ended || self.held {
            return None;
        }
        if !self.greeted {
            return Some(self.opened + self.hello_timeout);
        }
        self.link
            .keepalive
            .map(|k| self.next_ping.min(self.last_rx + k.dead_after))
    }

    /// Feeds one event at `now`; returns what to do.
    pub fn handle(&mut self, config: &SessionConfig, event: Event, now: Instant) -> Vec<Action> {
        if self.ended {
            return Vec::new();
        }
        let mut out = Vec::new();
        match event {
            Event::Frame(frame) => {
                if self.received(now, &mut out) {
                    self.frame(config, frame, now, &mut out);
                }
            }
            Event::BadFrame(bad) => {
                if self.received(now, &mut out) {
                    self.bad_frame(bad, &mut out);
                }
            }
            Event::Closed => out.push(Action::End(SessionEnd::ClosedByGuest)),
            Event::ReadFailed(error) => out.push(Action::End(SessionEnd::ReadFailed { error })),
            Event::WriteTimedOut => out.push(Action::End(SessionEnd::WriteTimeout {
                after_ms: millis(self.write_timeout),
            })),
            Event::WriteFailed(error) => out.push(Action::End(SessionEnd::WriteFailed { error })),
            Event::Command(HostCmd::Status(status)) => {
                out.push(Action::Send(Frame::event(HostMsg::AppStatus(status))))
            }
            Event::Command(HostCmd::Reply { id, msg }) => {
                out.push(Action::Send(Frame::reply(id, *msg)))
            }
            Event::Command(HostCmd::Request { id, msg }) => {
                out.push(Action::Send(Frame::request(id, *msg)))
            }
            Event::Command(HostCmd::CloseForReset) => {
                out.push(Action::End(SessionEnd::ClosedForReset));
            }
            Event::Command(HostCmd::Sync) => {
                // The shell hands this over only once nothing more is readable.
                out.push(Action::Deliver(SessionEvent::Synced));
            }
            Event::Command(HostCmd::DomainPaused(paused)) => {
                if self.held && !paused {
                    // The pause was the domain's, not the guest's silence; nor is a Hello that
                    // a paused guest could not send late.
                    self.last_rx = now;
                    self.opened = now;
                    if let Some(k) = self.link.keepalive {
                        self.next_ping = now + k.ping_interval;
                    }
                }
                self.held = paused;
            }
            Event::Command(HostCmd::Quiet) => {
                // The guest is rebooting: no more pings, and no verdict on its silence.
                self.link.keepalive = None;
            }
            Event::Tick => self.tick(now, &mut out),
        }
        if out.iter().any(|a| matches!(a, Action::End(_))) {
            self.ended = true;
        }
        out
    }

    /// Counts a received item against the token bucket; `false` when the guest floods (the
    /// session ends).
    fn received(&mut self, now: Instant, out: &mut Vec<Action>) -> bool {
        if !self.bucket.take(now) {
            out.push(Action::End(SessionEnd::Flood {
                frames_per_second: self.frames_per_second,
                burst: self.burst,
            }));
            return false;
        }
        self.last_rx = now;
        true
    }

    fn bad_frame(&mut self, bad: BadFrame, out: &mut Vec<Action>) {
        match bad {
            BadFrame::UnknownKind { tag, kind } => {
                tracing::debug!(domain = %self.domain, kind, "unknown message kind from the guest");
                let err = HostMsg::Error(WireError::new(
                    ErrorCode::Unsupported { kind },
                    format!("message kind {kind} is newer than this host agent"),
                ));
                match tag {
                    Tag::Request(id) => out.push(Action::Send(Frame::reply(id, err))),
                    Tag::Event => out.push(Action::Send(Frame::event(err))),
                    Tag::Reply(_) => {}
                }
            }
            BadFrame::Broken(error) if self.link.kind == LinkKind::Stream => {
                out.push(Action::End(SessionEnd::BadFrame { error }))
            }
            BadFrame::Broken(error) => {
                tracing::warn!(domain = %self.domain, %error, "bad frame on the channel skipped");
            }
        }
    }

    fn frame(
        &mut self,
        config: &SessionConfig,
        frame: Frame<GuestMsg>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !self.greeted {
            self.before_hello(config, frame, now, out);
            return;
        }
        if let Tag::Reply(id) = frame.tag {
            if is_host_request(id) {
                out.push(Action::Deliver(SessionEvent::Reply { id, msg: frame.msg }));
                return;
            }
        }
        let id = match frame.tag {
            Tag::Request(id) => Some(id),
            _ => None,
        };
        let reply = |msg| Action::Send(Frame::reply(id.unwrap_or_default(), msg));
        let request = |req| Action::Deliver(SessionEvent::Request { id, req });
        match frame.msg {
            GuestMsg::MarkActive => {
                if id.is_some() {
                    out.push(reply(HostMsg::Ack));
                }
                out.push(Action::Deliver(SessionEvent::Heartbeat { at: now }));
            }
            GuestMsg::State(state) => out.push(Action::Deliver(SessionEvent::State(state))),
            GuestMsg::Enable => out.push(request(GuestRequest::Enable)),
            GuestMsg::Disable => out.push(request(GuestRequest::Disable)),
            GuestMsg::PostAppState(s) => out.push(request(GuestRequest::PostAppState(s))),
            GuestMsg::GetAppStatus => out.push(request(GuestRequest::GetAppStatus)),
            GuestMsg::IsEnabled => out.push(request(GuestRequest::IsEnabled)),
            GuestMsg::Ping => {
                if id.is_some() {
                    out.push(reply(HostMsg::Pong));
                }
            }
            GuestMsg::CounterSchema(part) => {
                if id.is_some() {
                    out.push(reply(HostMsg::Ack));
                }
                out.push(Action::Deliver(SessionEvent::CounterSchema(part)));
            }
            GuestMsg::CounterValues(values) => {
                if id.is_some() {
                    out.push(reply(HostMsg::Ack));
                }
                out.push(Action::Deliver(SessionEvent::CounterValues {
                    values,
                    at: now,
                }));
            }
            // Answers to the host's own requests (its pings).
            GuestMsg::Pong | GuestMsg::Ack if id.is_none() => {}
            GuestMsg::Error(e) => {
                tracing::info!(domain = %self.domain, error = %e, "guest reported an error");
                if matches!(e.code, ErrorCode::IncompatibleVersion { .. }) {
                    out.push(Action::End(SessionEnd::GuestRefused {
                        error: e.to_string(),
                    }));
                }
            }
            GuestMsg::Process(status) if id.is_none() => {
                out.push(Action::Deliver(SessionEvent::Process(status)))
            }
            GuestMsg::Monitors(monitors) if id.is_none() => {
                out.push(Action::Deliver(SessionEvent::Monitors(monitors)))
            }
            GuestMsg::Monitor(event) if id.is_none() => {
                out.push(Action::Deliver(SessionEvent::Monitor(event)))
            }
            GuestMsg::Hello(_) => {
                if id.is_some() {
                    out.push(reply(HostMsg::Error(WireError::new(
                        ErrorCode::BadRequest,
                        "Hello twice",
                    ))));
                }
            }
            other => {
                if id.is_some() {
                    out.push(reply(HostMsg::Error(WireError::new(
                        ErrorCode::NotAllowed,
                        format!("{} is not handled by this host agent", other.kind_name()),
                    ))));
                }
            }
        }
    }

    fn before_hello(
        &mut self,
        config: &SessionConfig,
        frame: Frame<GuestMsg>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match frame.msg {
            GuestMsg::Hello(theirs) => match negotiate(&config.hello, &theirs) {
                Ok(agreed) => {
                    self.greeted = true;
                    if let Some(k) = self.link.keepalive {
                        self.next_ping = now + k.ping_interval;
                    }
                    tracing::info!(domain = %self.domain, agent = %agreed.peer_agent,
                        boot_id = %appmon_wire::format_boot_id(&agreed.peer_boot_id),
                        version = agreed.version, "guest agent connected");
                    if self.link.opening == Opening::GuestFirst {
                        out.push(Action::Send(Frame::event(HostMsg::Hello(
                            config.hello.clone(),
                        ))));
                    }
                    out.push(Action::Deliver(SessionEvent::Hello {
                        boot_id: agreed.peer_boot_id,
                        agent: agreed.peer_agent.to_string(),
                    }));
                }
                Err(err) => {
                    let message = err.message.to_string();
                    out.push(Action::Send(Frame::event(HostMsg::Error(err))));
                    out.push(Action::End(SessionEnd::Incompatible { message }));
                }
            },
            GuestMsg::Error(e) => out.push(Action::End(SessionEnd::GuestRefused {
                error: e.to_string(),
            })),
            other => {
                if let Tag::Request(id) = frame.tag {
                    out.push(Action::Send(Frame::reply(
                        id,
                        HostMsg::Error(WireError::new(
                            ErrorCode::BadRequest,
                            format!("{} before Hello", other.kind_name()),
                        )),
                    )));
                }
            }
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.held {
            return;
        }
        if !self.greeted {
            if now >= self.opened + self.hello_timeout {
                out.push(Action::End(SessionEnd::NoHello {
                    within_ms: millis(self.hello_timeout),
                }));
            }
            return;
        }
        let Some(keepalive) = self.link.keepalive else {
            return;
        };
        if now >= self.last_rx + keepalive.dead_after {
            out.push(Action::End(SessionEnd::ChannelDead {
                silent_ms: millis(now.duration_since(self.last_rx)),
            }));
            return;
        }
        if now >= self.next_ping {
            self.ping_id = self.ping_id.wrapping_add(1).max(1);
            self.next_ping = now + keepalive.ping_interval;
            out.push(Action::Send(Frame::request(self.ping_id, HostMsg::Ping)));
        }
    }
}

#[cfg(test)]
mod tests;
