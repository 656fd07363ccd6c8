//! Two libvirt "hosts" on this one machine, for the migration tests ([`TwoHosts`]).
//!
//! Each [`LibvirtHost`] is a libvirtd of its own, started with `unshare --mount --uts
//! --propagation private` and its own copies of /etc/libvirt, /run/libvirt, /var/lib/libvirt,
//! /var/cache/libvirt and /var/log/libvirt bind-mounted over the real ones inside its mount
//! namespace (MIGRATION.md): its own `host_uuid` (the only thing libvirt's "same host" check
//! compares), `cgroup_controllers = [ ]` (both would use the same cgroup path otherwise) and a
//! migration port range of its own, away from the rig's libvirtd (49152-49215) and from the
//! ranges of other test processes. Both stay in the machine's network namespace, so migration
//! streams go over 127.0.0.1. The real /etc/libvirt is only read: its top-level configuration
//! files are copied, never its domains, networks or hooks (the rig's default network would
//! otherwise autostart a second time). The rig's libvirtd and its domains are never touched.
//!
//! Everything lives in `<rig>/run/t/<pid>-<n>/` (`a/`, `b/`: each host's directories, pid file
//! and log). Dropping [`TwoHosts`] destroys and undefines every domain on both daemons, stops
//! both daemons (by the pids they recorded, SIGTERM and then SIGKILL) and removes the directory,
//! also while a test panics; what a killed test process left is stopped by the next sweep
//! (`sweep::sweep_dir`: by the recorded pid, only while that process is a libvirtd whose command
//! line names that pid file).
//!
//! Paths inside a host's namespace (a channel socket libvirt generated under
//! /var/lib/libvirt) are reached from outside through [`LibvirtHost::outside`].
//!
//! A cluster node ([`crate::cluster::TwoNodeCluster`]) runs its libvirtd the same way, with the
//! same private directories, but inside the node's namespaces and cgroup
//! ([`LibvirtHost::start_in`]) instead of a mount namespace of its own.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::domain_xml::{
    with_vsock_uds, without_vsock_device, VSOCK_CHARDEV_ID, VSOCK_DEVICE_ID, VSOCK_PCI_SLOT,
};
use crate::node::Place;
use crate::rig::Rig;
use crate::sweep::{pid_alive, remove_domain_on, running_for};
use crate::virsh::{list_all_domains_on, virsh_on, virsh_on_timeout, VirshError};
use crate::vm::{next_instance, sweep_once, TestVm, VsockBackend};
use crate::wait::wait_until;

/// The two hosts' names and directories in a [`TwoHosts`] directory.
pub const HOST_LABELS: [&str; 2] = ["a", "b"];
/// A host's libvirtd pid file, in its directory (named on the daemon's command line).
pub const LIBVIRTD_PID_FILE: &str = "libvirtd.pid";
/// The state directories each host has its own copy of: (in its directory, mounted over).
const PRIVATE_DIRS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
];
/// Where libvirt puts the sockets of channels without a path (inside a host's namespace).
const CHANNEL_DIR: &str = "/var/lib/libvirt/qemu/channel/target";
/// Bound for a daemon to answer after its start. The first start of a daemon probes QEMU's
/// capabilities (about 8 s here) unless the rig's cache is valid for it.
const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound for a daemon to exit after SIGTERM.
const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for one `virsh migrate`: TCG, a 128 MiB guest, about 2 s here.
pub const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound for the guest to ack the unplug of its vsock device (about 0.2 s here).
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(20);
/// Ports per host in its migration range.
const PORTS_PER_HOST: u16 = 32;

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// One libvirtd in its own mount namespace. See the module documentation.
#[derive(Debug)]
pub struct LibvirtHost {
    label: &'static str,
    dir: PathBuf,
    uri: String,
    pid: Option<u32>,
    port_min: u16,
    /// The node it runs in; `None`: a mount namespace of its own.
    place: Option<Place>,
}

impl LibvirtHost {
    /// `a` or `b`.
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// `qemu+unix:///system?socket=<its run dir>/libvirt-sock`: `qemu+unix` rather than
    /// `qemu`, so that the source daemon of a `--p2p` migration dials the destination instead
    /// of taking the URI for its own driver.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The libvirtd's pid (its mount namespace is the host's).
    pub fn pid(&self) -> u32 {
        self.pid.unwrap_or(0)
    }

