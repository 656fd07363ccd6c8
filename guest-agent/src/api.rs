//! The local API between applications and the agent: JSON lines over a Unix socket.
//!
//! A client writes one request object per line and reads one response object per line, in
//! order; a connection may carry any number of requests. JSON keeps the socket readable for an
//! operator with `socat` (`echo '{"op":"isEnabled"}' | socat - UNIX:/run/appmon/appmon.sock`).
//!
//! Requests: `{"op":"enable"}`, `{"op":"disable"}`, `{"op":"markActive"}`,
//! `{"op":"isEnabled"}`, `{"op":"getAppStatus"}`,
//! `{"op":"postAppState","state":"appStateNeedReset"}` (or `appStateOk`), `{"op":"status"}`,
//! `{"op":"monitors"}`.
//!
//! Responses carry a `reply` field naming their shape; see [`ApiResponse`].

use serde::{Deserialize, Serialize};

/// The longest request line the agent reads; longer lines are refused and the connection closed.
pub const MAX_REQUEST_LINE: usize = 4096;

/// What an application asks the agent, with vSphere's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
pub enum ApiRequest {
    /// `VMGuestAppMonitor_Enable`.
    Enable,
    /// `VMGuestAppMonitor_Disable`.
    Disable,
    /// `VMGuestAppMonitor_MarkActive`: a heartbeat.
    MarkActive,
    /// `VMGuestAppMonitor_IsEnabled`: does the host monitor this guest?
    IsEnabled,
    /// `VMGuestAppMonitor_GetAppStatus`: green, red or gray.
    GetAppStatus,
    /// `VMGuestAppMonitor_PostAppState`.
    PostAppState { state: PostedState },
    /// The agent's own state, for operators (`appmon status`).
    Status,
    /// Every application monitor's state (`appmon monitors`).
    Monitors,
}

impl ApiRequest {
    /// The vSphere spelling, for logs and messages.
    pub fn verb(&self) -> &'static str {
        match self {
            ApiRequest::Enable => "enable",
            ApiRequest::Disable => "disable",
            ApiRequest::MarkActive => "markActive",
            ApiRequest::IsEnabled => "isEnabled",
            ApiRequest::GetAppStatus => "getAppStatus",
            ApiRequest::PostAppState { .. } => "postAppState",
            ApiRequest::Status => "status",
            ApiRequest::Monitors => "monitors",
        }
    }
}

/// The state `postAppState` posts, spelled as vSphere spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostedState {
    #[serde(rename = "appStateOk")]
    Ok,
    #[serde(rename = "appStateNeedReset")]
    NeedReset,
}

impl From<PostedState> for appmon_wire::AppState {
    fn from(state: PostedState) -> Self {
        match state {
            PostedState::Ok => appmon_wire::AppState::Ok,
            PostedState::NeedReset => appmon_wire::AppState::NeedReset,
        }
    }
}

/// Green, red or gray, lower-case in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Green,
    Red,
    Gray,
}

impl From<appmon_wire::AppStatus> for Color {
    fn from(status: appmon_wire::AppStatus) -> Self {
        match status {
            appmon_wire::AppStatus::Green => Color::Green,
            appmon_wire::AppStatus::Red => Color::Red,
            appmon_wire::AppStatus::Gray => Color::Gray,
        }
    }
}

impl From<Color> for appmon_wire::AppStatus {
    fn from(color: Color) -> Self {
        match color {
            Color::Green => appmon_wire::AppStatus::Green,
            Color::Red => appmon_wire::AppStatus::Red,
            Color::Gray => appmon_wire::AppStatus::Gray,
        }
    }
}

/// The agent's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "camelCase")]
pub enum ApiResponse {
    /// enable, disable, markActive, postAppState: done. `host` says whether a host session took
    /// it (`confirmed`), or it is recorded and goes to the host with the state on its next
    /// connect (`recorded`). `status` is the host's answer where it gave one.
    Done {
        host: Delivery,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<Color>,
    },
    /// isEnabled. `host_session` false means no host is connected, which reads as not enabled.
    Enabled {
        enabled: bool,
        #[serde(rename = "hostSession")]
        host_session: bool,
    },
    /// getAppStatus.
    AppStatus { status: Color },
    /// status.
    Status(Box<AgentStatus>),
    /// monitors: each monitor's state, as the host gets it (appmon-wire's `MonitorStatus`).
    Monitors {
        monitors: Vec<appmon_wire::MonitorStatus>,
    },
    /// The agent refused the request (markActive before enable, a malformed request).
    Refused { message: String },
    /// The host answered the request with an error.
    HostError { message: String },
}

