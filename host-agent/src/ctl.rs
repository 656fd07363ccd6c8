//! `appmonctl`: the operator's command line. It talks only to the running daemon's control
//! socket; the daemon writes domain metadata for `enable` and `disable`.
//!
//! Exit codes: 0 success; 1 the daemon or libvirt failed the request; 2 bad usage; 3 the daemon
//! cannot be reached; 4 unknown domain (or counter entity, or run-time alarm rule); 5 `alarms`
//! found an alarm raised. 2 and 3 mean what they mean for the guest's `appmon`
//! (`appmon_wire::report::exit`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use appmon_libvirt_backend::spec::parse_duration;
use appmon_libvirt_backend::{MonitorSpec, ResetMethod, Transport, DEFAULT_CHANNEL_NAME};
use appmon_wire::{escape, DEFAULT_VSOCK_PORT};
use clap::{Args, Parser, Subcommand};

use appmon_control::{
    AlarmRuleSpec, AlarmSide, AlarmsDocument, AlarmsView, CountersDocument, CountersView,
    ErrorKind, ListDocument, ProcessView, ProcessesDocument, Request, Response, RuleOrigin,
    ShowDocument, VmView,
};

use crate::control;
use appmon_wire::report::{error_chain, exit};

mod config_file;
mod run;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = exit::USAGE as i32;
pub const EXIT_NO_DAEMON: i32 = exit::UNREACHABLE as i32;
pub const EXIT_UNKNOWN_DOMAIN: i32 = 4;
/// `alarms`: at least one alarm of MON's alarm view is raised.
pub const EXIT_ALARM_RAISED: i32 = 5;

/// Operate appmon's host agent: list and show the monitored domains, enable and disable
/// monitoring, clear a domain's alarm.
#[derive(Debug, Parser)]
#[command(
    name = "appmonctl",
    version,
    after_help = "Exit codes: 0 ok, 1 failed, 2 usage, 3 host agent not reachable, 4 unknown domain, entity or alarm rule, 5 an alarm is raised (alarms)."
)]
pub struct Cli {
    /// The host agent's control socket.
    #[arg(
        long,
        global = true,
        env = "APPMONCTL_SOCKET",
        default_value = "/run/appmon/host.sock"
    )]
    pub socket: PathBuf,
    /// Print JSON instead of text (list, show, counters, ps, alarms).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every domain: monitored?, status, last heartbeat age, resets in window.
    List,
    /// One domain's policy, state and event history.
    Show { domain: String },
    /// Monitor a domain: writes the monitoring metadata into its definition.
    Enable(EnableArgs),
    /// Stop monitoring a domain: removes its monitoring metadata.
    Disable { domain: String },
    /// Clear a domain's "gave up" alarm and the resets of its window.
    Clear { domain: String },
    /// Launch a command in the guest, stream its output, exit with its exit code (128 + the
    /// signal that killed it; 127 if it could not start). SIGTERM and SIGINT are passed on to
    /// the process in the guest, and appmonctl waits for its end.
    Run(run::RunArgs),
    /// The processes launched in the guest for the host.
    Ps { domain: String },
    /// Send a signal (a number or a name such as TERM, KILL, HUP; default TERM) to a launched
    /// process.
    Kill {
        domain: String,
        id: String,
        #[arg(value_parser = run::signal_number)]
        signal: Option<i32>,
    },
    /// The counters a domain's guest agent sends, with their latest values.
    Counters {
        domain: String,
        /// Only this entity's counters (`CPU`, `Memory`, a custom entity...).
        entity: Option<String>,
    },
    /// MON's alarm view: the raised alarms and the rules in force (of one domain when named).
    /// Exits 5 when an alarm is raised, 0 when none is.
    Alarms {
        /// Only this domain's raised alarms and the rules that match it.
        domain: Option<String>,
    },
    /// Set an alarm rule at run time: kept in the state directory across restarts, it
    /// replaces the rule with the same domain glob, entity and counter (host.toml's included)
    /// and comes before host.toml's rules.
    AlarmSet(AlarmSetArgs),
    /// Remove a run-time alarm rule (host.toml's rules are changed in host.toml).
    AlarmRemove {
        /// The counter's entity (`CPU`, a custom entity...).
        entity: String,
        counter: String,
        /// The rule's domain glob.
        #[arg(long, default_value = "*")]
        domain: String,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("bound").required(true).multiple(true).args(["below", "above"])))]
