//! The real daemon, in process, against a test host peer on the Unix-socket host listener and
//! the real client on the local API socket.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use appmon_guest_agent::client::{AppState, AppStatus, ClientError, Delivery};
use appmon_guest_agent::daemon::Tuning;
use appmon_wire::{
    Capabilities, ErrorCode, Frame, GuestMsg, HostMsg, Tag, WireError, PROTOCOL_VERSION,
};
use common::{bounded, test_config, Agent, Host, BOOT_ID, WAIT};
use tokio::io::AsyncWriteExt;

fn request_id(frame: &Frame<GuestMsg>) -> u32 {
    match frame.tag {
        Tag::Request(id) => id,
        other => panic!("expected a request, got {other:?}"),
    }
}

#[tokio::test]
async fn handshake_sends_hello_then_the_full_state() {
    let agent = Agent::start("");
    let mut host = agent.connect_host().await;
    let (hello, state) = host.handshake().await;
    assert_eq!(hello.boot_id, BOOT_ID);
    assert_eq!(
        hello.capabilities,
        Capabilities::HEARTBEAT | Capabilities::PROCESSES | Capabilities::COUNTERS
    );
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
    assert!(
        hello.agent.as_str().starts_with("appmon-guest "),
        "{}",
        hello.agent
    );
    assert!(!state.enabled);
    assert_eq!(state.last_heartbeat_age_ms, None);
    agent.stop().await;
}

#[tokio::test]
async fn enable_mark_active_need_reset_and_disable_reach_the_host() {
    let agent = Agent::start("");
    let mut host = agent.connect_host().await;
    host.handshake().await;

    let enable = tokio::spawn({
        let mut client = agent.client();
        async move { tokio::task::spawn_blocking(move || client.enable()).await }
    });
    let request = host.recv().await;
    assert_eq!(request.msg, GuestMsg::Enable);
    host.send(Frame::reply(
        request_id(&request),
        HostMsg::AppStatus(AppStatus::Green),
    ))
    .await;
    let outcome = bounded(enable)
        .await
        .expect("task")
        .expect("thread")
        .expect("enable");
    assert_eq!(outcome.delivery, Delivery::Confirmed);
    assert_eq!(outcome.status, Some(AppStatus::Green));

    let delivery = agent.app(|c| c.mark_active()).await.expect("markActive");
    assert_eq!(delivery, Delivery::Confirmed);
    assert_eq!(host.recv().await, Frame::event(GuestMsg::MarkActive));

    let reset = tokio::task::spawn_blocking({
        let mut client = agent.client();
        move || client.post_app_state(AppState::NeedReset)
    });
    let request = host.recv().await;
    assert_eq!(request.msg, GuestMsg::PostAppState(AppState::NeedReset));
    host.send(Frame::reply(request_id(&request), HostMsg::Ack))
        .await;
    bounded(reset).await.expect("thread").expect("needReset");

    let disable = tokio::task::spawn_blocking({
        let mut client = agent.client();
        move || client.disable()
    });
    let request = host.recv().await;
    assert_eq!(request.msg, GuestMsg::Disable);
    host.send(Frame::reply(
        request_id(&request),
        HostMsg::AppStatus(AppStatus::Red),
    ))
    .await;
    bounded(disable).await.expect("thread").expect("disable");

    let refused = agent.app(|c| c.mark_active()).await;
    assert!(
        matches!(refused, Err(ClientError::Refused { .. })),
        "{refused:?}"
    );
    host.expect_nothing_pending(900).await;
    agent.stop().await;
}

#[tokio::test]
async fn is_enabled_is_the_hosts_answer_and_false_without_a_host() {
    let agent = Agent::start("");
    let detail = agent
        .app(|c| c.is_enabled_detail())
        .await
        .expect("isEnabled");
    assert!(!detail.enabled);
    assert!(!detail.host_session);

    let mut host = agent.connect_host().await;
    host.handshake().await;
    let asked = tokio::task::spawn_blocking({
        let mut client = agent.client();
        move || client.is_enabled()
    });
    let request = host.recv().await;
    assert_eq!(request.msg, GuestMsg::IsEnabled);
    host.send(Frame::reply(request_id(&request), HostMsg::Enabled(true)))
        .await;
    assert!(bounded(asked).await.expect("thread").expect("isEnabled"));
    agent.stop().await;
}

