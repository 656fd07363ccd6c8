//! The local API socket: applications and the `appmon` CLI connect here (see [`crate::api`]).
//!
//! Each client connection is a small task that reads request lines, hands each request to the
//! daemon and writes the answer back. The daemon never waits for a client: an application that
//! closes its socket mid-request loses only its own answer, and whatever it asked for (an
//! enable, a needReset) still happens.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tracing::{debug, warn};

use crate::api::{ApiRequest, ApiResponse, MAX_REQUEST_LINE};
use crate::inbox::Input;
use crate::transport::{self, TransportError};

/// Application connections served at once; more are answered "busy" and closed.
pub const MAX_CLIENTS: usize = 64;

/// The local API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Bind(TransportError),
    #[error("cannot set mode {mode:o} on {path}")]
    Mode {
        path: PathBuf,
        mode: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("socket_group `{group}`: no such group")]
    NoSuchGroup { group: String },
    #[error("socket_group `{group}`: cannot look it up")]
    GroupLookup {
        group: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot give {path} to group `{group}`")]
    Chown {
        path: PathBuf,
        group: String,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the API socket at `path` and gives it `mode` and `group`.
pub fn bind(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, LocalError> {
    let listener = transport::bind_unix(path).map_err(LocalError::Bind)?;
    set_access(path, mode, group)?;
    Ok(listener)
}

/// Applies the socket's permission bits and owning group (again, on a reload).
pub fn set_access(path: &Path, mode: u32, group: Option<&str>) -> Result<(), LocalError> {
    if let Some(group) = group {
        let gid = resolve_group(group)?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| LocalError::Chown {
            path: path.to_owned(),
            group: group.to_owned(),
            source,
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        LocalError::Mode {
            path: path.to_owned(),
            mode,
            source,
        }
    })
}

/// A group name, or a numeric gid.
fn resolve_group(group: &str) -> Result<u32, LocalError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(LocalError::NoSuchGroup {
            group: group.to_owned(),
        }),
        Err(source) => Err(LocalError::GroupLookup {
            group: group.to_owned(),
            source,
        }),
    }
}

/// Accepts application connections for ever.
pub async fn serve(listener: UnixListener, inputs: mpsc::Sender<Input>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "local API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let inputs = inputs.clone();
                tokio::spawn(async move {
                    serve_client(stream, inputs).await;
                    drop(permit);
                });
            }
            Err(_) => {
                warn!("too many local API clients; refusing one");
                tokio::spawn(async move {
                    let mut stream = stream;
                    let busy = ApiResponse::Refused {
                        message: format!("the agent serves at most {MAX_CLIENTS} clients at once"),
                    };
                    let _ = write_response(&mut stream, &busy).await;
                });
            }
        }
    }
}

/// Serves one application connection until it closes.
async fn serve_client(stream: UnixStream, inputs: mpsc::Sender<Input>) {
    let (read, mut write) = stream.into_split();
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_REQUEST_LINE));
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(line) => line,
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                let refused = ApiResponse::Refused {
                    message: format!("request longer than {MAX_REQUEST_LINE} bytes"),
                };
                let _ = write_response(&mut write, &refused).await;
                return;
            }
            Err(LinesCodecError::Io(e)) => {
                debug!(error = %e, "local API client read failed");
                return;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let response = match serde_json::from_str::<ApiRequest>(&line) {
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                if inputs.send(Input::App { request, reply }).await.is_err() {
                    return;
                }
                match answer.await {
                    Ok(response) => response,
                    // The daemon is stopping.
                    Err(_) => return,
                }
            }
            Err(e) => ApiResponse::Refused {
                message: format!("malformed request: {e}"),
            },
        };
        if let Err(e) = write_response(&mut write, &response).await {
            // The application left before its answer: its request still took effect.
            debug!(error = %e, "local API client went away before its answer");
            return;
        }
    }
}

async fn write_response<W: AsyncWriteExt + Unpin>(
    write: &mut W,
    response: &ApiResponse,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_groups_need_no_lookup() {
        assert_eq!(resolve_group("0").expect("gid"), 0);
    }

    #[test]
    fn unknown_group_names_are_errors_naming_them() {
        let err = resolve_group("appmon-no-such-group").expect_err("unknown");
        assert!(err.to_string().contains("appmon-no-such-group"), "{err}");
    }

    #[test]
    fn root_group_resolves_by_name() {
        assert_eq!(resolve_group("root").expect("root exists"), 0);
    }
}
