//! Where a guest agent is reached, and connecting to it: kernel vhost-vsock, hybrid vsock
//! (a vhost-user-vsock backend's Unix socket with its `CONNECT`/`OK` handshake), or a
//! virtio-serial channel's host-side Unix socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use appmon_control::{ConnectFailure, ConnectFailureKind};
use appmon_libvirt_backend::Transport;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no vsock CID: neither the spec nor the domain's <vsock> device names one")]
    NoCid,
    #[error("connecting to {endpoint} failed")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hybrid vsock handshake on {endpoint} failed")]
    Hybrid {
        endpoint: String,
        #[source]
        source: appmon_wire::hybrid::HybridError,
    },
    #[error("cannot listen for guest announcements on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {endpoint} timed out")]
    ConnectTimeout { endpoint: String },
    #[error("the domain has no virtio-serial channel named {name} with a socket path")]
    NoChannel { name: String },
    #[error("looking up the channel {name} in the domain XML failed: {reason}")]
    ChannelLookup { name: String, reason: String },
}

impl SessionError {
    /// What kind of connection failure this is, for `supervisor::trouble`: a vsock backend
    /// that drops the `CONNECT` (a broken pipe, a reset or a close without a byte, at random)
    /// is one kind, a wrong answer another, a socket that cannot be reached a third.
    pub fn failure_kind(&self) -> ConnectFailureKind {
        use appmon_wire::hybrid::HybridError;
        match self {
            SessionError::Hybrid { source, .. } => match source {
                HybridError::Send { .. } | HybridError::Receive { .. } => {
                    ConnectFailureKind::DialRefused
                }
                HybridError::Closed { got, .. } if got.is_empty() => {
                    ConnectFailureKind::DialRefused
                }
                HybridError::Closed { .. } | HybridError::Reply { .. } => {
                    ConnectFailureKind::DialBadReply
                }
            },
            SessionError::NoCid
            | SessionError::Connect { .. }
            | SessionError::Listen { .. }
            | SessionError::ConnectTimeout { .. }
            | SessionError::NoChannel { .. }
            | SessionError::ChannelLookup { .. } => ConnectFailureKind::DialUnreachable,
        }
    }

    /// This failure as the supervisor takes it.
    pub fn connect_failure(&self) -> ConnectFailure {
        ConnectFailure::new(self.failure_kind(), appmon_wire::report::error_chain(self))
    }
}

/// Finds a channel's socket path in the live domain XML (blocking; run off the runtime).
pub type ChannelLookup = Arc<dyn Fn() -> Result<Option<PathBuf>, String> + Send + Sync>;

