//! The appmon protocol between a guest agent and the host agent.
//!
//! # Primer
//!
//! **Transport.** A byte stream: a vsock connection (kernel vhost-vsock, or hybrid vsock over a
//! Unix socket, see [`hybrid`]), or a virtio-serial port, which has no connection boundaries at
//! all.
//!
//! **Who speaks first.** Since protocol 2 the guest does: the guest agent connects to the host
//! (vsock CID 2, port [`DEFAULT_VSOCK_PORT`]) when it starts and whenever its session ends, with
//! jittered, capped backoff, and sends its `Hello` at once; that connection is the session. The
//! host listens per VM where the transport delivers guest → host connections (hybrid vsock:
//! `<uds>_<port>`, vhost-device-vsock's convention; kernel vhost-vsock: an AF_VSOCK listener)
//! and answers with its own `Hello`. Between a reset or reboot of a guest and its next
//! announcement the host sends that guest nothing: a host → guest packet while a guest reboots
//! inside QEMU can wedge a userspace vsock backend (vhost-device-vsock 0.3.0 does). The guest
//! agent also still listens on [`DEFAULT_VSOCK_PORT`], and a host dials it where it knows the
//! guest speaks only protocol 1; on a dialed connection the host speaks first. On a
//! virtio-serial port, which has no connections, the host opens its end and speaks first, as in
//! protocol 1.
//!
//! **Frames.** Each frame is one [`Frame`] (a [`Tag`] and one message) encoded with postcard,
//! then COBS-encoded, then ended with a single `0x00` byte ([`frame`]). COBS removes every zero
//! from the payload, so a `0x00` is always a frame boundary: a reader that starts in the middle
//! of a stream (a virtio-serial port opened while the guest is writing) drops at most one partial
//! frame and is in step from the next delimiter on. A length prefix would be smaller by a byte or
//! two but cannot be resynchronised without a magic number and a checksum, and a corrupt length
//! makes the reader wait for, or allocate, bytes that never belong together. COBS costs one byte
//! per 254 and one pass; one codec then serves every transport.
//!
//! **Limits.** A frame is at most [`MAX_FRAME_LEN`] encoded bytes. The decoder reports an
//! oversized frame as soon as the buffered bytes pass the limit, without waiting for its end,
//! and throws the rest away as it arrives, so a guest cannot make the host buffer more than the
//! limit. Every malformed frame is a [`FrameError`] that names its stream offset; none panics.
//!
//! **Strings are data.** Every string a peer sends is a [`text::Text`] bounded at decode (a
//! longer one is [`FrameError::TooLong`], naming the field, its length and the limit), and is
//! shown escaped ([`text::escape`]): a newline, a terminal escape or a right-to-left override in
//! a guest's words can neither forge a log line nor drive a terminal. The limits, in bytes:
//!
//! | field | bytes |
//! |---|---|
//! | agent name | 128 |
//! | error message | 512 |
//! | counter name (also entity names) | 128 |
//! | description | 512 |
//! | units | 32 |
//! | counter type | 32 |
//! | process id | 64 |
//! | argument (also environment values, working directory) | 4096 |
//! | environment variable name | 256 |
//! | user name | 64 |
//! | command | 256 |
//! | reason | 512 |
//! | monitor name | 128 |
//! | output chunk | 16384 |
//!
//! **Handshake.** Each side's first frame is a `Hello` with its protocol range, its agent name
//! and version, its boot id and its [`Capabilities`]. [`negotiate`] picks the newest common
//! version. After the handshake the guest sends its whole [`GuestState`], so a host agent that
//! restarted, or the destination host of a migration, picks up where the last one was. Once
//! the host has that State it sends `Event AppStatus` with the guest's current status, in every
//! session: the guest reports only a status received in its current session.
//!
//! **Requests.** A frame tagged [`Tag::Request`] with an id gets exactly one frame tagged
//! [`Tag::Reply`] with that id: the answer or an `Error`. [`Tag::Event`] frames get no reply
//! unless they cannot be taken, in which case the answer is an `Error` tagged as an event.
//! Nobody answers an `Error` with an `Error`.
//!
//! # Version rule
//!
//! - The variant order of [`GuestMsg`] and [`HostMsg`] is the wire format. New message kinds are
//!   appended at the end; nothing is ever removed or reordered (golden fixtures pin the bytes).
//! - A peer that receives a kind it does not know (an index at or past its own
//!   [`WireMessage::KINDS`]) answers `Error(Unsupported { kind })` and keeps the session.
//! - Anything else that changes existing bytes (a field added to a message, a variant added to
//!   a nested enum) raises [`PROTOCOL_VERSION`]. A peer sends such a message only when the
//!   negotiated version has it.
//! - [`MIN_PROTOCOL_VERSION`] is raised only when support for an old version is dropped.
//!
//! # Modules
//!
//! - [`message`]: the message types of both directions.
//! - [`frame`]: [`Frame`], [`Tag`] and the tokio codec [`FrameCodec`].
//! - [`cobs`]: the byte stuffing under the frames.
//! - [`handshake`]: the `Hello` negotiation and boot ids.
//! - [`hybrid`]: the `CONNECT`/`OK` handshake of hybrid vsock: the `OK`-line reader without I/O
//!   that every client feeds byte by byte, and the async client on top of it.
//! - [`report`]: how appmon's programs report errors (shared by every binary).

pub mod cobs;
pub mod frame;
pub mod handshake;
pub mod hybrid;
pub mod message;
pub mod report;
pub mod text;

pub use frame::{
    decode_all, encode_frame, EncodeError, Frame, FrameCodec, FrameError, GuestCodec, HostCodec,
    Tag, DELIMITER, MAX_FRAME_LEN,
};
pub use handshake::{
    format_boot_id, negotiate, parse_boot_id, Agreement, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
pub use message::*;
pub use text::{escape, Text, TooLong};