#[tokio::test]
async fn app_status_is_what_the_host_pushed_and_gray_without_a_host() {
    let agent = Agent::start("");
    assert_eq!(
        agent.app(|c| c.get_app_status()).await.expect("status"),
        AppStatus::Gray
    );
    let mut host = agent.connect_host().await;
    host.handshake().await;
    host.send(Frame::event(HostMsg::AppStatus(AppStatus::Red)))
        .await;
    host.expect_nothing_pending(1).await;
    assert_eq!(
        agent.app(|c| c.get_app_status()).await.expect("status"),
        AppStatus::Red
    );
    drop(host);
    common::wait_until(WAIT, "the agent to notice the host left", || {
        agent
            .client()
            .status()
            .is_ok_and(|s| s.session.state == "none")
    });
    assert_eq!(
        agent.app(|c| c.get_app_status()).await.expect("status"),
        AppStatus::Gray
    );
    agent.stop().await;
}

#[tokio::test]
async fn state_made_without_a_host_arrives_in_full_on_the_next_connect() {
    let agent = Agent::start("");
    let outcome = agent.app(|c| c.enable()).await.expect("enable");
    assert_eq!(outcome.delivery, Delivery::Recorded);
    assert_eq!(
        agent.app(|c| c.mark_active()).await.expect("beat"),
        Delivery::Recorded
    );
    agent
        .app(|c| c.post_app_state(AppState::NeedReset))
        .await
        .expect("needReset");

    let mut host = agent.connect_host().await;
    let (_, state) = host.handshake().await;
    assert!(state.enabled);
    assert!(state.need_reset);
    assert_eq!(state.heartbeats, 1);
    assert!(state.last_heartbeat_age_ms.is_some());

    // A host-agent restart: the new connection gets the same state again.
    host.send(Frame::event(HostMsg::AppStatus(AppStatus::Green)))
        .await;
    host.expect_nothing_pending(1).await;
    drop(host);
    let mut host = agent.connect_host().await;
    let (_, again) = host.handshake().await;
    assert!(again.enabled);
    assert!(again.need_reset);
    assert_eq!(again.heartbeats, 1);
    assert_eq!(again.last_status, Some(AppStatus::Green));
    agent.stop().await;
}

#[tokio::test]
async fn gray_makes_the_agent_enable_again_and_vouch_for_a_recent_heartbeat() {
    let agent = Agent::start("reenable_heartbeat_window = 3600\n");
    agent.app(|c| c.enable()).await.expect("enable");
    agent.app(|c| c.mark_active()).await.expect("beat");
    let mut host = agent.connect_host().await;
    let (_, state) = host.handshake().await;
    assert!(state.enabled);

    host.send(Frame::event(HostMsg::AppStatus(AppStatus::Gray)))
        .await;
    let enable = host.recv().await;
    assert_eq!(enable.msg, GuestMsg::Enable);
    assert_eq!(host.recv().await, Frame::event(GuestMsg::MarkActive));
    host.send(Frame::reply(
        request_id(&enable),
        HostMsg::AppStatus(AppStatus::Green),
    ))
    .await;
    host.expect_nothing_pending(1).await;

    let status = agent.app(|c| c.status()).await.expect("status");
    assert_eq!(status.reenables, 1);
    assert_eq!(
        status.heartbeats, 1,
        "the agent's heartbeat is not the app's"
    );
    assert_eq!(
        agent.app(|c| c.get_app_status()).await.expect("status"),
        AppStatus::Green
    );
    agent.stop().await;
}

#[tokio::test]
async fn gray_after_the_app_went_silent_reenables_without_inventing_a_heartbeat() {
    // A zero window: no heartbeat of the application's is recent enough.
    let agent = Agent::start("reenable_heartbeat_window = 0\n");
    agent.app(|c| c.enable()).await.expect("enable");
    agent.app(|c| c.mark_active()).await.expect("beat");
    let mut host = agent.connect_host().await;
    host.handshake().await;

    host.send(Frame::event(HostMsg::AppStatus(AppStatus::Gray)))
        .await;
    let enable = host.recv().await;
    assert_eq!(enable.msg, GuestMsg::Enable);
    // The Pong comes next: no MarkActive was sent.
    host.expect_nothing_pending(50).await;
    let status = agent.app(|c| c.status()).await.expect("status");
    assert_eq!(status.reenables, 1);
    agent.stop().await;
}