pub struct AlarmSetArgs {
    /// The counter's entity (`CPU`, `Memory`, a custom entity...).
    pub entity: String,
    pub counter: String,
    /// The domains (a glob: `*`, `?`) the rule applies to.
    #[arg(long, default_value = "*")]
    pub domain: String,
    /// Raise the below alarm when a value is under this.
    #[arg(long, allow_negative_numbers = true)]
    pub below: Option<f64>,
    /// Raise the above alarm when a value is over this.
    #[arg(long, allow_negative_numbers = true)]
    pub above: Option<f64>,
    /// How far back a value must come before a raised alarm clears (the counter's units).
    #[arg(long, default_value_t = 0.0)]
    pub hysteresis: f64,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("transport").required(true).args(["vsock_uds", "cid", "channel", "channel_name"])))]
pub struct EnableArgs {
    pub domain: String,
    /// Failure interval (500ms, 30s, 2m, 1h); host default when left out.
    #[arg(long, value_parser = duration)]
    pub failure_interval: Option<Duration>,
    /// Minimum uptime after start or reset before failures count.
    #[arg(long, value_parser = duration)]
    pub min_uptime: Option<Duration>,
    /// Maximum resets per window.
    #[arg(long)]
    pub max_resets: Option<u32>,
    /// The reset window.
    #[arg(long, value_parser = duration)]
    pub window: Option<Duration>,
    /// reset or power-cycle.
    #[arg(long, value_parser = reset_method)]
    pub reset_method: Option<ResetMethod>,
    /// Hybrid vsock: the vhost-user-vsock backend's Unix socket.
    #[arg(long)]
    pub vsock_uds: Option<PathBuf>,
    /// Kernel vsock: the guest's CID.
    #[arg(long)]
    pub cid: Option<u32>,
    /// virtio-serial: the channel's host-side Unix socket.
    #[arg(long)]
    pub channel: Option<PathBuf>,
    /// virtio-serial: the channel's name, its socket found in the live domain XML.
    #[arg(long)]
    pub channel_name: Option<String>,
    /// The guest agent's vsock port.
    #[arg(long, default_value_t = DEFAULT_VSOCK_PORT)]
    pub port: u32,
    /// Managed applications: a file of `<appmon:application>` elements (host-agent/README.md),
    /// written into the metadata with the rest.
    #[arg(long)]
    pub applications: Option<PathBuf>,
    /// The Pacemaker resource (`ocf:heartbeat:VirtualDomain`) that runs this domain: appmon
    /// escalates to the cluster what it cannot recover in place (host-agent README, "Inside a
    /// Pacemaker cluster").
    #[arg(long, value_parser = resource_id)]
    pub cluster_resource: Option<String>,
    /// Write the monitoring element into this domain XML file (a VirtualDomain resource's
    /// `config=`) instead of the live domain: the cluster creates the domain from it at every
    /// start.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn resource_id(text: &str) -> Result<String, String> {
    if appmon_libvirt_backend::spec::is_resource_id(text) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a Pacemaker resource id (a letter or _, then letters, digits, _ - .)"
        ))
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as 500ms, 30s, 2m, 1h"))
}

fn reset_method(text: &str) -> Result<ResetMethod, String> {
    ResetMethod::parse(text).ok_or_else(|| format!("{text:?} is not reset or power-cycle"))
}

