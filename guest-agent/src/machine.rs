//! The agent's logic as a pure state machine: `(state, event, now) -> (state, actions)`.
//!
//! [`Machine`] holds the application's monitoring state (enabled, last heartbeat, needReset, the
//! status the host last sent) and the one host session, and turns each [`Event`] (a host
//! connected, a frame arrived, an application asked something, time passed) into [`Action`]s
//! (send a frame, close a link, answer an application). It does no I/O and reads no clock: the
//! shell in [`crate::daemon`] feeds it and carries its actions out, and the tests drive it with
//! a virtual clock.
//!
//! # Sessions
//!
//! A *link* is one transport connection: a stream (vsock, a Unix socket) or a virtio-serial port.
//! A stream link is a host session from the moment it connects and must send its Hello within
//! [`Settings::hello_timeout`]. Who speaks first is the link's [`Opening`]: on a link the guest
//! opened to announce itself (protocol 2) the guest's Hello goes out at once and the host's
//! answers it; on a link a host dialed (protocol 1) the host's Hello comes first. A virtio-serial port has no connection semantics: it becomes the
//! session when a host Hello arrives on it, and any later Hello starts a new session there. At
//! most one session exists; a new one replaces the old (an old stream is closed).
//!
//! The application's state lives outside the session and survives every disconnect; each new
//! session starts with the guest's Hello and then its full [`GuestState`], so nothing the
//! application did while no host was connected is lost.
//!
//! # Subsystems
//!
//! The agent's other parts (launched processes, application monitors, counters) own their state
//! in their own modules; the machine only carries their words over the session, so the session
//! rules stay in one place:
//! - what a subsystem tells the host goes in as [`Event::Outbound`] and leaves as an event frame
//!   on the established session (nothing is queued while there is none: each subsystem re-sends
//!   its state when a session is established);
//! - host requests a subsystem answers (launch, poll, signal, output, release) come out as
//!   [`Action::HostRequest`] when [`Settings::capabilities`] says the agent has processes, and
//!   their answers go back in as [`Event::ReplyToHost`]; an answer for a session that has ended
//!   is dropped;
//! - [`Action::SessionEstablished`] follows the State of every new session, the moment for each
//!   subsystem to re-send its state (counter schema, monitor states);
//! - the process table, which travels inside the State, is kept here as the process manager last
//!   reported it ([`Event::ProcessTable`]);
//! - a message a subsystem sends that the session's negotiated protocol does not have
//!   ([`GuestMsg::since_protocol`]) is dropped, not sent to a peer that cannot read it.
//!
//! # Heartbeats withheld
//!
//! One rule lets an application monitor stop the heartbeats (its failure action
//! `stop-heartbeats`, [`Event::WithholdHeartbeats`]): while it holds, the application's
//! markActive is refused and changes nothing (not forwarded, not counted, not the last
//! heartbeat), and after Gray the agent's re-enable vouches for no heartbeat; the host, hearing
//! none, resets the VM after its failure interval. The monitor lets go when its check passes
//! again.

use std::time::{Duration, Instant};

use appmon_wire::{
    negotiate, Agreement, AppState, AppStatus, Capabilities, ErrorCode, Frame, FrameError,
    GuestMsg, GuestState, Hello, HostMsg, ProcessStatus, RequestId, Tag, WireError, WireMessage,
};
use tracing::{debug, info, warn};

use crate::api::{AgentStatus, ApiRequest, ApiResponse, Color, Delivery, SessionInfo};

/// Names one transport connection; chosen by the shell, never reused.
pub type LinkId = u64;
/// Names one application request waiting for its answer; chosen by the shell.
pub type Ticket = u64;
/// Names one established host session: counts up from 1 for the life of the agent.
pub type SessionSeq = u64;

/// How long a host may take to send its Hello after connecting.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent waits for the host to answer a request made for an application.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The answer to process requests: launching is a later feature.
pub const NO_PROCESSES: &str = "this guest agent does not launch processes";

/// The kind of transport under a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A connected stream (vsock, Unix socket): one connection is one session.
    Stream,
    /// A virtio-serial port: no connection semantics; a Hello starts a session.
    Serial,
}

/// Who speaks first on a stream link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The host connected (a host agent of protocol 1 dials): it sends its Hello first and the
    /// guest answers.
    HostFirst,
    /// The guest announced itself (it connected to the host): its Hello goes out at once, the
    /// host answers with its own.
    GuestFirst,
}

/// A received frame that could not be decoded, reduced to what the machine decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadFrame {
    /// A message kind newer than this build: answered with `Unsupported`, the session goes on.
    UnknownKind { tag: Tag, kind: u32 },
    /// Anything else: the text of the decoder's error.
    Broken(String),
}

impl From<&FrameError> for BadFrame {
    fn from(error: &FrameError) -> Self {
        match *error {
            FrameError::UnknownKind { tag, kind, .. } => BadFrame::UnknownKind { tag, kind },
            ref other => BadFrame::Broken(other.to_string()),
        }
    }
}

/// What happens to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A host connected on a stream transport, or a virtio-serial port was opened.
    /// `transport` describes it for logs and `appmon status`.
    LinkUp {
        link: LinkId,
        kind: LinkKind,
        opening: Opening,
        transport: String,
    },
    /// A link ended (the peer closed it, an I/O error, the agent closed it).
    LinkDown { link: LinkId, reason: String },
    /// A frame from the host.
    Frame { link: LinkId, frame: Frame<HostMsg> },
    /// Bytes from the host that are not a frame this build can take.
    BadFrame { link: LinkId, error: BadFrame },
    /// An application's request through the local API.
    App { ticket: Ticket, request: ApiRequest },
    /// A subsystem's message for the host: sent as an event frame on the established session,
    /// dropped when there is none.
    Outbound(GuestMsg),
    /// A subsystem's answer to an [`Action::HostRequest`] of session `session`.
    ReplyToHost {
        session: SessionSeq,
        id: RequestId,
        msg: GuestMsg,
    },
    /// The launched processes, as the next State reports them.
    ProcessTable(Vec<ProcessStatus>),
    /// Application monitors withhold the application's heartbeats (`Some`: which ones, for
    /// messages), or no longer do (`None`). See "Heartbeats withheld".
    WithholdHeartbeats(Option<String>),
    /// Time passed: check deadlines.
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write a frame to a link.
    Send {
        link: LinkId,
        frame: Frame<GuestMsg>,
    },
    /// Write a bare frame delimiter, so a reader that joined a virtio-serial port mid-frame
    /// drops the partial frame it holds.
    Resync { link: LinkId },
    /// Close a stream link.
    Close { link: LinkId, reason: String },
    /// Answer an application's request.
    Answer {
        ticket: Ticket,
        response: ApiResponse,
    },
    /// A host request for a subsystem (processes): answer it with [`Event::ReplyToHost`].
    HostRequest {
        session: SessionSeq,
        id: RequestId,
        msg: HostMsg,
    },
    /// A host session completed its handshake and has the State: subsystems re-send theirs.
    SessionEstablished {
        session: SessionSeq,
        /// The negotiated protocol version and the capabilities both sides have.
        version: u16,
        capabilities: Capabilities,
    },
}

/// The machine's fixed parameters.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `appmon-guest <version>`, for the Hello.
    pub agent: String,
    /// This boot's kernel boot id.
    pub boot_id: [u8; 16],
    /// See [`crate::config::Config::reenable_heartbeat_window`].
    pub reenable_heartbeat_window: Duration,
    pub hello_timeout: Duration,
    pub request_timeout: Duration,
    /// What this agent offers the host: heartbeats always, and the subsystems the daemon runs.
    pub capabilities: Capabilities,
}

impl Settings {
    pub fn new(agent: impl Into<String>, boot_id: [u8; 16]) -> Settings {
        Settings {
            agent: agent.into(),
            boot_id,
            reenable_heartbeat_window: Duration::from_secs(30),
            hello_timeout: HELLO_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            capabilities: Capabilities::HEARTBEAT,
        }
    }

    fn hello(&self) -> Hello {
        Hello::new(self.agent.clone(), self.boot_id, self.capabilities)
    }
}

/// The application's monitoring state: kept across host sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppRecord {
    pub enabled: bool,
    pub need_reset: bool,
    /// The application's last markActive (since it last enabled).
    pub last_heartbeat: Option<Instant>,
    /// markActive calls taken since the agent started.
    pub heartbeats: u64,
    /// The status the host last sent, in any session.
    pub last_status: Option<AppStatus>,
}

/// The application verbs that wait for the host's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Enable,
    Disable,
    PostAppState,
    IsEnabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiter {
    App {
        ticket: Ticket,
        verb: Verb,
    },
    /// The agent's own Enable after the host said Gray.
    Reenable,
}

#[derive(Debug, Clone)]
struct Pending {
    id: RequestId,
    deadline: Instant,
    waiter: Waiter,
}

