//! [`TestVm`]: one test guest with its own directory, libvirt domain and vhost-device-vsock.
//!
//! Lifecycle: [`TestVm::new`] sweeps leftovers of dead test processes (once per process), starts
//! the vsock backend (QEMU connects to it while realising the device, so it must listen before
//! `virsh start`) and defines the domain. [`TestVm::boot`] also starts it and waits for the
//! guest's ready marker. Dropping the `TestVm` destroys and undefines the domain, kills and reaps
//! the backend and removes the directory, also while a test panics; then it first copies the
//! console and logs to `<rig>/logs/vm-tests/<domain>/` (with `APPMON_VM_KEEP_LOGS=1`, always).
//!
//! Every method that drives the guest panics on failure with the guest console's tail, the
//! backend's log and QEMU's log: a panic is how a VM test fails, and that is what one reads
//! first.

use appmon_wire::report::error_chain;
use std::fmt::Display;
use std::fs::{self, File};
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use crate::console::markers::{GUEST_READY, INIT};
use crate::console::{self, ConsoleMark};
use crate::domain_xml::{DomainSpec, OnReboot, WatchdogAction};
use crate::hybrid::{hybrid_connect, HybridConnectError};
use crate::initrd::{write_with_extra_files, GuestFile};
use crate::rig::Rig;
use crate::sweep::{
    self, remove_domain, remove_domain_on, sweep_dir, sweep_stale, BACKEND_PID_FILE, QEMU_LOG_DIR,
    VHOST_USER_SOCKET, VSOCK_UDS,
};
use crate::virsh::{virsh_on, DomainState, VirshError, LIBVIRT_URI};
use crate::wait::{hold_for, wait_for, wait_until};
use crate::DOMAIN_PREFIX;

/// Kernel arguments every test guest gets; [`VmConfig::cmdline_arg`] appends to them.
/// `panic=-1` reboots at once on a panic instead of hanging the test until its timeout.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// Bound for a boot to the ready marker. A boot takes ~5 s under TCG with the machine idle; two
/// guests booting at once on two cores, a loaded CI machine and a first-time page cache make it
/// several times that.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Bound for vhost-device-vsock to create its socket.
const BACKEND_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The guest CID the backend gives each guest. Every guest has its own backend, so all can be 3.
pub const GUEST_CID: u32 = 3;

const CONSOLE_TAIL_LINES: usize = 60;
const LOG_TAIL_LINES: usize = 20;
/// The host agent's log says most about an HA test's failure.
const ATTACHED_LOG_TAIL_LINES: usize = 40;

/// vhost-device-vsock's log in a test directory.
const BACKEND_LOG: &str = "vhost-device-vsock.log";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// The next `<n>` of this process's `<pid>-<n>` names (test guests and host agents share it, so
/// their directories never collide).
pub(crate) fn next_instance() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Removes what dead test processes left behind, once per process, before its first guest or
/// host agent.
pub(crate) fn sweep_once(rig: &Rig) {
    SWEEP.call_once(|| {
        let report = sweep_stale(rig);
        if !report.is_empty() {
            eprintln!(
                "vm-tests: removed leftovers of dead test processes: domains {:?}, vhost-device-vsock pids {:?}, appmon-host pids {:?}, libvirtd pids {:?}, cluster nodes {:?}, dirs {:?}",
                report.domains, report.backends, report.host_agents, report.libvirtds, report.cgroups, report.dirs
            );
        }
        for e in &report.errors {
            eprintln!("vm-tests: sweeping leftovers: {e}");
        }
    });
}

/// How to build a test guest. Defaults: 128 MiB, 1 vCPU, `<on_reboot>restart`, watchdog resets.
#[derive(Debug, Clone)]
pub struct VmConfig {
    test_name: String,
    memory_mib: u32,
    vcpus: u32,
    cmdline_args: Vec<String>,
    on_reboot: OnReboot,
    watchdog: WatchdogAction,
    metadata_xml: String,
    extra_devices_xml: String,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    guest_files: Vec<GuestFile>,
    vsock: bool,
    uuid_in_xml: bool,
    /// Where someone else's vsock backend has its sockets; `None`: the guest's own, in its
    /// directory.
    vsock_dir: Option<PathBuf>,
}