impl EnableArgs {
    /// The spec these options describe.
    pub fn spec(&self) -> Result<MonitorSpec, String> {
        let transport = if let Some(path) = &self.vsock_uds {
            Transport::HybridVsock {
                path: absolute(path)?,
                port: self.port,
            }
        } else if let Some(cid) = self.cid {
            if cid < 3 {
                return Err(format!("--cid {cid}: guest CIDs start at 3"));
            }
            Transport::Vsock {
                cid: Some(cid),
                port: self.port,
            }
        } else if let Some(path) = &self.channel {
            Transport::Channel {
                path: Some(absolute(path)?),
                name: self
                    .channel_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CHANNEL_NAME.into()),
            }
        } else {
            Transport::Channel {
                path: None,
                name: self
                    .channel_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CHANNEL_NAME.into()),
            }
        };
        if self.failure_interval.is_some_and(|d| d.is_zero()) {
            return Err("--failure-interval must be more than zero".into());
        }
        if self.window.is_some_and(|d| d.is_zero()) {
            return Err("--window must be more than zero".into());
        }
        let spec = MonitorSpec {
            failure_interval: self.failure_interval,
            min_uptime: self.min_uptime,
            max_resets: self.max_resets,
            reset_window: self.window,
            reset_method: self.reset_method,
            transport,
            applications: Vec::new(),
            cluster_resource: self.cluster_resource.clone(),
        };
        match &self.applications {
            None => Ok(spec),
            Some(path) => with_applications(spec, path),
        }
    }
}

/// `spec` with the `<appmon:application>` elements of the file at `path`, checked as the
/// metadata parser checks them.
fn with_applications(spec: MonitorSpec, path: &std::path::Path) -> Result<MonitorSpec, String> {
    let elements = std::fs::read_to_string(path)
        .map_err(|e| format!("--applications {}: {e}", path.display()))?;
    let xml = spec.to_xml();
    let close = format!("</{}:monitor>", appmon_libvirt_backend::spec::METADATA_KEY);
    let Some(body) = xml.strip_suffix(&close) else {
        return Err(format!("internal: the spec does not end with {close}"));
    };
    MonitorSpec::from_xml(&format!("{body}{elements}{close}"))
        .map_err(|e| format!("--applications {}: {e}", path.display()))
}

fn absolute(path: &std::path::Path) -> Result<PathBuf, String> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    std::env::current_dir()
        .map(|d| d.join(path))
        .map_err(|e| format!("cannot make {} absolute: {e}", path.display()))
}

/// `enable --config FILE`: the spec written into the domain XML file, not the live domain.
fn enable_in_file(args: &EnableArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let Some(path) = &args.config else {
        return EXIT_USAGE;
    };
    let result = args.spec().and_then(|spec| {
        let xml = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {}: {e}", path.display()))?;
        let updated = config_file::with_monitor(&xml, &args.domain, &spec.to_xml())
            .map_err(|e| format!("--config {}: {e}", path.display()))?;
        // Written beside and renamed over, so a cluster starting the domain meanwhile reads the
        // old file or the new one, never half of one.
        let tmp = path.with_extension("appmon-tmp");
        std::fs::write(&tmp, updated)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("--config {}: {e}", path.display()))
    });
    match result {
        Ok(()) => {
            let _ = writeln!(
                out,
                "{}: monitoring written into {}; it applies when the cluster next starts the domain",
                escape(&args.domain),
                path.display()
            );
            0
        }
        Err(e) => {
            let _ = writeln!(err, "appmonctl: {e}");
            EXIT_FAILED
        }
    }
}

