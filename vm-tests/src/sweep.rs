//! Cleanup of what earlier test processes left behind when they died without unwinding (SIGKILL,
//! a nextest timeout, Ctrl-C): their domains, vhost-device-vsock and appmon-host processes and
//! directories. The harness sweeps before each test process's first guest or host agent; the
//! scripts (`scripts/test`'s "VM test cleanup", `scripts/rig-down`) run the same code as the
//! `appmon-test-sweep` program.
//!
//! Only the harness's own things are touched: domains named `appmon-t-<test>-<pid>-<counter>`
//! and directories `<rig>/run/t/<pid>-<counter>` whose owning pid is dead, and a
//! vhost-device-vsock or `appmon-host` only by the pid recorded in such a directory, and only
//! when that process's command line names the directory's socket or configuration file. A
//! cluster node ([`crate::node::Node`]) is its cgroup `appmon-t-<pid>-<counter>-<node>`: every
//! process in it is killed (`cgroup.kill`) and the cgroup removed once its test process is gone;
//! its namespaces and network link go with its processes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::hosts::{remove_all_domains, stop_daemon, HOST_LABELS, LIBVIRTD_PID_FILE};
use crate::node::{kill_cgroup, leftover_cgroups};
use crate::rig::Rig;
use crate::virsh::{list_all_domains, virsh_on, DomainState, VirshError, LIBVIRT_URI};
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

/// The processes a test directory may record: (program, its pid file, the file of the directory
/// its command line must name).
const RECORDED: [(&str, &str, &str); 2] = [
    (BACKEND, BACKEND_PID_FILE, VHOST_USER_SOCKET),
    (HOST_AGENT, HOST_AGENT_PID_FILE, HOST_AGENT_CONFIG),
];
const BACKEND: &str = "vhost-device-vsock";
const HOST_AGENT: &str = "appmon-host";
const LIBVIRTD: &str = "libvirtd";

/// What test processes that are gone left behind, found and not yet touched.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Harness domains whose test process is gone.
    pub domains: Vec<String>,
    /// Test directories whose test process is gone.
    pub dirs: Vec<LeftDir>,
    /// Cluster nodes' cgroups whose test process is gone (each holds the node's processes).
    pub cgroups: Vec<PathBuf>,
    /// What could not be looked at (libvirtd not answering, say).
    pub errors: Vec<String>,
}

/// A test directory whose test process is gone, and what it recorded that still runs for it.
#[derive(Debug, PartialEq, Eq)]
pub struct LeftDir {
    pub path: PathBuf,
    /// (program, pid) of each recorded process that still runs for this directory.
    pub processes: Vec<(&'static str, u32)>,
}

impl Leftovers {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.dirs.is_empty() && self.cgroups.is_empty()
    }

    /// One line per thing found, for people.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for cg in &self.cgroups {
            lines.push(format!("cluster node {} (its processes)", cg.display()));
        }
        for d in &self.domains {
            let owner = owner_pid(d).map_or_else(String::new, |p| p.to_string());
            lines.push(format!("domain {d} (its test process {owner} is gone)"));
        }
        for dir in &self.dirs {
            for (program, pid) in &dir.processes {
                lines.push(format!("{program} pid {pid} (of {})", dir.path.display()));
            }
            lines.push(format!("test directory {}", dir.path.display()));
        }
        lines
    }

    /// Removes all of it: destroys and undefines the domains, kills the recorded processes
    /// (again only while they still run for their directory), removes the directories.
    pub fn remove(self) -> SweepReport {
        let mut report = SweepReport {
            errors: self.errors,
            ..SweepReport::default()
        };
        // The nodes first: their processes use the directories.
        for cg in self.cgroups {
            match kill_cgroup(&cg) {
                Ok(()) => report.cgroups.push(cg),
                Err(e) => report.errors.push(e),
            }
        }
        for d in self.domains {
            match remove_domain(&d) {
                Ok(()) => report.domains.push(d),
                Err(e) => report.errors.push(e),
            }
        }
        for dir in self.dirs {
            sweep_dir(&dir.path, &mut report);
        }
        report
    }
}

/// What a sweep removed, and what it could not.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub domains: Vec<String>,
    pub backends: Vec<u32>,
    pub host_agents: Vec<u32>,
    /// libvirtds of two-host harnesses.
    pub libvirtds: Vec<u32>,
    /// Cluster nodes' cgroups, their processes killed.
    pub cgroups: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
    pub errors: Vec<String>,
}

impl SweepReport {
    /// Whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
            && self.backends.is_empty()
            && self.host_agents.is_empty()
            && self.libvirtds.is_empty()
            && self.cgroups.is_empty()
            && self.dirs.is_empty()
    }
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

