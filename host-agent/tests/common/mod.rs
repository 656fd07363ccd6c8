//! Test support: the host agent in-process against real libvirt (its test driver, shared by
//! every connection of this process as `test:///default`, or in a private libvirtd), a second
//! libvirt connection that drives the test's domains and records libvirt's events, and the
//! host agent's own decision record read through its control socket.
//!
//! Every test works in its own namespace: its domains are named `<prefix>-<name>` with a
//! random prefix and fresh UUIDs, and its host agent manages only `<prefix>-*`. So tests stay
//! apart on the shared `test:///default` also when `cargo test` runs them as threads of one
//! process.
#![allow(dead_code)]

pub use appmon_host_agent::testing as sim;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use appmon_control::{
    CountersDocument, CountersView, Decision, GuestEvent, ListDocument, SessionEnd, ShowDocument,
    VmView,
};
use appmon_host_agent::config::Config;
use appmon_host_agent::ctl;
use appmon_libvirt_backend::testing::{PrivateLibvirtd, TestDomain, TestDriver};
use appmon_libvirt_backend::{
    BackendEvent, DomainEvent, DomainRef, Hypervisor, LibvirtHypervisor, MonitorSpec, Transport,
};
use clap::Parser;
use tempfile::TempDir;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// libvirt's test driver in this process: one state shared by all its connections.
pub const IN_PROCESS: &str = "test:///default";

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Test timings: 1 s failure interval, no minimum uptime, fast keepalive and reconnects.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config {
        uri: IN_PROCESS.into(),
        state_dir: dir.join("state"),
        control_socket: dir.join("ctl.sock"),
        ping_interval: ms(200),
        hello_timeout: ms(500),
        channel_timeout: ms(1000),
        reconnect_max: ms(200),
        dial_after: ms(100),
        ..Config::default()
    };
    c.defaults.failure_interval = ms(1000);
    c.defaults.min_uptime = Duration::ZERO;
    c
}

pub fn hybrid_spec(path: &Path) -> MonitorSpec {
    MonitorSpec::with_transport(Transport::HybridVsock {
        path: path.to_path_buf(),
        port: 5315,
    })
}

/// One test's corner of libvirt: a temp dir, a name prefix, and a second connection to the
/// same libvirt as the host agent's.
pub struct Lab {
    pub dir: TempDir,
    pub prefix: String,
    /// What the host agent connects to.
    pub uri: String,
    /// The test's own connection: changes domains as an operator would, records events.
    pub driver: TestDriver,
    /// Declared last: dropped after the connections to it.
    pub libvirtd: Option<PrivateLibvirtd>,
}

impl Lab {
    /// On `test:///default` in this process.
    pub fn in_process(tag: &str) -> Lab {
        Lab::on(tag, IN_PROCESS.into(), None)
    }

    /// On the shared `test:///default` of a private libvirtd of this test's own: libvirt out
    /// of process, as in production.
    pub fn private_libvirtd(tag: &str) -> Lab {
        let daemon = PrivateLibvirtd::start().expect("private libvirtd");
        Lab::on(tag, daemon.uri(), Some(daemon))
    }

