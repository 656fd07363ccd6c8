//! Scale: one host agent holding N guests (default 10,000) that each heartbeat once a second,
//! twice in one invocation: all guests well-behaved, then the same with 1% of them hostile.
//!
//! Each run is a process of its own (this binary re-executed), so that the second run's memory
//! does not start from what the first one left in the allocator. In it, the host agent
//! (supervisor, one listener task per VM, one task per connection, control socket) runs against
//! libvirt out of process: a private libvirtd serving the test driver with a generated node file
//! of N domains, each carrying `<appmon:monitor>` metadata with a hybrid-vsock transport of its
//! own. So the domains are found the way production finds them (virConnectListAllDomains, then
//! state and metadata per domain over libvirt's RPC), and libvirt's memory stays in libvirtd.
//! The guests live in a third process (the *farm*) and behave like the real guest agent: each
//! announces itself by connecting to `<uds>_<port>` of its VM (where vhost-device-vsock
//! delivers a guest's connections), says Hello first, enables when told Gray, heartbeats every
//! second, answers pings, and announces itself again after a jittered, growing pause (100 ms to
//! 3 s) when a connection ends.
//!
//! The hostile 1% (every 100th guest, five kinds in turn) never stop: garbage bytes, floods of
//! valid frames, a Hello written one byte every 500 ms, absurd agent names (60,000 bytes, or
//! one that forges a log line with escapes), and connect/close loops every 10 ms.
//!
//! Measured per run, once every well-behaved guest is Green:
//! - the host agent's CPU over a window of SECONDS: getrusage(RUSAGE_SELF) of the run's
//!   process, in which nothing but the host agent works during the window;
//! - memory per VM: the growth of the process's RssAnon (its anonymous resident memory: heap
//!   and stacks; not the binary's and libraries' pages, which do not grow with VMs) from
//!   before the host agent's libvirt connection to the end of the window, divided by N;
//! - reset decision latency: SAMPLES well-behaved guests stop heartbeating at random moments
//!   within one failure interval; the time from each one's last heartbeat (sent) to the host
//!   agent's history entry of its power-cycle decision, minus the failure interval;
//! - needReset latency: SAMPLES other well-behaved guests send `PostAppState(NeedReset)`; the
//!   time from the send to the decision's history entry;
//! - that every other well-behaved guest stayed Green with no reset: the farm counts guests told
//!   anything but Green after their first Green and sessions lost, and `appmonctl list` shows
//!   their status and resets.
//!
//! History entries carry whole milliseconds: the latencies are whole milliseconds too.
//! Targets: < 1 core, ~10 KiB per VM, needReset p99 <= 10 ms.
//!
//!     cargo bench -p appmon-host-agent --bench scale [-- GUESTS [SECONDS [SAMPLES]]]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use appmon_control::{ListDocument, ShowDocument, Status};
use appmon_host_agent::config::Config;
use appmon_host_agent::ctl;
use appmon_host_agent::testing as sim;
use appmon_libvirt_backend::testing::{node_xml, PrivateLibvirtd, TestDomain};
use appmon_libvirt_backend::{LibvirtHypervisor, MonitorSpec, ResetMethod, Transport};
use appmon_wire::{
    AppState, AppStatus, Capabilities, Frame, GuestCodec, GuestMsg, GuestState, Hello, HostMsg, Tag,
};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::codec::Framed;

/// The failure interval of every domain.
const FAILURE_INTERVAL: Duration = Duration::from_secs(5);
/// The guests' heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The port the guests announce themselves to (the host listens on `<uds>_<PORT>`).
const PORT: u32 = 5315;
/// Every this many guests, one is hostile (in the hostile run).
const HOSTILE_EVERY: usize = 100;
const NOFILE: u64 = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostility {
    Garbage,
    Flood,
    SlowWriter,
    AbsurdName,
    ConnectClose,
}

const KINDS: [Hostility; 5] = [
    Hostility::Garbage,
    Hostility::Flood,
    Hostility::SlowWriter,
    Hostility::AbsurdName,
    Hostility::ConnectClose,
];

/// Which guests are hostile: every 100th (from the 50th on), the kinds in turn. Both the run
/// and its farm compute it.
fn hostility(i: usize, hostile_run: bool) -> Option<Hostility> {
    (hostile_run && i % HOSTILE_EVERY == HOSTILE_EVERY / 2)
        .then(|| KINDS[(i / HOSTILE_EVERY) % KINDS.len()])
}