impl VmConfig {
    /// `test_name` becomes part of the domain name; keep it short.
    pub fn new(test_name: &str) -> VmConfig {
        VmConfig {
            test_name: test_name.to_owned(),
            memory_mib: 128,
            vcpus: 1,
            cmdline_args: Vec::new(),
            on_reboot: OnReboot::Restart,
            watchdog: WatchdogAction::Reset,
            metadata_xml: String::new(),
            extra_devices_xml: String::new(),
            kernel: None,
            initrd: None,
            guest_files: Vec::new(),
            vsock: true,
            uuid_in_xml: false,
            vsock_dir: None,
        }
    }

    /// The domain XML (also the file a VirtualDomain resource's `config=` names) carries a
    /// fresh `<uuid>`, as one saved with `virsh dumpxml` does: every domain defined or created
    /// from it has that UUID.
    pub fn with_uuid_in_config(mut self) -> VmConfig {
        self.uuid_in_xml = true;
        self
    }

    /// The guest's vsock device is served by a vhost-device-vsock someone else runs, with its
    /// sockets ([`VHOST_USER_SOCKET`], [`VSOCK_UDS`]) in `dir`: a cluster's directory that is
    /// the same path on every node, each node's own backend there
    /// ([`crate::cluster::TwoNodeCluster::vsock_dir`]). The harness starts no backend.
    pub fn vsock_served_in(mut self, dir: impl Into<PathBuf>) -> VmConfig {
        self.vsock = true;
        self.vsock_dir = Some(dir.into());
        self
    }

    /// No vhost-user-vsock device and no vhost-device-vsock: a guest that can migrate and be
    /// saved (QEMU 7.2 refuses both with vhost-user-vsock, MIGRATION.md). Its guest agent and
    /// tools then reach the host over virtio-serial channels only.
    pub fn without_vsock(mut self) -> VmConfig {
        self.vsock = false;
        self
    }

    /// Whether the guest gets a vsock device.
    pub fn has_vsock(&self) -> bool {
        self.vsock
    }

    /// Guest RAM. 96–128 MiB is enough for the rig's image; 64 MiB is not.
    pub fn memory_mib(mut self, mib: u32) -> VmConfig {
        self.memory_mib = mib;
        self
    }

    pub fn vcpus(mut self, n: u32) -> VmConfig {
        self.vcpus = n;
        self
    }

    /// Appends one kernel argument, e.g. `appmon.demo="heartbeat 5"` or
    /// `appmon.skip=appmon-guest`. Guest programs read them from /proc/cmdline.
    pub fn cmdline_arg(mut self, arg: impl Into<String>) -> VmConfig {
        self.cmdline_args.push(arg.into());
        self
    }

    pub fn on_reboot(mut self, on_reboot: OnReboot) -> VmConfig {
        self.on_reboot = on_reboot;
        self
    }

    pub fn watchdog(mut self, action: WatchdogAction) -> VmConfig {
        self.watchdog = action;
        self
    }

    /// Raw XML for the domain's `<metadata>` (e.g. the host agent's monitoring policy).
    pub fn metadata_xml(mut self, xml: impl Into<String>) -> VmConfig {
        self.metadata_xml = xml.into();
        self
    }

    /// Raw XML appended to `<devices>` (e.g. a virtio-serial `<channel>`).
    pub fn extra_devices_xml(mut self, xml: impl Into<String>) -> VmConfig {
        self.extra_devices_xml = xml.into();
        self
    }

    /// A different kernel than the rig's (the Debian guest boots its own).
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> VmConfig {
        self.kernel = Some(path.into());
        self
    }

    /// A different initramfs than the rig's image.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> VmConfig {
        self.initrd = Some(path.into());
        self
    }

    /// Adds (or replaces) a file in the guest, mode 0644. No image rebuild: it travels in an
    /// extra cpio archive appended to the image.
    pub fn guest_file(self, path: &str, contents: impl Into<Vec<u8>>) -> VmConfig {
        self.guest_file_mode(path, 0o644, contents)
    }

    /// Adds an executable to the guest, mode 0755. Scripts in /etc/appmon/init.d/ are started by
    /// /init like the guest programs, in a respawn loop with their output on the console.
    pub fn guest_script(self, path: &str, contents: impl Into<Vec<u8>>) -> VmConfig {
        self.guest_file_mode(path, 0o755, contents)
    }

    /// The guest agent's configuration, /etc/appmon/guest.toml.
    pub fn guest_config(self, toml: impl Into<Vec<u8>>) -> VmConfig {
        self.guest_file("/etc/appmon/guest.toml", toml)
    }

    fn guest_file_mode(mut self, path: &str, mode: u32, contents: impl Into<Vec<u8>>) -> VmConfig {
        self.guest_files.push(GuestFile {
            path: path.to_owned(),
            mode,
            contents: contents.into(),
        });
        self
    }

    /// The full kernel command line.
    pub fn cmdline(&self) -> String {
        let mut s = BASE_CMDLINE.to_owned();
        for a in &self.cmdline_args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// How long a boot took, from just before `virsh start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimes {
    /// Until `virsh start` returned.
    pub virsh_start: Duration,
    /// Until /init printed `APPMON-INIT`.
    pub init: Duration,
    /// Until /init printed `APPMON-GUEST-READY`.
    pub ready: Duration,
}