/// Runs one command; returns the exit code. Output goes to `out`, errors to `err`.
pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let request = match &cli.command {
        Command::Run(args) => return run::run(&cli.socket, args, out, err),
        Command::Ps { domain } => Request::Processes {
            domain: domain.clone(),
        },
        Command::Kill { domain, id, signal } => Request::Signal {
            domain: domain.clone(),
            id: id.clone(),
            signal: signal.unwrap_or(libc::SIGTERM),
        },
        Command::List => Request::List,
        Command::Show { domain } => Request::Show {
            domain: domain.clone(),
        },
        Command::Clear { domain } => Request::Clear {
            domain: domain.clone(),
        },
        Command::Disable { domain } => Request::Disable {
            domain: domain.clone(),
        },
        Command::Counters { domain, entity } => Request::Counters {
            domain: domain.clone(),
            entity: entity.clone(),
        },
        Command::Enable(args) if args.config.is_some() => return enable_in_file(args, out, err),
        Command::Alarms { domain } => Request::Alarms {
            domain: domain.clone(),
        },
        Command::AlarmSet(a) => Request::AlarmSet {
            rule: AlarmRuleSpec {
                domain: a.domain.clone(),
                entity: a.entity.clone(),
                counter: a.counter.clone(),
                alarm_below: a.below,
                alarm_above: a.above,
                hysteresis: a.hysteresis,
            },
        },
        Command::AlarmRemove {
            entity,
            counter,
            domain,
        } => Request::AlarmRemove {
            domain: domain.clone(),
            entity: entity.clone(),
            counter: counter.clone(),
        },
        Command::Enable(args) => match args.spec() {
            Ok(spec) => Request::Enable {
                domain: args.domain.clone(),
                spec_xml: spec.to_xml(),
            },
            Err(e) => {
                let _ = writeln!(err, "appmonctl: {e}");
                return EXIT_USAGE;
            }
        },
    };
    let response = match control::call(&cli.socket, &request) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "appmonctl: {}", error_chain(&e));
            return match e {
                control::ControlError::Connect { .. } => EXIT_NO_DAEMON,
                _ => EXIT_FAILED,
            };
        }
    };
    let written = match &response {
        Response::Error { kind, message } => {
            let _ = writeln!(err, "appmonctl: {message}");
            return exit_code(*kind);
        }
        Response::Processes { processes } if cli.json => {
            write_json(out, &ProcessesDocument::new(processes.clone()))
        }
        Response::Processes { processes } => write_processes(out, processes),
        Response::Process { process } if cli.json => write_json(out, process),
        Response::Process { process } => {
            writeln!(out, "{}: {}", process.id, process.state)
        }
        Response::Output { .. } => Ok(()),
        Response::Done { message } => writeln!(out, "{message}"),
        Response::List { domains } if cli.json => {
            write_json(out, &ListDocument::new(domains.clone()))
        }
        Response::Show { domain } if cli.json => {
            write_json(out, &ShowDocument::new((**domain).clone()))
        }
        Response::Counters { counters } if cli.json => {
            write_json(out, &CountersDocument::new((**counters).clone()))
        }
        Response::Alarms { alarms } => {
            let written = if cli.json {
                write_json(out, &AlarmsDocument::new((**alarms).clone()))
            } else {
                write_alarms(out, alarms)
            };
            return match written {
                Err(_) => EXIT_FAILED,
                Ok(()) if alarms.raised.is_empty() => EXIT_OK,
                Ok(()) => EXIT_ALARM_RAISED,
            };
        }
        Response::List { domains } => write_list(out, domains),
        Response::Show { domain } => write_show(out, domain),
        Response::Counters { counters } => write_counters(out, counters),
    };
    match written {
        Ok(()) => EXIT_OK,
        Err(_) => EXIT_FAILED,
    }
}

/// The exit code of a control error.
pub fn exit_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::UnknownDomain | ErrorKind::UnknownEntity | ErrorKind::UnknownRule => {
            EXIT_UNKNOWN_DOMAIN
        }
        ErrorKind::BadRequest => EXIT_USAGE,
        ErrorKind::Libvirt
        | ErrorKind::NoSession
        | ErrorKind::GuestRefused
        | ErrorKind::StateWrite => EXIT_FAILED,
    }
}

