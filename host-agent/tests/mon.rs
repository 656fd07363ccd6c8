//! MON's HTTP service of the real host agent, on loopback: a scripted guest's counters in
//! `/monapi` (XML, JSON, UDL) and `/metrics` (checked by Prometheus's own `promtool`),
//! malformed URLs refused with 400, credentials checked.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use appmon_control::Status;
use appmon_wire::{CounterDesc, CounterSchema, CounterValues, EntityDesc, Frame, GuestMsg, Text};
use common::sim::GuestSim;
use common::*;

/// A loopback address with a port nobody listens on right now.
fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// One GET; (status, body).
async fn get(addr: SocketAddr, target: &str, auth: Option<&str>) -> (u16, String) {
    let target = target.to_owned();
    let auth = auth.map(|a| format!("Authorization: Basic {a}\r\n"));
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{}Connection: close\r\n\r\n",
            auth.unwrap_or_default()
        )
        .expect("request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("response");
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
    .await
    .expect("client")
}

fn counter(id: u32, name: &str) -> CounterDesc {
    CounterDesc {
        id,
        name: Text::truncating(name),
        description: Text::truncating("a <special> \"one\" & more"),
        units: Text::truncating("#"),
        kind: Text::default(),
        range_lower: None,
        range_upper: None,
        pace_ms: 1000,
    }
}

