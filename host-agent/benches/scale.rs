//! Scale: one host agent holding N guests (default 10,000) that each heartbeat once a second.
//!
//! The host agent (supervisor, one session task per guest, control socket) runs in this process
//! over the fake hypervisor, driven by N generated domain infos (going through libvirt's test
//! driver for 10,000 domains would measure libvirt, not us). The guests run in a child process
//! (this binary re-executed as a "farm"): real Unix-socket peers behind one hybrid-vsock socket
//! speaking the real protocol, told apart by their `CONNECT <port>`. Once every guest is Green,
//! the host's CPU time (getrusage) is measured over a window, and its RSS growth per guest.
//! Targets: < 1 core, ~10 KiB per guest.
//!
//!     cargo bench -p appmon-host-agent --bench scale [-- GUESTS [SECONDS]]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appmon_host_agent::config::Config;
use appmon_host_agent::fake::FakeHypervisor;
use appmon_libvirt_backend::{MonitorSpec, Transport};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use tokio::sync::{mpsc, watch};

fn raise_nofile() {
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn cpu_seconds() -> f64 {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => f64::NAN,
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The child: serves the guests, reports how many are Green, ends when stdin closes.
fn farm(path: &str) {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(path).expect("bind farm socket");
        let greens = Arc::new(AtomicU64::new(0));
        tokio::spawn(appmon_host_agent::sim::farm(
            listener,
            Duration::from_secs(1),
            greens.clone(),
        ));
        println!("listening");
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        });
        tokio::pin!(stdin_closed);
        loop {
            tokio::select! {
                _ = &mut stdin_closed => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    println!("greens {}", greens.load(Ordering::SeqCst));
                    let _ = std::io::stdout().flush();
                }
            }
        }
    });
}

fn main() {
    if let Ok(path) = std::env::var("APPMON_BENCH_FARM") {
        farm(&path);
        return;
    }
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<u64>().ok());
    let guests = args.next().unwrap_or(10_000) as usize;
    let window = Duration::from_secs(args.next().unwrap_or(20));
    raise_nofile();
    let dir = tempfile::tempdir().expect("tempdir");
    let farm_path = dir.path().join("farm.vsock");
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .env("APPMON_BENCH_FARM", &farm_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the guest farm");
    let mut lines = BufReader::new(child.stdout.take().expect("farm stdout")).lines();
    assert_eq!(
        lines.next().and_then(|l| l.ok()).as_deref(),
        Some("listening")
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rss_base = rss_kib();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (hv, events) = FakeHypervisor::new();
    for i in 0..guests {
        let spec = MonitorSpec::with_transport(Transport::HybridVsock {
            path: farm_path.clone(),
            port: i as u32 + 1,
        });
        hv.add(&format!("guest-{i:05}"), Some(spec));
    }
    let config = Config {
        state_dir: dir.path().join("state"),
        control_socket: dir.path().join("ctl.sock"),
        ..Config::default()
    };
    let (_reload_tx, reload) = mpsc::channel(1);
    let started = Instant::now();
    let daemon = rt.spawn(appmon_host_agent::daemon::run(
        config, hv, events, reload, shutdown,
    ));
    let mut greens = 0;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        greens = line
            .strip_prefix("greens ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(greens);
        if greens >= guests || started.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    let ramp = started.elapsed();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    std::thread::sleep(window);
    let (cpu1, t1) = (cpu_seconds(), Instant::now());
    let rss = rss_kib();
    let cores = (cpu1 - cpu0) / t1.duration_since(t0).as_secs_f64();
    let per_guest = (rss.saturating_sub(rss_base)) as f64 / guests as f64;
    let _ = shutdown_tx.send(true);
    let _ = rt.block_on(daemon);
    drop(child.stdin.take());
    let _ = child.wait();

    println!(
        "{guests} guests at 1 heartbeat/s each ({greens} Green after {:.1} s), measured over {} s",
        ramp.as_secs_f64(),
        window.as_secs()
    );
    println!("{:<28} {:>12} {:>12}", "", "measured", "target");
    println!("{:<28} {:>12.3} {:>12}", "CPU (cores)", cores, "< 1");
    println!(
        "{:<28} {:>12.1} {:>12}",
        "RSS per guest (KiB)", per_guest, "~10"
    );
    println!(
        "{:<28} {:>12.1} {:>12}",
        "CPU per heartbeat (us)",
        cores * 1e6 / guests as f64,
        "-"
    );
    println!("{:<28} {:>12} {:>12}", "RSS total (MiB)", rss / 1024, "-");
}
