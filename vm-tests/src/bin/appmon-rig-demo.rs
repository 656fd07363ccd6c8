//! appmon-rig-demo: the demo that `scripts/demo` runs. HOST side.
//!
//! Boots a guest on the VM-test rig (a domain `appmon-t-demo-<pid>-<n>` under qemu:///system,
//! with the guest agent `appmon-guest` and the demo application `appmon-demo` inside), starts the
//! real host agent `appmon-host` for it, enables monitoring with `appmonctl enable` as an
//! operator would, and then shows the status once a second while it narrates: Green → the demo
//! application is told to stop heartbeating → Red → the host agent resets the VM → it boots → the
//! guest agent enables again → Green. Then (unless `--once`) the user types commands for the
//! demo application (stop, resume, needreset, ...) and watches what the host agent does.
//! Ctrl-C (SIGINT) or SIGTERM ends it and removes everything it created: the domain, the vsock
//! backend, the host agent and their directory.
//!
//!     appmon-rig-demo [--once]
//!
//! MON's page (`http://127.0.0.1:8315/mon/#demo`, user `mon`, password `appmon-demo`) shows the
//! same story: the demo saves a view of the guest's CPU and of a custom counter its feeder
//! script publishes (`Demo/requests`).
//!
//! `--once` runs the scenario once and exits 0 when the status came back to Green and the MON
//! page answered with the guest's counters, 1 if not.
//!
//! This program never opens AF_VSOCK (the machine's own /dev/vsock belongs to its
//! infrastructure): it reaches the guest through vhost-device-vsock's hybrid-vsock Unix socket.

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use appmon_host_agent::mon::page::views::ViewStore;
use appmon_vm_tests::demo::mon_page;
use appmon_vm_tests::{
    enable_args, markers, test_host_config, Defaults, HistoryEntry, HostAgent, ResetMethod, Status,
    TestVm, VmConfig, VmView, DEFAULT_BOOT_TIMEOUT,
};
use signal_hook::consts::{SIGINT, SIGTERM};

/// How often the demo looks; the status line is printed once a second.
const POLL: Duration = Duration::from_millis(200);
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Bound for each command to the demo application.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound for the guest agent and the demo application to bring the status to Green.
const GREEN_TIMEOUT: Duration = Duration::from_secs(90);

/// What the demo application takes on its control port (guest-programs/src/bin/appmon-demo.rs).
const DEMO_COMMANDS: &[(&str, &str)] = &[
    ("stop", "stop heartbeating (the application hangs)"),
    ("resume", "heartbeat again"),
    (
        "needreset",
        "appmon postAppState appStateNeedReset: ask for a reset now",
    ),
    ("ok", "appmon postAppState appStateOk: take needReset back"),
    ("disable", "appmon disable"),
    ("enable", "appmon enable"),
    ("status", "the demo application's own state"),
    (
        "appstatus",
        "appmon getAppStatus: the status as the guest sees it",
    ),
    (
        "exit",
        "the demo application exits (the guest's init starts it again)",
    ),
    ("reboot", "reboot the guest from inside"),
];

