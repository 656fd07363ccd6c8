//! Host → guest connections over hybrid vsock: vhost-device-vsock's `--uds-path` Unix socket.
//!
//! Protocol (Firecracker's, also vhost-device-vsock's): connect to the Unix socket, write
//! `CONNECT <guest port>\n`, read `OK <port>\n`, then the socket is a byte stream to the guest.
//! The `OK` line is read one byte at a time by wire's [`OkLineReader`] (the same reader the host
//! agent's async client uses): a buffered reader dropped afterwards would swallow the first bytes
//! the guest sends right behind it. Nothing is sent before the `OK` either: vhost-device-vsock
//! 0.3.0 reads the `CONNECT` line through its own buffered reader and would lose bytes that arrive
//! with it. This module adds only the blocking I/O: the socket, and a deadline for each read.
//!
//! The host side only ever uses AF_UNIX here; never AF_VSOCK (this machine's /dev/vsock belongs to
//! the infrastructure).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use appmon_wire::hybrid::{connect_request, OkLine, OkLineError, OkLineReader};

/// Default bound for connect + handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a hybrid-vsock connection failed.
#[derive(Debug, thiserror::Error)]
pub enum HybridConnectError {
    #[error("cannot connect to hybrid-vsock socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot send CONNECT {port} on {path}")]
    Send {
        path: PathBuf,
        port: u32,
        #[source]
        source: io::Error,
    },
    #[error("no OK reply for CONNECT {port} on {path} after {got:?} (is the guest listening on that port?)")]
    Closed {
        path: PathBuf,
        port: u32,
        got: String,
    },
    #[error("reading the reply to CONNECT {port} on {path} failed")]
    Read {
        path: PathBuf,
        port: u32,
        #[source]
        source: io::Error,
    },
    #[error("bad reply to CONNECT {port} on {path}")]
    BadReply {
        path: PathBuf,
        port: u32,
        #[source]
        source: OkLineError,
    },
}

/// Connects to guest `port` through the hybrid-vsock socket `uds_path` with
/// [`DEFAULT_HANDSHAKE_TIMEOUT`]. The returned stream has no read or write timeout set.
pub fn hybrid_connect(uds_path: &Path, port: u32) -> Result<UnixStream, HybridConnectError> {
    hybrid_connect_timeout(uds_path, port, DEFAULT_HANDSHAKE_TIMEOUT)
}

/// Like [`hybrid_connect`], with a bound on the handshake.
pub fn hybrid_connect_timeout(
    uds_path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, HybridConnectError> {
    let path = uds_path.to_path_buf();
    let mut stream =
        UnixStream::connect(uds_path).map_err(|source| HybridConnectError::Connect {
            path: path.clone(),
            source,
        })?;
    let set_timeouts = |s: &UnixStream, t: Option<Duration>| -> io::Result<()> {
        s.set_read_timeout(t)?;
        s.set_write_timeout(t)
    };
    // Bounds the CONNECT write; read_ok_line bounds each read by the deadline.
    set_timeouts(&stream, Some(timeout)).map_err(|source| HybridConnectError::Connect {
        path: path.clone(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    stream
        .write_all(connect_request(port).as_bytes())
        .map_err(|source| HybridConnectError::Send {
            path: path.clone(),
            port,
            source,
        })?;
    read_ok_line(&mut stream, deadline).map_err(|e| match e {
        ReadError::Closed { got } => HybridConnectError::Closed {
            path: path.clone(),
            port,
            got,
        },
        ReadError::Io(source) => HybridConnectError::Read {
            path: path.clone(),
            port,
            source,
        },
        ReadError::Line(source) => HybridConnectError::BadReply {
            path: path.clone(),
            port,
            source,
        },
    })?;
    set_timeouts(&stream, None).map_err(|source| HybridConnectError::Read {
        path: path.clone(),
        port,
        source,
    })?;
    Ok(stream)
}

#[derive(Debug)]
enum ReadError {
    Closed { got: String },
    Io(io::Error),
    Line(OkLineError),
}

/// Feeds the reader one byte per read, so nothing behind the line is consumed; returns the
/// host-side port. Each read waits at most until `deadline`.
fn read_ok_line(stream: &mut UnixStream, deadline: Instant) -> Result<u32, ReadError> {
    let mut reader = OkLineReader::new();
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete OK line before the deadline",
            )));
        }
        stream.set_read_timeout(Some(left)).map_err(ReadError::Io)?;
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(ReadError::Closed {
                    got: reader.received(),
                })
            }
            Ok(_) => {
                reader = match reader.feed(byte[0]).map_err(ReadError::Line)? {
                    OkLine::NeedMore(reader) => reader,
                    OkLine::Port(port) => return Ok(port),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A fake backend that answers the CONNECT line with `reply` in the same write as the guest's
    /// first bytes, as a real backend may.
    fn fake_backend(
        reply: &'static [u8],
    ) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<Vec<u8>>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v.uds");
        let listener = UnixListener::bind(&path).expect("bind fake backend");
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            let mut b = [0u8; 1];
            while !got.ends_with(b"\n") {
                if s.read(&mut b).expect("read CONNECT") == 0 {
                    break;
                }
                got.push(b[0]);
            }
            s.write_all(reply).expect("write reply");
            got
        });
        (dir, path, handle)
    }

    #[test]
    fn bytes_sent_right_behind_ok_line_are_not_swallowed() {
        let (_dir, path, backend) = fake_backend(b"OK 5399\nhello");
        let mut s = hybrid_connect(&path, 5399).expect("handshake");
        let mut first = [0u8; 5];
        s.read_exact(&mut first).expect("guest bytes");
        assert_eq!(&first, b"hello");
        assert_eq!(backend.join().expect("backend thread"), b"CONNECT 5399\n");
    }

    #[test]
    fn closed_before_ok_is_reported_as_closed() {
        let (_dir, path, backend) = fake_backend(b"");
        let err = hybrid_connect(&path, 7).unwrap_err();
        assert!(
            matches!(err, HybridConnectError::Closed { port: 7, .. }),
            "{err}"
        );
        backend.join().expect("backend thread");
    }

    #[test]
    fn garbage_reply_is_rejected_with_its_text() {
        let (_dir, path, backend) = fake_backend(b"ERR nope\n");
        let err = hybrid_connect(&path, 7).unwrap_err();
        assert!(
            matches!(&err, HybridConnectError::BadReply { source: OkLineError::NotOk { line }, .. } if line == "ERR nope"),
            "{err}"
        );
        backend.join().expect("backend thread");
    }

    #[test]
    fn endless_reply_is_cut_off() {
        let (_dir, path, backend) = fake_backend(b"OK 111111111111111111111111111111\n");
        let err = hybrid_connect(&path, 7).unwrap_err();
        assert!(
            matches!(
                err,
                HybridConnectError::BadReply {
                    source: OkLineError::TooLong { .. },
                    ..
                }
            ),
            "{err}"
        );
        backend.join().expect("backend thread");
    }

    #[test]
    fn silent_backend_times_out_within_the_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("silent.uds");
        let _listener = UnixListener::bind(&path).expect("bind");
        let start = Instant::now();
        let err = hybrid_connect_timeout(&path, 7, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, HybridConnectError::Read { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_socket_names_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("absent.uds");
        let err = hybrid_connect(&path, 7).unwrap_err();
        assert!(err.to_string().contains("absent.uds"), "{err}");
    }
}