/// One test guest. See the module docs for its lifecycle.
#[derive(Debug)]
pub struct TestVm {
    rig: Rig,
    config: VmConfig,
    name: String,
    dir: PathBuf,
    backend: Option<Child>,
    defined: bool,
    /// The libvirtd the domain is on: the rig's, or after a migration another one's.
    uri: Mutex<String>,
    /// Logs of other processes of the test (the host agent) whose tails go into every failure
    /// message: (label, path).
    attached_logs: Mutex<Vec<(String, PathBuf)>>,
}

impl TestVm {
    /// Prepares a guest: directory, vsock backend, defined (not started) domain.
    pub fn new(config: VmConfig) -> TestVm {
        TestVm::new_on(config, LIBVIRT_URI)
    }

    /// [`TestVm::new`] with the domain defined on the libvirtd at `uri` (one of the two-host
    /// harness's daemons).
    pub fn new_on(config: VmConfig, uri: &str) -> TestVm {
        let mut vm = TestVm::prepared(config, uri);
        vm.define();
        vm
    }

    /// A guest that a cluster starts: its directory and domain XML file (`domain.xml`, the
    /// resource's `config=`) are written, the domain is defined nowhere (the cluster's
    /// VirtualDomain creates it transient). `uri`: the libvirtd the harness asks about the
    /// domain until told another ([`TestVm::set_uri`]).
    pub fn for_cluster(config: VmConfig, uri: &str) -> TestVm {
        let mut vm = TestVm::prepared(config, uri);
        vm.write_xml();
        vm
    }

    /// Its directory and, unless someone else serves its vsock, its backend.
    fn prepared(config: VmConfig, uri: &str) -> TestVm {
        let rig = Rig::require();
        sweep_once(&rig);

        let pid = std::process::id();
        let id = next_instance();
        let name = format!(
            "{DOMAIN_PREFIX}{}-{pid}-{id}",
            short_name(&config.test_name)
        );
        let dir = rig.tests_dir().join(format!("{pid}-{id}"));
        let mut vm = TestVm {
            rig,
            config,
            name,
            dir,
            backend: None,
            defined: false,
            uri: Mutex::new(uri.to_owned()),
            attached_logs: Mutex::new(Vec::new()),
        };
        vm.prepare_dir();
        if vm.config.vsock && vm.config.vsock_dir.is_none() {
            vm.start_backend();
        }
        vm
    }

    /// [`TestVm::new`], then starts the guest and waits for its ready marker; prints the times.
    pub fn boot(config: VmConfig) -> TestVm {
        let vm = TestVm::new(config);
        vm.start_measured(DEFAULT_BOOT_TIMEOUT);
        vm
    }

