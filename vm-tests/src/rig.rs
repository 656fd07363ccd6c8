//! The rig: guest kernel, guest image, vhost-device-vsock and a libvirtd that answers, all set
//! up by `scripts/setup` and `scripts/build-guest-image` under `$APPMON_RIG_DIR` (default
//! /var/tmp/appmon-rig).
//!
//! [`Rig::require`] checks all of it and panics with the list of what is missing and the command
//! that sets it up. VM tests never skip: a test that cannot run fails and says why.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::virsh::{virsh_timeout, LIBVIRT_URI};

/// Default rig directory (scripts/lib.sh has the same default).
pub const DEFAULT_RIG_DIR: &str = "/var/tmp/appmon-rig";

/// The QEMU binary named in the domain XML.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// Unix socket paths are limited to 108 bytes including the NUL (sun_path).
const SUN_PATH_MAX: usize = 107;

/// The longest socket path a test creates, relative to [`Rig::tests_dir`]:
/// `<pid>-<counter>/vsock.uds_<port>`.
const LONGEST_SOCKET_SUFFIX: &str = "/4194304-99999/vsock.uds_4294967295";

/// The one command that brings the rig up from nothing (run from the repository root).
pub const SETUP_HINT: &str = "scripts/setup && scripts/build-guest-binaries && \
     scripts/build-guest-image --bins-from target/guest/bins.list   (scripts/test does all of it)";

/// Paths of the rig's parts.
#[derive(Debug, Clone)]
pub struct Rig {
    /// `$APPMON_RIG_DIR`.
    pub dir: PathBuf,
    /// The guest kernel (`$APPMON_GUEST_KERNEL`, default `<rig>/kernel/vmlinuz`).
    pub kernel: PathBuf,
    /// The guest initramfs (`$APPMON_GUEST_IMAGE`, default `<rig>/images/appmon-guest.cpio.gz`).
    pub initrd: PathBuf,
    /// vhost-device-vsock (`<rig>/tools/bin/vhost-device-vsock`).
    pub vhost_device_vsock: PathBuf,
}

impl Rig {
    /// The rig's paths from the environment; checks nothing.
    pub fn from_env() -> Rig {
        let dir = env_path("APPMON_RIG_DIR").unwrap_or_else(|| PathBuf::from(DEFAULT_RIG_DIR));
        Rig {
            kernel: env_path("APPMON_GUEST_KERNEL").unwrap_or_else(|| dir.join("kernel/vmlinuz")),
            initrd: env_path("APPMON_GUEST_IMAGE")
                .unwrap_or_else(|| dir.join("images/appmon-guest.cpio.gz")),
            vhost_device_vsock: dir.join("tools/bin/vhost-device-vsock"),
            dir,
        }
    }

    /// The checked rig, or a panic that lists what is missing and how to set it up. Checked once
    /// per test process.
    pub fn require() -> Rig {
        static CHECKED: OnceLock<Result<Rig, String>> = OnceLock::new();
        let checked = CHECKED.get_or_init(|| {
            let rig = Rig::from_env();
            let problems = rig.problems();
            if problems.is_empty() {
                Ok(rig)
            } else {
                Err(format!(
                    "the VM test rig is not ready:\n  - {}\nset it up from the repository root with:\n  {SETUP_HINT}",
                    problems.join("\n  - ")
                ))
            }
        });
        match checked {
            Ok(rig) => rig.clone(),
            Err(msg) => panic!("{msg}"),
        }
    }

