//! Kernel vhost-vsock: the host's AF_VSOCK listener for guest announcements, and the routing
//! of each connection to its VM's session task by the peer's CID.
//!
//! One listener per port serves every VM: the kernel tells each connection's peer CID, and
//! [`Routes`] maps a CID to the [`super::listener`] task of the VM whose `<vsock>` has it. A
//! connection from a CID no monitored VM has is closed at once. The routing ([`route`]) is
//! generic over its accept call, so its tests feed it in-memory streams: this project's
//! development machines are VMs whose own vsock device belongs to their infrastructure, and
//! [`serve_vsock`] (the only code that opens AF_VSOCK on the host) runs only where a monitored
//! VM uses kernel vhost-vsock.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::endpoint::GuestIo;

/// Connections queued for one VM's task before more from that CID are closed.
const ROUTE_QUEUE: usize = 8;

type Io = Box<dyn GuestIo>;

/// Which VM's task takes a connection from which CID.
#[derive(Debug, Default)]
pub struct Routes {
    by_cid: Mutex<HashMap<u32, mpsc::Sender<Io>>>,
}

/// A VM's place in [`Routes`]: its connections arrive on `rx`; dropping it frees the CID.
#[derive(Debug)]
pub struct Route {
    pub rx: mpsc::Receiver<Io>,
    cid: u32,
    routes: Arc<Routes>,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(mut map) = self.routes.by_cid.lock() {
            // Only our own entry: a newer task may have taken the CID since.
            if map.get(&self.cid).is_some_and(|tx| tx.is_closed()) {
                map.remove(&self.cid);
            }
        }
    }
}

impl Routes {
    /// Routes connections from `cid` to the returned [`Route`] (replacing an older one).
    pub fn register(self: &Arc<Self>, cid: u32) -> Route {
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        if let Ok(mut map) = self.by_cid.lock() {
            map.insert(cid, tx);
        }
        Route {
            rx,
            cid,
            routes: self.clone(),
        }
    }

    fn sender(&self, cid: u32) -> Option<mpsc::Sender<Io>> {
        self.by_cid.lock().ok()?.get(&cid).cloned()
    }
}

/// Takes connections from `accept` (each with its peer's CID) and hands each to its VM's task,
/// for ever.
pub async fn route<A, F>(mut accept: A, routes: Arc<Routes>)
where
    A: FnMut() -> F,
    F: Future<Output = io::Result<(u32, Io)>>,
{
    loop {
        match accept().await {
            Ok((cid, io)) => match routes.sender(cid) {
                Some(tx) => {
                    if tx.try_send(io).is_err() {
                        tracing::warn!(
                            cid,
                            "guest connection closed: its VM's task has too many waiting"
                        );
                    }
                }
                None => tracing::warn!(
                    cid,
                    "guest connection closed: no monitored VM has this vsock CID"
                ),
            },
            Err(e) => {
                tracing::warn!(error = %e, "accepting an AF_VSOCK connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The host's AF_VSOCK listener on `port` (any CID), routing into `routes`. Never called on a
/// development machine (see the module documentation).
pub async fn serve_vsock(port: u32, routes: Arc<Routes>) -> io::Result<()> {
    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
    let listener = tokio_vsock::VsockListener::bind(addr)?;
    let accept = || async {
        let (stream, peer) = listener.accept().await?;
        Ok((peer.cid(), Box::new(stream) as Io))
    };
    route(accept, routes).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn each_connection_goes_to_the_task_of_its_cid_and_strangers_are_closed() {
        let routes = Arc::new(Routes::default());
        let mut seven = routes.register(7);
        let mut nine = routes.register(9);
        let (feed, incoming) = mpsc::channel::<(u32, Io)>(8);
        let incoming = Arc::new(tokio::sync::Mutex::new(incoming));
        let router = tokio::spawn(route(
            move || {
                let incoming = incoming.clone();
                async move {
                    match incoming.lock().await.recv().await {
                        Some(conn) => Ok(conn),
                        None => std::future::pending().await,
                    }
                }
            },
            routes.clone(),
        ));
        let mut guest_ends = Vec::new();
        for cid in [9u32, 7, 42] {
            let (host_end, guest_end) = tokio::io::duplex(64);
            feed.send((cid, Box::new(host_end))).await.expect("feed");
            guest_ends.push((cid, guest_end));
        }
        let mut from_nine = nine.rx.recv().await.expect("CID 9's connection");
        let mut from_seven = seven.rx.recv().await.expect("CID 7's connection");
        for (cid, mut guest) in guest_ends {
            guest.write_all(&[cid as u8]).await.ok();
            if cid == 42 {
                let mut buf = [0u8; 1];
                assert_eq!(guest.read(&mut buf).await.expect("read"), 0, "closed");
            }
        }
        let mut byte = [0u8; 1];
        from_nine.read_exact(&mut byte).await.expect("read");
        assert_eq!(byte[0], 9);
        from_seven.read_exact(&mut byte).await.expect("read");
        assert_eq!(byte[0], 7);
        router.abort();
    }

    #[test]
    fn a_dropped_route_frees_its_cid() {
        let routes = Arc::new(Routes::default());
        let route = routes.register(3);
        assert!(routes.sender(3).is_some());
        drop(route);
        assert!(routes.sender(3).is_none());
    }
}