    /// The domain name (`appmon-t-<test>-<pid>-<n>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test's own directory (console log, sockets, backend log, domain XML).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn rig(&self) -> &Rig {
        &self.rig
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The libvirt URI of the daemon the domain is on now.
    pub fn uri(&self) -> String {
        self.uri
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Tells the harness that the domain is now on the libvirtd at `uri` (after a migration).
    pub fn set_uri(&self, uri: &str) {
        *self
            .uri
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = uri.to_owned();
    }

    /// vhost-device-vsock's `--uds-path`: host → guest connections, and the prefix of the
    /// `<path>_<port>` listeners that receive guest → host connections. (With
    /// [`VmConfig::vsock_served_in`], the path as the nodes see it.)
    pub fn vsock_uds(&self) -> PathBuf {
        self.vsock_dir().join(VSOCK_UDS)
    }

    /// vhost-device-vsock's vhost-user `--socket`, which QEMU connects to.
    pub fn vhost_user_socket(&self) -> PathBuf {
        self.vsock_dir().join(VHOST_USER_SOCKET)
    }

    fn vsock_dir(&self) -> &Path {
        self.config.vsock_dir.as_deref().unwrap_or(&self.dir)
    }

    /// The serial console log file.
    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The pid of this guest's vhost-device-vsock.
    pub fn backend_pid(&self) -> Option<u32> {
        self.backend.as_ref().map(Child::id)
    }

    // --- lifecycle ------------------------------------------------------------------------------

    /// `virsh start`.
    pub fn start(&self) {
        self.virsh_ok(&["start", &self.name]);
    }

    /// Starts the guest and waits for `APPMON-INIT` and `APPMON-GUEST-READY` of this boot.
    pub fn start_measured(&self, timeout: Duration) -> BootTimes {
        let mark = self.console_mark();
        let t0 = Instant::now();
        self.start();
        let virsh_start = t0.elapsed();
        self.wait_for_marker(mark, INIT, timeout);
        let init = t0.elapsed();
        self.wait_for_marker(mark, GUEST_READY, timeout.saturating_sub(init));
        let ready = t0.elapsed();
        let times = BootTimes {
            virsh_start,
            init,
            ready,
        };
        eprintln!(
            "{}: boot: virsh start returned after {:.2}s, {INIT} after {:.2}s, {GUEST_READY} after {:.2}s",
            self.name,
            virsh_start.as_secs_f64(),
            init.as_secs_f64(),
            ready.as_secs_f64()
        );
        times
    }

    /// Waits for the next `APPMON-GUEST-READY` after `mark` (e.g. after a reset) and returns how
    /// long that took.
    pub fn wait_ready_since(&self, mark: ConsoleMark, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        self.wait_for_marker(mark, GUEST_READY, timeout);
        t0.elapsed()
    }

    /// `virsh destroy` (hard power off).
    pub fn destroy(&self) {
        self.virsh_ok(&["destroy", &self.name]);
    }

    /// `virsh reset` (reset button, inside the running QEMU).
    pub fn reset(&self) {
        self.virsh_ok(&["reset", &self.name]);
    }

    /// `virsh reboot` (libvirt's default: ACPI power button and restart when the guest stops).
    pub fn reboot(&self) {
        self.virsh_ok(&["reboot", &self.name]);
    }

    /// `virsh shutdown` (ACPI power button; the image's acpid powers off).
    pub fn shutdown(&self) {
        self.virsh_ok(&["shutdown", &self.name]);
    }

    /// Destroy (if running) and start: the reset that also reconnects QEMU to the vsock
    /// backend, robust against vhost-device-vsock 0.3.0 wedging on in-process resets.
    pub fn power_cycle(&self) {
        if self.state() != DomainState::ShutOff {
            self.destroy();
        }
        self.start();
    }

    /// `virsh domstate`.
    pub fn state(&self) -> DomainState {
        DomainState::parse(&self.virsh_ok(&["domstate", &self.name]))
    }

    /// Waits until the domain is in `state`.
    pub fn wait_for_state(&self, state: DomainState, timeout: Duration) -> Duration {
        self.wait_until(timeout, &format!("domain state {state}"), || {
            self.virsh(&["domstate", &self.name])
                .is_ok_and(|s| DomainState::parse(&s) == state)
        })
    }

    /// `virsh dumpxml` of the live (or defined) domain.
    pub fn domain_xml(&self) -> String {
        self.virsh_ok(&["dumpxml", &self.name])
    }

    /// The host-side socket of the virtio-serial channel `name`, from the live XML (libvirt
    /// generates it when the channel names no path; it changes with every start and
    /// migration). The path is as the domain's libvirtd sees it.
    pub fn channel_socket(&self, name: &str) -> Option<PathBuf> {
        let xml = self.virsh(&["dumpxml", &self.name]).ok()?;
        appmon_libvirt_backend::domxml::channel_socket_path(&xml, name)
            .ok()
            .flatten()
    }

    // --- console --------------------------------------------------------------------------------

    /// The whole console log so far (all boots).
    pub fn console(&self) -> String {
        console::read_console(&self.console_path()).unwrap_or_else(|e| {
            format!(
                "<cannot read console log {}: {e}>",
                self.console_path().display()
            )
        })
    }

    /// The current end of the console log; pass it to the `*_since` waits to ignore older boots.
    pub fn console_mark(&self) -> ConsoleMark {
        ConsoleMark(fs::metadata(self.console_path()).map_or(0, |m| m.len()))
    }

    /// The console text past `mark`.
    pub fn console_since(&self, mark: ConsoleMark) -> String {
        console::since(&self.console(), mark).to_owned()
    }

    /// The last `lines` lines of the console.
    pub fn console_tail(&self, lines: usize) -> String {
        console::tail(&self.console(), lines).to_owned()
    }

    /// Waits for a marker line (`MARKER` or `MARKER key=value…` at the start of a line) past
    /// `mark` and returns the line.
    pub fn wait_for_marker(&self, mark: ConsoleMark, marker: &str, timeout: Duration) -> String {
        self.wait_for(timeout, &format!("console marker {marker}"), || {
            let text = self.console();
            let line = console::marker_lines(console::since(&text, mark), marker)
                .next()
                .map(str::to_owned);
            line
        })
    }

    /// Waits for any console line past `mark` that contains `needle` and returns the line.
    pub fn wait_for_console_line(
        &self,
        mark: ConsoleMark,
        needle: &str,
        timeout: Duration,
    ) -> String {
        self.wait_for(
            timeout,
            &format!("a console line containing {needle:?}"),
            || {
                let text = self.console();
                console::since(&text, mark)
                    .lines()
                    .find(|l| l.contains(needle))
                    .map(str::to_owned)
            },
        )
    }

    /// How many marker lines the console holds in all (e.g. boots: `markers::INIT`).
    pub fn marker_count(&self, marker: &str) -> usize {
        console::marker_lines(&self.console(), marker).count()
    }

    /// The boot ids of all boots so far, in order.
    pub fn boot_ids(&self) -> Vec<String> {
        let text = self.console();
        console::marker_lines(&text, INIT)
            .filter_map(|l| console::field(l, "boot_id"))
            .map(str::to_owned)
            .collect()
    }

    // --- vsock ----------------------------------------------------------------------------------

    /// One host → guest connection attempt to guest `port`.
    pub fn try_connect(&self, port: u32) -> Result<UnixStream, HybridConnectError> {
        hybrid_connect(&self.vsock_uds(), port)
    }

    /// Connects to guest `port`, retrying until `timeout` (the guest program may not listen yet).
    pub fn connect(&self, port: u32, timeout: Duration) -> UnixStream {
        let mut last: Option<HybridConnectError> = None;
        let res = wait_for(
            timeout,
            &format!("a vsock connection to guest port {port}"),
            || match self.try_connect(port) {
                Ok(s) => Some(s),
                Err(e) => {
                    last = Some(e);
                    None
                }
            },
        );
        match res {
            Ok(s) => s,
            Err(t) => match last {
                Some(e) => self.fail(format!("{t}; last attempt: {}", error_chain(&e))),
                None => self.fail(t),
            },
        }
    }

    /// A listener for guest → host connections to host port `port` (the guest dials CID 2).
    pub fn listen_guest_port(&self, port: u32) -> UnixListener {
        let path = PathBuf::from(format!("{}_{port}", self.vsock_uds().display()));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => self.fail(format!("cannot remove old socket {}: {e}", path.display())),
        }
        UnixListener::bind(&path)
            .unwrap_or_else(|e| self.fail(format!("cannot listen on {}: {e}", path.display())))
    }

