//! [`HostAgent`]: the real `appmon-host` daemon as a test fixture, driven the way an operator
//! drives it: a `host.toml`, and `appmonctl` on its control socket.
//!
//! Each `HostAgent` owns a directory `<rig>/run/t/<pid>-<n>` (as a [`TestVm`] does) holding its
//! generated `host.toml`, its state directory, its control socket, its log and its pid file. Its
//! `domains` are exactly the test's own domain names, so host agents of tests running in parallel
//! never act on each other's guests. Dropping it stops the daemon (SIGTERM, a bounded wait, then
//! SIGKILL), reaps it and removes the directory, also while a test panics; a host agent left by a
//! killed test process is stopped by the next sweep (by its recorded pid, and only when its
//! command line names that directory's `host.toml`).
//!
//! Where the binaries are: `$APPMON_HOST_BIN` and `$APPMONCTL_BIN` (scripts/test and
//! scripts/demo build them and export both), else beside the running test binary
//! (`<target>/debug/`). Without them the test fails naming the build command; it never skips.
//!
//! The JSON that `appmonctl --json list/show` prints is read into `appmon-control`'s [`VmView`]:
//! the test sees what an operator sees, typed as the host agent wrote it. The `host.toml` is the
//! host agent's own [`Config`], serialised.

use std::fmt::Display;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use appmon_control::{HistoryEntry, PolicyView, ResetMethod, Status, VmView};
use appmon_control::{ListDocument, ShowDocument};
pub use appmon_host_agent::config::{Config, Defaults};
use appmon_libvirt_backend::spec::format_duration;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::console;
use crate::hosts::LibvirtHost;
use crate::node::Place;
use crate::rig::{is_executable, Rig};
use crate::sweep::{HOST_AGENT_CONFIG, HOST_AGENT_PID_FILE};
use crate::virsh::{run_bounded, RunError, LIBVIRT_URI};
use crate::vm::{next_instance, sweep_once, TestVm};
use crate::wait::wait_for;

/// The command that builds the host binaries (run from the repository root).
pub const HOST_BUILD_HINT: &str =
    "cargo build --locked -p appmon-host-agent --bins   (scripts/test and scripts/demo do it)";

/// Bound for the daemon to answer on its control socket and list its domains.
pub const HOST_AGENT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound for the daemon to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Bound for one `appmonctl` call. The daemon itself gives up on a request after 60 s.
const CTL_TIMEOUT: Duration = Duration::from_secs(75);

const CONTROL_SOCKET: &str = "host.sock";
const LOG_FILE: &str = "appmon-host.log";
const STATE_DIR: &str = "state";
const LOG_TAIL_LINES: usize = 40;

/// The `appmon-host` and `appmonctl` binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBins {
    pub host: PathBuf,
    pub ctl: PathBuf,
}

impl HostBins {
    /// `$APPMON_HOST_BIN` / `$APPMONCTL_BIN`, else the binaries beside the running executable.
    pub fn locate() -> Result<HostBins, String> {
        Ok(HostBins {
            host: locate_bin("APPMON_HOST_BIN", "appmon-host")?,
            ctl: locate_bin("APPMONCTL_BIN", "appmonctl")?,
        })
    }

    /// [`HostBins::locate`], or a panic naming the build command.
    pub fn require() -> HostBins {
        HostBins::locate().unwrap_or_else(|e| panic!("{e}"))
    }
}

fn locate_bin(var: &str, name: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(format!(
                "{var}={} is not an executable file; build it with:\n  {HOST_BUILD_HINT}",
                path.display()
            ))
        };
    }
    // A test binary runs from <target>/<profile>/deps/, a program from <target>/<profile>/.
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the running program: {e}"))?;
    let mut candidates = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..2 {
        if let Some(d) = dir {
            candidates.push(d.join(name));
            dir = d.parent();
        }
    }
    match candidates.iter().find(|c| is_executable(c)) {
        Some(found) => {
            warn_if_older_than_sources(found);
            Ok(found.clone())
        }
        None => Err(format!(
            "{name} not found: {var} is not set and there is no {name} in {}; build it with:\n  {HOST_BUILD_HINT}",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )),
    }
}

