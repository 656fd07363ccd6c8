//! `/etc/appmon/host.toml`: the host agent's settings and the host-wide policy defaults.
//!
//! Every key is optional; unknown keys are errors. Durations are written `500ms`, `30s`, `2m`,
//! `1h` or as a number of seconds. A parse error names the file, the line and the key.
//!
//! ```toml
//! uri = "qemu:///system"
//! state_dir = "/var/lib/appmon"
//! control_socket = "/run/appmon/host.sock"
//! domains = ["*"]            # glob patterns (`*`, `?`) of domain names this agent manages
//! channel_timeout = "60s"    # after a reset/reboot, wait this long for the guest channel
//! ping_interval = "5s"       # keepalive; a guest silent for dead_after_pings intervals is dead
//! dead_after_pings = 3
//! hello_timeout = "10s"      # a guest that has not said Hello by then is dropped
//! reconnect_max = "5s"       # longest backoff between connection attempts
//! libvirt_reconnect_max = "10s" # longest wait between attempts to reach a lost libvirtd
//! dial_after = "10s"         # no announcement by then: dial the guest agent (protocol 1)
//! history_len = 200          # events kept per VM for `appmonctl show`
//! scheduling_pause = "1s"    # not scheduled this long: a pause of the host agent, not silence
//!
//! [defaults]                 # vSphere's; each can be overridden in a domain's metadata
//! failure_interval = "30s"
//! min_uptime = "120s"
//! max_resets = 3
//! reset_window = "1h"
//! reset_method = "reset"     # or "power-cycle"
//!
//! [session]                  # per-guest bounds against a hostile guest
//! max_frame = 65536          # bytes of one encoded frame
//! read_buffer = 256          # initial read buffer capacity
//! frames_per_second = 50     # token bucket rate; running out ends the session
//! burst = 200                # token bucket size
//! write_timeout = "5s"       # a guest that does not read this long is dropped
//!
//! [mon]                      # MON's HTTP service (/monapi); off without `listen`
//! listen = "127.0.0.1:8315"  # loopback unless you mean otherwise
//! user = "mon"               # HTTP basic auth for /monapi; off without a user
//! password = "secret"
//! title = "appmon"           # the seed's title of the service
//! render_cache = true        # keep rendered /monapi answers until the counters change
//!
//! [[mon.alarm]]              # MON's alarm view: thresholds judged on every value
//! domain = "web-*"           # a glob of domain names (default "*")
//! entity = "Demo"
//! counter = "requests"
//! alarm_above = 100          # and/or alarm_below
//! hysteresis = 5             # an above alarm clears at 95 or lower
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use appmon_libvirt_backend::spec::{format_duration, parse_duration};
use appmon_libvirt_backend::{MonitorSpec, ResetMethod};
use appmon_wire::report::{locate, TextPosition};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::policy::Policy;

/// The default place of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/appmon/host.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {key}{message}")]
    Parse {
        file: PathBuf,
        line: usize,
        column: usize,
        /// `key `x`: ` when the error is about one key, else empty.
        key: String,
        message: String,
    },
    #[error("{file}: [[mon.alarm]] number {index} ({entity} / {counter}): {message}")]
    Alarm {
        file: PathBuf,
        index: usize,
        entity: String,
        counter: String,
        message: String,
    },
    #[error("{file}: key `{key}`: {problem}")]
    Invalid {
        file: PathBuf,
        key: &'static str,
        problem: &'static str,
    },
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub uri: String,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub domains: Vec<String>,
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub channel_timeout: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub ping_interval: Duration,
    pub dead_after_pings: u32,
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub hello_timeout: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub reconnect_max: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub libvirt_reconnect_max: Duration,
    /// A guest agent that has not announced itself this long after its VM's listener started
    /// is dialed (it speaks protocol 1); never between a reset or reboot and an announcement.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub dial_after: Duration,
    pub history_len: usize,
    /// The host agent's own loop woke this much later than it planned: it was not scheduled
    /// (stopped, a host under memory pressure, a stalled disk). The gap is not judged as
    /// silence: every VM's failure clock restarts from the wake.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub scheduling_pause: Duration,
    pub defaults: Defaults,
    pub session: SessionLimits,
    pub mon: MonConfig,
}

/// MON's HTTP service and alarm view.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonConfig {
    /// Where to listen; `None`: the service is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// HTTP basic auth for `/monapi` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub title: String,
    /// Keep rendered `/monapi` answers until the counters change (`crate::mon::cache`); off
    /// only to measure what it saves.
    pub render_cache: bool,
    /// `[[mon.alarm]]`: MON's alarm view.
    #[serde(rename = "alarm", skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<AlarmRuleConfig>,
}

