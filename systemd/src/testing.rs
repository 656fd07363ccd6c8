//! A stand-in for the service manager's end of `sd_notify(3)`, for the daemons' own tests: a
//! datagram socket that receives what a daemon started with `NOTIFY_SOCKET` says, and the check
//! every appmon daemon must pass under systemd. Behind the `testing` feature.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// systemd's side of the notify socket.
#[derive(Debug)]
pub struct ServiceManager {
    path: PathBuf,
    socket: UnixDatagram,
}

impl ServiceManager {
    /// Binds the notify socket at `path`; every [`ServiceManager::recv`] waits at most 10 s.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let socket = UnixDatagram::bind(path)?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(ServiceManager {
            path: path.to_path_buf(),
            socket,
        })
    }

    /// The next notification; panics when none comes within the timeout.
    pub fn recv(&self) -> String {
        let mut buf = [0u8; 512];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a notification within the read timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Starts `daemon` as systemd would (`NOTIFY_SOCKET`, a 0.4 s watchdog) and checks what
    /// every appmon daemon promises: `READY=1` with a status starting `ready_status`, sent only
    /// once `serving` accepts connections; at least three keepalives in 0.9 s; `STOPPING=1`
    /// after `stop` (which sends it SIGTERM); then a clean exit.
    pub fn check_daemon(
        &self,
        mut daemon: Command,
        ready_status: &str,
        serving: &Path,
        stop: impl FnOnce(&Child),
    ) {
        let mut child = daemon
            .env("NOTIFY_SOCKET", &self.path)
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .spawn()
            .expect("start the daemon");

        let ready = self.recv();
        assert!(
            ready.starts_with(&format!("READY=1\nSTATUS={ready_status}")),
            "first notification: {ready:?}"
        );
        UnixStream::connect(serving).expect("READY=1 only once the daemon serves");

        let started = Instant::now();
        let mut keepalives = 0;
        while started.elapsed() < Duration::from_millis(900) {
            assert_eq!(self.recv(), "WATCHDOG=1");
            keepalives += 1;
        }
        assert!(
            keepalives >= 3,
            "{keepalives} keepalives in 0.9 s at a 0.4 s watchdog"
        );

        stop(&child);
        let mut last = String::new();
        while last != "STOPPING=1" {
            last = self.recv();
            assert!(
                last == "WATCHDOG=1" || last == "STOPPING=1",
                "unexpected {last:?}"
            );
        }
        let status = child.wait().expect("wait");
        assert!(status.success(), "the daemon exited {status}");
    }
}
