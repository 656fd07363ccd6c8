//! MON's HTTP service under load: requests per second and latency of `/monapi/val` (XML and
//! JSON) and `/metrics`, for 100 VMs with 100 counters each, on loopback.
//!
//! The host agent runs in this process as `appmon-host` does (daemon, supervisor, sessions,
//! MON's listener) against libvirt out of process: a private libvirtd serving the test driver
//! with a node file of the VMs, each with `<appmon:monitor>` metadata whose hybrid-vsock
//! transport points at a scripted guest (`appmon_host_agent::testing`) that sends a counter
//! schema of 100 counters in 10 entities and a set of values. The load generator is a small
//! tokio HTTP/1.1 client in this file: `CONNS` keep-alive connections, each sending its next
//! request when the answer is in, for a fixed time per case; every request names a VM at
//! random. Each case runs twice, against a host agent with MON's render cache on (A, the
//! default: an answer is rendered once per change of the counters and second) and off (B: the
//! supervisor builds and the handler renders every answer), each with VMs and guests of its
//! own; the table puts the two side by side.
//!
//!     cargo bench -p appmon-host-agent --bench monapi [-- SECONDS [CONNS]]
//!
//! Targets (issue 13): at least 10,000 req/s and a p99 under 5 ms on the 2-core machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use appmon_host_agent::config::Config;
use appmon_host_agent::testing::GuestSim;
use appmon_libvirt_backend::testing::{node_xml, PrivateLibvirtd, TestDomain};
use appmon_libvirt_backend::{LibvirtHypervisor, MonitorSpec, Transport};
use appmon_wire::{CounterDesc, CounterSchema, CounterValues, EntityDesc, Frame, GuestMsg, Text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

const VMS: usize = 100;
const ENTITIES: usize = 10;
const PER_ENTITY: usize = 10;

fn schema() -> Vec<EntityDesc> {
    (0..ENTITIES)
        .map(|e| EntityDesc {
            name: Text::truncating(format!("Entity {e}")),
            counters: (0..PER_ENTITY)
                .map(|c| CounterDesc {
                    id: (e * PER_ENTITY + c) as u32,
                    name: Text::truncating(format!("Counter {c} of {e}")),
                    description: Text::truncating("a counter of the benchmark"),
                    units: Text::truncating("#"),
                    kind: Text::default(),
                    range_lower: Some(0.0),
                    range_upper: None,
                    pace_ms: 1000,
                })
                .collect(),
        })
        .collect()
}

/// One keep-alive HTTP/1.1 connection: sends GETs, reads answers by Content-Length.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// GETs `target`; returns the status and the body's length.
    async fn get(&mut self, target: &str) -> std::io::Result<(u16, usize)> {
        let request = format!("GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n");
        self.stream.write_all(request.as_bytes()).await?;
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        let (head_end, status, length) = loop {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                break (end + 4, status, length);
            }
        };
        while self.buf.len() < head_end + length {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok((status, length))
    }
}

struct Outcome {
    requests: usize,
    errors: usize,
    bytes: usize,
    seconds: f64,
    latencies: Vec<Duration>,
}

/// `conns` connections asking `target(i)` for `window`.
async fn load(
    addr: SocketAddr,
    conns: usize,
    window: Duration,
    target: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> Outcome {
    let start = Instant::now();
    let end = start + window;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut errors, mut bytes) = (0, 0);
            let mut client = match Client::connect(addr).await {
                Ok(client) => client,
                Err(_) => return (latencies, 1, 0),
            };
            // A cheap xorshift: each request names a VM at random.
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1);
            while Instant::now() < end {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let path = target(seed);
                let t0 = Instant::now();
                match client.get(&path).await {
                    Ok((200, n)) => {
                        latencies.push(t0.elapsed());
                        bytes += n;
                    }
                    _ => {
                        errors += 1;
                        match Client::connect(addr).await {
                            Ok(c) => client = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            (latencies, errors, bytes)
        }));
    }
    let mut outcome = Outcome {
        requests: 0,
        errors: 0,
        bytes: 0,
        seconds: 0.0,
        latencies: Vec::new(),
    };
    for task in tasks {
        if let Ok((l, e, b)) = task.await {
            outcome.latencies.extend(l);
            outcome.errors += e;
            outcome.bytes += b;
        }
    }
    outcome.seconds = start.elapsed().as_secs_f64();
    outcome.requests = outcome.latencies.len();
    outcome.latencies.sort_unstable();
    outcome
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

type Target = Arc<dyn Fn(u64) -> String + Send + Sync>;

