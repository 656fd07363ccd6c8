//! The libvirt domain XML of a test guest.
//!
//! TCG (`type='qemu'`: the nested /dev/kvm here cannot run a normal guest), direct kernel boot of
//! the rig's kernel and initramfs, serial console to a file, an i6300esb watchdog, and a
//! vhost-user-vsock device that libvirt 9.0 has no XML for, passed to QEMU with
//! `<qemu:commandline>`. vhost-user needs guest RAM the backend process can map, hence memfd
//! shared memory; the device gets a fixed PCI slot far from the ones libvirt assigns itself.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// PCI slot of the vhost-user-vsock device on bus pci.0. libvirt fills slots from the bottom.
pub const VSOCK_PCI_SLOT: u32 = 0x1e;
/// QEMU's id of the vhost-user-vsock device, so that it can be unplugged (`device_del`) before a
/// migration and plugged in again after it (MIGRATION.md).
pub const VSOCK_DEVICE_ID: &str = "vhuvsock0";
/// QEMU's id of the socket chardev that connects the device to vhost-device-vsock.
pub const VSOCK_CHARDEV_ID: &str = "chr-vhu-vsock0";

/// What QEMU does when the guest reboots (`<on_reboot>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReboot {
    /// Reset inside the running QEMU.
    Restart,
    /// Stop the domain: a reboot becomes a shutdown, and whoever manages the domain starts it
    /// again. The robust choice while vhost-device-vsock 0.3.0 can wedge on in-process resets.
    Destroy,
}

impl OnReboot {
    fn as_str(self) -> &'static str {
        match self {
            OnReboot::Restart => "restart",
            OnReboot::Destroy => "destroy",
        }
    }
}

/// What the i6300esb watchdog does when it fires (`<watchdog action=...>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogAction {
    Reset,
    Poweroff,
    Shutdown,
    Pause,
    None,
}

impl WatchdogAction {
    fn as_str(self) -> &'static str {
        match self {
            WatchdogAction::Reset => "reset",
            WatchdogAction::Poweroff => "poweroff",
            WatchdogAction::Shutdown => "shutdown",
            WatchdogAction::Pause => "pause",
            WatchdogAction::None => "none",
        }
    }
}

/// Everything the template needs; [`DomainSpec::to_xml`] renders it.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    pub name: String,
    /// A `<uuid>` in the XML; `None`: libvirt makes one up on every define or create.
    pub uuid: Option<String>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub on_reboot: OnReboot,
    pub watchdog: WatchdogAction,
    pub console_log: PathBuf,
    /// vhost-device-vsock's `--socket` (QEMU connects to it); `None`: no vsock device, which a
    /// guest that migrates (or is saved) needs: QEMU 7.2 refuses to migrate vhost-user-vsock.
    pub vhost_user_socket: Option<PathBuf>,
    /// Raw XML placed inside `<metadata>` (e.g. the host agent's policy element).
    pub metadata_xml: String,
    /// Raw XML placed inside `<devices>` (e.g. a virtio-serial `<channel>`).
    pub extra_devices_xml: String,
}

impl DomainSpec {
    pub fn to_xml(&self) -> String {
        let mut x = String::new();
        let p = |path: &Path| escape(&path.to_string_lossy());
        // Writing to a String cannot fail.
        let _ = write!(
            x,
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
",
            name = escape(&self.name)
        );
        if let Some(uuid) = &self.uuid {
            let _ = writeln!(x, "  <uuid>{}</uuid>", escape(uuid));
        }
        if !self.metadata_xml.is_empty() {
            let _ = writeln!(x, "  <metadata>\n{}\n  </metadata>", self.metadata_xml);
        }
        let _ = write!(
            x,
            "  <memory unit='MiB'>{mem}</memory>
  <currentMemory unit='MiB'>{mem}</currentMemory>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <vcpu placement='static'>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>{on_reboot}</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='{console}' append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='{console}' append='on'/>
      <target type='serial' port='0'/>
    </console>
    <watchdog model='i6300esb' action='{watchdog}'/>
    <memballoon model='none'/>
",
            mem = self.memory_mib,
            vcpus = self.vcpus,
            kernel = p(&self.kernel),
            initrd = p(&self.initrd),
            cmdline = escape(&self.cmdline),
            on_reboot = self.on_reboot.as_str(),
            console = p(&self.console_log),
            watchdog = self.watchdog.as_str(),
        );
        if !self.extra_devices_xml.is_empty() {
            let _ = writeln!(x, "{}", self.extra_devices_xml);
        }
        x.push_str("  </devices>\n");
        if let Some(sock) = &self.vhost_user_socket {
            let _ = write!(
                x,
                "  <qemu:commandline>
    <qemu:arg value='-chardev'/>
    <qemu:arg value='socket,id={chardev},path={sock}'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='vhost-user-vsock-pci,id={device},chardev={chardev},bus=pci.0,addr={slot:#x}'/>
  </qemu:commandline>
",
                sock = p(sock),
                chardev = VSOCK_CHARDEV_ID,
                device = VSOCK_DEVICE_ID,
                slot = VSOCK_PCI_SLOT,
            );
        }
        x.push_str("</domain>\n");
        x
    }
}

