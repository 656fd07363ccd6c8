//! systemd's watchdog (`WatchdogSec=`): a task that sends `WATCHDOG=1` at half the interval, but
//! only after the daemon's owner task answered a probe within that half. A daemon whose runtime
//! still runs but whose owner is stuck stops petting, and systemd restarts it.

use std::future::Future;

use tokio::task::JoinHandle;

use crate::notify::Notifier;

/// Starts the keepalive task when systemd asked for a watchdog; `None` otherwise. `probe`
/// round-trips the daemon's owner task and answers whether it replied.
pub fn spawn<F, Fut>(notifier: Notifier, mut probe: F) -> Option<JoinHandle<()>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let interval = notifier.watchdog()?;
    let half = interval / 2;
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog keepalives on"
    );
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(half);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match tokio::time::timeout(half, probe()).await {
                Ok(true) => {
                    if let Err(e) = notifier.watchdog_alive() {
                        tracing::warn!(error = %e, "cannot send the watchdog keepalive to systemd");
                    }
                }
                Ok(false) => {
                    tracing::error!("the daemon's owner task is gone; no watchdog keepalive");
                }
                Err(_) => tracing::error!(
                    waited_ms = half.as_millis() as u64,
                    "the daemon's owner task did not answer; no watchdog keepalive"
                ),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn rig(usec: &str) -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        let n = Notifier::from_values(
            Some(path.as_os_str().as_encoded_bytes()),
            Some(usec),
            None,
            1,
        );
        (dir, socket, n)
    }

    fn count(socket: &UnixDatagram) -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Ok(len) = socket.recv(&mut buf) {
            assert_eq!(&buf[..len], b"WATCHDOG=1");
            n += 1;
        }
        n
    }

    #[test]
    fn no_watchdog_asked_no_task() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        assert!(spawn(Notifier::default(), || async { true }).is_none());
    }

    #[tokio::test]
    async fn keepalives_follow_the_owners_answers() {
        let (_dir, socket, notifier) = rig("200000");
        let answering = Arc::new(AtomicBool::new(true));
        let flag = answering.clone();
        let task = spawn(notifier, move || {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if !ok {
                    // A stuck owner: never answers within the half interval.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                true
            }
        })
        .unwrap();
        tokio::time::sleep(Duration::from_millis(450)).await;
        let alive = count(&socket);
        assert!(alive >= 3, "{alive} keepalives in 450 ms at 100 ms");
        answering.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        count(&socket);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(count(&socket), 0, "a stuck owner must not pet the watchdog");
        task.abort();
    }
}
