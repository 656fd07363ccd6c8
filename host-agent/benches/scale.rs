//! Scale: one host agent holding N guests (default 10,000) that each heartbeat once a second.
//!
//! The host agent (supervisor, one session task per guest, control socket) runs in this process
//! against libvirt out of process: a private libvirtd serving the test driver with a generated
//! node file of N domains, each carrying `<appmon:monitor>` metadata whose hybrid-vsock
//! transport points at the guest farm. So the domains are found the way production finds them
//! (virConnectListAllDomains, then state and metadata per domain over libvirt's RPC), and
//! libvirt's memory stays in libvirtd, out of the host agent's RSS. The guests run in a child
//! process (this binary re-executed as a "farm"): real Unix-socket peers behind one hybrid-vsock
//! socket speaking the real protocol, told apart by their `CONNECT <port>`.
//!
//! Measured: the connection (libvirtd reads the node file), the host agent's first listing,
//! the ramp until every guest is Green; then, in steady state, the host agent's CPU time
//! (getrusage) over a window, its RSS growth per guest, and libvirtd's CPU and RSS.
//! Targets: < 1 core, ~10 KiB per guest.
//!
//!     cargo bench -p appmon-host-agent --bench scale [-- GUESTS [SECONDS]]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appmon_host_agent::config::Config;
use appmon_host_agent::ctl;
use appmon_host_agent::testing as sim;
use appmon_libvirt_backend::testing::{node_xml, PrivateLibvirtd, TestDomain};
use appmon_libvirt_backend::{LibvirtHypervisor, MonitorSpec, Transport};
use clap::Parser;
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

fn rss_kib_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// utime + stime of another process, in seconds.
fn cpu_seconds_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => ticks / hz as f64,
        _ => f64::NAN,
    }
}

/// Whether the host agent knows `domain` yet (its listing is applied in one step).
fn known(socket: &std::path::Path, domain: &str) -> bool {
    let Ok(cli) = ctl::Cli::try_parse_from([
        "appmonctl",
        "--socket",
        &socket.display().to_string(),
        "show",
        domain,
    ]) else {
        return false;
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    ctl::run(&cli, &mut out, &mut err) == 0
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
        tokio::spawn(sim::farm(listener, Duration::from_secs(1), greens.clone()));
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

    // N domains in a node file, served by a libvirtd of our own.
    let domains: Vec<TestDomain> = (0..guests)
        .map(|i| {
            let spec = MonitorSpec::with_transport(Transport::HybridVsock {
                path: farm_path.clone(),
                port: i as u32 + 1,
            });
            TestDomain::new(
                format!("guest-{i:05}"),
                format!("00000000-0000-4000-8000-{:012x}", i + 1),
            )
            .with_spec(&spec)
        })
        .collect();
    let node = dir.path().join("node.xml");
    std::fs::write(&node, node_xml(&domains)).expect("node file");
    drop(domains);
    let libvirtd = PrivateLibvirtd::start().expect("private libvirtd");
    let libvirtd_pid = libvirtd.pid().expect("libvirtd pid");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rss_base = rss_kib();
    let uri = libvirtd.node_uri(&node, false);
    let opened = Instant::now();
    let (hv, events) = LibvirtHypervisor::open(&uri).expect("the host agent's connection");
    let open_time = opened.elapsed();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let config = Config {
        uri,
        state_dir: dir.path().join("state"),
        control_socket: dir.path().join("ctl.sock"),
        ..Config::default()
    };
    let socket = config.control_socket.clone();
    let (_reload_tx, reload) = mpsc::channel(1);
    let started = Instant::now();
    let daemon = rt.spawn(appmon_host_agent::daemon::run(
        config,
        Arc::new(hv),
        events,
        reload,
        shutdown,
    ));
    // The supervisor applies a listing in one step: once one domain is known, all are.
    let listing = std::thread::spawn(move || loop {
        if known(&socket, "guest-00000") {
            return Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(600) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
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
    let listing_time = listing.join().ok().flatten();
    let (cpu0, lv0, t0) = (cpu_seconds(), cpu_seconds_of(libvirtd_pid), Instant::now());
    std::thread::sleep(window);
    let (cpu1, lv1, t1) = (cpu_seconds(), cpu_seconds_of(libvirtd_pid), Instant::now());
    let rss = rss_kib();
    let libvirtd_rss = rss_kib_of(&libvirtd_pid.to_string());
    let seconds = t1.duration_since(t0).as_secs_f64();
    let cores = (cpu1 - cpu0) / seconds;
    let libvirtd_cores = (lv1 - lv0) / seconds;
    let per_guest = (rss.saturating_sub(rss_base)) as f64 / guests as f64;
    let _ = shutdown_tx.send(true);
    let _ = rt.block_on(daemon);
    drop(child.stdin.take());
    let _ = child.wait();
    drop(libvirtd);

    println!(
        "{guests} guests at 1 heartbeat/s each ({greens} Green after {:.1} s), measured over {} s",
        ramp.as_secs_f64(),
        window.as_secs()
    );
    println!(
        "libvirt: connection {:.2} s (libvirtd reads the node file), first listing {} (virConnectListAllDomains + state and metadata per domain)",
        open_time.as_secs_f64(),
        listing_time
            .map(|t| format!("{:.2} s", t.as_secs_f64()))
            .unwrap_or_else(|| "not seen".into())
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
    println!(
        "{:<28} {:>12.3} {:>12}",
        "libvirtd CPU (cores)", libvirtd_cores, "-"
    );
    println!(
        "{:<28} {:>12} {:>12}",
        "libvirtd RSS (MiB)",
        libvirtd_rss / 1024,
        "-"
    );
}