async fn guest_with_counters(lab: &Lab, host: &Host) -> (GuestSim, String) {
    let guest = GuestSim::new(1, Some(ms(200)));
    let (g, _) = lab.guest_domain("vm", &guest);
    drop(g); // the guest task serves on, detached, until the test ends
    let vm = lab.name("vm");
    host.wait_show(&vm, ms(5000), |v| v.is(Status::Green)).await;
    for part in CounterSchema::parts(
        1,
        vec![EntityDesc {
            name: Text::truncating("Demo"),
            counters: vec![counter(1, "requests"), counter(2, "a&b<c>")],
        }],
    ) {
        assert!(guest.send(Frame::event(GuestMsg::CounterSchema(part))));
    }
    assert!(
        guest.send(Frame::event(GuestMsg::CounterValues(CounterValues {
            generation: 1,
            unix_ms: 0,
            values: vec![(1, 42.0), (2, 0.5)],
        })))
    );
    host.wait_counters(&vm, ms(3000), |c| {
        c.counter("Demo", "requests").and_then(|c| c.value) == Some(42.0)
    })
    .await;
    (guest, vm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monapi_serves_a_guests_counters_in_three_formats_and_refuses_bad_urls() {
    let lab = Lab::in_process("mon");
    let addr = free_port();
    let mut config = lab.config();
    config.mon.listen = Some(addr);
    let host = lab.start_host(config).await;
    let (_guest, vm) = guest_with_counters(&lab, &host).await;

    let (code, xml) = get(addr, &format!("/monapi/val/{vm}"), None).await;
    assert_eq!(code, 200, "{xml}");
    assert!(xml.contains(&format!("<appliance name=\"{vm}\">")), "{xml}");
    assert!(
        xml.contains("<counter name=\"requests\" value=\"42\" />"),
        "{xml}"
    );
    assert!(
        xml.contains("<counter name=\"a&amp;b&lt;c&gt;\" value=\"0.5\" />"),
        "{xml}"
    );
    assert!(xml.contains("<response timestamp=\""), "{xml}");

    let (code, json) = get(
        addr,
        &format!("/monapi/val/{vm}/Demo/requests?fmt=json"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{json}");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let counter = &doc["response"]["appliance"][0]["entity"][0]["counter"][0];
    assert_eq!(counter["name"], "requests", "{json}");
    assert_eq!(counter["value"], 42, "{json}");

    let (code, udl) = get(addr, "/monapi/desc/*/Demo/requests?fmt=udl", None).await;
    assert_eq!(code, 200, "{udl}");
    assert!(
        udl.contains("counter \"requests\": description = \"a <special> \\\"one\\\" & more\""),
        "{udl}"
    );

    let (code, desc) = get(addr, "/monapi/desc", None).await;
    assert_eq!(
        (code, desc.matches("<appliance ").count()),
        (200, 1),
        "{desc}"
    );
    let (code, none) = get(addr, "/monapi/val/nobody", None).await;
    assert_eq!(code, 200);
    assert!(!none.contains("<appliance"), "{none}");

    for bad in [
        "/monapi/val/../../etc/passwd".to_string(),
        "/monapi/val/%zz".to_string(),
        "/monapi/val?fmt=yaml".to_string(),
        format!("/monapi/val/{}", "x".repeat(5000)),
    ] {
        let (code, body) = get(addr, &bad, None).await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(!body.is_empty());
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monapi_asks_for_credentials_when_a_user_is_set() {
    let lab = Lab::in_process("mon-auth");
    let addr = free_port();
    let mut config = lab.config();
    config.mon.listen = Some(addr);
    config.mon.user = Some("mon".into());
    config.mon.password = Some("secret".into());
    let host = lab.start_host(config).await;

    // mon:secret, mon:wrong, other:secret, none.
    let (ok, _) = get(addr, "/monapi/desc", Some("bW9uOnNlY3JldA==")).await;
    let (wrong_password, body1) = get(addr, "/monapi/desc", Some("bW9uOndyb25n")).await;
    let (wrong_user, body2) = get(addr, "/monapi/desc", Some("b3RoZXI6c2VjcmV0")).await;
    let (none, _) = get(addr, "/monapi/desc", None).await;

    assert_eq!((ok, wrong_password, wrong_user, none), (200, 401, 401, 401));
    assert_eq!(body1, body2, "a 401 does not say which part was wrong");
    host.stop().await;
}

/// `promtool check metrics` (Debian's `prometheus` package) on `text`: its verdict.
fn promtool(text: &str) -> Result<(), String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run promtool (apt-get install prometheus; scripts/setup does): {e}")
        })?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_guest_counters_and_the_host_agents_health_without_credentials() {
    let lab = Lab::in_process("metrics");
    let addr = free_port();
    let mut config = lab.config();
    config.mon.listen = Some(addr);
    config.mon.user = Some("mon".into());
    config.mon.password = Some("secret".into());
    let host = lab.start_host(config).await;
    let (_guest, vm) = guest_with_counters(&lab, &host).await;

    let (code, text) = get(addr, "/metrics", None).await;

    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains(&format!(
            "appmon_guest_value{{domain=\"{vm}\",entity=\"Demo\",counter=\"requests\"}} 42.0"
        )),
        "{text}"
    );
    assert!(text.contains("appmon_vms{status=\"green\"} 1"), "{text}");
    assert!(text.contains("appmon_guest_sessions 1"), "{text}");
    assert!(
        text.contains(&format!("appmon_vm_gave_up{{domain=\"{vm}\"}} 0")),
        "{text}"
    );
    promtool(&text).unwrap_or_else(|e| panic!("promtool check metrics: {e}\n{text}"));
    host.stop().await;
}

fn alarm_events(view: &appmon_control::VmView) -> Vec<appmon_control::AlarmEvent> {
    view.history
        .iter()
        .filter_map(|h| match &h.kind {
            appmon_control::HistoryKind::Alarm(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_rises_past_its_threshold_once_and_clears_past_the_hysteresis() {
    use appmon_control::{AlarmEvent, AlarmSide, Finite};
    use appmon_host_agent::config::AlarmRuleConfig;
    let lab = Lab::in_process("mon-alarm");
    let addr = free_port();
    let mut config = lab.config();
    config.mon.listen = Some(addr);
    config.mon.alarms = vec![AlarmRuleConfig {
        domain: format!("{}-*", lab.prefix),
        entity: "Demo".into(),
        counter: "requests".into(),
        alarm_below: None,
        alarm_above: Some(50.0),
        hysteresis: 5.0,
    }];
    let host = lab.start_host(config).await;
    let (guest, vm) = guest_with_counters(&lab, &host).await;
    let send = |v: f64| {
        assert!(
            guest.send(Frame::event(GuestMsg::CounterValues(CounterValues {
                generation: 1,
                unix_ms: 0,
                values: vec![(1, v)],
            })))
        );
    };

    // Above, hovering at the threshold (no second alarm), back within the band (no clear).
    for v in [60.0, 49.0, 51.0, 47.0] {
        send(v);
    }
    let raised = host
        .wait_counters(&vm, ms(3000), |c| {
            c.counter("Demo", "requests").and_then(|c| c.value) == Some(47.0)
        })
        .await;
    assert!(raised.refused_frames == 0);
    let events = alarm_events(&host.show(&vm).await);
    assert_eq!(
        events,
        [AlarmEvent::Raised {
            entity: "Demo".into(),
            counter: "requests".into(),
            side: AlarmSide::Above,
            value: Finite(60.0),
            threshold: Finite(50.0),
        }]
    );
    let (_, metrics) = get(addr, "/metrics", None).await;
    assert!(
        metrics.contains(&format!(
            "appmon_alarm_raised{{domain=\"{vm}\",entity=\"Demo\",counter=\"requests\",side=\"above\"}} 1"
        )),
        "{metrics}"
    );
    let (_, desc) = get(addr, &format!("/monapi/desc/{vm}/Demo/requests"), None).await;
    assert!(
        desc.contains("alarm_below=\"\" alarm_above=\"50\""),
        "{desc}"
    );

    // Back past the band: cleared.
    send(45.0);
    let view = host
        .wait_show(&vm, ms(3000), |v| alarm_events(v).len() == 2)
        .await;
    assert_eq!(
        alarm_events(&view).last(),
        Some(&AlarmEvent::Cleared {
            entity: "Demo".into(),
            counter: "requests".into(),
            side: AlarmSide::Above,
            value: Finite(45.0),
        }),
        "{view}"
    );
    let (_, metrics) = get(addr, "/metrics", None).await;
    assert!(!metrics.contains("appmon_alarm_raised{"), "{metrics}");
    host.stop().await;
}

/// `appmonctl --json alarms ARGS`: its exit code and, when it printed one, its document.
async fn alarms(host: &Host, args: &[&str]) -> (i32, Option<appmon_control::AlarmsDocument>) {
    use appmon_host_agent::ctl::{EXIT_ALARM_RAISED, EXIT_OK};
    let mut argv = vec!["--json", "alarms"];
    argv.extend_from_slice(args);
    let (code, out, err) = host.ctl(&argv).await;
    let doc = (code == EXIT_OK || code == EXIT_ALARM_RAISED).then(|| {
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("alarms --json: {e}\n{out}\n{err}"))
    });
    (code, doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_rules_set_at_run_time_override_host_toml_and_survive_a_restart() {
    use appmon_control::{AlarmSide, RuleOrigin};
    use appmon_host_agent::config::AlarmRuleConfig;
    use appmon_host_agent::ctl::{EXIT_ALARM_RAISED, EXIT_OK, EXIT_UNKNOWN_DOMAIN, EXIT_USAGE};
    let lab = Lab::in_process("mon-rules");
    let mut config = lab.config();
    let glob = format!("{}-*", lab.prefix);
    config.mon.alarms = vec![AlarmRuleConfig {
        domain: glob.clone(),
        entity: "Demo".into(),
        counter: "requests".into(),
        alarm_below: None,
        alarm_above: Some(50.0),
        hysteresis: 5.0,
    }];
    let host = lab.start_host(config.clone()).await;
    let (guest, vm) = guest_with_counters(&lab, &host).await;
    // 42 is under host.toml's 50: nothing raised.
    let (code, doc) = alarms(&host, &[&vm]).await;
    let doc = doc.expect("a document");
    assert_eq!(code, EXIT_OK, "{doc:?}");
    assert_eq!(doc.alarms.rules.len(), 1);
    assert_eq!(doc.alarms.rules[0].origin, RuleOrigin::HostToml);

    // Bad rules and names are refused with their exit codes and change nothing.
    let refused = [
        (vec!["alarm-set", "Demo", "requests"], EXIT_USAGE),
        (
            vec![
                "alarm-set",
                "Demo",
                "requests",
                "--below",
                "45",
                "--above",
                "46",
                "--hysteresis",
                "2",
            ],
            EXIT_USAGE,
        ),
        (
            vec!["alarm-remove", "Demo", "requests", "--domain", "nobody*"],
            EXIT_UNKNOWN_DOMAIN,
        ),
        (vec!["alarms", "no-such-domain"], EXIT_UNKNOWN_DOMAIN),
    ];
    for (args, want) in refused {
        let (code, _, err) = host.ctl(&args).await;
        assert_eq!(code, want, "{args:?}: {err}");
        assert!(!err.is_empty(), "{args:?} says why");
    }
    assert!(!config.state_dir.join("mon/alarm-rules.json").exists());

    // A run-time rule on the same key replaces host.toml's: 42 is over its 40.
    let (code, out, err) = host
        .ctl(&[
            "alarm-set",
            "Demo",
            "requests",
            "--domain",
            &glob,
            "--above",
            "40",
            "--hysteresis",
            "1",
        ])
        .await;
    assert_eq!(code, EXIT_OK, "{out}{err}");
    assert!(
        guest.send(Frame::event(GuestMsg::CounterValues(CounterValues {
            generation: 1,
            unix_ms: 0,
            values: vec![(1, 42.0)],
        })))
    );
    host.wait_show(&vm, ms(3000), |v| !alarm_events(v).is_empty())
        .await;
    let (code, doc) = alarms(&host, &[&vm]).await;
    let doc = doc.expect("a document").alarms;
    assert_eq!(code, EXIT_ALARM_RAISED, "{doc:?}");
    assert_eq!(doc.raised.len(), 1, "{doc:?}");
    let raised = &doc.raised[0];
    assert_eq!(
        (
            raised.domain.as_str(),
            raised.counter.as_str(),
            raised.side,
            raised.threshold
        ),
        (vm.as_str(), "requests", AlarmSide::Above, 40.0)
    );
    assert_eq!(doc.rules.len(), 1, "host.toml's rule is replaced: {doc:?}");
    assert_eq!(doc.rules[0].origin, RuleOrigin::RunTime);
    let (code, text, _) = host.ctl(&["alarms"]).await;
    assert_eq!(code, EXIT_ALARM_RAISED);
    assert!(text.contains("run time") && text.contains(&vm), "{text}");
    host.stop().await;

    // The rule survives the restart; removing it brings host.toml's back.
    assert!(config.state_dir.join("mon/alarm-rules.json").exists());
    let host = lab.start_host(config).await;
    let (_, doc) = alarms(&host, &[]).await;
    let rules = doc.expect("a document").alarms.rules;
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        (rules[0].origin, rules[0].rule.alarm_above),
        (RuleOrigin::RunTime, Some(40.0))
    );
    let (code, _, err) = host
        .ctl(&["alarm-remove", "Demo", "requests", "--domain", &glob])
        .await;
    assert_eq!(code, EXIT_OK, "{err}");
    let (_, doc) = alarms(&host, &[]).await;
    let rules = doc.expect("a document").alarms.rules;
    assert_eq!(
        rules
            .iter()
            .map(|r| (r.origin, r.rule.alarm_above))
            .collect::<Vec<_>>(),
        [(RuleOrigin::HostToml, Some(50.0))]
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_monapi_answer_gives_way_to_new_values_at_once() {
    let lab = Lab::in_process("mon-cache");
    let addr = free_port();
    let mut config = lab.config();
    config.mon.listen = Some(addr);
    assert!(config.mon.render_cache, "on by default");
    let host = lab.start_host(config).await;
    let (guest, vm) = guest_with_counters(&lab, &host).await;
    let path = format!("/monapi/val/{vm}/Demo/requests?fmt=json");

    // Asked twice: the second is served from the cache (within the same second).
    let (_, first) = get(addr, &path, None).await;
    let (_, again) = get(addr, &path, None).await;
    assert!(
        guest.send(Frame::event(GuestMsg::CounterValues(CounterValues {
            generation: 1,
            unix_ms: 0,
            values: vec![(1, 43.0)],
        })))
    );
    host.wait_counters(&vm, ms(3000), |c| {
        c.counter("Demo", "requests").and_then(|c| c.value) == Some(43.0)
    })
    .await;
    let (status, after) = get(addr, &path, None).await;

    // The counter's value, not a substring of the answer (its timestamp may hold "42").
    let value = |answer: &str| {
        let json: serde_json::Value = serde_json::from_str(answer).expect(answer);
        let value = json
            .pointer("/response/appliance/0/entity/0/counter/0/value")
            .cloned();
        value.unwrap_or_else(|| panic!("no counter value in {answer}"))
    };
    assert_eq!(value(&first), value(&again), "{first} / {again}");
    assert!(value(&first).to_string().contains("42"), "{first}");
    assert_eq!(status, 200);
    assert!(value(&after).to_string().contains("43"), "{after}");
    host.stop().await;
}
