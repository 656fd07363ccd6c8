//! The host's side of the demo application's control port (`appmon-demo` in the guest, vsock
//! port [`DEMO_CONTROL_PORT`]): one command line, one answer line (`ok ...` or `error ...`).
//! The commands are listed in `guest-programs/src/bin/appmon-demo.rs`: `stop`, `resume`,
//! `needreset`, `ok`, `disable`, `enable`, `status`, `appstatus`, `exit`, `reboot`,
//! `burn N`.
//!
//! Host side: hybrid vsock through the guest's vhost-device-vsock Unix socket, never AF_VSOCK.

use std::io::{self, BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use crate::hybrid::HybridConnectError;
use crate::vm::TestVm;
use crate::DEMO_CONTROL_PORT;

/// Bound for a demo command: connecting (the demo may still be starting) and its answer
/// (`needreset` waits for the guest agent, which waits up to 10 s for the host).
pub const DEMO_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a demo command failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot reach the demo application on guest port {DEMO_CONTROL_PORT}")]
    Connect(#[source] HybridConnectError),
    #[error("sending {command:?} to the demo application failed")]
    Send {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the demo application's answer to {command:?} failed")]
    Read {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("the demo application closed the connection without answering {command:?}")]
    NoAnswer { command: String },
    #[error("the demo application refused {command:?}: {answer}")]
    Refused { command: String, answer: String },
}

impl TestVm {
    /// Sends one command to the demo application and returns its answer after `ok `. Retries
    /// the connection until `timeout` (the demo application may not listen yet).
    pub fn try_demo_command(&self, command: &str, timeout: Duration) -> Result<String, DemoError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match self.try_connect(DEMO_CONTROL_PORT) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(DemoError::Connect(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let set = stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.set_write_timeout(Some(left)));
        set.map_err(|source| DemoError::Send {
            command: command.to_owned(),
            source,
        })?;
        let mut writer = &stream;
        writer
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| writer.flush())
            .map_err(|source| DemoError::Send {
                command: command.to_owned(),
                source,
            })?;
        let mut line = String::new();
        let n = BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|source| DemoError::Read {
                command: command.to_owned(),
                source,
            })?;
        if n == 0 {
            return Err(DemoError::NoAnswer {
                command: command.to_owned(),
            });
        }
        let answer = line.trim_end();
        match answer.strip_prefix("ok ") {
            Some(text) => Ok(text.to_owned()),
            None => Err(DemoError::Refused {
                command: command.to_owned(),
                answer: answer.to_owned(),
            }),
        }
    }

    /// [`TestVm::try_demo_command`] with [`DEMO_COMMAND_TIMEOUT`]; fails the test with the
    /// guest's diagnostics.
    pub fn demo_command(&self, command: &str) -> String {
        self.try_demo_command(command, DEMO_COMMAND_TIMEOUT)
            .unwrap_or_else(|e| self.fail(appmon_wire::report::error_chain(&e)))
    }
}

/// The demo's second half: MON's page of the demo guest. Where the host agent serves it, with
/// which credentials (HTTP basic auth), a custom counter the guest publishes, and the view the
/// demo saves for it.
pub mod mon_page {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use appmon_host_agent::mon::page::views::{Chart, CounterRef, View};

    /// Where the demo's host agent serves MON (`/mon/`, `/monapi`).
    pub const ADDR: &str = "127.0.0.1:8315";
    pub const USER: &str = "mon";
    pub const PASSWORD: &str = "appmon-demo";
    /// `USER:PASSWORD` in base64, for the check's requests.
    const AUTH: &str = "bW9uOmFwcG1vbi1kZW1v";
    /// The view the demo saves and the page opens (`/mon/#demo`).
    pub const VIEW: &str = "demo";