#[derive(Debug, Clone)]
enum Phase {
    /// Waiting for the host's Hello; a stream link is dropped at the deadline. `sent`: the
    /// guest's own Hello went out already (it announced itself).
    AwaitingHello {
        deadline: Option<Instant>,
        sent: bool,
    },
    Established {
        agreement: Agreement,
        seq: SessionSeq,
    },
}

#[derive(Debug, Clone)]
struct Session {
    link: LinkId,
    kind: LinkKind,
    transport: String,
    since: Instant,
    phase: Phase,
    pending: Vec<Pending>,
    /// The status the host sent in this session: what getAppStatus answers.
    status: Option<AppStatus>,
    /// The guest opened this link to announce itself.
    announced: bool,
}

impl Session {
    fn established(&self) -> bool {
        matches!(self.phase, Phase::Established { .. })
    }

    fn seq(&self) -> Option<SessionSeq> {
        match self.phase {
            Phase::Established { seq, .. } => Some(seq),
            Phase::AwaitingHello { .. } => None,
        }
    }
}

#[derive(Debug, Clone)]
struct LinkEntry {
    id: LinkId,
    kind: LinkKind,
    transport: String,
}

/// The guest agent's logic. See the module documentation.
#[derive(Debug)]
pub struct Machine {
    settings: Settings,
    app: AppRecord,
    session: Option<Session>,
    links: Vec<LinkEntry>,
    next_request: RequestId,
    sessions: u64,
    reenables: u64,
    last_reenable: Option<Instant>,
    processes: Vec<ProcessStatus>,
    /// The monitors that withhold heartbeats, if any.
    withheld_by: Option<String>,
}

impl Machine {
    pub fn new(settings: Settings) -> Machine {
        Machine {
            settings,
            app: AppRecord::default(),
            session: None,
            links: Vec::new(),
            next_request: 1,
            sessions: 0,
            reenables: 0,
            last_reenable: None,
            processes: Vec::new(),
            withheld_by: None,
        }
    }

    /// The application's state.
    pub fn app(&self) -> &AppRecord {
        &self.app
    }

    /// Times the agent enabled again on its own after the host said Gray.
    pub fn reenables(&self) -> u64 {
        self.reenables
    }

    /// Whether a host session has completed its handshake.
    pub fn has_session(&self) -> bool {
        self.session.as_ref().is_some_and(Session::established)
    }

    /// The link of the current session, established or not.
    pub fn session_link(&self) -> Option<LinkId> {
        self.session.as_ref().map(|s| s.link)
    }

