//! MON's web page of the real host agent, on loopback: its JSON (views saved, listed, refused,
//! a broken view file reported while the others load, a gone counter shown as gone), its
//! credentials, and the page itself in headless Chromium: a scripted guest's counter, named
//! with markup, charted in a view made on the page and shown as text, never run.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use appmon_control::Status;
use appmon_host_agent::testing::browser::{self, CounterRef, Drive};
use appmon_wire::{CounterDesc, CounterSchema, CounterValues, EntityDesc, Frame, GuestMsg, Text};
use common::sim::GuestSim;
use common::*;

/// `mon:secret`, base64.
const AUTH: &str = "bW9uOnNlY3JldA==";
/// A counter name that is markup: the page must show it as text.
const HOSTILE: &str = "<img src=x onerror=\"window.pwned=1\">&amp;";

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// One request; (status, headers and body).
async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        auth.map(|a| format!("Authorization: Basic {a}\r\n"))
            .unwrap_or_default(),
        body.len()
    );
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(head.as_bytes()).expect("request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("response");
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (headers, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        (status, headers.to_owned(), body.to_owned())
    })
    .await
    .expect("client")
}

fn counter(id: u32, name: &str) -> CounterDesc {
    CounterDesc {
        id,
        name: Text::truncating(name),
        description: Text::truncating("fed by the test"),
        units: Text::truncating("#"),
        kind: Text::default(),
        range_lower: None,
        range_upper: None,
        pace_ms: 1000,
    }
}

/// A scripted guest with entity `Demo`: `requests` and [`HOSTILE`], whose values it sends every
/// 200 ms (`requests` 1, 2, 3, …; the other its double) until the test ends.
async fn guest_with_counters(lab: &Lab, host: &Host) -> (GuestSim, String) {
    let guest = GuestSim::new(1, Some(ms(200)));
    let (g, _) = lab.guest_domain("vm", &guest);
    drop(g);
    let vm = lab.name("vm");
    host.wait_show(&vm, ms(5000), |v| v.is(Status::Green)).await;
    for part in CounterSchema::parts(
        1,
        vec![EntityDesc {
            name: Text::truncating("Demo"),
            counters: vec![counter(1, "requests"), counter(2, HOSTILE)],
        }],
    ) {
        assert!(guest.send(Frame::event(GuestMsg::CounterSchema(part))));
    }
    let feeder = guest.clone();
    tokio::spawn(async move {
        for i in 1u32.. {
            let sent = feeder.send(Frame::event(GuestMsg::CounterValues(CounterValues {
                generation: 1,
                unix_ms: 0,
                values: vec![(1, f64::from(i)), (2, f64::from(2 * i))],
            })));
            if !sent {
                break;
            }
            tokio::time::sleep(ms(200)).await;
        }
    });
    host.wait_counters(&vm, ms(3000), |c| {
        c.counter("Demo", "requests")
            .and_then(|c| c.value)
            .is_some()
    })
    .await;
    (guest, vm)
}

