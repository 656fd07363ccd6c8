//! The framing layer against well-formed, broken and hostile byte streams.

mod common;

use appmon_wire::*;
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, FramedRead, FramedWrite};

fn frames_ok<M: WireMessage + PartialEq>(
    items: Vec<Result<Frame<M>, FrameError>>,
) -> Vec<Frame<M>> {
    items
        .into_iter()
        .map(|item| item.unwrap_or_else(|e| panic!("unexpected frame error: {e}")))
        .collect()
}

fn stream_of<M: WireMessage>(frames: &[Frame<M>]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|f| encode_frame(f).expect("encodes"))
        .collect()
}

/// Raw frame bytes from a hand-written postcard body, to craft what a buggy or newer peer sends.
fn cobs_frame(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    appmon_wire::cobs::encode(raw, &mut out);
    out.push(DELIMITER);
    out
}

proptest! {
    #[test]
    fn every_guest_frame_round_trips(frame in common::guest_frame()) {
        let bytes = encode_frame(&frame).expect("encodes");
        prop_assert_eq!(bytes.iter().filter(|b| **b == 0).count(), 1, "only the delimiter is zero");
        prop_assert_eq!(frames_ok(decode_all::<GuestMsg>(&bytes)), vec![frame]);
    }

    #[test]
    fn every_host_frame_round_trips(frame in common::host_frame()) {
        let bytes = encode_frame(&frame).expect("encodes");
        prop_assert_eq!(frames_ok(decode_all::<HostMsg>(&bytes)), vec![frame]);
    }

    #[test]
    fn kind_numbers_are_the_postcard_variant_indices(frame in common::guest_frame(), host in common::host_frame()) {
        let raw = postcard::to_allocvec(&frame).expect("serializes");
        let (_, body) = postcard::take_from_bytes::<Tag>(&raw).expect("tag");
        let (kind, _) = postcard::take_from_bytes::<u32>(body).expect("kind");
        prop_assert_eq!(kind, frame.msg.kind());
        let raw = postcard::to_allocvec(&host).expect("serializes");
        let (_, body) = postcard::take_from_bytes::<Tag>(&raw).expect("tag");
        let (kind, _) = postcard::take_from_bytes::<u32>(body).expect("kind");
        prop_assert_eq!(kind, host.msg.kind());
    }

    #[test]
    fn reader_starting_mid_stream_resynchronises(
        frames in proptest::collection::vec(common::guest_frame(), 1..6),
        cut in any::<prop::sample::Index>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        // A reader that joined in the middle of a frame, after some line noise.
        let earlier = stream_of(&frames);
        let mut stream = garbage;
        stream.extend_from_slice(&earlier[cut.index(earlier.len())..]);
        stream.push(DELIMITER);
        stream.extend_from_slice(&stream_of(&frames));
        let decoded = decode_all::<GuestMsg>(&stream);
        prop_assert!(decoded.len() >= frames.len());
        let tail = frames_ok(decoded.into_iter().rev().take(frames.len()).rev().collect());
        prop_assert_eq!(tail, frames);
    }

    #[test]
    fn chunked_delivery_decodes_like_one_buffer(
        frames in proptest::collection::vec(common::host_frame(), 1..8),
        chunk in 1usize..40,
    ) {
        let stream = stream_of(&frames);
        let mut codec = GuestCodec::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(item) = codec.decode(&mut buf).expect("no I/O") {
                out.push(item.expect("valid frame"));
            }
        }
        prop_assert_eq!(out, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut codec = HostCodec::with_max_frame(256);
        let mut buf = BytesMut::new();
        for piece in bytes.chunks(97) {
            buf.extend_from_slice(piece);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            prop_assert!(buf.len() <= 256 + 97, "buffered {} bytes", buf.len());
        }
        while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
    }
}

