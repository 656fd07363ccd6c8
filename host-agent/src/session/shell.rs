//! The I/O around a [`Session`]: read frames, write what the machine asks, sleep until its next
//! deadline; and the dial loop of a VM's session task.
//!
//! [`serve_link`] serves one connected link of any byte stream, whoever opened it; [`run`] is
//! the task of a VM whose guest agent the host dials, reconnecting with backoff. Input wins over
//! deadlines: every frame already readable is read and fed before a deadline is ticked, so the
//! machine judges silence only on input that was read.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use appmon_control::SessionEnd;
use appmon_wire::{Frame, GuestMsg, HostCodec};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::endpoint::Endpoint;
use super::machine::{Action, BadFrame, Event, Link, LinkKind, Opening, Session};
use super::messages::{HostCmd, SessionEvent, SessionMsg, VmId};
use super::settings::SessionConfig;

/// How a link's service ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Served {
    /// The supervisor is gone (it dropped the command queue or the event queue): stop for good.
    Stopped,
    /// The session ended, for this reason.
    Ended(SessionEnd),
}

/// Serves one link until its session ends. `deliver` hands an event to the supervisor and
/// says whether it is still there.
pub async fn serve_link<IO, F, Fut>(
    io: IO,
    link: Link,
    config: &SessionConfig,
    domain: &str,
    cmds: &mut mpsc::Receiver<HostCmd>,
    deliver: F,
) -> Served
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Fn(SessionEvent) -> Fut,
    Fut: Future<Output = bool>,
{
    let (r, w) = tokio::io::split(io);
    let reader = frame_reader(r, config);
    serve_framed(reader, w, None, link, config, domain, cmds, deliver).await
}

/// The frame reader of a link: the codec's frame limit, a read buffer that starts small.
pub fn frame_reader<R: AsyncRead>(r: R, config: &SessionConfig) -> FramedRead<R, HostCodec> {
    let limits = &config.limits;
    FramedRead::with_capacity(
        r,
        HostCodec::with_max_frame(limits.max_frame),
        limits.read_buffer,
    )
}

/// [`serve_link`] of a link whose first frame (`first`, the guest's Hello of an announcement)
/// was read already, by `reader`, which may hold what followed it.
#[allow(clippy::too_many_arguments)]
pub async fn serve_framed<R, W, F, Fut>(
    mut reader: FramedRead<R, HostCodec>,
    w: W,
    first: Option<Frame<GuestMsg>>,
    link: Link,
    config: &SessionConfig,
    domain: &str,
    cmds: &mut mpsc::Receiver<HostCmd>,
    deliver: F,
) -> Served
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: Fn(SessionEvent) -> Fut,
    Fut: Future<Output = bool>,
{
    let limits = &config.limits;
    let mut writer = FramedWrite::new(w, HostCodec::with_max_frame(limits.max_frame));
    // The default 8 KiB write buffer would be most of a session's memory; host frames are small
    // and the buffer grows on demand.
    *writer.write_buffer_mut() = bytes::BytesMut::with_capacity(limits.read_buffer);

    let (mut session, opening) = Session::open(config, link, domain, now());
    let mut todo: VecDeque<Action> = opening.into();
    // A Sync waits until nothing more is readable.
    let mut syncing = false;
    if let Some(frame) = first {
        todo.extend(session.handle(config, Event::Frame(frame), now()));
    }
    loop {
        while let Some(action) = todo.pop_front() {
            let failed = match action {
                Action::Resync => {
                    bounded(
                        config,
                        writer.get_mut().write_all(&[appmon_wire::DELIMITER]),
                    )
                    .await
                }
                Action::Send(frame) => bounded(config, writer.send(frame)).await,
                Action::Deliver(event) => {
                    if !deliver(event).await {
                        return Served::Stopped;
                    }
                    None
                }
                Action::End(reason) => return Served::Ended(reason),
            };
            if let Some(event) = failed {
                todo = session.handle(config, event, now()).into();
            }
        }
        let deadline = session.next_deadline().map(Instant::from_std);
        // `biased`: what the guest sent is read before a deadline is looked at, and before a
        // Sync is answered.
        let event = tokio::select! {
            biased;
            item = reader.next() => match item {
                None => Event::Closed,
                Some(Err(e)) => Event::ReadFailed(e.to_string()),
                Some(Ok(Ok(frame))) => Event::Frame(frame),
                Some(Ok(Err(e))) => Event::BadFrame(BadFrame::from(&e)),
            },
            () = std::future::ready(()), if syncing => {
                syncing = false;
                Event::Command(HostCmd::Sync)
            }
            cmd = cmds.recv() => match cmd {
                None => return Served::Stopped,
                Some(HostCmd::Sync) => {
                    // After a stop, the runtime may not yet have looked at which sockets became
                    // readable: yielding lets it poll the I/O driver before the reader is
                    // polled again.
                    syncing = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                Some(cmd) => Event::Command(cmd),
            },
            _ = sleep_or_never(deadline) => Event::Tick,
        };
        todo = session.handle(config, event, now()).into();
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A write bounded by the write timeout; its failure as the machine's event.
async fn bounded<E: std::error::Error + 'static>(
    config: &SessionConfig,
    write: impl Future<Output = Result<(), E>>,
) -> Option<Event> {
    match timeout(config.limits.write_timeout, write).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Event::WriteFailed(appmon_wire::report::error_chain(&e))),
        Err(_) => Some(Event::WriteTimedOut),
    }
}

