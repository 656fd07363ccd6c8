//! MON's `/monapi` URL parser (`mon::query::parse`): any path and query a client sends. No
//! panic; what parses stays within the bounds (names per list, name length) and names no `.`
//! or `..`.
#![no_main]

use appmon_host_agent::mon::query::{parse, Selector, MAX_NAME, MAX_NAMES, MAX_URL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    if let Ok(q) = parse(path, query) {
        assert!(text.len() <= MAX_URL);
        for selector in [&q.apps, &q.ents, &q.cnts] {
            if let Selector::Names(names) = selector {
                assert!(!names.is_empty() && names.len() <= MAX_NAMES);
                for name in names {
                    assert!(!name.is_empty() && name.len() <= MAX_NAME);
                    assert!(name != "." && name != "..");
                }
            }
        }
    }
});