/// Where the guest agent is reached.
#[derive(Clone)]
pub enum Endpoint {
    /// vhost-user-vsock backend socket: `CONNECT <port>\n`, `OK <port>\n`.
    Hybrid { path: PathBuf, port: u32 },
    /// A virtio-serial channel's host-side socket.
    Channel { path: PathBuf },
    /// A virtio-serial channel found by name in the live XML at each connection attempt.
    ChannelByName { name: String, lookup: ChannelLookup },
    /// Kernel vhost-vsock. Never connected on a development machine.
    Vsock { cid: u32, port: u32 },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A connected byte stream to a guest.
pub trait GuestIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> GuestIo for T {}

impl Endpoint {
    /// The endpoint of a spec's transport. `domain_cid` is the CID of the domain's `<vsock>`.
    pub fn from_transport(
        transport: &Transport,
        domain_cid: Option<u32>,
        lookup: ChannelLookup,
    ) -> Result<Endpoint, SessionError> {
        Ok(match transport {
            Transport::HybridVsock { path, port } => Endpoint::Hybrid {
                path: path.clone(),
                port: *port,
            },
            Transport::Channel {
                path: Some(path), ..
            } => Endpoint::Channel { path: path.clone() },
            Transport::Channel { path: None, name } => Endpoint::ChannelByName {
                name: name.clone(),
                lookup,
            },
            Transport::Vsock { cid, port } => Endpoint::Vsock {
                cid: cid.or(domain_cid).ok_or(SessionError::NoCid)?,
                port: *port,
            },
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Endpoint::Hybrid { path, port } => {
                format!("hybrid vsock {} port {port}", path.display())
            }
            Endpoint::Channel { path } => format!("channel {}", path.display()),
            Endpoint::ChannelByName { name, .. } => format!("channel {name}"),
            Endpoint::Vsock { cid, port } => format!("vsock cid {cid} port {port}"),
        }
    }

    /// Whether the transport has connection boundaries (vsock) or not (virtio-serial).
    pub fn is_stream(&self) -> bool {
        !matches!(
            self,
            Endpoint::Channel { .. } | Endpoint::ChannelByName { .. }
        )
    }

    /// Connects, including the hybrid vsock handshake.
    pub async fn connect(&self, limit: Duration) -> Result<Box<dyn GuestIo>, SessionError> {
        let endpoint = self.describe();
        let attempt = async {
            match self {
                Endpoint::Hybrid { path, port } => {
                    let mut s = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|source| SessionError::Connect {
                            endpoint: endpoint.clone(),
                            source,
                        })?;
                    appmon_wire::hybrid::connect_handshake(&mut s, *port)
                        .await
                        .map_err(|source| SessionError::Hybrid {
                            endpoint: endpoint.clone(),
                            source,
                        })?;
                    Ok(Box::new(s) as Box<dyn GuestIo>)
                }
                Endpoint::Channel { path } => unix(path, &endpoint).await,
                Endpoint::ChannelByName { name, lookup } => {
                    let lookup = lookup.clone();
                    let found = tokio::task::spawn_blocking(move || lookup())
                        .await
                        .map_err(|e| SessionError::ChannelLookup {
                            name: name.clone(),
                            reason: e.to_string(),
                        })?
                        .map_err(|reason| SessionError::ChannelLookup {
                            name: name.clone(),
                            reason,
                        })?
                        .ok_or_else(|| SessionError::NoChannel { name: name.clone() })?;
                    unix(&found, &endpoint).await
                }
                Endpoint::Vsock { cid, port } => {
                    let addr = tokio_vsock::VsockAddr::new(*cid, *port);
                    let s = tokio_vsock::VsockStream::connect(addr)
                        .await
                        .map_err(|source| SessionError::Connect {
                            endpoint: endpoint.clone(),
                            source,
                        })?;
                    Ok(Box::new(s) as Box<dyn GuestIo>)
                }
            }
        };
        timeout(limit, attempt)
            .await
            .map_err(|_| SessionError::ConnectTimeout {
                endpoint: endpoint.clone(),
            })?
    }
}

async fn unix(path: &std::path::Path, endpoint: &str) -> Result<Box<dyn GuestIo>, SessionError> {
    let s = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| SessionError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
    Ok(Box::new(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_lookup() -> ChannelLookup {
        Arc::new(|| Ok(None))
    }

    #[test]
    fn vsock_cid_comes_from_the_spec_first_then_the_domain() {
        let spec_cid = Transport::Vsock {
            cid: Some(7),
            port: 5315,
        };
        let no_cid = Transport::Vsock { cid: None, port: 9 };
        match Endpoint::from_transport(&spec_cid, Some(3), no_lookup()) {
            Ok(Endpoint::Vsock { cid: 7, port: 5315 }) => {}
            other => panic!("{other:?}"),
        }
        match Endpoint::from_transport(&no_cid, Some(3), no_lookup()) {
            Ok(Endpoint::Vsock { cid: 3, port: 9 }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Endpoint::from_transport(&no_cid, None, no_lookup()),
            Err(SessionError::NoCid)
        ));
    }

    #[test]
    fn vsock_endpoint_describes_its_address() {
        let e = Endpoint::Vsock {
            cid: 42,
            port: 5315,
        };
        assert_eq!(e.describe(), "vsock cid 42 port 5315");
        assert!(e.is_stream());
        let addr = tokio_vsock::VsockAddr::new(42, 5315);
        assert_eq!((addr.cid(), addr.port()), (42, 5315));
    }

    #[test]
    fn channel_without_path_is_found_by_name() {
        let t = Transport::Channel {
            path: None,
            name: "org.appmon.agent.0".into(),
        };
        let e = Endpoint::from_transport(&t, None, no_lookup()).expect("endpoint");
        assert!(!e.is_stream());
        assert_eq!(e.describe(), "channel org.appmon.agent.0");
    }
}
