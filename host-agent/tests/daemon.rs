//! The daemon in-process over the fake hypervisor, guests as scripted peers on Unix sockets.

mod common;

use appmon_host_agent::fake::FakeHypervisor;
use appmon_host_agent::sim::GuestSim;
use appmon_libvirt_backend::{DomainEvent, PausedReason, ResetMethod, ShutOffReason, SpecError};
use appmon_wire::{AppState, AppStatus, ErrorCode, Frame, GuestMsg, HostMsg};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeating_guest_stays_green_and_silent_one_is_reset_on_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let good = GuestSim::new(1, Some(ms(200)));
    let _g = good
        .listen(&sock(dir.path(), "good"), true)
        .expect("listen");
    let quiet = GuestSim::new(2, Some(ms(200)));
    let _q = quiet
        .listen(&sock(dir.path(), "quiet"), true)
        .expect("listen");
    hv.add("good", Some(hybrid_spec(&sock(dir.path(), "good"))));
    hv.add("quiet", Some(hybrid_spec(&sock(dir.path(), "quiet"))));
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;

    // After the start both are Gray; the guests enable on their own.
    assert!(
        good.wait(ms(5000), |g| g.statuses().contains(&AppStatus::Green))
            .await
    );
    assert!(quiet.wait(ms(5000), |g| g.heartbeats() >= 3).await);
    assert_eq!(good.statuses()[0], AppStatus::Gray);

    quiet.set_heartbeat(None);
    let calls = hv
        .wait_calls(ms(5000), |c| c.iter().any(|c| c.domain == "quiet"))
        .await;
    let reset = calls
        .iter()
        .find(|c| c.domain == "quiet")
        .expect("quiet was reset");
    assert_eq!(reset.op, "reset");
    let last = quiet.last_heartbeat().expect("heartbeats sent").into_std();
    let latency = reset.at.duration_since(last);
    assert!(latency >= ms(1000), "reset too early: {latency:?}");
    assert!(
        latency <= ms(1400),
        "reset late: {latency:?} after the last heartbeat"
    );
    assert!(hv.resets_of("good").is_empty());

    let view = host.show("quiet").await;
    assert_eq!(view["resets_in_window"], 1);
    assert!(history_has(&view, "heartbeats stopped"), "{view}");
    let view = host.show("good").await;
    assert_eq!(view["status"], "green");
    assert_eq!(view["connected"], true);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_protocol_handshake_gray_requests_and_unknown_kinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let guest = GuestSim::new(1, None);
    guest.set_auto_enable(false);
    guest.set_enabled_in_state(true);
    let _g = guest.listen(&sock(dir.path(), "vm"), true).expect("listen");
    hv.add("vm", Some(hybrid_spec(&sock(dir.path(), "vm"))));
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;

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
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sock(dir.path(), "new");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let (hv, events) = FakeHypervisor::new();
    hv.add("new", Some(hybrid_spec(&path)));
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
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
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest.listen(&sock(dir.path(), "vm"), true).expect("listen");
    hv.add("vm", Some(hybrid_spec(&sock(dir.path(), "vm"))));
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
    assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);

    // The guest will not come back after the reset (the vhost-device-vsock defect).
    guest.set_accept(false);
    guest.request(GuestMsg::PostAppState(AppState::NeedReset));
    let calls = hv.wait_calls(ms(5000), |c| c.len() >= 2).await;
    assert_eq!(calls[0].op, "reset");
    assert_eq!(calls[1].op, "power-cycle");
    let gap = calls[1].at.duration_since(calls[0].at);
    assert!(
        gap >= ms(1000) && gap < ms(2000),
        "power-cycle {gap:?} after the reset"
    );
    let view = host.show("vm").await;
    assert!(history_has(&view, "did not come back"), "{view}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_back_after_reset_means_no_power_cycle_and_reboot_clears_enable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest.listen(&sock(dir.path(), "vm"), true).expect("listen");
    hv.add("vm", Some(hybrid_spec(&sock(dir.path(), "vm"))));
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
    assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);
    // The rebooted guest: new boot id, application not started yet.
    guest.set_boot_id(2);
    guest.set_auto_enable(false);
    guest.set_enabled_in_state(false);
    guest.request(GuestMsg::PostAppState(AppState::NeedReset));
    assert!(hv.wait_calls(ms(3000), |c| !c.is_empty()).await.len() == 1);
    guest.disconnect();
    assert!(guest.wait(ms(5000), |g| g.connections() >= 2).await);
    let view = host
        .wait_show("vm", ms(3000), |v| {
            v["guest_boot_id"]
                .as_str()
                .is_some_and(|b| b.starts_with("02020202"))
        })
        .await;
    assert_eq!(view["enabled"], false, "{view}");
    assert_eq!(view["status"], "red");
    tokio::time::sleep(ms(2500)).await;
    assert_eq!(
        hv.calls().len(),
        1,
        "no power-cycle, no reset while not enabled"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_resets_then_gave_up_and_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let guest = GuestSim::new(1, Some(ms(100)));
    let _g = guest.listen(&sock(dir.path(), "vm"), true).expect("listen");
    let mut spec = hybrid_spec(&sock(dir.path(), "vm"));
    spec.max_resets = Some(2);
    spec.reset_method = Some(ResetMethod::PowerCycle);
    hv.add("vm", Some(spec));
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
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
        hv.wait_calls(ms(3000), |c| c.len() >= want).await;
        guest.disconnect();
    }
    let view = host
        .wait_show("vm", ms(3000), |v| v["gave_up"] == true)
        .await;
    assert_eq!(view["gave_up"], true, "{view}");
    assert_eq!(hv.calls().len(), 2, "never more than max_resets");
    let (code, out, _) = host.ctl(&["list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("GAVE-UP"), "{out}");
    let (code, _, err) = host.ctl(&["clear", "vm"]).await;
    assert_eq!(code, 0, "{err}");
    // The needReset is still posted: with room again, it resets.
    hv.wait_calls(ms(3000), |c| c.len() >= 3).await;
    assert_eq!(hv.calls().len(), 3);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_migration_gaps_do_not_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest.listen(&sock(dir.path(), "vm"), true).expect("listen");
    let vm = hv.add("vm", Some(hybrid_spec(&sock(dir.path(), "vm"))));
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
    assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);
    hv.event(&vm, DomainEvent::Suspended(PausedReason::User));
    host.wait_show("vm", ms(2000), |v| {
        v["domain_state"]
            .as_str()
            .is_some_and(|s| s.starts_with("paused"))
    })
    .await;
    guest.set_heartbeat(None);
    tokio::time::sleep(ms(2000)).await;
    assert!(hv.calls().is_empty(), "reset while paused");
    // Resumed: the clock restarts; heartbeats come again in time.
    guest.set_heartbeat(Some(ms(200)));
    hv.event(
        &vm,
        DomainEvent::Resumed(appmon_libvirt_backend::RunningReason::Unpaused),
    );
    tokio::time::sleep(ms(1500)).await;
    assert!(hv.calls().is_empty(), "reset after resume");
    // Migration out: paused, then gone.
    hv.event(&vm, DomainEvent::Suspended(PausedReason::Migrating));
    guest.set_heartbeat(None);
    tokio::time::sleep(ms(500)).await;
    hv.remove(&vm);
    hv.event(&vm, DomainEvent::Stopped(ShutOffReason::Migrated));
    tokio::time::sleep(ms(1500)).await;
    assert!(hv.calls().is_empty(), "reset of a migrated domain");
    let (code, _, _) = host.ctl(&["show", "vm"]).await;
    assert_eq!(code, appmon_host_agent::ctl::EXIT_UNKNOWN_DOMAIN);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_metadata_leaves_that_domain_alone_and_others_monitored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest.listen(&sock(dir.path(), "ok"), true).expect("listen");
    hv.add("ok", Some(hybrid_spec(&sock(dir.path(), "ok"))));
    let broken = hv.add("broken", None);
    hv.set_spec_result(&broken, Err(SpecError::NoTransport));
    hv.add("plain", None);
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
    assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);
    let (code, out, _) = host.ctl(&["--json", "list"]).await;
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    let by = |n: &str| {
        list.as_array()
            .and_then(|a| a.iter().find(|v| v["name"] == n))
            .cloned()
            .expect(n)
    };
    assert_eq!(by("ok")["monitored"], true);
    assert_eq!(by("broken")["monitored"], false);
    assert!(by("broken")["spec_error"]
        .as_str()
        .is_some_and(|e| e.contains("no transport")));
    assert_eq!(by("plain")["monitored"], false);
    assert_eq!(by("plain")["status"], serde_json::Value::Null);
    guest.set_heartbeat(None);
    hv.wait_calls(ms(3000), |c| !c.is_empty()).await;
    assert!(hv.calls().iter().all(|c| c.domain == "ok"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirt_going_away_is_not_a_failure_and_refused_resets_are_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest.listen(&sock(dir.path(), "vm"), true).expect("listen");
    hv.add("vm", Some(hybrid_spec(&sock(dir.path(), "vm"))));
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
    assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);
    hv.set_connected(false);
    guest.set_heartbeat(None);
    tokio::time::sleep(ms(2000)).await;
    assert!(hv.calls().is_empty(), "no judgement while libvirt is away");
    hv.refuse_resets(true);
    hv.set_connected(true);
    let calls = hv.wait_calls(ms(4000), |c| c.len() >= 2).await;
    assert!(calls.iter().all(|c| c.op == "refused"), "{calls:?}");
    let gap = calls[1].at.duration_since(calls[0].at);
    assert!(gap >= ms(900), "retried after {gap:?}");
    let view = host.show("vm").await;
    assert!(history_has(&view, "failed"), "{view}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_drops_a_guest_that_goes_silent_and_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let guest = GuestSim::new(1, None);
    guest.set_auto_enable(false);
    let _g = guest.listen(&sock(dir.path(), "vm"), true).expect("listen");
    hv.add("vm", Some(hybrid_spec(&sock(dir.path(), "vm"))));
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
    assert!(guest.wait(ms(5000), |g| g.connections() == 1).await);
    guest.set_answer_pings(false);
    // 3 pings of 200 ms without a frame: dead, closed, reconnected.
    assert!(guest.wait(ms(5000), |g| g.connections() >= 2).await);
    let view = host.show("vm").await;
    assert!(history_has(&view, "channel dead"), "{view}");
    assert!(hv.calls().is_empty());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_reset_history_and_resets_nothing_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sock(dir.path(), "vm");
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest.listen(&path, true).expect("listen");
    {
        let (hv, events) = FakeHypervisor::new();
        hv.add("vm", Some(hybrid_spec(&path)));
        let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
        assert!(guest.wait(ms(5000), |g| g.heartbeats() >= 2).await);
        guest.set_boot_id(2);
        guest.request(GuestMsg::PostAppState(AppState::NeedReset));
        hv.wait_calls(ms(3000), |c| !c.is_empty()).await;
        host.stop().await;
    }
    // A new host agent: the guest is still enabled in its own state, and stops heartbeating.
    guest.disconnect();
    guest.set_auto_enable(false);
    guest.set_enabled_in_state(true);
    guest.set_heartbeat(None);
    let statuses_before = guest.statuses().len();
    let (hv, events) = FakeHypervisor::new();
    hv.add("vm", Some(hybrid_spec(&path)));
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
    assert!(
        guest
            .wait(ms(5000), |g| g.statuses().len() > statuses_before)
            .await
    );
    assert_eq!(guest.statuses().last(), Some(&AppStatus::Gray));
    let view = host.show("vm").await;
    assert_eq!(view["resets_in_window"], 1, "{view}");
    assert_eq!(view["status"], "gray");
    assert!(history_has(&view, "restored 1 reset"), "{view}");
    tokio::time::sleep(ms(2500)).await;
    assert!(hv.calls().is_empty(), "a restart resets nothing");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appmonctl_enable_disable_show_and_unknown_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let guest = GuestSim::new(1, Some(ms(200)));
    let path = sock(dir.path(), "vm");
    let _g = guest.listen(&path, true).expect("listen");
    hv.add("vm", None);
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
    let view = host.wait_show("vm", ms(3000), |_| true).await;
    assert_eq!(view["monitored"], false);

    let p = path.display().to_string();
    let (code, out, err) = host
        .ctl(&[
            "enable",
            "vm",
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
    let view = host
        .wait_show("vm", ms(5000), |v| v["status"] == "green")
        .await;
    assert_eq!(view["policy"]["failure_interval_ms"], 2000, "{view}");
    assert_eq!(view["policy"]["max_resets"], 1);
    assert_eq!(view["policy"]["reset_method"], "power-cycle");
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
        assert!(view.get(key).is_some(), "show --json lacks {key}");
    }
    let (code, out, _) = host.ctl(&["show", "vm"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("history:") && out.contains("connected"),
        "{out}"
    );

    let (code, _, err) = host.ctl(&["disable", "vm"]).await;
    assert_eq!(code, 0, "{err}");
    let view = host
        .wait_show("vm", ms(3000), |v| v["monitored"] == false)
        .await;
    assert_eq!(view["monitored"], false);
    assert!(hv.resets_of("vm").is_empty());

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
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest
        .listen(&sock(dir.path(), "other"), true)
        .expect("listen");
    hv.add("other", Some(hybrid_spec(&sock(dir.path(), "other"))));
    let mut config = test_config(dir.path());
    config.domains = vec!["mine-*".into()];
    let host = Host::start(config, hv.clone(), events).await;
    tokio::time::sleep(ms(500)).await;
    let (code, out, _) = host.ctl(&["--json", "list"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]");
    assert_eq!(guest.connections(), 0);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtio_serial_channel_socket_works_like_vsock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let path = dir.path().join("vm.channel");
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest.listen(&path, false).expect("listen");
    hv.add(
        "vm",
        Some(appmon_libvirt_backend::MonitorSpec::with_transport(
            appmon_libvirt_backend::Transport::Channel {
                path: Some(path.clone()),
                name: appmon_libvirt_backend::DEFAULT_CHANNEL_NAME.into(),
            },
        )),
    );
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
    assert!(
        guest
            .wait(ms(5000), |g| g.statuses().contains(&AppStatus::Green))
            .await
    );
    let view = host.show("vm").await;
    assert!(
        view["transport"]
            .as_str()
            .is_some_and(|t| t.starts_with("channel ")),
        "{view}"
    );
    guest.set_heartbeat(None);
    hv.wait_calls(ms(3000), |c| !c.is_empty()).await;
    assert_eq!(hv.resets_of("vm").len(), 1);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_defaults_and_domain_patterns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    hv.add("a", Some(hybrid_spec(&sock(dir.path(), "a"))));
    hv.add("b", Some(hybrid_spec(&sock(dir.path(), "b"))));
    let config = test_config(dir.path());
    let host = Host::start(config.clone(), hv.clone(), events).await;
    host.wait_show("b", ms(3000), |_| true).await;
    let mut next = config.clone();
    next.defaults.failure_interval = ms(3000);
    next.domains = vec!["a".into()];
    host.reload.send(next).await.expect("reload");
    let view = host
        .wait_show("a", ms(3000), |v| {
            v["policy"]["failure_interval_ms"] == 3000
        })
        .await;
    assert_eq!(view["policy"]["failure_interval_ms"], 3000);
    let (code, _, _) = host.ctl(&["show", "b"]).await;
    assert_eq!(code, appmon_host_agent::ctl::EXIT_UNKNOWN_DOMAIN);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_keeps_live_state_and_adopts_the_guests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hv, events) = FakeHypervisor::new();
    let guest = GuestSim::new(1, Some(ms(200)));
    let _g = guest.listen(&sock(dir.path(), "vm"), true).expect("listen");
    hv.add("vm", Some(hybrid_spec(&sock(dir.path(), "vm"))));
    let host = Host::start(test_config(dir.path()), hv.clone(), events).await;
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
    assert_eq!(host.show("vm").await["status"], "green");
    assert!(hv.calls().is_empty());
    host.stop().await;
}
