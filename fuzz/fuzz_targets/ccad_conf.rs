//! The ccad.conf parser (`counters::ccad::parse`): a guest operator's UDL, any text. No panic;
//! what parses keeps the parser's promises (paces in range, absolute pipes, unique counter
//! names, at most MAX_COUNTERS); every error names a line and column inside the text.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use appmon_guest_agent::counters::ccad::{self, CcadError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.matches('\n').count() + 1;
    let in_text = |line: usize, column: usize| (1..=lines).contains(&line) && column >= 1;
    match ccad::parse(text, Path::new("ccad.conf")) {
        Ok(parsed) => {
            let config = parsed.config;
            let mut keys = HashSet::new();
            for (block, _, counter) in config.counters() {
                assert!((ccad::MIN_PACE_MS..=ccad::MAX_PACE_MS).contains(&block.pace_ms));
                assert!(block.pipe.is_absolute());
                assert!(keys.insert(counter.key.clone()), "duplicate {}", counter.key);
                assert!(in_text(counter.line, counter.column));
            }
            assert!(keys.len() <= ccad::MAX_COUNTERS);
            for w in &parsed.warnings {
                assert!(in_text(w.line, w.column), "{w:?}");
            }
        }
        Err(CcadError::Syntax { line, column, .. }) => {
            assert!(in_text(line, column), "{line}:{column} of {lines} lines: {text:?}");
        }
        Err(CcadError::Duplicate {
            line,
            column,
            first_line,
            first_column,
            ..
        }) => {
            assert!(in_text(line, column) && in_text(first_line, first_column));
            assert!((first_line, first_column) < (line, column), "{text:?}");
        }
        Err(e) => panic!("parse() read no file, yet: {e}"),
    }
});
