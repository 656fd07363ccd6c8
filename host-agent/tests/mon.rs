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
