//! A hostile guest cannot hurt the host: garbage, oversized frames, floods, a silent peer and
//! one that never reads what the host writes each lose their own session (logged in their history), while well-behaved guests beside them
//! keep their timing and a silent one among them is still reset on time.

mod common;

use std::path::Path;

use appmon_control::{SessionEnd, Status};
use appmon_wire::{Capabilities, Frame, GuestCodec, GuestMsg, Hello, HostMsg};
use common::sim::GuestSim;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;

#[derive(Debug, Clone, Copy)]
enum Hostility {
    Garbage,
    Oversized,
    Flood,
    Silent,
    SlowWriter,
    NonReader,
}

async fn hybrid_ok(s: &mut UnixStream) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b).await? == 0 || b[0] == b'\n' {
            break;
        }
    }
    s.write_all(b"OK 1\n").await
}

/// Takes the host's Hello and answers with a valid one as agent `agent`; `None` when the host
/// did not greet or the answer could not be written.
async fn greeted(
    s: UnixStream,
    agent: &str,
    boot_byte: u8,
) -> Option<Framed<UnixStream, GuestCodec>> {
    let mut framed = Framed::new(s, GuestCodec::new());
    if !matches!(
        framed.next().await,
        Some(Ok(Ok(Frame {
            msg: HostMsg::Hello(_),
            ..
        })))
    ) {
        return None;
    }
    let hello = Hello::new(agent, [boot_byte; 16], Capabilities::HEARTBEAT);
    framed
        .send(Frame::event(GuestMsg::Hello(hello)))
        .await
        .ok()?;
    Some(framed)
}

async fn hostile_peer(path: &Path, kind: Hostility) -> tokio::task::JoinHandle<()> {
    let listener = UnixListener::bind(path).expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if hybrid_ok(&mut s).await.is_err() {
                    return;
                }
                match kind {
                    Hostility::Garbage => {
                        // Frames that are not COBS/postcard, delimiters included.
                        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
                        let _ = s.write_all(&junk).await;
                        let mut sink = [0u8; 1024];
                        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                    Hostility::Oversized => {
                        // One endless frame: no delimiter, ever.
                        let chunk = vec![0x41u8; 16 * 1024];
                        for _ in 0..64 {
                            if s.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                    Hostility::Flood => {
                        let Some(mut framed) = greeted(s, "flood", 7).await else {
                            return;
                        };
                        for _ in 0..1_000_000 {
                            if framed
                                .send(Frame::event(GuestMsg::MarkActive))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Hostility::SlowWriter => {
                        // A valid Hello, one byte every 100 ms: never complete in time.
                        let hello = Hello::new("slow", [5; 16], Capabilities::HEARTBEAT);
                        let Ok(bytes) =
                            appmon_wire::encode_frame(&Frame::event(GuestMsg::Hello(hello)))
                        else {
                            return;
                        };
                        for b in bytes {
                            if s.write_all(&[b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(ms(100)).await;
                        }
                    }
                    Hostility::NonReader => {
                        // Takes the host's Hello, then only writes: pings below the flood
                        // limit, each asking for a Pong it never reads, until the host's writes
                        // stall on the full socket buffer and it gives up on the session.
                        let Some(mut framed) = greeted(s, "deaf", 9).await else {
                            return;
                        };
                        // At most a minute at 45 frames/s (the limit here is 50/s).
                        for id in 1..=2700u32 {
                            if framed
                                .send(Frame::request(id, GuestMsg::Ping))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            tokio::time::sleep(ms(22)).await;
                        }
                    }
                    Hostility::Silent => {
                        // Connects and then neither reads nor writes.
                        std::future::pending::<()>().await;
                        drop(s);
                    }
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_lose_their_sessions_and_cost_others_nothing() {
    let lab = Lab::in_process("hostile");
    let mut tasks = Vec::new();
    for (name, kind) in [
        ("garbage", Hostility::Garbage),
        ("oversized", Hostility::Oversized),
        ("flood", Hostility::Flood),
        ("silent", Hostility::Silent),
        ("slow", Hostility::SlowWriter),
        ("deaf", Hostility::NonReader),
    ] {
        let path = lab.sock(name);
        tasks.push(hostile_peer(&path, kind).await);
        lab.running(name, Some(&hybrid_spec(&path)));
    }
    let mut good = Vec::new();
    for (i, name) in ["good1", "good2", "good3"].into_iter().enumerate() {
        let g = GuestSim::new(i as u8 + 1, Some(ms(200)));
        tasks.push(lab.guest_domain(name, &g).0);
        good.push(g);
    }
    let mut config = lab.config();
    config.session.max_frame = 4096;
    config.session.frames_per_second = 50;
    config.session.burst = 100;
    config.session.write_timeout = ms(300);
    let host = lab.start_host(config).await;

    for g in &good {
        assert!(g.wait(ms(5000), |g| g.heartbeats() >= 3).await);
    }
    // Each loses its session for its own reason, with the configured bound in it.
    type Reason = fn(&SessionEnd) -> bool;
    let reasons: [(&str, Reason); 6] = [
        ("garbage", |e| matches!(e, SessionEnd::BadFrame { .. })),
        (
            "oversized",
            |e| matches!(e, SessionEnd::BadFrame { error } if error.contains("exceeds 4096 bytes")),
        ),
        ("flood", |e| {
            *e == SessionEnd::Flood {
                frames_per_second: 50,
                burst: 100,
            }
        }),
        ("silent", |e| *e == SessionEnd::NoHello { within_ms: 500 }),
        ("slow", |e| *e == SessionEnd::NoHello { within_ms: 500 }),
        // Some hundred unread Pongs fill a Unix socket's send buffer: seconds at 45/s.
        ("deaf", |e| *e == SessionEnd::WriteTimeout { after_ms: 300 }),
    ];
    for (name, reason) in reasons {
        let view = host
            .wait_show(&lab.name(name), ms(30_000), |v| session_ended(v, reason))
            .await;
        assert!(session_ended(&view, reason), "{name}: {view}");
        assert!(!view.enabled);
    }
    // While the hostile peers keep reconnecting, a good guest that stops is reset on time.
    good[1].set_heartbeat(None);
    let view = host
        .wait_show(&lab.name("good2"), ms(5000), |v| {
            !v.reset_decisions().is_empty()
        })
        .await;
    let reset = view.reset_decisions();
    let reset = reset.first().expect("good2 reset");
    let last = good[1].last_heartbeat_unix_ms().expect("beats");
    // Both in whole milliseconds: never more than the true gap rounded down.
    let latency = reset.unix_ms as i64 - last.floor() as i64;
    assert!(
        (1000..=1400).contains(&latency),
        "reset {latency} ms after the last heartbeat"
    );
    let before = [good[0].heartbeats(), good[2].heartbeats()];
    tokio::time::sleep(ms(1000)).await;
    assert!(good[0].heartbeats() > before[0] && good[2].heartbeats() > before[1]);
    // (good2's simulated guest does not reboot, so a power-cycle may follow the reset.)
    for name in [
        "garbage",
        "oversized",
        "flood",
        "silent",
        "slow",
        "deaf",
        "good1",
        "good3",
    ] {
        let view = host.show(&lab.name(name)).await;
        assert!(
            view.reset_decisions().is_empty(),
            "only the silent good guest is reset, not {name}: {view}"
        );
    }
    let view = host.show(&lab.name("good1")).await;
    assert!(view.is(Status::Green), "{view}");
    host.stop().await;
    for t in tasks {
        t.abort();
    }
}
