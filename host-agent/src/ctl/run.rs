//! `appmonctl run`: Serviceguard's cmappmgr. Launches a command in the guest through the host
//! agent, polls it, streams the tail of its output, and exits with its reason code, so that it
//! can be a systemd service or a Pacemaker resource.
//!
//! - The exit code is the process's own, or 128 + the signal that killed it, or 127 when the
//!   guest could not start it (no such program, user or directory). A launch the guest refuses
//!   (not on its allowlist) or a host agent that cannot be reached exit as the other commands
//!   do (1, 3, 4), before anything runs.
//! - SIGTERM and SIGINT are passed on to the process in the guest (each one once), and
//!   appmonctl goes on waiting for its end, whose code it then exits with.
//! - Output: each poll reads what the process wrote since the last one, stdout to stdout and
//!   stderr to stderr, as raw bytes (on a terminal, control characters other than newline and
//!   tab are escaped). The guest keeps a bounded tail of each stream: a gap (bytes that fell out
//!   of the tail between two polls) is said on stderr.
//! - A session lost on the way (the host agent restarting, the guest's agent reconnecting) is
//!   waited out: the process lives on in the guest and its end is kept there until read.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appmon_control::{
    ErrorKind, LaunchRequest, OutputStream, ProcessState, ProcessView, Request, Response,
};
use appmon_wire::report::error_chain;
use clap::Args;

use super::{duration, exit_code, EXIT_FAILED, EXIT_NO_DAEMON};
use crate::control::{self, ControlError};

/// The exit code of a command the guest could not start, as shells use it.
pub const EXIT_NOT_STARTED: i32 = 127;

/// Polls after the process's end for its output streams to close.
const MAX_TAIL_ROUNDS: u32 = 50;

#[derive(Debug, Args)]
pub struct RunArgs {
    pub domain: String,
    /// The user to run as (the guest's allowlist decides whether it may).
    #[arg(long)]
    pub user: Option<String>,
    /// An environment variable for the process, NAME=VALUE; repeatable.
    #[arg(long = "env", value_parser = env_pair)]
    pub env: Vec<(String, String)>,
    /// The working directory in the guest.
    #[arg(long)]
    pub cwd: Option<String>,
    /// How often to poll the process and read its output.
    #[arg(long, value_parser = duration, default_value = "200ms")]
    pub poll_interval: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// A signal by number (`15`) or name (`TERM`, `SIGTERM`).
pub fn signal_number(text: &str) -> Result<i32, String> {
    if let Ok(n) = text.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("signal {n}: expected 1 to 64"))
        };
    }
    let name = text.strip_prefix("SIG").unwrap_or(text);
    Ok(match name.to_ascii_uppercase().as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        _ => return Err(format!("{text:?} is not a signal number or name")),
    })
}

/// What a call came to.
enum Answer {
    Ok(Response),
    /// Worth trying again later: no session, the daemon away.
    Later(String),
    /// Final: exit with this code (the message is printed).
    Fail(i32),
}

fn call(socket: &Path, request: &Request, err: &mut dyn Write) -> Answer {
    match control::call(socket, request) {
        Ok(Response::Error {
            kind: ErrorKind::NoSession,
            message,
        }) => Answer::Later(message),
        Ok(Response::Error { kind, message }) => {
            let _ = writeln!(err, "appmonctl: {message}");
            Answer::Fail(exit_code(kind))
        }
        Ok(response) => Answer::Ok(response),
        Err(e @ ControlError::Connect { .. }) => Answer::Later(error_chain(&e)),
        Err(e) => {
            let _ = writeln!(err, "appmonctl: {}", error_chain(&e));
            Answer::Fail(EXIT_FAILED)
        }
    }
}

/// The id of this run's process: unique per appmonctl process and moment; `:` keeps it apart
/// from every managed application's `<name>.<n>`.
fn run_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("run:{}:{ms}", std::process::id())
}