/// `alarms`: the raised alarms, then the rules in force.
fn write_alarms(out: &mut dyn Write, a: &AlarmsView) -> std::io::Result<()> {
    let side = |s: AlarmSide| match s {
        AlarmSide::Below => "below",
        AlarmSide::Above => "above",
    };
    let number = |v: Option<f64>| v.map_or_else(|| "-".into(), format_value);
    if a.raised.is_empty() {
        writeln!(out, "no alarm raised")?;
    } else {
        writeln!(
            out,
            "{:<24} {:<20} {:<24} {:<6} THRESHOLD",
            "RAISED ON", "ENTITY", "COUNTER", "SIDE"
        )?;
        for r in &a.raised {
            writeln!(
                out,
                "{:<24} {:<20} {:<24} {:<6} {}",
                r.domain,
                r.entity,
                r.counter,
                side(r.side),
                format_value(r.threshold)
            )?;
        }
    }
    writeln!(out)?;
    if a.rules.is_empty() {
        return writeln!(out, "no alarm rule");
    }
    writeln!(
        out,
        "{:<10} {:<24} {:<20} {:<24} {:<10} {:<10} HYSTERESIS",
        "RULE FROM", "DOMAINS", "ENTITY", "COUNTER", "BELOW", "ABOVE"
    )?;
    for v in &a.rules {
        let r = &v.rule;
        writeln!(
            out,
            "{:<10} {:<24} {:<20} {:<24} {:<10} {:<10} {}",
            match v.origin {
                RuleOrigin::HostToml => "host.toml",
                RuleOrigin::RunTime => "run time",
            },
            escape(&r.domain),
            escape(&r.entity),
            escape(&r.counter),
            number(r.alarm_below),
            number(r.alarm_above),
            format_value(r.hysteresis)
        )?;
    }
    Ok(())
}

fn write_processes(out: &mut dyn Write, processes: &[ProcessView]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<32} {:<10} {:<24} COMMAND",
        "ID", "STATE", "USER", "STARTED"
    )?;
    for p in processes {
        let started = if p.started_unix_ms == 0 {
            "-".to_owned()
        } else {
            format_unix_ms(p.started_unix_ms)
        };
        writeln!(
            out,
            "{:<24} {:<32} {:<10} {:<24} {}",
            p.id,
            p.state.to_string(),
            p.user,
            started,
            p.command
        )?;
    }
    Ok(())
}

/// A versioned document of `appmon-control`, pretty-printed.
fn write_json(out: &mut dyn Write, doc: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, doc).map_err(std::io::Error::other)?;
    writeln!(out)
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{}s", ms / 1000),
    }
}

/// The line `list` and `show` print while the host agent has no connection to libvirt.
fn libvirt_lost_line(lost: &appmon_control::LibvirtLost) -> String {
    format!(
        "libvirt:         UNREACHABLE since {} ({}): nothing is judged or reset until it is back",
        format_unix_ms(lost.since_unix_ms),
        lost.reason
    )
}

fn write_list(out: &mut dyn Write, domains: &[VmView]) -> std::io::Result<()> {
    if let Some(lost) = domains.first().and_then(|d| d.libvirt_lost.as_ref()) {
        writeln!(out, "{}", libvirt_lost_line(lost))?;
    }
    writeln!(
        out,
        "{:<24} {:<9} {:<6} {:<10} {:<7} {:<9} {:<8} STATE",
        "DOMAIN", "MONITORED", "STATUS", "HEARTBEAT", "RESETS", "ALARM", "GUEST"
    )?;
    for d in domains {
        let monitored = match (&d.spec_error, d.monitored) {
            (Some(_), _) => "broken",
            (None, true) => "yes",
            (None, false) => "no",
        };
        let resets = match &d.policy {
            Some(p) => format!("{}/{}", d.resets_in_window, p.max_resets),
            None => "-".into(),
        };
        writeln!(
            out,
            "{:<24} {:<9} {:<6} {:<10} {:<7} {:<9} {:<8} {}",
            d.name,
            monitored,
            d.status.map_or("-", |s| s.as_str()),
            age(d.last_heartbeat_age_ms),
            resets,
            if d.gave_up { "GAVE-UP" } else { "-" },
            if d.connected { "up" } else { "down" },
            d.domain_state
        )?;
    }
    Ok(())
}

