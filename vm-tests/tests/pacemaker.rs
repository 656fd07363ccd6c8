//! appmon inside a Pacemaker cluster (host-agent README, "Inside a Pacemaker cluster"): a
//! one-node cluster ([`Cluster`]: corosync + pacemakerd started by the test) runs the guest as
//! an `ocf:heartbeat:VirtualDomain` resource, which creates the domain transient from its
//! `config=` file; the policy is written into that file with `appmonctl enable --config
//! --cluster-resource`, and the real host agent monitors the domain the cluster created.
//!
//! - an in-place reset of a cluster VM is appmon's alone: the cluster records no failure;
//! - when appmon gives up, it escalates (`crm_resource --fail`), Pacemaker restarts the VM, and
//!   appmon monitors the new domain until it is Green;
//! - the OCF agent `ocf:appmon:app` passes `ocf-tester` and fails a host agent that does not
//!   answer only after its grace;
//! - `appmonctl run` is a cluster-managed service (Serviceguard's cmappmgr) as an
//!   `ocf:heartbeat:anything` resource: started, stopped and its process's end noticed by the
//!   cluster, the process in the guest following;
//! - on two nodes ([`TwoNodeCluster`]: each in namespaces of its own with its own libvirtd and
//!   host agent), the node that runs the VM is killed: Pacemaker starts the VM on the other
//!   node, whose host agent takes it up, Gray then Green, with no reset.
#![cfg(feature = "vm")]

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use appmon_control::{Decision, Escalation, ResetCause};
use appmon_vm_tests::node::leftover_cgroups;
use appmon_vm_tests::sweep::pid_alive;
use appmon_vm_tests::{
    enable_args, test_host_config, test_policy, unix_ms_now, wait_until, Cluster, Defaults,
    HostAgent, HostBins, ResetMethod, Status, TestVm, TwoNodeCluster, VmConfig,
    DEFAULT_BOOT_TIMEOUT,
};

/// From the resource's start to Green: a TCG boot, the guest agent, the demo's Enable.
const GREEN_TIMEOUT: Duration = Duration::from_secs(90);
/// Slack for the host agent to notice what it is told.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(30);
/// VirtualDomain's start of a TCG guest (~1.5 s in the recipe) on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The guest, its host agent with the policy in the domain XML file, and the cluster running the
/// file as resource `resource`, Green. (Dropped in reverse: the cluster stops the domain first.)
struct Setup {
    resource: String,
    cluster: Cluster,
    agent: HostAgent,
    vm: TestVm,
}

fn setup(config: VmConfig, policy: &Defaults) -> Setup {
    let vm = TestVm::new(config);
    vm.rig().require_guest_program("appmon-guest");
    vm.rig().require_guest_program("appmon-demo");
    let resource = format!(
        "vm_{}",
        vm.name().replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let file = vm.dir().join("domain.xml");
    let agent = HostAgent::start(&[&vm], test_host_config());
    let uds = vm.vsock_uds().to_string_lossy().into_owned();
    let file_arg = file.to_string_lossy().into_owned();
    let mut args: Vec<String> = vec![
        "enable".into(),
        vm.name().into(),
        "--config".into(),
        file_arg,
        "--cluster-resource".into(),
        resource.clone(),
        "--vsock-uds".into(),
        uds,
    ];
    args.extend(enable_args(policy));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    agent
        .ctl_ok(&args)
        .unwrap_or_else(|e| vm.fail(format!("appmonctl enable --config: {e}")));
    let xml = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        xml.contains(&format!("<appmon:cluster resource=\"{resource}\"/>")),
        "{xml}"
    );

    let mut cluster = Cluster::start();
    let started = cluster.add_virtual_domain(&resource, &file, START_TIMEOUT);
    println!("resource {resource} started in {} ms", ms(started));
    assert!(
        vm.virsh_ok(&["dominfo", vm.name()])
            .contains("Persistent:     no"),
        "VirtualDomain runs the domain transient"
    );
    let boot = wait_boot(&vm, 1);
    let s = agent.wait_for_status(&vm, GREEN_TIMEOUT, "green with this boot's id", |s| {
        s.is(Status::Green) && s.guest_boot_id.as_deref() == Some(boot.as_str())
    });
    assert!(s.monitored && s.enabled, "{}", s.summary());
    Setup {
        resource,
        cluster,
        agent,
        vm,
    }
}

