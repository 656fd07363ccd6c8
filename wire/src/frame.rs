//! Frames: one postcard-encoded [`Frame`] per COBS block, each block ended by a 0x00 byte.
//!
//! [`FrameCodec`] is a tokio-util codec, so it runs over any `AsyncRead`/`AsyncWrite`: a Unix
//! socket, a vsock stream, a virtio-serial character device.
//!
//! The decoder yields `Result<Frame, FrameError>` items and keeps its stream usable after a bad
//! frame: what the caller does with a bad frame depends on the transport. A stream transport
//! (vsock, Unix socket) has a well-behaved peer or a broken one, so it disconnects; a
//! virtio-serial port has no connection boundaries, so it logs and reads on from the next
//! delimiter. Only I/O errors end the stream itself.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use crate::cobs;
use crate::message::{GuestMsg, HostMsg, RequestId, WireMessage};

/// The default limit on one encoded frame (COBS bytes, without the delimiter). A counter-values
/// frame of 200 counters takes about 2 KiB; a launch request with a large environment a few KiB.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// The frame delimiter. COBS guarantees it appears nowhere else.
pub const DELIMITER: u8 = 0x00;

/// How a frame relates to others.
///
/// Variant order is wire format. `Event` is not variant 0 on purpose: events are the most
/// frequent frames (heartbeats), and a tag of 0x00 would be a zero byte that COBS must cut the
/// frame at; without it a heartbeat is one COBS block that decodes without moving a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Tag {
    /// Wants exactly one reply tagged [`Tag::Reply`] with the same id. Ids start at 1.
    Request(RequestId),
    /// The answer to the request with this id.
    Reply(RequestId),
    /// Needs no answer (heartbeats, status changes, process events).
    Event,
}

/// One message on the wire with its tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame<M> {
    pub tag: Tag,
    pub msg: M,
}

impl<M> Frame<M> {
    pub fn event(msg: M) -> Self {
        Frame {
            tag: Tag::Event,
            msg,
        }
    }

    pub fn request(id: RequestId, msg: M) -> Self {
        Frame {
            tag: Tag::Request(id),
            msg,
        }
    }

    pub fn reply(id: RequestId, msg: M) -> Self {
        Frame {
            tag: Tag::Reply(id),
            msg,
        }
    }
}

/// A received frame that could not be taken. `offset` is where the frame starts in the stream
/// (bytes since the codec was created), so a capture can be matched to the log.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame at stream offset {offset} exceeds {limit} bytes (seen {len} so far)")]
    TooLarge {
        offset: u64,
        len: usize,
        limit: usize,
    },
    #[error("frame at stream offset {offset} ({len} bytes) is not valid COBS")]
    Cobs { offset: u64, len: usize },
    #[error("frame at stream offset {offset} ({len} bytes) has a malformed {part}")]
    Decode {
        offset: u64,
        len: usize,
        part: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("frame at stream offset {offset}: {kind_name} message refused: {too_long}")]
    TooLong {
        offset: u64,
        kind_name: &'static str,
        too_long: crate::text::TooLong,
    },
    #[error("frame at stream offset {offset} has {extra} bytes after its {kind_name} message")]
    TrailingBytes {
        offset: u64,
        kind_name: &'static str,
        extra: usize,
    },
    #[error("frame at stream offset {offset} carries message kind {kind}, newer than the {known} kinds this peer knows")]
    UnknownKind {
        offset: u64,
        tag: Tag,
        kind: u32,
        known: u32,
    },
    #[error("stream ended inside a frame at offset {offset} ({len} bytes without a delimiter)")]
    Truncated { offset: u64, len: usize },
}

impl FrameError {
    /// Whether a session over a connected stream can go on after this error. Only an unknown
    /// message kind qualifies: the peer is newer, not broken, and gets a typed
    /// [`crate::ErrorCode::Unsupported`] answer.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, FrameError::UnknownKind { .. })
    }
}

/// A message that could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{kind_name} message encodes to more than the frame limit of {limit} bytes")]
    TooLarge {
        kind_name: &'static str,
        limit: usize,
    },
    #[error("{kind_name} message does not serialize")]
    Serialize {
        kind_name: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("writing the frame failed")]
    Io(#[from] std::io::Error),
}

/// Encodes `Out` frames and decodes `In` frames.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    max_frame: usize,
    /// Bytes of the stream already removed from the read buffer.
    consumed: u64,
    /// How far the current buffer has been searched for a delimiter.
    scanned: usize,
    /// Set while skipping the rest of an oversized frame.
    discarding: bool,
    /// postcard output before COBS, reused so that sending does not allocate.
    scratch: Vec<u8>,
    /// COBS output, kept initialized so that sending does not clear memory each time.
    stuffed: Vec<u8>,
    _types: PhantomData<fn(In) -> Out>,
}