    fn on(tag: &str, uri: String, libvirtd: Option<PrivateLibvirtd>) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = TestDriver::open(&uri).expect("the test's libvirt connection");
        let random = uuid::Uuid::new_v4().simple().to_string();
        Lab {
            dir,
            prefix: format!("{tag}-{}", &random[..8]),
            uri,
            driver,
            libvirtd,
        }
    }

    /// The full domain name of `short`.
    pub fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// A Unix socket path in the test's dir.
    pub fn sock(&self, short: &str) -> PathBuf {
        self.dir.path().join(format!("{short}.vsock"))
    }

    /// A domain of this test with a fresh UUID and `spec` as its metadata.
    pub fn domain(&self, short: &str, spec: Option<&MonitorSpec>) -> TestDomain {
        let domain = TestDomain::new(self.name(short), uuid::Uuid::new_v4().to_string());
        match spec {
            Some(spec) => domain.with_spec(spec),
            None => domain,
        }
    }

    /// Defines and starts a domain through the test's own connection.
    pub fn running(&self, short: &str, spec: Option<&MonitorSpec>) -> DomainRef {
        self.running_domain(&self.domain(short, spec))
    }

    /// A running domain `short` monitored over hybrid vsock at `self.sock(short)`, where `guest`
    /// serves until the returned task is aborted (or dropped with the runtime).
    /// A running domain of hybrid-vsock transport whose guest agent the host dials (protocol
    /// 1: it never announces itself).
    pub fn dialed_guest_domain(
        &self,
        short: &str,
        guest: &sim::GuestSim,
    ) -> (JoinHandle<()>, DomainRef) {
        let path = self.sock(short);
        let serving = guest.listen(&path, true).expect("listen");
        let domain = self.running(short, Some(&hybrid_spec(&path)));
        (serving, domain)
    }

    /// A running domain of hybrid-vsock transport whose guest announces itself (protocol 2).
    pub fn guest_domain(&self, short: &str, guest: &sim::GuestSim) -> (JoinHandle<()>, DomainRef) {
        let path = self.sock(short);
        let serving = guest.announce(&path, 5315);
        let domain = self.running(short, Some(&hybrid_spec(&path)));
        (serving, domain)
    }

    /// Defines and starts `domain`, and returns once libvirt has announced its start: a host
    /// agent that connects afterwards finds it running, as one that starts long after its
    /// domains. (Events are dispatched after the call that caused them returns, to every
    /// callback registered by then: without the wait, a host agent connecting right away could
    /// list the domain running and then receive its start as news.)
    pub fn running_domain(&self, domain: &TestDomain) -> DomainRef {
        let found = self
            .driver
            .define_running(domain)
            .unwrap_or_else(|e| panic!("define and start {}: {e}", domain.name));
        let started = |seen: &[appmon_libvirt_backend::testing::SeenEvent]| {
            seen.iter()
                .any(|e| matches!(e.of(&domain.name), Some(DomainEvent::Started(_))))
        };
        let seen = self.driver.wait_events(ms(5000), started);
        assert!(
            started(&seen),
            "libvirt never announced the start of {}",
            domain.name
        );
        found
    }

    /// The test config on this lab's libvirt, managing only this test's domains.
    pub fn config(&self) -> Config {
        Config {
            uri: self.uri.clone(),
            domains: vec![format!("{}-*", self.prefix)],
            ..test_config(self.dir.path())
        }
    }

    /// Starts a host agent on `config` with its own libvirt connection to `config.uri`.
    pub async fn start_host(&self, config: Config) -> Host {
        let uri = config.uri.clone();
        let (hv, events) = tokio::task::spawn_blocking(move || LibvirtHypervisor::open(&uri))
            .await
            .expect("open task")
            .expect("the host agent's libvirt connection");
        Host::start_with(config, Arc::new(hv), events).await
    }

    /// libvirt's events about `short` as the test's connection received them.
    pub fn events_of(&self, short: &str) -> Vec<appmon_libvirt_backend::DomainEvent> {
        self.driver
            .events_of(&self.name(short))
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }
}

pub struct Host {
    pub config: Config,
    shutdown: watch::Sender<bool>,
    pub reload: mpsc::Sender<Config>,
    task: JoinHandle<()>,
}

