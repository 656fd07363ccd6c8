//! Idle memory of appmon-guest next to Debian's qemu-guest-agent, measured in one run.
//!
//!     cargo bench -p appmon-guest-agent --bench idle_rss
//!     APPMON_GUEST_BIN=target/guest/x86_64-unknown-linux-gnu/guest/appmon-guest \
//!         cargo bench -p appmon-guest-agent --bench idle_rss      # the shipped static binary
//!
//! Both agents start idle on Unix sockets in a temporary directory (qemu-ga with
//! `--method=unix-listen`; appmon-guest with only its Unix host listener and its local API
//! socket: never AF_VSOCK on a development machine), settle for a few seconds, and then each is
//! measured three ways, side by side, because one figure alone favours one of them:
//!
//! - VmRSS (and its peak VmHWM, its anonymous part RssAnon) from /proc/<pid>/status: every
//!   resident page the process maps, shared library pages counted in full. Our binary is static,
//!   qemu-ga is linked against libc and glib, whose pages other processes map too: VmRSS charges
//!   qemu-ga for all of them.
//! - Pss from /proc/<pid>/smaps_rollup: each page divided by the number of processes that map
//!   it. Depends on what else runs on the machine at the time.
//! - Private (Private_Clean + Private_Dirty from smaps_rollup, the USS): the pages only this
//!   process maps, what the system gets back when it exits. Library pages count only where no
//!   other process maps them.
//!
//! Both are stopped by pid, also on failure. qemu-ga comes from Debian: `apt-get install
//! qemu-guest-agent`.

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

/// A process's memory, in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    vm_rss: u64,
    vm_hwm: u64,
    rss_anon: u64,
    pss: u64,
    /// Private_Clean + Private_Dirty: the unique set size.
    private: u64,
}

/// The `<name> <value> kB` field of a /proc file.
fn kib_field(text: &str, file: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {file}"))
}

fn memory_kib(pid: u32) -> Memory {
    let read = |file: &str| std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let status_file = format!("/proc/{pid}/status");
    let rollup_file = format!("/proc/{pid}/smaps_rollup");
    let (status, rollup) = (read(&status_file), read(&rollup_file));
    let status_kib = |name| kib_field(&status, &status_file, name);
    let rollup_kib = |name| kib_field(&rollup, &rollup_file, name);
    Memory {
        vm_rss: status_kib("VmRSS:"),
        vm_hwm: status_kib("VmHWM:"),
        rss_anon: status_kib("RssAnon:"),
        pss: rollup_kib("Pss:"),
        private: rollup_kib("Private_Clean:") + rollup_kib("Private_Dirty:"),
    }
}

fn print_row(name: &str, m: Memory, note: &str) {
    println!(
        "{name:<14}{:>8}{:>8}{:>9}{:>8}{:>9}   {note}",
        m.vm_rss, m.vm_hwm, m.rss_anon, m.pss, m.private
    );
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

    let qga = match find_qemu_ga() {
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
    let ours = memory_kib(agent.child.id());
    let theirs = qga.as_ref().map(|q| memory_kib(q.child.id()));
    println!("idle memory after {SETTLE:?} (KiB)");
    println!(
        "{:<14}{:>8}{:>8}{:>9}{:>8}{:>9}",
        "", "VmRSS", "VmHWM", "RssAnon", "Pss", "Private"
    );
    print_row("appmon-guest", ours, &agent_bin.display().to_string());
    if let Some(theirs) = theirs {
        print_row("qemu-ga", theirs, "");
        let ratio = |a: u64, b: u64| a as f64 / b as f64;
        println!(
            "appmon-guest / qemu-ga: VmRSS {:.2}, RssAnon {:.2}, Pss {:.2}, Private {:.2}",
            ratio(ours.vm_rss, theirs.vm_rss),
            ratio(ours.rss_anon, theirs.rss_anon),
            ratio(ours.pss, theirs.pss),
            ratio(ours.private, theirs.private),
        );
    }
    drop(qga);
    drop(agent);
}