    /// Whether the established session is one this guest announced.
    fn announced_session(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.established() && s.announced)
    }

    /// Takes a reloaded configuration's policy.
    pub fn set_reenable_heartbeat_window(&mut self, window: Duration) {
        self.settings.reenable_heartbeat_window = window;
    }

    /// The earliest time at which [`Event::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let session = self.session.as_ref()?;
        let hello = match session.phase {
            Phase::AwaitingHello { deadline, .. } => deadline,
            Phase::Established { .. } => None,
        };
        session
            .pending
            .iter()
            .map(|p| p.deadline)
            .chain(hello)
            .min()
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::LinkUp {
                link,
                kind,
                opening,
                transport,
            } => self.on_link_up(link, kind, opening, transport, now, &mut out),
            Event::LinkDown { link, reason } => self.on_link_down(link, &reason, &mut out),
            Event::Frame { link, frame } => self.on_frame(link, frame, now, &mut out),
            Event::BadFrame { link, error } => self.on_bad_frame(link, error, &mut out),
            Event::App { ticket, request } => self.on_app(ticket, request, now, &mut out),
            Event::Outbound(msg) => match self.established() {
                Some((link, version)) if version >= msg.since_protocol() => {
                    out.push(send(link, Frame::event(msg)))
                }
                Some((_, version)) => {
                    debug!(
                        kind = msg.kind_name(),
                        version, "not in this session's protocol: not sent"
                    )
                }
                None => debug!(kind = msg.kind_name(), "no host session: not sent"),
            },
            Event::ReplyToHost { session, id, msg } => {
                match self.session.as_ref().filter(|s| s.seq() == Some(session)) {
                    Some(s) => out.push(send(s.link, Frame::reply(id, msg))),
                    None => debug!(session, id, "answer for a host session that ended; dropped"),
                }
            }
            Event::ProcessTable(processes) => self.processes = processes,
            Event::WithholdHeartbeats(by) => {
                match &by {
                    Some(by) => {
                        warn!(monitors = %by, "application monitors withhold the heartbeats: the host will reset this VM after its failure interval")
                    }
                    None => info!("heartbeats are no longer withheld"),
                }
                self.withheld_by = by;
            }
            Event::Tick => self.on_tick(now, &mut out),
        }
        out
    }

    /// The state as `appmon status` shows it.
    pub fn status(&self, now: Instant) -> AgentStatus {
        let session = match &self.session {
            None => SessionInfo {
                state: "none".into(),
                transport: None,
                peer: None,
                protocol: None,
                age_ms: None,
            },
            Some(s) => {
                let (state, peer, protocol) = match &s.phase {
                    Phase::AwaitingHello { .. } => ("handshake", None, None),
                    Phase::Established { agreement: a, .. } => (
                        "established",
                        Some(a.peer_agent.to_string()),
                        Some(a.version),
                    ),
                };
                SessionInfo {
                    state: state.into(),
                    transport: Some(s.transport.clone()),
                    peer,
                    protocol,
                    age_ms: Some(age_ms(now, s.since)),
                }
            }
        };
        AgentStatus {
            agent: self.settings.agent.clone(),
            enabled: self.app.enabled,
            need_reset: self.app.need_reset,
            last_heartbeat_age_ms: self.app.last_heartbeat.map(|t| age_ms(now, t)),
            heartbeats: self.app.heartbeats,
            app_status: self.app_status().into(),
            last_host_status: self.app.last_status.map(Color::from),
            session,
            sessions: self.sessions,
            reenables: self.reenables,
            last_reenable_age_ms: self.last_reenable.map(|t| age_ms(now, t)),
            heartbeats_withheld_by: self.withheld_by.clone(),
        }
    }

    /// What getAppStatus answers: the status the host sent in this session; Gray without one.
    fn app_status(&self) -> AppStatus {
        self.session
            .as_ref()
            .filter(|s| s.established())
            .and_then(|s| s.status)
            .unwrap_or(AppStatus::Gray)
    }

    /// The full state, as sent after each handshake.
    pub fn guest_state(&self, now: Instant) -> GuestState {
        GuestState {
            enabled: self.app.enabled,
            need_reset: self.app.need_reset,
            last_heartbeat_age_ms: self.app.last_heartbeat.map(|t| age_ms(now, t)),
            heartbeats: self.app.heartbeats,
            last_status: self.app.last_status,
            processes: self.processes.clone(),
        }
    }

    // ---- links ---------------------------------------------------------------------------------

    fn on_link_up(
        &mut self,
        link: LinkId,
        kind: LinkKind,
        opening: Opening,
        transport: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.links.retain(|l| l.id != link);
        self.links.push(LinkEntry {
            id: link,
            kind,
            transport: transport.clone(),
        });
        match kind {
            LinkKind::Stream => {
                let announced = opening == Opening::GuestFirst;
                if !announced && self.announced_session() {
                    // A host that dials while this guest's announcement is its session: the
                    // host agent's fallback for protocol-1 guests, racing the announcement. The
                    // announced session stays.
                    info!(link, %transport, "host dialed, but this guest is announced to it already: closing the dialed link");
                    out.push(Action::Close {
                        link,
                        reason: "this guest is announced to the host already".to_owned(),
                    });
                    return;
                }
                if announced {
                    info!(link, %transport, "connected to the host: announcing this guest");
                } else {
                    info!(link, %transport, "host connected");
                }
                self.end_session("replaced by a new host connection", out);
                self.session = Some(Session {
                    link,
                    kind,
                    transport,
                    since: now,
                    phase: Phase::AwaitingHello {
                        deadline: Some(now + self.settings.hello_timeout),
                        sent: announced,
                    },
                    pending: Vec::new(),
                    status: None,
                    announced,
                });
                if announced {
                    out.push(send(
                        link,
                        Frame::event(GuestMsg::Hello(self.settings.hello())),
                    ));
                }
            }
            LinkKind::Serial => {
                info!(link, %transport, "virtio-serial port open; waiting for a host Hello")
            }
        }
    }

    fn on_link_down(&mut self, link: LinkId, reason: &str, out: &mut Vec<Action>) {
        self.links.retain(|l| l.id != link);
        if self.session_link() == Some(link) {
            info!(link, reason, "host session ended; application state kept");
            // The link is gone already: nothing to close.
            if let Some(session) = self.session.take() {
                self.fail_pending(session, out);
            }
        } else {
            debug!(link, reason, "link closed");
        }
    }

    /// Ends the current session, if any: closes a stream link, answers whatever waits on it.
    fn end_session(&mut self, reason: &str, out: &mut Vec<Action>) {
        let Some(session) = self.session.take() else {
            return;
        };
        info!(link = session.link, transport = %session.transport, reason, "host session ended; application state kept");
        if session.kind == LinkKind::Stream {
            out.push(Action::Close {
                link: session.link,
                reason: reason.to_owned(),
            });
        }
        self.fail_pending(session, out);
    }

    /// Answers the application requests of a session that ended before the host answered.
    /// Their changes are recorded and go out with the state on the next connect.
    fn fail_pending(&mut self, session: Session, out: &mut Vec<Action>) {
        for pending in session.pending {
            if let Waiter::App { ticket, verb } = pending.waiter {
                out.push(Action::Answer {
                    ticket,
                    response: unanswered(verb),
                });
            }
        }
    }

    fn link_kind(&self, link: LinkId) -> Option<LinkKind> {
        self.links.iter().find(|l| l.id == link).map(|l| l.kind)
    }

    // ---- frames from the host ------------------------------------------------------------------

    fn on_frame(
        &mut self,
        link: LinkId,
        frame: Frame<HostMsg>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.session_link() != Some(link) {
            self.on_frame_without_session(link, frame, now, out);
            return;
        }
        let established = self.session.as_ref().is_some_and(Session::established);
        match (frame.tag, frame.msg) {
            (_, HostMsg::Hello(hello)) => {
                if established {
                    info!(
                        link,
                        "host sent a new Hello: starting a new session on this link"
                    );
                    self.restart_session(link, now, out);
                }
                self.handshake(link, &hello, now, out);
            }
            (Tag::Event, HostMsg::Error(e)) => warn!(link, error = %e, "host reported an error"),
            (Tag::Request(id), msg) if !established => {
                out.push(send(
                    link,
                    Frame::reply(id, error(ErrorCode::BadRequest, hello_first(&msg))),
                ));
            }
            (Tag::Event, msg) if !established => {
                out.push(send(
                    link,
                    Frame::event(error(ErrorCode::BadRequest, hello_first(&msg))),
                ));
            }
            (Tag::Reply(id), msg) if !established => {
                debug!(
                    link,
                    id,
                    kind = msg.kind_name(),
                    "reply before the handshake; ignored"
                );
            }
            (Tag::Event, HostMsg::AppStatus(status)) => self.on_status(status, now, out),
            (Tag::Request(id), msg) => self.on_host_request(link, id, msg, out),
            (Tag::Reply(id), msg) => self.on_reply(id, msg, out),
            (Tag::Event, msg) => {
                warn!(
                    link,
                    kind = msg.kind_name(),
                    "host sent an event the guest does not take"
                );
                out.push(send(
                    link,
                    Frame::event(error(
                        ErrorCode::BadRequest,
                        format!("{} is not an event the guest agent takes", msg.kind_name()),
                    )),
                ));
            }
        }
    }

    /// A frame on a link that is not the session's: a Hello on a virtio-serial port starts a
    /// session there; anything else is told there is none.
    fn on_frame_without_session(
        &mut self,
        link: LinkId,
        frame: Frame<HostMsg>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(kind) = self.link_kind(link) else {
            debug!(link, "frame from a closed link; ignored");
            return;
        };
        match (kind, frame.tag, frame.msg) {
            (LinkKind::Serial, _, HostMsg::Hello(hello)) => {
                self.restart_session(link, now, out);
                self.handshake(link, &hello, now, out);
            }
            (LinkKind::Serial, Tag::Request(id), msg) => {
                out.push(send(
                    link,
                    Frame::reply(id, error(ErrorCode::BadRequest, hello_first(&msg))),
                ));
            }
            (_, _, msg) => debug!(
                link,
                kind = msg.kind_name(),
                "frame outside a session; ignored"
            ),
        }
    }

    /// Replaces the current session with a fresh one on `link` awaiting its Hello.
    fn restart_session(&mut self, link: LinkId, now: Instant, out: &mut Vec<Action>) {
        let (kind, transport) = match self.links.iter().find(|l| l.id == link) {
            Some(l) => (l.kind, l.transport.clone()),
            None => return,
        };
        if self.session_link() == Some(link) {
            // Same link: nothing to close, only the old requests to answer.
            if let Some(old) = self.session.take() {
                self.fail_pending(old, out);
            }
        } else {
            self.end_session("replaced by a new host session", out);
        }
        self.session = Some(Session {
            link,
            kind,
            transport,
            since: now,
            phase: Phase::AwaitingHello {
                deadline: None,
                sent: false,
            },
            pending: Vec::new(),
            status: None,
            announced: false,
        });
    }

    fn handshake(&mut self, link: LinkId, theirs: &Hello, now: Instant, out: &mut Vec<Action>) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let ours = self.settings.hello();
        let announced = matches!(session.phase, Phase::AwaitingHello { sent: true, .. });
        if session.kind == LinkKind::Serial {
            out.push(Action::Resync { link });
        }
        if !announced {
            out.push(send(link, Frame::event(GuestMsg::Hello(ours.clone()))));
        }
        match negotiate(&ours, theirs) {
            Ok(agreement) => {
                info!(
                    link,
                    transport = %session.transport,
                    peer = %agreement.peer_agent,
                    protocol = agreement.version,
                    "host session established"
                );
                self.sessions += 1;
                let seq = self.sessions;
                let (version, capabilities) = (agreement.version, agreement.capabilities);
                session.phase = Phase::Established { agreement, seq };
                let state = self.guest_state(now);
                out.push(send(link, Frame::event(GuestMsg::State(state))));
                out.push(Action::SessionEstablished {
                    session: seq,
                    version,
                    capabilities,
                });
            }
            Err(e) => {
                warn!(link, error = %e, "host speaks an incompatible protocol");
                out.push(send(link, Frame::event(GuestMsg::Error(e))));
                self.end_session("incompatible protocol version", out);
            }
        }
    }

    fn on_host_request(
        &mut self,
        link: LinkId,
        id: RequestId,
        msg: HostMsg,
        out: &mut Vec<Action>,
    ) {
        let answer = match msg {
            HostMsg::Ping => GuestMsg::Pong,
            HostMsg::LaunchProcess(_)
            | HostMsg::PollProcess { .. }
            | HostMsg::SignalProcess { .. }
            | HostMsg::ReadOutput { .. }
            | HostMsg::ReleaseProcess { .. } => {
                let session = self.session.as_ref().and_then(Session::seq);
                match session {
                    Some(session)
                        if self.settings.capabilities.contains(Capabilities::PROCESSES) =>
                    {
                        out.push(Action::HostRequest { session, id, msg });
                        return;
                    }
                    _ => error(ErrorCode::NotAllowed, NO_PROCESSES),
                }
            }
            other => error(
                ErrorCode::BadRequest,
                format!(
                    "{} is not a request the guest agent answers",
                    other.kind_name()
                ),
            ),
        };
        out.push(send(link, Frame::reply(id, answer)));
    }

    fn on_reply(&mut self, id: RequestId, msg: HostMsg, out: &mut Vec<Action>) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let Some(at) = session.pending.iter().position(|p| p.id == id) else {
            warn!(
                id,
                kind = msg.kind_name(),
                "host answered a request the agent is not waiting for"
            );
            return;
        };
        let pending = session.pending.remove(at);
        match pending.waiter {
            Waiter::Reenable => match msg {
                HostMsg::AppStatus(status) => {
                    info!(%status, "host took the agent's re-enable");
                    session.status = Some(status);
                    self.app.last_status = Some(status);
                }
                HostMsg::Error(e) => warn!(error = %e, "host refused the agent's re-enable"),
                other => debug!(kind = other.kind_name(), "host answered the re-enable"),
            },
            Waiter::App { ticket, verb } => {
                let response = match (verb, msg) {
                    (Verb::IsEnabled, HostMsg::Enabled(enabled)) => ApiResponse::Enabled {
                        enabled,
                        host_session: true,
                    },
                    (Verb::IsEnabled, HostMsg::Error(e)) | (_, HostMsg::Error(e)) => {
                        ApiResponse::HostError {
                            message: e.to_string(),
                        }
                    }
                    (Verb::IsEnabled, other) => unexpected(verb, &other),
                    (_, HostMsg::AppStatus(status)) => {
                        session.status = Some(status);
                        self.app.last_status = Some(status);
                        ApiResponse::Done {
                            host: Delivery::Confirmed,
                            status: Some(status.into()),
                        }
                    }
                    (_, HostMsg::Ack) => ApiResponse::Done {
                        host: Delivery::Confirmed,
                        status: None,
                    },
                    (_, other) => unexpected(verb, &other),
                };
                out.push(Action::Answer { ticket, response });
            }
        }
    }

    fn on_status(&mut self, status: AppStatus, now: Instant, out: &mut Vec<Action>) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let link = session.link;
        if session.status != Some(status) {
            info!(%status, "host status");
        }
        session.status = Some(status);
        self.app.last_status = Some(status);
        if status != AppStatus::Gray || !self.app.enabled {
            return;
        }
        // Gray: the host has no state for this guest (a migration, a host-agent restart).
        // vSphere asks the application to enable again and mark active; the agent does it for
        // the application, but only vouches for a heartbeat the application really sent lately.
        self.request(link, GuestMsg::Enable, Waiter::Reenable, now, out);
        let window = self.settings.reenable_heartbeat_window;
        let fresh = self.withheld_by.is_none()
            && self
                .app
                .last_heartbeat
                .is_some_and(|t| now.saturating_duration_since(t) < window);
        if fresh {
            out.push(send(link, Frame::event(GuestMsg::MarkActive)));
        }
        self.reenables += 1;
        self.last_reenable = Some(now);
        info!(
            reenables = self.reenables,
            heartbeat_sent = fresh,
            window_s = window.as_secs(),
            "host said Gray: enabled again on the application's behalf{}",
            if fresh {
                ""
            } else {
                " (no heartbeat: the application's last markActive is too old)"
            }
        );
    }

    fn on_bad_frame(&mut self, link: LinkId, bad: BadFrame, out: &mut Vec<Action>) {
        let in_session = self.session_link() == Some(link);
        let kind = self.link_kind(link);
        match bad {
            BadFrame::UnknownKind {
                tag,
                kind: msg_kind,
            } => {
                warn!(
                    link,
                    kind = msg_kind,
                    "host sent a message kind this agent does not know"
                );
                if kind.is_none() {
                    return;
                }
                let answer = error(
                    ErrorCode::Unsupported { kind: msg_kind },
                    format!("message kind {msg_kind} is newer than this guest agent"),
                );
                let frame = match tag {
                    Tag::Request(id) => Frame::reply(id, answer),
                    Tag::Reply(id) => {
                        // A reply we cannot read still ends the request it answers.
                        let unreadable = WireError::new(
                            ErrorCode::Unsupported { kind: msg_kind },
                            "the host answered with a message kind this agent does not know",
                        );
                        self.on_reply(id, HostMsg::Error(unreadable), out);
                        Frame::event(answer)
                    }
                    Tag::Event => Frame::event(answer),
                };
                out.push(send(link, frame));
            }
            BadFrame::Broken(text) => match kind {
                Some(LinkKind::Serial) => {
                    warn!(link, error = %text, "bad frame on the virtio-serial port; reading on");
                }
                Some(LinkKind::Stream) if in_session => {
                    warn!(link, error = %text, "bad frame from the host; disconnecting it");
                    self.end_session("the host sent a bad frame", out);
                }
                _ => debug!(link, error = %text, "bad frame from a closed link"),
            },
        }
    }

    // ---- applications --------------------------------------------------------------------------

    fn on_app(&mut self, ticket: Ticket, request: ApiRequest, now: Instant, out: &mut Vec<Action>) {
        debug!(ticket, verb = request.verb(), "application request");
        match request {
            ApiRequest::Enable => {
                if !self.app.enabled {
                    info!("application enabled monitoring");
                    self.app.enabled = true;
                    self.app.last_heartbeat = None;
                }
                self.forward(ticket, Verb::Enable, GuestMsg::Enable, now, out);
            }
            ApiRequest::Disable => {
                if self.app.enabled {
                    info!("application disabled monitoring");
                }
                self.app.enabled = false;
                self.app.last_heartbeat = None;
                self.forward(ticket, Verb::Disable, GuestMsg::Disable, now, out);
            }
            ApiRequest::MarkActive => {
                if !self.app.enabled {
                    out.push(Action::Answer {
                        ticket,
                        response: ApiResponse::Refused {
                            message: "monitoring is not enabled: call enable first".into(),
                        },
                    });
                    return;
                }
                if let Some(by) = &self.withheld_by {
                    out.push(Action::Answer {
                        ticket,
                        response: ApiResponse::Refused {
                            message: format!("heartbeats are withheld: application monitor {by} gave up (failure action stop-heartbeats)"),
                        },
                    });
                    return;
                }
                self.app.last_heartbeat = Some(now);
                self.app.heartbeats += 1;
                let host = match self.established_link() {
                    Some(link) => {
                        out.push(send(link, Frame::event(GuestMsg::MarkActive)));
                        Delivery::Confirmed
                    }
                    None => Delivery::Recorded,
                };
                out.push(Action::Answer {
                    ticket,
                    response: ApiResponse::Done { host, status: None },
                });
            }
            ApiRequest::PostAppState { state } => {
                let state = AppState::from(state);
                let need_reset = state == AppState::NeedReset;
                if need_reset != self.app.need_reset {
                    info!(?state, "application posted its state");
                }
                self.app.need_reset = need_reset;
                self.forward(
                    ticket,
                    Verb::PostAppState,
                    GuestMsg::PostAppState(state),
                    now,
                    out,
                );
            }
            ApiRequest::IsEnabled => {
                if self.established_link().is_some() {
                    self.forward(ticket, Verb::IsEnabled, GuestMsg::IsEnabled, now, out);
                } else {
                    out.push(Action::Answer {
                        ticket,
                        response: ApiResponse::Enabled {
                            enabled: false,
                            host_session: false,
                        },
                    });
                }
            }
            ApiRequest::GetAppStatus => out.push(Action::Answer {
                ticket,
                response: ApiResponse::AppStatus {
                    status: self.app_status().into(),
                },
            }),
            ApiRequest::Status => out.push(Action::Answer {
                ticket,
                response: ApiResponse::Status(Box::new(self.status(now))),
            }),
            // The daemon answers from its monitors where it runs some; without, there are none.
            ApiRequest::Monitors => out.push(Action::Answer {
                ticket,
                response: ApiResponse::Monitors {
                    monitors: Vec::new(),
                },
            }),
        }
    }

    /// Sends an application's request to the host, or records it for the next session.
    fn forward(
        &mut self,
        ticket: Ticket,
        verb: Verb,
        msg: GuestMsg,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(link) = self.established_link() else {
            out.push(Action::Answer {
                ticket,
                response: unanswered(verb),
            });
            return;
        };
        self.request(link, msg, Waiter::App { ticket, verb }, now, out);
    }

    /// Sends `msg` as a request on `link` and records who waits for its reply, until the
    /// request timeout.
    fn request(
        &mut self,
        link: LinkId,
        msg: GuestMsg,
        waiter: Waiter,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let id = self.next_request_id();
        let deadline = now + self.settings.request_timeout;
        if let Some(session) = self.session.as_mut() {
            session.pending.push(Pending {
                id,
                deadline,
                waiter,
            });
        }
        out.push(send(link, Frame::request(id, msg)));
    }

    /// The established session's link and negotiated protocol version.
    fn established(&self) -> Option<(LinkId, u16)> {
        let session = self.session.as_ref()?;
        match &session.phase {
            Phase::Established { agreement, .. } => Some((session.link, agreement.version)),
            Phase::AwaitingHello { .. } => None,
        }
    }

    fn established_link(&self) -> Option<LinkId> {
        self.session
            .as_ref()
            .filter(|s| s.established())
            .map(|s| s.link)
    }

    fn next_request_id(&mut self) -> RequestId {
        let id = self.next_request;
        // Ids start at 1 and skip 0 when they wrap.
        self.next_request = self.next_request.checked_add(1).unwrap_or(1);
        id
    }

    // ---- time ----------------------------------------------------------------------------------

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if let Phase::AwaitingHello {
            deadline: Some(deadline),
            ..
        } = session.phase
        {
            if now >= deadline {
                let secs = self.settings.hello_timeout.as_secs_f64();
                warn!(
                    link = session.link,
                    "host sent no Hello within {secs} s; dropping it"
                );
                self.end_session("no Hello in time", out);
                return;
            }
        }
        let (expired, kept): (Vec<Pending>, Vec<Pending>) =
            session.pending.drain(..).partition(|p| now >= p.deadline);
        session.pending = kept;
        for pending in expired {
            match pending.waiter {
                Waiter::App { ticket, verb } => {
                    warn!(id = pending.id, ?verb, "host did not answer in time");
                    out.push(Action::Answer {
                        ticket,
                        response: unanswered(verb),
                    });
                }
                Waiter::Reenable => {
                    warn!(id = pending.id, "host did not answer the re-enable in time")
                }
            }
        }
    }
}