    // --- waiting and failing --------------------------------------------------------------------

    /// Bounded wait for `cond`; on timeout the test fails with the guest's console and logs.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl FnMut() -> bool,
    ) -> Duration {
        wait_until(timeout, what, cond).unwrap_or_else(|e| self.fail(e))
    }

    /// Bounded wait for `cond` to yield a value; on timeout the test fails with diagnostics.
    pub fn wait_for<T>(&self, timeout: Duration, what: &str, cond: impl FnMut() -> Option<T>) -> T {
        wait_for(timeout, what, cond).unwrap_or_else(|e| self.fail(e))
    }

    /// Checks `check` all through `duration` ("nothing happens for this long"); the first
    /// violation fails the test with diagnostics. Returns how many checks ran.
    pub fn hold_for(
        &self,
        duration: Duration,
        what: &str,
        check: impl FnMut() -> Result<(), String>,
    ) -> u32 {
        hold_for(duration, what, check).unwrap_or_else(|e| self.fail(e))
    }

    /// Fails the test: panics with `msg`, the console tail, and the backend's and QEMU's logs.
    pub fn fail(&self, msg: impl Display) -> ! {
        panic!("{}: {msg}\n{}", self.name, self.diagnostics())
    }

    /// The console tail and log tails that every failure message carries.
    pub fn diagnostics(&self) -> String {
        let qemu_log = qemu_log_path(&self.name);
        let mut text = format!(
            "--- guest console, last {CONSOLE_TAIL_LINES} lines ({}) ---\n{}\n\
             --- vhost-device-vsock log, last {LOG_TAIL_LINES} lines ---\n{}\n\
             --- QEMU log, last {LOG_TAIL_LINES} lines ({}) ---\n{}\n",
            self.console_path().display(),
            self.console_tail(CONSOLE_TAIL_LINES),
            file_tail(&self.backend_log_path(), LOG_TAIL_LINES),
            qemu_log.display(),
            file_tail(&qemu_log, LOG_TAIL_LINES),
        );
        for (label, path) in self.attached_logs() {
            text.push_str(&format!(
                "--- {label} log, last {ATTACHED_LOG_TAIL_LINES} lines ({}) ---\n{}\n",
                path.display(),
                file_tail(&path, ATTACHED_LOG_TAIL_LINES)
            ));
        }
        text.push_str("--- end ---");
        text
    }

    /// Adds a log whose tail goes into every failure message of this guest (and which is kept
    /// with the guest's logs when the test fails), e.g. the host agent's.
    pub fn attach_log(&self, label: &str, path: &Path) {
        let mut logs = self
            .attached_logs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !logs.iter().any(|(_, p)| p == path) {
            logs.push((label.to_owned(), path.to_path_buf()));
        }
    }

    fn attached_logs(&self) -> Vec<(String, PathBuf)> {
        self.attached_logs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Runs `virsh ARGS`; fails the test (with diagnostics) if it fails.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        self.virsh(args).unwrap_or_else(|e| self.fail(e))
    }

    /// Runs `virsh ARGS` and returns the result, for tests that expect failures.
    pub fn virsh(&self, args: &[&str]) -> Result<String, VirshError> {
        virsh_on(&self.uri(), args)
    }

    // --- setup and teardown ---------------------------------------------------------------------

    fn backend_log_path(&self) -> PathBuf {
        self.dir.join(BACKEND_LOG)
    }

    fn prepare_dir(&mut self) {
        // A leftover with this very name can only come from a dead process whose pid we now
        // have again: this process has not used this counter yet.
        if let Ok(out) = self.virsh(&["domstate", &self.name]) {
            eprintln!(
                "vm-tests: removing stale domain {} ({})",
                self.name,
                out.trim()
            );
            if let Err(e) = self.remove_domain() {
                self.fail(e);
            }
        }
        if self.dir.exists() {
            let mut report = sweep::SweepReport::default();
            sweep_dir(&self.dir, &mut report);
            if let Some(e) = report.errors.first() {
                self.fail(format!("cannot clear stale test directory: {e}"));
            }
        }
        if let Err(e) = fs::create_dir_all(&self.dir) {
            self.fail(format!(
                "cannot create test directory {}: {e}",
                self.dir.display()
            ));
        }
    }

    fn start_backend(&mut self) {
        match spawn_backend(&self.rig, &self.dir) {
            Ok(child) => self.backend = Some(child),
            Err(e) => self.fail(e),
        }
    }

    fn define(&mut self) {
        let xml_path = self.write_xml();
        let xml_arg = xml_path.to_string_lossy().into_owned();
        self.virsh_ok(&["define", &xml_arg]);
        self.defined = true;
    }

    /// Writes the domain XML to `domain.xml` in the guest's directory; returns its path.
    fn write_xml(&mut self) -> PathBuf {
        let mut initrd = self
            .config
            .initrd
            .clone()
            .unwrap_or_else(|| self.rig.initrd.clone());
        if !self.config.guest_files.is_empty() {
            let own = self.dir.join("initrd.img");
            if let Err(e) = write_with_extra_files(&initrd, &self.config.guest_files, &own) {
                self.fail(format!(
                    "cannot write {} from {} and the test's guest files: {e}",
                    own.display(),
                    initrd.display()
                ));
            }
            initrd = own;
        }
        let uuid = self.config.uuid_in_xml.then(|| {
            fs::read_to_string("/proc/sys/kernel/random/uuid")
                .map(|u| u.trim().to_owned())
                .unwrap_or_else(|e| self.fail(format!("cannot make a UUID: {e}")))
        });
        let spec = DomainSpec {
            uuid,
            name: self.name.clone(),
            memory_mib: self.config.memory_mib,
            vcpus: self.config.vcpus,
            kernel: self
                .config
                .kernel
                .clone()
                .unwrap_or_else(|| self.rig.kernel.clone()),
            initrd,
            cmdline: self.config.cmdline(),
            on_reboot: self.config.on_reboot,
            watchdog: self.config.watchdog,
            console_log: self.console_path(),
            vhost_user_socket: self.config.vsock.then(|| self.vhost_user_socket()),
            metadata_xml: self.config.metadata_xml.clone(),
            extra_devices_xml: self.config.extra_devices_xml.clone(),
        };
        let xml_path = self.dir.join("domain.xml");
        if let Err(e) = fs::write(&xml_path, spec.to_xml()) {
            self.fail(format!("cannot write {}: {e}", xml_path.display()));
        }
        xml_path
    }

    fn remove_domain(&self) -> Result<(), String> {
        let uri = self.uri();
        if uri == LIBVIRT_URI {
            remove_domain(&self.name)
        } else {
            remove_domain_on(&uri, &self.name)
        }
    }

    /// Copies the console and logs of a failed test where they outlive the test directory.
    fn keep_logs(&self) -> Option<PathBuf> {
        let dest = self.rig.kept_logs_dir().join(&self.name);
        fs::create_dir_all(&dest).ok()?;
        let files = [
            self.console_path(),
            self.backend_log_path(),
            self.dir.join("domain.xml"),
            qemu_log_path(&self.name),
        ];
        for f in files {
            if let Some(name) = f.file_name() {
                let _ = fs::copy(&f, dest.join(name));
            }
        }
        for (label, f) in self.attached_logs() {
            let _ = fs::copy(&f, dest.join(format!("{label}.log")));
        }
        Some(dest)
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        // No panics in here: a panic while the test is already unwinding aborts the process and
        // would skip the rest of the cleanup. Problems are reported on stderr instead.
        let keep = thread::panicking() || std::env::var_os("APPMON_VM_KEEP_LOGS").is_some();
        if keep {
            if let Some(dest) = self.keep_logs() {
                eprintln!("{}: logs kept in {}", self.name, dest.display());
            }
        }
        if self.defined {
            match self.remove_domain() {
                Ok(()) => self.defined = false,
                Err(e) => eprintln!("{}: cleanup: {e}", self.name),
            }
        }
        if let Some(mut child) = self.backend.take() {
            let pid = child.id();
            if let Err(e) = child.kill() {
                eprintln!(
                    "{}: cleanup: cannot kill vhost-device-vsock pid {pid}: {e}",
                    self.name
                );
            }
            if let Err(e) = child.wait() {
                eprintln!(
                    "{}: cleanup: cannot reap vhost-device-vsock pid {pid}: {e}",
                    self.name
                );
            }
        }
        if self.defined {
            // The domain could not be removed; keep its directory for the next sweep, which
            // needs the recorded pid, and for whoever investigates.
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!(
                    "{}: cleanup: cannot remove {}: {e}",
                    self.name,
                    self.dir.display()
                );
            }
        }
    }
}