#[test]
fn truncated_frame_at_end_of_stream_is_reported() {
    let frame = Frame::event(GuestMsg::MarkActive);
    let mut bytes = encode_frame(&frame).expect("encodes");
    bytes.pop();
    let mut stream = encode_frame(&frame).expect("encodes");
    let whole = stream.len() as u64;
    stream.extend_from_slice(&bytes);

    let decoded = decode_all::<GuestMsg>(&stream);

    assert_eq!(decoded.len(), 2);
    assert!(decoded[0].is_ok());
    match &decoded[1] {
        Err(FrameError::Truncated { offset, len }) => {
            assert_eq!(*offset, whole);
            assert_eq!(*len, bytes.len());
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn oversized_frame_is_refused_before_its_end_arrives_and_the_stream_recovers() {
    let mut codec = HostCodec::with_max_frame(1024);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0x55; 1500]);

    let first = codec.decode(&mut buf).expect("no I/O").expect("an item");
    match first {
        Err(FrameError::TooLarge { offset, len, limit }) => {
            assert_eq!((offset, limit), (0, 1024));
            assert!(len > 1024, "{len}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(buf.is_empty(), "the oversized bytes are dropped, not kept");

    // More of the same frame is discarded as it arrives; the next frame decodes.
    buf.extend_from_slice(&[0x55; 5000]);
    assert!(codec.decode(&mut buf).expect("no I/O").is_none());
    assert!(buf.is_empty());
    buf.extend_from_slice(&[0x55, DELIMITER]);
    buf.extend_from_slice(&encode_frame(&Frame::event(GuestMsg::MarkActive)).expect("encodes"));
    let next = codec.decode(&mut buf).expect("no I/O").expect("an item");
    assert_eq!(next.expect("valid"), Frame::event(GuestMsg::MarkActive));
}

#[test]
fn oversized_frame_names_its_size_and_the_limit() {
    let err = FrameError::TooLarge {
        offset: 10,
        len: 70_000,
        limit: MAX_FRAME_LEN,
    };
    assert_eq!(
        err.to_string(),
        "frame at stream offset 10 exceeds 65536 bytes (seen 70000 so far)"
    );
}

#[test]
fn message_over_the_limit_is_not_sent() {
    let spec = LaunchSpec {
        id: "big".into(),
        // Each argument within its own limit, together past the frame's.
        argv: vec![Text::new("x".repeat(4096)).expect("fits its limit"); MAX_FRAME_LEN / 4096 + 1],
        env: vec![],
        cwd: None,
        user: None,
    };
    let err = encode_frame(&Frame::request(1, HostMsg::LaunchProcess(spec))).expect_err("too big");
    assert!(
        matches!(
            err,
            EncodeError::TooLarge {
                kind_name: "LaunchProcess",
                limit: MAX_FRAME_LEN,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unknown_message_kind_is_reported_with_its_tag_and_the_stream_goes_on() {
    // Tag::Request(7), then variant 200: what a newer guest agent might send.
    let mut stream = cobs_frame(&[0, 7, 200, 1, 42]);
    stream.extend(encode_frame(&Frame::event(GuestMsg::MarkActive)).expect("encodes"));

    let decoded = decode_all::<GuestMsg>(&stream);

    match &decoded[0] {
        Err(
            e @ FrameError::UnknownKind {
                tag, kind, known, ..
            },
        ) => {
            assert_eq!(
                (*tag, *kind, *known),
                (Tag::Request(7), 200, GuestMsg::KINDS)
            );
            assert!(e.is_recoverable());
        }
        other => panic!("expected UnknownKind, got {other:?}"),
    }
    assert_eq!(
        decoded[1].as_ref().expect("next frame"),
        &Frame::event(GuestMsg::MarkActive)
    );
}

#[test]
fn garbage_inside_a_known_kind_is_a_decode_error_naming_the_part() {
    // Event, Hello, then a protocol varint that never ends.
    let decoded = decode_all::<GuestMsg>(&cobs_frame(&[2, 0, 0xff, 0xff]));
    match &decoded[0] {
        Err(
            e @ FrameError::Decode {
                part, offset: 0, ..
            },
        ) => {
            assert_eq!(*part, "message");
            assert!(!e.is_recoverable());
        }
        other => panic!("expected Decode, got {other:?}"),
    }
}

#[test]
fn trailing_bytes_after_a_message_are_refused() {
    // Event, MarkActive, and one byte too many.
    let decoded = decode_all::<GuestMsg>(&cobs_frame(&[2, 5, 9]));
    assert!(
        matches!(
            decoded[0],
            Err(FrameError::TrailingBytes {
                kind_name: "MarkActive",
                extra: 1,
                ..
            })
        ),
        "{:?}",
        decoded[0]
    );
}

#[test]
fn malformed_tag_is_a_decode_error() {
    let decoded = decode_all::<GuestMsg>(&cobs_frame(&[9, 5]));
    assert!(
        matches!(
            decoded[0],
            Err(FrameError::Decode {
                part: "tag or message kind",
                ..
            })
        ),
        "{:?}",
        decoded[0]
    );
}

#[test]
fn invalid_cobs_is_reported() {
    // A code byte pointing past the end of the block.
    let decoded = decode_all::<GuestMsg>(&[9, 1, 2, DELIMITER]);
    assert!(
        matches!(decoded[0], Err(FrameError::Cobs { offset: 0, len: 3 })),
        "{:?}",
        decoded[0]
    );
}

#[test]
fn bare_delimiters_are_skipped() {
    let mut stream = vec![DELIMITER, DELIMITER];
    stream.extend(encode_frame(&Frame::event(HostMsg::Ping)).expect("encodes"));
    stream.push(DELIMITER);
    assert_eq!(
        frames_ok(decode_all::<HostMsg>(&stream)),
        vec![Frame::event(HostMsg::Ping)]
    );
}

#[tokio::test]
async fn codec_runs_over_an_async_byte_stream() {
    let (host_end, guest_end) = tokio::io::duplex(256);
    let (host_read, host_write) = tokio::io::split(host_end);
    let (guest_read, guest_write) = tokio::io::split(guest_end);
    let mut host_tx = FramedWrite::new(host_write, HostCodec::new());
    let mut host_rx = FramedRead::new(host_read, HostCodec::new());
    let mut guest_tx = FramedWrite::new(guest_write, GuestCodec::new());
    let mut guest_rx = FramedRead::new(guest_read, GuestCodec::new());

    host_tx
        .send(Frame::request(1, HostMsg::PollProcess { id: "db".into() }))
        .await
        .expect("host sends");
    let got = guest_rx
        .next()
        .await
        .expect("a frame")
        .expect("no I/O error")
        .expect("valid");
    assert_eq!(got.tag, Tag::Request(1));
    guest_tx
        .send(Frame::reply(
            1,
            GuestMsg::Process(ProcessStatus {
                id: "db".into(),
                state: ProcessState::Running { pid: 42 },
                command: "/usr/sbin/db --serve".into(),
                user: "db".into(),
                started_unix_ms: 1_700_000_000_000,
                stdout_bytes: 0,
                stderr_bytes: 0,
            }),
        ))
        .await
        .expect("guest sends");
    let got = host_rx
        .next()
        .await
        .expect("a frame")
        .expect("no I/O error")
        .expect("valid");
    assert_eq!(got.tag, Tag::Reply(1));
    assert!(matches!(
        got.msg,
        GuestMsg::Process(ProcessStatus {
            state: ProcessState::Running { pid: 42 },
            ..
        })
    ));
}

proptest! {
    #[test]
    fn counter_values_round_trip_bit_for_bit(values in proptest::collection::vec((any::<u32>(), any::<f64>()), 0..50)) {
        let frame = Frame::event(GuestMsg::CounterValues(CounterValues { generation: 1, unix_ms: 2, values: values.clone() }));
        let bytes = encode_frame(&frame).expect("encodes");
        let back = decode_all::<GuestMsg>(&bytes).pop().expect("a frame").expect("decodes");
        let GuestMsg::CounterValues(got) = back.msg else { panic!("wrong kind") };
        let bits = |v: &[(u32, f64)]| v.iter().map(|(i, f)| (*i, f.to_bits())).collect::<Vec<_>>();
        prop_assert_eq!(bits(&got.values), bits(&values));
    }
}

#[test]
fn integral_counter_values_travel_as_varints() {
    let frame = |v: f64| {
        Frame::event(GuestMsg::CounterValues(CounterValues {
            generation: 1,
            unix_ms: 2,
            values: vec![(1, v)],
        }))
    };
    let int_len = encode_frame(&frame(123_456.0)).expect("encodes").len();
    let float_len = encode_frame(&frame(123_456.5)).expect("encodes").len();
    assert!(int_len + 4 <= float_len, "int {int_len} float {float_len}");
    for special in [
        -0.0,
        f64::NAN,
        f64::INFINITY,
        9_007_199_254_740_993.0,
        -1e300,
    ] {
        let bytes = encode_frame(&frame(special)).expect("encodes");
        let GuestMsg::CounterValues(got) = decode_all::<GuestMsg>(&bytes)
            .pop()
            .expect("a frame")
            .expect("decodes")
            .msg
        else {
            panic!()
        };
        assert_eq!(got.values[0].1.to_bits(), special.to_bits(), "{special}");
    }
}

#[test]
fn json_sees_counter_values_as_plain_pairs() {
    let values = CounterValues {
        generation: 1,
        unix_ms: 2,
        values: vec![(7, 1.5), (8, 3.0)],
    };
    let json = serde_json::to_string(&values).expect("serializes");
    assert_eq!(
        json,
        r#"{"generation":1,"unix_ms":2,"values":[[7,1.5],[8,3.0]]}"#
    );
    let back: CounterValues = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, values);
}

#[test]
fn malformed_packed_values_name_the_byte() {
    let cases: &[(&[u8], &str)] = &[
        (&[0x01, 0x01, 0x00, 0x00], "float cut short at byte 2"),
        (&[0x01, 0x03], "unknown value form 3 at byte 0"),
        (&[0x01], "bad value at byte 1"),
        (
            &[0xff, 0xff, 0xff, 0xff, 0x7f, 0x00],
            "bad counter id at byte 0",
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            appmon_wire::compact_values::unpack(bytes).expect_err("malformed"),
            *want
        );
    }
}

proptest! {
    #[test]
    fn fieldless_fast_path_writes_what_postcard_writes(frame in common::guest_frame(), host in common::host_frame()) {
        fn reference<M: WireMessage>(frame: &Frame<M>) -> Vec<u8> {
            let mut out = Vec::new();
            appmon_wire::cobs::encode(&postcard::to_allocvec(frame).expect("serializes"), &mut out);
            out.push(DELIMITER);
            out
        }
        prop_assert_eq!(encode_frame(&frame).expect("encodes"), reference(&frame));
        prop_assert_eq!(encode_frame(&host).expect("encodes"), reference(&host));
    }
}

#[test]
fn unit_kinds_are_exactly_the_fieldless_variants() {
    for kind in 0..GuestMsg::KINDS + 2 {
        assert_eq!(
            GuestMsg::is_unit(kind),
            GuestMsg::unit(kind).is_some(),
            "kind {kind}"
        );
    }
    for kind in 0..HostMsg::KINDS + 2 {
        assert_eq!(
            HostMsg::is_unit(kind),
            HostMsg::unit(kind).is_some(),
            "kind {kind}"
        );
    }
    for kind in 0..GuestMsg::KINDS {
        if let Some(msg) = GuestMsg::unit(kind) {
            assert_eq!(msg.kind(), kind);
            assert_eq!(
                postcard::to_allocvec(&msg).expect("serializes").len(),
                1,
                "{msg:?}"
            );
        }
    }
    for kind in 0..HostMsg::KINDS {
        if let Some(msg) = HostMsg::unit(kind) {
            assert_eq!(msg.kind(), kind);
            assert_eq!(
                postcard::to_allocvec(&msg).expect("serializes").len(),
                1,
                "{msg:?}"
            );
        }
    }
    assert_eq!(
        GuestMsg::unit(GuestMsg::MarkActive.kind()),
        Some(GuestMsg::MarkActive)
    );
    assert_eq!(GuestMsg::unit(0), None, "Hello has fields");
}

/// A Hello as a hostile guest builds it: the same bytes as `GuestMsg::Hello`, any agent name.
fn raw_hello_frame(agent: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    enum RawMsg<'a> {
        Hello {
            protocol: u16,
            min_protocol: u16,
            agent: &'a str,
            boot_id: [u8; 16],
            capabilities: u64,
        },
    }
    let raw = postcard::to_allocvec(&(
        Tag::Event,
        RawMsg::Hello {
            protocol: 2,
            min_protocol: 1,
            agent,
            boot_id: [1; 16],
            capabilities: 1,
        },
    ))
    .expect("encodes");
    let mut out = vec![0u8; appmon_wire::cobs::max_encoded_len(raw.len())];
    let len = appmon_wire::cobs::encode_into(&raw, &mut out);
    out.truncate(len);
    out.push(DELIMITER);
    out
}

#[test]
fn an_overlong_agent_name_is_refused_naming_field_length_and_limit() {
    let bytes = raw_hello_frame(&"n".repeat(60_000));

    let mut frames = decode_all::<GuestMsg>(&bytes);

    let err = frames.pop().expect("one frame").expect_err("refused");
    assert!(
        matches!(
            err,
            FrameError::TooLong {
                kind_name: "Hello",
                too_long: TooLong {
                    field: "agent name",
                    len: 60_000,
                    limit: 128
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "frame at stream offset 0: Hello message refused: agent name of 60000 bytes exceeds its limit of 128 bytes"
    );
}

#[test]
fn an_agent_name_at_its_limit_decodes_and_shows_escaped() {
    let name = format!("evil\nERROR{}", "x".repeat(128 - 10));
    let bytes = raw_hello_frame(&name);

    let frame = decode_all::<GuestMsg>(&bytes)
        .pop()
        .expect("one frame")
        .expect("within the limit");

    let GuestMsg::Hello(hello) = frame.msg else {
        panic!("{frame:?}")
    };
    assert_eq!(hello.agent.as_str(), name);
    assert!(!hello.agent.to_string().contains('\n'));
}
