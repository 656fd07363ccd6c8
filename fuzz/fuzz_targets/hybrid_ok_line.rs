//! The `OK <port>` reply of a hybrid-vsock backend: any bytes, no panic, and only a canonical
//! line is accepted.
#![no_main]

use appmon_wire::hybrid::parse_ok_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(port) = parse_ok_line(data) {
        assert!(data.starts_with(b"OK "));
        assert_eq!(std::str::from_utf8(&data[3..]).ok().and_then(|s| s.parse().ok()), Some(port));
    }
});