/// The host agent's end: reads what guests send, writes what hosts send.
pub type HostCodec = FrameCodec<GuestMsg, HostMsg>;
/// The guest agent's end.
pub type GuestCodec = FrameCodec<HostMsg, GuestMsg>;

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::with_max_frame(MAX_FRAME_LEN)
    }
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec that refuses frames over `max_frame` encoded bytes, both ways.
    pub fn with_max_frame(max_frame: usize) -> Self {
        FrameCodec {
            max_frame,
            consumed: 0,
            scanned: 0,
            discarding: false,
            scratch: Vec::new(),
            stuffed: Vec::new(),
            _types: PhantomData,
        }
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Drops `n` bytes from the front of `src`, keeping the stream offset.
    fn skip(&mut self, src: &mut BytesMut, n: usize) {
        self.consumed += n as u64;
        self.scanned = 0;
        src.advance(n);
    }
}

impl<In: WireMessage, Out> Decoder for FrameCodec<In, Out> {
    type Item = Result<Frame<In>, FrameError>;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        loop {
            let Some(pos) = find_delimiter(&src[self.scanned..]) else {
                if self.discarding {
                    // Drop what is buffered of the oversized frame; keep nothing large around.
                    let n = src.len();
                    self.skip(src, n);
                    return Ok(None);
                }
                if src.len() > self.max_frame {
                    let offset = self.consumed;
                    let len = src.len();
                    self.skip(src, len);
                    self.discarding = true;
                    return Ok(Some(Err(FrameError::TooLarge {
                        offset,
                        len,
                        limit: self.max_frame,
                    })));
                }
                self.scanned = src.len();
                return Ok(None);
            };
            let end = self.scanned + pos;
            let offset = self.consumed;
            self.scanned = 0;
            if self.discarding {
                self.discarding = false;
                self.skip(src, end + 1);
                continue;
            }
            if end == 0 {
                // A bare delimiter: writers may send one to end whatever partial frame a
                // reader that joined mid-stream holds.
                self.skip(src, 1);
                continue;
            }
            let item = if end > self.max_frame {
                Err(FrameError::TooLarge {
                    offset,
                    len: end,
                    limit: self.max_frame,
                })
            } else {
                // Decoding in place spoils the bytes, but they are consumed right after.
                decode_block::<In>(&mut src[..end], offset)
            };
            self.skip(src, end + 1);
            return Ok(Some(item));
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        if let Some(item) = self.decode(src)? {
            return Ok(Some(item));
        }
        if src.is_empty() || self.discarding {
            src.clear();
            self.discarding = false;
            return Ok(None);
        }
        let offset = self.consumed;
        let len = src.len();
        self.skip(src, len);
        Ok(Some(Err(FrameError::Truncated { offset, len })))
    }
}

/// Where the next delimiter is. Short buffers (a heartbeat is four bytes) are searched by a
/// plain loop; calling out to SIMD costs more than it saves there.
#[inline]
fn find_delimiter(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 32 {
        bytes.iter().position(|&b| b == DELIMITER)
    } else {
        memchr::memchr(DELIMITER, bytes)
    }
}

/// Decodes one COBS block (delimiter removed) in place.
#[inline]
fn decode_block<M: WireMessage>(block: &mut [u8], offset: u64) -> Result<Frame<M>, FrameError> {
    let len = block.len();
    let decoded =
        cobs::decode_zero_free_in_place(block).map_err(|_| FrameError::Cobs { offset, len })?;
    let bytes = &block[decoded];
    // Peek at the tag and the variant index first: a kind this build does not know is a newer
    // peer, not a broken one, and is answered rather than treated as garbage. Both are varints
    // at the front (postcard writes an enum as its variant index, then its fields).
    let (tag, kind, body_at) = peek_tag_and_kind(bytes).ok_or(FrameError::Decode {
        offset,
        len,
        part: "tag or message kind",
        source: postcard::Error::DeserializeBadVarint,
    })?;
    if kind >= M::KINDS {
        return Err(FrameError::UnknownKind {
            offset,
            tag,
            kind,
            known: M::KINDS,
        });
    }
    if body_at == bytes.len() {
        if let Some(msg) = M::unit(kind) {
            return Ok(Frame { tag, msg });
        }
    }
    // A bound that failed outside this decoder must not be taken for this frame's.
    crate::text::take_too_long();
    let (frame, rest) = postcard::take_from_bytes::<Frame<M>>(bytes).map_err(|source| {
        match crate::text::take_too_long() {
            Some(too_long) => FrameError::TooLong {
                offset,
                kind_name: M::name_of_kind(kind),
                too_long,
            },
            None => FrameError::Decode {
                offset,
                len,
                part: "message",
                source,
            },
        }
    })?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes {
            offset,
            kind_name: frame.msg.kind_name(),
            extra: rest.len(),
        });
    }
    Ok(frame)
}

/// Reads a `u32` varint at `*at`, as postcard writes it.
#[inline]
fn take_varint_u32(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let mut value = 0u32;
    for i in 0..5 {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return (i < 4 || byte < 0x10).then_some(value);
        }
    }
    None
}