/// Finds what harness processes that are gone left behind; touches nothing. Only harness
/// domains and directories count (see the module documentation).
pub fn find_leftovers(rig: &Rig) -> Leftovers {
    let mut found = Leftovers::default();
    match list_all_domains() {
        Ok(domains) => {
            found.domains = domains
                .into_iter()
                .filter(|d| owner_pid(d).is_some_and(|pid| !pid_alive(pid)))
                .collect();
        }
        Err(e) => found.errors.push(format!("cannot list domains: {e}")),
    }
    found.dirs = leftover_dirs(&rig.tests_dir());
    found.cgroups = leftover_cgroups(None);
    found
}

/// The test directories under `tests_dir` whose test process is gone, each with the recorded
/// processes that still run for it.
pub fn leftover_dirs(tests_dir: &Path) -> Vec<LeftDir> {
    let Ok(entries) = fs::read_dir(tests_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            name.to_str()
                .and_then(dir_owner_pid)
                .is_some_and(|pid| !pid_alive(pid))
        })
        .map(|entry| entry.path())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|path| LeftDir {
            processes: RECORDED
                .iter()
                .filter_map(|(program, pid_file, own_file)| {
                    running_for(&path, pid_file, program, own_file).map(|pid| (*program, pid))
                })
                .chain(
                    libvirt_hosts(&path)
                        .into_iter()
                        .map(|(_, pid)| (LIBVIRTD, pid)),
                )
                .collect(),
            path,
        })
        .collect()
}

/// Removes everything left by harness processes that are gone. Never touches other domains.
pub fn sweep_stale(rig: &Rig) -> SweepReport {
    find_leftovers(rig).remove()
}

/// The harness domains whose test process still runs: someone's test run in progress.
pub fn running_test_domains() -> Result<Vec<String>, VirshError> {
    Ok(list_all_domains()?
        .into_iter()
        .filter(|d| owner_pid(d).is_some_and(pid_alive))
        .collect())
}

/// The libvirtds of a two-host harness directory (`hosts::TwoHosts`) that still run for it:
/// (their URI, pid).
fn libvirt_hosts(dir: &Path) -> Vec<(String, u32)> {
    HOST_LABELS
        .iter()
        .filter_map(|label| {
            let host = dir.join(label);
            running_for(&host, LIBVIRTD_PID_FILE, LIBVIRTD, LIBVIRTD_PID_FILE).map(|pid| {
                (
                    format!(
                        "qemu+unix:///system?socket={}/run/libvirt-sock",
                        host.display()
                    ),
                    pid,
                )
            })
        })
        .collect()
}

/// Stops the libvirtds (after destroying their domains), backend and host agent recorded in
/// `dir` and removes `dir`.
pub(crate) fn sweep_dir(dir: &Path, report: &mut SweepReport) {
    if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
        for cg in leftover_cgroups(Some(name)) {
            match kill_cgroup(&cg) {
                Ok(()) => report.cgroups.push(cg),
                Err(e) => report.errors.push(e),
            }
        }
    }
    for (uri, pid) in libvirt_hosts(dir) {
        report.errors.extend(remove_all_domains(&uri));
        match stop_daemon(pid) {
            Ok(()) => report.libvirtds.push(pid),
            Err(e) => report.errors.push(e),
        }
    }
    for (program, pid_file, own_file) in RECORDED {
        match stop_recorded(dir, pid_file, program, own_file) {
            Ok(Some(pid)) if program == HOST_AGENT => report.host_agents.push(pid),
            Ok(Some(pid)) => report.backends.push(pid),
            Ok(None) => {}
            Err(e) => report.errors.push(e),
        }
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => report.dirs.push(dir.to_path_buf()),
        Err(e) => report
            .errors
            .push(format!("cannot remove {}: {e}", dir.display())),
    }
}

/// The pid that `pid_file` in `dir` records, if that process still runs `program` for this
/// directory: its command line must name `<dir>/<own_file>` (so a reused pid is left alone).
pub(crate) fn running_for(
    dir: &Path,
    pid_file: &str,
    program: &str,
    own_file: &str,
) -> Option<u32> {
    let text = fs::read_to_string(dir.join(pid_file)).ok()?;
    let pid = text.trim().parse::<u32>().ok()?;
    (pid_alive(pid) && runs_for(pid, program, &dir.join(own_file))).then_some(pid)
}