/// Waits for the `n`-th boot id on the console; returns it.
fn wait_boot(vm: &TestVm, n: usize) -> String {
    vm.wait_for(DEFAULT_BOOT_TIMEOUT, &format!("boot {n}"), || {
        vm.boot_ids().get(n - 1).cloned()
    })
}

/// libvirt's id of the running domain: a domain created again gets a new one.
fn domain_id(vm: &TestVm) -> Option<String> {
    vm.virsh(&["domid", vm.name()])
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|id| !id.is_empty() && id != "-")
}

fn domain_uuid(vm: &TestVm) -> Option<String> {
    vm.virsh(&["domuuid", vm.name()])
        .ok()
        .map(|s| s.trim().to_string())
}

// --- 1 ----------------------------------------------------------------------------------------

#[test]
fn in_place_reset_of_a_cluster_vm_leaves_no_failure_in_the_cluster() {
    let policy = Defaults {
        failure_interval: Duration::from_secs(4),
        min_uptime: Duration::from_secs(5),
        max_resets: 3,
        reset_window: Duration::from_secs(3600),
        reset_method: ResetMethod::Reset,
    };
    let t = setup(VmConfig::new("pcmkreset"), &policy);
    let (vm, agent, cluster) = (&t.vm, &t.agent, &t.cluster);
    let uuid = domain_uuid(vm);

    // The OCF agent sees what appmon sees: Green is running.
    assert_eq!(
        ocf(&["monitor"], &ocf_env(vm.name(), agent, 30)).0,
        7,
        "not started yet"
    );
    let env = ocf_env(vm.name(), agent, 30);
    assert_eq!(ocf(&["start"], &env).0, 0);
    assert_eq!(ocf(&["monitor"], &env).0, 0, "Green is running");

    let answer = vm.try_demo_command("needreset", Duration::from_secs(20));
    println!("the demo application's answer: {answer:?}");
    let s = agent.wait_for_status(vm, NOTICE_TIMEOUT, "the reset done", |s| {
        s.find(|h| matches!(h.decision(), Some(Decision::ResetDone { .. })))
            .is_some()
    });
    let decision = s.reset_decisions()[0].clone();
    assert_eq!(
        decision.reset_decision(),
        Some((ResetMethod::Reset, ResetCause::NeedReset)),
        "{}",
        s.history_text()
    );
    let boot = wait_boot(vm, 2);
    let s = agent.wait_for_status(vm, GREEN_TIMEOUT, "green again after the reset", |s| {
        s.is(Status::Green) && s.guest_boot_id.as_deref() == Some(boot.as_str())
    });
    // Reset in place: the same domain, the cluster's resource untouched and without failure.
    assert_eq!(domain_uuid(vm), uuid, "the same domain");
    assert!(
        s.find(|h| matches!(h.decision(), Some(Decision::Escalate { .. })))
            .is_none(),
        "{}",
        s.history_text()
    );
    let r = cluster
        .resource(&t.resource)
        .unwrap_or_else(|| panic!("no resource\n{}", cluster.diagnostics()));
    assert!(
        r.role == "Started" && !r.failed && r.nodes.iter().any(|n| n == cluster.node()),
        "{r:?}\n{}",
        cluster.diagnostics()
    );
    assert_eq!(
        cluster.fail_count(&t.resource),
        0,
        "{}",
        cluster.diagnostics()
    );
    assert_eq!(ocf(&["monitor"], &env).0, 0, "Green again is running");
    assert_eq!(ocf(&["stop"], &env).0, 0);
    println!("reset in place; cluster fail-count 0; OCF agent monitor 0 while Green");
}

// --- 2 ----------------------------------------------------------------------------------------

