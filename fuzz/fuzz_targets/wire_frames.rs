//! Untrusted bytes from a guest (and, the other way, from a host) through the frame decoder,
//! delivered in chunks whose sizes the input chooses. The decoder must never panic, never
//! buffer more than the frame limit plus one chunk, and re-encode whatever it accepts.
#![no_main]

use appmon_wire::{decode_all, encode_frame, GuestCodec, HostCodec};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const LIMIT: usize = 512;

fn run<D, M>(mut codec: D, data: &[u8], chunk: usize)
where
    D: Decoder<Item = Result<appmon_wire::Frame<M>, appmon_wire::FrameError>, Error = std::io::Error>,
    M: appmon_wire::WireMessage,
{
    let mut buf = BytesMut::new();
    let check = |item: Result<appmon_wire::Frame<M>, appmon_wire::FrameError>| {
        if let Ok(frame) = item {
            // What was accepted re-encodes, and decodes back to the same bytes (bytes, not
            // values: a NaN counter value is not equal to itself).
            let again = encode_frame(&frame).expect("accepted frames re-encode");
            let back = decode_all::<M>(&again)
                .pop()
                .expect("one frame")
                .expect("re-encoded frame decodes");
            assert_eq!(encode_frame(&back).expect("re-encodes"), again);
        }
    };
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Ok(Some(item)) = codec.decode(&mut buf) {
            check(item);
        }
        assert!(buf.len() <= LIMIT + chunk, "decoder buffered {} bytes", buf.len());
    }
    while let Ok(Some(item)) = codec.decode_eof(&mut buf) {
        check(item);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    run(HostCodec::with_max_frame(LIMIT), rest, chunk);
    run(GuestCodec::with_max_frame(LIMIT), rest, chunk);
});
