//! The `[[monitor]]` tables of `/etc/appmon/guest.toml`.
//!
//! ```toml
//! [[monitor]]
//! name = "db-process"                 # unique; what events and listings call it
//! application = "db"                  # default: the monitor's name
//! kind = "process"                    # "process" or "custom"
//! mode = "both"                       # "startup", "long-running" (default) or "both"
//! process = "postgres"                # a process monitor: a process name ...
//! owner = "postgres"                  #   ... optionally of this user (name or uid) ...
//! instances = 1                       #   ... at least this many (default 1)
//! # pid_file = "/run/db.pid"          # ... or the process a pid file names
//! # command = ["/usr/local/bin/db-ping", "--quick"]   # a custom monitor: exit 0 = healthy
//! # timeout = 10                      # a custom check's bound, seconds (default 30)
//! stabilization_interval = 60         # seconds (default 60)
//! monitor_interval = 30               # seconds between checks (default 60)
//! restart_count = 3                   # restarts within restart_interval (default 3)
//! restart_interval = 600              # default 1.1 x restart_count x (monitor + stabilization)
//! failure_action = "need-reset"       # "notify" (default), "stop-heartbeats", "need-reset"
//! start = "/etc/init.d/db start"      # commands: a string of words, or an array of arguments
//! restart = "/etc/init.d/db restart"  # default: the start command
//! cleanup = "/etc/init.d/db stop"     # runs before each restart
//! command_timeout = 60                # bound of start, restart and cleanup, seconds (default 60)
//! ```
//!
//! A command is an array of arguments, or a string of words separated by white space; a string
//! with quotes, `$`, `;`, `|`, `&`, `<`, `>`, a backquote or a backslash is refused (nothing runs
//! a shell: write `["/bin/sh", "-c", "..."]` to get one). Its program must exist and be
//! executable when the file is loaded; a bare name is looked up in `PATH`, and the monitors run
//! the path found.
//!
//! Monitors with the same `application` watch one application: it has one start command (the
//! monitors that name one must name the same), it is started at most once, and while one of its
//! monitors restarts it the others wait.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use appmon_wire::report::{error_chain, locate};
use appmon_wire::{FailureAction, MonitorKind, MonitorMode};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::config_base::{self, ConfigError};

/// Where bare program names are looked up when the agent has no `PATH`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Longest monitor or application name (the wire's bound).
const MAX_NAME: usize = 128;

/// One `[[monitor]]` table as written; [`validate`] checks what serde cannot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub name: Spanned<String>,
    pub application: Option<Spanned<String>>,
    #[serde(deserialize_with = "kind")]
    pub kind: MonitorKind,
    #[serde(default = "long_running", deserialize_with = "mode")]
    pub mode: MonitorMode,
    pub process: Option<Spanned<String>>,
    pub owner: Option<Spanned<Owner>>,
    pub instances: Option<Spanned<u32>>,
    pub pid_file: Option<Spanned<PathBuf>>,
    pub command: Option<Spanned<CommandLine>>,
    #[serde(default, deserialize_with = "opt_positive_seconds")]
    pub timeout: Option<Duration>,
    #[serde(default = "sixty", deserialize_with = "seconds")]
    pub stabilization_interval: Duration,
    #[serde(default = "sixty", deserialize_with = "positive_seconds")]
    pub monitor_interval: Duration,
    #[serde(default = "three")]
    pub restart_count: u32,
    #[serde(default, deserialize_with = "opt_positive_seconds")]
    pub restart_interval: Option<Duration>,
    #[serde(default = "notify", deserialize_with = "action")]
    pub failure_action: FailureAction,
    pub start: Option<Spanned<CommandLine>>,
    pub restart: Option<Spanned<CommandLine>>,
    pub cleanup: Option<Spanned<CommandLine>>,
    #[serde(default = "sixty", deserialize_with = "positive_seconds")]
    pub command_timeout: Duration,
}

/// A custom monitor's bound when `timeout` is not set.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