#[tokio::test]
async fn garbage_from_the_host_ends_its_session_and_keeps_the_app_state() {
    let agent = Agent::start("");
    let mut host = agent.connect_host().await;
    host.handshake().await;
    let enabled = tokio::task::spawn_blocking({
        let mut client = agent.client();
        move || client.enable()
    });
    let enable = host.recv().await;
    host.send(Frame::reply(
        request_id(&enable),
        HostMsg::AppStatus(AppStatus::Green),
    ))
    .await;
    bounded(enabled).await.expect("thread").expect("enable");
    agent.app(|c| c.mark_active()).await.expect("beat");
    assert_eq!(host.recv().await, Frame::event(GuestMsg::MarkActive));

    // Not COBS: a length code pointing past the delimiter.
    let stream = host.framed.get_mut();
    stream
        .write_all(&[0x09, 0x01, 0x02, 0x00])
        .await
        .expect("write garbage");
    host.expect_closed().await;

    let status = agent.app(|c| c.status()).await.expect("status");
    assert!(status.enabled);
    assert_eq!(status.heartbeats, 1);
    let mut host = agent.connect_host().await;
    let (_, state) = host.handshake().await;
    assert!(state.enabled);
    assert_eq!(state.heartbeats, 1);
    assert_eq!(state.last_status, Some(AppStatus::Green));
    agent.stop().await;
}

#[tokio::test]
async fn an_unknown_message_kind_gets_unsupported_and_the_session_goes_on() {
    let agent = Agent::start("");
    let mut host = agent.connect_host().await;
    host.handshake().await;
    // postcard: Tag::Request(5) = [0, 5], then kind 99; COBS-encoded, then the delimiter.
    let stream = host.framed.get_mut();
    stream
        .write_all(&[0x01, 0x03, 0x05, 99, 0x00])
        .await
        .expect("write");
    let answer = host.recv().await;
    assert_eq!(answer.tag, Tag::Reply(5));
    match answer.msg {
        GuestMsg::Error(WireError {
            code: ErrorCode::Unsupported { kind: 99 },
            ..
        }) => {}
        other => panic!("expected Unsupported, got {other:?}"),
    }
    host.expect_nothing_pending(6).await;
    agent.stop().await;
}

#[tokio::test]
async fn a_second_host_connection_replaces_the_first() {
    let agent = Agent::start("");
    let mut first = agent.connect_host().await;
    first.handshake().await;
    let mut second = agent.connect_host().await;
    first.expect_closed().await;
    second.handshake().await;
    second.expect_nothing_pending(1).await;
    let status = agent.app(|c| c.status()).await.expect("status");
    assert_eq!(status.sessions, 2);
    assert_eq!(status.session.state, "established");
    agent.stop().await;
}

#[tokio::test]
async fn a_host_that_never_says_hello_is_dropped() {
    let tuning = Tuning {
        hello_timeout: Duration::from_millis(200),
        ..Tuning::default()
    };
    let agent = Agent::start_tuned("", tuning);
    let mut host = agent.connect_host().await;
    host.expect_closed().await;
    agent.stop().await;
}

#[tokio::test]
async fn an_incompatible_host_gets_a_version_error_and_is_closed() {
    let agent = Agent::start("");
    let mut host = agent.connect_host().await;
    let mut hello = appmon_wire::Hello::new("appmon-host future", [7; 16], Capabilities::HEARTBEAT);
    hello.protocol = PROTOCOL_VERSION + 1;
    hello.min_protocol = PROTOCOL_VERSION + 1;
    host.send(Frame::event(HostMsg::Hello(hello))).await;
    assert!(matches!(host.recv().await.msg, GuestMsg::Hello(_)));
    assert!(matches!(
        host.recv().await.msg,
        GuestMsg::Error(WireError {
            code: ErrorCode::IncompatibleVersion { .. },
            ..
        })
    ));
    host.expect_closed().await;
    agent.stop().await;
}