/// One `[[mon.alarm]]`: thresholds on a counter of the domains `domain` (a glob) matches; the
/// control schema's type, so that a rule set at run time is the same thing.
pub use appmon_control::AlarmRuleSpec as AlarmRuleConfig;

/// The threshold `rule` describes, checked.
pub fn threshold_of(rule: &AlarmRuleConfig) -> Result<Threshold, ThresholdError> {
    Threshold::new(rule.alarm_below, rule.alarm_above, rule.hysteresis)
}

impl Default for MonConfig {
    fn default() -> Self {
        MonConfig {
            listen: None,
            user: None,
            password: None,
            title: "appmon".into(),
            render_cache: true,
            alarms: Vec::new(),
        }
    }
}

/// Host-wide policy defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub failure_interval: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub min_uptime: Duration,
    pub max_resets: u32,
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub reset_window: Duration,
    #[serde(deserialize_with = "reset_method")]
    pub reset_method: ResetMethod,
}

/// Per-session bounds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionLimits {
    pub max_frame: usize,
    pub read_buffer: usize,
    pub frames_per_second: u32,
    pub burst: u32,
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub write_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            uri: "qemu:///system".into(),
            state_dir: "/var/lib/appmon".into(),
            control_socket: "/run/appmon/host.sock".into(),
            domains: vec!["*".into()],
            channel_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(5),
            dead_after_pings: 3,
            hello_timeout: Duration::from_secs(10),
            reconnect_max: Duration::from_secs(5),
            libvirt_reconnect_max: Duration::from_secs(10),
            dial_after: Duration::from_secs(10),
            history_len: 200,
            scheduling_pause: Duration::from_secs(1),
            defaults: Defaults::default(),
            session: SessionLimits::default(),
            mon: MonConfig::default(),
        }
    }
}

impl Default for Defaults {
    fn default() -> Self {
        let p = Policy::default();
        Defaults {
            failure_interval: p.failure_interval,
            min_uptime: p.min_uptime,
            max_resets: p.max_resets,
            reset_window: p.reset_window,
            reset_method: p.reset_method,
        }
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_frame: appmon_wire::MAX_FRAME_LEN,
            read_buffer: 256,
            frames_per_second: 50,
            burst: 200,
            write_timeout: Duration::from_secs(5),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{t:?} is not a duration (write 500ms, 30s, 2m, 1h or a number of seconds)"
            ))
        }),
    }
}

fn write_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn reset_method<'de, D: Deserializer<'de>>(d: D) -> Result<ResetMethod, D::Error> {
    let text = String::deserialize(d)?;
    ResetMethod::parse(&text)
        .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not reset or power-cycle")))
}

