//! A blocking client of the local API, for Rust applications (and the `appmon` CLI).
//!
//! ```no_run
//! use appmon_guest_agent::client::{Client, AppStatus};
//!
//! let mut agent = Client::new("/run/appmon/appmon.sock");
//! agent.enable()?;
//! loop {
//!     // ... check the application's health ...
//!     agent.mark_active()?;
//!     if agent.get_app_status()? == AppStatus::Gray {
//!         // The agent re-enables on its own after a migration; nothing to do.
//!     }
//!     std::thread::sleep(std::time::Duration::from_secs(10));
//! }
//! # Ok::<(), appmon_guest_agent::client::ClientError>(())
//! ```
//!
//! The client connects on first use and keeps the connection; when the agent restarts, the
//! next call connects again (once) and retries.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use appmon_wire::{AppState, AppStatus, MonitorStatus};

pub use crate::api::{AgentStatus, Delivery};
use crate::api::{ApiRequest, ApiResponse, PostedState};
use crate::config::DEFAULT_API_SOCKET;

/// How long a call waits for the agent by default. The agent answers within its own request
/// timeout (10 s) even when the host does not, so this is only a bound on a stuck agent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// A call that did not succeed. The `appmon` command maps each to its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the appmon agent is not reachable at {path}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lost the connection to the appmon agent at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the appmon agent at {path} closed the connection without answering")]
    Closed { path: PathBuf },
    #[error("the appmon agent sent an answer this client does not understand: {line:?}")]
    Protocol {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the appmon agent answered {verb} with {answer}")]
    Unexpected { verb: &'static str, answer: String },
    #[error("refused: {message}")]
    Refused { message: String },
    #[error("the host refused: {message}")]
    Host { message: String },
}

/// What became of enable, disable or postAppState.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether a host took it, or the agent recorded it for the next host session.
    pub delivery: Delivery,
    /// The host's status after it, where the host said.
    pub status: Option<AppStatus>,
}

/// Whether the host monitors this guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enabled {
    pub enabled: bool,
    /// False: no host is connected, which reads as not enabled.
    pub host_session: bool,
}

struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// A connection to the local agent. See the module documentation.
pub struct Client {
    path: PathBuf,
    timeout: Option<Duration>,
    connection: Option<Connection>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.path)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new(DEFAULT_API_SOCKET)
    }
}

impl Client {
    /// A client of the agent at `path`; connects on first use.
    pub fn new(path: impl AsRef<Path>) -> Client {
        Client {
            path: path.as_ref().to_owned(),
            timeout: Some(DEFAULT_TIMEOUT),
            connection: None,
        }
    }