    /// Where the processes of this host run (a host agent on it): the node's namespaces and
    /// cgroup, or the libvirtd's own mount namespace.
    pub fn place(&self) -> Place {
        self.place
            .clone()
            .unwrap_or_else(|| Place::mount_ns_of(self.pid()))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's own log (warnings and errors).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log/libvirtd.log")
    }

    /// QEMU's log of a domain on this host.
    pub fn qemu_log_path(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("log/qemu/{domain}.log"))
    }

    /// `virsh -c <this host> ARGS`.
    pub fn virsh(&self, args: &[&str]) -> Result<String, VirshError> {
        virsh_on(&self.uri, args)
    }

    /// Where a path inside this host's namespace is seen from outside. Channel sockets go
    /// through a short symbolic link (`<dir>/../c<label>`), because the real path would exceed
    /// the 107 bytes of a Unix socket address.
    pub fn outside(&self, inside: &Path) -> PathBuf {
        if let Ok(rest) = inside.strip_prefix(CHANNEL_DIR) {
            return self.channel_link().join(rest);
        }
        for (own, over) in PRIVATE_DIRS {
            if let Ok(rest) = inside.strip_prefix(over) {
                return self.dir.join(own).join(rest);
            }
        }
        inside.to_path_buf()
    }

    fn channel_link(&self) -> PathBuf {
        self.dir.with_file_name(format!("c{}", self.label))
    }

    fn own_dir_name(&self) -> String {
        self.dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }

    /// A port of this host's migration range for the next incoming migration.
    fn next_migration_port(&self) -> u16 {
        self.port_min + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % PORTS_PER_HOST
    }

    fn start(
        label: &'static str,
        dir: PathBuf,
        host_uuid: &str,
        port_min: u16,
    ) -> Result<LibvirtHost, String> {
        LibvirtHost::start_at(label, dir, host_uuid, port_min, None)
    }

    /// Starts a libvirtd with its directories in `dir` inside the node `place` (whose mount
    /// namespace is the node's own: the daemon's directories are mounted there). A node has a
    /// network of its own, so libvirt's default migration ports do.
    pub(crate) fn start_in(
        label: &'static str,
        dir: PathBuf,
        host_uuid: &str,
        place: Place,
    ) -> Result<LibvirtHost, String> {
        LibvirtHost::start_at(label, dir, host_uuid, 49152, Some(place))
    }

    fn start_at(
        label: &'static str,
        dir: PathBuf,
        host_uuid: &str,
        port_min: u16,
        place: Option<Place>,
    ) -> Result<LibvirtHost, String> {
        let uri = format!(
            "qemu+unix:///system?socket={}/run/libvirt-sock",
            dir.display()
        );
        let mut host = LibvirtHost {
            label,
            dir,
            uri,
            pid: None,
            port_min,
            place,
        };
        host.prepare(host_uuid)?;
        host.launch()?;
        Ok(host)
    }

    fn prepare(&self, host_uuid: &str) -> Result<(), String> {
        let io = |what: &str, e: io::Error| format!("{what}: {e}");
        for (own, _) in PRIVATE_DIRS {
            let d = self.dir.join(own);
            fs::create_dir_all(&d).map_err(|e| io(&format!("cannot create {}", d.display()), e))?;
        }
        // Only the top-level configuration files: no domains, networks, hooks or secrets.
        let etc = fs::read_dir("/etc/libvirt").map_err(|e| io("cannot read /etc/libvirt", e))?;
        for entry in etc.flatten() {
            let path = entry.path();
            if path.is_file() && path.extension().is_some_and(|x| x == "conf") {
                fs::copy(&path, self.dir.join("etc").join(entry.file_name()))
                    .map_err(|e| io(&format!("cannot copy {}", path.display()), e))?;
            }
        }
        append(
            &self.dir.join("etc/libvirtd.conf"),
            &format!(
                "\n# --- appmon vm-tests host {label} ---\nhost_uuid = \"{host_uuid}\"\nlog_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
                label = self.label
            ),
        )?;
        append(
            &self.dir.join("etc/qemu.conf"),
            &format!(
                "\n# --- appmon vm-tests host {label} ---\n# both daemons would use the same cgroup path machine/qemu-<id>-<name>.libvirt-qemu\ncgroup_controllers = [ ]\nmigration_port_min = {min}\nmigration_port_max = {max}\n",
                label = self.label,
                min = self.port_min,
                max = self.port_min + PORTS_PER_HOST - 1
            ),
        )?;
        // The rig's capability cache spares each daemon QEMU's probe when it is still valid
        // (libvirt checks it against the binaries and probes again otherwise).
        let caps = Path::new("/var/cache/libvirt/qemu/capabilities");
        if let Ok(entries) = fs::read_dir(caps) {
            let own = self.dir.join("cache/qemu/capabilities");
            fs::create_dir_all(&own).map_err(|e| io("cannot create the capability cache", e))?;
            for e in entries.flatten() {
                let _ = fs::copy(e.path(), own.join(e.file_name()));
            }
        }
        let link = self.channel_link();
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(
            format!("{}/lib/qemu/channel/target", self.own_dir_name()),
            &link,
        )
        .map_err(|e| io(&format!("cannot create {}", link.display()), e))?;
        Ok(())
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut script = String::from("set -e\n");
        for (own, over) in PRIVATE_DIRS {
            if self.place.is_some() {
                // The node's mount namespace outlives a libvirtd restart: mount once.
                script.push_str(&format!(
                    "mkdir -p {over}\nmountpoint -q {over} || mount --bind \"$1/{own}\" {over}\n"
                ));
            } else {
                script.push_str(&format!("mount --bind \"$1/{own}\" {over}\n"));
            }
        }
        if self.place.is_none() {
            script.push_str("hostname \"$2\"\n");
        }
        script.push_str("exec libvirtd -d -p \"$1/libvirtd.pid\"\n");
        let stderr_path = self.dir.join("libvirtd.stderr");
        let stderr = fs::File::create(&stderr_path)
            .map_err(|e| format!("cannot create {}: {e}", stderr_path.display()))?;
        let stdout = stderr
            .try_clone()
            .map_err(|e| format!("cannot duplicate a file handle: {e}"))?;
        let mut command = match &self.place {
            Some(place) => place.command("/bin/sh"),
            None => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--uts", "--propagation", "private", "/bin/sh"]);
                c
            }
        };
        let status = command
            .arg("-c")
            .arg(&script)
            .arg("sh")
            .arg(&self.dir)
            .arg(format!("appmon-host-{}", self.label))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .map_err(|e| format!("cannot start libvirtd: {e}"))?;
        if !status.success() {
            return Err(format!(
                "host {}: libvirtd did not start ({status}): {}",
                self.label,
                fs::read_to_string(&stderr_path).unwrap_or_default().trim()
            ));
        }
        self.pid = running_for(&self.dir, LIBVIRTD_PID_FILE, "libvirtd", LIBVIRTD_PID_FILE);
        if self.pid.is_none() {
            return Err(format!(
                "host {}: no running libvirtd recorded in {}/{LIBVIRTD_PID_FILE}",
                self.label,
                self.dir.display()
            ));
        }
        wait_until(
            DAEMON_READY_TIMEOUT,
            &format!("libvirtd of host {} to answer on {}", self.label, self.uri),
            || virsh_on_timeout(&self.uri, &["version"], Duration::from_secs(10)).is_ok(),
        )
        .map_err(|e| format!("{e}\n{}", self.log_tail()))?;
        Ok(())
    }

    /// Kills this host's libvirtd with SIGKILL (its running domains go on: QEMU does not die
    /// with it), keeps it down for `down`, and starts it again on the same directories, where
    /// it finds its running domains as after any libvirtd restart. Returns how long it was
    /// down, from the kill to its first answer.
    pub fn kill_and_restart(&mut self, down: Duration) -> Result<Duration, String> {
        let pid = self
            .pid
            .take()
            .ok_or_else(|| format!("host {}: libvirtd is not running", self.label))?;
        let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
        let t0 = Instant::now();
        kill(Pid::from_raw(raw), Signal::SIGKILL)
            .map_err(|e| format!("host {}: cannot kill libvirtd pid {pid}: {e}", self.label))?;
        wait_until(
            DAEMON_STOP_TIMEOUT,
            &format!("libvirtd pid {pid} of host {} to die", self.label),
            || !pid_alive(pid),
        )
        .map_err(|e| e.to_string())?;
        thread::sleep(down.saturating_sub(t0.elapsed()));
        self.launch()?;
        Ok(t0.elapsed())
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!(
            "--- libvirtd log of host {} ({}) ---\n{tail}",
            self.label,
            self.log_path().display()
        )
    }

    /// Destroys and undefines every domain, then stops the daemon. Reports, never panics.
    fn stop(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let Some(pid) = self.pid.take() else {
            return errors;
        };
        errors.extend(remove_all_domains(&self.uri));
        if let Err(e) = stop_daemon(pid) {
            errors.push(format!("host {}: {e}", self.label));
        }
        errors
    }
}

