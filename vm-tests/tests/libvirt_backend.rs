//! `appmon-libvirt-backend` against the QEMU driver on qemu:///system: what libvirt's test driver
//! cannot show (libvirt-backend/README.md). Reboot events of a reset, the watchdog event, the
//! generated channel socket path in the live XML, states with their reasons, power-cycle and
//! metadata on a real QEMU guest.
#![cfg(feature = "vm")]

use std::path::Path;
use std::time::Duration;

use appmon_libvirt_backend::{
    BackendEvent, DomainEvent, DomainRef, DomainState, Hypervisor, LibvirtHypervisor, MonitorSpec,
    RunningReason, ShutOffReason, StartedReason, Transport, DEFAULT_CHANNEL_NAME, DEFAULT_URI,
};
use appmon_vm_tests::{TestVm, VmConfig, DEFAULT_BOOT_TIMEOUT};
use tokio::sync::mpsc::UnboundedReceiver;

const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The backend's events of one domain, read with bounded waits.
struct DomainEvents<'a> {
    vm: &'a TestVm,
    rx: UnboundedReceiver<BackendEvent>,
}

impl DomainEvents<'_> {
    /// Waits for `event` of this VM's domain; returns the domain's events before it.
    fn wait(&mut self, event: DomainEvent, timeout: Duration) -> Vec<DomainEvent> {
        let mut before = Vec::new();
        let name = self.vm.name().to_owned();
        self.vm
            .wait_for(timeout, &format!("backend event {event:?}"), || {
                while let Ok(e) = self.rx.try_recv() {
                    match e {
                        BackendEvent::Domain { domain, event: e } if domain.name == name => {
                            if e == event {
                                return Some(());
                            }
                            before.push(e);
                        }
                        BackendEvent::Disconnected { reason } => {
                            self.vm.fail(format!("libvirt connection lost: {reason}"))
                        }
                        _ => {}
                    }
                }
                None
            });
        before
    }
}

fn open(vm: &TestVm) -> (LibvirtHypervisor, DomainEvents<'_>) {
    let (hv, mut rx) = LibvirtHypervisor::open(DEFAULT_URI)
        .unwrap_or_else(|e| vm.fail(format!("opening {DEFAULT_URI}: {e}")));
    assert_eq!(rx.try_recv().ok(), Some(BackendEvent::Connected));
    (hv, DomainEvents { vm, rx })
}

fn spec() -> MonitorSpec {
    MonitorSpec {
        failure_interval: Some(Duration::from_secs(15)),
        ..MonitorSpec::with_transport(Transport::Channel {
            path: None,
            name: DEFAULT_CHANNEL_NAME.into(),
        })
    }
}

#[test]
fn backend_follows_a_qemu_guest_through_reset_power_cycle_and_metadata() {
    // A virtio-serial channel without path=: the QEMU driver generates one, in the live XML only.
    let vm = TestVm::new(
        VmConfig::new("lvbackend")
            .metadata_xml(spec().to_xml())
            .extra_devices_xml(format!(
                "<channel type='unix'><source mode='bind'/>\
                 <target type='virtio' name='{DEFAULT_CHANNEL_NAME}'/></channel>"
            )),
    );
    let (hv, mut events) = open(&vm);
    let info = hv.domain(vm.name()).unwrap_or_else(|e| vm.fail(e));
    assert!(matches!(info.state, DomainState::ShutOff(_)), "{info:?}");
    assert_eq!(info.spec, Ok(Some(spec())));
    let domain: DomainRef = info.domain;

    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    events.wait(DomainEvent::Started(StartedReason::Booted), EVENT_TIMEOUT);
    let running = hv.domain(&domain.uuid).unwrap_or_else(|e| vm.fail(e));
    assert_eq!(running.state, DomainState::Running(RunningReason::Booted));
    let channel = hv
        .channel_socket_path(&domain, DEFAULT_CHANNEL_NAME)
        .unwrap_or_else(|e| vm.fail(e))
        .unwrap_or_else(|| vm.fail("no generated channel path in the live XML"));
    assert!(Path::new(&channel).exists(), "{}", channel.display());

    let mark = vm.console_mark();
    hv.reset(&domain).unwrap_or_else(|e| vm.fail(e));
    events.wait(DomainEvent::Rebooted, EVENT_TIMEOUT);
    vm.wait_ready_since(mark, DEFAULT_BOOT_TIMEOUT);

    hv.set_spec(&domain, None).unwrap_or_else(|e| vm.fail(e));
    events.wait(DomainEvent::MetadataChanged, EVENT_TIMEOUT);
    assert_eq!(hv.domain(vm.name()).map(|i| i.spec).ok(), Some(Ok(None)));
    hv.set_spec(&domain, Some(&spec()))
        .unwrap_or_else(|e| vm.fail(e));
    events.wait(DomainEvent::MetadataChanged, EVENT_TIMEOUT);

    let mark = vm.console_mark();
    hv.power_cycle(&domain).unwrap_or_else(|e| vm.fail(e));
    let before_stop = events.wait(
        DomainEvent::Stopped(ShutOffReason::Destroyed),
        EVENT_TIMEOUT,
    );
    events.wait(DomainEvent::Started(StartedReason::Booted), EVENT_TIMEOUT);
    vm.wait_ready_since(mark, DEFAULT_BOOT_TIMEOUT);

    // Reboots of the reset may still trickle in; the destroy announces itself first.
    assert!(
        before_stop
            .iter()
            .all(|e| matches!(e, DomainEvent::Rebooted | DomainEvent::ShutdownFinished)),
        "{before_stop:?}"
    );
    assert_eq!(
        hv.domain(vm.name()).map(|i| (i.state, i.spec)).ok(),
        Some((
            DomainState::Running(RunningReason::Booted),
            Ok(Some(spec()))
        ))
    );
    let ids = vm.boot_ids();
    assert_eq!(ids.len(), 3, "boot, reset, power-cycle: {ids:?}");
}

#[test]
fn backend_reports_a_watchdog_that_fires() {
    // Armed once per boot and never petted: the i6300esb fires ~30 s later and resets.
    let vm = TestVm::new(VmConfig::new("lvwatchdog").guest_script(
        "/etc/appmon/init.d/arm-watchdog",
        "#!/bin/sh\n\
         [ -e /tmp/armed ] && exec sleep 1000000\n\
         touch /tmp/armed\n\
         echo 1 > /dev/watchdog\n\
         echo ARMED-WATCHDOG\n\
         exec sleep 1000000\n",
    ));
    let (_hv, mut events) = open(&vm);

    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    vm.wait_for_console_line(Default::default(), "ARMED-WATCHDOG", DEFAULT_BOOT_TIMEOUT);
    events.wait(DomainEvent::Watchdog, Duration::from_secs(120));
    events.wait(DomainEvent::Rebooted, EVENT_TIMEOUT);
}