impl Config {
    /// Reads and checks the file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::parse(&text, file)
    }

    /// Parses `text`; `file` is for error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let TextPosition { line, column, key } = locate(text, e.span().map_or(0, |s| s.start));
            ConfigError::Parse {
                file: file.to_path_buf(),
                line,
                column,
                key: key.map(|k| format!("key `{k}`: ")).unwrap_or_default(),
                message: e.message().trim_end().to_string(),
            }
        })?;
        config.check(file)?;
        Ok(config)
    }

    fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key, problem| {
            Err(ConfigError::Invalid {
                file: file.to_path_buf(),
                key,
                problem,
            })
        };
        if self.defaults.failure_interval.is_zero() {
            return invalid("defaults.failure_interval", "must be more than zero");
        }
        if self.defaults.reset_window.is_zero() {
            return invalid("defaults.reset_window", "must be more than zero");
        }
        if self.ping_interval.is_zero() {
            return invalid("ping_interval", "must be more than zero");
        }
        if self.dead_after_pings == 0 {
            return invalid("dead_after_pings", "must be at least 1");
        }
        if self.hello_timeout.is_zero() {
            return invalid("hello_timeout", "must be more than zero");
        }
        if self.scheduling_pause < Duration::from_millis(100) {
            return invalid(
                "scheduling_pause",
                "must be at least 100ms (shorter delays are ordinary scheduling)",
            );
        }
        if self.libvirt_reconnect_max < Duration::from_millis(500) {
            return invalid(
                "libvirt_reconnect_max",
                "must be at least 500ms (the first retry comes after 500ms)",
            );
        }
        if self.session.max_frame < 64 {
            return invalid("session.max_frame", "must be at least 64 bytes");
        }
        if self.session.frames_per_second == 0 || self.session.burst == 0 {
            return invalid(
                "session.frames_per_second",
                "rate and burst must be at least 1",
            );
        }
        if self.session.write_timeout.is_zero() {
            return invalid("session.write_timeout", "must be more than zero");
        }
        if self.uri.is_empty() {
            return invalid("uri", "must not be empty");
        }
        if self.mon.user.is_some() != self.mon.password.is_some() {
            return invalid("mon.user", "user and password go together");
        }
        for (i, rule) in self.mon.alarms.iter().enumerate() {
            if let Err(e) = threshold_of(rule) {
                return Err(ConfigError::Alarm {
                    file: file.to_path_buf(),
                    index: i + 1,
                    entity: rule.entity.clone(),
                    counter: rule.counter.clone(),
                    message: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The file that [`Config::parse`] reads back as this configuration (durations in their
    /// largest exact unit). For tools that write a host agent's configuration, such as the VM
    /// tests.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Whether this agent manages the domain named `name`.
    pub fn manages(&self, name: &str) -> bool {
        self.domains.iter().any(|p| glob_match(p, name))
    }

    /// A domain's effective policy: its spec's overrides on the host defaults.
    pub fn policy_for(&self, spec: &MonitorSpec) -> Policy {
        let d = &self.defaults;
        Policy {
            failure_interval: spec.failure_interval.unwrap_or(d.failure_interval),
            min_uptime: spec.min_uptime.unwrap_or(d.min_uptime),
            max_resets: spec.max_resets.unwrap_or(d.max_resets),
            reset_window: spec.reset_window.unwrap_or(d.reset_window),
            reset_method: spec.reset_method.unwrap_or(d.reset_method),
            channel_timeout: self.channel_timeout,
            cluster_resource: spec.cluster_resource.clone(),
        }
    }
}

/// Shell-style matching of `*` (any run) and `?` (any one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/appmon/host.toml"))
    }

    #[test]
    fn mon_section_and_alarm_rules_parse_and_bad_ones_name_the_rule() {
        let good = parse(
            "[mon]\nlisten = \"127.0.0.1:8315\"\n[[mon.alarm]]\nentity = \"CPU\"\n\
             counter = \"CPU Total\"\nalarm_above = 90\nhysteresis = 5\n",
        )
        .expect("valid");
        let overlap = parse(
            "[[mon.alarm]]\nentity = \"CPU\"\ncounter = \"CPU Total\"\n\
             alarm_below = 10\nalarm_above = 12\nhysteresis = 2\n",
        );
        let lonely_user = parse("[mon]\nuser = \"mon\"\n");

        assert_eq!(
            good.mon.listen,
            Some("127.0.0.1:8315".parse().expect("addr"))
        );
        assert_eq!(good.mon.alarms[0].domain, "*");
        assert_eq!(
            threshold_of(&good.mon.alarms[0]).map(|t| t.above()),
            Ok(Some(90.0))
        );
        let message = overlap.expect_err("overlapping bands").to_string();
        assert!(
            message.contains("[[mon.alarm]] number 1 (CPU / CPU Total)")
                && message.contains("overlap"),
            "{message}"
        );
        assert!(lonely_user.is_err());
    }

    #[test]
    fn empty_file_gives_vsphere_defaults() {
        let c = parse("").expect("empty is valid");
        assert_eq!(c, Config::default());
        assert_eq!(c.defaults.failure_interval, Duration::from_secs(30));
        assert_eq!(c.defaults.min_uptime, Duration::from_secs(120));
        assert_eq!(c.defaults.max_resets, 3);
        assert_eq!(c.defaults.reset_window, Duration::from_secs(3600));
        assert_eq!(c.defaults.reset_method, ResetMethod::Reset);
    }

    #[test]
    fn every_key_parses() {
        let c = parse(
            r#"
uri = "test:///default"
state_dir = "/tmp/s"
control_socket = "/tmp/c.sock"
domains = ["appmon-*", "db?"]
channel_timeout = "2s"
ping_interval = 1
dead_after_pings = 4
hello_timeout = "500ms"
reconnect_max = "1m"
libvirt_reconnect_max = "30s"
history_len = 10

[defaults]
failure_interval = "1s"
min_uptime = "0s"
max_resets = 5
reset_window = "2h"
reset_method = "power-cycle"

[session]
max_frame = 4096
read_buffer = 64
frames_per_second = 10
burst = 20
write_timeout = "1s"
"#,
        )
        .expect("valid");
        assert_eq!(c.uri, "test:///default");
        assert_eq!(c.ping_interval, Duration::from_secs(1));
        assert_eq!(c.hello_timeout, Duration::from_millis(500));
        assert_eq!(c.defaults.reset_method, ResetMethod::PowerCycle);
        assert_eq!(c.defaults.reset_window, Duration::from_secs(7200));
        assert_eq!(c.session.burst, 20);
        assert_eq!(c.libvirt_reconnect_max, Duration::from_secs(30));
        assert!(c.manages("appmon-web1") && c.manages("db1") && !c.manages("db12"));
    }

    #[test]
    fn written_configuration_reads_back_the_same() {
        let mut c = Config {
            uri: "qemu:///system".into(),
            domains: vec!["a\"b".into(), "vm-*".into()],
            channel_timeout: Duration::from_millis(1500),
            ..Config::default()
        };
        c.defaults.reset_method = ResetMethod::PowerCycle;
        c.defaults.min_uptime = Duration::ZERO;

        let text = c.to_toml().expect("serialises");

        assert_eq!(parse(&text).expect("reads back"), c, "{text}");
        assert!(text.contains("channel_timeout = \"1500ms\""), "{text}");
        assert!(text.contains("reset_method = \"power-cycle\""), "{text}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            (
                "uri = \"x\"\nping_interval = \"soon\"\n",
                2,
                "ping_interval",
            ),
            ("\n\n[defaults]\nmax_resets = -1\n", 4, "max_resets"),
            ("[defaults]\nreset_method = \"reboot\"\n", 2, "reset_method"),
            ("colour = \"red\"\n", 1, "colour"),
            ("[session]\nburst = \"x\"\n", 2, "burst"),
        ];
        for (text, line, key) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(
                err.starts_with(&format!("/etc/appmon/host.toml:{line}:")),
                "{text:?}: {err}"
            );
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let err = parse("[defaults]\nfailure_interval = \"0s\"\n")
            .expect_err("zero")
            .to_string();
        assert!(err.contains("defaults.failure_interval"), "{err}");
        let err = parse("ping_interval = 0\n").expect_err("zero").to_string();
        assert!(err.contains("ping_interval"), "{err}");
    }

    #[test]
    fn spec_overrides_defaults() {
        let c = Config::default();
        let mut spec = MonitorSpec::with_transport(appmon_libvirt_backend::Transport::Vsock {
            cid: Some(3),
            port: 1,
        });
        spec.max_resets = Some(7);
        spec.failure_interval = Some(Duration::from_secs(1));
        let p = c.policy_for(&spec);
        assert_eq!(p.max_resets, 7);
        assert_eq!(p.failure_interval, Duration::from_secs(1));
        assert_eq!(p.min_uptime, Duration::from_secs(120));
    }

    #[test]
    fn globs_match_like_a_shell() {
        for (p, n, m) in [
            ("*", "", true),
            ("*", "x", true),
            ("a*b", "ab", true),
            ("a*b", "axxb", true),
            ("a*b", "axxbc", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*-test-*", "vm-test-1", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(p, n), m, "{p} {n}");
        }
    }
}

/// Why a threshold cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ThresholdError {
    #[error("neither alarm_below nor alarm_above is set")]
    Empty,
    #[error("hysteresis {0} is negative or not a number")]
    BadHysteresis(f64),
    #[error("a threshold is not a number")]
    NotANumber,
    #[error(
        "the bands overlap: alarm_below {below} + hysteresis must stay under alarm_above {above} - hysteresis"
    )]
    Overlap { below: f64, above: f64 },
}

