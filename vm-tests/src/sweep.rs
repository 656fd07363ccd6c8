//! Cleanup of what earlier test processes left behind when they died without unwinding (SIGKILL,
//! a nextest timeout, Ctrl-C): their domains, vhost-device-vsock processes and directories.
//!
//! Only the harness's own things are touched: domains named `appmon-t-<test>-<pid>-<counter>`
//! and directories `<rig>/run/t/<pid>-<counter>` whose owning pid is dead, and a
//! vhost-device-vsock or `appmon-host` only by the pid recorded in such a directory, and only
//! when that process's command line names the directory's socket or configuration file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::rig::Rig;
use crate::virsh::{list_all_domains, virsh, DomainState};
use crate::wait::wait_until;
use crate::DOMAIN_PREFIX;

/// File in a test directory holding the vhost-device-vsock pid.
pub const BACKEND_PID_FILE: &str = "vhost-device-vsock.pid";
/// The backend's `--socket` (vhost-user, QEMU side) in a test directory.
pub const VHOST_USER_SOCKET: &str = "vhu.sock";
/// The backend's `--uds-path` (hybrid vsock, host side) in a test directory.
pub const VSOCK_UDS: &str = "vsock.uds";
/// File in a host agent's test directory holding the `appmon-host` pid.
pub const HOST_AGENT_PID_FILE: &str = "appmon-host.pid";
/// The host agent's configuration file in its test directory (named on its command line).
pub const HOST_AGENT_CONFIG: &str = "host.toml";

/// Directory where libvirt keeps each domain's QEMU log.
pub const QEMU_LOG_DIR: &str = "/var/log/libvirt/qemu";

/// What a sweep removed, and what it could not.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub domains: Vec<String>,
    pub backends: Vec<u32>,
    pub host_agents: Vec<u32>,
    pub dirs: Vec<PathBuf>,
    pub errors: Vec<String>,
}

/// The pid in a harness domain name `appmon-t-<test>-<pid>-<counter>`; `None` for any other name.
pub fn owner_pid(domain: &str) -> Option<u32> {
    let rest = domain.strip_prefix(DOMAIN_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let counter = parts.next()?;
    let pid = parts.next()?;
    let test = parts.next()?;
    if test.is_empty() || !is_number(counter) || !is_number(pid) {
        return None;
    }
    pid.parse().ok()
}

/// The pid in a test directory name `<pid>-<counter>`.
pub fn dir_owner_pid(name: &str) -> Option<u32> {
    let (pid, counter) = name.split_once('-')?;
    if !is_number(counter) || !is_number(pid) {
        return None;
    }
    pid.parse().ok()
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `pid` is a live (not zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Removes everything left by harness processes that are gone. Never touches other domains.
pub fn sweep_stale(rig: &Rig) -> SweepReport {
    let mut report = SweepReport::default();
    match list_all_domains() {
        Ok(domains) => {
            for d in domains {
                let Some(pid) = owner_pid(&d) else { continue };
                if pid_alive(pid) {
                    continue;
                }
                match remove_domain(&d) {
                    Ok(()) => report.domains.push(d),
                    Err(e) => report.errors.push(e),
                }
            }
        }
        Err(e) => report.errors.push(format!("cannot list domains: {e}")),
    }
    let entries = match fs::read_dir(rig.tests_dir()) {
        Ok(entries) => entries,
        Err(_) => return report,
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(dir_owner_pid) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        sweep_dir(&entry.path(), &mut report);
    }
    report
}

/// Stops the backend and host agent recorded in `dir` and removes `dir`.
pub(crate) fn sweep_dir(dir: &Path, report: &mut SweepReport) {
    match stop_recorded(
        dir,
        BACKEND_PID_FILE,
        "vhost-device-vsock",
        VHOST_USER_SOCKET,
    ) {
        Ok(Some(pid)) => report.backends.push(pid),
        Ok(None) => {}
        Err(e) => report.errors.push(e),
    }
    match stop_recorded(dir, HOST_AGENT_PID_FILE, "appmon-host", HOST_AGENT_CONFIG) {
        Ok(Some(pid)) => report.host_agents.push(pid),
        Ok(None) => {}
        Err(e) => report.errors.push(e),
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => report.dirs.push(dir.to_path_buf()),
        Err(e) => report
            .errors
            .push(format!("cannot remove {}: {e}", dir.display())),
    }
}

/// Kills the `program` whose pid `pid_file` in `dir` records, if it still runs for that
/// directory: its command line must name `<dir>/<own_file>` (so a reused pid is left alone).
fn stop_recorded(
    dir: &Path,
    pid_file: &str,
    program: &str,
    own_file: &str,
) -> Result<Option<u32>, String> {
    let Ok(text) = fs::read_to_string(dir.join(pid_file)) else {
        return Ok(None);
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Ok(None);
    };
    if !pid_alive(pid) || !runs_for(pid, program, &dir.join(own_file)) {
        return Ok(None);
    }
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .map_err(|e| format!("cannot run kill for {program} pid {pid}: {e}"))?;
    if !status.success() && pid_alive(pid) {
        return Err(format!(
            "kill -KILL {pid} ({program} of {}) failed: {status}",
            dir.display()
        ));
    }
    wait_until(
        Duration::from_secs(10),
        &format!("{program} pid {pid} to exit"),
        || !pid_alive(pid),
    )
    .map_err(|e| e.to_string())?;
    Ok(Some(pid))
}

/// Whether `pid` runs `program` with `own_file` among its arguments.
fn runs_for(pid: u32, program: &str, own_file: &Path) -> bool {
    let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let own = own_file.to_string_lossy().into_owned();
    args.first().is_some_and(|a0| a0.ends_with(program)) && args.contains(&own)
}

/// Destroys (if running) and undefines the domain `name`, and removes its QEMU log.
pub(crate) fn remove_domain(name: &str) -> Result<(), String> {
    let state = virsh(&["domstate", name])
        .map(|s| DomainState::parse(&s))
        .map_err(|e| format!("cannot query domain {name}: {e}"))?;
    if state != DomainState::ShutOff {
        if let Err(e) = virsh(&["destroy", name]) {
            // It may have stopped on its own between the two commands.
            let now = virsh(&["domstate", name]).map(|s| DomainState::parse(&s));
            if !matches!(now, Ok(DomainState::ShutOff)) {
                return Err(format!("cannot destroy domain {name}: {e}"));
            }
        }
    }
    virsh(&["undefine", name]).map_err(|e| format!("cannot undefine domain {name}: {e}"))?;
    let _ = fs::remove_file(Path::new(QEMU_LOG_DIR).join(format!("{name}.log")));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_harness_domain_names() {
        assert_eq!(owner_pid("appmon-t-boot-1234-0"), Some(1234));
        assert_eq!(owner_pid("appmon-t-echo-round-trip-77-12"), Some(77));
    }

    #[test]
    fn owner_pid_ignores_other_domains() {
        for name in [
            "spikevm",
            "appmon-t-",
            "appmon-t-1234-0",
            "appmon-t-boot-x-0",
            "appmon-t-boot-12-",
            "appmon-x-boot-12-0",
            "production-appmon-t-boot-12-0",
        ] {
            assert_eq!(owner_pid(name), None, "{name}");
        }
    }

    #[test]
    fn dir_owner_pid_parses_test_dir_names() {
        assert_eq!(dir_owner_pid("1234-5"), Some(1234));
        assert_eq!(dir_owner_pid("1234"), None);
        assert_eq!(dir_owner_pid("x-5"), None);
    }

    #[test]
    fn this_process_is_alive_and_an_absurd_pid_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }
}
