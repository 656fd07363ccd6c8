//! appmon-demo: a small application that is monitored by appmon, for the demo and the VM tests.
//!
//! ************************************************************************************************
//! GUEST-ONLY. This program opens an AF_VSOCK listener. It runs ONLY inside the nested test
//! guests (the rig image's /init starts it). NEVER run it on the host: the host's /dev/vsock
//! belongs to the infrastructure of the machine the tests run on. It refuses to start unless
//! /etc/appmon/rig-guest exists, which only scripts/build-guest-image puts into the guest image.
//! ************************************************************************************************
//!
//! It does what an application monitored by vSphere HA does, through the `appmon` CLI: it
//! enables monitoring, then calls `appmon markActive` every interval. The host tells it to
//! misbehave over its control port (vsock [`DEMO_CONTROL_PORT`], one command per line, one
//! answer line `ok ...` or `error ...`):
//!
//! | command   | what the demo does                                            |
//! |-----------|---------------------------------------------------------------|
//! | `stop`    | stops heartbeating (the application "hangs")                  |
//! | `resume`  | heartbeats again                                              |
//! | `needreset` | `appmon postAppState appStateNeedReset`                     |
//! | `ok`      | `appmon postAppState appStateOk`                              |
//! | `disable` | `appmon disable`, and stops heartbeating                      |
//! | `enable`  | `appmon enable`, and heartbeats                               |
//! | `status`  | answers with its state and heartbeat count                    |
//! | `appstatus` | `appmon getAppStatus`: green, red or gray, as the guest sees it |
//! | `exit`    | exits (the image's /init starts it again)                     |
//! | `reboot`  | reboots the guest (`reboot -f`)                               |
//! | `reboot-in N` | answers at once, reboots the guest (`reboot -f`) N seconds later (at most 600), heartbeating meanwhile: a guest that reboots by itself, with no host connection open then |
//! | `burn N`  | keeps one CPU busy for N seconds (at most 600), answering at once |
//!
//! The kernel command line sets how it starts: `appmon.demo=heartbeat` (default),
//! `appmon.demo=idle` (never enables), `appmon.demo=stop-after:N` (stops after N heartbeats),
//! `appmon.demo=needreset-after:N` (posts needReset after N heartbeats), and
//! `appmon.demo.interval=MS` (default 1000).

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use appmon_guest_programs::{cmdline_value, listen, require_rig_guest, DEMO_CONTROL_PORT};

const CLI: &str = "/bin/appmon";

/// How the demo starts, from the kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Heartbeat,
    Idle,
    StopAfter(u64),
    NeedResetAfter(u64),
}