/// How far a change went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// The host received it (and answered, for requests).
    Confirmed,
    /// The agent recorded it; the host gets it with the full state when it (re)connects.
    Recorded,
}

/// The agent's state as `appmon status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// `appmon-guest <version>`.
    pub agent: String,
    /// The application has enabled monitoring.
    pub enabled: bool,
    /// A needReset is posted and not taken back.
    pub need_reset: bool,
    /// Milliseconds since the application's last markActive.
    pub last_heartbeat_age_ms: Option<u64>,
    /// markActive calls taken since the agent started.
    pub heartbeats: u64,
    /// What getAppStatus answers now.
    pub app_status: Color,
    /// The status the host last sent (kept across disconnects).
    pub last_host_status: Option<Color>,
    /// The host session.
    pub session: SessionInfo,
    /// Host sessions that completed the handshake since the agent started.
    pub sessions: u64,
    /// Times the agent enabled again on its own after the host said Gray.
    pub reenables: u64,
    /// Milliseconds since the last such re-enable.
    pub last_reenable_age_ms: Option<u64>,
    /// The application monitors that withhold the application's heartbeats (failure action
    /// stop-heartbeats), comma-separated; absent when none do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeats_withheld_by: Option<String>,
}

/// The host session, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// `none`, `handshake` or `established`.
    pub state: String,
    /// How the host is connected (`vsock cid 2 port 49152`, `unix`, `virtio-serial /dev/...`).
    pub transport: Option<String>,
    /// The host agent's name and version from its Hello.
    pub peer: Option<String>,
    /// The negotiated protocol version.
    pub protocol: Option<u16>,
    /// Milliseconds since the connection came up.
    pub age_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_use_the_vsphere_spellings() {
        let cases = [
            (r#"{"op":"enable"}"#, ApiRequest::Enable),
            (r#"{"op":"markActive"}"#, ApiRequest::MarkActive),
            (r#"{"op":"isEnabled"}"#, ApiRequest::IsEnabled),
            (r#"{"op":"getAppStatus"}"#, ApiRequest::GetAppStatus),
            (r#"{"op":"monitors"}"#, ApiRequest::Monitors),
            (
                r#"{"op":"postAppState","state":"appStateNeedReset"}"#,
                ApiRequest::PostAppState {
                    state: PostedState::NeedReset,
                },
            ),
            (
                r#"{"op":"postAppState","state":"appStateOk"}"#,
                ApiRequest::PostAppState {
                    state: PostedState::Ok,
                },
            ),
        ];
        for (text, want) in cases {
            let got: ApiRequest = serde_json::from_str(text).expect(text);
            assert_eq!(got, want);
            assert_eq!(serde_json::to_string(&want).expect("serializes"), text);
        }
    }

    #[test]
    fn unknown_verbs_and_fields_are_refused() {
        for text in [
            r#"{"op":"reset"}"#,
            r#"{"op":"postAppState","state":"appStateOk","force":true}"#,
            r#"{"op":"postAppState","state":"needReset"}"#,
        ] {
            assert!(serde_json::from_str::<ApiRequest>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn responses_round_trip() {
        let cases = [
            ApiResponse::Done {
                host: Delivery::Confirmed,
                status: Some(Color::Green),
            },
            ApiResponse::Done {
                host: Delivery::Recorded,
                status: None,
            },
            ApiResponse::Enabled {
                enabled: false,
                host_session: false,
            },
            ApiResponse::AppStatus {
                status: Color::Gray,
            },
            ApiResponse::Refused {
                message: "no".into(),
            },
        ];
        for response in cases {
            let text = serde_json::to_string(&response).expect("serializes");
            let back: ApiResponse = serde_json::from_str(&text).expect("parses");
            assert_eq!(back, response, "{text}");
        }
    }
}
