//! The daemon in-process against real libvirt (its test driver), guests as scripted peers on
//! Unix sockets. Domains are defined, started, paused and resumed through a second libvirt
//! connection; what the host agent decided is read from its history through the control
//! socket, and what libvirt did from libvirt's own events.

mod common;

use std::sync::Arc;

use appmon_control::{
    Decision, DomainState, HistoryEntry, HistoryKind, HypervisorEvent, ResetCause, RunningReason,
    SessionEnd, Status,
};
use appmon_libvirt_backend::testing::{node_xml, PrivateLibvirtd};
use appmon_libvirt_backend::{
    BackendEvent, ConnectOptions, DomainEvent, Hypervisor, LibvirtHypervisor, MonitorSpec,
    PausedReason, ResetMethod, ShutOffReason, StartedReason, Transport, DEFAULT_CHANNEL_NAME,
    METADATA_URI,
};
use appmon_wire::{AppState, AppStatus, ErrorCode, Frame, GuestMsg, HostMsg};
use common::sim::GuestSim;
use common::*;

/// Milliseconds from a moment (fractional Unix ms) to a history entry, both counted in whole
/// milliseconds: never more than the true gap rounded down.
fn ms_after(entry: &HistoryEntry, at_unix_ms: f64) -> i64 {
    entry.unix_ms as i64 - at_unix_ms.floor() as i64
}