#[test]
fn give_up_escalates_and_the_cluster_restarts_the_vm_which_appmon_monitors_again() {
    // The application beats three times each boot and falls silent: one reset in place, then
    // the budget is spent.
    let policy = Defaults {
        failure_interval: Duration::from_secs(3),
        min_uptime: Duration::from_secs(5),
        max_resets: 1,
        reset_window: Duration::from_secs(3600),
        reset_method: ResetMethod::Reset,
    };
    // The config file carries the domain's UUID, as one made with `virsh dumpxml` does: every
    // domain the cluster creates from it has that UUID, so the host agent restores the record
    // with the alarm it gave up with, and must clear it for the VM the cluster started again.
    let t = setup(
        VmConfig::new("pcmkgiveup")
            .cmdline_arg("appmon.demo=stop-after:3")
            .with_uuid_in_config(),
        &policy,
    );
    let (vm, agent, cluster) = (&t.vm, &t.agent, &t.cluster);
    let uuid = domain_uuid(vm).unwrap_or_else(|| vm.fail("no domain"));
    let first = domain_id(vm).unwrap_or_else(|| vm.fail("no domain id"));

    // Watched closely (at most 100 ms apart): the domain the agent gave up on is gone within
    // seconds of the escalation.
    let limit = policy.failure_interval * 2 + DEFAULT_BOOT_TIMEOUT + GREEN_TIMEOUT;
    let gave_up = agent.wait_for_status(vm, limit, "the host agent giving up", |s| s.gave_up);
    let gave_up_at = gave_up
        .find(|h| matches!(h.decision(), Some(Decision::GaveUp { .. })))
        .map(|h| h.unix_ms)
        .unwrap_or_else(|| vm.fail(format!("no gave-up note:\n{}", gave_up.history_text())));
    assert_eq!(
        gave_up.reset_decisions().len(),
        1,
        "{}",
        gave_up.history_text()
    );
    assert!(
        gave_up
            .find(|h| matches!(
                h.decision(),
                Some(Decision::Escalate { resource, reason: Escalation::GaveUp }) if *resource == t.resource
            ))
            .is_some(),
        "{}",
        gave_up.history_text()
    );

    // Pacemaker recovers the resource: a new (transient) domain of the same name and UUID runs.
    let running_again = vm.wait_for(START_TIMEOUT, "the cluster's new domain running", || {
        let id = domain_id(vm)?;
        let running = vm
            .virsh(&["domstate", vm.name()])
            .is_ok_and(|s| s.trim() == "running");
        (id != first && running).then(unix_ms_now)
    });
    assert_eq!(domain_uuid(vm).as_deref(), Some(uuid.as_str()));
    let restart_ms = running_again.saturating_sub(gave_up_at);
    cluster.wait_started(&t.resource, START_TIMEOUT);
    assert!(
        cluster.fail_count(&t.resource) >= 1,
        "the escalation is a failure in the cluster\n{}",
        cluster.diagnostics()
    );

    // appmon follows the new domain: the alarm of the record it restored is cleared on the new
    // boot, then Gray, then Green (the demo beats three times, so Green lasts a few seconds:
    // watched closely), no reset counted, no alarm.
    let old_boot = gave_up.guest_boot_id.clone();
    let s = agent.wait_for_status(vm, GREEN_TIMEOUT, "the cluster's new domain Green", |s| {
        s.guest_boot_id != old_boot && s.is(Status::Green)
    });
    let green_ms = unix_ms_now().saturating_sub(gave_up_at);
    assert!(!s.gave_up, "{}", s.summary());
    assert_eq!(s.resets_in_window, 0, "{}", s.history_text());
    assert!(
        s.find(|h| matches!(
            h.decision(),
            Some(Decision::ClusterStartedAgain { forgotten: 1 })
        ))
        .is_some(),
        "{}",
        s.history_text()
    );
    // The old domain was not reset again after the give-up: one reset decision in all.
    assert_eq!(s.reset_decisions().len(), 1, "{}", s.history_text());
    println!(
        "gave up -> running again under Pacemaker: {restart_ms} ms; gave up -> Green: {green_ms} ms"
    );
}

// --- 3 ----------------------------------------------------------------------------------------

fn ocf_agent() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/host/ocf-app")
}

/// The OCF environment for domain `domain` on `agent`'s control socket.
fn ocf_env(domain: &str, agent: &HostAgent, grace: u32) -> Vec<(String, String)> {
    ocf_env_on(
        domain,
        &agent.control_socket().to_string_lossy(),
        HostBins::require().ctl,
        grace,
    )
}

