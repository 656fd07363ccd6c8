//! The `<appmon:monitor>` metadata element (`MonitorSpec::from_xml`): anyone who may edit a
//! domain's XML writes it. Any text, no panic; whatever parses writes back (in both forms) to
//! the same spec.
#![no_main]

use appmon_libvirt_backend::MonitorSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = MonitorSpec::from_xml(text) {
        assert_eq!(MonitorSpec::from_xml(&spec.to_xml()).as_ref(), Ok(&spec), "{text:?}");
        assert_eq!(
            MonitorSpec::from_xml(&spec.to_metadata_xml()).as_ref(),
            Ok(&spec),
            "{text:?}"
        );
    }
});
