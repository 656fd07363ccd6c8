//! The local control socket between `appmonctl` and the daemon.
//!
//! One JSON request per line, one JSON response per line (the schema is `appmon-control`'s
//! [`Request`] and [`Response`]), then the connection may carry the next request. Handlers never
//! call libvirt: they pass a typed [`ControlRequest`] to the supervisor and write back what it
//! answers. `enable` and `disable` are carried out by the daemon too (through the same backend
//! connection), so `appmonctl` needs no libvirt access and works with every URI the daemon uses,
//! including libvirt's per-connection `test:///` driver.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use appmon_control::{ErrorKind, LaunchRequest, Request, Response};
use appmon_libvirt_backend::MonitorSpec;
use appmon_wire::{LaunchSpec, OutputStream, ProcessId, Text};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// The longest request line accepted.
const MAX_REQUEST: u64 = 256 * 1024;
/// How long a handler waits for the supervisor.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the directory of the control socket {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path} is in use by a running host agent")]
    InUse { path: PathBuf },
    #[error("cannot bind the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the host agent at {path} (is appmon-host running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the host agent at {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the host agent at {path} sent an answer appmonctl does not understand")]
    Answer {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What the control socket asks the supervisor: a [`Request`] with its spec parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlRequest {
    List,
    Show {
        domain: String,
    },
    Clear {
        domain: String,
    },
    /// Writes the spec (`Some`) or removes it (`None`).
    SetSpec {
        domain: String,
        spec: Option<MonitorSpec>,
    },
    Counters {
        domain: String,
        entity: Option<String>,
    },
    /// A request for the domain's guest agent, its fields bounded as the wire bounds them.
    Guest {
        domain: String,
        call: GuestCall,
    },
    /// The guest's launched processes as last reported.
    Processes {
        domain: String,
    },
    /// MON's alarm view (rules and raised alarms), of one domain when named.
    Alarms {
        domain: Option<String>,
    },
    /// Sets a run-time alarm rule (checked by the supervisor, which keeps the rules).
    AlarmSet {
        rule: appmon_control::AlarmRuleSpec,
    },
    AlarmRemove {
        domain: String,
        entity: String,
        counter: String,
    },
}

/// An operator's request to a guest agent (`appmonctl run`, `kill`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestCall {
    Launch(LaunchSpec),
    Poll {
        id: ProcessId,
    },
    Signal {
        id: ProcessId,
        signal: i32,
    },
    ReadOutput {
        id: ProcessId,
        stream: OutputStream,
        from: u64,
    },
    Release {
        id: ProcessId,
    },
}

/// `text` within the wire's bound for it, or an error that names what was too long.
fn bounded<L: appmon_wire::text::Limit>(text: &str, what: &str) -> Result<Text<L>, String> {
    Text::new(text).map_err(|e| format!("{what}: {e}"))
}

fn launch_spec(launch: LaunchRequest) -> Result<LaunchSpec, String> {
    if launch.argv.is_empty() {
        return Err("launch: no command given".into());
    }
    if launch.id.is_empty() {
        return Err("launch: empty process id".into());
    }
    Ok(LaunchSpec {
        id: bounded(&launch.id, "process id")?,
        argv: launch
            .argv
            .iter()
            .enumerate()
            .map(|(i, a)| bounded(a, &format!("argument {i}")))
            .collect::<Result<_, _>>()?,
        env: launch
            .env
            .iter()
            .map(|(k, v)| {
                if k.is_empty() || k.contains(['=', '\0']) {
                    return Err(format!("environment variable {k:?}: a name without '='"));
                }
                Ok((
                    bounded(k, "environment variable name")?,
                    bounded(v, &format!("the value of {k}"))?,
                ))
            })
            .collect::<Result<_, _>>()?,
        cwd: launch
            .cwd
            .as_deref()
            .map(|c| bounded(c, "working directory"))
            .transpose()?,
        user: launch
            .user
            .as_deref()
            .map(|u| bounded(u, "user"))
            .transpose()?,
    })
}

fn stream(stream: appmon_control::OutputStream) -> OutputStream {
    match stream {
        appmon_control::OutputStream::Stdout => OutputStream::Stdout,
        appmon_control::OutputStream::Stderr => OutputStream::Stderr,
    }
}

/// A control request with where to send its answer.
pub type ControlCall = (ControlRequest, oneshot::Sender<Response>);