/// The bytes of a process's output as they go to a terminal: control characters other than
/// newline and tab escaped.
fn for_terminal(data: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(data);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        for part in body.split('\t').enumerate() {
            if part.0 > 0 {
                out.push('\t');
            }
            out.push_str(&appmon_wire::escape(part.1));
        }
        out.push_str(nl);
    }
    out.into_bytes()
}

struct Stream {
    which: OutputStream,
    next: u64,
    eof: bool,
}

/// Reads what `stream` has beyond `next` and writes it out; `Later` when the answer must wait.
fn drain(
    socket: &Path,
    domain: &str,
    id: &str,
    stream: &mut Stream,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), Answer> {
    loop {
        let request = Request::ReadOutput {
            domain: domain.to_owned(),
            id: id.to_owned(),
            stream: stream.which,
            from: stream.next,
        };
        let chunk = match call(socket, &request, err) {
            Answer::Ok(Response::Output { output }) => output,
            Answer::Ok(other) => {
                let _ = writeln!(err, "appmonctl: unexpected answer {other:?}");
                return Err(Answer::Fail(EXIT_FAILED));
            }
            other => return Err(other),
        };
        if chunk.offset > stream.next {
            let _ = writeln!(
                err,
                "appmonctl: {} bytes of {:?} fell out of the guest's tail before they were read",
                chunk.offset - stream.next,
                stream.which
            );
        }
        if !chunk.data.is_empty() {
            let data = if out_is_terminal(stream.which) {
                for_terminal(&chunk.data)
            } else {
                chunk.data.clone()
            };
            let target: &mut dyn Write = match stream.which {
                OutputStream::Stdout => &mut *out,
                OutputStream::Stderr => &mut *err,
            };
            let _ = target.write_all(&data);
            let _ = target.flush();
        }
        stream.next = chunk.offset + chunk.data.len() as u64;
        stream.eof = chunk.eof;
        if chunk.data.is_empty() || stream.next >= chunk.total {
            return Ok(());
        }
    }
}

fn out_is_terminal(which: OutputStream) -> bool {
    match which {
        OutputStream::Stdout => std::io::stdout().is_terminal(),
        OutputStream::Stderr => std::io::stderr().is_terminal(),
    }
}