/// A binary found beside the tests may be older than the sources it was built from; say so
/// (scripts/test always builds it first, so this is for runs by hand).
fn warn_if_older_than_sources(bin: &Path) {
    let Ok(built) = fs::metadata(bin).and_then(|m| m.modified()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = ["host-agent/src", "libvirt-backend/src", "wire/src"]
        .iter()
        .filter_map(|d| newest_mtime(&root.join(d)))
        .max();
    if newest.is_some_and(|n| n > built) {
        eprintln!(
            "vm-tests: WARNING: {} is older than the host agent's sources; rebuild it with:\n  {HOST_BUILD_HINT}",
            bin.display()
        );
    }
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// The small policy of the VM tests (`[defaults]` of their host agents, and the base of what
/// they enable): short intervals, so that the tests stay short.
pub fn test_policy() -> Defaults {
    Defaults {
        failure_interval: Duration::from_secs(4),
        min_uptime: Duration::from_secs(15),
        max_resets: 3,
        reset_window: Duration::from_secs(3600),
        reset_method: ResetMethod::Reset,
    }
}

/// The `appmonctl enable` options for `policy`.
pub fn enable_args(policy: &Defaults) -> Vec<String> {
    vec![
        "--failure-interval".into(),
        format_duration(policy.failure_interval),
        "--min-uptime".into(),
        format_duration(policy.min_uptime),
        "--max-resets".into(),
        policy.max_resets.to_string(),
        "--window".into(),
        format_duration(policy.reset_window),
        "--reset-method".into(),
        policy.reset_method.as_str().into(),
    ]
}

/// Whether the policy `appmonctl show` reports is `policy`.
pub fn policy_matches(policy: &Defaults, shown: &PolicyView) -> bool {
    shown.failure_interval_ms == millis(policy.failure_interval)
        && shown.min_uptime_ms == millis(policy.min_uptime)
        && shown.max_resets == policy.max_resets
        && shown.reset_window_ms == millis(policy.reset_window)
        && shown.reset_method == policy.reset_method
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The host agent's settings for a VM test: small timeouts keep the tests short; the channel
/// timeout still leaves room for a TCG boot with two guests booting at once (~15-20 s to the
/// guest agent), plus the 1 s reconnect backoff. [`HostAgent`] fills in where it runs (libvirt
/// URI, state directory, control socket) and which domains it manages.
pub fn test_host_config() -> Config {
    Config {
        channel_timeout: Duration::from_secs(30),
        ping_interval: Duration::from_secs(1),
        dead_after_pings: 3,
        hello_timeout: Duration::from_secs(5),
        reconnect_max: Duration::from_secs(1),
        defaults: test_policy(),
        ..Config::default()
    }
}

/// `config` for an agent in `dir` that manages exactly `domains`.
pub fn placed(mut config: Config, dir: &Path, domains: &[String]) -> Config {
    config.uri = LIBVIRT_URI.into();
    config.state_dir = dir.join(STATE_DIR);
    config.control_socket = dir.join(CONTROL_SOCKET);
    config.domains = domains.to_vec();
    config
}

/// Why an `appmonctl` call failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot run {ctl}")]
    Spawn {
        ctl: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`appmonctl {args}` did not finish within {timeout:?}")]
    Timeout { args: String, timeout: Duration },
    #[error("`appmonctl {args}` failed with exit code {code:?}: {stderr}")]
    Failed {
        args: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("`appmonctl {args}` printed JSON the harness cannot read: {output}")]
    Json {
        args: String,
        output: String,
        #[source]
        source: serde_json::Error,
    },
}

impl CtlError {
    /// The exit code, when appmonctl ran and failed.
    pub fn code(&self) -> Option<i32> {
        match self {
            CtlError::Failed { code, .. } => *code,
            _ => None,
        }
    }
}

/// What one `appmonctl` run printed.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// The real host agent, running for one test. See the module documentation.
#[derive(Debug)]
pub struct HostAgent {
    name: String,
    dir: PathBuf,
    rig: Rig,
    bins: HostBins,
    /// The host.toml it runs with.
    config: Config,
    child: Option<Child>,
    starts: u32,
    /// When the daemon last answered its first `list` with all its domains.
    ready_at: Option<Instant>,
    /// Runs there (a two-host harness's libvirtd's mount namespace, a cluster node), as a host
    /// agent on that host would: the paths in its libvirtd's domain XML are that host's.
    place: Option<Place>,
    /// The domains it must list before it counts as ready (those its libvirtd has).
    listed: Vec<String>,
}

impl HostAgent {
    /// Starts a host agent that manages exactly these guests' domains, waits until it answers
    /// and lists them, and attaches its log to each guest's failure diagnostics.
    pub fn start(vms: &[&TestVm], config: Config) -> HostAgent {
        let domains: Vec<String> = vms.iter().map(|vm| vm.name().to_owned()).collect();
        let mut agent = HostAgent::new(domains, config);
        for vm in vms {
            vm.attach_log("appmon-host", &agent.log_path());
        }
        agent.launch();
        agent
    }

    /// [`HostAgent::start`] for one of the two-host harness's daemons or a cluster node's:
    /// where that host's processes run ([`LibvirtHost::place`]: the daemon's mount namespace, or
    /// the node's namespaces and cgroup), its `uri` that daemon's socket. It counts as ready
    /// once it lists those of `vms` that are on that daemon.
    pub fn start_on(host: &LibvirtHost, vms: &[&TestVm], config: Config) -> HostAgent {
        let domains: Vec<String> = vms.iter().map(|vm| vm.name().to_owned()).collect();
        let config = Config {
            uri: host.uri().to_owned(),
            ..config
        };
        let mut agent = HostAgent::new_in(domains, config, Some(host.place()));
        agent.listed = vms
            .iter()
            .filter(|vm| vm.uri() == host.uri())
            .map(|vm| vm.name().to_owned())
            .collect();
        agent.name = format!("{} (host {})", agent.name, host.label());
        for vm in vms {
            vm.attach_log(&format!("appmon-host-{}", host.label()), &agent.log_path());
        }
        agent.launch();
        agent
    }

    /// Prepares (does not start) a host agent for `domains`: its directory and host.toml
    /// (`config`, placed in that directory and limited to `domains`).
    pub fn new(domains: Vec<String>, config: Config) -> HostAgent {
        HostAgent::new_in(domains, config, None)
    }

    /// [`HostAgent::new`]; `place`: run there, with the `uri` of `config` (else the rig's).
    fn new_in(domains: Vec<String>, config: Config, place: Option<Place>) -> HostAgent {
        let rig = Rig::require();
        let bins = HostBins::require();
        sweep_once(&rig);
        let pid = std::process::id();
        let n = next_instance();
        let dir = rig.tests_dir().join(format!("{pid}-{n}"));
        let uri = config.uri.clone();
        let mut placed = placed(config, &dir, &domains);
        if place.is_some() {
            placed.uri = uri;
        }
        let agent = HostAgent {
            name: format!("appmon-host-{pid}-{n}"),
            config: placed,
            place,
            listed: domains,
            dir,
            rig,
            bins,
            child: None,
            starts: 0,
            ready_at: None,
        };
        if agent.dir.exists() {
            // Only a dead process with this very pid can have left it.
            let mut report = crate::sweep::SweepReport::default();
            crate::sweep::sweep_dir(&agent.dir, &mut report);
            if let Some(e) = report.errors.first() {
                agent.fail(format!("cannot clear a stale test directory: {e}"));
            }
        }
        if let Err(e) = fs::create_dir_all(agent.dir.join(STATE_DIR)) {
            agent.fail(format!("cannot create {}: {e}", agent.dir.display()));
        }
        let toml = agent
            .config
            .to_toml()
            .unwrap_or_else(|e| agent.fail(format!("cannot write the host.toml: {e}")));
        if let Err(e) = fs::write(agent.config_path(), toml) {
            agent.fail(format!(
                "cannot write {}: {e}",
                agent.config_path().display()
            ));
        }
        agent
    }

    /// Starts the daemon (again, after [`HostAgent::stop`]) on the same directory and state, and
    /// waits until it answers and lists its domains.
    pub fn launch(&mut self) {
        if self.child.is_some() {
            self.fail("launch: the host agent is already running");
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| {
                self.fail(format!("cannot open {}: {e}", self.log_path().display()))
            });
        let _ = writeln!(
            log,
            "=== vm-tests: appmon-host start #{} at unix_ms {} ===",
            self.starts,
            unix_ms_now()
        );
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| self.fail(format!("cannot duplicate the log handle: {e}")));
        // nsenter (and the cgroup's sh) exec the program: the child's pid is appmon-host's.
        let mut command = match &self.place {
            None => Command::new(&self.bins.host),
            Some(place) => place.command(&self.bins.host),
        };
        let child = command
            .arg("--config")
            .arg(self.config_path())
            .env(
                "RUST_LOG",
                std::env::var("APPMON_HOST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| {
                self.fail(format!("cannot start {}: {e}", self.bins.host.display()))
            });
        let pid = child.id();
        self.child = Some(child);
        if let Err(e) = fs::write(self.dir.join(HOST_AGENT_PID_FILE), format!("{pid}\n")) {
            self.fail(format!("cannot record the host agent's pid: {e}"));
        }
        let what = format!(
            "appmon-host (pid {pid}) to answer on {} and list {:?}",
            self.control_socket().display(),
            self.listed
        );
        let ready = wait_for(HOST_AGENT_READY_TIMEOUT, &what, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Some(Err(format!("appmon-host exited: {status}")));
            }
            match self.try_list() {
                Ok(list)
                    if self
                        .listed
                        .iter()
                        .all(|d| list.iter().any(|v| &v.name == d)) =>
                {
                    Some(Ok(()))
                }
                _ => None,
            }
        });
        match ready {
            Ok(Ok(())) => self.ready_at = Some(Instant::now()),
            Ok(Err(e)) => self.fail(e),
            Err(e) => self.fail(e),
        }
    }

    /// Stops the daemon: SIGTERM, a bounded wait, then SIGKILL. Returns how it exited.
    pub fn stop(&mut self) -> ExitStatus {
        let Some(child) = self.child.take() else {
            self.fail("stop: the host agent is not running");
        };
        match stop_child(child) {
            Ok(status) => {
                let _ = fs::remove_file(self.dir.join(HOST_AGENT_PID_FILE));
                status
            }
            Err(e) => self.fail(e),
        }
    }

    /// Sends the running daemon `signal` (SIGSTOP and SIGCONT: a host agent that is not
    /// scheduled).
    pub fn signal(&self, signal: Signal) {
        let Some(pid) = self.pid() else {
            self.fail(format!("signal {signal}: the host agent is not running"));
        };
        let raw =
            i32::try_from(pid).unwrap_or_else(|_| self.fail(format!("pid {pid} out of range")));
        // The child is ours and not yet reaped, so the pid cannot have been reused.
        if let Err(e) = kill(Pid::from_raw(raw), signal) {
            self.fail(format!(
                "cannot send {signal} to appmon-host pid {pid}: {e}"
            ));
        }
    }

    /// Kills the daemon with SIGKILL (no chance to write anything more) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        let Some(mut child) = self.child.take() else {
            self.fail("kill: the host agent is not running");
        };
        let pid = child.id();
        let _ = child.kill();
        match child.wait() {
            Ok(status) => {
                let _ = fs::remove_file(self.dir.join(HOST_AGENT_PID_FILE));
                status
            }
            Err(e) => self.fail(format!("cannot reap appmon-host pid {pid}: {e}")),
        }
    }

    /// Stops and starts the daemon on the same state directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// When the daemon (last) became ready: it had listed its domains by then.
    pub fn ready_at(&self) -> Option<Instant> {
        self.ready_at
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join(HOST_AGENT_CONFIG)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.join(CONTROL_SOCKET)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(STATE_DIR)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// The daemon's whole log so far (all its starts).
    pub fn log(&self) -> String {
        console::read_console(&self.log_path()).unwrap_or_default()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn bins(&self) -> &HostBins {
        &self.bins
    }

    // --- appmonctl ------------------------------------------------------------------------------

    /// Runs `appmonctl --socket <ours> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Result<CtlOutput, CtlError> {
        let mut cmd = Command::new(&self.bins.ctl);
        cmd.arg("--socket").arg(self.control_socket()).args(args);
        match run_bounded(cmd, CTL_TIMEOUT) {
            Ok(out) => Ok(CtlOutput {
                code: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            }),
            Err(RunError::Spawn(source)) => Err(CtlError::Spawn {
                ctl: self.bins.ctl.clone(),
                source,
            }),
            Err(RunError::Timeout) => Err(CtlError::Timeout {
                args: args.join(" "),
                timeout: CTL_TIMEOUT,
            }),
        }
    }

    /// Runs `appmonctl ARGS` and returns its stdout when it exits 0.
    pub fn ctl_ok(&self, args: &[&str]) -> Result<String, CtlError> {
        let out = self.ctl(args)?;
        if out.code == Some(0) {
            Ok(out.stdout)
        } else {
            Err(CtlError::Failed {
                args: args.join(" "),
                code: out.code,
                stderr: out.stderr.trim().to_owned(),
            })
        }
    }

    fn ctl_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> Result<T, CtlError> {
        let out = self.ctl_ok(args)?;
        serde_json::from_str(&out).map_err(|source| CtlError::Json {
            args: args.join(" "),
            output: out,
            source,
        })
    }

    /// `appmonctl --json list`.
    pub fn try_list(&self) -> Result<Vec<VmView>, CtlError> {
        self.ctl_json::<ListDocument>(&["--json", "list"])
            .map(|doc| doc.domains)
    }

    /// `appmonctl --json show DOMAIN` (with the history).
    pub fn try_show(&self, domain: &str) -> Result<VmView, CtlError> {
        self.ctl_json::<ShowDocument>(&["--json", "show", domain])
            .map(|doc| doc.domain)
    }

    /// `appmonctl enable DOMAIN --vsock-uds <its hybrid-vsock socket> <policy options>`: the
    /// operator's way to put a domain under monitoring.
    pub fn try_enable(&self, vm: &TestVm, policy: &Defaults) -> Result<String, CtlError> {
        let uds = vm.vsock_uds().to_string_lossy().into_owned();
        let mut args: Vec<String> =
            vec!["enable".into(), vm.name().into(), "--vsock-uds".into(), uds];
        args.extend(enable_args(policy));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctl_ok(&args)
    }

    /// `appmonctl enable DOMAIN --channel-name NAME <policy options>`: monitoring over the
    /// virtio-serial channel `NAME`, whose socket the host agent finds in the live domain XML.
    pub fn try_enable_channel(
        &self,
        vm: &TestVm,
        channel: &str,
        policy: &Defaults,
    ) -> Result<String, CtlError> {
        let mut args: Vec<String> = vec![
            "enable".into(),
            vm.name().into(),
            "--channel-name".into(),
            channel.into(),
        ];
        args.extend(enable_args(policy));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctl_ok(&args)
    }

    /// [`HostAgent::try_enable_channel`]; fails the test with the guest's diagnostics.
    pub fn enable_channel(&self, vm: &TestVm, channel: &str, policy: &Defaults) -> String {
        self.try_enable_channel(vm, channel, policy)
            .unwrap_or_else(|e| vm.fail(format!("appmonctl enable: {e}")))
    }

    /// [`HostAgent::try_show`] for a guest; fails the test with the guest's diagnostics.
    pub fn status(&self, vm: &TestVm) -> VmView {
        self.try_show(vm.name())
            .unwrap_or_else(|e| vm.fail(format!("appmonctl show: {e}")))
    }

    /// [`HostAgent::try_enable`]; fails the test with the guest's diagnostics.
    pub fn enable(&self, vm: &TestVm, policy: &Defaults) -> String {
        self.try_enable(vm, policy)
            .unwrap_or_else(|e| vm.fail(format!("appmonctl enable: {e}")))
    }

    /// Polls `appmonctl show` until `cond` holds; returns that status. On timeout the test fails
    /// with the last status and history, the console and the host agent's log.
    pub fn wait_for_status(
        &self,
        vm: &TestVm,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&VmView) -> bool,
    ) -> VmView {
        let mut last: Option<Result<VmView, String>> = None;
        let res = wait_for(timeout, what, || {
            let s = self.try_show(vm.name()).map_err(|e| e.to_string());
            let hit = s.as_ref().ok().filter(|s| cond(s)).cloned();
            last = Some(s);
            hit
        });
        match res {
            Ok(s) => s,
            Err(t) => vm.fail(format!(
                "{t}\n--- last appmonctl show ---\n{}",
                describe_last(last)
            )),
        }
    }

    /// Waits until the host agent reports `status` for `vm`.
    pub fn wait_for(&self, vm: &TestVm, status: Status, timeout: Duration) -> VmView {
        self.wait_for_status(vm, timeout, &format!("status {status}"), |s| s.is(status))
    }

    // --- failing --------------------------------------------------------------------------------

    /// Fails the test with `msg` and the host agent's log tail.
    pub fn fail(&self, msg: impl Display) -> ! {
        panic!("{}: {msg}\n{}", self.name, self.diagnostics())
    }

    /// The log tail a failure message carries.
    pub fn diagnostics(&self) -> String {
        let text = self.log();
        format!(
            "--- appmon-host log, last {LOG_TAIL_LINES} lines ({}) ---\n{}\n--- end ---",
            self.log_path().display(),
            console::tail(&text, LOG_TAIL_LINES)
        )
    }

    fn keep_logs(&self) -> Option<PathBuf> {
        let dest = self.rig.kept_logs_dir().join(&self.name);
        fs::create_dir_all(&dest).ok()?;
        for f in [self.log_path(), self.config_path()] {
            if let Some(name) = f.file_name() {
                let _ = fs::copy(&f, dest.join(name));
            }
        }
        if let Ok(entries) = fs::read_dir(self.state_dir()) {
            for e in entries.flatten() {
                let _ = fs::copy(e.path(), dest.join(e.file_name()));
            }
        }
        Some(dest)
    }
}