fn write_show(out: &mut dyn Write, d: &VmView) -> std::io::Result<()> {
    writeln!(out, "domain:          {} ({})", d.name, d.uuid)?;
    writeln!(out, "state:           {}", d.domain_state)?;
    if let Some(lost) = &d.libvirt_lost {
        writeln!(out, "{}", libvirt_lost_line(lost))?;
    }
    writeln!(out, "monitored:       {}", d.monitored)?;
    if let Some(e) = &d.spec_error {
        writeln!(out, "metadata error:  {e}")?;
    }
    if let Some(p) = &d.policy {
        writeln!(
            out,
            "policy:          failure interval {} ms, min uptime {} ms, max {} resets per {} ms, method {}, channel timeout {} ms",
            p.failure_interval_ms, p.min_uptime_ms, p.max_resets, p.reset_window_ms, p.reset_method, p.channel_timeout_ms
        )?;
    }
    writeln!(
        out,
        "transport:       {}",
        d.transport.as_deref().unwrap_or("-")
    )?;
    let judged = match (d.status, d.domain_state) {
        (None, _) | (_, appmon_control::DomainState::Running(_)) => "",
        (Some(_), _) if d.libvirt_lost.is_some() => " (not judged while libvirt is away)",
        (Some(_), _) => " (not judged: the domain is not running)",
    };
    writeln!(
        out,
        "status:          {}{judged}",
        d.status.map_or("-", |s| s.as_str())
    )?;
    writeln!(out, "enabled:         {}", d.enabled)?;
    write!(out, "last heartbeat:  {} ago", age(d.last_heartbeat_age_ms))?;
    match d.claimed_heartbeat_age_ms {
        Some(claimed) => writeln!(out, " (the guest claims {} ago)", age(Some(claimed)))?,
        None => writeln!(out)?,
    }
    writeln!(out, "resets:          {} in window", d.resets_in_window)?;
    writeln!(
        out,
        "alarm:           {}",
        d.alarm.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "guest:           {}{}",
        if d.connected {
            "connected"
        } else {
            "not connected"
        },
        d.guest_boot_id
            .as_ref()
            .map(|b| format!(", boot id {b}"))
            .unwrap_or_default()
    )?;
    if let Some(f) = &d.connect_failure {
        writeln!(
            out,
            "                 no session: {} (at {}, {} {} since {})",
            f.reason,
            format_unix_ms(f.last_unix_ms),
            f.times,
            if f.times == 1 { "time" } else { "times" },
            format_unix_ms(f.first_unix_ms)
        )?;
    }
    if !d.monitors.is_empty() {
        writeln!(out, "monitors:")?;
        for m in &d.monitors {
            writeln!(
                out,
                "  {:<16} {:<16} {:<8} restarts {}/{} action {}{}",
                m.name,
                m.application,
                m.phase.as_str(),
                m.restarts,
                m.restart_count,
                m.failure_action.as_str(),
                m.last_failure
                    .as_ref()
                    .map(|f| format!(", last failure: {f}"))
                    .unwrap_or_default()
            )?;
        }
    }
    if !d.applications.is_empty() {
        writeln!(out, "applications:")?;
        for a in &d.applications {
            let state = match (&a.process, a.pid, a.gave_up) {
                (_, _, true) => "gave up".to_owned(),
                (Some(p), Some(pid), _) => format!("{p} running (pid {pid})"),
                _ => "not running".to_owned(),
            };
            writeln!(
                out,
                "  {:<16} {} restarts {}/{} per {} ms, then {}: {}",
                a.name,
                a.argv.join(" "),
                a.restarts_in_window,
                a.max_restarts,
                a.restart_window_ms,
                a.on_failure,
                state
            )?;
        }
    }
    if !d.processes.is_empty() {
        writeln!(out, "processes:")?;
        for p in &d.processes {
            writeln!(out, "  {:<24} {} ({})", p.id, p.state, p.command)?;
        }
    }
    writeln!(out, "history:")?;
    for h in &d.history {
        writeln!(
            out,
            "  {}  {:<5} {:<8} {}",
            format_unix_ms(h.unix_ms),
            h.level,
            h.kind.name(),
            h.text
        )?;
    }
    Ok(())
}

