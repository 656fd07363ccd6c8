//! Managed applications and `appmonctl run` end to end (issue 15, the host side): a real guest
//! under libvirt + QEMU whose guest agent may launch what its `[processes]` allowlist says, and
//! the real `appmon-host` with two managed applications in the domain's metadata, written by
//! `appmonctl enable --applications`, as an operator does it.
//!
//! One boot carries every check, in an order where none disturbs the next: `appmonctl run`
//! (exit code and output), a refused command, the latency samples, a host-agent restart that
//! the processes survive, and last the application killed until the VM is reset.
#![cfg(feature = "vm")]

use std::time::{Duration, Instant};

use appmon_control::{
    LaunchRequest, ProcessEnd, ProcessNote, ProcessState, Request, ResetCause, Response,
};
use appmon_vm_tests::{
    enable_args, test_host_config, test_policy, unix_ms_now, Defaults, HostAgent, ResetMethod,
    Status, TestVm, VmConfig, VmView, DEFAULT_BOOT_TIMEOUT,
};

/// From the guest's ready marker to Green (see tests/ha.rs).
const GREEN_TIMEOUT: Duration = Duration::from_secs(90);
/// Slack for the host agent to notice what the guest told it.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the host may launch: shell commands and `sleep N`, as root; nothing else.
const GUEST_CONFIG: &str = r#"port = 5315

[processes]
default_user = "root"

[[processes.allow]]
command = "/bin/sh"
args = ["-c", { regex = ".*" }]

[[processes.allow]]
command = "/bin/sleep"
args = [{ regex = "[0-9]+" }]
"#;

/// `survivor` runs until /tmp/survivor-exit appears, then exits 3 (no restart: it shows its
/// end). `crashy` sleeps; killed, it is restarted twice within the window, then the VM is
/// reset.
const APPLICATIONS: &str = r#"
<appmon:application name="survivor" max-restarts="0" on-failure="give-up" poll-interval="1s">
  <appmon:arg value="/bin/sh"/>
  <appmon:arg value="-c"/>
  <appmon:arg value="while [ ! -e /tmp/survivor-exit ]; do sleep 1; done; exit 3"/>
</appmon:application>
<appmon:application name="crashy" max-restarts="2" restart-window="10m" restart-delay="500ms"
                    on-failure="reset" poll-interval="1s">
  <appmon:arg value="/bin/sleep"/>
  <appmon:arg value="100000"/>
</appmon:application>
"#;

/// Launches timed for the latency numbers, in rounds of `ROUND`.
const SAMPLES: usize = 50;
const ROUND: usize = 10;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(what: &str, mut ms: Vec<u64>) -> String {
    ms.sort_unstable();
    format!(
        "{what}: n={} min {} ms, median {} ms, p99 {} ms, max {} ms",
        ms.len(),
        ms[0],
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms[ms.len() - 1]
    )
}

fn call(agent: &HostAgent, vm: &TestVm, request: &Request) -> Response {
    appmon_host_agent::control::call(&agent.control_socket(), request)
        .unwrap_or_else(|e| vm.fail(format!("control socket: {e}")))
}

/// The managed application `name` as shown, running with a process id.
fn running(s: &VmView, name: &str) -> Option<(String, u32)> {
    let app = s.applications.iter().find(|a| a.name == name)?;
    Some((app.process.clone()?, app.pid?))
}

fn ended(s: &VmView, app: &str, want: &ProcessEnd) -> Vec<String> {
    s.history
        .iter()
        .filter_map(|h| match h.process()? {
            ProcessNote::Ended {
                application: Some(a),
                id,
                end,
            } if a == app && end == want => Some(id.clone()),
            _ => None,
        })
        .collect()
}

fn adopted(s: &VmView, app: &str) -> bool {
    s.history.iter().any(|h| {
        matches!(h.process(), Some(ProcessNote::Adopted { application, .. }) if application == app)
    })
}

