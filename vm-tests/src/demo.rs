//! The host's side of the demo application's control port (`appmon-demo` in the guest, vsock
//! port [`DEMO_CONTROL_PORT`]): one command line, one answer line (`ok ...` or `error ...`).
//! The commands are listed in `guest-programs/src/bin/appmon-demo.rs`: `stop`, `resume`,
//! `needreset`, `ok`, `disable`, `enable`, `status`, `appstatus`, `exit`, `reboot`,
//! `burn N`.
//!
//! Host side: hybrid vsock through the guest's vhost-device-vsock Unix socket, never AF_VSOCK.

use std::io::{self, BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use crate::hybrid::HybridConnectError;
use crate::vm::TestVm;
use crate::DEMO_CONTROL_PORT;

/// Bound for a demo command: connecting (the demo may still be starting) and its answer
/// (`needreset` waits for the guest agent, which waits up to 10 s for the host).
pub const DEMO_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a demo command failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot reach the demo application on guest port {DEMO_CONTROL_PORT}")]
    Connect(#[source] HybridConnectError),
    #[error("sending {command:?} to the demo application failed")]
    Send {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the demo application's answer to {command:?} failed")]
    Read {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("the demo application closed the connection without answering {command:?}")]
    NoAnswer { command: String },
    #[error("the demo application refused {command:?}: {answer}")]
    Refused { command: String, answer: String },
}

impl TestVm {
    /// Sends one command to the demo application and returns its answer after `ok `. Retries
    /// the connection until `timeout` (the demo application may not listen yet).
    pub fn try_demo_command(&self, command: &str, timeout: Duration) -> Result<String, DemoError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match self.try_connect(DEMO_CONTROL_PORT) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(DemoError::Connect(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let set = stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.set_write_timeout(Some(left)));
        set.map_err(|source| DemoError::Send {
            command: command.to_owned(),
            source,
        })?;
        let mut writer = &stream;
        writer
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| writer.flush())
            .map_err(|source| DemoError::Send {
                command: command.to_owned(),
                source,
            })?;
        let mut line = String::new();
        let n = BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|source| DemoError::Read {
                command: command.to_owned(),
                source,
            })?;
        if n == 0 {
            return Err(DemoError::NoAnswer {
                command: command.to_owned(),
            });
        }
        let answer = line.trim_end();
        match answer.strip_prefix("ok ") {
            Some(text) => Ok(text.to_owned()),
            None => Err(DemoError::Refused {
                command: command.to_owned(),
                answer: answer.to_owned(),
            }),
        }
    }

    /// [`TestVm::try_demo_command`] with [`DEMO_COMMAND_TIMEOUT`]; fails the test with the
    /// guest's diagnostics.
    pub fn demo_command(&self, command: &str) -> String {
        self.try_demo_command(command, DEMO_COMMAND_TIMEOUT)
            .unwrap_or_else(|e| self.fail(appmon_wire::report::error_chain(&e)))
    }
}
