//! The lifecycle operations the HA tests build on: a reset gives a new boot, an ACPI shutdown
//! reaches the guest's acpid, and a stopped guest starts again with vsock working (the backend
//! outlives QEMU).
#![cfg(feature = "vm")]

use std::io::{Read, Write};
use std::time::Duration;

use appmon_vm_tests::{
    markers, DomainState, TestVm, VmConfig, DEFAULT_BOOT_TIMEOUT, VSOCK_ECHO_PORT,
};

fn echo_once(vm: &TestVm, what: &str) {
    let mut conn = vm.connect(VSOCK_ECHO_PORT, Duration::from_secs(30));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout on the hybrid-vsock stream");
    let msg = format!("{what}\n");
    conn.write_all(msg.as_bytes())
        .unwrap_or_else(|e| vm.fail(format!("{what}: writing: {e}")));
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back)
        .unwrap_or_else(|e| vm.fail(format!("{what}: reading the echo: {e}")));
    assert_eq!(String::from_utf8_lossy(&back), msg);
}

#[test]
fn guest_comes_back_after_reset_and_after_acpi_shutdown_and_start() {
    let vm = TestVm::new(VmConfig::new("lifecycle"));
    vm.rig().require_guest_program("vsock-echo");
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);

    echo_once(&vm, "before the reset");
    // Nothing goes to the guest while it reboots: vhost-device-vsock 0.3.0 wedges when anything
    // does. A connection closed before the reset and a new one once the guest is up both work.
    let mark = vm.console_mark();
    vm.reset();
    let took = vm.wait_ready_since(mark, DEFAULT_BOOT_TIMEOUT);
    println!("reset: ready again after {:.2}s", took.as_secs_f64());
    echo_once(&vm, "after the reset, once the guest is up");
    let ids = vm.boot_ids();
    assert_eq!(ids.len(), 2, "a reset is a second boot: {ids:?}");
    assert_ne!(ids[0], ids[1], "a new boot has a new boot id");

    vm.shutdown();
    let took = vm.wait_for_state(DomainState::ShutOff, Duration::from_secs(60));
    println!("ACPI shutdown: shut off after {:.2}s", took.as_secs_f64());
    vm.wait_for_console_line(mark, markers::POWER_BUTTON, Duration::from_secs(5));

    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    echo_once(&vm, "after shutdown and start");
    assert_eq!(vm.boot_ids().len(), 3);
}
