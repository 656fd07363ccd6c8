//! Test support over libvirt's test driver (cargo feature `testing`): real libvirt with a
//! simulated hypervisor, for the tests and benchmarks of this crate and of the host agent.
//!
//! - [`TestDomain`] and [`node_xml`]: domains as XML, for `virDomainDefineXML` or for a node
//!   file (`test:///<file>`, or through a daemon `test+unix:///<file>?socket=...`).
//! - [`TestDriver`]: a second connection of its own that changes domains the way an operator
//!   or another management tool would (define, start, suspend, resume, destroy, undefine), and
//!   records every event libvirt delivers to it with the instant it arrived. On
//!   `test:///default` every connection of one process shares one driver state, and events
//!   caused through one connection reach the callbacks of all of them.
//! - [`PrivateLibvirtd`]: a libvirtd of the caller's own that serves only the test driver on
//!   sockets in a temp dir: out-of-process libvirt as in production, with keepalive and close
//!   callbacks, a read-only socket, and a process that can be killed or stopped.
//!
//! Nothing here is used by a product build.

use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use virt::connect::Connect;
use virt::domain::Domain;

use crate::{BackendError, BackendEvent, DomainEvent, DomainRef, LibvirtError, MonitorSpec};
use crate::{Hypervisor, LibvirtHypervisor};

/// The namespace of the test driver's own elements in a node file (`<test:runstate>`, ...).
pub const TEST_NS: &str = "http://libvirt.org/schemas/domain/test/1.0";

/// libvirt's `VIR_DOMAIN_SHUTOFF`, as `<test:runstate>` of a node file.
const RUNSTATE_SHUTOFF: u32 = 5;

/// One domain of the test driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDomain {
    pub name: String,
    pub uuid: String,
    /// XML inside `<metadata>`, such as [`MonitorSpec::to_xml`].
    pub metadata: Option<String>,
    /// XML inside `<devices>`.
    pub devices: String,
    /// Node files only: shut off (`<test:runstate>`) when false. A defined domain is shut off
    /// until started.
    pub running: bool,
    /// Node files only (`<test:transient/>`).
    pub transient: bool,
}

impl TestDomain {
    /// A running, persistent domain without metadata or devices.
    pub fn new(name: impl Into<String>, uuid: impl Into<String>) -> Self {
        TestDomain {
            name: name.into(),
            uuid: uuid.into(),
            metadata: None,
            devices: String::new(),
            running: true,
            transient: false,
        }
    }

    /// With `spec` as its `<appmon:monitor>` metadata element.
    pub fn with_spec(mut self, spec: &MonitorSpec) -> Self {
        self.metadata = Some(spec.to_xml());
        self
    }

    /// The domain XML (with the test driver's elements, which a define ignores).
    pub fn xml(&self) -> String {
        let metadata = self
            .metadata
            .as_ref()
            .map(|m| format!("<metadata>{m}</metadata>"))
            .unwrap_or_default();
        let runstate = if self.running {
            String::new()
        } else {
            format!("<test:runstate>{RUNSTATE_SHUTOFF}</test:runstate>")
        };
        let transient = if self.transient {
            "<test:transient/>"
        } else {
            ""
        };
        format!(
            "<domain type='test' xmlns:test='{TEST_NS}'><name>{}</name><uuid>{}</uuid>{metadata}\
             <memory>65536</memory><os><type>hvm</type></os><devices>{}</devices>\
             {runstate}{transient}</domain>",
            self.name, self.uuid, self.devices
        )
    }

    pub fn domain_ref(&self) -> DomainRef {
        DomainRef {
            uuid: self.uuid.clone(),
            name: self.name.clone(),
        }
    }
}

/// A node file holding `domains`: `test:///<file>` opens a private copy of it per connection.
pub fn node_xml(domains: &[TestDomain]) -> String {
    let body: String = domains.iter().map(TestDomain::xml).collect();
    format!("<node>{body}</node>")
}

/// An event as a [`TestDriver`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEvent {
    /// When it came off the backend's channel.
    pub at: Instant,
    pub event: BackendEvent,
}