fn destroys(lab: &Lab, short: &str) -> usize {
    lab.events_of(short)
        .iter()
        .filter(|e| **e == DomainEvent::Stopped(ShutOffReason::Destroyed))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeating_guest_stays_green_and_silent_one_is_reset_on_time() {
    let lab = Lab::in_process("timing");
    let good = GuestSim::new(1, Some(ms(200)));
    let (_g, _) = lab.guest_domain("good", &good);
    let quiet = GuestSim::new(2, Some(ms(200)));
    let (_q, _) = lab.guest_domain("quiet", &quiet);
    let host = lab.start_host(lab.config()).await;

    // After the start both are Gray; the guests enable on their own.
    assert!(
        good.wait(ms(5000), |g| g.statuses().contains(&AppStatus::Green))
            .await
    );
    assert!(quiet.wait(ms(5000), |g| g.heartbeats() >= 3).await);
    assert_eq!(good.statuses()[0], AppStatus::Gray);

    quiet.set_heartbeat(None);
    let view = host
        .wait_show(&lab.name("quiet"), ms(5000), |v| {
            !v.resets_done().is_empty()
        })
        .await;
    let decisions = view.reset_decisions();
    assert_eq!(decisions.len(), 1, "{view}");
    assert!(
        decisions[0].reset_decision() == Some((ResetMethod::Reset, ResetCause::HeartbeatsStopped)),
        "{decisions:?}"
    );
    // libvirt carried the reset out.
    assert!(
        view.resets_done()[0].reset_done()
            == Some((ResetMethod::Reset, ResetCause::HeartbeatsStopped)),
        "{view}"
    );
    let last = quiet.last_heartbeat_unix_ms().expect("heartbeats sent");
    let latency = ms_after(decisions[0], last);
    assert!(latency >= 1000, "reset too early: {latency} ms");
    assert!(
        latency <= 1400,
        "reset late: {latency} ms after the last heartbeat"
    );
    assert!(host
        .show(&lab.name("good"))
        .await
        .reset_decisions()
        .is_empty());

    assert_eq!(view.resets_in_window, 1);
    assert!(
        decided(&view, |d| matches!(
            d,
            Decision::HeartbeatsOverdue {
                failure_interval_ms: 1000,
                ..
            }
        )),
        "{view}"
    );
    let view = host.show(&lab.name("good")).await;
    assert_eq!(view.status, Some(Status::Green));
    assert!(view.connected);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_protocol_handshake_gray_requests_and_unknown_kinds() {
    let lab = Lab::in_process("handshake");
    let guest = GuestSim::new(1, None);
    guest.set_auto_enable(false);
    guest.set_enabled_in_state(true);
    let (_g, _) = lab.guest_domain("vm", &guest);
    let host = lab.start_host(lab.config()).await;

    // No state for the guest: Gray, whatever its State says.
    assert!(
        guest
            .wait(ms(5000), |g| g.statuses() == vec![AppStatus::Gray])
            .await
    );
    guest.request(GuestMsg::IsEnabled);
    assert!(
        guest
            .wait(ms(2000), |g| g.replies().contains(&HostMsg::Enabled(false)))
            .await
    );
    guest.request(GuestMsg::Enable);
    assert!(
        guest
            .wait(ms(2000), |g| g
                .replies()
                .contains(&HostMsg::AppStatus(AppStatus::Green)))
            .await
    );
    guest.request(GuestMsg::Ping);
    assert!(
        guest
            .wait(ms(2000), |g| g.replies().contains(&HostMsg::Pong))
            .await
    );
    // A request the host does not handle is refused, not fatal.
    guest.request(GuestMsg::Ack);
    assert!(
        guest
            .wait(ms(2000), |g| g.replies().iter().any(
                |r| matches!(r, HostMsg::Error(e) if e.code == ErrorCode::NotAllowed)
            ))
            .await
    );
    assert!(guest.connected());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_kind_gets_unsupported_and_the_session_goes_on() {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lab = Lab::in_process("newer");
    let path = lab.sock("new");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    lab.running("new", Some(&hybrid_spec(&path)));
    let host = lab.start_host(lab.config()).await;
    let (mut s, _) = listener.accept().await.expect("host connects");
    let mut line = [0u8; 13];
    s.read_exact(&mut line).await.expect("CONNECT");
    assert_eq!(&line, b"CONNECT 5315\n");
    s.write_all(b"OK 1\n").await.expect("OK");
    let mut framed = tokio_util::codec::Framed::new(s, appmon_wire::GuestCodec::new());
    let hello = framed
        .next()
        .await
        .expect("frame")
        .expect("io")
        .expect("decodes");
    assert!(matches!(hello.msg, HostMsg::Hello(_)));
    framed
        .send(Frame::event(GuestMsg::Hello(appmon_wire::Hello::new(
            "newer",
            [9; 16],
            appmon_wire::Capabilities::HEARTBEAT,
        ))))
        .await
        .expect("send");
    // A request of kind 200 from a newer guest: postcard tag Request(7) = [0, 7], kind 200 = [0xc8, 0x01].
    let mut raw = Vec::new();
    appmon_wire::cobs::encode(&[0, 7, 0xc8, 0x01], &mut raw);
    raw.push(0);
    framed.get_mut().write_all(&raw).await.expect("raw");
    let reply = loop {
        let f = framed
            .next()
            .await
            .expect("frame")
            .expect("io")
            .expect("decodes");
        if f.tag == appmon_wire::Tag::Reply(7) {
            break f;
        }
    };
    assert!(
        matches!(reply.msg, HostMsg::Error(e) if e.code == ErrorCode::Unsupported { kind: 200 })
    );
    framed
        .send(Frame::request(8, GuestMsg::Ping))
        .await
        .expect("ping");
    loop {
        let f = framed
            .next()
            .await
            .expect("session still up")
            .expect("io")
            .expect("decodes");
        if f.tag == appmon_wire::Tag::Reply(8) {
            assert_eq!(f.msg, HostMsg::Pong);
            break;
        }
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn need_reset_resets_at_once_then_reset_falls_back_to_power_cycle() {
    let lab = Lab::in_process("fallback");
    let guest = GuestSim::new(1, Some(ms(200)));
    let (_g, _) = lab.guest_domain("vm", &guest);
    let host = lab.start_host(lab.config()).await;
    assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);

    // The guest will not come back after the reset (the vhost-device-vsock defect).
    guest.set_accept(false);
    guest.request(GuestMsg::PostAppState(AppState::NeedReset));
    let view = host
        .wait_show(&lab.name("vm"), ms(5000), |v| v.resets_done().len() >= 2)
        .await;
    let decisions = view.reset_decisions();
    assert!(decisions.len() >= 2, "{view}");
    assert!(
        decisions[0].reset_decision() == Some((ResetMethod::Reset, ResetCause::NeedReset)),
        "{decisions:?}"
    );
    assert!(
        decisions[1].reset_decision()
            == Some((ResetMethod::PowerCycle, ResetCause::ChannelLostAfterReset)),
        "{decisions:?}"
    );
    let gap = decisions[1].unix_ms - decisions[0].unix_ms;
    assert!(
        (1000..2000).contains(&gap),
        "power-cycle {gap} ms after the reset"
    );
    assert!(
        decided(&view, |d| matches!(
            d,
            Decision::Reset {
                completes_reset: true,
                in_window: 1,
                ..
            }
        )),
        "the power-cycle completes the reset and takes no slot: {view}"
    );
    // libvirt destroyed the domain and started it again (its events may come a little after
    // the calls returned).
    let name = lab.name("vm");
    let power_cycled = |events: &[DomainEvent]| {
        events
            .iter()
            .position(|e| *e == DomainEvent::Stopped(ShutOffReason::Destroyed))
            .is_some_and(|destroyed| {
                events[destroyed..].contains(&DomainEvent::Started(StartedReason::Booted))
            })
    };
    let seen = lab.driver.wait_events(ms(3000), |s| {
        power_cycled(&s.iter().filter_map(|e| e.of(&name)).collect::<Vec<_>>())
    });
    let events: Vec<_> = seen.iter().filter_map(|e| e.of(&name)).collect();
    assert!(
        power_cycled(&events),
        "libvirt's events of {name}: {events:?}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_back_after_reset_means_no_power_cycle_and_reboot_clears_enable() {
    let lab = Lab::in_process("back");
    let guest = GuestSim::new(1, Some(ms(200)));
    let (_g, _) = lab.guest_domain("vm", &guest);
    let host = lab.start_host(lab.config()).await;
    let vm = lab.name("vm");
    assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);
    // The rebooted guest: new boot id, application not started yet.
    guest.set_boot_id(2);
    guest.set_auto_enable(false);
    guest.set_enabled_in_state(false);
    guest.request(GuestMsg::PostAppState(AppState::NeedReset));
    let view = host
        .wait_show(&vm, ms(3000), |v| !v.resets_done().is_empty())
        .await;
    assert_eq!(view.reset_decisions().len(), 1, "{view}");
    guest.disconnect();
    assert!(guest.wait(ms(5000), |g| g.connections() >= 2).await);
    let view = host
        .wait_show(&vm, ms(3000), |v| guest_boot_starts_with(v, "02020202"))
        .await;
    assert!(!view.enabled, "{view}");
    assert_eq!(view.status, Some(Status::Red));
    tokio::time::sleep(ms(2500)).await;
    let view = host.show(&vm).await;
    assert_eq!(
        view.reset_decisions().len(),
        1,
        "no power-cycle, no reset while not enabled: {view}"
    );
    assert_eq!(destroys(&lab, "vm"), 0, "libvirt never destroyed it");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_resets_then_gave_up_and_clear() {
    // Out of process: the power-cycles go over libvirt's RPC, as in production.
    let lab = Lab::private_libvirtd("limit");
    let guest = GuestSim::new(1, Some(ms(100)));
    let _g = guest.listen(&lab.sock("vm"), true).expect("listen");
    let mut spec = hybrid_spec(&lab.sock("vm"));
    spec.max_resets = Some(2);
    spec.reset_method = Some(ResetMethod::PowerCycle);
    lab.running("vm", Some(&spec));
    let host = lab.start_host(lab.config()).await;
    let vm = lab.name("vm");
    for n in 1..=3u8 {
        assert!(
            guest
                .wait(ms(5000), |g| g.connected()
                    && g.statuses().last() == Some(&AppStatus::Green))
                .await,
            "round {n}"
        );
        guest.set_boot_id(n + 1);
        guest.request(GuestMsg::PostAppState(AppState::NeedReset));
        let want = n.min(2) as usize;
        host.wait_show(&vm, ms(3000), |v| v.reset_decisions().len() >= want)
            .await;
        guest.disconnect();
    }
    let view = host.wait_show(&vm, ms(3000), |v| v.gave_up).await;
    assert!(view.gave_up, "{view}");
    assert_eq!(
        view.reset_decisions().len(),
        2,
        "never more than max_resets"
    );
    lab.driver.wait_events(ms(3000), |seen| {
        seen.iter()
            .filter(|e| e.of(&vm) == Some(DomainEvent::Stopped(ShutOffReason::Destroyed)))
            .count()
            >= 2
    });
    assert_eq!(destroys(&lab, "vm"), 2, "libvirt power-cycled it twice");
    let (code, out, _) = host.ctl(&["list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("GAVE-UP"), "{out}");
    let (code, _, err) = host.ctl(&["clear", &vm]).await;
    assert_eq!(code, 0, "{err}");
    // The needReset is still posted: with room again, it resets.
    let view = host
        .wait_show(&vm, ms(3000), |v| v.reset_decisions().len() >= 3)
        .await;
    assert_eq!(view.reset_decisions().len(), 3, "{view}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_gap_does_not_reset() {
    let lab = Lab::in_process("pause");
    let guest = GuestSim::new(1, Some(ms(200)));
    let (_g, domain) = lab.guest_domain("vm", &guest);
    let host = lab.start_host(lab.config()).await;
    let vm = lab.name("vm");
    assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);

    lab.driver.suspend(&domain).expect("virDomainSuspend");
    host.wait_show(&vm, ms(2000), |v| {
        matches!(v.domain_state, DomainState::Paused(_))
    })
    .await;
    guest.set_heartbeat(None);
    tokio::time::sleep(ms(2000)).await;
    assert!(
        host.show(&vm).await.reset_decisions().is_empty(),
        "reset while paused"
    );
    // Resumed: the clock restarts; heartbeats come again in time.
    guest.set_heartbeat(Some(ms(200)));
    lab.driver.resume(&domain).expect("virDomainResume");
    tokio::time::sleep(ms(1500)).await;

    let view = host.show(&vm).await;
    assert!(view.reset_decisions().is_empty(), "reset after resume");
    assert!(
        libvirt_said(&view, DomainEvent::Suspended(PausedReason::User)),
        "{view}"
    );
    assert!(
        libvirt_said(&view, DomainEvent::Resumed(RunningReason::Unpaused)),
        "{view}"
    );
    host.stop().await;
}

/// libvirt's test driver has no migration, so the events that only a migration produces are
/// put into the supervisor's own input, the backend event channel (`supervisor::Inputs`), next
/// to everything real libvirt sends; the domain really is paused in libvirt meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_away_is_no_failure_and_ends_monitoring_here() {
    let lab = Lab::in_process("migrate");
    let guest = GuestSim::new(1, Some(ms(200)));
    let (_g, domain) = lab.guest_domain("vm", &guest);
    let (hv, mut real) = LibvirtHypervisor::open(IN_PROCESS).expect("host connection");
    let (events, input) = tokio::sync::mpsc::unbounded_channel();
    let forward = tokio::spawn({
        let events = events.clone();
        async move {
            while let Some(e) = real.recv().await {
                let _ = events.send(e);
            }
        }
    });
    let host = Host::start_with(lab.config(), Arc::new(hv), input).await;
    let vm = lab.name("vm");
    assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);

    // The end of a live migration: paused (for real), by the migration (what the QEMU driver
    // says and the test driver cannot)...
    lab.driver.suspend(&domain).expect("virDomainSuspend");
    host.wait_show(&vm, ms(2000), |v| {
        v.domain_state == DomainState::Paused(PausedReason::User)
    })
    .await;
    let send = |event| {
        events
            .send(BackendEvent::Domain {
                domain: domain.clone(),
                event,
            })
            .expect("supervisor input")
    };
    send(DomainEvent::Suspended(PausedReason::Migrating));
    host.wait_show(&vm, ms(2000), |v| {
        v.domain_state == DomainState::Paused(PausedReason::Migrating)
    })
    .await;
    guest.set_heartbeat(None);
    tokio::time::sleep(ms(500)).await;
    let before_leaving = host.show(&vm).await;
    // ...then gone to the destination.
    send(DomainEvent::Stopped(ShutOffReason::Migrated));
    tokio::time::sleep(ms(1500)).await;

    let (code, _, _) = host.ctl(&["show", &vm]).await;
    assert_eq!(code, appmon_host_agent::ctl::EXIT_UNKNOWN_DOMAIN);
    assert!(
        before_leaving.reset_decisions().is_empty(),
        "reset while migrating: {before_leaving}"
    );
    let state = tokio::fs::read_to_string(
        lab.dir
            .path()
            .join("state")
            .join(format!("{}.json", domain.uuid)),
    )
    .await
    .unwrap_or_default();
    assert!(!state.contains("\"reason\""), "no reset recorded: {state}");
    assert_eq!(destroys(&lab, "vm"), 0);
    host.stop().await;
    forward.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_metadata_leaves_that_domain_alone_and_others_monitored() {
    let lab = Lab::in_process("broken");
    let guest = GuestSim::new(1, Some(ms(200)));
    let (_g, _) = lab.guest_domain("ok", &guest);
    let mut broken = lab.domain("broken", None);
    // A policy, but no way to reach the guest.
    broken.metadata = Some(format!(
        "<appmon:monitor xmlns:appmon='{METADATA_URI}'><appmon:policy failure-interval='1s'/>\
         </appmon:monitor>"
    ));
    lab.running_domain(&broken);
    lab.running("plain", None);
    let host = lab.start_host(lab.config()).await;
    assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);
    let list = host.list().await;
    let by = |n: &str| {
        let name = lab.name(n);
        list.iter().find(|v| v.name == name).cloned().expect(n)
    };
    assert!(by("ok").monitored);
    assert!(!by("broken").monitored);
    assert!(
        by("broken")
            .spec_error
            .is_some_and(|e| e.contains("no transport")),
        "{list:?}"
    );
    assert!(!by("plain").monitored);
    assert_eq!(by("plain").status, None);
    guest.set_heartbeat(None);
    host.wait_show(&lab.name("ok"), ms(3000), |v| !v.resets_done().is_empty())
        .await;
    for other in ["broken", "plain"] {
        let view = host.show(&lab.name(other)).await;
        assert!(view.reset_decisions().is_empty(), "{other}: {view}");
        assert_eq!(destroys(&lab, other), 0, "{other}");
    }
    host.stop().await;
}

/// libvirt out of process (a private libvirtd) serving a node file, so that its domains are
/// there again after it restarts; the host agent on the read-only socket, so that libvirtd
/// itself refuses the resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirt_going_away_is_not_a_failure_and_refused_resets_are_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut libvirtd = PrivateLibvirtd::start().expect("private libvirtd");
    let guest = GuestSim::new(1, Some(ms(200)));
    let path = dir.path().join("vm.vsock");
    let _g = guest.listen(&path, true).expect("listen");
    let vm = format!("away-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let node = dir.path().join("node.xml");
    let domain = appmon_libvirt_backend::testing::TestDomain::new(
        vm.as_str(),
        uuid::Uuid::new_v4().to_string(),
    )
    .with_spec(&hybrid_spec(&path));
    std::fs::write(&node, node_xml(&[domain])).expect("node file");
    let config = appmon_host_agent::config::Config {
        uri: libvirtd.node_uri(&node, true),
        ..test_config(dir.path())
    };
    let options = ConnectOptions {
        reconnect_min: ms(100),
        reconnect_max: ms(400),
        ..ConnectOptions::default()
    };
    let (hv, events) = LibvirtHypervisor::open_with(&config.uri, options).expect("read-only");
    let host = Host::start_with(config, Arc::new(hv), events).await;
    assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);

    libvirtd.kill();
    guest.set_heartbeat(None);
    tokio::time::sleep(ms(2000)).await;
    let away = host.show(&vm).await;
    assert!(
        away.reset_decisions().is_empty(),
        "no judgement while libvirt is away"
    );
    // The outage is visible: in the view (since when, why) and in the history.
    let lost = away
        .libvirt_lost
        .as_ref()
        .expect("show says libvirt is away");
    assert!(
        lost.since_unix_ms > 0 && !lost.reason.is_empty(),
        "{lost:?}"
    );
    let (code, text, _) = host.ctl(&["show", &vm]).await;
    assert_eq!(code, 0);
    assert!(
        text.contains("libvirt:         UNREACHABLE since"),
        "{text}"
    );
    libvirtd.launch().expect("libvirtd again");
    let view = host
        .wait_show(&vm, ms(4000), |v| v.resets_failed().len() >= 2)
        .await;
    assert_eq!(view.libvirt_lost, None, "{view}");
    let hypervisor: Vec<_> = view
        .history
        .iter()
        .filter_map(|h| match &h.kind {
            HistoryKind::Hypervisor(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert!(
        matches!(
            hypervisor.as_slice(),
            [HypervisorEvent::Lost { .. }, HypervisorEvent::Back { after_ms }] if *after_ms >= 2000
        ),
        "{hypervisor:?}"
    );

    let failed = view.resets_failed();
    assert!(failed.len() >= 2, "{view}");
    assert!(view.resets_done().is_empty(), "{view}");
    assert!(
        failed.iter().all(
            |f| matches!(f.decision(), Some(Decision::ResetFailed { error, .. })
                if error.contains("read only access prevents virDomainReset"))
        ),
        "{failed:?}"
    );
    let gap = failed[1].unix_ms - failed[0].unix_ms;
    assert!(gap >= 900, "retried after {gap} ms");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_drops_a_guest_that_goes_silent_and_reconnects() {
    let lab = Lab::in_process("keepalive");
    let guest = GuestSim::new(1, None);
    guest.set_auto_enable(false);
    // Only a dialed link has a keepalive: the host pings, the guest announces nothing.
    let (_g, _) = lab.dialed_guest_domain("vm", &guest);
    let host = lab.start_host(lab.config()).await;
    assert!(guest.wait(ms(5000), |g| g.connections() == 1).await);
    guest.set_answer_pings(false);
    // 3 pings of 200 ms without a frame: dead, closed, reconnected.
    assert!(guest.wait(ms(5000), |g| g.connections() >= 2).await);
    let view = host.show(&lab.name("vm")).await;
    // Dead after 3 pings of 200 ms without a frame (the timer may fire a little late).
    assert!(
        session_ended(
            &view,
            |e| matches!(e, SessionEnd::ChannelDead { silent_ms } if *silent_ms >= 600)
        ),
        "{view}"
    );
    assert!(view.reset_decisions().is_empty());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_reset_history_and_resets_nothing_on_its_own() {
    let lab = Lab::in_process("restart");
    let path = lab.sock("vm");
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest.listen(&path, true).expect("listen");
    lab.running("vm", Some(&hybrid_spec(&path)));
    let vm = lab.name("vm");
    {
        let host = lab.start_host(lab.config()).await;
        assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);
        guest.set_boot_id(2);
        guest.request(GuestMsg::PostAppState(AppState::NeedReset));
        host.wait_show(&vm, ms(3000), |v| !v.resets_done().is_empty())
            .await;
        host.stop().await;
    }
    // A new host agent: the guest is still enabled in its own state, and stops heartbeating.
    guest.disconnect();
    guest.set_auto_enable(false);
    guest.set_enabled_in_state(true);
    guest.set_heartbeat(None);
    let statuses_before = guest.statuses().len();
    let host = lab.start_host(lab.config()).await;
    assert!(
        guest
            .wait(ms(5000), |g| g.statuses().len() > statuses_before)
            .await
    );
    assert_eq!(guest.statuses().last(), Some(&AppStatus::Gray));
    let view = host.show(&vm).await;
    assert_eq!(view.resets_in_window, 1, "{view}");
    assert_eq!(view.status, Some(Status::Gray));
    assert!(
        decided(&view, |d| *d
            == Decision::Restored {
                resets: 1,
                alarm: false
            }),
        "{view}"
    );
    // The event history survived the restart: the reset before it is still shown, and the
    // restart's own entry follows it.
    let restored_at = view
        .history
        .iter()
        .position(|h| matches!(h.decision(), Some(Decision::Restored { .. })))
        .expect("restored entry");
    assert_eq!(
        view.history[..restored_at]
            .iter()
            .filter(|h| h.reset_decision().is_some())
            .count(),
        1,
        "the reset before the restart is still in the history: {view}"
    );
    tokio::time::sleep(ms(2500)).await;
    let view = host.show(&vm).await;
    assert!(
        view.history[restored_at..]
            .iter()
            .all(|h| h.reset_decision().is_none()),
        "a restart resets nothing: {view}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appmonctl_enable_disable_show_and_unknown_domain() {
    let lab = Lab::in_process("ctl");
    let guest = GuestSim::new(1, Some(ms(200)));
    let path = lab.sock("vm");
    let _g = guest.listen(&path, true).expect("listen");
    lab.running("vm", None);
    let host = lab.start_host(lab.config()).await;
    let vm = lab.name("vm");
    let view = host.wait_show(&vm, ms(3000), |_| true).await;
    assert!(!view.monitored);

    let p = path.display().to_string();
    let (code, out, err) = host
        .ctl(&[
            "enable",
            &vm,
            "--failure-interval",
            "2s",
            "--max-resets",
            "1",
            "--reset-method",
            "power-cycle",
            "--vsock-uds",
            &p,
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("enabled"), "{out}");
    let view = host.wait_show(&vm, ms(5000), |v| v.is(Status::Green)).await;
    assert_eq!(
        view.policy.as_ref().expect("policy").failure_interval_ms,
        2000,
        "{view}"
    );
    assert_eq!(view.policy.as_ref().expect("policy").max_resets, 1);
    assert_eq!(
        view.policy.as_ref().expect("policy").reset_method,
        ResetMethod::PowerCycle
    );
    // The policy is in libvirt's metadata of the domain, where migration takes it along.
    let stored = lab
        .driver
        .hypervisor()
        .domain(&vm)
        .expect("domain")
        .spec
        .expect("readable")
        .expect("written");
    assert_eq!(stored.max_resets, Some(1));
    assert_eq!(stored.reset_method, Some(ResetMethod::PowerCycle));
    // The documented JSON (host-agent/README.md): versioned, the domain's fields under `domain`.
    let (code, out, _) = host.ctl(&["--json", "show", &vm]).await;
    assert_eq!(code, 0);
    let raw: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        raw["schema_version"],
        appmon_control::SCHEMA_VERSION,
        "{raw}"
    );
    for key in [
        "name",
        "uuid",
        "monitored",
        "status",
        "enabled",
        "last_heartbeat_age_ms",
        "resets_in_window",
        "gave_up",
        "alarm",
        "connected",
        "guest_boot_id",
        "domain_state",
        "history",
    ] {
        assert!(raw["domain"].get(key).is_some(), "show --json lacks {key}");
    }
    let (code, out, _) = host.ctl(&["show", &vm]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("history:") && out.contains("connected"),
        "{out}"
    );

    let (code, _, err) = host.ctl(&["disable", &vm]).await;
    assert_eq!(code, 0, "{err}");
    let view = host.wait_show(&vm, ms(3000), |v| !v.monitored).await;
    assert!(!view.monitored);
    assert!(view.reset_decisions().is_empty());
    assert_eq!(
        lab.driver.hypervisor().domain(&vm).expect("domain").spec,
        Ok(None),
        "metadata removed from libvirt"
    );

    for args in [
        &["show", "nope"][..],
        &["enable", "nope", "--cid", "5"],
        &["disable", "nope"],
        &["clear", "nope"],
    ] {
        let (code, _, err) = host.ctl(args).await;
        assert_eq!(
            code,
            appmon_host_agent::ctl::EXIT_UNKNOWN_DOMAIN,
            "{args:?}: {err}"
        );
        assert!(err.contains("unknown domain \"nope\""), "{err}");
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_outside_the_configured_patterns_are_ignored() {
    let lab = Lab::in_process("patterns");
    let guest = GuestSim::new(1, Some(ms(200)));
    let (_g, _) = lab.guest_domain("other", &guest);
    let mut config = lab.config();
    config.domains = vec![format!("{}-mine-*", lab.prefix)];
    let host = lab.start_host(config).await;
    tokio::time::sleep(ms(500)).await;
    assert!(host.list().await.is_empty());
    assert_eq!(guest.connections(), 0);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtio_serial_channel_socket_works_like_vsock() {
    let lab = Lab::in_process("serial");
    let path = lab.dir.path().join("vm.channel");
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest.listen(&path, false).expect("listen");
    lab.running(
        "vm",
        Some(&MonitorSpec::with_transport(Transport::Channel {
            path: Some(path.clone()),
            name: DEFAULT_CHANNEL_NAME.into(),
        })),
    );
    let host = lab.start_host(lab.config()).await;
    let vm = lab.name("vm");
    assert!(
        guest
            .wait(ms(5000), |g| g.statuses().contains(&AppStatus::Green))
            .await
    );
    let view = host.show(&vm).await;
    assert!(
        view.transport
            .as_deref()
            .is_some_and(|t| t.starts_with("channel ")),
        "{view}"
    );
    guest.set_heartbeat(None);
    let view = host
        .wait_show(&vm, ms(3000), |v| !v.resets_done().is_empty())
        .await;
    assert_eq!(view.reset_decisions().len(), 1, "{view}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_defaults_and_domain_patterns() {
    let lab = Lab::in_process("reload");
    lab.running("a", Some(&hybrid_spec(&lab.sock("a"))));
    lab.running("b", Some(&hybrid_spec(&lab.sock("b"))));
    let config = lab.config();
    let host = lab.start_host(config.clone()).await;
    host.wait_show(&lab.name("b"), ms(3000), |_| true).await;
    let mut next = config.clone();
    next.defaults.failure_interval = ms(3000);
    next.domains = vec![lab.name("a")];
    host.reload.send(next).await.expect("reload");
    let view = host
        .wait_show(&lab.name("a"), ms(3000), |v| {
            v.policy.as_ref().expect("policy").failure_interval_ms == 3000
        })
        .await;
    assert_eq!(
        view.policy.as_ref().expect("policy").failure_interval_ms,
        3000
    );
    let (code, _, _) = host.ctl(&["show", &lab.name("b")]).await;
    assert_eq!(code, appmon_host_agent::ctl::EXIT_UNKNOWN_DOMAIN);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_keeps_live_state_and_adopts_the_guests() {
    let lab = Lab::in_process("reconnect");
    let guest = GuestSim::new(1, Some(ms(200)));
    let (_g, _) = lab.guest_domain("vm", &guest);
    let host = lab.start_host(lab.config()).await;
    assert!(
        guest
            .wait(ms(5000), |g| g.statuses().contains(&AppStatus::Green))
            .await
    );
    // A mere reconnect (same boot id, still enabled): no Gray, stays Green.
    guest.disconnect();
    assert!(
        guest
            .wait(ms(5000), |g| g.connections() >= 2
                && g.statuses().len() >= 3)
            .await,
        "{:?}",
        guest.statuses()
    );
    assert_eq!(
        guest.statuses()[1..],
        [AppStatus::Green, AppStatus::Green],
        "after the first Gray, only Green"
    );
    let view = host.show(&lab.name("vm")).await;
    assert_eq!(view.status, Some(Status::Green));
    assert!(view.reset_decisions().is_empty());
    host.stop().await;
}

/// The guest agent reports only a status it received in its current session: every new
/// session hears its status, and hears it once the guest's State is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_pushed_on_reconnect_reflects_the_guests_state() {
    let lab = Lab::in_process("push");
    let guest = GuestSim::new(1, Some(ms(200)));
    let (_g, _) = lab.guest_domain("vm", &guest);
    let host = lab.start_host(lab.config()).await;
    assert!(
        guest
            .wait(ms(5000), |g| g.statuses().contains(&AppStatus::Green))
            .await
    );
    // While the link was down, the application disabled monitoring: its State says so.
    guest.set_auto_enable(false);
    guest.set_enabled_in_state(false);
    let before = guest.statuses().len();
    guest.disconnect();
    assert!(
        guest
            .wait(ms(5000), |g| g.connections() >= 2
                && g.statuses().len() > before)
            .await
    );
    // Anything else pushed for this session would come within a few ms.
    tokio::time::sleep(ms(300)).await;

    assert_eq!(
        guest.statuses()[before..],
        [AppStatus::Red],
        "one status for the new session, already reflecting its State (never the stale Green)"
    );
    assert!(host.show(&lab.name("vm")).await.is(Status::Red));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_the_host_never_launched_is_logged_and_ignored_and_monitors_are_shown_escaped() {
    use appmon_control::{HistoryKind, MonitorPhase, ProcessNote};
    use appmon_wire::{
        FailureAction, Frame, GuestMsg, MonitorKind, MonitorMode, MonitorStatus, ProcessState,
        ProcessStatus, Text,
    };
    let lab = Lab::in_process("unclaimed");
    let guest = GuestSim::new(1, Some(ms(200)));
    let (_g, _) = lab.guest_domain("vm", &guest);
    let host = lab.start_host(lab.config()).await;
    assert!(
        guest
            .wait(ms(5000), |g| g.statuses().contains(&AppStatus::Green))
            .await
    );

    let forged = ProcessStatus {
        id: Text::truncating("db.1"),
        state: ProcessState::Exited { code: 0 },
        command: Text::truncating("/bin/db"),
        user: Text::truncating("root"),
        started_unix_ms: 1,
        stdout_bytes: 0,
        stderr_bytes: 0,
    };
    let monitor = MonitorStatus {
        name: Text::truncating("m\n2026 forged entry"),
        application: Text::truncating("app"),
        kind: MonitorKind::Process,
        mode: MonitorMode::LongRunning,
        phase: appmon_wire::MonitorPhase::Healthy,
        restarts: 0,
        restart_count: 1,
        failure_action: FailureAction::Notify,
        last_failure: None,
    };
    assert!(guest.send(Frame::event(GuestMsg::Process(forged))));
    assert!(guest.send(Frame::event(GuestMsg::Monitors(vec![monitor]))));
    host.wait_show(&lab.name("vm"), ms(5000), |v| !v.monitors.is_empty())
        .await;
    let view = host
        .wait_show(&lab.name("vm"), ms(5000), |v| {
            v.find(|h| matches!(h.kind, HistoryKind::Process(ProcessNote::Unclaimed { .. })))
                .is_some()
        })
        .await;

    assert!(view.processes.is_empty(), "{:?}", view.processes);
    assert_eq!(view.monitors[0].name, "m\\n2026 forged entry");
    assert_eq!(view.monitors[0].phase, MonitorPhase::Healthy);
    assert!(view.is(appmon_control::Status::Green), "{view}");
    host.stop().await;
}