impl Host {
    /// Starts a host agent over `hv` and its event channel `events`.
    pub async fn start_with(
        config: Config,
        hv: Arc<dyn Hypervisor>,
        events: mpsc::UnboundedReceiver<BackendEvent>,
    ) -> Host {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (reload, reload_rx) = mpsc::channel(4);
        let task = tokio::spawn({
            let config = config.clone();
            async move {
                if let Err(e) =
                    appmon_host_agent::daemon::run(config, hv, events, reload_rx, shutdown_rx).await
                {
                    panic!("daemon failed: {e}");
                }
            }
        });
        let host = Host {
            config,
            shutdown,
            reload,
            task,
        };
        // Ready when the control socket answers.
        let socket = host.config.control_socket.clone();
        let deadline = tokio::time::Instant::now() + ms(5000);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "control socket never came up"
            );
            tokio::time::sleep(ms(10)).await;
        }
        host
    }

    /// Runs `appmonctl ARGS` against this host; returns (exit code, stdout, stderr).
    pub async fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut argv = vec![
            "appmonctl".to_string(),
            "--socket".into(),
            self.config.control_socket.display().to_string(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        tokio::task::spawn_blocking(move || {
            let cli = match ctl::Cli::try_parse_from(&argv) {
                Ok(c) => c,
                Err(e) => return (ctl::EXIT_USAGE, String::new(), e.to_string()),
            };
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = ctl::run(&cli, &mut out, &mut err);
            (
                code,
                String::from_utf8_lossy(&out).into_owned(),
                String::from_utf8_lossy(&err).into_owned(),
            )
        })
        .await
        .expect("appmonctl task")
    }

    /// `appmonctl --json show DOMAIN`, parsed.
    pub async fn show(&self, domain: &str) -> VmView {
        let (code, out, err) = self.ctl(&["--json", "show", domain]).await;
        assert_eq!(code, 0, "show {domain}: {err}");
        let doc: ShowDocument = serde_json::from_str(&out).expect("show json");
        assert_eq!(doc.schema_version, appmon_control::SCHEMA_VERSION);
        doc.domain
    }

    /// `appmonctl --json list`, parsed.
    pub async fn list(&self) -> Vec<VmView> {
        let (code, out, err) = self.ctl(&["--json", "list"]).await;
        assert_eq!(code, 0, "list: {err}");
        let doc: ListDocument = serde_json::from_str(&out).expect("list json");
        doc.domains
    }

    /// Waits until `pred` holds for `show DOMAIN`, or `limit` passes; returns the last view.
    pub async fn wait_show(
        &self,
        domain: &str,
        limit: Duration,
        pred: impl Fn(&VmView) -> bool,
    ) -> VmView {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (code, out, _) = self.ctl(&["--json", "show", domain]).await;
            if code == 0 {
                let doc: ShowDocument = serde_json::from_str(&out).expect("show json");
                if pred(&doc.domain) || tokio::time::Instant::now() >= deadline {
                    return doc.domain;
                }
            } else if tokio::time::Instant::now() >= deadline {
                panic!("show {domain} never succeeded");
            }
            tokio::time::sleep(ms(20)).await;
        }
    }

    /// `appmonctl --json counters DOMAIN`, parsed; `None` when it fails.
    pub async fn counters(&self, domain: &str) -> Option<CountersView> {
        let (code, out, _) = self.ctl(&["--json", "counters", domain]).await;
        if code != 0 {
            return None;
        }
        let doc: CountersDocument = serde_json::from_str(&out).expect("counters json");
        assert_eq!(doc.schema_version, appmon_control::SCHEMA_VERSION);
        Some(doc.counters)
    }

    /// Waits until `pred` holds for `counters DOMAIN`, or `limit` passes; returns the last view.
    pub async fn wait_counters(
        &self,
        domain: &str,
        limit: Duration,
        pred: impl Fn(&CountersView) -> bool,
    ) -> CountersView {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let view = self.counters(domain).await;
            let now = tokio::time::Instant::now();
            match view {
                Some(v) if pred(&v) || now >= deadline => return v,
                None if now >= deadline => panic!("counters {domain} never succeeded"),
                _ => {}
            }
            tokio::time::sleep(ms(20)).await;
        }
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(ms(5000), self.task)
            .await
            .expect("daemon stops");
    }
}

/// Whether `show`'s guest boot id starts with `prefix`.
pub fn guest_boot_starts_with(view: &VmView, prefix: &str) -> bool {
    view.guest_boot_id
        .as_deref()
        .is_some_and(|b| b.starts_with(prefix))
}

/// Whether the history has a decision `pick` accepts.
pub fn decided(view: &VmView, pick: impl Fn(&Decision) -> bool) -> bool {
    view.decisions().any(|(_, d)| pick(d))
}

/// Whether the history has the libvirt event `event`.
pub fn libvirt_said(view: &VmView, event: DomainEvent) -> bool {
    view.history.iter().any(|h| h.libvirt() == Some(event))
}

/// Whether the history has a session end `pick` accepts.
pub fn session_ended(view: &VmView, pick: impl Fn(&SessionEnd) -> bool) -> bool {
    view.history
        .iter()
        .any(|h| matches!(h.guest(), Some(GuestEvent::SessionEnded { reason }) if pick(reason)))
}
