//! Encode + decode of the same messages in three wire formats (protobuf three ways), side by side:
//!
//! - `postcard`: this crate's codec (postcard + COBS + delimiter, through the tokio codec);
//! - `json`: serde_json, one message per line, as qemu-guest-agent frames its JSON;
//! - `protobuf`: prost with a length prefix, as kata-agent's ttrpc carries protobuf, the way a
//!   port of this protocol would first do it: each frame converted to the generated types inside
//!   the timed loop, every counter value a `double`;
//! - `protobuf_oneof`: the fair protobuf, as a protobuf-native agent would do it: the message is
//!   built once, outside the timed loop (such an agent keeps its state in the generated types),
//!   and a counter value is a oneof of a `sint64` (integral values, varints as ours are) and a
//!   `double`. Decoding gives the generated types in all protobuf variants;
//! - `protobuf_prebuilt`: the first schema, its message also built once, which tells what the
//!   conversion costs from what the schema costs.
//!
//! Two messages: a heartbeat (the most frequent frame, 10,000 guests send one a second) and a
//! counter-values frame of 200 counters (a realistic mix, see `counter_value`). After
//! criterion's report the bench prints a table of mean times and the ratio of each alternative
//! to postcard, from the same samples, and the frame sizes.
//!
//!     cargo bench -p appmon-wire --bench codec

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use appmon_wire::{CounterValues, Frame, GuestCodec, GuestMsg, HostCodec};
use bytes::{Buf, BytesMut};
use criterion::{black_box, BenchmarkId, Criterion};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

