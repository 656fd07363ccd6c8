//! The domain XML reader (`domxml`): vsock CID and channel sockets. libvirt writes the document,
//! but from a definition anyone with access to libvirt may write. Any text, no panic, and the
//! lookup helpers agree with the full parse.
#![no_main]

use appmon_libvirt_backend::domxml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(devices) = domxml::parse_devices(text) else {
        assert!(domxml::vsock_cid(text).is_err());
        return;
    };
    assert_eq!(domxml::vsock_cid(text).ok(), Some(devices.vsock_cid));
    for channel in &devices.unix_channels {
        if let Some(name) = &channel.target_name {
            let path = domxml::channel_socket_path(text, name).ok().flatten();
            assert_eq!(path.as_ref(), devices.channel_socket_path(name), "{name}");
        }
    }
});