fn ocf_env_on(domain: &str, socket: &str, ctl: PathBuf, grace: u32) -> Vec<(String, String)> {
    vec![
        ("OCF_ROOT".into(), "/usr/lib/ocf".into()),
        ("OCF_RESOURCE_INSTANCE".into(), format!("app_{domain}")),
        ("OCF_RESKEY_domain".into(), domain.into()),
        ("OCF_RESKEY_socket".into(), socket.into()),
        (
            "OCF_RESKEY_appmonctl".into(),
            ctl.to_string_lossy().into_owned(),
        ),
        ("OCF_RESKEY_grace".into(), grace.to_string()),
    ]
}

/// Runs the OCF agent's `action`: exit code and stderr.
fn ocf(action: &[&str], env: &[(String, String)]) -> (i32, String) {
    let out = Command::new(ocf_agent())
        .args(action)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", ocf_agent().display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ocf_agent_passes_ocf_tester_and_reports_an_unreachable_host_agent_within_its_grace() {
    let ctl = HostBins::require().ctl;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("no-host-agent.sock");
    let socket = socket.to_string_lossy();

    let out = Command::new("ocf-tester")
        .args(["-n", "appmon_app_test"])
        .args(["-o", "domain=appmon-t-none"])
        .args(["-o", &format!("socket={socket}")])
        .args(["-o", &format!("appmonctl={}", ctl.display())])
        .arg(ocf_agent())
        .output()
        .expect("ocf-tester runs (resource-agents, scripts/setup)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("passed all tests"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No host agent answers: running within the grace, failed after it.
    let grace = 2;
    let env = ocf_env_on("appmon-t-none", &socket, ctl, grace);
    assert_eq!(ocf(&["validate-all"], &env).0, 0);
    assert_eq!(ocf(&["monitor"], &env).0, 7, "not started");
    let started = Instant::now();
    assert_eq!(ocf(&["start"], &env).0, 0);
    assert_eq!(ocf(&["monitor"], &env).0, 0, "within the grace");
    let failed_after = wait_until(Duration::from_secs(10), "monitor failed", || {
        ocf(&["monitor"], &env).0 == 1
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let elapsed = started.elapsed();
    println!("monitor failing {failed_after:?} into the wait");
    assert!(
        elapsed > Duration::from_secs(u64::from(grace)),
        "failed after {elapsed:?}, inside the {grace} s grace"
    );
    let (code, stderr) = ocf(&["monitor"], &env);
    assert_eq!(code, 1);
    assert!(stderr.contains("unreachable for more than 2 s"), "{stderr}");
    assert_eq!(ocf(&["stop"], &env).0, 0);
    assert_eq!(ocf(&["monitor"], &env).0, 7, "stopped");
    // A missing domain parameter is a configuration error.
    let bad: Vec<_> = env
        .iter()
        .filter(|(k, _)| k != "OCF_RESKEY_domain")
        .cloned()
        .collect();
    assert_eq!(ocf(&["validate-all"], &bad).0, 6);
    println!(
        "ocf-tester passed; unreachable host agent failed after {elapsed:?} (grace {grace} s)"
    );
}

// --- 4 ----------------------------------------------------------------------------------------

/// The guest may launch shell commands as root, nothing else.
const RUN_GUEST_CONFIG: &str = r#"port = 5315

[processes]
default_user = "root"

[[processes.allow]]
command = "/bin/sh"
args = ["-c", { regex = ".*" }]
"#;

/// The service in the guest: runs until /tmp/pcmk-run-exit appears, then removes it and exits 3.
/// (`anything` passes `cmdline_options` through `eval` and `su -c "..."`: no `"`, `$`, `\`, or
/// glob characters in it.)
const SERVICE: &str =
    "while test ! -e /tmp/pcmk-run-exit; do sleep 1; done; rm /tmp/pcmk-run-exit; exit 3";

/// The lines of `appmonctl ps` for the service's processes: (id, state).
fn service_processes(agent: &HostAgent, vm: &TestVm) -> Vec<(String, String)> {
    let ps = agent
        .ctl_ok(&["ps", vm.name()])
        .unwrap_or_else(|e| vm.fail(format!("appmonctl ps: {e}")));
    ps.lines()
        .filter(|l| l.contains("pcmk-run-exit") && !l.contains("touch"))
        .map(|l| {
            let mut words = l.split_whitespace();
            let id = words.next().unwrap_or_default().to_string();
            let state = words.next().unwrap_or_default().to_string();
            (id, state)
        })
        .collect()
}

/// Waits until exactly one service process runs in the guest, other than `not`; returns its id.
fn wait_service_running(agent: &HostAgent, vm: &TestVm, not: &[String]) -> String {
    vm.wait_for(
        NOTICE_TIMEOUT,
        "the service running in the guest",
        || match service_processes(agent, vm).as_slice() {
            [(id, state)] if state == "running" && !not.contains(id) => Some(id.clone()),
            _ => None,
        },
    )
}

#[test]
fn appmonctl_run_is_a_cluster_managed_service() {
    let vm = TestVm::new(VmConfig::new("pcmkrun").guest_config(RUN_GUEST_CONFIG));
    vm.rig().require_guest_program("appmon-guest");
    let agent = HostAgent::start(&[&vm], test_host_config());
    agent.enable(&vm, &test_policy());
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    agent.wait_for_status(&vm, GREEN_TIMEOUT, "green", |s| s.is(Status::Green));

    let mut cluster = Cluster::start();
    let resource = "svc_run";
    let log = vm.dir().join("svc_run.log");
    let ctl = HostBins::require().ctl;
    let options = format!(
        "--socket {} run {} -- /bin/sh -c '{SERVICE}'",
        agent.control_socket().display(),
        vm.name()
    );
    let xml = format!(
        r#"<primitive id="{resource}" class="ocf" provider="heartbeat" type="anything">
  <instance_attributes id="{resource}-ia">
    <nvpair id="{resource}-binfile" name="binfile" value="{}"/>
    <nvpair id="{resource}-options" name="cmdline_options" value="{options}"/>
    <nvpair id="{resource}-log" name="logfile" value="{}"/>
  </instance_attributes>
  <operations>
    <op id="{resource}-start" name="start" interval="0" timeout="20s"/>
    <op id="{resource}-stop" name="stop" interval="0" timeout="30s"/>
    <op id="{resource}-monitor" name="monitor" interval="2s" timeout="20s"/>
  </operations>
</primitive>"#,
        ctl.display(),
        log.display()
    );
    let took = cluster.add_primitive(resource, &xml, START_TIMEOUT);
    let first = wait_service_running(&agent, &vm, &[]);
    println!(
        "resource {resource} started in {} ms: {first} runs in the guest",
        ms(took)
    );

    // The recurring monitor finds it running: several monitor intervals, no failure.
    thread::sleep(Duration::from_secs(6));
    let r = cluster
        .resource(resource)
        .unwrap_or_else(|| panic!("no resource\n{}", cluster.diagnostics()));
    assert!(
        r.role == "Started" && !r.failed,
        "{r:?}\n{}",
        cluster.diagnostics()
    );
    assert_eq!(cluster.fail_count(resource), 0, "{}", cluster.diagnostics());
    assert_eq!(
        service_processes(&agent, &vm),
        vec![(first.clone(), "running".into())]
    );

    // Stopped by the cluster: SIGTERM to appmonctl, passed on to the process in the guest,
    // which is gone (ended and released); no failure recorded.
    let t0 = Instant::now();
    cluster
        .set_target_role(resource, "Stopped")
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    cluster.wait_stopped(resource, START_TIMEOUT);
    let stopped_ms = ms(t0.elapsed());
    let ps = service_processes(&agent, &vm);
    assert!(ps.is_empty(), "still in the guest after the stop: {ps:?}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains(&format!("passing signal 15 on to {first}")),
        "appmonctl's log: {text}"
    );
    assert_eq!(cluster.fail_count(resource), 0, "{}", cluster.diagnostics());
    assert_eq!(cluster.failed_actions(), "", "{}", cluster.diagnostics());

    // Started again: a new process in the guest.
    cluster
        .set_target_role(resource, "Started")
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    cluster.wait_started(resource, START_TIMEOUT);
    let second = wait_service_running(&agent, &vm, std::slice::from_ref(&first));

    // The process ends on its own (exit 3): appmonctl exits with it, the cluster's monitor
    // notices (a failure counted) and recovers the resource: a third process runs.
    let t0 = Instant::now();
    agent
        .ctl_ok(&[
            "run",
            vm.name(),
            "--",
            "/bin/sh",
            "-c",
            "touch /tmp/pcmk-run-exit",
        ])
        .unwrap_or_else(|e| vm.fail(format!("appmonctl run: {e}")));
    wait_until(NOTICE_TIMEOUT, "the cluster counting a failure", || {
        cluster.fail_count(resource) >= 1
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    let noticed = t0.elapsed();
    cluster.wait_started(resource, START_TIMEOUT);
    let third = wait_service_running(&agent, &vm, &[first.clone(), second.clone()]);
    let recovered_ms = ms(t0.elapsed());
    let failed = cluster.failed_actions();
    assert!(
        failed.contains(resource) && failed.contains("monitor"),
        "{failed}"
    );
    let s = agent.status(&vm);
    assert!(
        s.history.iter().any(|h| matches!(
            h.process(),
            Some(appmon_control::ProcessNote::Ended { id, end: appmon_control::ProcessEnd::Exited { code: 3 }, .. }) if *id == second
        )),
        "{}",
        s.history_text()
    );
    println!(
        "stop: {stopped_ms} ms to Stopped, the guest process gone; own end noticed by the \
         monitor {} ms after the exit was asked for, {third} running again {recovered_ms} ms after",
        ms(noticed)
    );
}

// --- 5: two nodes -----------------------------------------------------------------------------

/// Bound from a node kill until the other node runs the VM: corosync's token (3 s) and
/// consensus (3.6 s), the scheduler, VirtualDomain's start (~7 s in the recipe).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(90);

/// Issue 20 (3): two nodes, each with its own libvirtd and host agent; the node running the VM
/// is killed whole (corosync, pacemakerd, libvirtd, QEMU, vhost-device-vsock, appmon-host: every
/// process at once, as a power loss). Pacemaker starts the VM on the other node; that node's
/// host agent, which had no such domain before, takes up the new one: Gray, then Green once the
/// guest agent enables, and no reset counted.
///
/// Fencing is off here (`stonith-enabled=false`, two_node quorum): the survivor takes over as
/// soon as corosync says the other node left. In production a lost node must be fenced (powered
/// off through its BMC or a fence device) before its resources start elsewhere: a node that is
/// only cut off from the network would otherwise run the VM a second time on the same disks.
/// There the time to fence adds to the failover measured here.
#[test]
fn node_kill_moves_the_vm_to_the_other_node_where_appmon_takes_it_up_green_without_a_reset() {
    let policy = Defaults {
        failure_interval: Duration::from_secs(4),
        min_uptime: Duration::from_secs(5),
        max_resets: 3,
        reset_window: Duration::from_secs(3600),
        reset_method: ResetMethod::Reset,
    };
    let mut cluster = TwoNodeCluster::start();
    let config = VmConfig::new("pcmkfailover").vsock_served_in(cluster.vsock_dir());
    let vm = TestVm::for_cluster(config, cluster.nodes()[0].libvirt().uri());
    vm.rig().require_guest_program("appmon-guest");
    vm.rig().require_guest_program("appmon-demo");
    cluster.attach_logs(&vm);
    let resource = format!(
        "vm_{}",
        vm.name().replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );

    // The policy goes into the domain XML file both nodes start the VM from.
    let file = vm.dir().join("domain.xml");
    let mut args: Vec<String> = vec![
        "enable".into(),
        vm.name().into(),
        "--config".into(),
        file.to_string_lossy().into_owned(),
        "--cluster-resource".into(),
        resource.clone(),
        "--vsock-uds".into(),
        vm.vsock_uds().to_string_lossy().into_owned(),
    ];
    args.extend(enable_args(&policy));
    let out = Command::new(HostBins::require().ctl)
        .args(&args)
        .output()
        .unwrap_or_else(|e| vm.fail(format!("cannot run appmonctl: {e}")));
    assert!(
        out.status.success(),
        "appmonctl enable --config: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (first, started) = cluster.add_virtual_domain(&resource, &file, START_TIMEOUT);
    let second = cluster.other(&first).name().to_owned();
    println!(
        "resource {resource} started on {first} in {} ms",
        ms(started)
    );
    vm.set_uri(cluster.node(&first).libvirt().uri());

    // A host agent on each node, as the package runs one on every host of the cluster.
    let mut agents: Vec<(String, HostAgent)> = cluster
        .nodes()
        .iter()
        .map(|n| {
            let agent = HostAgent::start_on(n.libvirt(), &[&vm], test_host_config());
            (n.name().to_owned(), agent)
        })
        .collect();
    let on_first = agents
        .iter()
        .position(|(n, _)| *n == first)
        .unwrap_or_else(|| panic!("no host agent on {first}"));
    let boot = wait_boot(&vm, 1);
    let s =
        agents[on_first]
            .1
            .wait_for_status(&vm, GREEN_TIMEOUT, "green on the first node", |s| {
                s.is(Status::Green) && s.guest_boot_id.as_deref() == Some(boot.as_str())
            });
    assert!(s.monitored && s.enabled, "{}", s.summary());
    assert!(
        cluster
            .node(&second)
            .libvirt()
            .virsh(&["domstate", vm.name()])
            .is_err(),
        "{second} has the domain before the failover"
    );
    let qemu = cluster
        .node(&first)
        .qemu_pid(vm.name())
        .unwrap_or_else(|| vm.fail(format!("no QEMU pid file on {first}")));
    assert!(
        cluster.node(&first).holds(qemu),
        "QEMU {qemu} is not in {first}'s cgroup, so a node kill would not kill it"
    );

    // The node dies: every process of it at once.
    let killed_unix_ms = unix_ms_now();
    let killed = cluster.kill_node(&first);
    assert!(!pid_alive(qemu), "QEMU {qemu} of {first} survived the node");
    // (Its host agent died with the node; dropping it reaps it and removes its directory.)
    drop(agents.remove(on_first));
    let agent = &agents[0].1;
    vm.set_uri(cluster.node(&second).libvirt().uri());

    // The other node runs it: a new (transient) domain of the same name.
    vm.wait_until(
        FAILOVER_TIMEOUT,
        &format!("the VM running on {second}"),
        || {
            vm.virsh(&["domstate", vm.name()])
                .is_ok_and(|s| s.trim() == "running")
        },
    );
    let running = killed.elapsed();

    // Its host agent takes it up: Gray, then Green once the guest agent enables. Watched
    // closely, to see the Gray.
    let mut gray_at = None;
    let green = agent.wait_for_status(
        &vm,
        GREEN_TIMEOUT,
        &format!("Green on {second} after running there"),
        |s| {
            if s.uuid.is_empty() {
                return false;
            }
            if s.is(Status::Gray) && gray_at.is_none() {
                gray_at = Some(killed.elapsed());
            }
            s.is(Status::Green)
        },
    );
    let to_green = killed.elapsed();
    let gray_at = gray_at.unwrap_or_else(|| {
        vm.fail(format!(
            "{second}'s host agent never showed the new domain Gray before Green"
        ))
    });
    let boots = vm.boot_ids();
    assert_eq!(boots.len(), 2, "one boot on each node: {boots:?}");
    assert_eq!(
        green.guest_boot_id.as_deref(),
        Some(boots[1].as_str()),
        "{}",
        green.summary()
    );
    assert!(green.monitored && green.enabled, "{}", green.summary());
    assert!(!green.gave_up, "{}", green.summary());
    assert_eq!(green.resets_in_window, 0, "{}", green.history_text());
    assert!(
        green.reset_decisions().is_empty(),
        "{}",
        green.history_text()
    );
    assert!(
        green.history.iter().all(|h| h.unix_ms >= killed_unix_ms),
        "{second}'s history predates the failover:\n{}",
        green.history_text()
    );
    let started_on = cluster.wait_started(&resource, Some(&second), START_TIMEOUT);
    assert_eq!(started_on, second);

    // And it stays so: the application beats, nothing is reset.
    let fi = policy.failure_interval;
    vm.hold_for(2 * fi, "green on the second node, no reset", || {
        let s = agent.try_show(vm.name()).map_err(|e| e.to_string())?;
        if s.is(Status::Green) && s.resets_in_window == 0 && s.reset_decisions().is_empty() {
            Ok(())
        } else {
            Err(format!("{}\n{}", s.summary(), s.history_text()))
        }
    });
    println!(
        "{first} killed: the VM running on {second} after {} ms, Gray there after {} ms, Green after {} ms; no reset",
        ms(running),
        ms(gray_at),
        ms(to_green)
    );

    // Nothing of the nodes outlives the cluster: no process (their cgroups are gone), no
    // directory.
    drop(agents);
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let left = leftover_cgroups(name.as_deref());
    assert!(left.is_empty(), "node cgroups left: {left:?}");
    assert!(!dir.exists(), "{} is left", dir.display());
}