fn send(link: LinkId, frame: Frame<GuestMsg>) -> Action {
    Action::Send { link, frame }
}

fn error(code: ErrorCode, message: impl Into<String>) -> GuestMsg {
    GuestMsg::Error(WireError::new(code, message))
}

fn hello_first(msg: &HostMsg) -> String {
    format!("{} before Hello: send Hello first", msg.kind_name())
}

fn age_ms(now: Instant, then: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(then).as_millis()).unwrap_or(u64::MAX)
}

/// The answer to a request no host answered: changes are recorded, a query is "no".
fn unanswered(verb: Verb) -> ApiResponse {
    match verb {
        Verb::IsEnabled => ApiResponse::Enabled {
            enabled: false,
            host_session: false,
        },
        Verb::Enable | Verb::Disable | Verb::PostAppState => ApiResponse::Done {
            host: Delivery::Recorded,
            status: None,
        },
    }
}

fn unexpected(verb: Verb, msg: &HostMsg) -> ApiResponse {
    warn!(
        ?verb,
        kind = msg.kind_name(),
        "host answered with an unexpected message"
    );
    ApiResponse::HostError {
        message: format!("the host answered {verb:?} with {}", msg.kind_name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PostedState;
    use appmon_wire::{LaunchSpec, PROTOCOL_VERSION};

    const BOOT: [u8; 16] = [9; 16];
    const HOST: LinkId = 1;

    /// A machine and a virtual clock.
    struct Rig {
        machine: Machine,
        t0: Instant,
        now: Instant,
        next_ticket: Ticket,
    }

    impl Rig {
        fn new() -> Rig {
            let now = Instant::now();
            Rig {
                machine: Machine::new(Settings::new("appmon-guest test", BOOT)),
                t0: now,
                now,
                next_ticket: 1,
            }
        }

        fn at(&mut self, secs: f64) -> &mut Rig {
            self.now = self.t0 + Duration::from_secs_f64(secs);
            self
        }

        fn feed(&mut self, event: Event) -> Vec<Action> {
            self.machine.handle(event, self.now)
        }

        fn connect(&mut self, link: LinkId) -> Vec<Action> {
            self.feed(Event::LinkUp {
                link,
                kind: LinkKind::Stream,
                opening: Opening::HostFirst,
                transport: "unix".into(),
            })
        }

        fn open_serial(&mut self, link: LinkId) -> Vec<Action> {
            self.feed(Event::LinkUp {
                link,
                kind: LinkKind::Serial,
                opening: Opening::HostFirst,
                transport: "virtio-serial test".into(),
            })
        }

        fn host(&mut self, link: LinkId, frame: Frame<HostMsg>) -> Vec<Action> {
            self.feed(Event::Frame { link, frame })
        }

        fn hello(&mut self, link: LinkId) -> Vec<Action> {
            let hello = Hello::new("appmon-host test", [1; 16], Capabilities::HEARTBEAT);
            self.host(link, Frame::event(HostMsg::Hello(hello)))
        }

        /// A stream host connected and through the handshake.
        fn session(&mut self, link: LinkId) -> Vec<Action> {
            let mut out = self.connect(link);
            out.extend(self.hello(link));
            out
        }

        fn app(&mut self, request: ApiRequest) -> (Ticket, Vec<Action>) {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            (ticket, self.feed(Event::App { ticket, request }))
        }

        /// The answer to an application request that is answered at once.
        fn ask(&mut self, request: ApiRequest) -> ApiResponse {
            let (ticket, out) = self.app(request);
            answer(&out, ticket).unwrap_or_else(|| panic!("no answer to {request:?}: {out:?}"))
        }
    }

    fn sent(actions: &[Action], to: LinkId) -> Vec<Frame<GuestMsg>> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { link, frame } if *link == to => Some(frame.clone()),
                _ => None,
            })
            .collect()
    }

    fn answer(actions: &[Action], ticket: Ticket) -> Option<ApiResponse> {
        actions.iter().find_map(|a| match a {
            Action::Answer {
                ticket: t,
                response,
            } if *t == ticket => Some(response.clone()),
            _ => None,
        })
    }

    fn closed(actions: &[Action], link: LinkId) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, Action::Close { link: l, .. } if *l == link))
    }

    fn request_id(frame: &Frame<GuestMsg>) -> RequestId {
        match frame.tag {
            Tag::Request(id) => id,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn state_of(frames: &[Frame<GuestMsg>]) -> GuestState {
        frames
            .iter()
            .find_map(|f| match &f.msg {
                GuestMsg::State(s) => Some(s.clone()),
                _ => None,
            })
            .expect("a State frame")
    }

    fn error_code(frame: &Frame<GuestMsg>) -> ErrorCode {
        match &frame.msg {
            GuestMsg::Error(e) => e.code.clone(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn done(host: Delivery, status: Option<Color>) -> ApiResponse {
        ApiResponse::Done { host, status }
    }

    // ---- handshake ---------------------------------------------------------------------------

    #[test]
    fn host_hello_is_answered_with_hello_then_full_state() {
        let mut rig = Rig::new();
        let out = rig.session(HOST);
        let frames = sent(&out, HOST);
        assert_eq!(frames.len(), 2, "{frames:?}");
        match &frames[0] {
            Frame {
                tag: Tag::Event,
                msg: GuestMsg::Hello(hello),
            } => {
                assert_eq!(hello.boot_id, BOOT);
                assert_eq!(hello.capabilities, Capabilities::HEARTBEAT);
                assert_eq!(hello.protocol, PROTOCOL_VERSION);
            }
            other => panic!("expected Hello first, got {other:?}"),
        }
        assert_eq!(frames[1].tag, Tag::Event);
        assert_eq!(state_of(&frames), rig.machine.guest_state(rig.now));
        assert!(rig.machine.has_session());
    }

    #[test]
    fn announced_link_sends_the_guest_hello_at_once_and_the_state_after_the_host_hello() {
        let mut rig = Rig::new();
        let out = rig.feed(Event::LinkUp {
            link: HOST,
            kind: LinkKind::Stream,
            opening: Opening::GuestFirst,
            transport: "vsock cid 2 port 5315".into(),
        });
        let frames = sent(&out, HOST);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert!(matches!(&frames[0].msg, GuestMsg::Hello(h) if h.boot_id == BOOT));
        assert!(!rig.machine.has_session());
        let out = rig.at(0.5).hello(HOST);
        let frames = sent(&out, HOST);
        assert_eq!(
            frames.len(),
            1,
            "no second Hello, only the State: {frames:?}"
        );
        assert_eq!(state_of(&frames), rig.machine.guest_state(rig.now));
        assert!(rig.machine.has_session());
    }

    #[test]
    fn announced_link_without_a_host_hello_is_closed_at_the_hello_timeout() {
        let mut rig = Rig::new();
        rig.feed(Event::LinkUp {
            link: HOST,
            kind: LinkKind::Stream,
            opening: Opening::GuestFirst,
            transport: "vsock cid 2 port 5315".into(),
        });
        assert!(rig.at(9.9).feed(Event::Tick).is_empty());
        let late = rig.at(10.0).feed(Event::Tick);
        assert!(closed(&late, HOST), "{late:?}");
    }

    #[test]
    fn a_host_that_dials_does_not_replace_the_announced_session() {
        let mut rig = Rig::new();
        rig.feed(Event::LinkUp {
            link: HOST,
            kind: LinkKind::Stream,
            opening: Opening::GuestFirst,
            transport: "vsock cid 2 port 5315".into(),
        });
        rig.hello(HOST);
        assert!(rig.machine.has_session());
        let out = rig.connect(2);
        assert!(closed(&out, 2), "{out:?}");
        assert!(!closed(&out, HOST), "{out:?}");
        assert_eq!(rig.machine.session_link(), Some(HOST));
    }

    #[test]
    fn incompatible_host_gets_a_version_error_and_is_closed() {
        let mut rig = Rig::new();
        rig.connect(HOST);
        let mut hello = Hello::new("appmon-host future", [1; 16], Capabilities::HEARTBEAT);
        hello.protocol = PROTOCOL_VERSION + 5;
        hello.min_protocol = PROTOCOL_VERSION + 5;
        let out = rig.host(HOST, Frame::event(HostMsg::Hello(hello)));
        let frames = sent(&out, HOST);
        assert!(matches!(frames[0].msg, GuestMsg::Hello(_)));
        assert!(matches!(
            error_code(&frames[1]),
            ErrorCode::IncompatibleVersion { .. }
        ));
        assert!(closed(&out, HOST));
        assert!(!rig.machine.has_session());
    }

    #[test]
    fn host_that_sends_no_hello_is_dropped_after_10_s() {
        let mut rig = Rig::new();
        rig.connect(HOST);
        assert_eq!(rig.machine.next_deadline(), Some(rig.t0 + HELLO_TIMEOUT));
        let early = rig.at(9.9).feed(Event::Tick);
        assert!(early.is_empty(), "{early:?}");
        let late = rig.at(10.0).feed(Event::Tick);
        assert!(closed(&late, HOST), "{late:?}");
        assert_eq!(rig.machine.session_link(), None);
    }

    #[test]
    fn requests_before_hello_are_told_to_say_hello_first() {
        let mut rig = Rig::new();
        rig.connect(HOST);
        let out = rig.host(HOST, Frame::request(7, HostMsg::Ping));
        let frames = sent(&out, HOST);
        assert_eq!(frames[0].tag, Tag::Reply(7));
        assert_eq!(error_code(&frames[0]), ErrorCode::BadRequest);
        assert!(!rig.machine.has_session());
    }

    // ---- application verbs -------------------------------------------------------------------

    #[test]
    fn enable_is_forwarded_and_answered_with_the_host_status() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let (ticket, out) = rig.app(ApiRequest::Enable);
        let frames = sent(&out, HOST);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].msg, GuestMsg::Enable);
        assert_eq!(answer(&out, ticket), None, "waits for the host");
        let id = request_id(&frames[0]);
        let out = rig.host(HOST, Frame::reply(id, HostMsg::AppStatus(AppStatus::Green)));
        assert_eq!(
            answer(&out, ticket),
            Some(done(Delivery::Confirmed, Some(Color::Green)))
        );
        assert!(rig.machine.app().enabled);
        assert_eq!(
            rig.ask(ApiRequest::GetAppStatus),
            ApiResponse::AppStatus {
                status: Color::Green
            }
        );
    }

    #[test]
    fn mark_active_before_enable_is_refused_and_not_forwarded() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let (ticket, out) = rig.app(ApiRequest::MarkActive);
        assert!(sent(&out, HOST).is_empty());
        assert!(matches!(
            answer(&out, ticket),
            Some(ApiResponse::Refused { .. })
        ));
        assert_eq!(rig.machine.app().heartbeats, 0);
    }

    #[test]
    fn mark_active_is_forwarded_as_an_event_while_enabled() {
        let mut rig = Rig::new();
        rig.session(HOST);
        rig.app(ApiRequest::Enable);
        let (ticket, out) = rig.at(5.0).app(ApiRequest::MarkActive);
        assert_eq!(sent(&out, HOST), vec![Frame::event(GuestMsg::MarkActive)]);
        assert_eq!(answer(&out, ticket), Some(done(Delivery::Confirmed, None)));
        assert_eq!(rig.machine.app().heartbeats, 1);
        assert_eq!(rig.machine.app().last_heartbeat, Some(rig.now));
    }

    #[test]
    fn disable_stops_forwarding_heartbeats() {
        let mut rig = Rig::new();
        rig.session(HOST);
        rig.app(ApiRequest::Enable);
        let (_, out) = rig.app(ApiRequest::Disable);
        assert_eq!(sent(&out, HOST)[0].msg, GuestMsg::Disable);
        let (ticket, out) = rig.app(ApiRequest::MarkActive);
        assert!(sent(&out, HOST).is_empty());
        assert!(matches!(
            answer(&out, ticket),
            Some(ApiResponse::Refused { .. })
        ));
    }

    #[test]
    fn need_reset_is_requested_and_acknowledged() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let (ticket, out) = rig.app(ApiRequest::PostAppState {
            state: PostedState::NeedReset,
        });
        let frames = sent(&out, HOST);
        assert_eq!(frames[0].msg, GuestMsg::PostAppState(AppState::NeedReset));
        assert!(rig.machine.app().need_reset);
        let out = rig.host(HOST, Frame::reply(request_id(&frames[0]), HostMsg::Ack));
        assert_eq!(answer(&out, ticket), Some(done(Delivery::Confirmed, None)));
        rig.app(ApiRequest::PostAppState {
            state: PostedState::Ok,
        });
        assert!(!rig.machine.app().need_reset);
    }

    #[test]
    fn is_enabled_asks_the_host() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let (ticket, out) = rig.app(ApiRequest::IsEnabled);
        let frames = sent(&out, HOST);
        assert_eq!(frames[0].msg, GuestMsg::IsEnabled);
        let out = rig.host(
            HOST,
            Frame::reply(request_id(&frames[0]), HostMsg::Enabled(true)),
        );
        assert_eq!(
            answer(&out, ticket),
            Some(ApiResponse::Enabled {
                enabled: true,
                host_session: true
            })
        );
    }

    #[test]
    fn host_errors_reach_the_application() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let (ticket, out) = rig.app(ApiRequest::Enable);
        let id = request_id(&sent(&out, HOST)[0]);
        let refusal = WireError::new(ErrorCode::NotAllowed, "not monitored here");
        let out = rig.host(HOST, Frame::reply(id, HostMsg::Error(refusal)));
        match answer(&out, ticket) {
            Some(ApiResponse::HostError { message }) => {
                assert!(message.contains("not monitored here"), "{message}")
            }
            other => panic!("expected a host error, got {other:?}"),
        }
    }

    // ---- no host -------------------------------------------------------------------------------

    #[test]
    fn without_a_host_is_enabled_is_false_and_status_is_gray() {
        let mut rig = Rig::new();
        assert_eq!(
            rig.ask(ApiRequest::IsEnabled),
            ApiResponse::Enabled {
                enabled: false,
                host_session: false
            }
        );
        assert_eq!(
            rig.ask(ApiRequest::GetAppStatus),
            ApiResponse::AppStatus {
                status: Color::Gray
            }
        );
    }

    #[test]
    fn requests_without_a_host_are_recorded_and_carried_by_the_next_state() {
        let mut rig = Rig::new();
        assert_eq!(rig.ask(ApiRequest::Enable), done(Delivery::Recorded, None));
        assert_eq!(
            rig.at(2.0).ask(ApiRequest::MarkActive),
            done(Delivery::Recorded, None)
        );
        rig.ask(ApiRequest::PostAppState {
            state: PostedState::NeedReset,
        });
        let out = rig.at(5.0).session(HOST);
        let state = state_of(&sent(&out, HOST));
        assert!(state.enabled);
        assert!(state.need_reset);
        assert_eq!(state.heartbeats, 1);
        assert_eq!(state.last_heartbeat_age_ms, Some(3000));
        assert!(state.processes.is_empty());
    }

    #[test]
    fn status_survives_a_disconnect_but_get_app_status_turns_gray() {
        let mut rig = Rig::new();
        rig.session(HOST);
        rig.host(HOST, Frame::event(HostMsg::AppStatus(AppStatus::Red)));
        rig.feed(Event::LinkDown {
            link: HOST,
            reason: "gone".into(),
        });
        assert_eq!(
            rig.ask(ApiRequest::GetAppStatus),
            ApiResponse::AppStatus {
                status: Color::Gray
            }
        );
        let out = rig.session(2);
        assert_eq!(state_of(&sent(&out, 2)).last_status, Some(AppStatus::Red));
    }

    #[test]
    fn time_alone_never_produces_a_heartbeat() {
        let mut rig = Rig::new();
        rig.session(HOST);
        rig.app(ApiRequest::Enable);
        rig.app(ApiRequest::MarkActive);
        for secs in 1..=120 {
            let out = rig.at(f64::from(secs)).feed(Event::Tick);
            assert!(
                !sent(&out, HOST)
                    .iter()
                    .any(|f| f.msg == GuestMsg::MarkActive),
                "invented a heartbeat at {secs} s"
            );
        }
    }

    // ---- Gray ----------------------------------------------------------------------------------

    fn enabled_session_with_heartbeat_at(rig: &mut Rig, beat: f64) {
        rig.session(HOST);
        let (_, out) = rig.app(ApiRequest::Enable);
        let id = request_id(&sent(&out, HOST)[0]);
        rig.host(HOST, Frame::reply(id, HostMsg::AppStatus(AppStatus::Green)));
        rig.at(beat).app(ApiRequest::MarkActive);
    }

    #[test]
    fn gray_reenables_and_marks_active_when_the_app_beat_recently() {
        let mut rig = Rig::new();
        enabled_session_with_heartbeat_at(&mut rig, 10.0);
        let out = rig
            .at(25.0)
            .host(HOST, Frame::event(HostMsg::AppStatus(AppStatus::Gray)));
        let frames = sent(&out, HOST);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0].msg, GuestMsg::Enable);
        assert!(matches!(frames[0].tag, Tag::Request(_)));
        assert_eq!(frames[1], Frame::event(GuestMsg::MarkActive));
        assert_eq!(rig.machine.reenables(), 1);
        assert_eq!(rig.machine.app().heartbeats, 1, "not counted as the app's");
        let out = rig.host(
            HOST,
            Frame::reply(request_id(&frames[0]), HostMsg::AppStatus(AppStatus::Green)),
        );
        assert!(sent(&out, HOST).is_empty());
        assert_eq!(
            rig.ask(ApiRequest::GetAppStatus),
            ApiResponse::AppStatus {
                status: Color::Green
            }
        );
    }

    #[test]
    fn gray_reenables_without_a_heartbeat_when_the_app_went_silent() {
        let mut rig = Rig::new();
        enabled_session_with_heartbeat_at(&mut rig, 10.0);
        let out = rig
            .at(40.0)
            .host(HOST, Frame::event(HostMsg::AppStatus(AppStatus::Gray)));
        let frames = sent(&out, HOST);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].msg, GuestMsg::Enable);
        assert_eq!(rig.machine.reenables(), 1);
    }

    #[test]
    fn gray_reenables_without_a_heartbeat_when_the_app_never_beat() {
        let mut rig = Rig::new();
        rig.session(HOST);
        rig.app(ApiRequest::Enable);
        let out = rig.host(HOST, Frame::event(HostMsg::AppStatus(AppStatus::Gray)));
        let frames = sent(&out, HOST);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].msg, GuestMsg::Enable);
    }

    #[test]
    fn reenable_window_is_configurable() {
        let mut rig = Rig::new();
        rig.machine
            .set_reenable_heartbeat_window(Duration::from_secs(5));
        enabled_session_with_heartbeat_at(&mut rig, 10.0);
        let out = rig
            .at(16.0)
            .host(HOST, Frame::event(HostMsg::AppStatus(AppStatus::Gray)));
        assert_eq!(sent(&out, HOST).len(), 1, "heartbeat older than 5 s");
    }

    #[test]
    fn gray_while_not_enabled_only_records_the_status() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let out = rig.host(HOST, Frame::event(HostMsg::AppStatus(AppStatus::Gray)));
        assert!(sent(&out, HOST).is_empty());
        assert_eq!(rig.machine.reenables(), 0);
        assert_eq!(rig.machine.app().last_status, Some(AppStatus::Gray));
    }

    #[test]
    fn reenables_are_shown_in_the_status() {
        let mut rig = Rig::new();
        enabled_session_with_heartbeat_at(&mut rig, 1.0);
        rig.at(2.0)
            .host(HOST, Frame::event(HostMsg::AppStatus(AppStatus::Gray)));
        rig.at(3.0);
        let status = rig.machine.status(rig.now);
        assert_eq!(status.reenables, 1);
        assert_eq!(status.last_reenable_age_ms, Some(1000));
        assert_eq!(status.session.state, "established");
    }

    // ---- host requests and bad frames --------------------------------------------------------

    #[test]
    fn ping_is_answered_with_pong() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let out = rig.host(HOST, Frame::request(42, HostMsg::Ping));
        assert_eq!(sent(&out, HOST), vec![Frame::reply(42, GuestMsg::Pong)]);
    }

    #[test]
    fn process_requests_are_not_allowed() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let launch = HostMsg::LaunchProcess(LaunchSpec {
            id: "p".into(),
            argv: vec!["/bin/true".into()],
            env: vec![],
            cwd: None,
            user: None,
        });
        for (id, msg) in [
            (1, launch),
            (2, HostMsg::PollProcess { id: "p".into() }),
            (
                3,
                HostMsg::SignalProcess {
                    id: "p".into(),
                    signal: 15,
                },
            ),
        ] {
            let out = rig.host(HOST, Frame::request(id, msg));
            let frames = sent(&out, HOST);
            assert_eq!(frames[0].tag, Tag::Reply(id));
            match &frames[0].msg {
                GuestMsg::Error(e) => {
                    assert_eq!(e.code, ErrorCode::NotAllowed);
                    assert_eq!(e.message, NO_PROCESSES);
                }
                other => panic!("expected NotAllowed, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_request_kind_gets_unsupported_with_its_id_and_the_session_goes_on() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let out = rig.feed(Event::BadFrame {
            link: HOST,
            error: BadFrame::UnknownKind {
                tag: Tag::Request(9),
                kind: 77,
            },
        });
        let frames = sent(&out, HOST);
        assert_eq!(frames[0].tag, Tag::Reply(9));
        assert_eq!(error_code(&frames[0]), ErrorCode::Unsupported { kind: 77 });
        assert!(!closed(&out, HOST));
        assert!(rig.machine.has_session());
    }

    #[test]
    fn unknown_event_kind_gets_an_unsupported_event() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let out = rig.feed(Event::BadFrame {
            link: HOST,
            error: BadFrame::UnknownKind {
                tag: Tag::Event,
                kind: 200,
            },
        });
        let frames = sent(&out, HOST);
        assert_eq!(frames[0].tag, Tag::Event);
        assert_eq!(error_code(&frames[0]), ErrorCode::Unsupported { kind: 200 });
    }

    #[test]
    fn error_frames_are_never_answered() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let e = WireError::new(ErrorCode::BadRequest, "no");
        let out = rig.host(HOST, Frame::event(HostMsg::Error(e)));
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn broken_frame_on_a_stream_closes_the_session_and_keeps_the_app_state() {
        let mut rig = Rig::new();
        rig.session(HOST);
        rig.app(ApiRequest::Enable);
        rig.at(1.0).app(ApiRequest::MarkActive);
        let before = rig.machine.app().clone();
        let out = rig.feed(Event::BadFrame {
            link: HOST,
            error: BadFrame::Broken("not valid COBS".into()),
        });
        assert!(closed(&out, HOST));
        assert!(!rig.machine.has_session());
        assert_eq!(rig.machine.app(), &before);
    }

    #[test]
    fn a_second_connection_replaces_the_first() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let (ticket, _) = rig.app(ApiRequest::Enable);
        let out = rig.connect(2);
        assert!(closed(&out, HOST));
        assert_eq!(
            answer(&out, ticket),
            Some(done(Delivery::Recorded, None)),
            "the old session's request is answered"
        );
        let out = rig.hello(2);
        assert!(state_of(&sent(&out, 2)).enabled);
        let out = rig.host(HOST, Frame::request(5, HostMsg::Ping));
        assert!(out.is_empty(), "the old link is ignored: {out:?}");
    }

    #[test]
    fn unanswered_requests_time_out_as_recorded() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let (ticket, _) = rig.app(ApiRequest::Enable);
        assert_eq!(rig.machine.next_deadline(), Some(rig.t0 + REQUEST_TIMEOUT));
        let out = rig.at(10.0).feed(Event::Tick);
        assert_eq!(answer(&out, ticket), Some(done(Delivery::Recorded, None)));
        assert!(rig.machine.has_session(), "a slow host keeps its session");
    }

    #[test]
    fn reply_to_an_unknown_request_is_ignored() {
        let mut rig = Rig::new();
        rig.session(HOST);
        let out = rig.host(HOST, Frame::reply(999, HostMsg::Ack));
        assert!(out.is_empty());
    }

    // ---- virtio-serial -------------------------------------------------------------------------

    #[test]
    fn serial_hello_starts_a_session_after_a_resync_delimiter() {
        let mut rig = Rig::new();
        assert!(rig.open_serial(3).is_empty());
        assert_eq!(rig.machine.session_link(), None);
        let out = rig.hello(3);
        assert_eq!(out[0], Action::Resync { link: 3 });
        let frames = sent(&out, 3);
        assert!(matches!(frames[0].msg, GuestMsg::Hello(_)));
        assert!(matches!(frames[1].msg, GuestMsg::State(_)));
        assert!(rig.machine.has_session());
    }

    #[test]
    fn serial_requests_before_hello_are_told_to_say_hello() {
        let mut rig = Rig::new();
        rig.open_serial(3);
        let out = rig.host(3, Frame::request(4, HostMsg::Ping));
        let frames = sent(&out, 3);
        assert_eq!(frames[0].tag, Tag::Reply(4));
        assert_eq!(error_code(&frames[0]), ErrorCode::BadRequest);
    }

    #[test]
    fn a_new_serial_hello_restarts_the_session_and_resends_the_state() {
        let mut rig = Rig::new();
        rig.open_serial(3);
        rig.hello(3);
        rig.app(ApiRequest::Enable);
        let (ticket, _) = rig.app(ApiRequest::IsEnabled);
        let out = rig.hello(3);
        assert_eq!(
            answer(&out, ticket),
            Some(ApiResponse::Enabled {
                enabled: false,
                host_session: false
            }),
            "the old session's question is answered"
        );
        let resync = out.iter().position(|a| *a == Action::Resync { link: 3 });
        let hello = out.iter().position(
            |a| matches!(a, Action::Send { frame, .. } if matches!(frame.msg, GuestMsg::Hello(_))),
        );
        assert!(resync < hello && resync.is_some(), "{out:?}");
        assert!(state_of(&sent(&out, 3)).enabled);
        assert!(!closed(&out, 3), "a port is never closed");
    }

    #[test]
    fn broken_frames_on_serial_are_skipped() {
        let mut rig = Rig::new();
        rig.open_serial(3);
        rig.hello(3);
        let out = rig.feed(Event::BadFrame {
            link: 3,
            error: BadFrame::Broken("not valid COBS".into()),
        });
        assert!(out.is_empty(), "{out:?}");
        assert!(rig.machine.has_session());
    }

    #[test]
    fn a_stream_host_replaces_a_serial_session_without_closing_the_port() {
        let mut rig = Rig::new();
        rig.open_serial(3);
        rig.hello(3);
        let out = rig.connect(HOST);
        assert!(!closed(&out, 3));
        assert_eq!(rig.machine.session_link(), Some(HOST));
    }

    #[test]
    fn request_ids_skip_zero_when_they_wrap() {
        let mut rig = Rig::new();
        rig.machine.next_request = u32::MAX;
        assert_eq!(rig.machine.next_request_id(), u32::MAX);
        assert_eq!(rig.machine.next_request_id(), 1);
    }

    // ---- subsystems ----------------------------------------------------------------------------

    fn with_processes() -> Rig {
        let mut rig = Rig::new();
        rig.machine.settings.capabilities = Capabilities::HEARTBEAT | Capabilities::PROCESSES;
        rig
    }

    fn poll(id: &'static str) -> HostMsg {
        HostMsg::PollProcess { id: id.into() }
    }

    fn established(actions: &[Action]) -> Option<SessionSeq> {
        actions.iter().find_map(|a| match a {
            Action::SessionEstablished { session, .. } => Some(*session),
            _ => None,
        })
    }

    #[test]
    fn each_new_session_is_announced_to_the_subsystems_after_the_state() {
        let mut rig = Rig::new();

        let first = rig.session(HOST);
        let second = rig.session(2);

        let seq = established(&first).expect("announced");
        assert_eq!(established(&second), Some(seq + 1));
        let state_at = first
            .iter()
            .position(|a| {
                matches!(
                    a,
                    Action::Send {
                        frame: Frame {
                            msg: GuestMsg::State(_),
                            ..
                        },
                        ..
                    }
                )
            })
            .expect("state sent");
        let announced_at = first
            .iter()
            .position(|a| matches!(a, Action::SessionEstablished { .. }))
            .expect("announced");
        assert!(state_at < announced_at, "{first:?}");
    }

    #[test]
    fn outbound_messages_go_out_on_the_session_and_are_dropped_without_one() {
        let mut rig = Rig::new();
        let monitors = GuestMsg::Monitors(Vec::new());

        let before = rig.feed(Event::Outbound(monitors.clone()));
        rig.session(HOST);
        let during = rig.feed(Event::Outbound(monitors.clone()));

        assert!(before.is_empty(), "{before:?}");
        assert_eq!(sent(&during, HOST), vec![Frame::event(monitors)]);
    }

    #[test]
    fn process_requests_are_refused_without_the_capability() {
        let mut rig = Rig::new();
        rig.session(HOST);

        let out = rig.host(HOST, Frame::request(4, poll("job")));

        let frames = sent(&out, HOST);
        assert_eq!(frames.len(), 1, "{out:?}");
        assert_eq!(frames[0].tag, Tag::Reply(4));
        assert_eq!(error_code(&frames[0]), ErrorCode::NotAllowed);
    }

    #[test]
    fn process_requests_go_to_the_shell_and_the_answer_to_their_session() {
        let mut rig = with_processes();
        let seq = established(&rig.session(HOST)).expect("session");

        let out = rig.host(HOST, Frame::request(4, poll("job")));
        let answer = GuestMsg::Error(WireError::new(ErrorCode::NotFound, "no job"));
        let replied = rig.feed(Event::ReplyToHost {
            session: seq,
            id: 4,
            msg: answer.clone(),
        });

        assert_eq!(
            out,
            vec![Action::HostRequest {
                session: seq,
                id: 4,
                msg: poll("job")
            }]
        );
        assert_eq!(sent(&replied, HOST), vec![Frame::reply(4, answer)]);
    }

    #[test]
    fn an_answer_for_an_ended_session_is_dropped() {
        let mut rig = with_processes();
        let seq = established(&rig.session(HOST)).expect("session");
        rig.host(HOST, Frame::request(4, poll("job")));
        rig.session(2);

        let replied = rig.feed(Event::ReplyToHost {
            session: seq,
            id: 4,
            msg: GuestMsg::Ack,
        });

        assert!(replied.is_empty(), "{replied:?}");
    }

    #[test]
    fn the_state_carries_the_process_table_last_reported() {
        let mut rig = with_processes();
        let job = ProcessStatus {
            id: "job".into(),
            state: appmon_wire::ProcessState::Running { pid: 77 },
            command: "/bin/sleep 60".into(),
            user: "root".into(),
            started_unix_ms: 1,
            stdout_bytes: 0,
            stderr_bytes: 0,
        };

        rig.feed(Event::ProcessTable(vec![job.clone()]));
        let out = rig.session(HOST);

        assert_eq!(state_of(&sent(&out, HOST)).processes, vec![job]);
    }
}