/// The protobuf schema a kata-style agent would use for the same two messages.
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Frame {
        #[prost(uint32, tag = "1")]
        pub tag: u32,
        #[prost(uint32, tag = "2")]
        pub id: u32,
        #[prost(oneof = "Body", tags = "3, 4")]
        pub body: Option<Body>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        #[prost(message, tag = "3")]
        MarkActive(MarkActive),
        #[prost(message, tag = "4")]
        CounterValues(CounterValues),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MarkActive {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CounterValues {
        #[prost(uint32, tag = "1")]
        pub generation: u32,
        #[prost(uint64, tag = "2")]
        pub unix_ms: u64,
        #[prost(message, repeated, tag = "3")]
        pub values: Vec<Value>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(double, tag = "2")]
        pub value: f64,
    }

    /// The fair schema: the same frame, a counter value an int/float oneof.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OneofFrame {
        #[prost(uint32, tag = "1")]
        pub tag: u32,
        #[prost(uint32, tag = "2")]
        pub id: u32,
        #[prost(oneof = "OneofBody", tags = "3, 4")]
        pub body: Option<OneofBody>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum OneofBody {
        #[prost(message, tag = "3")]
        MarkActive(MarkActive),
        #[prost(message, tag = "4")]
        CounterValues(OneofCounterValues),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OneofCounterValues {
        #[prost(uint32, tag = "1")]
        pub generation: u32,
        #[prost(uint64, tag = "2")]
        pub unix_ms: u64,
        #[prost(message, repeated, tag = "3")]
        pub values: Vec<OneofValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OneofValue {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(oneof = "Number", tags = "2, 3")]
        pub value: Option<Number>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Number {
        #[prost(sint64, tag = "2")]
        Int(i64),
        #[prost(double, tag = "3")]
        Float(f64),
    }
}

fn heartbeat() -> Frame<GuestMsg> {
    Frame::event(GuestMsg::MarkActive)
}

/// What a guest's standard counters look like: a quarter are percentages and load averages
/// (fractions), the rest are counts of bytes, packets, files and switches, of every magnitude.
fn counter_value(i: u32) -> f64 {
    if i % 4 == 0 {
        (f64::from(i) * 3.7 % 100.0 * 100.0).round() / 100.0 + 0.01
    } else {
        (u64::from(i) * 7_919_993 % 10u64.pow(3 + i % 7)) as f64
    }
}

fn counters() -> Frame<GuestMsg> {
    let values = (0..200u32).map(|i| (i, counter_value(i))).collect();
    Frame::event(GuestMsg::CounterValues(CounterValues {
        generation: 3,
        unix_ms: 1_763_900_000_000,
        values,
    }))
}

fn to_pb(frame: &Frame<GuestMsg>) -> pb::Frame {
    let body = match &frame.msg {
        GuestMsg::MarkActive => pb::Body::MarkActive(pb::MarkActive {}),
        GuestMsg::CounterValues(v) => pb::Body::CounterValues(pb::CounterValues {
            generation: v.generation,
            unix_ms: v.unix_ms,
            values: v
                .values
                .iter()
                .map(|&(id, value)| pb::Value { id, value })
                .collect(),
        }),
        other => unreachable!("the bench only uses two messages, not {other:?}"),
    };
    pb::Frame {
        tag: 0,
        id: 0,
        body: Some(body),
    }
}

/// The fair protobuf message for `frame`: integral values (exact in an `f64`, as this crate's
/// packing takes them) as `sint64`, the rest as `double`.
fn to_pb_oneof(frame: &Frame<GuestMsg>) -> pb::OneofFrame {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let number = |v: f64| {
        if v.abs() < EXACT && (v as i64) as f64 == v && !(v == 0.0 && v.is_sign_negative()) {
            pb::Number::Int(v as i64)
        } else {
            pb::Number::Float(v)
        }
    };
    let body = match &frame.msg {
        GuestMsg::MarkActive => pb::OneofBody::MarkActive(pb::MarkActive {}),
        GuestMsg::CounterValues(v) => pb::OneofBody::CounterValues(pb::OneofCounterValues {
            generation: v.generation,
            unix_ms: v.unix_ms,
            values: v
                .values
                .iter()
                .map(|&(id, value)| pb::OneofValue {
                    id,
                    value: Some(number(value)),
                })
                .collect(),
        }),
        other => unreachable!("the bench only uses two messages, not {other:?}"),
    };
    pb::OneofFrame {
        tag: 0,
        id: 0,
        body: Some(body),
    }
}

#[inline(never)]
fn postcard_round_trip(
    enc: &mut GuestCodec,
    dec: &mut HostCodec,
    buf: &mut BytesMut,
    f: &Frame<GuestMsg>,
) {
    Encoder::<&Frame<GuestMsg>>::encode(enc, f, buf).expect("encodes");
    // All three formats check their result by reference and hand it on whole. Taking it apart
    // by value made the compiler copy postcard's nested Result byte by byte, which measured
    // the bench's code (40 of 80 ns) rather than the codec.
    let item = dec.decode(buf);
    assert!(
        matches!(&item, Ok(Some(Ok(_)))),
        "round trip failed: {item:?}"
    );
    drop(black_box(item));
}

#[inline(never)]
fn json_round_trip(buf: &mut Vec<u8>, f: &Frame<GuestMsg>) {
    buf.clear();
    serde_json::to_writer(&mut *buf, f).expect("encodes");
    buf.push(b'\n');
    let end = buf
        .iter()
        .position(|&b| b == b'\n')
        .expect("line delimiter");
    let item = serde_json::from_slice::<Frame<GuestMsg>>(&buf[..end]);
    assert!(item.is_ok(), "round trip failed: {item:?}");
    drop(black_box(item));
}

#[inline(never)]
fn protobuf_round_trip(buf: &mut BytesMut, f: &Frame<GuestMsg>) {
    buf.clear();
    // Converting to the generated types is part of what a protobuf agent pays.
    to_pb(f).encode_length_delimited(buf).expect("encodes");
    let item = pb::Frame::decode_length_delimited(buf.chunk());
    assert!(item.is_ok(), "round trip failed: {item:?}");
    drop(black_box(item));
}

/// A message built before the timed loop: encode and decode only.
#[inline(never)]
fn protobuf_prebuilt_round_trip<M: prost::Message + Default>(buf: &mut BytesMut, msg: &M) {
    buf.clear();
    msg.encode_length_delimited(buf).expect("encodes");
    let item = M::decode_length_delimited(buf.chunk());
    assert!(item.is_ok(), "round trip failed: {item:?}");
    drop(black_box(item));
}

/// Total time and iterations per (message, format), from criterion's own samples.
type Totals = BTreeMap<(String, &'static str), (Duration, u64)>;

thread_local! {
    static TOTALS: RefCell<Totals> = const { RefCell::new(BTreeMap::new()) };
}

fn measured(
    message: &str,
    format: &'static str,
    mut once: impl FnMut(),
) -> impl FnMut(u64) -> Duration {
    let message = message.to_string();
    move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            once();
        }
        let elapsed = start.elapsed();
        TOTALS.with(|t| {
            let mut t = t.borrow_mut();
            let entry = t
                .entry((message.clone(), format))
                .or_insert((Duration::ZERO, 0));
            entry.0 += elapsed;
            entry.1 += iters;
        });
        elapsed
    }
}

fn bench(c: &mut Criterion) {
    for (name, frame) in [("heartbeat", heartbeat()), ("counters_200", counters())] {
        let mut group = c.benchmark_group(format!("encode_decode/{name}"));
        // Read buffers have capacity, as FramedRead's do.
        let (mut enc, mut dec) = (GuestCodec::new(), HostCodec::new());
        let mut buf = BytesMut::with_capacity(8192);
        group.bench_function(BenchmarkId::from_parameter("postcard"), |b| {
            b.iter_custom(measured(name, "postcard", || {
                postcard_round_trip(&mut enc, &mut dec, &mut buf, &frame)
            }))
        });
        let mut jbuf = Vec::with_capacity(8192);
        group.bench_function(BenchmarkId::from_parameter("json"), |b| {
            b.iter_custom(measured(name, "json", || {
                json_round_trip(&mut jbuf, &frame)
            }))
        });
        let mut pbuf = BytesMut::with_capacity(8192);
        group.bench_function(BenchmarkId::from_parameter("protobuf"), |b| {
            b.iter_custom(measured(name, "protobuf", || {
                protobuf_round_trip(&mut pbuf, &frame)
            }))
        });
        // Built once: a protobuf-native agent holds its state in the generated types. The
        // naive schema pre-built too, to tell the conversion's cost from the schema's.
        let prebuilt_doubles = to_pb(&frame);
        let mut dbuf = BytesMut::with_capacity(8192);
        group.bench_function(BenchmarkId::from_parameter("protobuf_prebuilt"), |b| {
            b.iter_custom(measured(name, "protobuf_prebuilt", || {
                protobuf_prebuilt_round_trip(&mut dbuf, &prebuilt_doubles)
            }))
        });
        let prebuilt = to_pb_oneof(&frame);
        let mut obuf = BytesMut::with_capacity(8192);
        group.bench_function(BenchmarkId::from_parameter("protobuf_oneof"), |b| {
            b.iter_custom(measured(name, "protobuf_oneof", || {
                protobuf_prebuilt_round_trip(&mut obuf, &prebuilt)
            }))
        });
        group.finish();
        let sizes = [
            (
                "postcard",
                appmon_wire::encode_frame(&frame).expect("encodes").len(),
            ),
            (
                "json",
                serde_json::to_vec(&frame).expect("encodes").len() + 1,
            ),
            (
                "protobuf",
                to_pb(&frame).encode_length_delimited_to_vec().len(),
            ),
            (
                "protobuf_oneof",
                prebuilt.encode_length_delimited_to_vec().len(),
            ),
            (
                "protobuf_prebuilt",
                prebuilt_doubles.encode_length_delimited_to_vec().len(),
            ),
        ];
        println!("frame sizes for {name}: {sizes:?}");
    }
}

fn print_ratios() {
    TOTALS.with(|t| {
        let t = t.borrow();
        println!();
        println!(
            "{:<14} {:<18} {:>12} {:>16}",
            "message", "format", "mean", "x postcard time"
        );
        for ((message, format), (total, iters)) in t.iter() {
            let mean = total.as_nanos() as f64 / *iters as f64;
            let base = t
                .get(&(message.clone(), "postcard"))
                .map(|(tt, n)| tt.as_nanos() as f64 / *n as f64)
                .unwrap_or(f64::NAN);
            println!(
                "{message:<14} {format:<18} {:>9.1} ns {:>15.1}x",
                mean,
                mean / base
            );
        }
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    print_ratios();
}
