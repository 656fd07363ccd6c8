//! Reset latency: from a guest's last heartbeat to the reset being issued to the hypervisor.
//!
//! The real daemon (supervisor, sessions, control socket) runs in-process over the fake
//! hypervisor, which stamps each reset call as it is made on the blocking pool. Each sample is
//! its own domain whose scripted guest (a Unix-socket peer speaking the real protocol)
//! heartbeats and then stops at a random moment; all samples of a run overlap in time.
//! Target: the reset is issued within failure_interval + 100 ms of the last heartbeat.
//!
//! The 1 s polling-tick column is a model, not a run: the same samples' issue time rounded up to
//! the next whole second of a periodic tick.
//!
//!     cargo bench -p appmon-host-agent --bench reset_latency [-- SAMPLES]

use std::sync::Arc;
use std::time::{Duration, Instant};

use appmon_host_agent::config::Config;
use appmon_host_agent::fake::FakeHypervisor;
use appmon_host_agent::sim::GuestSim;
use appmon_libvirt_backend::{MonitorSpec, ResetMethod, Transport};
use tokio::sync::{mpsc, watch};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn run(fi: Duration, samples: usize) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
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
        hv.add(&format!("vm{i}"), Some(spec));
        guests.push(g);
    }
    let config = Config {
        state_dir: dir.path().join("state"),
        control_socket: dir.path().join("ctl.sock"),
        ..Config::default()
    };
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (_reload_tx, reload) = mpsc::channel(1);
    let daemon = tokio::spawn(appmon_host_agent::daemon::run(
        config,
        hv.clone(),
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
    hv.wait_calls(fi * 3, |c| {
        let mut names: Vec<&str> = c.iter().map(|c| c.domain.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.len() >= samples
    })
    .await;
    let calls = hv.calls();
    let origin = Instant::now() - start.elapsed();
    let mut late = Vec::new();
    let mut tick = Vec::new();
    for (i, g) in guests.iter().enumerate() {
        let name = format!("vm{i}");
        let (Some(call), Some(last)) =
            (calls.iter().find(|c| c.domain == name), g.last_heartbeat())
        else {
            eprintln!(
                "{name}: no reset (calls {}, last heartbeat {:?})",
                calls.len(),
                g.last_heartbeat().map(|l| l.elapsed())
            );
            continue;
        };
        let last = last.into_std();
        let over = call.at.duration_since(last).as_secs_f64() - fi.as_secs_f64();
        late.push(over * 1000.0);
        // A periodic 1 s tick of random phase: the first tick at or after the deadline.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let phase = (seed % 1000) as f64 / 1000.0;
        let deadline = (last + fi).duration_since(origin).as_secs_f64() + phase;
        tick.push((deadline.ceil() - deadline) * 1000.0);
    }
    let _ = shutdown_tx.send(true);
    let _ = daemon.await;
    for t in tasks {
        t.abort();
    }
    late.sort_by(f64::total_cmp);
    tick.sort_by(f64::total_cmp);
    (late, tick)
}

fn main() {
    let samples: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "reset latency beyond the failure interval, ms ({samples} samples each; target <= 100 ms)"
    );
    println!(
        "{:<8} {:>8} {:>8} {:>8} {:>8} {:>8}   {:>22}",
        "interval", "min", "median", "p99", "max", "target", "1 s tick model p50/max"
    );
    for fi in [Duration::from_secs(1), Duration::from_secs(5)] {
        let (late, tick) = rt.block_on(run(fi, samples));
        println!(
            "{:<8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8}   {:>10.0} / {:>8.0}",
            format!("{} s", fi.as_secs()),
            percentile(&late, 0.0),
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            percentile(&late, 1.0),
            "100",
            percentile(&tick, 0.5),
            percentile(&tick, 1.0),
        );
    }
    let _ = Arc::new(());
}
