//! End to end without a VM: the real guest agent (`appmon-guest`'s daemon, in-process on its
//! own thread and runtime, as the binary runs it) and an application using its client, against
//! the real host agent and libvirt's test driver.
//!
//! The guest agent listens for the host on a plain Unix socket (`host_unix_socket`, which
//! behaves like its vsock listener); the host agent reaches it with the `channel` transport,
//! which connects to a Unix socket path and speaks the wire protocol directly (hybrid vsock
//! would first send `CONNECT <port>`, which only a vhost-user-vsock backend answers).
//!
//! A reset in libvirt's test driver does not reboot anything, so the test plays the guest's
//! reboot itself: the guest agent stops and a new one starts with a new boot id and no state,
//! as after a real reset.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use appmon_control::{Decision, ResetCause, ResetMethod, Status};
use appmon_guest_agent::client::{AppState, AppStatus, Client, Delivery};
use appmon_guest_agent::config::Config as GuestConfig;
use appmon_guest_agent::daemon::Tuning;
use appmon_guest_agent::testing::Background;
use appmon_libvirt_backend::{
    DomainEvent, MonitorSpec, ShutOffReason, Transport, DEFAULT_CHANNEL_NAME,
};
use common::sim;
use common::*;

const BOOT_A: [u8; 16] = [0xa1; 16];
const BOOT_B: [u8; 16] = [0xb2; 16];

/// The guest agent daemon as `appmon-guest` runs it, on a thread of its own; stopped on drop.
fn start_guest_agent(host_socket: &Path, api_socket: &Path, boot_id: [u8; 16]) -> Background {
    let config = GuestConfig {
        // Never AF_VSOCK on this machine.
        vsock: false,
        host_unix_socket: Some(host_socket.to_path_buf()),
        socket: api_socket.to_path_buf(),
        ..GuestConfig::default()
    };
    let tuning = Tuning {
        boot_id: Some(boot_id),
        ..Tuning::default()
    };
    Background::start(config, None, tuning).unwrap_or_else(|e| {
        panic!(
            "guest agent does not start: {}",
            appmon_wire::report::error_chain(&e)
        )
    })
}

/// The application: blocking client calls, off the test's runtime.
#[derive(Clone)]
struct App {
    socket: PathBuf,
}