impl ControlRequest {
    fn parse(request: Request) -> Result<ControlRequest, String> {
        Ok(match request {
            Request::List => ControlRequest::List,
            Request::Show { domain } => ControlRequest::Show { domain },
            Request::Clear { domain } => ControlRequest::Clear { domain },
            Request::Disable { domain } => ControlRequest::SetSpec { domain, spec: None },
            Request::Counters { domain, entity } => ControlRequest::Counters { domain, entity },
            Request::Enable { domain, spec_xml } => ControlRequest::SetSpec {
                domain,
                spec: Some(
                    MonitorSpec::from_xml(&spec_xml)
                        .map_err(|e| format!("invalid monitoring spec: {e}"))?,
                ),
            },
            Request::Processes { domain } => ControlRequest::Processes { domain },
            Request::Alarms { domain } => ControlRequest::Alarms { domain },
            Request::AlarmSet { rule } => ControlRequest::AlarmSet { rule },
            Request::AlarmRemove {
                domain,
                entity,
                counter,
            } => ControlRequest::AlarmRemove {
                domain,
                entity,
                counter,
            },
            Request::Launch { domain, launch } => ControlRequest::Guest {
                domain,
                call: GuestCall::Launch(launch_spec(launch)?),
            },
            Request::Poll { domain, id } => ControlRequest::Guest {
                domain,
                call: GuestCall::Poll {
                    id: bounded(&id, "process id")?,
                },
            },
            Request::Signal { domain, id, signal } => {
                if !(1..=64).contains(&signal) {
                    return Err(format!("signal {signal}: expected 1 to 64"));
                }
                ControlRequest::Guest {
                    domain,
                    call: GuestCall::Signal {
                        id: bounded(&id, "process id")?,
                        signal,
                    },
                }
            }
            Request::ReadOutput {
                domain,
                id,
                stream: which,
                from,
            } => ControlRequest::Guest {
                domain,
                call: GuestCall::ReadOutput {
                    id: bounded(&id, "process id")?,
                    stream: stream(which),
                    from,
                },
            },
            Request::Release { domain, id } => ControlRequest::Guest {
                domain,
                call: GuestCall::Release {
                    id: bounded(&id, "process id")?,
                },
            },
        })
    }
}

/// Binds the control socket: creates its directory, replaces a stale socket file, refuses one a
/// live daemon answers on, and makes it accessible to its owner and group only.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::Dir {
            path: path.to_path_buf(),
            source,
        })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    Ok(listener)
}

/// Accepts connections until shutdown; each is served by its own task.
pub async fn serve(
    listener: UnixListener,
    supervisor: mpsc::Sender<ControlCall>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, supervisor.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn handle(stream: UnixStream, supervisor: mpsc::Sender<ControlCall>) {
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(r, MAX_REQUEST));
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let response = match serde_json::from_str::<Request>(line.trim())
            .map_err(|e| format!("bad request: {e}"))
            .and_then(ControlRequest::parse)
        {
            Err(message) => Response::Error {
                kind: ErrorKind::BadRequest,
                message,
            },
            Ok(request) => ask(&supervisor, request).await,
        };
        let mut text = match serde_json::to_string(&response) {
            Ok(t) => t,
            Err(e) => {
                format!("{{\"result\":\"error\",\"kind\":\"bad_request\",\"message\":\"{e}\"}}")
            }
        };
        text.push('\n');
        if w.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn ask(supervisor: &mpsc::Sender<ControlCall>, request: ControlRequest) -> Response {
    let (tx, rx) = oneshot::channel();
    let gone = || Response::Error {
        kind: ErrorKind::BadRequest,
        message: "the host agent is shutting down".into(),
    };
    if supervisor.send((request, tx)).await.is_err() {
        return gone();
    }
    match tokio::time::timeout(ANSWER_LIMIT, rx).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => gone(),
        Err(_) => Response::Error {
            kind: ErrorKind::Libvirt,
            message: "the host agent did not answer in time (libvirt slow?)".into(),
        },
    }
}

/// Sends one request and reads the answer (blocking; for `appmonctl`).
pub fn call(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let _ = stream.set_read_timeout(Some(ANSWER_LIMIT + Duration::from_secs(5)));
    let mut text = serde_json::to_string(request).map_err(|e| io(std::io::Error::other(e)))?;
    text.push('\n');
    (&stream).write_all(text.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(answer.trim()).map_err(|source| ControlError::Answer {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_with_a_broken_spec_is_a_bad_request() {
        let r = Request::Enable {
            domain: "vm1".into(),
            spec_xml: "<nope/>".into(),
        };
        assert!(ControlRequest::parse(r).is_err());
    }
}