#[cfg(test)]
mod monitor_tests {
    //! The session machine's part in the application monitors: the heartbeat rule and the
    //! protocol gate for what subsystems send.
    use super::*;
    use appmon_wire::{MonitorEvent, MonitorEventKind};

    const HOST: LinkId = 1;

    fn machine_with_session(protocol: u16) -> (Machine, Instant) {
        let now = Instant::now();
        let mut m = Machine::new(Settings::new("appmon-guest test", [9; 16]));
        m.handle(
            Event::LinkUp {
                link: HOST,
                kind: LinkKind::Stream,
                opening: Opening::HostFirst,
                transport: "unix".into(),
            },
            now,
        );
        let mut hello = Hello::new("appmon-host test", [1; 16], Capabilities::HEARTBEAT);
        hello.protocol = protocol;
        hello.min_protocol = 1;
        m.handle(
            Event::Frame {
                link: HOST,
                frame: Frame::event(HostMsg::Hello(hello)),
            },
            now,
        );
        assert!(m.has_session());
        (m, now)
    }

    fn app(m: &mut Machine, request: ApiRequest, now: Instant) -> (Vec<Action>, ApiResponse) {
        let out = m.handle(Event::App { ticket: 7, request }, now);
        let answer = out
            .iter()
            .find_map(|a| match a {
                Action::Answer { response, .. } => Some(response.clone()),
                _ => None,
            })
            .expect("answered");
        (out, answer)
    }