/// Runs `appmonctl run`; returns the exit code.
pub fn run(socket: &Path, args: &RunArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let caught: Vec<(i32, Arc<AtomicBool>)> = [libc::SIGTERM, libc::SIGINT]
        .into_iter()
        .map(|signal| {
            let flag = Arc::new(AtomicBool::new(false));
            if let Err(e) = signal_hook::flag::register(signal, flag.clone()) {
                let _ = writeln!(err, "appmonctl: cannot catch signal {signal}: {e}");
            }
            (signal, flag)
        })
        .collect();
    let id = run_id();
    let launch = Request::Launch {
        domain: args.domain.clone(),
        launch: LaunchRequest {
            id: id.clone(),
            argv: args.command.clone(),
            env: args.env.clone(),
            cwd: args.cwd.clone(),
            user: args.user.clone(),
        },
    };
    let started = match control::call(socket, &launch) {
        Ok(Response::Process { process }) => process,
        Ok(Response::Error { kind, message }) => {
            let _ = writeln!(err, "appmonctl: {message}");
            return exit_code(kind);
        }
        Ok(other) => {
            let _ = writeln!(err, "appmonctl: unexpected answer {other:?}");
            return EXIT_FAILED;
        }
        Err(e) => {
            let _ = writeln!(err, "appmonctl: {}", error_chain(&e));
            return match e {
                ControlError::Connect { .. } => EXIT_NO_DAEMON,
                _ => EXIT_FAILED,
            };
        }
    };
    if let ProcessState::FailedToStart { reason } = &started.state {
        let _ = writeln!(
            err,
            "appmonctl: {} did not start: {reason}",
            args.command[0]
        );
        release(socket, &args.domain, &id, err);
        return EXIT_NOT_STARTED;
    }
    let mut streams = [
        Stream {
            which: OutputStream::Stdout,
            next: 0,
            eof: false,
        },
        Stream {
            which: OutputStream::Stderr,
            next: 0,
            eof: false,
        },
    ];
    let mut waiting_since: Option<String> = None;
    let mut ended: Option<ProcessView> = None;
    let mut tail_rounds = 0u32;
    loop {
        for (signal, flag) in &caught {
            if !flag.swap(false, Ordering::SeqCst) || ended.is_some() {
                continue;
            }
            let signal = *signal;
            let _ = writeln!(
                err,
                "appmonctl: passing signal {signal} on to {id} in the guest"
            );
            let request = Request::Signal {
                domain: args.domain.clone(),
                id: id.clone(),
                signal,
            };
            if let Answer::Fail(code) = call(socket, &request, err) {
                return code;
            }
        }
        let mut later = None;
        for stream in streams.iter_mut().filter(|s| !s.eof) {
            match drain(socket, &args.domain, &id, stream, out, err) {
                Ok(()) => {}
                Err(Answer::Fail(code)) => return code,
                Err(Answer::Later(why)) => later = Some(why),
                Err(Answer::Ok(_)) => {}
            }
        }
        if let Some(view) = &ended {
            // The guest closes a stream once it has read it to its end, which may be a little
            // after the exit; wait for that, within a bound.
            tail_rounds += 1;
            if streams.iter().all(|s| s.eof) || tail_rounds > MAX_TAIL_ROUNDS {
                release(socket, &args.domain, &id, err);
                return view.state.reason_code().unwrap_or(EXIT_FAILED);
            }
        } else if later.is_none() {
            let poll = Request::Poll {
                domain: args.domain.clone(),
                id: id.clone(),
            };
            match call(socket, &poll, err) {
                Answer::Ok(Response::Process { process }) => {
                    if !process.state.is_running() {
                        ended = Some(process);
                        // Read the rest of the output before leaving.
                        continue;
                    }
                }
                Answer::Ok(other) => {
                    let _ = writeln!(err, "appmonctl: unexpected answer {other:?}");
                    return EXIT_FAILED;
                }
                Answer::Later(why) => later = Some(why),
                Answer::Fail(code) => return code,
            }
        }
        match (&later, &waiting_since) {
            (Some(why), None) => {
                let _ = writeln!(err, "appmonctl: {why}; waiting: {id} goes on in the guest");
                waiting_since = later.clone();
            }
            (None, Some(_)) => {
                let _ = writeln!(err, "appmonctl: back in touch with {id}");
                waiting_since = None;
            }
            _ => {}
        }
        std::thread::sleep(args.poll_interval);
    }
}

fn release(socket: &Path, domain: &str, id: &str, err: &mut dyn Write) {
    let request = Request::Release {
        domain: domain.to_owned(),
        id: id.to_owned(),
    };
    if let Answer::Later(why) = call(socket, &request, err) {
        let _ = writeln!(
            err,
            "appmonctl: {id} not released ({why}): the guest keeps its end until a release"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appmon_wire::text::Limit;

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(signal_number("9"), Ok(libc::SIGKILL));
        assert_eq!(signal_number("TERM"), Ok(libc::SIGTERM));
        assert_eq!(signal_number("SIGhup"), Ok(libc::SIGHUP));
        assert!(signal_number("0").is_err());
        assert!(signal_number("FOO").is_err());
    }

    #[test]
    fn run_ids_cannot_be_a_managed_applications() {
        assert!(run_id().contains(':'));
        assert!(run_id().len() <= appmon_wire::text::limits::ProcessId::MAX);
    }

    #[test]
    fn terminal_output_keeps_lines_and_escapes_the_rest() {
        assert_eq!(
            for_terminal(b"hi\n\tx\x1b[2J\n"),
            b"hi\n\tx\\u{1b}[2J\n".to_vec()
        );
    }
}
