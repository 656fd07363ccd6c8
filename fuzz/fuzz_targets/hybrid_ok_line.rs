//! The `OK <port>` reply of a hybrid-vsock backend, fed byte by byte through the reader every
//! client uses: any bytes, no panic; it takes at most `MAX_OK_LINE` bytes and never one past the
//! newline; and it names a port only for a canonical line, the one `parse_ok_line` accepts.
#![no_main]

use appmon_wire::hybrid::{parse_ok_line, OkLine, OkLineError, OkLineReader, MAX_OK_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = OkLineReader::new();
    for (i, &byte) in data.iter().enumerate() {
        let taken = i + 1;
        assert!(taken <= MAX_OK_LINE, "the reader took {taken} bytes");
        reader = match reader.feed(byte) {
            Ok(OkLine::NeedMore(reader)) => {
                assert_ne!(byte, b'\n', "a newline ends the line");
                reader
            }
            Ok(OkLine::Port(port)) => {
                let line = &data[..i];
                assert_eq!(byte, b'\n');
                assert!(!line.contains(&b'\n'));
                assert!(line.starts_with(b"OK "));
                assert_eq!(
                    std::str::from_utf8(&line[3..]).ok().and_then(|s| s.parse().ok()),
                    Some(port)
                );
                assert_eq!(parse_ok_line(line).ok(), Some(port));
                return;
            }
            Err(OkLineError::NotOk { .. }) => {
                assert_eq!(byte, b'\n');
                assert!(parse_ok_line(&data[..i]).is_err());
                return;
            }
            Err(OkLineError::TooLong { .. }) => {
                assert_eq!(taken, MAX_OK_LINE);
                assert!(!data[..taken].contains(&b'\n'));
                return;
            }
        };
    }
    assert!(data.len() < MAX_OK_LINE && !data.contains(&b'\n'));
});
