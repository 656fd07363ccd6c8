//! The `appmon` command: vSphere's application-monitoring verbs for scripts, and `status` for
//! operators. It speaks to the local agent through [`crate::client`].

use appmon_wire::report::error_chain;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::api::{AgentStatus, Delivery};
use crate::client::{AppState, Client, ClientError};
use crate::config::DEFAULT_API_SOCKET;

/// The exit codes of `appmon`, for scripts.
pub mod exit {
    /// Done. For `isEnabled`: the host monitors this guest.
    pub const OK: u8 = 0;
    /// `isEnabled` only: not enabled, or no host connected.
    pub const NOT_ENABLED: u8 = 1;
    /// Bad usage: an unknown verb, a missing or wrong argument (clap's code).
    pub const USAGE: u8 = appmon_wire::report::exit::USAGE;
    /// The agent is not reachable: no socket, nobody listening, no answer in time.
    pub const UNREACHABLE: u8 = appmon_wire::report::exit::UNREACHABLE;
    /// The agent refused: `markActive` before `enable`, a malformed request.
    pub const REFUSED: u8 = 4;
    /// The host answered with an error.
    pub const HOST_ERROR: u8 = 5;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  done; for isEnabled: the host monitors this application
  1  isEnabled: not enabled (or no host connected)
  2  usage error (unknown verb, bad argument)
  3  the agent is not reachable (no socket, not running, no answer in time)
  4  refused by the agent (e.g. markActive before enable)
  5  the host answered with an error

Changes made while no host is connected (enable, disable, markActive, postAppState) are
recorded by the agent and reach the host when it connects; they exit 0 with a note on stderr.";

/// Application monitoring for this VM, as vSphere HA offers it: an application enables
/// monitoring, then calls markActive at least every 30 s or the host resets the VM.
#[derive(Debug, Parser)]
#[command(name = "appmon", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The agent's local API socket.
    #[arg(long, env = "APPMON_SOCKET", default_value = DEFAULT_API_SOCKET)]
    pub socket: PathBuf,
    /// Seconds to wait for the agent.
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
    #[command(subcommand)]
    pub verb: Verb,
}

/// The verbs, spelled as vSphere spells them.
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Start monitoring this application (VMGuestAppMonitor_Enable).
    #[command(name = "enable")]
    Enable,
    /// Stop monitoring it (VMGuestAppMonitor_Disable).
    #[command(name = "disable")]
    Disable,
    /// Send a heartbeat (VMGuestAppMonitor_MarkActive); refused before enable.
    #[command(name = "markActive")]
    MarkActive,
    /// Print true or false: does the host monitor this application? (exit 0 or 1)
    #[command(name = "isEnabled")]
    IsEnabled,
    /// Print green, red or gray (VMGuestAppMonitor_GetAppStatus).
    #[command(name = "getAppStatus")]
    GetAppStatus,
    /// Post the application's state (VMGuestAppMonitor_PostAppState).
    #[command(name = "postAppState")]
    PostAppState {
        /// appStateNeedReset asks the host to reset this VM now; appStateOk takes it back.
        state: StateArg,
    },
    /// Show the agent's state: enabled, heartbeats, host session, re-enables.
    #[command(name = "status")]
    Status {
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the application monitors: phase, restarts, failure action, last failure.
    #[command(name = "monitors")]
    Monitors {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `postAppState`'s argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    #[value(name = "appStateOk")]
    Ok,
    #[value(name = "appStateNeedReset")]
    NeedReset,
}

/// Runs one command; returns the exit code. Output goes to `out`, messages to `err`.
pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut client =
        Client::new(&cli.socket).with_timeout(Some(Duration::from_secs(cli.timeout.max(1))));
    match execute(&mut client, &cli.verb, out, err) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "appmon: {}", error_chain(&e));
            exit_code(&e)
        }
    }
}

/// The exit code for a call that did not succeed.
pub fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Unreachable { .. }
        | ClientError::Io { .. }
        | ClientError::Closed { .. }
        | ClientError::Protocol { .. }
        | ClientError::Unexpected { .. } => exit::UNREACHABLE,
        ClientError::Refused { .. } => exit::REFUSED,
        ClientError::Host { .. } => exit::HOST_ERROR,
    }
}

