//! Idle memory of appmon-guest next to Debian's qemu-guest-agent, measured in one run.
//!
//!     cargo bench -p appmon-guest-agent --bench idle_rss
//!     APPMON_GUEST_BIN=target/guest/x86_64-unknown-linux-gnu/guest/appmon-guest \
//!         cargo bench -p appmon-guest-agent --bench idle_rss      # the shipped static binary
//!
//! Both agents start idle on Unix sockets in a temporary directory (qemu-ga with
//! `--method=unix-listen`; appmon-guest with only its Unix host listener and its local API
//! socket: never AF_VSOCK on a development machine), settle for a few seconds, and then their
//! VmRSS and VmHWM are read from /proc/<pid>/status. Both are stopped by pid, also on failure.
//! qemu-ga comes from Debian: `apt-get install qemu-guest-agent`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long both agents idle before they are measured.
const SETTLE: Duration = Duration::from_secs(3);
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process that is stopped by its pid when dropped.
struct Running {
    name: &'static str,
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

/// VmRSS and VmHWM of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn wait_for_socket(path: &Path, who: &mut Running) {
    let start = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = who.child.try_wait() {
            panic!("{} exited early: {status}", who.name);
        }
        assert!(
            start.elapsed() < START_TIMEOUT,
            "{} did not create {} within {START_TIMEOUT:?}",
            who.name,
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn find_qemu_ga() -> Option<PathBuf> {
    ["/usr/sbin/qemu-ga", "/usr/bin/qemu-ga"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn main() {
    let agent_bin = std::env::var_os("APPMON_GUEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_appmon-guest")));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("guest.toml");
    std::fs::write(
        &config,
        format!(
            "vsock = false\nhost_unix_socket = \"{}\"\nsocket = \"{}\"\n",
            dir.path().join("host.sock").display(),
            dir.path().join("app.sock").display()
        ),
    )
    .expect("write config");

    let mut agent = Running {
        name: "appmon-guest",
        child: Command::new(&agent_bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", agent_bin.display())),
    };
    wait_for_socket(&dir.path().join("app.sock"), &mut agent);

    let mut qga = match find_qemu_ga() {
        Some(bin) => {
            let sock = dir.path().join("qga.sock");
            let mut running = Running {
                name: "qemu-ga",
                child: Command::new(&bin)
                    .arg("--method=unix-listen")
                    .arg(format!("--path={}", sock.display()))
                    .arg(format!(
                        "--pidfile={}",
                        dir.path().join("qga.pid").display()
                    ))
                    .arg(format!("--statedir={}", dir.path().display()))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("start {}: {e}", bin.display())),
            };
            wait_for_socket(&sock, &mut running);
            Some(running)
        }
        None => {
            println!(
                "qemu-ga not found: install Debian's qemu-guest-agent (apt-get install qemu-guest-agent) to compare"
            );
            None
        }
    };

    std::thread::sleep(SETTLE);
    let (rss, hwm) = memory_kib(agent.child.id());
    println!("idle memory after {SETTLE:?} (KiB)");
    println!("{:<16}{:>8}{:>8}", "", "VmRSS", "VmHWM");
    println!(
        "{:<16}{rss:>8}{hwm:>8}   {}",
        "appmon-guest",
        agent_bin.display()
    );
    if let Some(qga) = qga.as_mut() {
        let (q_rss, q_hwm) = memory_kib(qga.child.id());
        println!("{:<16}{q_rss:>8}{q_hwm:>8}", "qemu-ga");
        println!(
            "appmon-guest / qemu-ga VmRSS: {:.2} ({} KiB less)",
            rss as f64 / q_rss as f64,
            i64::try_from(q_rss).unwrap_or(0) - i64::try_from(rss).unwrap_or(0)
        );
    }
    drop(qga);
    drop(agent);
}