/// The XML a guest whose vsock device was unplugged migrates with (`virsh migrate --xml`), from
/// the source's `dumpxml --migratable`: without the `<qemu:commandline>` that adds the device
/// (the destination QEMU must match the device-less source), and with the hybrid vsock path
/// `from_uds` of the monitoring metadata replaced by the destination's own `to_uds` (two hosts
/// on one machine cannot share a path, as for channels in MIGRATION.md).
pub fn without_vsock_device(xml: &str, from_uds: &str, to_uds: &str) -> Result<String, String> {
    let start = xml
        .find("<qemu:commandline>")
        .ok_or("no <qemu:commandline> in the domain XML")?;
    let end = xml[start..]
        .find("</qemu:commandline>")
        .map(|e| start + e + "</qemu:commandline>".len())
        .ok_or("no </qemu:commandline> in the domain XML")?;
    if !xml[start..end].contains("vhost-user-vsock-pci") {
        return Err("the <qemu:commandline> of the domain XML adds no vhost-user-vsock-pci".into());
    }
    let line_start = xml[..start].rfind('\n').map_or(start, |i| i + 1);
    let line_end = if xml[end..].starts_with('\n') {
        end + 1
    } else {
        end
    };
    let stripped = format!("{}{}", &xml[..line_start], &xml[line_end..]);
    with_vsock_uds(&stripped, from_uds, to_uds)
}

/// `xml` with the hybrid vsock path `from_uds` (in the monitoring metadata) replaced by `to_uds`.
pub fn with_vsock_uds(xml: &str, from_uds: &str, to_uds: &str) -> Result<String, String> {
    let (from, to) = (escape(from_uds), escape(to_uds));
    if !xml.contains(&from) {
        return Err(format!("the domain XML does not name {from_uds}"));
    }
    Ok(xml.replace(&from, &to))
}

/// Escapes text for XML element content and single- or double-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DomainSpec {
        DomainSpec {
            uuid: None,
            name: "appmon-t-boot-12-0".into(),
            memory_mib: 128,
            vcpus: 1,
            kernel: "/rig/kernel/vmlinuz".into(),
            initrd: "/rig/images/appmon-guest.cpio.gz".into(),
            cmdline: "console=ttyS0 appmon.demo=\"a & b\"".into(),
            on_reboot: OnReboot::Destroy,
            watchdog: WatchdogAction::Reset,
            console_log: "/rig/run/t/12-0/console.log".into(),
            vhost_user_socket: Some("/rig/run/t/12-0/vhu.sock".into()),
            metadata_xml: String::new(),
            extra_devices_xml: String::new(),
        }
    }

    #[test]
    fn xml_carries_a_uuid_only_when_given() {
        assert!(!spec().to_xml().contains("<uuid>"));
        let mut s = spec();
        s.uuid = Some("6f1c0e52-3d59-4b4e-8f43-2a1b9e0c7d15".into());
        let xml = s.to_xml();
        assert!(xml.contains("</name>\n  <uuid>6f1c0e52-3d59-4b4e-8f43-2a1b9e0c7d15</uuid>\n"));
    }

    #[test]
    fn xml_escapes_the_kernel_command_line() {
        let xml = spec().to_xml();
        assert!(
            xml.contains("<cmdline>console=ttyS0 appmon.demo=&quot;a &amp; b&quot;</cmdline>"),
            "{xml}"
        );
    }

    #[test]
    fn xml_carries_on_reboot_and_the_vsock_device_at_its_fixed_slot() {
        let xml = spec().to_xml();
        assert!(xml.contains("<on_reboot>destroy</on_reboot>"));
        assert!(xml.contains("path=/rig/run/t/12-0/vhu.sock'"));
        assert!(xml.contains(
            "vhost-user-vsock-pci,id=vhuvsock0,chardev=chr-vhu-vsock0,bus=pci.0,addr=0x1e'"
        ));
        assert!(xml.contains("<source type='memfd'/>"));
        assert!(!xml.contains("<metadata>"));
    }

    #[test]
    fn xml_without_a_vsock_socket_has_no_vsock_device() {
        let mut s = spec();
        s.vhost_user_socket = None;
        let xml = s.to_xml();
        assert!(!xml.contains("vhost-user-vsock"), "{xml}");
        assert!(!xml.contains("<qemu:commandline>"), "{xml}");
        assert!(xml.ends_with("  </devices>\n</domain>\n"), "{xml}");
    }

    #[test]
    fn migration_xml_drops_the_vsock_device_and_takes_the_destinations_path() {
        let mut s = spec();
        s.metadata_xml = "<m:x path='/rig/run/t/12-0/vsock.uds'/>".into();
        let xml = s.to_xml();
        let out = without_vsock_device(
            &xml,
            "/rig/run/t/12-0/vsock.uds",
            "/rig/run/t/12-1/vsock.uds",
        )
        .expect("migration XML");
        assert!(!out.contains("qemu:commandline"), "{out}");
        assert!(!out.contains("vhost-user-vsock"), "{out}");
        assert!(
            out.contains("<m:x path='/rig/run/t/12-1/vsock.uds'/>"),
            "{out}"
        );
        assert!(out.ends_with("  </devices>\n</domain>\n"), "{out}");
        assert!(without_vsock_device(&out, "/a", "/b").is_err());
        let err = without_vsock_device(&xml, "/not/there", "/b").expect_err("unknown path");
        assert!(err.contains("/not/there"), "{err}");
    }

    #[test]
    fn xml_includes_metadata_and_extra_devices_when_given() {
        let mut s = spec();
        s.metadata_xml = "<m:x xmlns:m='urn:t'/>".into();
        s.extra_devices_xml = "<channel type='unix'/>".into();
        let xml = s.to_xml();
        assert!(xml.contains("<metadata>\n<m:x xmlns:m='urn:t'/>\n  </metadata>"));
        assert!(xml.contains("<channel type='unix'/>\n  </devices>"));
    }
}
