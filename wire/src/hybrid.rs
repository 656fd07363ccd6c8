//! The hybrid-vsock connect handshake (Firecracker, Cloud Hypervisor, vhost-device-vsock).
//!
//! The host side of a virtio-vsock device served in user space is a Unix socket. To reach guest
//! port P, a client connects to it, writes `CONNECT P\n` ([`connect_request`]) and reads
//! `OK <host port>\n`; after that the socket is a byte stream to the guest.
//!
//! The reply is read one byte at a time with a small bound: a buffered reader would read past
//! the newline into the guest's first frame and lose it when dropped. [`OkLineReader`] is that
//! reader without I/O: every client feeds it the bytes it reads, one at a time, and it says
//! whether it needs more, what port the line named, or why the line is not an `OK` line. The
//! async [`connect_handshake`] here and the blocking client of the VM tests both drive it.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest `OK` line accepted, newline included (`OK 4294967295\n` is 14 bytes).
pub const MAX_OK_LINE: usize = 32;

/// Why the backend's reply is not an `OK` line. Its text is shown as received (lossily).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OkLineError {
    #[error("the reply is longer than {MAX_OK_LINE} bytes: {got:?}")]
    TooLong { got: String },
    #[error("the reply is not `OK <port>`: {line:?}")]
    NotOk { line: String },
}

/// What [`OkLineReader::feed`] says about the byte it was given.
#[derive(Debug)]
pub enum OkLine {
    /// The line goes on: feed the next byte to this reader.
    NeedMore(OkLineReader),
    /// The line ended with this newline and named this host-side port. The reader is used up:
    /// every byte after the newline is the guest's.
    Port(u32),
}

/// The backend's reply to `CONNECT`, read byte by byte, without I/O (see the module
/// documentation). Takes at most [`MAX_OK_LINE`] bytes, and never one past the newline: `feed`
/// takes the reader by value and gives it back only while the line goes on.
#[derive(Debug, Clone, Default)]
pub struct OkLineReader {
    line: Vec<u8>,
}

impl OkLineReader {
    pub fn new() -> OkLineReader {
        OkLineReader {
            line: Vec::with_capacity(MAX_OK_LINE),
        }
    }

    /// Takes the next byte the backend sent.
    pub fn feed(mut self, byte: u8) -> Result<OkLine, OkLineError> {
        if byte == b'\n' {
            return parse_ok_line(&self.line).map(OkLine::Port);
        }
        self.line.push(byte);
        if self.line.len() >= MAX_OK_LINE {
            return Err(OkLineError::TooLong {
                got: self.received(),
            });
        }
        Ok(OkLine::NeedMore(self))
    }

    /// What arrived so far, for the message when the backend closes mid-line.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.line).into_owned()
    }
}

/// The request for guest `port`, newline included.
pub fn connect_request(port: u32) -> String {
    format!("CONNECT {port}\n")
}

#[derive(Debug, thiserror::Error)]
pub enum HybridError {
    #[error("sending CONNECT {port} failed")]
    Send {
        port: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the reply to CONNECT {port} failed")]
    Receive {
        port: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("the vsock backend closed the connection after {got:?} (is the guest listening on port {port}?)")]
    Closed { port: u32, got: String },
    #[error("bad reply to CONNECT {port}")]
    Reply {
        port: u32,
        #[source]
        source: OkLineError,
    },
}

/// Parses the reply line, without its newline; returns the host-side port. Only the canonical
/// form is accepted: `OK`, one space, decimal digits of a `u32`.
pub fn parse_ok_line(line: &[u8]) -> Result<u32, OkLineError> {
    let not_ok = || OkLineError::NotOk {
        line: String::from_utf8_lossy(line).into_owned(),
    };
    let text = std::str::from_utf8(line).map_err(|_| not_ok())?;
    let port = text.strip_prefix("OK ").ok_or_else(not_ok)?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_ok());
    }
    port.parse().map_err(|_| not_ok())
}

