//! The hybrid-vsock connect handshake (Firecracker, Cloud Hypervisor, vhost-device-vsock).
//!
//! The host side of a virtio-vsock device served in user space is a Unix socket. To reach guest
//! port P, a client connects to it, writes `CONNECT P\n` and reads `OK <host port>\n`; after that
//! the socket is a byte stream to the guest. The reply is read one byte at a time with a small
//! bound: a buffered reader would read past the newline into the guest's first frame and lose it
//! when dropped.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest `OK` line accepted, newline included (`OK 4294967295\n` is 14 bytes).
pub const MAX_OK_LINE: usize = 32;

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
    #[error("the reply to CONNECT {port} is longer than {MAX_OK_LINE} bytes: {got:?}")]
    TooLong { port: u32, got: String },
    #[error("the reply to CONNECT is not `OK <port>`: {line:?}")]
    NotOk { line: String },
}

/// Parses the reply line, without its newline; returns the host-side port.
pub fn parse_ok_line(line: &[u8]) -> Result<u32, HybridError> {
    let not_ok = || HybridError::NotOk {
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
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|source| HybridError::Send { port, source })?;
    let mut line = Vec::with_capacity(MAX_OK_LINE);
    loop {
        let mut byte = [0u8; 1];
        let n = stream
            .read(&mut byte)
            .await
            .map_err(|source| HybridError::Receive { port, source })?;
        if n == 0 {
            return Err(HybridError::Closed {
                port,
                got: String::from_utf8_lossy(&line).into_owned(),
            });
        }
        if byte[0] == b'\n' {
            return parse_ok_line(&line);
        }
        line.push(byte[0]);
        if line.len() >= MAX_OK_LINE {
            return Err(HybridError::TooLong {
                port,
                got: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(err, HybridError::TooLong { .. }), "{err}");
    }
}