impl MonitorConfig {
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    /// The application it watches: `application`, or the monitor's own name.
    pub fn application(&self) -> &str {
        self.application.as_ref().unwrap_or(&self.name).get_ref()
    }

    /// How long one check may take: a custom monitor's `timeout`.
    pub fn check_timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT)
    }

    /// `restart_interval`, or PowerHA's default: 1.1 x restart count x (monitor interval +
    /// stabilization interval).
    pub fn restart_interval(&self) -> Duration {
        self.restart_interval.unwrap_or_else(|| {
            (self.monitor_interval + self.stabilization_interval)
                .mul_f64(1.1 * f64::from(self.restart_count.max(1)))
        })
    }

    /// What a process monitor looks for.
    pub fn target(&self) -> Option<ProcessTarget> {
        let owner = self.owner.as_ref().map(|o| o.get_ref().clone());
        if let Some(name) = &self.process {
            return Some(ProcessTarget::Name {
                name: name.get_ref().clone(),
                owner,
                instances: self.instances.as_ref().map_or(1, |i| *i.get_ref()),
            });
        }
        self.pid_file.as_ref().map(|p| ProcessTarget::PidFile {
            path: p.get_ref().clone(),
            owner,
        })
    }

    fn commands_mut(&mut self) -> impl Iterator<Item = (&'static str, &mut Spanned<CommandLine>)> {
        [
            ("command", &mut self.command),
            ("start", &mut self.start),
            ("restart", &mut self.restart),
            ("cleanup", &mut self.cleanup),
        ]
        .into_iter()
        .filter_map(|(key, c)| c.as_mut().map(|c| (key, c)))
    }
}

/// The processes a process monitor watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessTarget {
    /// Processes by name (the program's file name, or the kernel's `comm`), of `owner` if set;
    /// healthy while at least `instances` run.
    Name {
        name: String,
        owner: Option<Owner>,
        instances: u32,
    },
    /// The process whose pid `path` holds.
    PidFile { path: PathBuf, owner: Option<Owner> },
}

/// A process owner: a user name as written (resolved at load) and its uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    /// `None` until the file is loaded ([`resolve`]): a name is looked up then, in
    /// `/etc/passwd` ([`crate::users`]).
    pub uid: Option<u32>,
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Uid(u32),
            Name(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Uid(uid) => Owner {
                name: uid.to_string(),
                uid: Some(uid),
            },
            Raw::Name(name) => match name.parse::<u32>() {
                Ok(uid) => Owner {
                    name,
                    uid: Some(uid),
                },
                Err(_) => Owner { name, uid: None },
            },
        })
    }
}

/// A command as argv: the program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(pub Vec<String>);

impl CommandLine {
    pub fn program(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    /// The command for logs: its words joined with spaces.
    pub fn display(&self) -> String {
        self.0.join(" ")
    }
}

/// Characters that mean a shell to whoever writes them; no shell runs the command.
const SHELL_CHARACTERS: &[char] = &['"', '\'', '$', ';', '|', '&', '<', '>', '`', '\\', '*', '?'];

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Words(String),
            Argv(Vec<String>),
        }
        let argv = match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("a command is a string of words or an array of strings")
        })? {
            Raw::Words(text) => {
                if let Some(c) = text.chars().find(|c| SHELL_CHARACTERS.contains(c)) {
                    return Err(serde::de::Error::custom(format_args!(
                        "`{c}` in a command string: no shell runs it; write an array of \
                         arguments, or [\"/bin/sh\", \"-c\", \"...\"] for a shell"
                    )));
                }
                text.split_whitespace().map(str::to_owned).collect()
            }
            Raw::Argv(argv) => argv,
        };
        match argv.first() {
            None => Err(serde::de::Error::custom("an empty command")),
            Some(p) if p.is_empty() => Err(serde::de::Error::custom("an empty program name")),
            Some(_) => Ok(CommandLine(argv)),
        }
    }
}