#[tokio::test]
async fn an_application_that_leaves_mid_request_does_not_disturb_the_agent() {
    let agent = Agent::start("");
    let mut host = agent.connect_host().await;
    host.handshake().await;

    // Asks to enable and leaves before the host answers.
    let path = agent.api_socket.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect");
        s.write_all(b"{\"op\":\"enable\"}\n").expect("write");
    })
    .await
    .expect("client thread");
    let enable = host.recv().await;
    assert_eq!(enable.msg, GuestMsg::Enable);
    host.send(Frame::reply(
        request_id(&enable),
        HostMsg::AppStatus(AppStatus::Green),
    ))
    .await;

    // Half a request, then gone; and a line of nonsense.
    let path = agent.api_socket.clone();
    let nonsense = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        s.write_all(b"{\"op\":\"ena").expect("write");
        drop(s);
        let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        s.write_all(b"launch the missiles\n").expect("write");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut answer = [0u8; 512];
        let n = s.read(&mut answer).expect("answer");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    })
    .await
    .expect("client thread");
    assert!(nonsense.contains("\"reply\":\"refused\""), "{nonsense}");
    assert!(nonsense.contains("malformed request"), "{nonsense}");

    let status = agent.app(|c| c.status()).await.expect("status");
    assert!(
        status.enabled,
        "the enable of the application that left took effect"
    );
    assert_eq!(status.session.state, "established");
    host.expect_nothing_pending(1).await;
    agent.stop().await;
}

#[tokio::test]
async fn a_request_the_host_never_answers_is_answered_as_recorded() {
    let tuning = Tuning {
        request_timeout: Duration::from_millis(200),
        ..Tuning::default()
    };
    let agent = Agent::start_tuned("", tuning);
    let mut host = agent.connect_host().await;
    host.handshake().await;
    let outcome = agent.app(|c| c.enable()).await.expect("enable");
    assert_eq!(outcome.delivery, Delivery::Recorded);
    assert_eq!(host.recv().await.msg, GuestMsg::Enable);
    agent.stop().await;
}

#[tokio::test]
async fn reload_keeps_the_session_unless_its_transport_changed() {
    let agent = Agent::start("");
    let mut host = agent.connect_host().await;
    host.handshake().await;

    // A policy change: the session stays.
    let dir = agent.dir.path().to_owned();
    std::fs::write(
        &agent.config_path,
        test_config(&dir, "reenable_heartbeat_window = 5\n"),
    )
    .expect("rewrite config");
    agent.handle.reload().await;
    host.expect_nothing_pending(1).await;

    // A broken file: logged, the running configuration stays.
    std::fs::write(&agent.config_path, "port = \"x\"\n").expect("break config");
    agent.handle.reload().await;
    host.expect_nothing_pending(2).await;

    // The host socket moves: the old session is closed, the new socket serves.
    let moved = test_config(&dir, "").replace("host.sock", "host2.sock");
    std::fs::write(&agent.config_path, moved).expect("move socket");
    agent.handle.reload().await;
    host.expect_closed().await;
    let mut host = Host::connect(&dir.join("host2.sock")).await;
    host.handshake().await;
    assert!(!dir.join("host.sock").exists(), "old socket file removed");
    agent.stop().await;
}

#[tokio::test]
async fn stopping_removes_the_socket_files() {
    let agent = Agent::start("");
    let (host_socket, api_socket) = (agent.host_socket.clone(), agent.api_socket.clone());
    assert!(host_socket.exists() && api_socket.exists());
    let dir = agent.dir.path().to_owned();
    agent.stop().await;
    assert!(!host_socket.exists(), "{}", host_socket.display());
    assert!(!api_socket.exists(), "{}", api_socket.display());
    drop(dir);
}

#[tokio::test]
async fn the_api_socket_gets_the_configured_mode() {
    use std::os::unix::fs::PermissionsExt;
    let agent = Agent::start("socket_mode = 0o600\nsocket_group = \"0\"\n");
    let mode = std::fs::metadata(&agent.api_socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    agent.stop().await;
}