/// Starts vhost-device-vsock for a guest with its sockets, log and pid file in `dir`
/// ([`VHOST_USER_SOCKET`], [`VSOCK_UDS`], [`BACKEND_PID_FILE`]: what the sweep looks for) and
/// waits for its vhost-user socket. On an error the process is killed and reaped.
fn spawn_backend(rig: &Rig, dir: &Path) -> Result<Child, String> {
    let log_path = dir.join(BACKEND_LOG);
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot duplicate the backend log handle: {e}"))?;
    let vhu = dir.join(VHOST_USER_SOCKET);
    let mut child = Command::new(&rig.vhost_device_vsock)
        .arg("--guest-cid")
        .arg(GUEST_CID.to_string())
        .arg("--socket")
        .arg(&vhu)
        .arg("--uds-path")
        .arg(dir.join(VSOCK_UDS))
        .env(
            "RUST_LOG",
            std::env::var("APPMON_VDV_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", rig.vhost_device_vsock.display()))?;
    // Recorded so a later sweep can stop it if this process dies without unwinding.
    let started = fs::write(dir.join(BACKEND_PID_FILE), format!("{}\n", child.id()))
        .map_err(|e| format!("cannot record the backend pid in {}: {e}", dir.display()))
        .and_then(|()| {
            let waited = wait_for(
                BACKEND_READY_TIMEOUT,
                "vhost-device-vsock to create its socket",
                || {
                    if vhu.exists() {
                        return Some(Ok(()));
                    }
                    match child.try_wait() {
                        Ok(Some(status)) => {
                            Some(Err(format!("vhost-device-vsock exited: {status}")))
                        }
                        _ => None,
                    }
                },
            );
            match waited {
                Ok(r) => r,
                Err(e) => Err(e.to_string()),
            }
        });
    match started {
        Ok(()) => Ok(child),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// A second vhost-device-vsock for a guest, in a test directory of its own: the destination
/// host's backend when a guest with vsock migrates ([`crate::TwoHosts::migrate_vsock`]).
/// Dropping it kills and reaps the process and removes the directory; a killed test process's
/// backend is stopped by the next sweep, as a [`TestVm`]'s is.
#[derive(Debug)]
pub struct VsockBackend {
    dir: PathBuf,
    child: Option<Child>,
}

impl VsockBackend {
    /// Starts one in a fresh test directory; panics with what went wrong.
    pub fn start(rig: &Rig) -> VsockBackend {
        sweep_once(rig);
        let dir = rig
            .tests_dir()
            .join(format!("{}-{}", std::process::id(), next_instance()));
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        let mut backend = VsockBackend { dir, child: None };
        match spawn_backend(rig, &backend.dir) {
            Ok(child) => backend.child = Some(child),
            Err(e) => panic!("{e}"),
        }
        backend
    }

    /// Its `--uds-path` (see [`TestVm::vsock_uds`]).
    pub fn vsock_uds(&self) -> PathBuf {
        self.dir.join(VSOCK_UDS)
    }

    /// Its vhost-user `--socket`, which QEMU connects to.
    pub fn vhost_user_socket(&self) -> PathBuf {
        self.dir.join(VHOST_USER_SOCKET)
    }

    /// Its log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(BACKEND_LOG)
    }
}

impl Drop for VsockBackend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            if let Err(e) = child.kill() {
                eprintln!("cleanup: cannot kill vhost-device-vsock pid {pid}: {e}");
            }
            if let Err(e) = child.wait() {
                eprintln!("cleanup: cannot reap vhost-device-vsock pid {pid}: {e}");
                return;
            }
        }
        if thread::panicking() {
            let dest = Rig::from_env()
                .kept_logs_dir()
                .join(self.dir.file_name().unwrap_or_default());
            if fs::create_dir_all(&dest).is_ok() {
                let _ = fs::copy(self.log_path(), dest.join(BACKEND_LOG));
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("cleanup: cannot remove {}: {e}", self.dir.display());
            }
        }
    }
}