fn view_json(name: &str, domain: &str, counter: &str) -> String {
    serde_json::json!({
        "name": name,
        "charts": [{"title": "t", "minutes": 5,
                    "counters": [{"domain": domain, "entity": "Demo", "counter": counter}]}],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_api_keeps_views_reports_broken_ones_and_shows_gone_counters() {
    let lab = Lab::in_process("mon-page");
    let addr = free_port();
    let mut config = lab.config();
    config.mon.listen = Some(addr);
    config.mon.user = Some("mon".into());
    config.mon.password = Some("secret".into());
    let views_dir = config.state_dir.join("views");
    let host = lab.start_host(config.clone()).await;
    let (_guest, vm) = guest_with_counters(&lab, &host).await;
    let auth = Some(AUTH);

    // Credentials guard the page and its data like /monapi.
    for (method, target) in [
        ("GET", "/mon/"),
        ("GET", "/mon/page.js"),
        ("GET", "/mon/api/overview"),
        ("GET", "/mon/api/views"),
        ("PUT", "/mon/api/views/x"),
    ] {
        let (code, headers, body) = request(addr, method, target, Some("bW9uOndyb25n"), "").await;
        assert_eq!(code, 401, "{method} {target}: {body}");
        assert!(
            headers.contains("www-authenticate: Basic realm="),
            "{headers}"
        );
        assert!(!body.contains(&vm), "{body}");
    }

    // The page and uPlot, from the binary.
    let (code, headers, html) = request(addr, "GET", "/mon/", auth, "").await;
    assert_eq!(code, 200, "{html}");
    assert!(
        headers.contains("content-security-policy: default-src 'self'"),
        "{headers}"
    );
    assert!(
        html.contains("<script src=\"uPlot.iife.min.js\">"),
        "{html}"
    );
    let (code, _, uplot) = request(addr, "GET", "/mon/uPlot.iife.min.js", auth, "").await;
    assert_eq!(code, 200);
    assert!(uplot.contains("uPlot"), "the embedded uPlot");

    // The overview: the VM, its status, its counters (the hostile name as JSON text).
    let (code, _, body) = request(addr, "GET", "/mon/api/overview", auth, "").await;
    assert_eq!(code, 200, "{body}");
    let overview: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let row = &overview["vms"][0];
    assert_eq!(row["name"], vm.as_str(), "{body}");
    assert_eq!(row["status"], "green", "{body}");
    assert_eq!(row["entities"][0]["counters"][1]["name"], HOSTILE, "{body}");

    // Views: saved, listed, replaced, refused when bad, removed.
    let (code, _, body) = request(
        addr,
        "PUT",
        "/mon/api/views/load",
        auth,
        &view_json("load", &vm, "requests"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = request(
        addr,
        "PUT",
        "/mon/api/views/old",
        auth,
        &view_json("old", "a-vm-long-gone", "requests"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    for (target, view, why) in [
        (
            "/mon/api/views/..",
            view_json("..", &vm, "requests"),
            "view name",
        ),
        (
            "/mon/api/views/a",
            view_json("b", &vm, "requests"),
            "the URL names view",
        ),
        ("/mon/api/views/a", "{\"name\": \"a\"".into(), "view \"a\""),
        ("/mon/api/views/a", view_json("a", &vm, ""), "chart 1"),
    ] {
        let (code, _, body) = request(addr, "PUT", target, auth, &view).await;
        assert_eq!(code, 400, "{target}: {body}");
        assert!(body.contains(why), "{target}: {body}");
    }
    std::fs::write(views_dir.join("broken.json"), "{\"name\": ").expect("a broken view");
    let (code, _, body) = request(addr, "GET", "/mon/api/views", auth, "").await;
    assert_eq!(code, 200, "{body}");
    let listing: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let names: Vec<&str> = listing["views"]
        .as_array()
        .expect("views")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["load", "old"], "{body}");
    assert_eq!(listing["broken"][0]["file"], "broken.json", "{body}");
    assert!(
        listing["broken"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a view")),
        "{body}"
    );

    // The series: the live counter's points, the gone one marked gone.
    let ask = serde_json::json!({"since_ms": 0, "counters": [
        {"domain": vm, "entity": "Demo", "counter": "requests"},
        {"domain": "a-vm-long-gone", "entity": "Demo", "counter": "requests"},
    ]});
    let (code, _, body) = request(addr, "POST", "/mon/api/series", auth, &ask.to_string()).await;
    assert_eq!(code, 200, "{body}");
    let series: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(series[0]["gone"], false, "{body}");
    let values = series[0]["v"].as_array().expect("values");
    assert!(!values.is_empty(), "{body}");
    assert_eq!(
        series[0]["t"].as_array().map(Vec::len),
        Some(values.len()),
        "{body}"
    );
    assert_eq!(series[1]["gone"], true, "{body}");

    // Views survive a restart of the host agent; deleting removes the file.
    host.stop().await;
    let host = lab.start_host(config).await;
    let (_, _, body) = request(addr, "GET", "/mon/api/views", auth, "").await;
    assert!(body.contains("\"name\":\"load\""), "{body}");
    let (code, _, _) = request(addr, "DELETE", "/mon/api/views/old", auth, "").await;
    assert_eq!(code, 200);
    let (code, _, _) = request(addr, "DELETE", "/mon/api/views/old", auth, "").await;
    assert_eq!(code, 404);
    assert!(!views_dir.join("old.json").exists());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_chromium_charts_a_counter_named_with_markup_as_text() {
    let lab = Lab::in_process("mon-chromium");
    let addr = free_port();
    let mut config = lab.config();
    config.mon.listen = Some(addr);
    config.mon.user = Some("mon".into());
    config.mon.password = Some("secret".into());
    let views_dir = config.state_dir.join("views");
    let host = lab.start_host(config).await;
    let (_guest, vm) = guest_with_counters(&lab, &host).await;
    // A view file that cannot be read: the page says so, and the others still load.
    std::fs::create_dir_all(&views_dir).expect("views dir");
    std::fs::write(views_dir.join("torn.json"), "{\"name\": \"torn\", \"cha").expect("write");
    // Kept after the test, for its log: the path is printed.
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mon-page-hostile.png");

    let drive = Drive {
        url: format!("http://{addr}/mon/"),
        user: "mon".into(),
        password: "secret".into(),
        view: "hostile names".into(),
        counter: CounterRef {
            domain: vm.clone(),
            entity: "Demo".into(),
            counter: HOSTILE.into(),
        },
        points: 3,
        screenshot: Some(screenshot.clone()),
        timeout_ms: 20_000,
    };
    let (report, took) = tokio::task::spawn_blocking(move || browser::drive(&drive))
        .await
        .expect("driver thread")
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "chromium drove the page in {took:?}; screenshot {}",
        screenshot.display()
    );
    let text = serde_json::to_string_pretty(&report).expect("report");
    assert!(report["error"].is_null(), "{text}");

    // No or wrong credentials: the 401 that makes a browser ask, and none of the data.
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

    // The chart of the hostile counter: its name as text in the label, its values the fed ones
    // (even numbers 2, 4, 6, ...), markup never run.
    let chart = &report["chart"];
    assert_eq!(
        chart["labels"][0].as_str(),
        Some(format!("{vm} / Demo / {HOSTILE}").as_str()),
        "{text}"
    );
    let values: Vec<f64> = chart["values"]
        .as_array()
        .expect("values")
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    assert!(values.len() >= 3, "{text}");
    assert!(
        values.iter().all(|v| *v >= 2.0 && v % 2.0 == 0.0),
        "{values:?}"
    );
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    assert_eq!(chart["canvas"], true, "{text}");
    assert!(report["pwned"].is_null(), "the guest's markup ran: {text}");
    assert!(
        report["body"].as_str().is_some_and(|b| b.contains(HOSTILE)),
        "{text}"
    );
    assert!(
        report["body"]
            .as_str()
            .is_some_and(|b| b.contains("View file torn.json cannot be read")),
        "{text}"
    );
    // Saved on the host; drawn again after a reload.
    assert!(views_dir.join("hostile names.json").is_file());
    assert_eq!(report["reloaded"]["labels"], chart["labels"], "{text}");
    assert_eq!(
        report["reloaded"]["title"],
        format!("Chart of {HOSTILE}"),
        "{text}"
    );
    assert_eq!(report["alarms_tab"], "No alarm is raised.", "{text}");
    assert!(std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000));
    host.stop().await;
}