fn describe_last(last: Option<Result<VmView, String>>) -> String {
    match last {
        None => "(none)".into(),
        Some(Err(e)) => e,
        Some(Ok(s)) => format!("{}\n  history:\n{}", s.summary(), s.history_text()),
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        // No panics here (see TestVm's Drop).
        let keep = thread::panicking() || std::env::var_os("APPMON_VM_KEEP_LOGS").is_some();
        if let Some(child) = self.child.take() {
            if let Err(e) = stop_child(child) {
                eprintln!("{}: cleanup: {e}", self.name);
                return;
            }
        }
        if keep {
            if let Some(dest) = self.keep_logs() {
                eprintln!("{}: logs kept in {}", self.name, dest.display());
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "{}: cleanup: cannot remove {}: {e}",
                    self.name,
                    self.dir.display()
                );
            }
        }
    }
}

/// SIGTERM, up to [`STOP_TIMEOUT`] for the exit, then SIGKILL; always reaps.
fn stop_child(mut child: Child) -> Result<ExitStatus, String> {
    let pid = child.id();
    if let Ok(Some(status)) = child.try_wait() {
        return Ok(status);
    }
    let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    // The child is ours and not yet reaped, so the pid cannot have been reused.
    let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for appmon-host pid {pid}: {e}")),
        }
    }
    eprintln!("appmon-host pid {pid} ignored SIGTERM for {STOP_TIMEOUT:?}; sending SIGKILL");
    let _ = child.kill();
    child
        .wait()
        .map_err(|e| format!("cannot reap appmon-host pid {pid}: {e}"))
}

