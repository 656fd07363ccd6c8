//! The test rig's guest-only programs: `appmon-demo` (the demo application the VM tests and
//! `scripts/demo` monitor) and `vsock-echo` (an AF_VSOCK echo server), and what they share.
//!
//! A crate of their own because they are linked statically into the guest image
//! (`scripts/build-guest-binaries`): nothing here may pull in libvirt or the host agent, which
//! the VM tests' harness (`appmon-vm-tests`) links. The harness depends on this crate only for
//! the ports below.
//!
//! ************************************************************************************************
//! GUEST-ONLY. These functions open AF_VSOCK sockets and belong to programs that run ONLY inside
//! the nested test guests. The host's /dev/vsock belongs to the infrastructure of the machine the
//! tests run on: [`require_rig_guest`] makes every such program refuse to start anywhere else.
//! ************************************************************************************************

use std::io;
use std::path::Path;

/// Guest port of the `vsock-echo` helper started by the rig image's /init.
pub const VSOCK_ECHO_PORT: u32 = 5399;

/// Guest port on which the demo application (`appmon-demo`) takes commands from the host.
pub const DEMO_CONTROL_PORT: u32 = 5400;

/// Exists only in the rig's guest image (scripts/build-guest-image writes it).
pub const GUEST_MARKER: &str = "/etc/appmon/rig-guest";

/// Fails unless this process runs in a rig guest.
pub fn require_rig_guest(program: &str) -> Result<(), String> {
    if Path::new(GUEST_MARKER).exists() {
        Ok(())
    } else {
        Err(format!(
            "{program}: {GUEST_MARKER} not found: this is not a test-rig guest; refusing to open AF_VSOCK"
        ))
    }
}

/// Listens on guest vsock `port` for connections from any CID.
pub fn listen(port: u32) -> io::Result<vsock::VsockListener> {
    vsock::VsockListener::bind_with_cid_port(vsock::VMADDR_CID_ANY, port)
}

/// The value of `key=value` on a kernel command line, if the key is there.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_values_are_found_by_exact_key() {
        let cmdline = "console=ttyS0 appmon.demo=stop-after:3 appmon.demo.interval=500 quiet";
        assert_eq!(cmdline_value(cmdline, "appmon.demo"), Some("stop-after:3"));
        assert_eq!(cmdline_value(cmdline, "appmon.demo.interval"), Some("500"));
        assert_eq!(cmdline_value(cmdline, "appmon"), None);
        assert_eq!(cmdline_value(cmdline, "quiet"), None);
    }
}