/// Destroys and undefines every domain of the libvirtd at `uri`.
pub(crate) fn remove_all_domains(uri: &str) -> Vec<String> {
    match list_all_domains_on(uri) {
        Ok(domains) => domains
            .iter()
            .filter_map(|d| remove_domain_on(uri, d).err())
            .collect(),
        Err(e) => vec![format!("cannot list the domains of {uri}: {e}")],
    }
}

/// SIGTERM to a libvirtd this harness started, a bounded wait, then SIGKILL.
pub(crate) fn stop_daemon(pid: u32) -> Result<(), String> {
    let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    if wait_until(DAEMON_STOP_TIMEOUT, "libvirtd to exit", || !pid_alive(pid)).is_err() {
        let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        wait_until(
            Duration::from_secs(10),
            "libvirtd to exit after SIGKILL",
            || !pid_alive(pid),
        )
        .map_err(|e| format!("libvirtd pid {pid}: {e}"))?;
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// What one `virsh migrate` took.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// From the command's start until it returned (the source QEMU has exited by then).
    pub wall: Duration,
}

/// What a [`TwoHosts::migrate_vsock`] took, step by step.
#[derive(Debug, Clone, Copy)]
pub struct VsockMigration {
    /// `device_del` until QEMU no longer blocks the migration (the guest acked the eject).
    pub unplug: Duration,
    /// `virsh migrate`.
    pub migration: Migration,
    /// `chardev-add` and `device_add` on the destination.
    pub replug: Duration,
    /// When the device was plugged in again on the destination.
    pub replugged_at: Instant,
}

/// Two libvirt daemons, "hosts" `a` and `b`. See the module documentation.
#[derive(Debug)]
pub struct TwoHosts {
    dir: PathBuf,
    hosts: Vec<LibvirtHost>,
}

impl TwoHosts {
    /// Starts both daemons (in parallel: each may probe QEMU first) and waits until both answer.
    pub fn start() -> TwoHosts {
        let rig = Rig::require();
        sweep_once(&rig);
        let pid = std::process::id();
        let dir = rig.tests_dir().join(format!("{pid}-{}", next_instance()));
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        let base = 49300 + u16::try_from(pid % 32).unwrap_or(0) * 2 * PORTS_PER_HOST;
        let t0 = Instant::now();
        let mut two = TwoHosts {
            dir: dir.clone(),
            hosts: Vec::new(),
        };
        let started: Vec<Result<LibvirtHost, String>> = thread::scope(|s| {
            let handles: Vec<_> = HOST_LABELS
                .iter()
                .enumerate()
                .map(|(i, label)| {
                    let d = dir.join(label);
                    let uuid = format!("8f0b5a4e-6d1c-4a8e-9c1d-{pid:010x}{i:02x}");
                    let port = base + u16::try_from(i).unwrap_or(0) * PORTS_PER_HOST;
                    s.spawn(move || LibvirtHost::start(label, d, &uuid, port))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
                .collect()
        });
        let mut errors = Vec::new();
        for r in started {
            match r {
                Ok(h) => two.hosts.push(h),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            // Dropping `two` stops the daemon that did start.
            panic!("two-host harness: {}", errors.join("\n"));
        }
        eprintln!(
            "two-host harness: libvirtd a (pid {}) and b (pid {}) answer after {:.1}s",
            two.a().pid(),
            two.b().pid(),
            t0.elapsed().as_secs_f64()
        );
        two
    }

    pub fn a(&self) -> &LibvirtHost {
        &self.hosts[0]
    }

    pub fn a_mut(&mut self) -> &mut LibvirtHost {
        &mut self.hosts[0]
    }

    pub fn b(&self) -> &LibvirtHost {
        &self.hosts[1]
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host whose URI this is.
    pub fn host_of(&self, uri: &str) -> Option<&LibvirtHost> {
        self.hosts.iter().find(|h| h.uri == uri)
    }

    /// The other host.
    pub fn other(&self, host: &LibvirtHost) -> &LibvirtHost {
        if host.label == self.a().label {
            self.b()
        } else {
            self.a()
        }
    }

    /// Attaches both daemons' logs to the guest's failure diagnostics.
    pub fn attach_logs(&self, vm: &TestVm) {
        for h in &self.hosts {
            vm.attach_log(&format!("libvirtd-{}", h.label), &h.log_path());
            vm.attach_log(&format!("qemu-{}", h.label), &h.qemu_log_path(vm.name()));
        }
    }

    /// `virsh migrate --live --p2p --persistent --undefinesource` of `vm` from the host it is on
    /// to the other one, over `tcp://127.0.0.1:<a port of the destination's range>`, with
    /// `extra` arguments. On success the guest's harness follows it there
    /// ([`TestVm::set_uri`]).
    pub fn try_migrate(&self, vm: &TestVm, extra: &[&str]) -> Result<Migration, VirshError> {
        let from = self
            .host_of(&vm.uri())
            .unwrap_or_else(|| vm.fail(format!("{} is on none of the two hosts", vm.uri())));
        let to = self.other(from);
        let migrate_uri = format!("tcp://127.0.0.1:{}", to.next_migration_port());
        let mut args = vec![
            "migrate",
            "--live",
            "--p2p",
            "--persistent",
            "--undefinesource",
            "--migrateuri",
            &migrate_uri,
        ];
        args.extend_from_slice(extra);
        args.push(vm.name());
        args.push(to.uri());
        let t0 = Instant::now();
        virsh_on_timeout(from.uri(), &args, MIGRATE_TIMEOUT)?;
        let wall = t0.elapsed();
        vm.set_uri(to.uri());
        Ok(Migration { wall })
    }

    /// Migrates a guest with a vsock device to the other host, the workaround of MIGRATION.md
    /// (QEMU 7.2 cannot migrate vhost-user-vsock): `device_del` of the device on the source, a
    /// wait until QEMU no longer blocks the migration, `virsh migrate` with a live XML without
    /// the device and a persistent XML with it on `dest`'s vhost-user socket (both with the
    /// hybrid vsock path of the monitoring metadata moved to `dest`'s), then `chardev-add` and
    /// `device_add` on the destination, connected to `dest`. Open vsock connections are reset,
    /// as kernel vhost-vsock resets them on a migration. `from` is the backend the guest uses
    /// now (its hybrid path is the one in the metadata). Fails the test on any error.
    pub fn migrate_vsock(
        &self,
        vm: &TestVm,
        from: (&Path, &Path),
        dest: &VsockBackend,
    ) -> VsockMigration {
        let (from_uds, from_vhu) = from;
        let source = self
            .host_of(&vm.uri())
            .unwrap_or_else(|| vm.fail(format!("{} is on none of the two hosts", vm.uri())));
        let qmp = |host: &LibvirtHost, cmd: String| {
            host.virsh(&["qemu-monitor-command", vm.name(), &cmd])
                .unwrap_or_else(|e| vm.fail(format!("host {}: QMP {cmd}: {e}", host.label())))
        };
        let t0 = Instant::now();
        qmp(
            source,
            format!(r#"{{"execute":"device_del","arguments":{{"id":"{VSOCK_DEVICE_ID}"}}}}"#),
        );
        vm.wait_until(
            UNPLUG_TIMEOUT,
            "QEMU to stop blocking the migration (the guest acking the unplug)",
            || {
                source
                    .virsh(&[
                        "qemu-monitor-command",
                        vm.name(),
                        r#"{"execute":"query-migrate"}"#,
                    ])
                    .is_ok_and(|out| !out.contains("blocked-reasons"))
            },
        );
        qmp(
            source,
            format!(r#"{{"execute":"chardev-remove","arguments":{{"id":"{VSOCK_CHARDEV_ID}"}}}}"#),
        );
        let unplug = t0.elapsed();
        let text = |p: &Path| p.to_string_lossy().into_owned();
        let (from_uds, from_vhu) = (text(from_uds), text(from_vhu));
        let (to_uds, to_vhu) = (text(&dest.vsock_uds()), text(&dest.vhost_user_socket()));
        let dump = |args: &[&str]| {
            source
                .virsh(args)
                .unwrap_or_else(|e| vm.fail(format!("host {}: dumpxml: {e}", source.label())))
        };
        let live = without_vsock_device(
            &dump(&["dumpxml", "--migratable", vm.name()]),
            &from_uds,
            &to_uds,
        )
        .unwrap_or_else(|e| vm.fail(format!("the live XML to migrate with: {e}")));
        let persistent = with_vsock_uds(
            &dump(&["dumpxml", "--migratable", "--inactive", vm.name()]),
            &from_uds,
            &to_uds,
        )
        .and_then(|x| with_vsock_uds(&x, &from_vhu, &to_vhu))
        .unwrap_or_else(|e| vm.fail(format!("the persistent XML to migrate with: {e}")));
        let live_path = vm.dir().join("migrate-live.xml");
        let persistent_path = vm.dir().join("migrate-persistent.xml");
        for (path, xml) in [(&live_path, &live), (&persistent_path, &persistent)] {
            if let Err(e) = fs::write(path, xml) {
                vm.fail(format!("cannot write {}: {e}", path.display()));
            }
        }
        let (live_arg, persistent_arg) = (text(&live_path), text(&persistent_path));
        let migration = self
            .try_migrate(
                vm,
                &["--xml", &live_arg, "--persistent-xml", &persistent_arg],
            )
            .unwrap_or_else(|e| vm.fail(format!("migration failed: {e}")));
        let to = self
            .host_of(&vm.uri())
            .unwrap_or_else(|| vm.fail("the guest is on no host after its migration"));
        let t0 = Instant::now();
        qmp(
            to,
            format!(
                r#"{{"execute":"chardev-add","arguments":{{"id":"{VSOCK_CHARDEV_ID}","backend":{{"type":"socket","data":{{"addr":{{"type":"unix","data":{{"path":"{to_vhu}"}}}},"server":false}}}}}}}}"#
            ),
        );
        qmp(
            to,
            format!(
                r#"{{"execute":"device_add","arguments":{{"driver":"vhost-user-vsock-pci","id":"{VSOCK_DEVICE_ID}","chardev":"{VSOCK_CHARDEV_ID}","bus":"pci.0","addr":"{VSOCK_PCI_SLOT:#x}"}}}}"#
            ),
        );
        VsockMigration {
            unplug,
            migration,
            replug: t0.elapsed(),
            replugged_at: Instant::now(),
        }
    }

    /// [`TwoHosts::try_migrate`]; fails the test with the guest's diagnostics.
    pub fn migrate(&self, vm: &TestVm) -> Migration {
        self.try_migrate(vm, &[])
            .unwrap_or_else(|e| vm.fail(format!("migration failed: {e}")))
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        // No panics here (see TestVm's Drop).
        let mut errors = Vec::new();
        let keep = thread::panicking() || std::env::var_os("APPMON_VM_KEEP_LOGS").is_some();
        for h in &mut self.hosts {
            errors.extend(h.stop());
        }
        if keep {
            let dest = Rig::from_env()
                .kept_logs_dir()
                .join(self.dir.file_name().unwrap_or_default());
            if fs::create_dir_all(&dest).is_ok() {
                for h in &self.hosts {
                    let _ = fs::copy(h.log_path(), dest.join(format!("libvirtd-{}.log", h.label)));
                    if let Ok(entries) = fs::read_dir(h.dir.join("log/qemu")) {
                        for e in entries.flatten() {
                            let name = format!("{}-{}", h.label, e.file_name().to_string_lossy());
                            let _ = fs::copy(e.path(), dest.join(name));
                        }
                    }
                }
                eprintln!("two-host harness: logs kept in {}", dest.display());
            }
        }
        for e in &errors {
            eprintln!("two-host harness: cleanup: {e}");
        }
        if !errors.is_empty() {
            // Keep the directory (and the recorded pids) for the next sweep.
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!(
                    "two-host harness: cleanup: cannot remove {}: {e}",
                    self.dir.display()
                );
            }
        }
    }
}