    fn frames(out: &[Action]) -> Vec<GuestMsg> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send { frame, .. } => Some(frame.msg.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn withheld_heartbeats_are_refused_and_not_forwarded_until_released() {
        let (mut m, now) = machine_with_session(2);
        m.handle(
            Event::App {
                ticket: 1,
                request: ApiRequest::Enable,
            },
            now,
        );
        m.handle(Event::WithholdHeartbeats(Some("db".into())), now);

        let (out, answer) = app(&mut m, ApiRequest::MarkActive, now);

        assert!(frames(&out).is_empty(), "{out:?}");
        assert!(
            matches!(&answer, ApiResponse::Refused { message } if message.contains("monitor db gave up")),
            "{answer:?}"
        );
        assert_eq!(m.app().heartbeats, 0);
        assert_eq!(m.app().last_heartbeat, None);
        assert_eq!(m.status(now).heartbeats_withheld_by.as_deref(), Some("db"));

        m.handle(Event::WithholdHeartbeats(None), now);
        let (out, _) = app(&mut m, ApiRequest::MarkActive, now);
        assert_eq!(frames(&out), vec![GuestMsg::MarkActive]);
    }

    #[test]
    fn gray_reenable_vouches_for_no_heartbeat_while_they_are_withheld() {
        let (mut m, now) = machine_with_session(2);
        m.handle(
            Event::App {
                ticket: 1,
                request: ApiRequest::Enable,
            },
            now,
        );
        app(&mut m, ApiRequest::MarkActive, now);
        m.handle(Event::WithholdHeartbeats(Some("db".into())), now);

        let out = m.handle(
            Event::Frame {
                link: HOST,
                frame: Frame::event(HostMsg::AppStatus(AppStatus::Gray)),
            },
            now,
        );

        assert_eq!(frames(&out), vec![GuestMsg::Enable]);
    }

    #[test]
    fn monitor_messages_are_not_sent_to_a_protocol_1_host() {
        let event = GuestMsg::Monitor(MonitorEvent {
            monitor: "db".into(),
            kind: MonitorEventKind::Recovered,
        });
        let (mut old, now) = machine_with_session(1);
        let (mut new, _) = machine_with_session(2);

        let to_old = old.handle(Event::Outbound(event.clone()), now);
        let to_new = new.handle(Event::Outbound(event.clone()), now);

        assert!(to_old.is_empty(), "{to_old:?}");
        assert_eq!(frames(&to_new), vec![event]);
    }

    #[test]
    fn without_monitors_the_list_is_empty() {
        let (mut m, now) = machine_with_session(2);
        let (_, answer) = app(&mut m, ApiRequest::Monitors, now);
        assert_eq!(answer, ApiResponse::Monitors { monitors: vec![] });
    }
}
