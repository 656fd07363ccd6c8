//! Instruction-count probe for the codec, for `valgrind --tool=callgrind`: MODE is one of
//! postcard-heartbeat, postcard-counters, json-heartbeat, json-counters, decode-heartbeat;
//! N is the number of round trips.
use appmon_wire::*;
use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mode = std::env::var("MODE").unwrap_or_default();
    let values = (0..200u32)
        .map(|i| {
            let v = if i % 4 == 0 {
                (f64::from(i) * 3.7 % 100.0 * 100.0).round() / 100.0 + 0.01
            } else {
                (u64::from(i) * 7_919_993 % 10u64.pow(3 + i % 7)) as f64
            };
            (i, v)
        })
        .collect();
    let frame = if mode.ends_with("heartbeat") {
        Frame::event(GuestMsg::MarkActive)
    } else {
        Frame::event(GuestMsg::CounterValues(CounterValues {
            generation: 3,
            unix_ms: 1_763_900_000_000,
            values,
        }))
    };
    let (mut enc, mut dec) = (GuestCodec::new(), HostCodec::new());
    let mut buf = BytesMut::with_capacity(8192);
    let mut jbuf = Vec::new();
    Encoder::<&Frame<GuestMsg>>::encode(&mut enc, &frame, &mut buf).expect("encodes");
    let wire = buf.to_vec();
    buf.clear();
    for _ in 0..n {
        if mode.starts_with("decode") {
            buf.extend_from_slice(&wire);
            if let Ok(Some(Ok(f))) = dec.decode(&mut buf) {
                std::hint::black_box(f);
            }
        } else if mode.starts_with("postcard") {
            Encoder::<&Frame<GuestMsg>>::encode(&mut enc, &frame, &mut buf).expect("encodes");
            if let Ok(Some(Ok(f))) = dec.decode(&mut buf) {
                std::hint::black_box(f);
            }
        } else {
            jbuf.clear();
            serde_json::to_writer(&mut jbuf, &frame).expect("encodes");
            jbuf.push(b'\n');
            let end = jbuf.iter().position(|&b| b == b'\n').expect("newline");
            if let Ok(f) = serde_json::from_slice::<Frame<GuestMsg>>(&jbuf[..end]) {
                std::hint::black_box(f);
            }
        }
    }
}
