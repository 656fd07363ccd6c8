//! `/etc/appmon/guest.toml`: which host transports to serve, the local API socket, and the
//! agent's own policy knobs.
//!
//! Every key is optional; an empty file (or none at the default path) is the default
//! configuration. Unknown keys are errors, and every error names the file, the line and the key,
//! because the one reading it is an operator with an editor open on that file.
//!
//! ```toml
//! vsock = true                                  # listen on AF_VSOCK
//! port = 5315                                   # AF_VSOCK port
//! virtio_serial = "org.appmon.0"                # /dev/virtio-ports/<name>, or a full path
//! host_unix_socket = "/run/appmon/host.sock"    # host listener on a Unix socket (dev, tests)
//! socket = "/run/appmon/appmon.sock"            # local API for applications
//! socket_mode = 0o660
//! socket_group = "appmon"                       # name or numeric gid
//! reenable_heartbeat_window = 30                # seconds
//! log_level = "info"
//!
//! [processes]                                   # what the host may launch: processes::allowlist
//! max = 30
//! [[processes.allow]]
//! command = "/usr/sbin/mydb"
//! args = ["--config", "/etc/mydb/*.conf"]
//! [counters]                                    # see crate::counters::CountersConfig
//! enabled = true
//! pace_ms = 5000                                # the standard counters' pace
//! ccad_conf = "/etc/ccad.conf"                  # custom counters
//! [[monitor]]                                   # application monitors: crate::monitors::config
//! name = "web"
//! kind = "process"
//! process = "httpd"
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::monitors::config::MonitorConfig;
use crate::processes::allowlist::ProcessesConfig;

/// Where the daemon reads its configuration unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/appmon/guest.toml";
/// Where the local API socket lives unless `socket` says otherwise.
pub const DEFAULT_API_SOCKET: &str = "/run/appmon/appmon.sock";
/// Where `virtio_serial = "<name>"` ports live (udev's names for virtio-serial ports).
pub const VIRTIO_PORTS_DIR: &str = "/dev/virtio-ports";

pub use crate::config_base::ConfigError;
use crate::config_base::{parse_error, seconds};

/// The guest agent's configuration, as read from TOML.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen for the host on AF_VSOCK (any CID) at `port`.
    pub vsock: bool,
    /// The AF_VSOCK port.
    #[serde(deserialize_with = "port")]
    pub port: u32,
    /// A virtio-serial port to serve the host on, when the host has no vsock.
    #[serde(deserialize_with = "serial_path")]
    pub virtio_serial: Option<PathBuf>,
    /// A Unix socket to listen for the host on, exactly like the vsock listener: for
    /// development and tests on machines where AF_VSOCK is off limits.
    pub host_unix_socket: Option<PathBuf>,
    /// The local API socket applications and the `appmon` CLI use.
    pub socket: PathBuf,
    /// Permission bits of the local API socket.
    #[serde(deserialize_with = "mode")]
    pub socket_mode: u32,
    /// Group that owns the local API socket (name or numeric gid); unset keeps the daemon's.
    pub socket_group: Option<String>,
    /// After the host says Gray, the agent re-enables on its own and sends a heartbeat only if
    /// the application's own last heartbeat is younger than this.
    #[serde(deserialize_with = "seconds")]
    pub reenable_heartbeat_window: Duration,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: LogLevel,
    /// What the host may launch in this guest (`[processes]`, see [`crate::processes::allowlist`]).
    pub processes: ProcessesConfig,
    /// The `[counters]` table: standard and custom counters.
    pub counters: crate::counters::CountersConfig,
    /// Application monitors, the `[[monitor]]` tables ([`crate::monitors::config`]).
    #[serde(rename = "monitor")]
    pub monitors: Vec<MonitorConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vsock: true,
            port: appmon_wire::DEFAULT_VSOCK_PORT,
            virtio_serial: None,
            host_unix_socket: None,
            socket: PathBuf::from(DEFAULT_API_SOCKET),
            socket_mode: 0o660,
            socket_group: None,
            reenable_heartbeat_window: Duration::from_secs(30),
            log_level: LogLevel::Info,
            processes: ProcessesConfig::default(),
            counters: crate::counters::CountersConfig::default(),
            monitors: Vec::new(),
        }
    }
}

/// How much the daemon logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_tracing(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

impl Config {
    /// Reads and checks the file at `path`, and what it names: the monitors' commands must
    /// exist and their owners be known.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        crate::monitors::config::resolve(&mut config.monitors, &text, path)?;
        Ok(config)
    }

    /// Reads the file at `path` if it exists; a missing file is the default configuration.
    /// For the default path only: a path the operator named must exist.
    pub fn load_or_default(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            _ => Config::load(path),
        }
    }

    /// Parses `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            parse_error(text, path, offset, e.message().trim_end().to_owned())
        })?;
        crate::monitors::config::validate(&config.monitors, text, path)?;
        if !config.vsock && config.virtio_serial.is_none() && config.host_unix_socket.is_none() {
            return Err(ConfigError::NoHostTransport {
                path: path.to_owned(),
            });
        }
        Ok(config)
    }

    /// Whether the host-side listeners differ between `self` and `other`: a reload that
    /// changes them restarts the listeners; one that does not keeps the host session.
    pub fn same_host_transports(&self, other: &Config) -> bool {
        self.vsock == other.vsock
            && self.port == other.port
            && self.virtio_serial == other.virtio_serial
            && self.host_unix_socket == other.host_unix_socket
    }

    /// Whether the local API socket must be bound anew.
    pub fn same_api_socket(&self, other: &Config) -> bool {
        self.socket == other.socket
    }
}

fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let port = i64::deserialize(d)?;
    match u32::try_from(port) {
        Ok(p) if p != 0 && p != u32::MAX => Ok(p),
        _ => Err(serde::de::Error::custom(format_args!(
            "vsock port {port} is out of range (1..=4294967294)"
        ))),
    }
}

fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let mode = i64::deserialize(d)?;
    match u32::try_from(mode) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(serde::de::Error::custom(format_args!(
            "{mode} is not a permission mode; write it in octal, like 0o660"
        ))),
    }
}

fn serial_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let name = String::deserialize(d)?;
    if name.is_empty() {
        return Err(serde::de::Error::custom(
            "an empty virtio-serial port name; leave the key out to use no port",
        ));
    }
    if name.contains('/') {
        Ok(Some(PathBuf::from(name)))
    } else {
        Ok(Some(Path::new(VIRTIO_PORTS_DIR).join(name)))
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_tracing(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/appmon/guest.toml"))
    }

    fn parse_error(text: &str) -> (usize, Option<String>, String) {
        match parse(text) {
            Err(ConfigError::Parse {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_the_default_configuration() {
        assert_eq!(parse("").expect("empty is valid"), Config::default());
    }

    #[test]
    fn default_listens_on_vsock_port_5315_and_the_run_socket() {
        let config = Config::default();
        assert!(config.vsock);
        assert_eq!(config.port, 5315);
        assert_eq!(config.socket, Path::new("/run/appmon/appmon.sock"));
        assert_eq!(config.reenable_heartbeat_window, Duration::from_secs(30));
    }

    #[test]
    fn the_rig_one_liner_parses() {
        let config = parse("port = 5315\n").expect("the rig's guest.toml");
        assert_eq!(config.port, 5315);
        assert!(config.vsock);
    }

    #[test]
    fn every_key_parses() {
        let config = parse(
            r#"
vsock = false
port = 6000
virtio_serial = "org.appmon.0"
host_unix_socket = "/tmp/host.sock"
socket = "/tmp/app.sock"
socket_mode = 0o600
socket_group = "appmon"
reenable_heartbeat_window = 10
log_level = "debug"

[counters]
enabled = false
pace_ms = 1000
ccad_conf = "/etc/appmon/ccad.conf"
"#,
        )
        .expect("valid");
        assert_eq!(
            config,
            Config {
                vsock: false,
                port: 6000,
                virtio_serial: Some(PathBuf::from("/dev/virtio-ports/org.appmon.0")),
                host_unix_socket: Some(PathBuf::from("/tmp/host.sock")),
                socket: PathBuf::from("/tmp/app.sock"),
                socket_mode: 0o600,
                socket_group: Some("appmon".into()),
                reenable_heartbeat_window: Duration::from_secs(10),
                log_level: LogLevel::Debug,
                processes: ProcessesConfig::default(),
                counters: crate::counters::CountersConfig {
                    enabled: false,
                    pace_ms: 1000,
                    ccad_conf: PathBuf::from("/etc/appmon/ccad.conf"),
                },
                monitors: Vec::new(),
            }
        );
    }

    #[test]
    fn virtio_serial_with_a_slash_is_a_path() {
        let config = parse("virtio_serial = \"/dev/vport0p1\"").expect("valid");
        assert_eq!(config.virtio_serial, Some(PathBuf::from("/dev/vport0p1")));
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let (line, key, message) = parse_error("port = 5315\n\nvsock_prot = 1\n");
        assert_eq!(line, 3);
        assert_eq!(key.as_deref(), Some("vsock_prot"));
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let (line, key, message) = parse_error("vsock = true\nport = \"high\"\n");
        assert_eq!(line, 2);
        assert_eq!(key.as_deref(), Some("port"));
        assert!(message.contains("invalid type"), "{message}");
    }

    #[test]
    fn decimal_mode_is_refused_with_an_octal_hint() {
        let (line, key, message) = parse_error("socket_mode = 660\n");
        assert_eq!((line, key.as_deref()), (1, Some("socket_mode")));
        assert!(message.contains("0o660"), "{message}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for (text, key) in [
            ("port = 0", "port"),
            ("port = -1", "port"),
            ("port = 4294967296", "port"),
            (
                "reenable_heartbeat_window = -5",
                "reenable_heartbeat_window",
            ),
            ("log_level = \"loud\"", "log_level"),
            ("virtio_serial = \"\"", "virtio_serial"),
            ("[counters]\npace_ms = 10", "pace_ms"),
            ("[counters]\npace = 1000", "pace"),
        ] {
            let (_, got, _) = parse_error(text);
            assert_eq!(got.as_deref(), Some(key), "{text}");
        }
    }

    #[test]
    fn broken_toml_names_the_line() {
        let (line, _, _) = parse_error("port = 5315\nvsock = \n");
        assert_eq!(line, 2);
    }

    #[test]
    fn error_text_names_file_line_and_key() {
        let err = parse("\nport = \"x\"\n").expect_err("bad port");
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/appmon/guest.toml:2:8: key `port`: "),
            "{text}"
        );
    }

    #[test]
    fn no_host_transport_is_an_error() {
        let err = parse("vsock = false\n").expect_err("nothing to serve");
        assert!(matches!(err, ConfigError::NoHostTransport { .. }), "{err}");
    }

    #[test]
    fn missing_default_file_is_the_default_configuration() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::load_or_default(&dir.path().join("absent.toml")).expect("default");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn missing_named_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("absent.toml");
        let err = Config::load(&path).expect_err("missing");
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn transport_comparison_ignores_policy_keys() {
        let a = Config::default();
        let b = Config {
            reenable_heartbeat_window: Duration::from_secs(5),
            log_level: LogLevel::Debug,
            ..Config::default()
        };
        assert!(a.same_host_transports(&b));
        let c = Config {
            port: 7000,
            ..Config::default()
        };
        assert!(!a.same_host_transports(&c));
    }
}