    /// The guest agent's configuration: the standard counters (CPU, ...) every second, so
    /// the page's CPU chart moves as fast as the custom one (the default is slower).
    pub const GUEST_CONFIG: &str = "port = 5315\n[counters]\npace_ms = 1000\n";
    /// The guest's custom counter block (seed ccad.conf): `Demo/requests`, fed by [`FEEDER`].
    pub const CCAD_CONF: &str = "counters Demo\n   {\n   pace = 1000\n   pipe = /tmp/cca\n   \
        counter requests: desc = \"Requests served\", units = \"#\"\n   }\n";
    /// A guest script feeding `requests`: a sawtooth 0..29, a value a second.
    pub const FEEDER: &str = "#!/bin/sh\n\
        while [ ! -p /tmp/cca ]; do sleep 0.2; done\n\
        i=0\n\
        while true; do\n\
        \x20 i=$(((i + 1) % 30))\n\
        \x20 echo \"requests = $i\" > /tmp/cca\n\
        \x20 echo \".\" > /tmp/cca\n\
        \x20 sleep 1\n\
        done\n";

    /// The demo's view of `domain`: its CPU and its custom counter, the last 5 minutes.
    pub fn view(domain: &str) -> View {
        let counter = |entity: &str, counter: &str| CounterRef {
            domain: domain.to_owned(),
            entity: entity.to_owned(),
            counter: counter.to_owned(),
        };
        View {
            name: VIEW.to_owned(),
            charts: vec![
                Chart {
                    title: "CPU".into(),
                    minutes: 5,
                    counters: vec![counter("CPU", "CPU Total")],
                },
                Chart {
                    title: "Requests (custom counter)".into(),
                    minutes: 5,
                    counters: vec![counter("Demo", "requests")],
                },
            ],
        }
    }

    fn request(addr: SocketAddr, method: &str, target: &str, body: &str) -> Result<String, String> {
        let what = format!("{method} http://{addr}{target}");
        let mut s = TcpStream::connect(addr).map_err(|e| format!("{what}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| format!("{what}: {e}"))?;
        write!(
            s,
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {AUTH}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| format!("{what}: {e}"))?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)
            .map_err(|e| format!("{what}: {e}"))?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "{what}: {}: {body}",
                head.lines().next().unwrap_or("")
            ));
        }
        Ok(body.to_owned())
    }

    /// Checks that the page answers with `domain`'s counters: the page itself, the VM in its
    /// overview, and points of each of the demo view's counters. What it saw, or what was
    /// wrong.
    pub fn check(domain: &str) -> Result<String, String> {
        let addr: SocketAddr = ADDR.parse().expect("a socket address");
        let html = request(addr, "GET", "/mon/", "")?;
        if !html.contains("uPlot") {
            return Err(format!("/mon/ is not the MON page: {html}"));
        }
        let overview: serde_json::Value =
            serde_json::from_str(&request(addr, "GET", "/mon/api/overview", "")?)
                .map_err(|e| format!("/mon/api/overview: {e}"))?;
        let vm = overview["vms"]
            .as_array()
            .and_then(|vms| vms.iter().find(|v| v["name"] == domain))
            .ok_or_else(|| format!("/mon/api/overview does not list {domain}: {overview}"))?;
        let counters: Vec<CounterRef> = view(domain)
            .charts
            .into_iter()
            .flat_map(|c| c.counters)
            .collect();
        let ask = serde_json::json!({ "since_ms": 0, "counters": counters });
        let series: serde_json::Value =
            serde_json::from_str(&request(addr, "POST", "/mon/api/series", &ask.to_string())?)
                .map_err(|e| format!("/mon/api/series: {e}"))?;
        let mut seen = Vec::new();
        for (c, s) in counters.iter().zip(series.as_array().into_iter().flatten()) {
            let points = s["v"].as_array().map_or(0, Vec::len);
            if s["gone"] != false || points == 0 {
                return Err(format!(
                    "{} / {}: no points on the page: {s}",
                    c.entity, c.counter
                ));
            }
            seen.push(format!("{} / {}: {points} points", c.entity, c.counter));
        }
        if seen.len() != counters.len() {
            return Err(format!("/mon/api/series answered {series}"));
        }
        Ok(format!(
            "{domain} is {} on the page; {}",
            vm["status"].as_str().unwrap_or("unknown"),
            seen.join(", ")
        ))
    }
}
