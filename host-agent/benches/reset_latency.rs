//! Reset latency: from a guest's last heartbeat to the reset, measured on what really happened.
//!
//! The real daemon (supervisor, sessions, control socket) runs in-process against libvirt out
//! of process: a private libvirtd serving the test driver, the host agent's connection as in
//! production. Each sample is its own domain (defined and started through a second libvirt
//! connection, method power-cycle) whose scripted guest (a Unix-socket peer speaking the real
//! protocol) heartbeats and then stops at a random moment; all samples of a run overlap in
//! time. Two measurements per sample, both minus the failure interval:
//!
//! - *decision*: the host agent's own record, the history entry of its power-cycle decision
//!   (read through the control socket; whole milliseconds);
//! - *libvirt*: libvirt's `Stopped(Destroyed)` event of the domain as the second connection
//!   received it: the power-cycle reached libvirtd and was carried out.
//!
//! Target: the reset within failure_interval + 100 ms of the last heartbeat. The 1 s
//! polling-tick column is a model, not a run: the same samples' deadline rounded up to the
//! next whole second of a periodic tick.
//!
//!     cargo bench -p appmon-host-agent --bench reset_latency [-- SAMPLES]

use std::sync::Arc;
use std::time::Duration;

use appmon_control::{ShowDocument, VmView};
use appmon_host_agent::config::Config;
use appmon_host_agent::ctl;
use appmon_host_agent::testing as sim;
use appmon_libvirt_backend::testing::{PrivateLibvirtd, TestDomain, TestDriver};
use appmon_libvirt_backend::{
    DomainEvent, LibvirtHypervisor, MonitorSpec, ResetMethod, ShutOffReason, Transport,
};
use clap::Parser;
use sim::GuestSim;
use tokio::sync::{mpsc, watch};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// `appmonctl --json show DOMAIN` through the library, as the tests do.
fn show(socket: &std::path::Path, domain: &str) -> Option<VmView> {
    let cli = ctl::Cli::try_parse_from([
        "appmonctl",
        "--socket",
        &socket.display().to_string(),
        "--json",
        "show",
        domain,
    ])
    .ok()?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    (ctl::run(&cli, &mut out, &mut err) == 0)
        .then(|| serde_json::from_slice::<ShowDocument>(&out).ok())
        .flatten()
        .map(|doc| doc.domain)
}

/// The unix_ms of the first power-cycle decision in a `show` view.
fn decision_ms(view: &VmView) -> Option<u64> {
    view.reset_decisions()
        .iter()
        .find(|h| matches!(h.reset_decision(), Some((ResetMethod::PowerCycle, _))))
        .map(|h| h.unix_ms)
}

struct Samples {
    decision: Vec<f64>,
    libvirt: Vec<f64>,
    tick: Vec<f64>,
}