impl App {
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> R + Send + 'static,
    ) -> R {
        let mut client = Client::new(&self.socket).with_timeout(Some(Duration::from_secs(5)));
        tokio::task::spawn_blocking(move || f(&mut client))
            .await
            .expect("client thread")
    }

    async fn status(&self) -> AppStatus {
        self.call(|c| c.get_app_status())
            .await
            .expect("getAppStatus")
    }

    async fn wait_status(&self, want: AppStatus, limit: Duration) -> AppStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = self.status().await;
            if status == want || tokio::time::Instant::now() >= deadline {
                return status;
            }
            tokio::time::sleep(ms(20)).await;
        }
    }

    /// `appmon markActive`; returns the wall time (Unix ms) just before the call.
    async fn mark_active(&self) -> f64 {
        let before = sim::unix_ms(SystemTime::now());
        let delivery = self.call(|c| c.mark_active()).await.expect("markActive");
        assert_eq!(delivery, Delivery::Confirmed, "a host session is up");
        before
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_agent_against_the_real_host_agent_and_libvirt() {
    let lab = Lab::in_process("e2e");
    let host_socket = lab.dir.path().join("guest-host.sock");
    let app = App {
        socket: lab.dir.path().join("app.sock"),
    };
    let guest = start_guest_agent(&host_socket, &app.socket, BOOT_A);
    // The application starts before any host agent: recorded, delivered with the guest's State.
    let enabled = app.call(|c| c.enable()).await.expect("enable");
    assert_eq!(enabled.delivery, Delivery::Recorded);
    let delivery = app.call(|c| c.mark_active()).await.expect("markActive");
    assert_eq!(delivery, Delivery::Recorded);

    let mut spec = MonitorSpec::with_transport(Transport::Channel {
        path: Some(host_socket.clone()),
        name: DEFAULT_CHANNEL_NAME.into(),
    });
    spec.failure_interval = Some(ms(1000));
    spec.min_uptime = Some(Duration::ZERO);
    lab.running("vm", Some(&spec));
    let mut config = lab.config();
    // Long enough that the test's own "reboot" below comes back before a power-cycle.
    config.channel_timeout = ms(10_000);
    let host = lab.start_host(config).await;
    let vm = lab.name("vm");

    // Gray after the host agent's start; the guest agent enables again by itself: Green.
    assert_eq!(
        app.wait_status(AppStatus::Green, ms(5000)).await,
        AppStatus::Green
    );
    let agent = app.call(|c| c.status()).await.expect("appmon status");
    assert_eq!(agent.reenables, 1, "told Gray once: {agent:?}");
    let view = host.show(&vm).await;
    assert_eq!(view.status, Some(Status::Green), "{view}");
    assert!(
        decided(&view, |d| *d == Decision::ApplicationEnabled),
        "{view}"
    );

    // markActive keeps it Green, for more than two failure intervals.
    let mut last = 0.0;
    for _ in 0..12 {
        last = app.mark_active().await;
        assert_eq!(app.status().await, AppStatus::Green);
        tokio::time::sleep(ms(200)).await;
    }
    let view = host.show(&vm).await;
    assert_eq!(view.status, Some(Status::Green), "{view}");
    assert!(view.reset_decisions().is_empty(), "{view}");

    // Silence: reset through libvirt one failure interval after the last heartbeat.
    let view = host
        .wait_show(&vm, ms(5000), |v| !v.resets_done().is_empty())
        .await;
    let decisions = view.reset_decisions();
    assert_eq!(decisions.len(), 1, "{view}");
    assert!(
        decisions[0].reset_decision() == Some((ResetMethod::Reset, ResetCause::HeartbeatsStopped)),
        "{decisions:?}"
    );
    let latency = decisions[0].unix_ms as i64 - last.floor() as i64;
    assert!(
        (1000..=1400).contains(&latency),
        "reset {latency} ms after the application's last markActive"
    );
    assert!(
        view.resets_done()[0].reset_done()
            == Some((ResetMethod::Reset, ResetCause::HeartbeatsStopped)),
        "libvirt carried out virDomainReset: {view}"
    );
    // From the decision on the host sends the guest nothing until it says Hello again (a
    // packet to a guest that reboots can wedge a vsock backend): no Red is pushed; the host
    // closes the guest's connection, then resets.
    assert!(
        view.history.iter().any(|h| matches!(
            h.guest(),
            Some(appmon_control::GuestEvent::SessionEnded {
                reason: appmon_control::SessionEnd::ClosedForReset
            })
        )),
        "{view}"
    );

    // The reset guest boots again: a fresh guest agent, new boot id, nothing enabled.
    guest.stop().await;
    let guest = start_guest_agent(&host_socket, &app.socket, BOOT_B);
    let view = host
        .wait_show(&vm, ms(5000), |v| guest_boot_starts_with(v, "b2b2b2b2"))
        .await;
    assert!(
        decided(
            &view,
            |d| matches!(d, Decision::ChannelBack { boot_id } if boot_id.starts_with("b2b2b2b2"))
        ),
        "{view}"
    );
    // Its first host session hears its status, which the guest agent reports (without a push
    // it would answer Gray): Red, not monitored.
    assert_eq!(
        app.wait_status(AppStatus::Red, ms(3000)).await,
        AppStatus::Red
    );
    let enabled = app.call(|c| c.enable()).await.expect("enable");
    assert_eq!(enabled.delivery, Delivery::Confirmed);
    assert_eq!(enabled.status, Some(AppStatus::Green));
    app.mark_active().await;

    // needReset: reset at once, not a failure interval later.
    let asked = sim::unix_ms(SystemTime::now());
    let posted = app
        .call(|c| c.post_app_state(AppState::NeedReset))
        .await
        .expect("postAppState needReset");
    assert_eq!(posted.delivery, Delivery::Confirmed);
    let view = host
        .wait_show(&vm, ms(3000), |v| v.resets_done().len() >= 2)
        .await;
    let decisions = view.reset_decisions();
    assert_eq!(decisions.len(), 2, "{view}");
    assert!(
        decisions[1].reset_decision() == Some((ResetMethod::Reset, ResetCause::NeedReset)),
        "{decisions:?}"
    );
    let latency = decisions[1].unix_ms as i64 - asked.floor() as i64;
    assert!(
        (0..=250).contains(&latency),
        "needReset reset {latency} ms after it was posted"
    );
    assert_eq!(view.resets_done().len(), 2, "{view}");
    // The guest came back each time: libvirt never had to power-cycle it.
    assert!(
        !lab.events_of("vm")
            .contains(&DomainEvent::Stopped(ShutOffReason::Destroyed)),
        "{:?}",
        lab.events_of("vm")
    );

    host.stop().await;
    guest.stop().await;
}
