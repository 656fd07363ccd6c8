//! Counters from a real nested guest through the real host agent: the guest agent's standard
//! counters and a ccad.conf custom counter fed through its named pipe by a guest script (the
//! seed's loop in busybox sh) reach `appmon-host` over hybrid vsock, and the test reads them
//! the way an operator does, with `appmonctl counters` (text and `--json`). The demo
//! application burns CPU and `CPU Total` shows it. The same boot serves MON: the custom counter
//! in `/monapi/val/<domain>` (XML and JSON) and in `/metrics`, over the host agent's loopback
//! HTTP listener.
#![cfg(feature = "vm")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use appmon_control::{
    AlarmEvent, AlarmSide, CountersDocument, CountersView, HistoryKind, SCHEMA_VERSION,
};
use appmon_host_agent::config::AlarmRuleConfig;
use appmon_vm_tests::{
    test_host_config, test_policy, wait_for, HostAgent, Status, TestVm, VmConfig,
    DEFAULT_BOOT_TIMEOUT, DEMO_COMMAND_TIMEOUT,
};

/// The pace of the standard counters and of the custom block.
const PACE: Duration = Duration::from_secs(1);
/// From boot to the first counters at the host agent: the guest agent starts, the host agent
/// connects (1 s backoff at most), the schema and the first values; generous for TCG.
const FIRST_COUNTERS_TIMEOUT: Duration = Duration::from_secs(90);

const GUEST_CONFIG: &str = "vsock = true\nport = 5315\n[counters]\npace_ms = 1000\n";

const CCAD_CONF: &str = "counters Demo\n   {\n   pace = 1000\n   pipe = /tmp/cca\n   \
    counter requests: desc = \"Requests served\", units = \"#\"\n   \
    counter load: desc = \"Demo load\", units = \"#\"\n   }\n";

/// The seed's feeder loop for busybox: a value a second, each set ended by a `.`; `load` goes
/// 0, 1, ..., 5 and again, crossing the alarm threshold both ways every 6 s.
const FEEDER: &str = "#!/bin/sh\n\
    while [ ! -p /tmp/cca ]; do sleep 0.2; done\n\
    i=0\n\
    while true; do\n\
    \x20 i=$((i + 1))\n\
    \x20 echo \"requests = $i\" > /tmp/cca\n\
    \x20 echo \"load = $((i % 6))\" > /tmp/cca\n\
    \x20 echo \".\" > /tmp/cca\n\
    \x20 sleep 1\n\
    done\n";

/// `appmonctl --json counters DOMAIN [ENTITY]`, read into the control schema.
fn counters(agent: &HostAgent, vm: &TestVm, entity: Option<&str>) -> Result<CountersView, String> {
    let mut args = vec!["--json", "counters", vm.name()];
    args.extend(entity);
    let out = agent.ctl_ok(&args).map_err(|e| e.to_string())?;
    let doc: CountersDocument =
        serde_json::from_str(&out).map_err(|e| format!("appmonctl counters --json: {e}: {out}"))?;
    if doc.schema_version != SCHEMA_VERSION {
        return Err(format!("schema_version {}", doc.schema_version));
    }
    Ok(doc.counters)
}

/// A loopback address with a port nobody listens on right now, for MON's listener.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("a free loopback port: {e}"))
}

/// One HTTP GET on loopback: (status, body).
fn http_get(addr: SocketAddr, target: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET {target}: {e}"))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .map_err(|e| format!("GET {target}: {e}"))?;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn value(view: &CountersView, entity: &str, name: &str) -> Option<f64> {
    view.counter(entity, name).and_then(|c| c.value)
}

/// Polls `appmonctl counters` (at least every 100 ms, [`wait_for`]) until `pick` takes a view,
/// or fails the test with the last one.
fn counters_until<T>(
    agent: &HostAgent,
    vm: &TestVm,
    timeout: Duration,
    what: &str,
    mut pick: impl FnMut(&CountersView) -> Option<T>,
) -> T {
    let mut last = None;
    let found = wait_for(timeout, what, || match counters(agent, vm, None) {
        Ok(view) => {
            let got = pick(&view);
            last = Some(Ok(view));
            got
        }
        Err(e) => {
            last = Some(Err(e));
            None
        }
    });
    found.unwrap_or_else(|_| {
        vm.fail(format!(
            "timed out after {timeout:?} waiting for {what}; last `appmonctl counters`: {last:?}\n{}",
            agent.diagnostics()
        ))
    })
}

