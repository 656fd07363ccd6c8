//! Consistent Overhead Byte Stuffing, run at a time.
//!
//! COBS replaces every zero byte of a payload: the payload is cut at its zeros into blocks, and
//! each block is written as a code byte (block length + 1) followed by the block's bytes. A
//! block of 254 non-zero bytes gets code 0xFF and no implied zero. The result has no zero byte,
//! so 0x00 can end a frame.
//!
//! Measured on a 200-counter frame, the byte-at-a-time state machines of general COBS crates
//! cost ten times what postcard itself does. Here each block is a SIMD search for the next zero
//! and one copy. That pays because our payloads have few zero bytes (counter values travel as
//! varints, see [`crate::message::compact_values`]), so blocks are long.

/// The longest run of data bytes one code byte can describe.
const MAX_RUN: usize = 254;

/// The most bytes COBS can turn `len` bytes into (no delimiter).
pub const fn max_encoded_len(len: usize) -> usize {
    len + len / MAX_RUN + 1
}

/// COBS-encodes `src` into `out`, which holds at least [`max_encoded_len`] bytes; returns the
/// encoded length (no delimiter).
pub fn encode_into(mut src: &[u8], out: &mut [u8]) -> usize {
    if src.len() < SHORT {
        return encode_short(src, out);
    }
    let mut write = 0;
    loop {
        let window = &src[..src.len().min(MAX_RUN)];
        match memchr::memchr(0, window) {
            Some(zero) => {
                out[write] = zero as u8 + 1;
                out[write + 1..write + 1 + zero].copy_from_slice(&window[..zero]);
                write += 1 + zero;
                src = &src[zero + 1..];
            }
            None if window.len() == MAX_RUN => {
                out[write] = 0xFF;
                out[write + 1..write + 1 + MAX_RUN].copy_from_slice(window);
                write += 1 + MAX_RUN;
                src = &src[MAX_RUN..];
                if src.is_empty() {
                    // A full block at the very end needs no empty block after it.
                    return write;
                }
            }
            None => {
                out[write] = window.len() as u8 + 1;
                out[write + 1..write + 1 + window.len()].copy_from_slice(window);
                return write + 1 + window.len();
            }
        }
    }
}

/// Below this many bytes a plain loop beats calling out to `memchr` and `memcpy`: heartbeats
/// and status frames are a few bytes long.
const SHORT: usize = 32;

fn encode_short(src: &[u8], out: &mut [u8]) -> usize {
    let (mut code_at, mut write) = (0, 1);
    for &byte in src {
        if byte == 0 {
            out[code_at] = (write - code_at) as u8;
            code_at = write;
        } else {
            out[write] = byte;
        }
        write += 1;
    }
    out[code_at] = (write - code_at) as u8;
    write
}

/// COBS-encodes `data` onto the end of `out` (no delimiter).
pub fn encode(data: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + max_encoded_len(data.len()), 0);
    let n = encode_into(data, &mut out[start..]);
    out.truncate(start + n);
}

/// The block does not follow COBS: a code byte points past the end, or a zero is inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CobsError;

/// Decodes a COBS block (delimiter removed) in place; returns the decoded length.
pub fn decode_in_place(buf: &mut [u8]) -> Result<usize, CobsError> {
    let len = buf.len();
    let (mut read, mut write) = (0, 0);
    while read < len {
        let code = usize::from(buf[read]);
        let end = read + code;
        if code == 0 || end > len {
            return Err(CobsError);
        }
        if code < SHORT {
            for i in read + 1..end {
                let byte = buf[i];
                if byte == 0 {
                    return Err(CobsError);
                }
                buf[write] = byte;
                write += 1;
            }
        } else {
            if memchr::memchr(0, &buf[read + 1..end]).is_some() {
                return Err(CobsError);
            }
            buf.copy_within(read + 1..end, write);
            write += code - 1;
        }
        read = end;
        if code != 0xFF && read < len {
            buf[write] = 0;
            write += 1;
        }
    }
    Ok(write)
}

/// Decodes a COBS block that is known to hold no zero byte (the frame decoder cut it at the
/// first one) in place; returns where the decoded bytes are. A block of one COBS run, which is
/// what a heartbeat is, decodes without moving anything.
#[inline]
pub fn decode_zero_free_in_place(buf: &mut [u8]) -> Result<std::ops::Range<usize>, CobsError> {
    debug_assert!(!buf.contains(&0));
    match buf.first() {
        Some(&code) if usize::from(code) == buf.len() => Ok(1..buf.len()),
        _ => decode_in_place(buf).map(|n| 0..n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(data, &mut out);
        out
    }

    #[test]
    fn known_vectors_encode_as_the_cobs_paper_says() {
        let cases: &[(&[u8], &[u8])] = &[
            (&[], &[0x01]),
            (&[0x00], &[0x01, 0x01]),
            (&[0x00, 0x00], &[0x01, 0x01, 0x01]),
            (&[0x11, 0x22, 0x00, 0x33], &[0x03, 0x11, 0x22, 0x02, 0x33]),
            (&[0x11, 0x00, 0x00, 0x00], &[0x02, 0x11, 0x01, 0x01, 0x01]),
        ];
        for (data, want) in cases {
            assert_eq!(encoded(data), *want, "{data:?}");
        }
    }

    #[test]
    fn a_full_254_byte_run_needs_no_implied_zero() {
        let data: Vec<u8> = (1..=254).collect();
        let out = encoded(&data);
        assert_eq!(out[0], 0xFF);
        assert_eq!(out.len(), 255, "one 0xFF block, no empty block after it");
        let mut back = out.clone();
        let n = decode_in_place(&mut back).expect("valid");
        assert_eq!(&back[..n], &data[..]);
    }

    #[test]
    fn block_boundaries_match_the_reference() {
        let run = |n: usize| vec![7u8; n];
        let mut cases = vec![run(253), run(254), run(255), run(508), run(509)];
        for base in [253, 254, 255] {
            let mut with_zero = run(base);
            with_zero.push(0);
            cases.push(with_zero.clone());
            with_zero.extend(run(3));
            cases.push(with_zero);
        }
        for data in cases {
            assert_eq!(
                encoded(&data),
                cobs::encode_vec(&data),
                "len {}",
                data.len()
            );
        }
    }

    #[test]
    fn zero_inside_a_block_is_refused() {
        assert_eq!(decode_in_place(&mut [0x03, 0x11, 0x00]), Err(CobsError));
        assert_eq!(decode_in_place(&mut [0x00]), Err(CobsError));
    }

    #[test]
    fn code_past_the_end_is_refused() {
        assert_eq!(decode_in_place(&mut [0x05, 0x11]), Err(CobsError));
    }

    proptest! {
        #[test]
        fn matches_the_reference_implementation(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let ours = encoded(&data);
            // The reference writes nothing for empty input, COBS proper one code byte; frames
            // are never empty.
            if !data.is_empty() {
                prop_assert_eq!(&ours, &cobs::encode_vec(&data));
            }
            prop_assert!(!ours.contains(&0));
            let mut back = ours.clone();
            let n = decode_in_place(&mut back).expect("own output decodes");
            prop_assert_eq!(&back[..n], &data[..]);
        }

        #[test]
        fn decoding_garbage_never_panics(mut data in proptest::collection::vec(1u8..=255, 0..600)) {
            let reference = cobs::decode_vec(&data).ok();
            if let Ok(n) = decode_in_place(&mut data) {
                // Where the reference decoder accepts too, both agree.
                if let Some(r) = reference {
                    prop_assert_eq!(&data[..n], &r[..]);
                }
            }
        }
    }
}
