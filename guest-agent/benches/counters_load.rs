//! What counters cost the guest agent: CPU and memory of appmon-guest with the standard
//! counters at a 1 s pace and 200 custom counters fed through a named pipe every second, side
//! by side with an idle appmon-guest (counters off), in one run.
//!
//!     cargo bench -p appmon-guest-agent --bench counters_load [-- SECONDS]     (default 30)
//!     APPMON_GUEST_BIN=target/guest/x86_64-unknown-linux-gnu/guest/appmon-guest \
//!         cargo bench -p appmon-guest-agent --bench counters_load              # shipped binary
//!
//! Both agents run on Unix sockets in a temporary directory (never AF_VSOCK), each with a test
//! host connected that reads everything it is sent; the busy one's host takes counters (so the
//! agent encodes and sends the schema and every value), the idle one's does not. A feeder thread
//! writes the 200 custom counters' lines and a `.` into the pipe once a second, in one write,
//! as the seed's `curl | sed > pipe` loop does. After a warm-up, CPU time (utime + stime from
//! /proc/<pid>/stat) is taken over the measured window, then VmRSS and VmHWM. The agents are
//! stopped by pid, also on failure.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appmon_wire::{decode_all, encode_frame, Capabilities, Frame, GuestMsg, Hello, HostMsg};

const WARM_UP: Duration = Duration::from_secs(3);
const START_TIMEOUT: Duration = Duration::from_secs(10);
const CUSTOM: usize = 200;

/// A child process that is stopped by its pid when dropped.
struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test host on the agent's Unix host socket, reading everything on a thread of its own.
struct TestHost {
    bytes: Arc<AtomicU64>,
    received: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl TestHost {
    fn connect(path: &Path, capabilities: Capabilities) -> TestHost {
        let mut stream = UnixStream::connect(path).expect("connect to the agent's host socket");
        let hello = Hello::new("counters bench", [9; 16], capabilities);
        let frame = encode_frame(&Frame::event(HostMsg::Hello(hello))).expect("encode Hello");
        stream.write_all(&frame).expect("send Hello");
        let bytes = Arc::new(AtomicU64::new(0));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (b, r) = (bytes.clone(), received.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                b.fetch_add(n as u64, Ordering::Relaxed);
                if let Ok(mut r) = r.lock() {
                    r.extend_from_slice(&buf[..n]);
                }
            }
        });
        TestHost { bytes, received }
    }

    /// (schema parts, values frames, values) received so far.
    fn counted(&self) -> (usize, usize, usize) {
        let bytes = self.received.lock().map(|r| r.clone()).unwrap_or_default();
        let mut counts = (0, 0, 0);
        for frame in decode_all::<GuestMsg>(&bytes).into_iter().flatten() {
            match frame.msg {
                GuestMsg::CounterSchema(_) => counts.0 += 1,
                GuestMsg::CounterValues(v) => {
                    counts.1 += 1;
                    counts.2 += v.values.len();
                }
                _ => {}
            }
        }
        counts
    }
}

fn start_agent(bin: &Path, dir: &Path, counters: &str) -> Running {
    let config = dir.join("guest.toml");
    std::fs::write(
        &config,
        format!(
            "vsock = false\nhost_unix_socket = \"{}\"\nsocket = \"{}\"\nlog_level = \"warn\"\n{counters}",
            dir.join("host.sock").display(),
            dir.join("app.sock").display()
        ),
    )
    .expect("write config");
    let mut running = Running {
        child: Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display())),
    };
    let start = Instant::now();
    while !dir.join("app.sock").exists() {
        if let Ok(Some(status)) = running.child.try_wait() {
            panic!("appmon-guest exited early: {status}");
        }
        assert!(
            start.elapsed() < START_TIMEOUT,
            "appmon-guest did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| fields[i].parse::<u64>().expect("a number");
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    n(11) + n(12)
}

/// VmRSS and VmHWM, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn ccad_conf(pipe: &Path) -> String {
    let mut text = format!(
        "counters Bench\n{{\npace = 1000\npipe = {}\n",
        pipe.display()
    );
    for i in 0..CUSTOM {
        text.push_str(&format!(
            "counter c{i}: desc = \"bench counter {i}\", units = \"#\"\n"
        ));
    }
    text.push_str("}\n");
    text
}

fn main() {
    let secs: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let window = Duration::from_secs(secs);
    let bin = std::env::var_os("APPMON_GUEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_appmon-guest")));
    let idle_dir = tempfile::tempdir().expect("temp dir");
    let busy_dir = tempfile::tempdir().expect("temp dir");
    let pipe = busy_dir.path().join("cca");
    let conf = busy_dir.path().join("ccad.conf");
    std::fs::write(&conf, ccad_conf(&pipe)).expect("write ccad.conf");

    let idle = start_agent(&bin, idle_dir.path(), "[counters]\nenabled = false\n");
    let busy = start_agent(
        &bin,
        busy_dir.path(),
        &format!(
            "[counters]\npace_ms = 1000\nccad_conf = \"{}\"\n",
            conf.display()
        ),
    );
    let idle_host = TestHost::connect(&idle_dir.path().join("host.sock"), Capabilities::HEARTBEAT);
    let busy_host = TestHost::connect(
        &busy_dir.path().join("host.sock"),
        Capabilities::HEARTBEAT | Capabilities::COUNTERS,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (stop, pipe) = (stop.clone(), pipe.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut text = String::new();
                for i in 0..CUSTOM {
                    text.push_str(&format!("c{i} = {}\n", round * 7 + i as u64));
                }
                text.push_str(".\n");
                // Opens and closes the pipe each round, as `... > /tmp/cca` does.
                if let Err(e) = std::fs::write(&pipe, &text) {
                    eprintln!("feeder: {e}");
                }
                round += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            round
        })
    };

    std::thread::sleep(WARM_UP);
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let pids = [idle.child.id(), busy.child.id()];
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let bytes_before = busy_host.bytes.load(Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(window);
    let elapsed = started.elapsed().as_secs_f64();
    let after: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let bytes = busy_host.bytes.load(Ordering::Relaxed) - bytes_before;
    let memory: Vec<(u64, u64)> = pids.iter().map(|&p| memory_kib(p)).collect();
    stop.store(true, Ordering::Relaxed);
    let rounds = feeder.join().unwrap_or(0);

    let (parts, frames, values) = busy_host.counted();
    let (idle_parts, idle_frames, _) = idle_host.counted();
    assert!(
        parts >= 1 && frames as f64 >= elapsed,
        "the busy agent sent counters: {parts} schema parts, {frames} values frames"
    );
    assert_eq!(
        (idle_parts, idle_frames),
        (0, 0),
        "the idle agent sent none"
    );
    println!(
        "appmon-guest, {secs} s measured after a {WARM_UP:?} warm-up; binary {}",
        bin.display()
    );
    println!(
        "{:<44}{:>8}{:>12}{:>12}",
        "", "CPU %", "VmRSS KiB", "VmHWM KiB"
    );
    let names = [
        "idle (counters off)".to_owned(),
        format!("standard at 1 s + {CUSTOM} custom through the pipe"),
    ];
    for (i, name) in names.iter().enumerate() {
        let cpu = (after[i] - before[i]) as f64 / ticks_per_sec / elapsed * 100.0;
        println!("{name:<44}{cpu:>8.2}{:>12}{:>12}", memory[i].0, memory[i].1);
    }
    println!(
        "busy agent sent {parts} schema part(s), {frames} values frames ({values} values), {:.0} bytes/s; feeder wrote {rounds} sets",
        bytes as f64 / elapsed
    );
    drop(busy);
    drop(idle);
}