#[test]
fn managed_applications_run_refuse_survive_a_restart_and_escalate_to_a_reset() {
    let vm = TestVm::new(VmConfig::new("managed").guest_config(GUEST_CONFIG));
    vm.rig().require_guest_program("appmon-guest");
    vm.rig().require_guest_program("appmon-demo");
    let mut agent = HostAgent::start(&[&vm], test_host_config());
    // Heartbeats never reset this guest within the test: only the application's escalation.
    let policy = Defaults {
        failure_interval: Duration::from_secs(60),
        min_uptime: Duration::from_secs(300),
        reset_method: ResetMethod::PowerCycle,
        ..test_policy()
    };
    let apps = agent.dir().join("applications.xml");
    std::fs::write(&apps, APPLICATIONS).unwrap_or_else(|e| vm.fail(format!("{e}")));
    let uds = vm.vsock_uds().to_string_lossy().into_owned();
    let mut args: Vec<String> = vec!["enable".into(), vm.name().into(), "--vsock-uds".into(), uds];
    args.extend(enable_args(&policy));
    args.extend(["--applications".into(), apps.to_string_lossy().into_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    agent
        .ctl_ok(&args)
        .unwrap_or_else(|e| vm.fail(format!("appmonctl enable --applications: {e}")));
    agent.wait_for_status(&vm, NOTICE_TIMEOUT, "both applications configured", |s| {
        s.applications.len() == 2
    });
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    let first_boot = vm.boot_ids();
    let s = agent.wait_for_status(
        &vm,
        GREEN_TIMEOUT,
        "green and both applications running",
        |s| {
            s.is(Status::Green)
                && running(s, "survivor").is_some()
                && running(s, "crashy").is_some()
        },
    );
    let (survivor_id, survivor_pid) = running(&s, "survivor").unwrap_or_default();
    println!("survivor {survivor_id} pid {survivor_pid}");

    // (1) `appmonctl run` prints the output and exits with the process's own code.
    let started = Instant::now();
    let out = agent
        .ctl(&[
            "run",
            vm.name(),
            "--",
            "/bin/sh",
            "-c",
            "echo hi; echo oops >&2; exit 7",
        ])
        .unwrap_or_else(|e| vm.fail(format!("appmonctl run: {e}")));
    println!("appmonctl run took {:?}", started.elapsed());
    assert_eq!(
        out.code,
        Some(7),
        "stdout {:?} stderr {:?}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.stdout, "hi\n", "stderr: {}", out.stderr);
    assert!(out.stderr.contains("oops"), "{}", out.stderr);
    let killed = agent
        .ctl(&["run", vm.name(), "--", "/bin/sh", "-c", "kill -9 $$"])
        .unwrap_or_else(|e| vm.fail(format!("appmonctl run: {e}")));
    assert_eq!(killed.code, Some(128 + 9), "{}", killed.stderr);

    // (4) A command outside the allowlist is refused, and nothing ran.
    let refused = agent
        .ctl(&["run", vm.name(), "--", "/bin/touch", "/tmp/forbidden"])
        .unwrap_or_else(|e| vm.fail(format!("appmonctl run: {e}")));
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("NotAllowed"),
        "not said why: {}",
        refused.stderr
    );
    let check = agent
        .ctl(&[
            "run",
            vm.name(),
            "--",
            "/bin/sh",
            "-c",
            "test -e /tmp/forbidden; echo $?",
        ])
        .unwrap_or_else(|e| vm.fail(format!("appmonctl run: {e}")));
    assert_eq!(check.stdout, "1\n", "/tmp/forbidden exists: {check:?}");
    let ps = agent
        .ctl_ok(&["ps", vm.name()])
        .unwrap_or_else(|e| vm.fail(format!("appmonctl ps: {e}")));
    assert!(!ps.contains("touch"), "{ps}");
    assert!(ps.contains(&survivor_id), "{ps}");
    println!("appmonctl ps:\n{ps}");

    // Latency: launch request to started (the guest's answer with a pid), and an exit until
    // the host has it (SIGKILL sent to the host's history entry of the end).
    // In rounds that the guest's table (processes.max = 30) holds, each released at its end.
    let mut launch_ms = Vec::new();
    let mut exit_ms = Vec::new();
    for round in 0..SAMPLES / ROUND {
        let mut sent_at = Vec::new();
        for n in 0..ROUND {
            let id = format!("lat:{round}:{n}");
            let request = Request::Launch {
                domain: vm.name().into(),
                launch: LaunchRequest {
                    id: id.clone(),
                    argv: vec!["/bin/sleep".into(), "1000".into()],
                    env: Vec::new(),
                    cwd: None,
                    user: None,
                },
            };
            let t0 = Instant::now();
            match call(&agent, &vm, &request) {
                Response::Process { process } if process.state.is_running() => {}
                other => vm.fail(format!("launch {id}: {other:?}")),
            }
            launch_ms.push(u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX));
            let at = unix_ms_now();
            let signal = Request::Signal {
                domain: vm.name().into(),
                id: id.clone(),
                signal: 9,
            };
            call(&agent, &vm, &signal);
            sent_at.push((id, at));
        }
        let s = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "every sample's end", |s| {
            sent_at.iter().all(|(id, _)| {
                s.processes
                    .iter()
                    .any(|p| &p.id == id && p.state == ProcessState::Killed { signal: 9 })
            })
        });
        for (id, at) in &sent_at {
            let note = s
                .find(|h| matches!(h.process(), Some(ProcessNote::Ended { id: i, .. }) if i == id));
            exit_ms.push(
                note.map(|h| h.unix_ms.saturating_sub(*at))
                    .unwrap_or_else(|| vm.fail(format!("no end of {id} in the history"))),
            );
            let release = Request::Release {
                domain: vm.name().into(),
                id: id.clone(),
            };
            match call(&agent, &vm, &release) {
                Response::Done { .. } => {}
                other => vm.fail(format!("release {id}: {other:?}")),
            }
        }
    }
    println!("{}", summary("launch request to started", launch_ms));
    println!(
        "{}",
        summary("SIGKILL sent to the host knowing the exit", exit_ms)
    );

    // (3) The host agent restarts: the processes live on, the new agent takes them over, and
    // the survivor's end, which comes afterwards, is still reported.
    agent.restart();
    let s = agent.wait_for_status(&vm, GREEN_TIMEOUT, "both applications taken over", |s| {
        adopted(s, "survivor") && adopted(s, "crashy")
    });
    assert_eq!(
        running(&s, "survivor"),
        Some((survivor_id.clone(), survivor_pid)),
        "{}",
        s.history_text()
    );
    let out = agent
        .ctl(&[
            "run",
            vm.name(),
            "--",
            "/bin/sh",
            "-c",
            "touch /tmp/survivor-exit",
        ])
        .unwrap_or_else(|e| vm.fail(format!("appmonctl run: {e}")));
    assert_eq!(out.code, Some(0), "{out:?}");
    let s = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "the survivor's end", |s| {
        !ended(s, "survivor", &ProcessEnd::Exited { code: 3 }).is_empty()
    });
    assert_eq!(
        ended(&s, "survivor", &ProcessEnd::Exited { code: 3 }),
        vec![survivor_id.clone()]
    );
    assert!(
        s.find(|h| matches!(h.process(), Some(ProcessNote::GaveUp { application, .. }) if application == "survivor"))
            .is_some(),
        "{}",
        s.history_text()
    );

    // (2) crashy killed in the guest: restarted twice, the third end resets the VM.
    let killed_end = ProcessEnd::Killed { signal: 9 };
    for n in 1..=3 {
        let s = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "crashy running", |s| {
            running(s, "crashy").is_some() && ended(s, "crashy", &killed_end).len() == n - 1
        });
        let (id, _) = running(&s, "crashy").unwrap_or_default();
        agent
            .ctl_ok(&["kill", vm.name(), &id, "KILL"])
            .unwrap_or_else(|e| vm.fail(format!("appmonctl kill: {e}")));
        if n < 3 {
            let s = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "a restart decided", |s| {
                s.history.iter().any(|h| {
                    matches!(h.process(), Some(ProcessNote::Restarting { application, attempt, .. })
                        if application == "crashy" && *attempt as usize == n)
                })
            });
            assert!(s.reset_decisions().is_empty(), "{}", s.history_text());
        }
    }
    let s = agent.wait_for_status(&vm, NOTICE_TIMEOUT, "the reset decision", |s| {
        !s.reset_decisions().is_empty()
    });
    assert_eq!(
        s.reset_decisions()[0].reset_decision(),
        Some((ResetMethod::PowerCycle, ResetCause::ManagedApplication)),
        "{}",
        s.history_text()
    );
    assert!(
        s.find(|h| matches!(h.process(), Some(ProcessNote::Escalated { application }) if application == "crashy"))
            .is_some(),
        "{}",
        s.history_text()
    );
    assert_eq!(ended(&s, "crashy", &killed_end).len(), 3);
    // The new boot starts the application afresh, with its whole budget.
    let s = agent.wait_for_status(
        &vm,
        GREEN_TIMEOUT + DEFAULT_BOOT_TIMEOUT,
        "green again, crashy running",
        |s| {
            s.is(Status::Green)
                && s.guest_boot_id.as_deref() != first_boot.last().map(String::as_str)
                && running(s, "crashy").is_some()
        },
    );
    assert_eq!(vm.boot_ids().len(), first_boot.len() + 1);
    assert_eq!(s.reset_decisions().len(), 1, "{}", s.history_text());
    println!("{}", s.history_text());
}