async fn run(libvirtd: &PrivateLibvirtd, fi: Duration, samples: usize) -> Samples {
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = libvirtd.uri();
    let driver = Arc::new(TestDriver::open(&uri).expect("the bench's libvirt connection"));
    let tag = format!("lat{}", fi.as_secs());
    let mut guests = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..samples {
        let path = dir.path().join(format!("g{i}.vsock"));
        let g = GuestSim::new(1, Some(fi / 5));
        tasks.push(g.listen(&path, true).expect("listen"));
        let mut spec = MonitorSpec::with_transport(Transport::HybridVsock { path, port: 5315 });
        spec.failure_interval = Some(fi);
        spec.min_uptime = Some(Duration::ZERO);
        spec.max_resets = Some(100);
        spec.reset_method = Some(ResetMethod::PowerCycle);
        let domain = TestDomain::new(format!("{tag}-vm{i}"), uuid::Uuid::new_v4().to_string())
            .with_spec(&spec);
        driver.define_running(&domain).expect("define and start");
        guests.push(g);
    }
    let config = Config {
        uri: uri.clone(),
        state_dir: dir.path().join("state"),
        control_socket: dir.path().join("ctl.sock"),
        domains: vec![format!("{tag}-*")],
        ..Config::default()
    };
    let socket = config.control_socket.clone();
    let (hv, events) = LibvirtHypervisor::open(&uri).expect("the host agent's connection");
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (_reload_tx, reload) = mpsc::channel(1);
    let daemon = tokio::spawn(appmon_host_agent::daemon::run(
        config,
        Arc::new(hv),
        events,
        reload,
        shutdown,
    ));
    for g in &guests {
        assert!(
            g.wait(Duration::from_secs(30), |g| g.heartbeats() >= 2)
                .await
        );
    }
    // Stop each guest's heartbeats at a random moment within one failure interval.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let start = tokio::time::Instant::now();
    let mut order: Vec<(Duration, usize)> = (0..samples)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (fi.mul_f64((seed % 10_000) as f64 / 10_000.0), i)
        })
        .collect();
    order.sort();
    for (at, i) in order {
        tokio::time::sleep_until(start + at).await;
        guests[i].set_heartbeat(None);
        // A guest that comes back after the power-cycle has rebooted: nothing enabled.
        guests[i].set_enabled_in_state(false);
    }
    let destroyed = |name: &str, seen: &[appmon_libvirt_backend::testing::SeenEvent]| {
        seen.iter().find_map(|e| {
            (e.of(name) == Some(DomainEvent::Stopped(ShutOffReason::Destroyed))).then_some(e.at)
        })
    };
    let names: Vec<String> = (0..samples).map(|i| format!("{tag}-vm{i}")).collect();
    let seen = {
        let driver = driver.clone();
        let names = names.clone();
        tokio::task::spawn_blocking(move || {
            driver.wait_events(fi * 3, |seen| {
                names.iter().all(|n| destroyed(n, seen).is_some())
            })
        })
        .await
        .expect("wait task")
    };
    let mut out = Samples {
        decision: Vec::new(),
        libvirt: Vec::new(),
        tick: Vec::new(),
    };
    for (name, g) in names.iter().zip(&guests) {
        let (Some(last), Some(last_wall)) = (g.last_heartbeat(), g.last_heartbeat_unix_ms()) else {
            eprintln!("{name}: no heartbeat");
            continue;
        };
        let last = last.into_std();
        match destroyed(name, &seen) {
            Some(at) => out
                .libvirt
                .push((at.duration_since(last).as_secs_f64() - fi.as_secs_f64()) * 1000.0),
            None => eprintln!("{name}: libvirt saw no power-cycle"),
        }
        let view = {
            let (socket, name) = (socket.clone(), name.clone());
            tokio::task::spawn_blocking(move || show(&socket, &name))
                .await
                .expect("show task")
        };
        match view.as_ref().and_then(decision_ms) {
            Some(ms) => out
                .decision
                .push(ms as f64 - last_wall.floor() - fi.as_secs_f64() * 1000.0),
            None => eprintln!("{name}: no power-cycle decision in its history"),
        }
        // A periodic 1 s tick of random phase: the first tick at or after the deadline.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let phase = (seed % 1000) as f64 / 1000.0;
        let deadline_wall = (last_wall / 1000.0) + fi.as_secs_f64() + phase;
        out.tick
            .push((deadline_wall.ceil() - deadline_wall) * 1000.0);
    }
    let _ = shutdown_tx.send(true);
    let _ = daemon.await;
    for t in tasks {
        t.abort();
    }
    for v in [&mut out.decision, &mut out.libvirt, &mut out.tick] {
        v.sort_by(f64::total_cmp);
    }
    out
}

fn main() {
    let samples: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let libvirtd = PrivateLibvirtd::start().expect("private libvirtd");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "reset latency beyond the failure interval, ms ({samples} samples each; target <= 100 ms)"
    );
    println!(
        "{:<8} {:<9} {:>8} {:>8} {:>8} {:>8} {:>8}   {:>22}",
        "interval", "seen in", "min", "median", "p99", "max", "target", "1 s tick model p50/max"
    );
    for fi in [Duration::from_secs(1), Duration::from_secs(5)] {
        let s = rt.block_on(run(&libvirtd, fi, samples));
        for (what, v) in [("decision", &s.decision), ("libvirt", &s.libvirt)] {
            println!(
                "{:<8} {:<9} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8}   {:>10.0} / {:>8.0}   (n={})",
                format!("{} s", fi.as_secs()),
                what,
                percentile(v, 0.0),
                percentile(v, 0.5),
                percentile(v, 0.99),
                percentile(v, 1.0),
                "100",
                percentile(&s.tick, 0.5),
                percentile(&s.tick, 1.0),
                v.len(),
            );
        }
    }
}
