//! The `sd_notify(3)` protocol: one datagram of `KEY=VALUE` lines to the `AF_UNIX` socket named
//! by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). The watchdog interval is
//! `$WATCHDOG_USEC`, meant for us only when `$WATCHDOG_PID` is unset or our own pid.
//!
//! [`Notifier::from_env`] reads these variables once, first thing in `main`, and removes them from
//! the environment, so that processes the daemon starts (the guest agent launches applications)
//! do not inherit a socket that speaks for the daemon. `NOTIFY_SOCKET` addresses other than a
//! Unix path (systemd 254's `vsock:`) are not spoken: such a notifier stays silent and says so
//! in [`Notifier::problem`].

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

/// Where the service manager listens, as read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// The daemon's line to the service manager. `Default` is a notifier that sends nothing.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
    problem: Option<String>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` and removes them from the
    /// environment. Call it before any thread starts (environment changes are not thread safe).
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(key);
        }
        Notifier::from_values(
            socket.as_deref().map(|s| s.as_encoded_bytes()),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    /// [`Notifier::from_env`] without the environment: the values of the three variables and
    /// our pid.
    pub fn from_values(
        socket: Option<&[u8]>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Notifier {
        let mut problem = None;
        let target = match socket {
            None | Some(b"") => None,
            Some([b'@', name @ ..]) => Some(Target::Abstract(name.to_vec())),
            Some(path @ [b'/', ..]) => {
                use std::os::unix::ffi::OsStrExt;
                Some(Target::Path(std::ffi::OsStr::from_bytes(path).into()))
            }
            Some(other) => {
                problem = Some(format!(
                    "NOTIFY_SOCKET={:?} is not a Unix socket path or @name; not notifying",
                    String::from_utf8_lossy(other)
                ));
                None
            }
        };
        let for_us = match watchdog_pid {
            None => true,
            Some(pid) => pid.trim().parse::<u32>().ok() == Some(own_pid),
        };
        let watchdog = match watchdog_usec.map(|u| u.trim().parse::<u64>()) {
            _ if !for_us || target.is_none() => None,
            None => None,
            Some(Ok(0)) => None,
            Some(Ok(usec)) => Some(Duration::from_micros(usec)),
            Some(Err(_)) => {
                problem = Some(format!(
                    "WATCHDOG_USEC={:?} is not a number of microseconds; no watchdog keepalives",
                    watchdog_usec.unwrap_or_default()
                ));
                None
            }
        };
        Notifier {
            target,
            watchdog,
            problem,
        }
    }

    /// True when a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog interval systemd expects keepalives within (`WatchdogSec=`), if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Why the environment's notify settings were not taken, for the daemon to log.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `STOPPING=1` when the daemon begins to stop.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    /// `WATCHDOG=1`: the daemon is alive.
    pub fn watchdog_alive(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    /// Sends one datagram of state lines; nothing without a service manager.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let socket = UnixDatagram::unbound()?;
        match target {
            Target::Path(path) => socket.send_to(state.as_bytes(), path)?,
            Target::Abstract(name) => {
                let addr = SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)?
            }
        };
        Ok(())
    }
}

/// A value on one line: a newline would start a new assignment.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver() -> (tempfile::TempDir, PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        (dir, path, socket)
    }

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn without_notify_socket_nothing_is_sent_and_no_watchdog_is_asked() {
        let n = Notifier::from_values(None, Some("30000000"), None, 7);
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog(), None);
        n.ready("up").unwrap();
    }

    #[test]
    fn ready_reaches_a_path_socket_with_a_one_line_status() {
        let (_dir, path, socket) = receiver();
        let n = Notifier::from_values(Some(path.as_os_str().as_encoded_bytes()), None, None, 7);
        n.ready("serving\nforged=1").unwrap();
        assert_eq!(recv(&socket), "READY=1\nSTATUS=serving forged=1");
    }

    #[test]
    fn abstract_names_are_spoken() {
        let name = format!("appmon-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_values(Some(format!("@{name}").as_bytes()), None, None, 7);
        n.watchdog_alive().unwrap();
        assert_eq!(recv(&socket), "WATCHDOG=1");
    }

    #[test]
    fn watchdog_interval_is_taken_only_for_our_own_pid() {
        let s: &[u8] = b"/run/systemd/notify";
        let cases = [
            (Some("30000000"), None, Some(Duration::from_secs(30))),
            (Some("30000000"), Some("7"), Some(Duration::from_secs(30))),
            (Some("30000000"), Some("8"), None),
            (Some("0"), None, None),
            (None, None, None),
        ];
        for (usec, pid, want) in cases {
            let n = Notifier::from_values(Some(s), usec, pid, 7);
            assert_eq!(n.watchdog(), want, "usec {usec:?} pid {pid:?}");
        }
    }

    #[test]
    fn unusable_values_are_named_not_guessed() {
        let n = Notifier::from_values(Some(b"vsock:2:1234"), None, None, 7);
        assert!(!n.is_enabled());
        assert!(n.problem().unwrap().contains("vsock:2:1234"));
        let n = Notifier::from_values(Some(b"/run/n"), Some("soon"), None, 7);
        assert_eq!(n.watchdog(), None);
        assert!(n.problem().unwrap().contains("soon"));
    }
}
