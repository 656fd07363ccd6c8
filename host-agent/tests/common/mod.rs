//! A host agent in-process over the fake hypervisor, with its own temp dir, state dir and
//! control socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use appmon_host_agent::config::Config;
use appmon_host_agent::ctl;
use appmon_host_agent::fake::FakeHypervisor;
use appmon_libvirt_backend::{MonitorSpec, Transport};
use clap::Parser;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Test timings: 1 s failure interval, no minimum uptime, fast keepalive and reconnects.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config {
        state_dir: dir.join("state"),
        control_socket: dir.join("ctl.sock"),
        ping_interval: ms(200),
        hello_timeout: ms(500),
        channel_timeout: ms(1000),
        reconnect_max: ms(200),
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

pub struct Host {
    pub hv: Arc<FakeHypervisor>,
    pub config: Config,
    shutdown: watch::Sender<bool>,
    pub reload: mpsc::Sender<Config>,
    task: JoinHandle<()>,
}

impl Host {
    /// Starts a host agent over `hv` (domains added before are found by the first listing).
    pub async fn start(
        config: Config,
        hv: Arc<FakeHypervisor>,
        events: mpsc::UnboundedReceiver<appmon_libvirt_backend::BackendEvent>,
    ) -> Host {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (reload, reload_rx) = mpsc::channel(4);
        let task = tokio::spawn({
            let config = config.clone();
            let hv = hv.clone();
            async move {
                if let Err(e) =
                    appmon_host_agent::daemon::run(config, hv, events, reload_rx, shutdown_rx).await
                {
                    panic!("daemon failed: {e}");
                }
            }
        });
        let host = Host {
            hv,
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
    pub async fn show(&self, domain: &str) -> serde_json::Value {
        let (code, out, err) = self.ctl(&["--json", "show", domain]).await;
        assert_eq!(code, 0, "show {domain}: {err}");
        serde_json::from_str(&out).expect("show json")
    }

    /// Waits until `pred` holds for `show DOMAIN`, or `limit` passes; returns the last view.
    pub async fn wait_show(
        &self,
        domain: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (code, out, _) = self.ctl(&["--json", "show", domain]).await;
            if code == 0 {
                let v: serde_json::Value = serde_json::from_str(&out).expect("show json");
                if pred(&v) || tokio::time::Instant::now() >= deadline {
                    return v;
                }
            } else if tokio::time::Instant::now() >= deadline {
                panic!("show {domain} never succeeded");
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

pub fn history_has(view: &serde_json::Value, needle: &str) -> bool {
    view["history"].as_array().is_some_and(|h| {
        h.iter()
            .any(|e| e["text"].as_str().is_some_and(|t| t.contains(needle)))
    })
}

pub fn sock(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.vsock"))
}