/// The tag and the message kind at the front of a decoded frame, and where the message's
/// fields start.
#[inline]
fn peek_tag_and_kind(bytes: &[u8]) -> Option<(Tag, u32, usize)> {
    // Most frames are events of a kind below 128: two bytes.
    if let [2, kind, ..] = *bytes {
        if kind < 0x80 {
            return Some((Tag::Event, u32::from(kind), 2));
        }
    }
    let mut at = 0;
    let tag = match take_varint_u32(bytes, &mut at)? {
        0 => Tag::Request(take_varint_u32(bytes, &mut at)?),
        1 => Tag::Reply(take_varint_u32(bytes, &mut at)?),
        2 => Tag::Event,
        _ => return None,
    };
    let kind = take_varint_u32(bytes, &mut at)?;
    Some((tag, kind, at))
}

#[inline]
fn put_varint_u32(out: &mut [u8], at: &mut usize, mut value: u32) {
    while value >= 0x80 {
        out[*at] = value as u8 | 0x80;
        *at += 1;
        value >>= 7;
    }
    out[*at] = value as u8;
    *at += 1;
}

/// The postcard bytes of a frame whose message has no fields: tag, id, kind. At most 11 bytes.
#[inline]
fn unit_frame_bytes(tag: Tag, kind: u32, out: &mut [u8]) -> usize {
    let mut at = 0;
    match tag {
        Tag::Request(id) => {
            put_varint_u32(out, &mut at, 0);
            put_varint_u32(out, &mut at, id);
        }
        Tag::Reply(id) => {
            put_varint_u32(out, &mut at, 1);
            put_varint_u32(out, &mut at, id);
        }
        Tag::Event => put_varint_u32(out, &mut at, 2),
    }
    put_varint_u32(out, &mut at, kind);
    at
}

impl<In, Out: WireMessage> Encoder<Frame<Out>> for FrameCodec<In, Out> {
    type Error = EncodeError;

    fn encode(&mut self, frame: Frame<Out>, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.encode(&frame, dst)
    }
}

impl<In, Out: WireMessage> Encoder<&Frame<Out>> for FrameCodec<In, Out> {
    type Error = EncodeError;

    fn encode(&mut self, frame: &Frame<Out>, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let kind = frame.msg.kind();
        if Out::is_unit(kind) {
            // Tag, id and kind are a few varints; when none of them is zero (ids start at 1,
            // events are tag 2) the COBS form is one block: a length byte and the bytes.
            let mut out = [0u8; 14];
            let raw_len = unit_frame_bytes(frame.tag, kind, &mut out[1..13]);
            let len = if out[1..=raw_len].contains(&0) {
                // Only a request id of 0 has a zero byte: stuff it the general way.
                let raw = out;
                cobs::encode_into(&raw[1..=raw_len], &mut out)
            } else {
                out[0] = raw_len as u8 + 1;
                raw_len + 1
            };
            out[len] = DELIMITER;
            dst.extend_from_slice(&out[..=len]);
            return Ok(());
        }
        let kind_name = frame.msg.kind_name();
        self.scratch.clear();
        postcard::serialize_with_flavor(frame, ScratchFlavor(&mut self.scratch))
            .map_err(|source| EncodeError::Serialize { kind_name, source })?;
        let max_len = cobs::max_encoded_len(self.scratch.len());
        if self.stuffed.len() < max_len {
            self.stuffed.resize(max_len, 0);
        }
        let len = cobs::encode_into(&self.scratch, &mut self.stuffed);
        if len > self.max_frame {
            return Err(EncodeError::TooLarge {
                kind_name,
                limit: self.max_frame,
            });
        }
        dst.reserve(len + 1);
        dst.extend_from_slice(&self.stuffed[..len]);
        dst.put_u8(DELIMITER);
        // A one-off huge message should not pin its buffer for the life of the session.
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
            self.stuffed = Vec::new();
        }
        Ok(())
    }
}

/// Serialization buffer capacity worth keeping between frames.
const SCRATCH_KEEP: usize = 16 * 1024;

/// postcard output into a reused `Vec`.
struct ScratchFlavor<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for ScratchFlavor<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes one frame into a fresh buffer: for tests, fixtures and one-off writes.
pub fn encode_frame<M: WireMessage>(frame: &Frame<M>) -> Result<Vec<u8>, EncodeError> {
    let mut codec = FrameCodec::<M, M>::new();
    let mut buf = BytesMut::new();
    Encoder::<&Frame<M>>::encode(&mut codec, frame, &mut buf)?;
    Ok(buf.to_vec())
}

/// Decodes every frame in `bytes`, as a reader of a whole stream would see them.
pub fn decode_all<M: WireMessage>(bytes: &[u8]) -> Vec<Result<Frame<M>, FrameError>> {
    let mut codec = FrameCodec::<M, M>::new();
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    // In-memory buffers cannot fail with an I/O error.
    while let Ok(Some(item)) = codec.decode_eof(&mut buf) {
        out.push(item);
    }
    out
}

impl<In, Out> FrameCodec<In, Out> {
    /// Bytes of the stream this decoder has consumed.
    pub fn stream_offset(&self) -> u64 {
        self.consumed
    }
}