fn execute(
    client: &mut Client,
    verb: &Verb,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, ClientError> {
    let recorded = |err: &mut dyn Write, delivery: Delivery| {
        if delivery == Delivery::Recorded {
            let _ = writeln!(
                err,
                "appmon: no host connected: recorded; the host gets it when it connects"
            );
        }
    };
    match verb {
        Verb::Enable => recorded(err, client.enable()?.delivery),
        Verb::Disable => recorded(err, client.disable()?.delivery),
        Verb::MarkActive => recorded(err, client.mark_active()?),
        Verb::PostAppState { state } => {
            let state = match state {
                StateArg::Ok => AppState::Ok,
                StateArg::NeedReset => AppState::NeedReset,
            };
            recorded(err, client.post_app_state(state)?.delivery);
        }
        Verb::IsEnabled => {
            let enabled = client.is_enabled_detail()?;
            let _ = writeln!(out, "{}", enabled.enabled);
            if !enabled.host_session {
                let _ = writeln!(err, "appmon: no host connected");
            }
            if !enabled.enabled {
                return Ok(exit::NOT_ENABLED);
            }
        }
        Verb::GetAppStatus => {
            let _ = writeln!(out, "{}", client.get_app_status()?);
        }
        Verb::Status { json } => {
            let status = client.status()?;
            if *json {
                let text = serde_json::to_string_pretty(&status).unwrap_or_default();
                let _ = writeln!(out, "{text}");
            } else {
                let _ = write!(out, "{}", render_status(&status));
            }
        }
        Verb::Monitors { json } => {
            let monitors = client.monitors()?;
            if *json {
                let text = serde_json::to_string_pretty(&monitors).unwrap_or_default();
                let _ = writeln!(out, "{text}");
            } else {
                let _ = write!(out, "{}", render_monitors(&monitors));
            }
        }
    }
    Ok(exit::OK)
}

/// `appmon status` for people.
pub fn render_status(s: &AgentStatus) -> String {
    let age = |ms: Option<u64>| match ms {
        Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
        None => "never".to_owned(),
    };
    let color = |c: Option<crate::api::Color>| match c {
        Some(c) => appmon_wire::AppStatus::from(c).to_string(),
        None => "none".to_owned(),
    };
    let mut text = String::new();
    let mut line = |key: &str, value: String| text.push_str(&format!("{key:<18}{value}\n"));
    line("agent", s.agent.clone());
    line("enabled", s.enabled.to_string());
    line("need reset", s.need_reset.to_string());
    line("app status", color(Some(s.app_status)));
    line("last host status", color(s.last_host_status));
    line("last heartbeat", age(s.last_heartbeat_age_ms));
    line("heartbeats", s.heartbeats.to_string());
    let session = match (&s.session.transport, &s.session.peer) {
        (Some(t), Some(p)) => format!(
            "{} over {t} with {p}, protocol {}, for {}",
            s.session.state,
            s.session.protocol.unwrap_or_default(),
            age(s.session.age_ms).trim_end_matches(" ago")
        ),
        (Some(t), None) => format!("{} over {t}", s.session.state),
        _ => s.session.state.clone(),
    };
    line("host session", session);
    line("host sessions", s.sessions.to_string());
    line("re-enables", s.reenables.to_string());
    line("last re-enable", age(s.last_reenable_age_ms));
    if let Some(by) = &s.heartbeats_withheld_by {
        line("heartbeats", format!("withheld by monitor {by}"));
    }
    text
}

/// `appmon monitors` for people: one line per monitor.
pub fn render_monitors(monitors: &[appmon_wire::MonitorStatus]) -> String {
    use appmon_wire::{FailureAction, MonitorKind, MonitorMode, MonitorPhase};
    if monitors.is_empty() {
        return "no application monitors configured\n".to_owned();
    }
    let mut text = format!(
        "{:<20} {:<16} {:<8} {:<13} {:<12} {:<9} {:<16} {}\n",
        "MONITOR", "APPLICATION", "KIND", "MODE", "PHASE", "RESTARTS", "ON FAILURE", "LAST FAILURE"
    );
    for m in monitors {
        let kind = match m.kind {
            MonitorKind::Process => "process",
            MonitorKind::Custom => "custom",
        };
        let mode = match m.mode {
            MonitorMode::Startup => "startup",
            MonitorMode::LongRunning => "long-running",
            MonitorMode::Both => "both",
        };
        let phase = match m.phase {
            MonitorPhase::Stabilizing => "stabilizing",
            MonitorPhase::Healthy => "healthy",
            MonitorPhase::Failed => "failed",
            MonitorPhase::GaveUp => "gave up",
            MonitorPhase::Idle => "idle",
        };
        let action = match m.failure_action {
            FailureAction::Notify => "notify",
            FailureAction::StopHeartbeats => "stop-heartbeats",
            FailureAction::NeedReset => "need-reset",
        };
        let restarts = format!("{}/{}", m.restarts, m.restart_count);
        let last = m
            .last_failure
            .as_ref()
            .map_or("-".to_owned(), |t| t.to_string());
        text.push_str(&format!(
            "{:<20} {:<16} {kind:<8} {mode:<13} {phase:<12} {restarts:<9} {action:<16} {last}\n",
            m.name.to_string(),
            m.application.to_string(),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("appmon").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn verbs_use_the_vsphere_spellings() {
        for verb in [
            "enable",
            "disable",
            "markActive",
            "isEnabled",
            "getAppStatus",
            "status",
            "monitors",
        ] {
            parse(&[verb]).unwrap_or_else(|e| panic!("{verb}: {e}"));
        }
        let cli = parse(&["postAppState", "appStateNeedReset"]).expect("needReset");
        assert!(matches!(
            cli.verb,
            Verb::PostAppState {
                state: StateArg::NeedReset
            }
        ));
        let cli = parse(&["postAppState", "appStateOk"]).expect("ok");
        assert!(matches!(
            cli.verb,
            Verb::PostAppState {
                state: StateArg::Ok
            }
        ));
    }

    #[test]
    fn unknown_verbs_and_states_are_usage_errors() {
        for args in [
            &["markactive"][..],
            &["reset"],
            &["postAppState", "needReset"],
            &["postAppState"],
            &[],
        ] {
            let e = parse(args).expect_err("usage error");
            assert_eq!(e.exit_code(), i32::from(exit::USAGE), "{args:?}");
        }
    }

    #[test]
    fn monitors_are_listed_one_line_each_with_phase_restarts_and_last_failure() {
        use appmon_wire::{FailureAction, MonitorKind, MonitorMode, MonitorPhase, MonitorStatus};
        let monitors = [MonitorStatus {
            name: "db-proc".into(),
            application: "db".into(),
            kind: MonitorKind::Process,
            mode: MonitorMode::Both,
            phase: MonitorPhase::GaveUp,
            restarts: 2,
            restart_count: 2,
            failure_action: FailureAction::NeedReset,
            last_failure: Some("0 of 1 instance of `postgres` running\n\u{1b}[2J".into()),
        }];

        let text = render_monitors(&monitors);

        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let words: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            &words[..8],
            [
                "db-proc",
                "db",
                "process",
                "both",
                "gave",
                "up",
                "2/2",
                "need-reset"
            ]
        );
        assert!(
            lines[1].ends_with(r"running\n\u{1b}[2J"),
            "the guest's words are escaped: {}",
            lines[1]
        );
        assert_eq!(render_monitors(&[]), "no application monitors configured\n");
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("3  the agent is not reachable"), "{help}");
    }

    #[test]
    fn an_absent_agent_is_exit_code_3() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cli = parse(&[
            "--socket",
            dir.path().join("absent.sock").to_str().expect("utf-8"),
            "isEnabled",
        ])
        .expect("parses");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run(&cli, &mut out, &mut err), exit::UNREACHABLE);
        let err = String::from_utf8_lossy(&err);
        assert!(err.contains("not reachable"), "{err}");
        assert!(err.contains("absent.sock"), "{err}");
    }
}
