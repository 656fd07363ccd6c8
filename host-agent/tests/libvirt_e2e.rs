//! The real `appmon-host` and `appmonctl` binaries against real libvirt with its simulated
//! hypervisor (`test:///<node file>`: private to the daemon's connection, so `appmonctl` goes
//! through the daemon for metadata as designed). The guest is a scripted peer on a Unix socket.

use appmon_control::{ListDocument, ResetCause, ResetMethod, ShowDocument, VmView};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use appmon_wire::AppStatus;
use common::ms;
use common::sim::GuestSim;

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_xml(sock: &Path) -> String {
    format!(
        r#"<node>
  <domain type='test'>
    <name>e2e-a</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e1931</uuid>
    <memory>8192</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <metadata>
      <appmon:monitor xmlns:appmon="https://appmon.dev/xmlns/monitor/1"><appmon:policy failure-interval="1s" min-uptime="0s" max-resets="5"/><appmon:hybrid-vsock path="{}" port="5315"/></appmon:monitor>
    </metadata>
  </domain>
  <domain type='test'>
    <name>e2e-b</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e1932</uuid>
    <memory>8192</memory><vcpu>1</vcpu><os><type>hvm</type></os>
  </domain>
  <domain type='test'>
    <name>e2e-broken</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e1933</uuid>
    <memory>8192</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <metadata>
      <appmon:monitor xmlns:appmon="https://appmon.dev/xmlns/monitor/1"><appmon:policy failure-interval="soon"/><appmon:vsock cid="5"/></appmon:monitor>
    </metadata>
  </domain>
</node>"#,
        sock.display()
    )
}

fn ctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_appmonctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run appmonctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn show(socket: &Path, domain: &str) -> VmView {
    let (code, out, err) = ctl(socket, &["--json", "show", domain]);
    assert_eq!(code, 0, "show {domain}: {err}");
    serde_json::from_str::<ShowDocument>(&out)
        .expect("json")
        .domain
}

async fn until(limit: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if pred() {
            return true;
        }
        tokio::time::sleep(ms(50)).await;
    }
    pred()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_against_libvirts_test_driver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("a.vsock");
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest.listen(&sock, true).expect("listen");
    let node = dir.path().join("node.xml");
    std::fs::write(&node, node_xml(&sock)).expect("node xml");
    let control = dir.path().join("ctl.sock");
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "uri = \"test://{}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\nchannel_timeout = \"1s\"\nping_interval = \"200ms\"\nhello_timeout = \"1s\"\nreconnect_max = \"200ms\"\n",
            node.display(),
            dir.path().join("state").display(),
            control.display()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("host.log")).expect("log");
    let mut daemon = Daemon {
        child: Command::new(env!("CARGO_BIN_EXE_appmon-host"))
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start appmon-host"),
    };
    assert!(
        until(ms(10_000), || ctl(&control, &["list"]).0 == 0).await,
        "control socket up"
    );

    // Which domains are monitored comes from their metadata.
    let (code, out, _) = ctl(&control, &["--json", "list"]);
    assert_eq!(code, 0);
    let list = serde_json::from_str::<ListDocument>(&out)
        .expect("json")
        .domains;
    let by = |n: &str| {
        list.iter()
            .find(|v| v.name == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} listed: {list:?}"))
    };
    assert!(by("e2e-a").monitored);
    assert!(!by("e2e-b").monitored);
    assert!(!by("e2e-broken").monitored);
    assert!(by("e2e-broken")
        .spec_error
        .is_some_and(|e| e.contains("failure-interval")));

    // Gray after the start, Green once the guest enables.
    assert!(
        guest
            .wait(ms(10_000), |g| g.statuses().contains(&AppStatus::Green))
            .await
    );
    assert_eq!(guest.statuses()[0], AppStatus::Gray);

    // Heartbeats stop: reset through libvirt; the same boot id comes back, so after the
    // channel timeout a power-cycle follows.
    guest.set_enabled_in_state(false);
    guest.set_auto_enable(false);
    guest.set_heartbeat(None);
    let mut view = None;
    assert!(
        until(ms(10_000), || {
            let v = show(&control, "e2e-a");
            let done = v
                .resets_done()
                .iter()
                .any(|h| matches!(h.reset_done(), Some((ResetMethod::PowerCycle, _))));
            view = Some(v);
            done
        })
        .await,
        "{view:?}"
    );
    let view = view.expect("shown");
    let done: Vec<_> = view
        .resets_done()
        .iter()
        .filter_map(|h| h.reset_done())
        .collect();
    assert_eq!(
        done,
        [
            (ResetMethod::Reset, ResetCause::HeartbeatsStopped),
            (ResetMethod::PowerCycle, ResetCause::ChannelLostAfterReset)
        ],
        "{view}"
    );
    // The power-cycle completes that reset: one slot of the window, not two.
    assert_eq!(view.resets_in_window, 1);

    // enable / disable write the metadata through the daemon's libvirt connection.
    let (code, _, err) = ctl(
        &control,
        &["enable", "e2e-b", "--cid", "5", "--max-resets", "2"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(until(ms(5000), || show(&control, "e2e-b").monitored).await);
    assert_eq!(
        show(&control, "e2e-b").policy.map(|p| p.max_resets),
        Some(2)
    );
    let (code, _, err) = ctl(&control, &["disable", "e2e-b"]);
    assert_eq!(code, 0, "{err}");
    assert!(until(ms(5000), || !show(&control, "e2e-b").monitored).await);
    let (code, _, err) = ctl(&control, &["show", "no-such-domain"]);
    assert_eq!(code, appmon_host_agent::ctl::EXIT_UNKNOWN_DOMAIN, "{err}");

    // SIGTERM stops it cleanly.
    let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let mut status = None;
    assert!(
        until(ms(10_000), || {
            status = daemon.child.try_wait().ok().flatten();
            status.is_some()
        })
        .await,
        "daemon exits on SIGTERM"
    );
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let log = std::fs::read_to_string(dir.path().join("host.log")).expect("log");
    assert!(
        log.contains("resetting") && log.contains("e2e-a"),
        "decisions are logged with the domain:\n{log}"
    );
    assert!(log.contains("e2e-broken"), "{log}");
}