/// Milliseconds since the Unix epoch, as the host agent stamps its history.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_toml_names_only_the_tests_domains_and_reads_back() {
        let dir = Path::new("/var/tmp/appmon-rig/run/t/1-2");
        let config = placed(
            test_host_config(),
            dir,
            &["appmon-t-a-1-0".into(), "appmon-t-b-1-1".into()],
        );

        let toml = config.to_toml().expect("serialises");

        let back = Config::parse(&toml, Path::new("host.toml")).expect("the host agent reads it");
        assert_eq!(back, config);
        assert_eq!(back.domains, ["appmon-t-a-1-0", "appmon-t-b-1-1"]);
        assert_eq!(back.uri, "qemu:///system");
        assert_eq!(back.control_socket, dir.join("host.sock"));
        assert_eq!(back.defaults.failure_interval, Duration::from_secs(4));
    }

    #[test]
    fn enable_args_spell_the_policy_for_appmonctl() {
        let p = Defaults {
            failure_interval: Duration::from_millis(3500),
            max_resets: 2,
            reset_method: ResetMethod::PowerCycle,
            ..test_policy()
        };
        assert_eq!(
            enable_args(&p).join(" "),
            "--failure-interval 3500ms --min-uptime 15s --max-resets 2 --window 1h --reset-method power-cycle"
        );
    }
}