    /// Everything that keeps VM tests from running, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.file_problems();
        if let Err(e) = virsh_timeout(&["version"], Duration::from_secs(20)) {
            p.push(format!(
                "libvirtd does not answer on {LIBVIRT_URI} ({e}); scripts/setup starts it"
            ));
        }
        p
    }

    /// The problems that the file system shows (everything but libvirtd).
    pub fn file_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.dir.is_dir() {
            p.push(format!(
                "rig directory {} does not exist",
                self.dir.display()
            ));
        }
        if !self.kernel.is_file() {
            p.push(format!("guest kernel {} is missing", self.kernel.display()));
        }
        if !self.initrd.is_file() {
            p.push(format!("guest image {} is missing", self.initrd.display()));
        } else {
            match (self.image_kernel_release(), self.kernel_release()) {
                (Some(image), Some(kernel)) if image != kernel => p.push(format!(
                    "guest image {} holds modules for kernel {image} but the guest kernel is {kernel}: rebuild the image",
                    self.initrd.display()
                )),
                (None, _) => p.push(format!(
                    "guest image manifest {} is missing or names no kernel_release",
                    self.manifest_path().display()
                )),
                _ => {}
            }
        }
        if !is_executable(&self.vhost_device_vsock) {
            p.push(format!(
                "vhost-device-vsock {} is missing or not executable",
                self.vhost_device_vsock.display()
            ));
        }
        if !is_executable(Path::new(QEMU)) {
            p.push(format!(
                "{QEMU} is missing (Debian package qemu-system-x86)"
            ));
        }
        let longest = self.tests_dir().to_string_lossy().len() + LONGEST_SOCKET_SUFFIX.len();
        if longest > SUN_PATH_MAX {
            p.push(format!(
                "rig directory {} is too long: test socket paths would reach {longest} bytes (Unix sockets allow {SUN_PATH_MAX})",
                self.dir.display()
            ));
        }
        if self.dir.to_string_lossy().contains([',', '\'', ' ']) {
            // QEMU's -chardev option syntax and the domain XML's quoting would need escaping.
            p.push(format!(
                "rig directory {} contains a comma, quote or space",
                self.dir.display()
            ));
        }
        p
    }

    /// Where each test's directory goes: `<rig>/run/t`.
    pub fn tests_dir(&self) -> PathBuf {
        self.dir.join("run/t")
    }

    /// Where the logs of failed tests (or all, with `APPMON_VM_KEEP_LOGS=1`) are kept: `<rig>/logs/vm-tests`.
    pub fn kept_logs_dir(&self) -> PathBuf {
        self.dir.join("logs/vm-tests")
    }

    /// The manifest scripts/build-guest-image writes beside the image.
    pub fn manifest_path(&self) -> PathBuf {
        let mut s = self.initrd.clone().into_os_string();
        s.push(".manifest");
        PathBuf::from(s)
    }

    /// The image manifest's text (empty when missing).
    pub fn manifest(&self) -> String {
        fs::read_to_string(self.manifest_path()).unwrap_or_default()
    }

    /// Whether the guest image holds `path` (absolute, as in the guest).
    pub fn image_has(&self, path: &str) -> bool {
        self.manifest()
            .lines()
            .any(|l| l.strip_prefix("file=") == Some(path))
    }

    /// Panics unless the guest image carries `/bin/<name>`, naming how to put it there.
    pub fn require_guest_program(&self, name: &str) {
        let path = format!("/bin/{name}");
        assert!(
            self.image_has(&path),
            "the guest image {} has no {path} (manifest {}); rebuild it with:\n  {SETUP_HINT}",
            self.initrd.display(),
            self.manifest_path().display()
        );
    }

    fn image_kernel_release(&self) -> Option<String> {
        self.manifest()
            .lines()
            .find_map(|l| l.strip_prefix("kernel_release=").map(str::to_owned))
    }

    /// The guest kernel's release, from the `vmlinuz-<release>` name the kernel path resolves to.
    fn kernel_release(&self) -> Option<String> {
        let real = fs::canonicalize(&self.kernel).ok()?;
        let name = real.file_name()?.to_str()?;
        name.strip_prefix("vmlinuz-").map(str::to_owned)
    }
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rig_in(dir: &Path) -> Rig {
        Rig {
            dir: dir.to_path_buf(),
            kernel: dir.join("kernel/vmlinuz"),
            initrd: dir.join("images/appmon-guest.cpio.gz"),
            vhost_device_vsock: dir.join("tools/bin/vhost-device-vsock"),
        }
    }

    #[test]
    fn an_empty_rig_names_each_missing_part() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let problems = rig_in(&tmp.path().join("nowhere"))
            .file_problems()
            .join("\n");
        for part in [
            "rig directory",
            "guest kernel",
            "guest image",
            "vhost-device-vsock",
        ] {
            assert!(problems.contains(part), "{part} not named in:\n{problems}");
        }
    }

    #[test]
    fn image_has_reads_the_manifest() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let rig = rig_in(tmp.path());
        fs::create_dir_all(tmp.path().join("images")).expect("mkdir");
        fs::write(
            rig.manifest_path(),
            "kernel_release=6.1.0-1-amd64\nfile=/bin/vsock-echo\nfile=/init\n",
        )
        .expect("write manifest");
        assert!(rig.image_has("/bin/vsock-echo"));
        assert!(!rig.image_has("/bin/appmon-guest"));
        assert_eq!(rig.image_kernel_release().as_deref(), Some("6.1.0-1-amd64"));
    }

    #[test]
    fn a_long_rig_directory_is_refused() {
        let long = PathBuf::from(format!("/{}", "d".repeat(90)));
        let problems = rig_in(&long).file_problems().join("\n");
        assert!(problems.contains("too long"), "{problems}");
    }
}