/// Checks what serde cannot: names, which keys go with which kind, one start command per
/// application. Pure: the file system is [`resolve`]'s.
pub fn validate(monitors: &[MonitorConfig], text: &str, path: &Path) -> Result<(), ConfigError> {
    let at = |span: std::ops::Range<usize>, message: String| at(text, path, span, message);
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut starts: HashMap<&str, (&str, &Spanned<CommandLine>)> = HashMap::new();
    for m in monitors {
        let name = m.name();
        let who = format!("monitor `{name}`");
        if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(at(
                m.name.span(),
                format!("a monitor name is 1 to {MAX_NAME} bytes without control characters"),
            ));
        }
        if let Some(first) = names.insert(name, locate(text, m.name.span().start).line) {
            return Err(at(
                m.name.span(),
                format!("{who} is defined twice (first on line {first})"),
            ));
        }
        if let Some(app) = &m.application {
            let a = app.get_ref();
            if a.is_empty() || a.len() > MAX_NAME || a.chars().any(char::is_control) {
                return Err(at(
                    app.span(),
                    format!("{who}: an application name is 1 to {MAX_NAME} bytes without control characters"),
                ));
            }
        }
        let name_span = m.name.span();
        match m.kind {
            MonitorKind::Process => {
                match (&m.process, &m.pid_file) {
                    (None, None) => {
                        return Err(at(
                            name_span,
                            format!("{who}: a process monitor needs `process` or `pid_file`"),
                        ))
                    }
                    (Some(_), Some(p)) => {
                        return Err(at(
                            p.span(),
                            format!("{who}: `process` and `pid_file` exclude each other"),
                        ))
                    }
                    (Some(p), None) if p.get_ref().is_empty() => {
                        return Err(at(p.span(), format!("{who}: an empty process name")))
                    }
                    _ => {}
                }
                if let Some(i) = &m.instances {
                    if m.pid_file.is_some() {
                        return Err(at(
                            i.span(),
                            format!("{who}: `instances` goes with `process`; a pid file names one process"),
                        ));
                    }
                    if *i.get_ref() == 0 {
                        return Err(at(i.span(), format!("{who}: `instances` is at least 1")));
                    }
                }
                if let Some(c) = &m.command {
                    return Err(at(
                        c.span(),
                        format!("{who}: `command` is for custom monitors (kind = \"custom\")"),
                    ));
                }
                if m.timeout.is_some() {
                    return Err(at(
                        name_span,
                        format!("{who}: `timeout` is for custom monitors"),
                    ));
                }
            }
            MonitorKind::Custom => {
                if m.command.is_none() {
                    return Err(at(
                        name_span,
                        format!("{who}: a custom monitor needs `command`"),
                    ));
                }
                let stray = [
                    ("process", m.process.as_ref().map(Spanned::span)),
                    ("owner", m.owner.as_ref().map(Spanned::span)),
                    ("instances", m.instances.as_ref().map(Spanned::span)),
                    ("pid_file", m.pid_file.as_ref().map(Spanned::span)),
                ];
                if let Some((key, Some(span))) = stray.into_iter().find(|(_, s)| s.is_some()) {
                    return Err(at(
                        span,
                        format!("{who}: `{key}` is for process monitors (kind = \"process\")"),
                    ));
                }
            }
        }
        if m.restart_count > 0 && m.restart.is_none() && m.start.is_none() {
            return Err(at(
                name_span,
                format!(
                    "{who}: restart_count = {} needs a `restart` or `start` command (or restart_count = 0)",
                    m.restart_count
                ),
            ));
        }
        if let Some(start) = &m.start {
            match starts.get(m.application()) {
                Some((other, first)) if first.get_ref() != start.get_ref() => {
                    return Err(at(
                        start.span(),
                        format!(
                            "{who}: application `{}` has another start command in monitor `{other}` (line {}); an application starts one way",
                            m.application(),
                            locate(text, first.span().start).line
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    starts.insert(m.application(), (name, start));
                }
            }
        }
    }
    Ok(())
}

/// Looks up what the file system knows: every command's program (a bare name through `PATH`,
/// which the command then runs by its full path) and every owner's uid ([`crate::users`]).
pub fn resolve(monitors: &mut [MonitorConfig], text: &str, path: &Path) -> Result<(), ConfigError> {
    let search = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned());
    for m in monitors.iter_mut() {
        let who = format!("monitor `{}`", m.name());
        for (_, command) in m.commands_mut() {
            let span = command.span();
            let program = command.get_ref().program().to_owned();
            let found = find_program(&program, &search)
                .map_err(|why| at(text, path, span, format!("{who}: {program}: {why}")))?;
            command.get_mut().0[0] = found.to_string_lossy().into_owned();
        }
        if let Some(owner) = &mut m.owner {
            if owner.get_ref().uid.is_none() {
                let span = owner.span();
                let name = owner.get_ref().name.clone();
                let uid = crate::users::UserDb::system()
                    .and_then(|users| users.lookup(&name))
                    .map_err(|e| {
                        at(
                            text,
                            path,
                            span,
                            format!("{who}: owner: {}", error_chain(&e)),
                        )
                    })?
                    .uid;
                owner.get_mut().uid = Some(uid);
            }
        }
    }
    Ok(())
}

/// The program `name` runs: a path with a slash as it is, a bare name from `search`.
fn find_program(name: &str, search: &str) -> Result<PathBuf, &'static str> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return match executable(&path) {
            Some(true) => Ok(path),
            Some(false) => Err("not an executable file"),
            None => Err("no such file"),
        };
    }
    search
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|p| executable(p) == Some(true))
        .ok_or("no such program in PATH")
}