/// One VM's session task: dials the guest agent, serves the link, reconnects with backoff,
/// until aborted or the supervisor is gone.
pub async fn run(
    vm: VmId,
    task: u64,
    domain: String,
    endpoint: Endpoint,
    config: Arc<SessionConfig>,
    to_supervisor: mpsc::Sender<SessionMsg>,
    mut cmds: mpsc::Receiver<HostCmd>,
) {
    let min_backoff = Duration::from_millis(50);
    let mut backoff = min_backoff;
    let deliver = |event| {
        let tx = to_supervisor.clone();
        async move { tx.send(SessionMsg { vm, task, event }).await.is_ok() }
    };
    // A dialed link: the host speaks first and keeps it alive.
    let link = Link {
        kind: if endpoint.is_stream() {
            LinkKind::Stream
        } else {
            LinkKind::Serial
        },
        opening: Opening::HostFirst,
        keepalive: Some(config.keepalive),
    };
    loop {
        // Commands for a connection that is gone are of no use.
        while cmds.try_recv().is_ok() {}
        let connect_limit = config.hello_timeout.max(Duration::from_secs(1));
        match endpoint.connect(connect_limit).await {
            Ok(io) => {
                let started = Instant::now();
                match serve_link(io, link, &config, &domain, &mut cmds, &deliver).await {
                    Served::Stopped => return,
                    Served::Ended(reason) => {
                        tracing::warn!(domain, %reason, "guest session ended");
                        if !deliver(SessionEvent::Closed { reason }).await {
                            return;
                        }
                    }
                }
                if started.elapsed() > config.reconnect_max {
                    backoff = min_backoff;
                }
            }
            Err(e) => {
                // The supervisor logs and records changes of reason (`supervisor::trouble`).
                if !deliver(SessionEvent::ConnectFailed(e.connect_failure())).await {
                    return;
                }
            }
        }
        let wake = Instant::now() + backoff;
        backoff = (backoff * 2).min(config.reconnect_max.max(min_backoff));
        loop {
            tokio::select! {
                _ = sleep_until(wake) => break,
                cmd = cmds.recv() => match cmd {
                    None => return,
                    // No link: nothing to read.
                    Some(HostCmd::Sync) => if !deliver(SessionEvent::Synced).await { return },
                    Some(_) => {}
                },
            }
        }
    }
}

#[cfg(test)]
mod tests;