/// One line per counter: entity, name, latest value with its units, its age at the host and
/// its description. Everything but the domain comes from the guest and is escaped.
fn write_counters(out: &mut dyn Write, c: &CountersView) -> std::io::Result<()> {
    let shown = |s: &str| escape(s).into_owned();
    let state = match c.generation {
        Some(g) => format!("schema generation {g}"),
        None if c.entities.is_empty() => "no counters from the guest agent yet".into(),
        None => {
            "the guest agent's current session has sent no schema yet; last known values".into()
        }
    };
    writeln!(
        out,
        "{}: {state}, {} frames refused",
        c.domain, c.refused_frames
    )?;
    if c.entities.is_empty() {
        return Ok(());
    }
    let now = crate::persist::unix_ms_now();
    let rows: Vec<[String; 5]> = c
        .entities
        .iter()
        .flat_map(|e| e.counters.iter().map(move |k| (e, k)))
        .map(|(e, k)| {
            let value = match k.value {
                Some(v) if k.units.is_empty() => format_value(v),
                Some(v) => format!("{} {}", format_value(v), shown(&k.units)),
                None => "-".into(),
            };
            let age = age(k.unix_ms.map(|at| now.saturating_sub(at)));
            [
                shown(&e.name),
                shown(&k.name),
                value,
                age,
                shown(&k.description),
            ]
        })
        .collect();
    let width = |i: usize, head: &str| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head.len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2, w3) = (
        width(0, "ENTITY"),
        width(1, "COUNTER"),
        width(2, "VALUE"),
        width(3, "AGE"),
    );
    writeln!(
        out,
        "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  DESCRIPTION",
        "ENTITY", "COUNTER", "VALUE", "AGE"
    )?;
    for [entity, name, value, age, desc] in &rows {
        writeln!(
            out,
            "{entity:<w0$}  {name:<w1$}  {value:>w2$}  {age:>w3$}  {desc}"
        )?;
    }
    Ok(())
}