/// The cases: what each connection asks for, given a random number.
fn cases() -> Vec<(&'static str, Target)> {
    vec![
        (
            "/monapi/val/<one VM> (XML)",
            Arc::new(|r| format!("/monapi/val/vm-{:03}", r % VMS as u64)),
        ),
        (
            "/monapi/val/<one VM>?fmt=json",
            Arc::new(|r| format!("/monapi/val/vm-{:03}?fmt=json", r % VMS as u64)),
        ),
        (
            "/monapi/val/<one VM>/<entity>/<counter>",
            Arc::new(|r| {
                format!(
                    "/monapi/val/vm-{:03}/Entity%20{}/Counter%20{}%20of%20{}?fmt=json",
                    r % VMS as u64,
                    r % 10,
                    (r / 10) % 10,
                    r % 10
                )
            }),
        ),
        (
            "/monapi/val (all VMs, XML)",
            Arc::new(|_| "/monapi/val".into()),
        ),
        ("/metrics (all VMs)", Arc::new(|_| "/metrics".into())),
    ]
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<u64>().ok());
    let window = Duration::from_secs(args.next().unwrap_or(5));
    let conns = args.next().unwrap_or(8) as usize;
    println!(
        "{VMS} VMs x {} counters, {conns} keep-alive connections, {} s per case, loopback; \
         A: [mon] render_cache = true (the default), B: render_cache = false (every answer \
         built by the supervisor and rendered)",
        ENTITIES * PER_ENTITY,
        window.as_secs()
    );
    let with = run(true, window, conns);
    let without = run(false, window, conns);
    println!(
        "{:<40} {:>5} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10}",
        "request", "cache", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "KiB", "requests"
    );
    for ((name, a), (_, b)) in with.iter().zip(&without) {
        for (label, o) in [("A", a), ("B", b)] {
            println!(
                "{:<40} {:>5} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7.1} {:>10}",
                name,
                label,
                o.requests as f64 / o.seconds,
                pct(&o.latencies, 0.50),
                pct(&o.latencies, 0.99),
                o.latencies
                    .last()
                    .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
                o.errors,
                o.bytes as f64 / o.requests.max(1) as f64 / 1024.0,
                o.requests
            );
        }
    }
}

/// One host agent with MON's render cache on or off, its VMs and guests; every case run.
fn run(render_cache: bool, window: Duration, conns: usize) -> Vec<(&'static str, Outcome)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();

    // The VMs: domains in a node file of a private libvirtd, a scripted guest behind each.
    let mut guests = Vec::new();
    let mut domains = Vec::new();
    for i in 0..VMS {
        let path = dir.path().join(format!("g{i}.vsock"));
        let guest = GuestSim::new(1, Some(Duration::from_secs(1)));
        guests.push((
            guest.clone(),
            guest.listen(&path, true).expect("guest socket"),
        ));
        let spec = MonitorSpec::with_transport(Transport::HybridVsock { path, port: 5315 });
        domains.push(
            TestDomain::new(
                format!("vm-{i:03}"),
                format!("00000000-0000-4000-8000-{:012x}", i + 1),
            )
            .with_spec(&spec),
        );
    }
    let node = dir.path().join("node.xml");
    std::fs::write(&node, node_xml(&domains)).expect("node file");
    let libvirtd = PrivateLibvirtd::start().expect("private libvirtd");
    let uri = libvirtd.node_uri(&node, false);
    let (hv, events) = LibvirtHypervisor::open(&uri).expect("libvirt");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut config = Config {
        uri,
        state_dir: dir.path().join("state"),
        control_socket: dir.path().join("ctl.sock"),
        ..Config::default()
    };
    config.mon.listen = Some(addr);
    config.mon.render_cache = render_cache;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (_reload_tx, reload) = mpsc::channel(1);
    let daemon = rt.spawn(appmon_host_agent::daemon::run(
        config,
        Arc::new(hv),
        events,
        reload,
        shutdown,
    ));

    // Every guest connected, then its schema and a set of values.
    let deadline = Instant::now() + Duration::from_secs(120);
    while guests.iter().any(|(g, _)| !g.connected()) {
        assert!(Instant::now() < deadline, "guests did not all connect");
        std::thread::sleep(Duration::from_millis(50));
    }
    let values: Vec<(u32, f64)> = (0..(ENTITIES * PER_ENTITY) as u32)
        .map(|id| (id, f64::from(id) * 1.5))
        .collect();
    for (guest, _) in &guests {
        for part in CounterSchema::parts(1, schema()) {
            assert!(guest.send(Frame::event(GuestMsg::CounterSchema(part))));
        }
        assert!(
            guest.send(Frame::event(GuestMsg::CounterValues(CounterValues {
                generation: 1,
                unix_ms: 0,
                values: values.clone(),
            })))
        );
    }
    let ready = rt.block_on(async {
        let mut client = Client::connect(addr).await.expect("MON listens");
        loop {
            // Every VM's last counter has its value.
            if let Ok((200, n)) = client
                .get("/monapi/val/*/Entity%209/Counter%209%20of%209?fmt=json")
                .await
            {
                if n > VMS * 60 {
                    return true;
                }
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(ready, "the counters did not all arrive");

    let mut outcomes = Vec::new();
    for (name, target) in cases() {
        outcomes.push((name, rt.block_on(load(addr, conns, window, target))));
    }
    let _ = shutdown_tx.send(true);
    let _ = rt.block_on(daemon);
    for (_, task) in guests {
        task.abort();
    }
    drop(libvirtd);
    outcomes
}