    /// A client that is connected already, so that an unreachable agent shows at once.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let mut client = Client::new(path);
        client.connection = Some(client.open()?);
        Ok(client)
    }

    /// Bounds each call; `None` waits for ever.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Client {
        self.timeout = timeout;
        self.connection = None;
        self
    }

    /// `VMGuestAppMonitor_Enable`: start monitoring this application.
    pub fn enable(&mut self) -> Result<Outcome, ClientError> {
        self.done(ApiRequest::Enable)
    }

    /// `VMGuestAppMonitor_Disable`: stop monitoring.
    pub fn disable(&mut self) -> Result<Outcome, ClientError> {
        self.done(ApiRequest::Disable)
    }

    /// `VMGuestAppMonitor_MarkActive`: a heartbeat. Refused unless the application enabled.
    pub fn mark_active(&mut self) -> Result<Delivery, ClientError> {
        self.done(ApiRequest::MarkActive).map(|o| o.delivery)
    }

    /// `VMGuestAppMonitor_PostAppState`: ask for a reset (`NeedReset`) or take it back (`Ok`).
    pub fn post_app_state(&mut self, state: AppState) -> Result<Outcome, ClientError> {
        let state = match state {
            AppState::Ok => PostedState::Ok,
            AppState::NeedReset => PostedState::NeedReset,
        };
        self.done(ApiRequest::PostAppState { state })
    }

    /// `VMGuestAppMonitor_IsEnabled`: does the host monitor this guest?
    pub fn is_enabled(&mut self) -> Result<bool, ClientError> {
        self.is_enabled_detail().map(|e| e.enabled)
    }

    /// Like [`Client::is_enabled`], and whether a host is connected at all.
    pub fn is_enabled_detail(&mut self) -> Result<Enabled, ClientError> {
        match self.call(ApiRequest::IsEnabled)? {
            ApiResponse::Enabled {
                enabled,
                host_session,
            } => Ok(Enabled {
                enabled,
                host_session,
            }),
            other => Err(unexpected("isEnabled", other)),
        }
    }

    /// `VMGuestAppMonitor_GetAppStatus`: green, red or gray.
    pub fn get_app_status(&mut self) -> Result<AppStatus, ClientError> {
        match self.call(ApiRequest::GetAppStatus)? {
            ApiResponse::AppStatus { status } => Ok(status.into()),
            other => Err(unexpected("getAppStatus", other)),
        }
    }

    /// The agent's own state, for operators.
    pub fn status(&mut self) -> Result<AgentStatus, ClientError> {
        match self.call(ApiRequest::Status)? {
            ApiResponse::Status(status) => Ok(*status),
            other => Err(unexpected("status", other)),
        }
    }

    /// Every application monitor's state (`appmon monitors`); empty when none are configured.
    pub fn monitors(&mut self) -> Result<Vec<MonitorStatus>, ClientError> {
        match self.call(ApiRequest::Monitors)? {
            ApiResponse::Monitors { monitors } => Ok(monitors),
            other => Err(unexpected("monitors", other)),
        }
    }

    fn done(&mut self, request: ApiRequest) -> Result<Outcome, ClientError> {
        match self.call(request)? {
            ApiResponse::Done { host, status } => Ok(Outcome {
                delivery: host,
                status: status.map(AppStatus::from),
            }),
            other => Err(unexpected(request.verb(), other)),
        }
    }

    /// Sends one request and reads its answer; refusals and host errors become errors.
    pub fn call(&mut self, request: ApiRequest) -> Result<ApiResponse, ClientError> {
        let response = match self.connection.take() {
            // A kept connection may have died with a restarted agent: try once more on a
            // fresh one. Every verb is safe to repeat.
            Some(mut connection) => match self.exchange(&mut connection, &request) {
                Ok(response) => {
                    self.connection = Some(connection);
                    response
                }
                Err(ClientError::Io { .. } | ClientError::Closed { .. }) => self.fresh(&request)?,
                Err(e) => return Err(e),
            },
            None => self.fresh(&request)?,
        };
        match response {
            ApiResponse::Refused { message } => Err(ClientError::Refused { message }),
            ApiResponse::HostError { message } => Err(ClientError::Host { message }),
            other => Ok(other),
        }
    }

    fn fresh(&mut self, request: &ApiRequest) -> Result<ApiResponse, ClientError> {
        let mut connection = self.open()?;
        let response = self.exchange(&mut connection, request)?;
        self.connection = Some(connection);
        Ok(response)
    }

    fn open(&self) -> Result<Connection, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            path: self.path.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.path).map_err(unreachable)?;
        stream.set_read_timeout(self.timeout).map_err(unreachable)?;
        stream
            .set_write_timeout(self.timeout)
            .map_err(unreachable)?;
        let writer = stream.try_clone().map_err(unreachable)?;
        Ok(Connection {
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn exchange(
        &self,
        connection: &mut Connection,
        request: &ApiRequest,
    ) -> Result<ApiResponse, ClientError> {
        let io_error = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(request).map_err(|source| ClientError::Protocol {
            line: String::new(),
            source,
        })?;
        line.push(b'\n');
        connection.writer.write_all(&line).map_err(io_error)?;
        let mut answer = String::new();
        let n = connection.reader.read_line(&mut answer).map_err(io_error)?;
        if n == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(answer.trim_end()).map_err(|source| ClientError::Protocol {
            line: answer.trim_end().to_owned(),
            source,
        })
    }
}

fn unexpected(verb: &'static str, answer: ApiResponse) -> ClientError {
    ClientError::Unexpected {
        verb,
        answer: format!("{answer:?}"),
    }
}