fn uds(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("g{i:05}.vsock"))
}

fn domain_name(i: usize) -> String {
    format!("guest-{i:05}")
}

/// Raises the limit on open files to at least 65536 (a listening socket and a connection per VM
/// on the host side), the hard limit too where the process may (root); else the soft limit to
/// the hard one. Says what it could not do; returns the soft limit it got.
fn raise_nofile(who: &str) -> u64 {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            eprintln!("{who}: cannot read RLIMIT_NOFILE: {e}");
            return 0;
        }
    };
    let want = hard.max(NOFILE);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    eprintln!("{who}: cannot raise RLIMIT_NOFILE to {want} (hard limit {hard}): raising the soft limit to {hard} only");
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(e) => {
            eprintln!("{who}: cannot raise RLIMIT_NOFILE from {soft} to {hard}: {e}");
            soft
        }
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

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn unix_ms_now() -> f64 {
    sim::unix_ms(SystemTime::now())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// The farm: the guests.

/// What one guest does and has seen, shared with the farm's command loop.
#[derive(Default)]
struct GuestCtl {
    /// A latency sample that stopped heartbeating.
    stopped: AtomicBool,
    /// A latency sample told to ask for a reset.
    need_reset: AtomicBool,
    asked: Notify,
    /// f64 bits: the wall time (Unix ms) the last heartbeat was sent, and the needReset.
    last_heartbeat_ms: AtomicU64,
    asked_ms: AtomicU64,
    /// Told Green at least once.
    greened: AtomicBool,
    /// Told something other than Green after its first Green, or lost its session then.
    spoiled: AtomicBool,
}

impl GuestCtl {
    fn sample(&self) -> bool {
        self.stopped.load(Ordering::SeqCst) || self.need_reset.load(Ordering::SeqCst)
    }
}

/// The pauses between announcements of the real guest agent: exponential from 100 ms to 3 s,
/// each drawn from its upper half.
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new(seed: u64) -> Self {
        Backoff {
            next: Duration::from_millis(100),
            seed: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    fn random(&mut self) -> f64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pause(&mut self) -> Duration {
        let pause = self.next.mul_f64(0.5 + self.random() / 2.0);
        self.next = (self.next * 2).min(Duration::from_secs(3));
        pause
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

fn announce_path(dir: &Path, i: usize) -> PathBuf {
    appmon_host_agent::session::listener::hybrid_listen_path(&uds(dir, i), PORT)
}

fn boot_id(i: usize, boot: u8) -> [u8; 16] {
    let mut id = [boot; 16];
    id[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    id
}

/// A well-behaved guest agent: announces itself, again after every connection, forever.
async fn good_guest(path: PathBuf, i: usize, ctl: Arc<GuestCtl>) {
    let mut backoff = Backoff::new(i as u64 + 1);
    let mut boot = 1u8;
    // Before the power-cycle of a sample, enabled since its first session; after it, a fresh
    // boot whose application never enables.
    let mut enabled = false;
    let mut auto_enable = true;
    // A random phase for the heartbeats, so that they do not come in step.
    let phase = HEARTBEAT.mul_f64(backoff.random());
    loop {
        if let Ok(stream) = UnixStream::connect(&path).await {
            let started = tokio::time::Instant::now();
            let was_sample = ctl.sample();
            let _ = session(stream, i, boot, &mut enabled, auto_enable, phase, &ctl).await;
            if ctl.greened.load(Ordering::SeqCst) && !ctl.sample() {
                ctl.spoiled.store(true, Ordering::SeqCst);
            }
            if ctl.sample() || was_sample {
                // The host closed it to power-cycle the VM: the guest comes back as a new boot.
                boot = boot.wrapping_add(1);
                enabled = false;
                auto_enable = false;
            }
            if started.elapsed() >= Duration::from_secs(10) {
                backoff.reset();
            }
        }
        tokio::time::sleep(backoff.pause()).await;
    }
}

async fn session(
    stream: UnixStream,
    i: usize,
    boot: u8,
    enabled: &mut bool,
    auto_enable: bool,
    phase: Duration,
    ctl: &GuestCtl,
) -> std::io::Result<()> {
    let mut framed = Framed::with_capacity(stream, GuestCodec::new(), 256);
    let hello = Hello::new(
        "appmon-guest farm",
        boot_id(i, boot),
        Capabilities::HEARTBEAT,
    );
    let err = std::io::Error::other;
    framed
        .send(Frame::event(GuestMsg::Hello(hello)))
        .await
        .map_err(err)?;
    match tokio::time::timeout(Duration::from_secs(30), framed.next()).await {
        Ok(Some(Ok(Ok(Frame {
            msg: HostMsg::Hello(_),
            ..
        })))) => {}
        _ => return Ok(()),
    }
    framed
        .send(Frame::event(GuestMsg::State(GuestState {
            enabled: *enabled,
            need_reset: false,
            last_heartbeat_age_ms: enabled.then_some(0),
            heartbeats: 0,
            last_status: None,
            processes: Vec::new(),
        })))
        .await
        .map_err(err)?;
    let mut next_id = 1u32;
    let start = tokio::time::Instant::now() + phase;
    let mut beats = tokio::time::interval_at(start, HEARTBEAT);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let told = |status: AppStatus| {
        if status == AppStatus::Green {
            ctl.greened.store(true, Ordering::SeqCst);
        } else if ctl.greened.load(Ordering::SeqCst) && !ctl.sample() {
            ctl.spoiled.store(true, Ordering::SeqCst);
        }
    };
    loop {
        tokio::select! {
            item = framed.next() => {
                let frame = match item {
                    Some(Ok(Ok(frame))) => frame,
                    Some(Ok(Err(_))) => continue,
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                };
                match (frame.tag, frame.msg) {
                    (Tag::Request(id), HostMsg::Ping) => {
                        framed.send(Frame::reply(id, GuestMsg::Pong)).await.map_err(err)?;
                    }
                    (Tag::Event, HostMsg::AppStatus(s)) => {
                        told(s);
                        if s == AppStatus::Gray && auto_enable && !*enabled {
                            next_id += 1;
                            framed.send(Frame::request(next_id, GuestMsg::Enable)).await.map_err(err)?;
                            *enabled = true;
                        }
                    }
                    (Tag::Reply(_), HostMsg::AppStatus(s)) => told(s),
                    _ => {}
                }
            }
            _ = beats.tick() => {
                if *enabled && !ctl.stopped.load(Ordering::SeqCst) {
                    framed.send(Frame::event(GuestMsg::MarkActive)).await.map_err(err)?;
                    ctl.last_heartbeat_ms.store(unix_ms_now().to_bits(), Ordering::SeqCst);
                }
            }
            () = ctl.asked.notified() => {
                ctl.asked_ms.store(unix_ms_now().to_bits(), Ordering::SeqCst);
                framed.send(Frame::event(GuestMsg::PostAppState(AppState::NeedReset))).await.map_err(err)?;
            }
        }
    }
}

/// Reads until the host closes the connection (or `limit` passes).
async fn until_closed(s: &mut UnixStream, limit: Duration) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(limit, async {
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// A hostile guest: never stops, never backs off beyond its own short pause.
async fn hostile_guest(path: PathBuf, i: usize, kind: Hostility) {
    let pause = match kind {
        Hostility::ConnectClose => Duration::from_millis(10),
        _ => Duration::from_millis(100),
    };
    let junk: Vec<u8> = (0..4096u32).map(|n| (n * 7919 % 251) as u8).collect();
    let hello = Frame::event(GuestMsg::Hello(Hello::new(
        "hostile",
        boot_id(i, 1),
        Capabilities::HEARTBEAT,
    )));
    let hello_bytes = appmon_wire::encode_frame(&hello).expect("a Hello encodes");
    let huge_name = sim::hello_with_agent_of(60_000);
    let forging = appmon_wire::encode_frame(&Frame::event(GuestMsg::Hello(Hello::new(
        format!(
            "x\n2026-01-01T00:00:00Z ERROR appmon: resetting domain={}\x1b[31m\u{202e}",
            domain_name(i + 1)
        ),
        boot_id(i, 1),
        Capabilities::HEARTBEAT,
    ))))
    .expect("a Hello encodes");
    let mut flood = Vec::new();
    for _ in 0..256 {
        flood.extend(
            appmon_wire::encode_frame(&Frame::event(GuestMsg::MarkActive)).expect("encodes"),
        );
    }
    let mut round = 0u64;
    loop {
        round += 1;
        if let Ok(mut s) = UnixStream::connect(&path).await {
            match kind {
                Hostility::Garbage => {
                    let _ = s.write_all(&junk).await;
                    until_closed(&mut s, Duration::from_secs(30)).await;
                }
                Hostility::Flood => {
                    if s.write_all(&hello_bytes).await.is_ok() {
                        let enable =
                            appmon_wire::encode_frame(&Frame::request(1, GuestMsg::Enable))
                                .expect("encodes");
                        let _ = s.write_all(&enable).await;
                        while s.write_all(&flood).await.is_ok() {}
                    }
                }
                Hostility::SlowWriter => {
                    for b in &hello_bytes {
                        if s.write_all(&[*b]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    until_closed(&mut s, Duration::from_secs(30)).await;
                }
                Hostility::AbsurdName => {
                    let frame = if round % 2 == 0 { &huge_name } else { &forging };
                    let _ = s.write_all(frame).await;
                    until_closed(&mut s, Duration::from_secs(5)).await;
                }
                Hostility::ConnectClose => drop(s),
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// The farm's process: serves the guests; commands on stdin, reports on stdout.
///
/// Commands: `stop I` (guest I stops heartbeating), `needreset I` (it asks for a reset),
/// `report` (prints `last I MS` per stopped guest, `asked I MS` per asking one, `spoiled N`,
/// `greens N`, then `end`). Every 500 ms it prints `greens N`: the well-behaved guests told
/// Green at least once. Ends when stdin closes.
fn farm(dir: &Path, guests: usize, hostile_run: bool) {
    raise_nofile("farm");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ctls: Vec<Arc<GuestCtl>> = (0..guests).map(|_| Arc::default()).collect();
        for (i, ctl) in ctls.iter().enumerate() {
            let path = announce_path(dir, i);
            match hostility(i, hostile_run) {
                Some(kind) => tokio::spawn(hostile_guest(path, i, kind)),
                None => tokio::spawn(good_guest(path, i, ctl.clone())),
            };
        }
        let good: Vec<usize> = (0..guests)
            .filter(|&i| hostility(i, hostile_run).is_none())
            .collect();
        let (tx, mut lines) = mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let greens = |ctls: &[Arc<GuestCtl>]| {
            good.iter()
                .filter(|&&i| ctls[i].greened.load(Ordering::SeqCst))
                .count()
        };
        let mut out = std::io::stdout();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = writeln!(out, "greens {}", greens(&ctls));
                    let _ = out.flush();
                }
                line = lines.recv() => {
                    let Some(line) = line else { return };
                    let mut words = line.split_whitespace();
                    let (cmd, i) = (words.next(), words.next().and_then(|w| w.parse::<usize>().ok()));
                    match (cmd, i) {
                        (Some("stop"), Some(i)) if i < guests => ctls[i].stopped.store(true, Ordering::SeqCst),
                        (Some("needreset"), Some(i)) if i < guests => {
                            ctls[i].need_reset.store(true, Ordering::SeqCst);
                            ctls[i].asked.notify_one();
                        }
                        (Some("report"), _) => {
                            for (i, c) in ctls.iter().enumerate() {
                                let ms = |a: &AtomicU64| f64::from_bits(a.load(Ordering::SeqCst));
                                if c.stopped.load(Ordering::SeqCst) {
                                    let _ = writeln!(out, "last {i} {}", ms(&c.last_heartbeat_ms));
                                }
                                if c.need_reset.load(Ordering::SeqCst) {
                                    let _ = writeln!(out, "asked {i} {}", ms(&c.asked_ms));
                                }
                            }
                            let spoiled = good.iter().filter(|&&i| ctls[i].spoiled.load(Ordering::SeqCst)).count();
                            let _ = writeln!(out, "spoiled {spoiled}");
                            let _ = writeln!(out, "greens {}", greens(&ctls));
                            let _ = writeln!(out, "end");
                            let _ = out.flush();
                        }
                        _ => eprintln!("farm: unknown command {line:?}"),
                    }
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// A run: the host agent and its farm.

fn ctl_json(socket: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let socket = socket.display().to_string();
    let mut argv = vec!["appmonctl", "--socket", &socket, "--json"];
    argv.extend_from_slice(args);
    let cli = ctl::Cli::try_parse_from(argv).ok()?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    (ctl::run(&cli, &mut out, &mut err) == 0).then_some(out)
}

/// The Unix ms of the first power-cycle decision in the domain's history.
fn decision_ms(socket: &Path, domain: &str) -> Option<u64> {
    let out = ctl_json(socket, &["show", domain])?;
    let doc: ShowDocument = serde_json::from_slice(&out).ok()?;
    doc.domain
        .reset_decisions()
        .iter()
        .find(|h| matches!(h.reset_decision(), Some((ResetMethod::PowerCycle, _))))
        .map(|h| h.unix_ms)
}

struct Farm {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Farm {
    fn start(dir: &Path, guests: usize, hostile_run: bool) -> Farm {
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .env("APPMON_BENCH_ROLE", "farm")
            .env("APPMON_BENCH_DIR", dir)
            .env("APPMON_BENCH_GUESTS", guests.to_string())
            .env("APPMON_BENCH_HOSTILE", if hostile_run { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the guest farm");
        let stdin = child.stdin.take().expect("farm stdin");
        let stdout = child.stdout.take().expect("farm stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Farm {
            child,
            stdin,
            lines,
        }
    }

    fn tell(&mut self, line: &str) {
        let _ = writeln!(self.stdin, "{line}");
        let _ = self.stdin.flush();
    }

    /// Waits until the farm reports at least `n` Green guests; the count it last reported.
    fn wait_greens(&mut self, n: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut greens = 0;
        while Instant::now() < deadline {
            match self.lines.blocking_recv() {
                Some(line) => {
                    if let Some(g) = line.strip_prefix("greens ").and_then(|g| g.parse().ok()) {
                        greens = g;
                        if greens >= n {
                            break;
                        }
                    }
                }
                None => break,
            }
        }
        greens
    }

    /// The farm's report, as its lines up to `end`.
    fn report(&mut self) -> Vec<String> {
        self.tell("report");
        let mut out = Vec::new();
        while let Some(line) = self.lines.blocking_recv() {
            if line == "end" {
                break;
            }
            if !line.starts_with("greens ") {
                out.push(line);
            }
        }
        out
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a run prints for the parent: `result KEY VALUE` lines.
fn result(key: &str, value: impl std::fmt::Display) {
    println!("result {key} {value}");
}

fn run(guests: usize, window: Duration, samples: usize, hostile_run: bool) {
    let nofile = raise_nofile("host agent");
    result("nofile", nofile);
    let dir = tempfile::tempdir().expect("tempdir");
    let hostile = (0..guests)
        .filter(|&i| hostility(i, hostile_run).is_some())
        .count();
    let good: Vec<usize> = (0..guests)
        .filter(|&i| hostility(i, hostile_run).is_none())
        .collect();
    let mut farm = Farm::start(dir.path(), guests, hostile_run);

    // N domains in a node file, served by a libvirtd of our own.
    let domains: Vec<TestDomain> = (0..guests)
        .map(|i| {
            let mut spec = MonitorSpec::with_transport(Transport::HybridVsock {
                path: uds(dir.path(), i),
                port: PORT,
            });
            spec.failure_interval = Some(FAILURE_INTERVAL);
            spec.min_uptime = Some(Duration::ZERO);
            spec.max_resets = Some(100);
            spec.reset_method = Some(ResetMethod::PowerCycle);
            TestDomain::new(
                domain_name(i),
                format!("00000000-0000-4000-8000-{:012x}", i + 1),
            )
            .with_spec(&spec)
        })
        .collect();
    let node = dir.path().join("node.xml");
    std::fs::write(&node, node_xml(&domains)).expect("node file");
    drop(domains);
    let libvirtd = PrivateLibvirtd::start().expect("private libvirtd");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let anon_base = status_kib("RssAnon:");
    let uri = libvirtd.node_uri(&node, false);
    let (hv, events) = LibvirtHypervisor::open(&uri).expect("the host agent's connection");
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
    let greens = farm.wait_greens(good.len(), Duration::from_secs(600));
    result("ramp_s", format!("{:.1}", started.elapsed().as_secs_f64()));
    result("greens", greens);
    result("good", good.len());
    result("hostile", hostile);

    // Steady state: nothing in this process works but the host agent.
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    std::thread::sleep(window);
    let (cpu1, t1) = (cpu_seconds(), Instant::now());
    let anon = status_kib("RssAnon:");
    result(
        "cpu_cores",
        format!("{:.3}", (cpu1 - cpu0) / t1.duration_since(t0).as_secs_f64()),
    );
    result(
        "anon_kib_per_vm",
        format!(
            "{:.1}",
            anon.saturating_sub(anon_base) as f64 / guests as f64
        ),
    );
    result("anon_mib", anon / 1024);
    result("rss_mib", status_kib("VmRSS:") / 1024);

    // Samples: well-behaved guests spread over the range, two disjoint sets.
    let step = (good.len() / (2 * samples).max(1)).max(1);
    let picked: Vec<usize> = good
        .iter()
        .copied()
        .step_by(step)
        .take(2 * samples)
        .collect();
    let (stops, asks) = picked.split_at(picked.len() / 2);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut order: Vec<(Duration, usize)> = stops
        .iter()
        .map(|&i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (
                FAILURE_INTERVAL.mul_f64((seed % 10_000) as f64 / 10_000.0),
                i,
            )
        })
        .collect();
    order.sort();
    let t = Instant::now();
    for (at, i) in &order {
        std::thread::sleep((t + *at).saturating_duration_since(Instant::now()));
        farm.tell(&format!("stop {i}"));
    }
    // The needReset samples, 20 ms apart, while the last stopped ones are still due.
    for &i in asks {
        farm.tell(&format!("needreset {i}"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + FAILURE_INTERVAL * 3;
    let mut decided: HashMap<usize, u64> = HashMap::new();
    while decided.len() < picked.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        for &i in &picked {
            if let std::collections::hash_map::Entry::Vacant(slot) = decided.entry(i) {
                if let Some(ms) = decision_ms(&socket, &domain_name(i)) {
                    slot.insert(ms);
                }
            }
        }
    }
    let report = farm.report();
    let mut reset_lat = Vec::new();
    let mut ask_lat = Vec::new();
    for line in &report {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            [what @ ("last" | "asked"), i, ms] => {
                let (Ok(i), Ok(sent)) = (i.parse::<usize>(), ms.parse::<f64>()) else {
                    continue;
                };
                let Some(&decision) = decided.get(&i) else {
                    eprintln!("{}: no power-cycle decision in its history", domain_name(i));
                    continue;
                };
                if *what == "last" {
                    let fi = FAILURE_INTERVAL.as_secs_f64() * 1000.0;
                    reset_lat.push(decision as f64 - sent.floor() - fi);
                } else {
                    ask_lat.push(decision as f64 - sent.floor());
                }
            }
            ["spoiled", n] => result("farm_spoiled", n),
            _ => {}
        }
    }
    for v in [&mut reset_lat, &mut ask_lat] {
        v.sort_by(f64::total_cmp);
    }
    result("reset_n", reset_lat.len());
    result("reset_p50", percentile(&reset_lat, 0.5));
    result("reset_p99", percentile(&reset_lat, 0.99));
    result("reset_max", percentile(&reset_lat, 1.0));
    result("ask_n", ask_lat.len());
    result("ask_p50", percentile(&ask_lat, 0.5));
    result("ask_p99", percentile(&ask_lat, 0.99));
    result("ask_max", percentile(&ask_lat, 1.0));

    // Every other well-behaved guest: Green, never reset.
    let list: Option<ListDocument> =
        ctl_json(&socket, &["list"]).and_then(|out| serde_json::from_slice(&out).ok());
    let (mut not_green, mut reset_wrongly, mut hostile_reset) = (0, 0, 0);
    match list {
        Some(list) => {
            let by_name: BTreeMap<&str, _> =
                list.domains.iter().map(|v| (v.name.as_str(), v)).collect();
            for i in 0..guests {
                let Some(v) = by_name.get(domain_name(i).as_str()) else {
                    not_green += 1;
                    continue;
                };
                if hostility(i, hostile_run).is_some() {
                    hostile_reset += usize::from(v.resets_in_window > 0);
                } else if !picked.contains(&i) {
                    not_green += usize::from(!v.is(Status::Green));
                    reset_wrongly += usize::from(v.resets_in_window > 0);
                }
            }
        }
        None => {
            eprintln!("appmonctl list failed");
            not_green = guests;
        }
    }
    result("not_green", not_green);
    result("reset_wrongly", reset_wrongly);
    result("hostile_reset", hostile_reset);

    let _ = shutdown_tx.send(true);
    let _ = rt.block_on(daemon);
    drop(farm);
    drop(libvirtd);
}

// ---------------------------------------------------------------------------------------------
// The parent: two runs, side by side.

fn run_child(guests: usize, secs: u64, samples: usize, hostile: bool) -> BTreeMap<String, String> {
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe)
        .env("APPMON_BENCH_ROLE", "run")
        .env("APPMON_BENCH_HOSTILE", if hostile { "1" } else { "0" })
        .args([guests.to_string(), secs.to_string(), samples.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("run the host agent");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.strip_prefix("result "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<u64>().ok());
    let guests = args.next().unwrap_or(10_000) as usize;
    let secs = args.next().unwrap_or(20);
    let samples = args.next().unwrap_or(50) as usize;
    let hostile_run = std::env::var("APPMON_BENCH_HOSTILE").as_deref() == Ok("1");
    match std::env::var("APPMON_BENCH_ROLE").as_deref() {
        Ok("farm") => {
            let dir = PathBuf::from(std::env::var_os("APPMON_BENCH_DIR").expect("farm dir"));
            let guests = std::env::var("APPMON_BENCH_GUESTS")
                .ok()
                .and_then(|g| g.parse().ok())
                .expect("farm guests");
            farm(&dir, guests, hostile_run);
            return;
        }
        Ok("run") => {
            run(guests, Duration::from_secs(secs), samples, hostile_run);
            return;
        }
        _ => {}
    }
    let runs = [
        ("well-behaved", run_child(guests, secs, samples, false)),
        ("1% hostile", run_child(guests, secs, samples, true)),
    ];
    let get = |r: &BTreeMap<String, String>, k: &str| r.get(k).cloned().unwrap_or("-".into());
    println!(
        "{guests} guests heartbeating every {} s (failure interval {} s), each announcing itself; steady state measured over {secs} s; {samples} + {samples} latency samples",
        HEARTBEAT.as_secs(),
        FAILURE_INTERVAL.as_secs()
    );
    println!(
        "{:<52} {:>14} {:>14} {:>8}",
        "", runs[0].0, runs[1].0, "target"
    );
    let row = |label: &str, key: &str, target: &str| {
        println!(
            "{:<52} {:>14} {:>14} {:>8}",
            label,
            get(&runs[0].1, key),
            get(&runs[1].1, key),
            target
        );
    };
    row(
        "RLIMIT_NOFILE (soft) after raising it",
        "nofile",
        ">= 65536",
    );
    row("hostile guests", "hostile", "");
    row(
        "ramp until every well-behaved guest is Green (s)",
        "ramp_s",
        "",
    );
    row("well-behaved guests Green at the start", "greens", "");
    row(
        "host agent CPU, getrusage of its process (cores)",
        "cpu_cores",
        "< 1",
    );
    row("RssAnon growth per VM (KiB)", "anon_kib_per_vm", "~10");
    row("RssAnon total (MiB)", "anon_mib", "");
    row("VmRSS total (MiB)", "rss_mib", "");
    row(
        "reset decision past the interval, p50 (ms)",
        "reset_p50",
        "",
    );
    row(
        "reset decision past the interval, p99 (ms)",
        "reset_p99",
        "",
    );
    row(
        "reset decision past the interval, max (ms)",
        "reset_max",
        "",
    );
    row("  samples decided", "reset_n", "");
    row("needReset -> reset decision, p50 (ms)", "ask_p50", "");
    row("needReset -> reset decision, p99 (ms)", "ask_p99", "<= 10");
    row("needReset -> reset decision, max (ms)", "ask_max", "");
    row("  samples decided", "ask_n", "");
    row(
        "other well-behaved guests not Green at the end",
        "not_green",
        "0",
    );
    row("other well-behaved guests reset", "reset_wrongly", "0");
    row(
        "well-behaved guests told non-Green / session lost",
        "farm_spoiled",
        "0",
    );
    row("hostile VMs reset (their own doing)", "hostile_reset", "");
}