#[test]
fn guest_counters_reach_appmonctl_counters_and_cpu_total_follows_a_burn() {
    let vm = TestVm::new(
        VmConfig::new("counters")
            .guest_config(GUEST_CONFIG)
            .guest_file("/etc/ccad.conf", CCAD_CONF)
            .guest_script("/etc/appmon/init.d/feeder", FEEDER),
    );
    vm.rig().require_guest_program("appmon-guest");
    vm.rig().require_guest_program("appmon-demo");
    let mon = free_port();
    let mut config = test_host_config();
    config.mon.listen = Some(mon);
    // MON's alarm view on the custom `load`: raised at 4 and 5, cleared at 2 or lower.
    config.mon.alarms = vec![AlarmRuleConfig {
        domain: vm.name().to_owned(),
        entity: "Demo".into(),
        counter: "load".into(),
        alarm_below: None,
        alarm_above: Some(3.5),
        hysteresis: 1.0,
    }];
    let agent = HostAgent::start(&[&vm], config);
    agent.enable(&vm, &test_policy());
    vm.start_measured(DEFAULT_BOOT_TIMEOUT);

    // The schema names the seed's standard entities and the custom one, each counter once.
    let first = counters_until(
        &agent,
        &vm,
        FIRST_COUNTERS_TIMEOUT,
        "the guest's counter schema and a first custom value",
        |c| (c.generation.is_some() && value(c, "Demo", "requests").is_some()).then(|| c.clone()),
    );
    let entities: Vec<&str> = first.entities.iter().map(|e| e.name.as_str()).collect();
    for want in ["CPU", "CPU#0", "File System", "Memory", "Scheduler", "Demo"] {
        assert!(entities.contains(&want), "{want} in {entities:?}");
    }
    let mut names: Vec<(&str, &str)> = first
        .entities
        .iter()
        .flat_map(|e| {
            e.counters
                .iter()
                .map(move |c| (e.name.as_str(), c.name.as_str()))
        })
        .collect();
    let total = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), total, "each counter once");
    assert!(
        first.counter("Memory", "High Total").is_none(),
        "a 64-bit guest kernel has no high memory: absent, not zero"
    );
    let requests = first.counter("Demo", "requests").cloned();
    assert_eq!(
        requests
            .as_ref()
            .map(|c| (c.units.as_str(), c.description.as_str())),
        Some(("#", "Requests served"))
    );
    assert_eq!(first.refused_frames, 0);
    println!("schema: {total} counters in {} entities", entities.len());

    // The guest script's counter: each new value seen by `appmonctl counters` within two paces
    // of the last.
    let mut seen: Vec<(Instant, f64)> = Vec::new();
    counters_until(
        &agent,
        &vm,
        Duration::from_secs(30),
        "four new values of the custom counter",
        |c| {
            let n = value(c, "Demo", "requests")?;
            if seen.last().is_none_or(|(_, last)| n > *last) {
                seen.push((Instant::now(), n));
            }
            (seen.len() >= 5).then_some(())
        },
    );
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].0 - w[0].0).collect();
    println!(
        "custom counter values {:?}, gaps {gaps:?}",
        seen.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    // The first value was seen at an unknown point of its pace; the gaps after it count.
    for gap in &gaps {
        assert!(
            *gap <= 2 * PACE,
            "a new value within two paces: gaps {gaps:?}"
        );
    }

    // The text form: one entity, the value with its units.
    let text = agent
        .ctl_ok(&["counters", vm.name(), "Demo"])
        .unwrap_or_else(|e| vm.fail(format!("appmonctl counters: {e}")));
    let line = text
        .lines()
        .find(|l| l.starts_with("Demo") && l.contains("requests"))
        .unwrap_or_else(|| vm.fail(format!("no requests line in:\n{text}")));
    assert!(
        line.contains(" #") && line.contains("Requests served"),
        "{text}"
    );
    assert!(
        !text.contains("CPU Total"),
        "only the entity asked for:\n{text}"
    );

    // MON: the same counter in /monapi/val/<domain>, XML and JSON, and in /metrics.
    let domain = vm.name();
    let get = |target: &str| {
        http_get(mon, target).unwrap_or_else(|e| vm.fail(format!("{e}\n{}", agent.diagnostics())))
    };
    let (code, xml) = get(&format!("/monapi/val/{domain}"));
    assert_eq!(code, 200, "{xml}");
    assert!(
        xml.contains(&format!("<appliance name=\"{domain}\">")),
        "{xml}"
    );
    assert!(xml.contains("<entity name=\"Demo\">"), "{xml}");
    assert!(xml.contains("<counter name=\"requests\" value=\""), "{xml}");
    assert!(
        xml.contains("<counter name=\"CPU Total\" value=\""),
        "{xml}"
    );
    let (code, json) = get(&format!("/monapi/val/{domain}/Demo/requests?fmt=json"));
    assert_eq!(code, 200, "{json}");
    let doc: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| vm.fail(format!("{e}: {json}")));
    let monapi = doc["response"]["appliance"][0]["entity"][0]["counter"][0]["value"].as_f64();
    assert!(monapi.is_some_and(|v| v >= 1.0), "{json}");
    let (code, metrics) = get("/metrics");
    assert_eq!(code, 200, "{metrics}");
    let series =
        format!("appmon_guest_value{{domain=\"{domain}\",entity=\"Demo\",counter=\"requests\"}} ");
    assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    println!("MON: requests = {monapi:?} in /monapi/val, and in /metrics");

    // The alarm on `load` rises when it crosses 3.5 and clears when it comes back to 2.5 or
    // lower, in the VM's history, whether or not anyone looks.
    let alarms = |s: &appmon_vm_tests::VmView| -> Vec<AlarmEvent> {
        s.history
            .iter()
            .filter_map(|h| match &h.kind {
                HistoryKind::Alarm(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    };
    let s = agent.wait_for_status(
        &vm,
        Duration::from_secs(30),
        "the load alarm raised and cleared",
        |s| {
            let a = alarms(s);
            a.iter().any(|e| matches!(e, AlarmEvent::Raised { .. }))
                && a.iter().any(|e| matches!(e, AlarmEvent::Cleared { .. }))
        },
    );
    let events = alarms(&s);
    match events.as_slice() {
        [AlarmEvent::Raised {
            counter,
            side: AlarmSide::Above,
            value,
            ..
        }, AlarmEvent::Cleared {
            side: AlarmSide::Above,
            value: back,
            ..
        }, ..] => {
            assert_eq!(counter, "load");
            assert!(value.0 >= 4.0 && back.0 <= 2.5, "{events:?}");
        }
        other => vm.fail(format!("alarm events out of order: {other:?}")),
    }
    println!(
        "alarm on load: {}",
        s.history_text()
            .lines()
            .filter(|l| l.contains("alarm"))
            .collect::<Vec<_>>()
            .join(" | ")
    );

    // A rule set at run time with the real appmonctl replaces host.toml's on the same key:
    // above 0.5 (no hysteresis), `load` is raised on most samples, and `appmonctl alarms`
    // exits 5 while it stands.
    let ctl = |args: &[&str]| {
        agent
            .ctl(args)
            .unwrap_or_else(|e| vm.fail(format!("appmonctl {args:?}: {e}")))
    };
    let set = ctl(&[
        "alarm-set",
        "Demo",
        "load",
        "--domain",
        domain,
        "--above",
        "0.5",
    ]);
    assert_eq!(set.code, Some(0), "alarm-set: {}", set.stderr);
    let raised = vm.wait_for(
        Duration::from_secs(20),
        "appmonctl alarms exiting 5 under the run-time rule",
        || {
            let out = ctl(&["alarms", domain]);
            (out.code == Some(5)).then_some(out.stdout)
        },
    );
    assert!(
        raised.contains("load") && raised.contains("run time") && !raised.contains("host.toml"),
        "{raised}"
    );
    assert_eq!(ctl(&["alarms", "no-such-domain"]).code, Some(4));
    let removed = ctl(&["alarm-remove", "Demo", "load", "--domain", domain]);
    assert_eq!(removed.code, Some(0), "alarm-remove: {}", removed.stderr);
    let rules = ctl(&["alarms", domain]).stdout;
    assert!(
        rules.contains("host.toml") && !rules.contains("run time"),
        "{rules}"
    );
    println!("appmonctl alarms under the run-time rule:\n{raised}");

    // CPU Total: low while the guest idles, high while the demo application burns a CPU.
    let idle = counters_until(
        &agent,
        &vm,
        Duration::from_secs(60),
        "an idle CPU Total",
        |c| value(c, "CPU", "CPU Total").filter(|t| *t < 50.0),
    );
    let answer = vm
        .try_demo_command("burn 10", DEMO_COMMAND_TIMEOUT)
        .unwrap_or_else(|e| vm.fail(appmon_wire::report::error_chain(&e)));
    let burning_since = Instant::now();
    let busy = counters_until(
        &agent,
        &vm,
        Duration::from_secs(8),
        "CPU Total of a burning guest",
        |c| value(c, "CPU", "CPU Total").filter(|t| *t >= 80.0),
    );
    println!(
        "CPU Total idle {idle:.1} %, burning {busy:.1} % after {:?} ({answer})",
        burning_since.elapsed()
    );

    // Counters took nothing from monitoring: Green, connected, never reset.
    let s = agent.status(&vm);
    assert!(s.is(Status::Green) && s.connected, "{}", s.summary());
    assert!(s.reset_decisions().is_empty(), "{}", s.history_text());
}
