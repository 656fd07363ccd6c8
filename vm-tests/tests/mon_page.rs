//! MON's web page in a real browser over a real guest: the guest's ccad.conf custom counter,
//! fed through its named pipe by a guest script, reaches the real `appmon-host`; headless
//! Chromium (driven by host-agent/web/drive-page.mjs through puppeteer-core) is refused without
//! or with wrong credentials, then loads `/mon/`, sees the VM Green, makes a view of the counter
//! on the page and draws its chart, whose values are the guest's; the view is back after a
//! reload. The screenshot is the README's (host-agent/docs/mon-page.png).
#![cfg(feature = "vm")]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use appmon_control::{CountersDocument, Status};
use appmon_host_agent::testing::browser::{self, CounterRef, Drive};
use appmon_vm_tests::{
    test_host_config, test_policy, wait_for, HostAgent, TestVm, VmConfig, DEFAULT_BOOT_TIMEOUT,
};

/// From boot to the first custom value at the host agent; generous for TCG.
const FIRST_COUNTERS_TIMEOUT: Duration = Duration::from_secs(90);

const GUEST_CONFIG: &str = "vsock = true\nport = 5315\n[counters]\npace_ms = 1000\n";

const CCAD_CONF: &str = "counters Demo\n   {\n   pace = 1000\n   pipe = /tmp/cca\n   \
    counter requests: desc = \"Requests served\", units = \"#\"\n   }\n";

/// The seed's feeder loop: `requests` 1, 2, 3, ... a second apart.
const FEEDER: &str = "#!/bin/sh\n\
    while [ ! -p /tmp/cca ]; do sleep 0.2; done\n\
    i=0\n\
    while true; do\n\
    \x20 i=$((i + 1))\n\
    \x20 echo \"requests = $i\" > /tmp/cca\n\
    \x20 echo \".\" > /tmp/cca\n\
    \x20 sleep 1\n\
    done\n";

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("a free loopback port: {e}"))
}

/// The custom counter's latest value through `appmonctl --json counters`.
fn requests(agent: &HostAgent, vm: &TestVm) -> Option<f64> {
    let out = agent
        .ctl_ok(&["--json", "counters", vm.name(), "Demo"])
        .ok()?;
    let doc: CountersDocument = serde_json::from_str(&out).ok()?;
    doc.counters.counter("Demo", "requests")?.value
}

#[test]
fn the_mon_page_in_chromium_charts_a_custom_counter_of_a_real_guest() {
    let vm = TestVm::new(
        VmConfig::new("monpage")
            .guest_config(GUEST_CONFIG)
            .guest_file("/etc/ccad.conf", CCAD_CONF)
            .guest_script("/etc/appmon/init.d/feeder", FEEDER),
    );
    vm.rig().require_guest_program("appmon-guest");
    let mon = free_port();
    let mut config = test_host_config();
    config.mon.listen = Some(mon);
    config.mon.user = Some("mon".into());
    config.mon.password = Some("page-test".into());
    let agent = HostAgent::start(&[&vm], config);
    agent.enable(&vm, &test_policy());
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);
    wait_for(FIRST_COUNTERS_TIMEOUT, "a first custom value", || {
        requests(&agent, &vm)
    })
    .unwrap_or_else(|e| vm.fail(format!("{e}\n{}", agent.diagnostics())));
    agent.wait_for(&vm, Status::Green, Duration::from_secs(30));
    let before = requests(&agent, &vm).unwrap_or(0.0);

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mon-page.png");
    let drive = Drive {
        url: format!("http://{mon}/mon/"),
        user: "mon".into(),
        password: "page-test".into(),
        view: "demo".into(),
        counter: CounterRef {
            domain: vm.name().to_owned(),
            entity: "Demo".into(),
            counter: "requests".into(),
        },
        points: 4,
        screenshot: Some(screenshot.clone()),
        timeout_ms: 30_000,
    };
    let started = Instant::now();
    let (report, took) = browser::drive(&drive).unwrap_or_else(|e| vm.fail(e));
    let after = requests(&agent, &vm).unwrap_or(0.0);
    let text = serde_json::to_string_pretty(&report).expect("report");
    println!(
        "chromium drove the page in {took:?}; screenshot {}",
        screenshot.display()
    );
    if !report["error"].is_null() {
        vm.fail(format!(
            "the browser driver: {text}\n{}",
            agent.diagnostics()
        ));
    }

    // No or wrong credentials: the 401 that makes a browser show its login prompt, no data.
    for refused in report["refused"].as_array().expect("refused") {
        assert_eq!(refused["status"], 401, "{text}");
        assert!(
            refused["challenge"]
                .as_str()
                .is_some_and(|c| c.starts_with("Basic realm=")),
            "{text}"
        );
        assert_eq!(refused["shows_domain"], false, "{text}");
    }
    assert_eq!(report["status"], 200, "{text}");
    assert!(
        report["vm_row"]
            .as_str()
            .is_some_and(|r| r.contains("Green") && r.contains("connected")),
        "{text}"
    );

    // The chart holds the guest's values: whole numbers counting up a second apart, between
    // what appmonctl saw before the browser started and after it ended.
    let chart = &report["chart"];
    assert_eq!(
        chart["labels"][0].as_str(),
        Some(format!("{} / Demo / requests", vm.name()).as_str()),
        "{text}"
    );
    let values: Vec<f64> = chart["values"]
        .as_array()
        .expect("values")
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    println!(
        "chart values {values:?}; appmonctl saw {before} before, {after} after ({:?})",
        started.elapsed()
    );
    assert!(values.len() >= 4, "{text}");
    assert!(
        values
            .iter()
            .all(|v| v.fract() == 0.0 && *v >= 1.0 && *v <= after),
        "{values:?} vs {after}"
    );
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    assert!(
        values.last().is_some_and(|v| *v >= before),
        "{values:?} vs {before}"
    );
    assert_eq!(chart["canvas"], true, "{text}");
    assert_eq!(chart["gone"], "", "{text}");
    assert_eq!(report["reloaded"]["labels"], chart["labels"], "{text}");
    assert!(std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000));
    assert!(
        report["console"].as_array().is_some_and(|c| c
            .iter()
            .all(|l| !l.as_str().unwrap_or("").starts_with("pageerror"))),
        "{text}"
    );
    let s = agent.status(&vm);
    assert!(s.is(Status::Green) && s.connected, "{}", s.summary());
}