impl SeenEvent {
    /// The domain event, if it is one about the domain named `name`.
    pub fn of(&self, name: &str) -> Option<DomainEvent> {
        match &self.event {
            BackendEvent::Domain { domain, event } if domain.name == name => Some(*event),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct EventLog {
    seen: Mutex<Vec<SeenEvent>>,
    grew: Condvar,
}

impl EventLog {
    fn lock(&self) -> MutexGuard<'_, Vec<SeenEvent>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// See the module documentation. Its methods block; on a `test:///` URI they take
/// microseconds, through a daemon a round trip.
#[derive(Debug)]
pub struct TestDriver {
    hv: LibvirtHypervisor,
    log: Arc<EventLog>,
}

impl TestDriver {
    /// Connects to `uri` through [`LibvirtHypervisor`] (which starts libvirt's event loop
    /// first, as every connection of a process must come after it).
    pub fn open(uri: &str) -> Result<TestDriver, BackendError> {
        let (hv, mut rx) = LibvirtHypervisor::open(uri)?;
        let log = Arc::new(EventLog::default());
        let sink = log.clone();
        std::thread::Builder::new()
            .name("test-driver-events".into())
            // Ends when the hypervisor, and with it the channel, is dropped.
            .spawn(move || {
                while let Some(event) = rx.blocking_recv() {
                    sink.lock().push(SeenEvent {
                        at: Instant::now(),
                        event,
                    });
                    sink.grew.notify_all();
                }
            })
            .map_err(|source| BackendError::Thread { source })?;
        Ok(TestDriver { hv, log })
    }

    /// This connection as the host agent sees libvirt: listing, lookups, reset, metadata.
    pub fn hypervisor(&self) -> &LibvirtHypervisor {
        &self.hv
    }

    fn conn(&self) -> Result<Connect, BackendError> {
        self.hv.connection()
    }

    fn lookup(&self, domain: &DomainRef) -> Result<Domain, BackendError> {
        self.conn()?
            .lookup_domain_by_uuid_string(&domain.uuid)
            .map_err(|e| failed("lookup", &domain.name, &e))
    }

    /// Defines `domain` (persistent, shut off): virDomainDefineXML.
    pub fn define(&self, domain: &TestDomain) -> Result<DomainRef, BackendError> {
        self.conn()?
            .define_domain_xml(&domain.xml())
            .map_err(|e| failed("define", &domain.name, &e))?;
        Ok(domain.domain_ref())
    }

    /// Defines `domain` and starts it.
    pub fn define_running(&self, domain: &TestDomain) -> Result<DomainRef, BackendError> {
        let found = self.define(domain)?;
        self.start(&found)?;
        Ok(found)
    }

    /// Starts `domain` as a transient domain (gone once stopped): virDomainCreateXML.
    pub fn create_transient(&self, domain: &TestDomain) -> Result<DomainRef, BackendError> {
        self.conn()?
            .create_domain_xml(&domain.xml(), 0)
            .map_err(|e| failed("create", &domain.name, &e))?;
        Ok(domain.domain_ref())
    }

    /// virDomainCreate.
    pub fn start(&self, domain: &DomainRef) -> Result<(), BackendError> {
        self.lookup(domain)?
            .create()
            .map_err(|e| failed("start", &domain.name, &e))
    }

    /// virDomainSuspend.
    pub fn suspend(&self, domain: &DomainRef) -> Result<(), BackendError> {
        self.lookup(domain)?
            .suspend()
            .map_err(|e| failed("suspend", &domain.name, &e))
    }

    /// virDomainResume.
    pub fn resume(&self, domain: &DomainRef) -> Result<(), BackendError> {
        self.lookup(domain)?
            .resume()
            .map_err(|e| failed("resume", &domain.name, &e))
    }

    /// virDomainDestroy.
    pub fn destroy(&self, domain: &DomainRef) -> Result<(), BackendError> {
        self.lookup(domain)?
            .destroy()
            .map_err(|e| failed("destroy", &domain.name, &e))
    }

    /// virDomainUndefine.
    pub fn undefine(&self, domain: &DomainRef) -> Result<(), BackendError> {
        self.lookup(domain)?
            .undefine()
            .map_err(|e| failed("undefine", &domain.name, &e))
    }

    /// Every event this connection has received so far, oldest first.
    pub fn events(&self) -> Vec<SeenEvent> {
        self.log.lock().clone()
    }

    /// The events about the domain named `name`, with when they arrived.
    pub fn events_of(&self, name: &str) -> Vec<(Instant, DomainEvent)> {
        self.log
            .lock()
            .iter()
            .filter_map(|s| s.of(name).map(|e| (s.at, e)))
            .collect()
    }

    /// Waits until `pred` holds for the events received so far, or `limit` passes; returns
    /// them either way.
    pub fn wait_events(
        &self,
        limit: Duration,
        pred: impl Fn(&[SeenEvent]) -> bool,
    ) -> Vec<SeenEvent> {
        let deadline = Instant::now() + limit;
        let mut seen = self.log.lock();
        loop {
            if pred(&seen) {
                return seen.clone();
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return seen.clone();
            };
            seen = match self.log.grew.wait_timeout(seen, left) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Whether the domain named `name` is listed by libvirt.
    pub fn exists(&self, name: &str) -> Result<bool, BackendError> {
        match self.hv.domain(name) {
            Ok(_) => Ok(true),
            Err(BackendError::NoSuchDomain { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn failed(operation: &'static str, domain: &str, e: &virt::error::Error) -> BackendError {
    BackendError::Operation {
        operation,
        domain: domain.to_string(),
        source: LibvirtError::from_virt(e),
    }
}

/// How long a freshly started libvirtd may take to listen.
const LIBVIRTD_START: Duration = Duration::from_secs(10);

/// A libvirtd of our own: no drivers loaded (an empty `LIBVIRT_DRIVER_DIR`), so it serves only
/// the test driver built into libvirt, on sockets in a temp dir, without authentication; nothing
/// of a system libvirtd is touched. Killed by pid (SIGKILL) and reaped on drop, also when a
/// test fails.
#[derive(Debug)]
pub struct PrivateLibvirtd {
    dir: TempDir,
    child: Option<Child>,
}

impl PrivateLibvirtd {
    /// Writes its configuration into a new temp dir and starts it.
    pub fn start() -> io::Result<PrivateLibvirtd> {
        let dir = tempfile::tempdir()?;
        fs::create_dir(dir.path().join("drivers"))?;
        fs::write(
            dir.path().join("libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{d}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
                 listen_tcp = 0\nlisten_tls = 0\nlog_outputs = \"3:file:{d}/libvirtd.log\"\n",
                d = dir.path().display()
            ),
        )?;
        let mut daemon = PrivateLibvirtd { dir, child: None };
        daemon.launch()?;
        Ok(daemon)
    }

    /// Its temp dir (configuration, sockets, logs); a good place for a node file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The read-write socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("libvirt-sock")
    }

    /// The read-only socket: listing, lookups and events work, changes are refused with
    /// VIR_ERR_OPERATION_DENIED.
    pub fn read_only_socket(&self) -> PathBuf {
        self.dir.path().join("libvirt-sock-ro")
    }

    /// The daemon's shared `test:///default` state, read-write. Every client of the daemon
    /// sees the same domains; they start over when the daemon does.
    pub fn uri(&self) -> String {
        format!("test+unix:///default?socket={}", self.socket().display())
    }

    /// `node` (a node file) through the daemon: each connection opens its own copy of the
    /// file's domains, so they are there again after the daemon restarts.
    pub fn node_uri(&self, node: &Path, read_only: bool) -> String {
        let socket = if read_only {
            self.read_only_socket()
        } else {
            self.socket()
        };
        format!("test+unix://{}?socket={}", node.display(), socket.display())
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the daemon (again) and waits until its socket answers.
    pub fn launch(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Err(io::Error::other("libvirtd is already running"));
        }
        let d = self.dir.path();
        let child = Command::new("libvirtd")
            .arg("-f")
            .arg(d.join("libvirtd.conf"))
            .arg("-p")
            .arg(d.join("libvirtd.pid"))
            .env("LIBVIRT_DRIVER_DIR", d.join("drivers"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(d.join("stdout"))?)
            .stderr(fs::File::create(d.join("stderr"))?)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("libvirtd (is libvirt-daemon installed?): {e}"),
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + LIBVIRTD_START;
        while UnixStream::connect(self.socket()).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(io::Error::other(format!(
                    "libvirtd exited with {status}: {}",
                    self.logs()
                )));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(io::Error::other(format!(
                    "libvirtd did not listen within {LIBVIRTD_START:?}: {}",
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL and reap: libvirtd gets no chance to say goodbye, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: libvirtd hangs, its sockets stay open. SIGCONT when the guard drops, also when
    /// a test fails.
    pub fn stop(&self) -> io::Result<StoppedLibvirtd> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("libvirtd is not running"))?;
        signal(pid, "-STOP")?;
        Ok(StoppedLibvirtd { pid })
    }

    /// Its stderr and log file, for failure messages.
    pub fn logs(&self) -> String {
        ["stderr", "libvirtd.log"]
            .iter()
            .map(|f| fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for PrivateLibvirtd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A stopped [`PrivateLibvirtd`]; continues it on drop.
#[derive(Debug)]
pub struct StoppedLibvirtd {
    pid: u32,
}

impl Drop for StoppedLibvirtd {
    fn drop(&mut self) {
        let _ = signal(self.pid, "-CONT");
    }
}

/// Signals our own child `pid` with kill(1).
fn signal(pid: u32, signal: &str) -> io::Result<()> {
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill {signal} {pid}: {status}")))
    }
}