/// Lower-case letters, digits and single dashes, at most 24 characters.
fn short_name(test_name: &str) -> String {
    let mut s = String::new();
    for c in test_name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
        if s.len() >= 24 {
            break;
        }
    }
    let s = s.trim_end_matches('-');
    if s.is_empty() {
        "vm".to_owned()
    } else {
        s.to_owned()
    }
}

fn qemu_log_path(domain: &str) -> PathBuf {
    Path::new(QEMU_LOG_DIR).join(format!("{domain}.log"))
}

fn file_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(b) => console::tail(&String::from_utf8_lossy(&b), lines).to_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_name_keeps_domain_names_tame() {
        assert_eq!(short_name("boot"), "boot");
        assert_eq!(short_name("Echo Round_Trip!"), "echo-round-trip");
        assert_eq!(short_name("--"), "vm");
        assert_eq!(
            short_name("a_very_long_test_name_that_goes_on_and_on"),
            "a-very-long-test-name-th"
        );
    }

    #[test]
    fn cmdline_appends_test_arguments_to_the_base() {
        let c = VmConfig::new("x")
            .cmdline_arg("appmon.demo=\"beat 5\"")
            .cmdline_arg("appmon.skip=appmon-guest");
        assert_eq!(
            c.cmdline(),
            "console=ttyS0 panic=-1 quiet appmon.demo=\"beat 5\" appmon.skip=appmon-guest"
        );
    }
}
