//! The named-pipe reader's parser (`counters::pipe::PipeParser`): whatever a process in the
//! guest writes into a counters pipe, cut into input-chosen chunks. No panic; the partial line
//! stays within MAX_LINE; the same bytes in any chunking give the same sets; every value of a
//! set is finite and names a counter of the pipe, each at most once.
#![no_main]

use appmon_guest_agent::counters::pipe::{parse_line, PipeParser, MAX_LINE};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 4] = ["a", "Total_Accesses", "b.c", "x"];

fn parser() -> PipeParser {
    PipeParser::new(NAMES.iter().enumerate().map(|(i, n)| (n.to_string(), i)))
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut whole = parser();
    let expected = whole.feed(bytes);
    let mut pieces = parser();
    let mut got = Vec::new();
    for piece in bytes.chunks(chunk) {
        got.extend(pieces.feed(piece));
        assert!(pieces.pending_line_len() <= MAX_LINE);
    }
    assert_eq!(got, expected);
    assert_eq!(pieces.stats(), whole.stats());
    for set in &expected {
        let mut seen = Vec::new();
        for &(index, value) in set {
            assert!(index < NAMES.len() && value.is_finite());
            assert!(!seen.contains(&index));
            seen.push(index);
        }
    }
    for line in bytes.split(|&b| b == b'\n') {
        let _ = parse_line(line);
    }
});