/// Runs the handshake on a freshly connected backend socket; returns the host-side port. On
/// success `stream` is positioned at the guest's first byte.
pub async fn connect_handshake<S>(stream: &mut S, port: u32) -> Result<u32, HybridError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(connect_request(port).as_bytes())
        .await
        .map_err(|source| HybridError::Send { port, source })?;
    let mut reader = OkLineReader::new();
    loop {
        let mut byte = [0u8; 1];
        let n = stream
            .read(&mut byte)
            .await
            .map_err(|source| HybridError::Receive { port, source })?;
        if n == 0 {
            return Err(HybridError::Closed {
                port,
                got: reader.received(),
            });
        }
        reader = match reader.feed(byte[0]) {
            Ok(OkLine::NeedMore(reader)) => reader,
            Ok(OkLine::Port(host_port)) => return Ok(host_port),
            Err(source) => return Err(HybridError::Reply { port, source }),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` until the reader answers; returns the answer and how many bytes it took.
    fn read_line(bytes: &[u8]) -> (Option<Result<u32, OkLineError>>, usize) {
        let mut reader = OkLineReader::new();
        for (i, &b) in bytes.iter().enumerate() {
            reader = match reader.feed(b) {
                Ok(OkLine::NeedMore(r)) => r,
                Ok(OkLine::Port(p)) => return (Some(Ok(p)), i + 1),
                Err(e) => return (Some(Err(e)), i + 1),
            };
        }
        (None, bytes.len())
    }

    #[test]
    fn the_reader_stops_at_the_newline_and_leaves_the_guests_bytes() {
        assert_eq!(read_line(b"OK 1234\n\0guest"), (Some(Ok(1234)), 8));
    }

    #[test]
    fn the_reader_needs_more_until_the_newline() {
        assert_eq!(read_line(b"OK 12"), (None, 5));
    }

    #[test]
    fn the_reader_gives_up_at_the_bound_without_a_newline() {
        let (answer, taken) = read_line(&[b'7'; 100]);
        assert!(
            matches!(answer, Some(Err(OkLineError::TooLong { .. }))),
            "{answer:?}"
        );
        assert_eq!(taken, MAX_OK_LINE);
    }

    #[test]
    fn the_reader_accepts_a_line_of_the_bound_newline_included() {
        let line = format!("OK {}\n", "0".repeat(MAX_OK_LINE - 4));
        assert_eq!(line.len(), MAX_OK_LINE);
        assert_eq!(read_line(line.as_bytes()), (Some(Ok(0)), MAX_OK_LINE));
    }

    #[test]
    fn the_reader_refuses_a_line_that_is_not_ok_with_its_text() {
        assert_eq!(
            read_line(b"ERR nope\nOK 5\n").0,
            Some(Err(OkLineError::NotOk {
                line: "ERR nope".into()
            }))
        );
    }

    #[test]
    fn connect_requests_name_the_port() {
        assert_eq!(connect_request(5315), "CONNECT 5315\n");
    }

    #[test]
    fn ok_lines_parse_to_the_port() {
        assert_eq!(
            parse_ok_line(b"OK 1073741824").expect("valid"),
            1_073_741_824
        );
        assert_eq!(parse_ok_line(b"OK 0").expect("valid"), 0);
    }

    #[test]
    fn other_lines_are_refused() {
        for bad in [
            &b""[..],
            b"OK",
            b"OK ",
            b"ok 5",
            b"OK -5",
            b"OK +5",
            b"OK 5 ",
            b"OK 99999999999",
            b"OK 4294967296",
            b"OK  5315",
            b"OK 53a5",
            b"NOK 5",
            b"OK \xff",
        ] {
            assert!(parse_ok_line(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn handshake_leaves_the_guests_first_bytes_in_the_stream() {
        let (mut client, mut backend) = tokio::io::duplex(64);
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 13];
            backend.read_exact(&mut buf).await.expect("read CONNECT");
            assert_eq!(&buf, b"CONNECT 5315\n");
            // The OK line and the guest's first bytes arrive in one write.
            backend.write_all(b"OK 1234\nguest").await.expect("write");
            backend
        });
        let port = connect_handshake(&mut client, 5315)
            .await
            .expect("handshake");
        assert_eq!(port, 1234);
        let mut rest = [0u8; 5];
        client.read_exact(&mut rest).await.expect("guest bytes");
        assert_eq!(&rest, b"guest");
        drop(server.await);
    }

    #[tokio::test]
    async fn closed_backend_is_reported_with_the_port() {
        let (mut client, backend) = tokio::io::duplex(64);
        drop(backend);
        let err = connect_handshake(&mut client, 5315)
            .await
            .expect_err("closed");
        assert!(
            matches!(err, HybridError::Send { .. } | HybridError::Closed { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn endless_reply_is_cut_at_the_bound() {
        let (mut client, mut backend) = tokio::io::duplex(1024);
        backend.write_all(&[b'O'; 200]).await.expect("write");
        let err = connect_handshake(&mut client, 5315)
            .await
            .expect_err("too long");
        assert!(
            matches!(
                err,
                HybridError::Reply {
                    source: OkLineError::TooLong { .. },
                    ..
                }
            ),
            "{err}"
        );
    }
}