/// Whether `path` is a regular file with an execute bit; `None` if it does not exist.
fn executable(path: &Path) -> Option<bool> {
    let meta = std::fs::metadata(path).ok()?;
    Some(meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn at(text: &str, path: &Path, span: std::ops::Range<usize>, message: String) -> ConfigError {
    config_base::parse_error(text, path, span.start, message)
}

fn long_running() -> MonitorMode {
    MonitorMode::LongRunning
}
fn sixty() -> Duration {
    Duration::from_secs(60)
}
fn three() -> u32 {
    3
}
fn notify() -> FailureAction {
    FailureAction::Notify
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    config_base::seconds(d)
}

fn positive_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = config_base::seconds(d)?;
    if s.is_zero() {
        return Err(serde::de::Error::custom("must be at least 1 second"));
    }
    Ok(s)
}

fn opt_positive_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    positive_seconds(d).map(Some)
}

fn kind<'de, D: Deserializer<'de>>(d: D) -> Result<MonitorKind, D::Error> {
    match String::deserialize(d)?.as_str() {
        "process" => Ok(MonitorKind::Process),
        "custom" => Ok(MonitorKind::Custom),
        other => Err(serde::de::Error::custom(format_args!(
            "`{other}` is not a monitor kind: \"process\" or \"custom\""
        ))),
    }
}

fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<MonitorMode, D::Error> {
    match String::deserialize(d)?.as_str() {
        "startup" => Ok(MonitorMode::Startup),
        "long-running" => Ok(MonitorMode::LongRunning),
        "both" => Ok(MonitorMode::Both),
        other => Err(serde::de::Error::custom(format_args!(
            "`{other}` is not a monitor mode: \"startup\", \"long-running\" or \"both\""
        ))),
    }
}

fn action<'de, D: Deserializer<'de>>(d: D) -> Result<FailureAction, D::Error> {
    match String::deserialize(d)?.as_str() {
        "notify" => Ok(FailureAction::Notify),
        "stop-heartbeats" => Ok(FailureAction::StopHeartbeats),
        "need-reset" => Ok(FailureAction::NeedReset),
        other => Err(serde::de::Error::custom(format_args!(
            "`{other}` is not a failure action: \"notify\", \"stop-heartbeats\" or \"need-reset\""
        ))),
    }
}