/// A value as an operator reads it: integers without a fraction, others to 2 decimals.
fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// `2026-01-02T03:04:05.678Z`.
pub fn format_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_iso() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_unix_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn enable_options_make_a_spec() {
        let cli = Cli::try_parse_from([
            "appmonctl",
            "enable",
            "vm1",
            "--failure-interval",
            "1s",
            "--max-resets",
            "2",
            "--reset-method",
            "power-cycle",
            "--vsock-uds",
            "/run/vm1.vsock",
        ])
        .expect("valid");
        let Command::Enable(args) = cli.command else {
            panic!("not enable");
        };
        let spec = args.spec().expect("spec");
        assert_eq!(spec.failure_interval, Some(Duration::from_secs(1)));
        assert_eq!(spec.reset_method, Some(ResetMethod::PowerCycle));
        assert_eq!(
            spec.transport,
            Transport::HybridVsock {
                path: "/run/vm1.vsock".into(),
                port: DEFAULT_VSOCK_PORT
            }
        );
    }

    #[test]
    fn enable_needs_exactly_one_transport() {
        assert!(Cli::try_parse_from(["appmonctl", "enable", "vm1"]).is_err());
        assert!(Cli::try_parse_from([
            "appmonctl",
            "enable",
            "vm1",
            "--cid",
            "5",
            "--channel",
            "/x"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "appmonctl",
            "enable",
            "vm1",
            "--failure-interval",
            "soon",
            "--cid",
            "5"
        ])
        .is_err());
    }

    #[test]
    fn cluster_resource_goes_into_the_spec_and_must_be_a_resource_id() {
        let cli = Cli::try_parse_from([
            "appmonctl",
            "enable",
            "vm1",
            "--cid",
            "5",
            "--cluster-resource",
            "vm_vm1",
        ])
        .unwrap();
        let Command::Enable(args) = cli.command else {
            panic!("not enable");
        };
        let spec = args.spec().unwrap();
        assert_eq!(spec.cluster_resource.as_deref(), Some("vm_vm1"));
        assert!(spec
            .to_xml()
            .contains("<appmon:cluster resource=\"vm_vm1\"/>"));
        for bad in ["--force", "1vm", "vm 1", ""] {
            assert!(
                Cli::try_parse_from([
                    "appmonctl",
                    "enable",
                    "vm1",
                    "--cid",
                    "5",
                    "--cluster-resource",
                    bad
                ])
                .is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn enable_with_config_writes_the_file_and_not_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vm1.xml");
        std::fs::write(&file, "<domain type='qemu'><name>vm1</name></domain>").unwrap();
        let file_arg = file.to_string_lossy().into_owned();
        let cli = Cli::try_parse_from([
            "appmonctl",
            "--socket",
            "/nonexistent/host.sock",
            "enable",
            "vm1",
            "--cid",
            "5",
            "--cluster-resource",
            "vm_vm1",
            "--config",
            &file_arg,
        ])
        .unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            run(&cli, &mut out, &mut err),
            0,
            "{}",
            String::from_utf8_lossy(&err)
        );
        let xml = std::fs::read_to_string(&file).unwrap();
        assert!(
            xml.contains("<appmon:cluster resource=\"vm_vm1\"/>"),
            "{xml}"
        );

        // Another domain's file is refused and left as it was.
        let cli = Cli::try_parse_from([
            "appmonctl",
            "enable",
            "vm2",
            "--cid",
            "5",
            "--config",
            &file_arg,
        ])
        .unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run(&cli, &mut out, &mut err), EXIT_FAILED);
        assert!(String::from_utf8_lossy(&err).contains("not \"vm2\""));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), xml);
    }

    fn counters_view(name: &str, value: Option<f64>) -> CountersView {
        CountersView {
            domain: "vm1".into(),
            generation: Some(1),
            refused_frames: 0,
            entities: vec![appmon_control::EntityView {
                name: "Demo".into(),
                counters: vec![appmon_control::CounterView {
                    name: name.into(),
                    description: "Requests\x1b[2J served".into(),
                    units: "#".into(),
                    kind: String::new(),
                    pace_ms: 1000,
                    range_lower: None,
                    range_upper: None,
                    value,
                    unix_ms: value.map(|_| crate::persist::unix_ms_now()),
                }],
            }],
        }
    }

    #[test]
    fn counters_text_shows_latest_values_with_units() {
        let mut out = Vec::new();

        write_counters(&mut out, &counters_view("requests", Some(42.0))).expect("written");

        let text = String::from_utf8(out).expect("utf-8");
        let line = text
            .lines()
            .find(|l| l.starts_with("Demo"))
            .expect("a line of the counter");
        assert!(line.contains("requests"), "{text}");
        assert!(line.contains("42 #"), "{text}");
        assert!(text.starts_with("vm1: schema generation 1"), "{text}");
    }

    #[test]
    fn counters_text_escapes_what_the_guest_named() {
        let mut out = Vec::new();

        write_counters(&mut out, &counters_view("forged\nvm1 OK\r", None)).expect("written");

        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().count(), 3, "no line forged: {text}");
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
        assert!(text.contains("forged\\nvm1 OK\\r"), "{text}");
    }

    #[test]
    fn unreachable_daemon_has_its_own_exit_code() {
        let cli =
            Cli::try_parse_from(["appmonctl", "--socket", "/nonexistent/appmon.sock", "list"])
                .expect("valid");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run(&cli, &mut out, &mut err), EXIT_NO_DAEMON);
        assert!(String::from_utf8_lossy(&err).contains("/nonexistent/appmon.sock"));
    }
}