/// A counter's thresholds in MON's alarm view (the machine: [`crate::mon::alarms`]): the
/// above alarm clears at `alarm_above - hysteresis`, the below alarm at `alarm_below +
/// hysteresis`, and the two bands may not overlap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub(crate) below: Option<f64>,
    pub(crate) above: Option<f64>,
    pub(crate) hysteresis: f64,
}

impl Threshold {
    pub fn new(
        below: Option<f64>,
        above: Option<f64>,
        hysteresis: f64,
    ) -> Result<Threshold, ThresholdError> {
        if below.is_none() && above.is_none() {
            return Err(ThresholdError::Empty);
        }
        if !(hysteresis >= 0.0 && hysteresis.is_finite()) {
            return Err(ThresholdError::BadHysteresis(hysteresis));
        }
        if below.is_some_and(|b| !b.is_finite()) || above.is_some_and(|a| !a.is_finite()) {
            return Err(ThresholdError::NotANumber);
        }
        if let (Some(below), Some(above)) = (below, above) {
            if below + hysteresis >= above - hysteresis {
                return Err(ThresholdError::Overlap { below, above });
            }
        }
        Ok(Threshold {
            below,
            above,
            hysteresis,
        })
    }

    pub fn below(&self) -> Option<f64> {
        self.below
    }

    pub fn above(&self) -> Option<f64> {
        self.above
    }
}