fn main() -> ExitCode {
    let mut once = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--once" => once = true,
            "-h" | "--help" => {
                println!(
                    "usage: appmon-rig-demo [--once]   (scripts/demo sets up the rig and runs it)"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("appmon-rig-demo: unknown argument {other:?} (see --help)");
                return ExitCode::from(2);
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // A second Ctrl-C while cleaning up exits at once; the next run sweeps what is left.
        let registered = signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())
            .and_then(|_| signal_hook::flag::register(sig, stop.clone()));
        if let Err(e) = registered {
            eprintln!("appmon-rig-demo: cannot install the signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    run(once, stop)
}

/// Why the scenario ended early.
enum Ended {
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// Something did not happen in time.
    Failed(String),
}

struct Demo<'a> {
    vm: &'a TestVm,
    agent: &'a HostAgent,
    policy: Defaults,
    t0: Instant,
    stop: Arc<AtomicBool>,
    last_line: Option<Instant>,
    last_printed: Option<HistoryEntry>,
}

fn run(once: bool, stop: Arc<AtomicBool>) -> ExitCode {
    let policy = Defaults {
        failure_interval: Duration::from_secs(5),
        min_uptime: Duration::from_secs(10),
        max_resets: 3,
        reset_window: Duration::from_secs(3600),
        reset_method: ResetMethod::Reset,
    };
    println!("appmon demo: VM and application high availability for KVM/QEMU hosts run by libvirt");
    println!();
    let vm = TestVm::new(
        VmConfig::new("demo")
            .guest_config(mon_page::GUEST_CONFIG)
            .guest_file("/etc/ccad.conf", mon_page::CCAD_CONF)
            .guest_script("/etc/appmon/init.d/feeder", mon_page::FEEDER),
    );
    vm.rig().require_guest_program("appmon-guest");
    vm.rig().require_guest_program("appmon-demo");
    let mut config = test_host_config();
    config.mon.listen = Some(mon_page::ADDR.parse().expect("a socket address"));
    config.mon.user = Some(mon_page::USER.into());
    config.mon.password = Some(mon_page::PASSWORD.into());
    let agent = HostAgent::start(&[&vm], config);
    let views = ViewStore::new(agent.state_dir().join("views"));
    if let Err(e) = views.save(&mon_page::view(vm.name())) {
        eprintln!("appmon-rig-demo: cannot save the MON page's demo view: {e}");
    }
    println!(
        "  guest       {} (QEMU under libvirt, qemu:///system; software emulation)",
        vm.name()
    );
    println!("              inside: the guest agent appmon-guest, and the demo application, which");
    println!("              enables monitoring and calls `appmon markActive` once a second");
    println!(
        "  vsock       vhost-device-vsock (pid {}), hybrid-vsock socket {}",
        vm.backend_pid().map_or("-".into(), |p| p.to_string()),
        vm.vsock_uds().display()
    );
    println!(
        "  host agent  appmon-host (pid {}), config {}, log {}",
        agent.pid().map_or("-".into(), |p| p.to_string()),
        agent.config_path().display(),
        agent.log_path().display()
    );
    let mut enable = vec![
        "appmonctl".to_owned(),
        "enable".into(),
        vm.name().into(),
        "--vsock-uds".into(),
        vm.vsock_uds().display().to_string(),
    ];
    enable.extend(enable_args(&policy));
    println!(
        "  MON page    http://{}/mon/#{} (user {}, password {}): the VM's status and history, a",
        mon_page::ADDR,
        mon_page::VIEW,
        mon_page::USER,
        mon_page::PASSWORD
    );
    println!(
        "              view of its CPU and its custom counter Demo/requests, live; point a browser"
    );
    println!("              there (from elsewhere: ssh -L 8315:127.0.0.1:8315 this-host)");
    println!("  operator    {}", enable.join(" "));
    println!(
        "              (reset: the guest agent announces itself when the guest is back, and the host"
    );
    println!("              agent sends it nothing meanwhile)");
    agent.enable(&vm, &policy);
    println!();

    let mut demo = Demo {
        vm: &vm,
        agent: &agent,
        policy,
        t0: Instant::now(),
        stop: stop.clone(),
        last_line: None,
        last_printed: None,
    };
    let code: u8 = match demo.scenario() {
        Ok(()) if once => match mon_page::check(vm.name()) {
            Ok(seen) => {
                println!("MON page answered: {seen}");
                0
            }
            Err(why) => {
                eprintln!("appmon-rig-demo: FAILED: the MON page: {why}");
                1
            }
        },
        Ok(()) => {
            demo.interactive();
            0
        }
        Err(Ended::Interrupted) => 130,
        Err(Ended::Failed(why)) => {
            eprintln!("appmon-rig-demo: FAILED: {why}\n{}", vm.diagnostics());
            1
        }
    };
    let name = vm.name().to_owned();
    let dir = vm.dir().to_path_buf();
    println!();
    println!(
        "cleaning up: appmon-host, domain {name} (destroy, undefine), vhost-device-vsock, {}",
        dir.display()
    );
    drop(agent);
    drop(vm);
    let gone = vm_gone(&name) && !dir.exists();
    println!(
        "{}",
        if gone {
            "cleaned up."
        } else {
            "cleanup incomplete (see the messages above); `scripts/rig-down` removes leftovers"
        }
    );
    ExitCode::from(code)
}

fn vm_gone(name: &str) -> bool {
    appmon_vm_tests::virsh::virsh(&["domstate", name]).is_err()
}

impl Demo<'_> {
    /// The story: boot, Green, stop, Red, reset, boot, Green.
    fn scenario(&mut self) -> Result<(), Ended> {
        let fi = self.policy.failure_interval;
        self.say("booting the guest (virsh start)");
        self.vm.start();
        let ready = self.until("the guest to boot", DEFAULT_BOOT_TIMEOUT, |vm, _| {
            vm.marker_count(markers::GUEST_READY) >= 1
        });
        ready?;
        self.say(
            "the guest runs; its guest agent announces itself to the host agent (vsock CID 2, port 5315)",
        );
        let boot = self.vm.boot_ids().last().cloned().unwrap_or_default();
        let green = self.until("Green", GREEN_TIMEOUT, |_, s| {
            s.is(Status::Green) && s.guest_boot_id.as_deref() == Some(boot.as_str())
        });
        let s = green?;
        self.say("GREEN: the application enabled monitoring and its heartbeats arrive");
        if let Ok(view) = self.vm.try_demo_command("appstatus", COMMAND_TIMEOUT) {
            self.say(&format!(
                "inside the guest, `appmon getAppStatus` says: {view}"
            ));
        }

        // Green for two failure intervals, and past the minimum uptime, so that it is the
        // failure interval alone that decides below.
        let booted = s.last_boot_event().map_or(0, |h| h.unix_ms);
        let hold_until =
            (appmon_vm_tests::unix_ms_now() + 2 * ms(fi)).max(booted + ms(self.policy.min_uptime));
        let held = self.until("green to hold", Duration::from_secs(120), |_, _| {
            appmon_vm_tests::unix_ms_now() >= hold_until
        });
        held?;

        let resets_before = self
            .agent
            .try_show(self.vm.name())
            .map_or(0, |s| s.reset_decisions().len());
        let boots_before = self.vm.boot_ids().len();
        self.say(
            "> stop   (the demo application stops calling `appmon markActive`: as if it hung)",
        );
        match self.vm.try_demo_command("stop", COMMAND_TIMEOUT) {
            Ok(answer) => self.say(&format!("  demo application: {answer}")),
            Err(e) => {
                return Err(Ended::Failed(format!(
                    "the demo application did not take `stop`: {e}"
                )))
            }
        }
        let stopped = Instant::now();
        self.say(&format!(
            "the host agent resets the VM when no heartbeat came for the failure interval ({} s)",
            fi.as_secs()
        ));
        let red = self.until("Red", fi + Duration::from_secs(30), |_, s| {
            !s.is(Status::Green)
        });
        red?;
        self.say("RED: heartbeats are overdue");
        let reset = self.until("the reset", Duration::from_secs(30), |_, s| {
            s.reset_decisions().len() > resets_before
        });
        let s = reset?;
        if let Some(d) = s.reset_decisions().last() {
            self.say(&format!("the host agent decided: {}", d.text));
        }
        let rebooted = self.until("the guest to boot again", DEFAULT_BOOT_TIMEOUT, |vm, _| {
            vm.boot_ids().len() > boots_before
                && vm.marker_count(markers::GUEST_READY) > boots_before
        });
        rebooted?;
        let boot = self.vm.boot_ids().last().cloned().unwrap_or_default();
        self.say(&format!(
            "the guest booted again (boot id {})",
            short(&boot)
        ));
        let green = self.until("Green again", GREEN_TIMEOUT, |_, s| {
            s.is(Status::Green) && s.guest_boot_id.as_deref() == Some(boot.as_str())
        });
        green?;
        self.say(&format!(
            "GREEN again, {:.0} s after the application stopped: the guest agent and the application enabled monitoring again by themselves",
            stopped.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// After the story: the user's commands, until Ctrl-C or `quit`.
    fn interactive(&mut self) {
        println!();
        println!("Your turn. Type a command for the demo application and press Enter; `quit` or Ctrl-C ends the demo.");
        for (cmd, what) in DEMO_COMMANDS {
            println!("  {cmd:<10} {what}");
        }
        println!();
        let lines = stdin_lines();
        let mut stdin_open = true;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            self.tick(None);
            while stdin_open {
                match lines.try_recv() {
                    Ok(line) => {
                        let cmd = line.trim();
                        match cmd {
                            "" => {}
                            "quit" | "q" => return,
                            "help" | "?" => {
                                for (c, what) in DEMO_COMMANDS {
                                    println!("  {c:<10} {what}");
                                }
                            }
                            cmd => {
                                self.say(&format!("> {cmd}"));
                                match self.vm.try_demo_command(cmd, COMMAND_TIMEOUT) {
                                    Ok(answer) => {
                                        self.say(&format!("  demo application: {answer}"))
                                    }
                                    Err(e) => self.say(&format!("  demo application: {e}")),
                                }
                            }
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => stdin_open = false,
                }
            }
            thread::sleep(POLL);
        }
    }

    /// Polls until `cond` holds (with the host agent's view of the guest), printing the status
    /// once a second and the host agent's new history entries as they come.
    fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&TestVm, &VmView) -> bool,
    ) -> Result<VmView, Ended> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(Ended::Interrupted);
            }
            let status = self.tick(Some(what));
            if let Some(s) = status {
                if cond(self.vm, &s) {
                    return Ok(s);
                }
            }
            if Instant::now() >= deadline {
                return Err(Ended::Failed(format!(
                    "timed out after {timeout:?} waiting for {what}"
                )));
            }
            thread::sleep(POLL);
        }
    }

    /// One look: new history entries, and the status line when a second has passed.
    fn tick(&mut self, waiting_for: Option<&str>) -> Option<VmView> {
        let status = self.agent.try_show(self.vm.name()).ok();
        if let Some(s) = &status {
            self.print_new_history(s);
        }
        if self.last_line.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
            self.last_line = Some(Instant::now());
            println!("{}", self.status_line(status.as_ref(), waiting_for));
        }
        status
    }

    fn status_line(&self, s: Option<&VmView>, waiting_for: Option<&str>) -> String {
        let t = self.t0.elapsed().as_secs_f64();
        let Some(s) = s else {
            return format!("[{t:6.1}s] (the host agent does not answer)");
        };
        let max = s.policy.as_ref().map_or(0, |p| p.max_resets);
        format!(
            "[{t:6.1}s] domain {:<18} status {:<6} heartbeat {:<11} resets {}/{}  boot {}  guest agent {}{}",
            s.domain_state.to_string(),
            s.status.map_or("-", Status::as_str).to_uppercase(),
            s.last_heartbeat_age_ms
                .map_or("-".to_owned(), |a| format!("{:.1}s ago", a as f64 / 1000.0)),
            s.resets_in_window,
            max,
            s.guest_boot_id.as_deref().map_or("-", short),
            if s.connected { "connected" } else { "not connected" },
            waiting_for.map_or(String::new(), |w| format!("   (waiting for {w})")),
        )
    }

    fn print_new_history(&mut self, s: &VmView) {
        let start = match &self.last_printed {
            None => 0,
            Some(last) => s
                .history
                .iter()
                .rposition(|h| h == last)
                .map_or(0, |i| i + 1),
        };
        for h in &s.history[start..] {
            println!(
                "[{:6.1}s]   host agent history: {:<8} {}",
                self.t0.elapsed().as_secs_f64(),
                h.kind.name(),
                h.text
            );
        }
        if let Some(last) = s.history.last() {
            self.last_printed = Some(last.clone());
        }
    }

    fn say(&self, text: &str) {
        println!("[{:6.1}s] ** {text}", self.t0.elapsed().as_secs_f64());
    }
}

/// Lines typed on stdin, read on their own thread.
fn stdin_lines() -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