impl Start {
    fn parse(text: &str) -> Option<Start> {
        let (word, n) = match text.split_once(':') {
            Some((w, n)) => (w, Some(n.parse().ok()?)),
            None => (text, None),
        };
        match (word, n) {
            ("heartbeat", None) => Some(Start::Heartbeat),
            ("idle", None) => Some(Start::Idle),
            ("stop-after", Some(n)) => Some(Start::StopAfter(n)),
            ("needreset-after", Some(n)) => Some(Start::NeedResetAfter(n)),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    enabled: bool,
    heartbeating: bool,
    heartbeats: u64,
    failed_heartbeats: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    // A panic elsewhere leaves the counters usable; the demo goes on.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `appmon ARGS`; Ok with its output, or Err saying how it failed.
fn appmon(args: &[&str]) -> Result<String, String> {
    let out = Command::new(CLI)
        .args(args)
        .output()
        .map_err(|e| format!("{CLI} {}: {e}", args.join(" ")))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{CLI} {} exited with {}: {}{}",
            args.join(" "),
            out.status
                .code()
                .map_or("a signal".to_string(), |c| c.to_string()),
            text,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn main() -> ExitCode {
    if let Err(e) = require_rig_guest("appmon-demo") {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let start = match cmdline_value(&cmdline, "appmon.demo") {
        None => Start::Heartbeat,
        Some(text) => match Start::parse(text) {
            Some(s) => s,
            None => {
                eprintln!("appmon-demo: appmon.demo={text} is not heartbeat, idle, stop-after:N or needreset-after:N");
                return ExitCode::from(2);
            }
        },
    };
    let interval = cmdline_value(&cmdline, "appmon.demo.interval")
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis);
    println!("appmon-demo: starting ({start:?}, interval {interval:?})");

    let state: Shared = Arc::default();
    let listener = match listen(DEMO_CONTROL_PORT) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("appmon-demo: cannot listen on vsock port {DEMO_CONTROL_PORT}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let control_state = state.clone();
    thread::spawn(move || serve_control(listener, control_state));

    if start != Start::Idle {
        enable_when_agent_answers(&state, interval);
    }
    heartbeat_loop(&state, start, interval)
}

fn enable_when_agent_answers(state: &Shared, interval: Duration) {
    let mut logged = false;
    loop {
        match appmon(&["enable"]) {
            Ok(_) => {
                println!("appmon-demo: monitoring enabled");
                let mut s = lock(state);
                s.enabled = true;
                s.heartbeating = true;
                return;
            }
            Err(e) if !logged => {
                println!("appmon-demo: enable failed, retrying: {e}");
                logged = true;
            }
            Err(_) => {}
        }
        thread::sleep(interval);
    }
}

fn heartbeat_loop(state: &Shared, start: Start, interval: Duration) -> ExitCode {
    loop {
        thread::sleep(interval);
        let (heartbeating, count) = {
            let s = lock(state);
            (s.heartbeating, s.heartbeats)
        };
        if !heartbeating {
            continue;
        }
        match start {
            Start::StopAfter(n) if count >= n => {
                lock(state).heartbeating = false;
                println!("appmon-demo: stopping heartbeats after {count} (stop-after:{n})");
                continue;
            }
            Start::NeedResetAfter(n) if count == n => {
                println!("appmon-demo: posting needReset after {count} heartbeats");
                if let Err(e) = appmon(&["postAppState", "appStateNeedReset"]) {
                    println!("appmon-demo: {e}");
                }
            }
            _ => {}
        }
        match appmon(&["markActive"]) {
            Ok(_) => {
                let mut s = lock(state);
                s.heartbeats += 1;
                if s.heartbeats == 1 || s.heartbeats % 10 == 0 {
                    println!("appmon-demo: heartbeat {}", s.heartbeats);
                }
            }
            Err(e) => {
                let mut s = lock(state);
                s.failed_heartbeats += 1;
                if s.failed_heartbeats == 1 || s.failed_heartbeats % 10 == 0 {
                    println!(
                        "appmon-demo: heartbeat failed ({} so far): {e}",
                        s.failed_heartbeats
                    );
                }
            }
        }
    }
}

fn serve_control(listener: vsock::VsockListener, state: Shared) {
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                let state = state.clone();
                thread::spawn(move || {
                    if let Err(e) = serve_connection(conn, &state) {
                        println!("appmon-demo: control connection failed: {e}");
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                println!("appmon-demo: control accept failed: {e}");
                thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn serve_connection(conn: vsock::VsockStream, state: &Shared) -> io::Result<()> {
    let mut writer = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let command = line?;
        let command = command.trim();
        let answer = run_command(command, state);
        println!("appmon-demo: command {command:?}: {answer}");
        writeln!(writer, "{answer}")?;
        writer.flush()?;
        match command {
            "exit" => std::process::exit(0),
            "reboot" => {
                let _ = Command::new("reboot").arg("-f").status();
            }
            _ => {}
        }
    }
    Ok(())
}

fn run_command(command: &str, state: &Shared) -> String {
    let result = match command {
        "stop" => {
            lock(state).heartbeating = false;
            Ok("heartbeats stopped".to_string())
        }
        "resume" => {
            lock(state).heartbeating = true;
            Ok("heartbeating".to_string())
        }
        "needreset" => {
            appmon(&["postAppState", "appStateNeedReset"]).map(|_| "needReset posted".into())
        }
        "ok" => appmon(&["postAppState", "appStateOk"]).map(|_| "appStateOk posted".into()),
        "disable" => appmon(&["disable"]).map(|_| {
            let mut s = lock(state);
            s.enabled = false;
            s.heartbeating = false;
            "disabled".to_string()
        }),
        "enable" => appmon(&["enable"]).map(|_| {
            let mut s = lock(state);
            s.enabled = true;
            s.heartbeating = true;
            "enabled".to_string()
        }),
        "appstatus" => appmon(&["getAppStatus"]),
        "status" => {
            let s = lock(state);
            Ok(format!(
                "enabled={} heartbeating={} heartbeats={} failed={}",
                s.enabled, s.heartbeating, s.heartbeats, s.failed_heartbeats
            ))
        }
        "exit" => Ok("exiting".to_string()),
        "reboot" => Ok("rebooting".to_string()),
        other if other.starts_with("reboot-in ") => {
            match other["reboot-in ".len()..].trim().parse::<u64>() {
                Ok(secs) if secs <= 600 => {
                    thread::spawn(move || {
                        thread::sleep(Duration::from_secs(secs));
                        println!("appmon-demo: rebooting the guest (reboot -f)");
                        let _ = Command::new("reboot").arg("-f").status();
                    });
                    Ok(format!("rebooting in {secs} s"))
                }
                _ => Err("reboot-in takes a number of seconds up to 600".to_string()),
            }
        }
        other => match other.strip_prefix("burn ").map(|n| n.trim().parse::<u64>()) {
            Some(Ok(secs)) if secs <= 600 => {
                thread::spawn(move || burn(Duration::from_secs(secs)));
                Ok(format!("burning a CPU for {secs} s"))
            }
            Some(_) => Err("burn takes a number of seconds up to 600".to_string()),
            None => Err(format!("unknown command {other:?}")),
        },
    };
    match result {
        Ok(text) => format!("ok {text}"),
        Err(text) => format!("error {text}"),
    }
}

/// Spins for `how_long`: the load the guest's CPU counters should show.
fn burn(how_long: Duration) {
    let end = std::time::Instant::now() + how_long;
    let mut x = 0u64;
    while std::time::Instant::now() < end {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_modes_parse() {
        assert_eq!(Start::parse("heartbeat"), Some(Start::Heartbeat));
        assert_eq!(Start::parse("idle"), Some(Start::Idle));
        assert_eq!(Start::parse("stop-after:3"), Some(Start::StopAfter(3)));
        assert_eq!(
            Start::parse("needreset-after:10"),
            Some(Start::NeedResetAfter(10))
        );
        for bad in ["", "stop-after", "stop-after:x", "heartbeat:1", "sleep"] {
            assert_eq!(Start::parse(bad), None, "{bad:?}");
        }
    }
}
