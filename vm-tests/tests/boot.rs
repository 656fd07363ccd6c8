//! Smoke tests of the rig itself: a guest boots, and host → guest traffic crosses
//! vhost-user-vsock through the hybrid-vsock Unix socket.
#![cfg(feature = "vm")]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use appmon_vm_tests::{
    markers, ConsoleMark, DomainState, TestVm, VmConfig, DEFAULT_BOOT_TIMEOUT, VSOCK_ECHO_PORT,
};

#[test]
fn guest_boots_to_ready_marker() {
    let config = VmConfig::new("boot")
        .cmdline_arg("appmon.demo=\"beat 5\"")
        .guest_file("/etc/appmon/greeting", "hello from the test\n")
        .guest_script(
            "/etc/appmon/init.d/greet",
            "#!/bin/sh\necho \"greeting: $(cat /etc/appmon/greeting)\"\nexec sleep 1000000\n",
        );
    let vm = TestVm::new(config);
    let times = vm.start_measured(DEFAULT_BOOT_TIMEOUT);

    assert_eq!(vm.state(), DomainState::Running);
    assert!(times.init <= times.ready);
    let ids = vm.boot_ids();
    assert_eq!(ids.len(), 1, "one boot, one boot id: {ids:?}");
    let cmdline = vm.wait_for_marker(ConsoleMark::default(), markers::CMDLINE, Duration::ZERO);
    assert!(
        cmdline.contains(" appmon.demo=\"beat 5\""),
        "guest programs see appmon.* options in /proc/cmdline: {cmdline}"
    );
    // The test's own files arrive in the guest and its init.d script runs.
    vm.wait_for_console_line(
        ConsoleMark::default(),
        "[greet] greeting: hello from the test",
        Duration::from_secs(10),
    );
    println!(
        "boot time: {} after {:.2}s, {} after {:.2}s (virsh start {:.2}s)",
        markers::INIT,
        times.init.as_secs_f64(),
        markers::GUEST_READY,
        times.ready.as_secs_f64(),
        times.virsh_start.as_secs_f64()
    );
}

#[test]
fn host_reaches_guest_over_hybrid_vsock() {
    let vm = TestVm::new(VmConfig::new("echo"));
    vm.rig().require_guest_program("vsock-echo");
    let times = vm.start_measured(DEFAULT_BOOT_TIMEOUT);

    let t0 = Instant::now();
    let mut conn = vm.connect(VSOCK_ECHO_PORT, Duration::from_secs(30));
    let connected = t0.elapsed();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout on the hybrid-vsock stream");
    let mut rtts = Vec::new();
    for i in 0..20u32 {
        let msg = format!("appmon echo {i:04} {}\n", "x".repeat(40));
        let start = Instant::now();
        conn.write_all(msg.as_bytes())
            .unwrap_or_else(|e| vm.fail(format!("writing echo request {i}: {e}")));
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back)
            .unwrap_or_else(|e| vm.fail(format!("reading echo reply {i}: {e}")));
        rtts.push(start.elapsed());
        assert_eq!(
            String::from_utf8_lossy(&back),
            msg,
            "echo reply {i} differs"
        );
    }
    rtts.sort();
    println!(
        "boot {:.2}s to ready; vsock connect {:.1} ms after ready; echo round trip min {:.2} ms, median {:.2} ms, max {:.2} ms",
        times.ready.as_secs_f64(),
        connected.as_secs_f64() * 1e3,
        rtts[0].as_secs_f64() * 1e3,
        rtts[rtts.len() / 2].as_secs_f64() * 1e3,
        rtts[rtts.len() - 1].as_secs_f64() * 1e3,
    );
}