/// Kills the `program` whose pid `pid_file` in `dir` records, if it still runs for that
/// directory (see [`running_for`]).
fn stop_recorded(
    dir: &Path,
    pid_file: &str,
    program: &str,
    own_file: &str,
) -> Result<Option<u32>, String> {
    let Some(pid) = running_for(dir, pid_file, program, own_file) else {
        return Ok(None);
    };
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
    remove_domain_on(LIBVIRT_URI, name)?;
    let _ = fs::remove_file(Path::new(QEMU_LOG_DIR).join(format!("{name}.log")));
    Ok(())
}

/// Destroys (if running) and undefines the domain `name` of the libvirtd at `uri`.
pub(crate) fn remove_domain_on(uri: &str, name: &str) -> Result<(), String> {
    let virsh = |args: &[&str]| virsh_on(uri, args);
    let state = match virsh(&["domstate", name]) {
        Ok(s) => DomainState::parse(&s),
        // Gone already: a transient domain that was stopped (a cluster's VirtualDomain stops
        // and undefines the domains it runs).
        Err(e) if e.to_string().contains("failed to get domain") => return Ok(()),
        Err(e) => return Err(format!("cannot query domain {name}: {e}")),
    };
    if state != DomainState::ShutOff {
        if let Err(e) = virsh(&["destroy", name]) {
            // It may have stopped on its own between the two commands.
            let now = virsh(&["domstate", name]).map(|s| DomainState::parse(&s));
            if !matches!(now, Ok(DomainState::ShutOff)) {
                return Err(format!("cannot destroy domain {name}: {e}"));
            }
        }
    }
    // A transient domain (one that migrated in without --persistent) is gone once destroyed.
    if virsh(&["domstate", name]).is_ok() {
        virsh(&["undefine", "--managed-save", name])
            .map_err(|e| format!("cannot undefine domain {name}: {e}"))?;
    }
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

    /// A process whose argv[0] is `program` and whose arguments name `file`, as the harness
    /// starts vhost-device-vsock and appmon-host (`tail -f` keeps it running). Killed and reaped
    /// on drop, also when the test fails.
    struct StandIn(std::process::Child);

    impl StandIn {
        fn id(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for StandIn {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn process_running_for(program: &str, file: &Path) -> StandIn {
        fs::write(file, b"").expect("write the file it names");
        StandIn(
            Command::new("bash")
                .arg("-c")
                .arg(format!("exec -a {program} tail -f {}", file.display()))
                .spawn()
                .expect("start a stand-in process"),
        )
    }

    #[test]
    fn only_recorded_processes_running_for_a_dead_tests_directory_are_stopped() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let tests_dir = tmp.path().join("run/t");
        // u32::MAX is never a live pid; this process is alive.
        let dead = tests_dir.join(format!("{}-0", u32::MAX));
        let live = tests_dir.join(format!("{}-0", std::process::id()));
        let elsewhere = tmp.path().join("elsewhere");
        for d in [&dead, &live, &elsewhere] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let mut backend = process_running_for(BACKEND, &dead.join(VHOST_USER_SOCKET));
        // A recorded pid that now runs appmon-host for another directory: not this one's.
        let mut stranger = process_running_for(HOST_AGENT, &elsewhere.join(HOST_AGENT_CONFIG));
        fs::write(dead.join(BACKEND_PID_FILE), backend.id().to_string()).expect("pid file");
        fs::write(dead.join(HOST_AGENT_PID_FILE), stranger.id().to_string()).expect("pid file");
        fs::write(live.join(BACKEND_PID_FILE), backend.id().to_string()).expect("pid file");
        wait_until(Duration::from_secs(5), "the stand-ins to exec", || {
            runs_for(backend.id(), BACKEND, &dead.join(VHOST_USER_SOCKET))
                && runs_for(
                    stranger.id(),
                    HOST_AGENT,
                    &elsewhere.join(HOST_AGENT_CONFIG),
                )
        })
        .expect("stand-ins run");

        let found = leftover_dirs(&tests_dir);
        assert_eq!(
            found,
            [LeftDir {
                path: dead.clone(),
                processes: vec![(BACKEND, backend.id())],
            }]
        );

        let report = Leftovers {
            dirs: found,
            ..Leftovers::default()
        }
        .remove();
        assert_eq!(report.backends, [backend.id()]);
        assert!(report.host_agents.is_empty(), "{report:?}");
        assert!(report.errors.is_empty(), "{report:?}");
        assert!(!dead.exists() && live.exists());
        assert!(
            backend.0.try_wait().expect("wait").is_some(),
            "backend killed"
        );
        assert!(
            stranger.0.try_wait().expect("wait").is_none(),
            "stranger left alone"
        );
    }

    #[test]
    fn this_process_is_alive_and_an_absurd_pid_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }
}
