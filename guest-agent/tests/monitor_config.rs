//! Application monitors as an operator writes them in guest.toml: what parses, with which
//! defaults, and what is refused naming the file, line and key (the `[[monitor]]` tables of
//! `appmon_guest_agent::monitors::config`, read through the agent's configuration).

use std::path::Path;
use std::time::Duration;

use appmon_guest_agent::config::{Config, ConfigError};
use appmon_guest_agent::monitors::config::{Owner, ProcessTarget};
use appmon_wire::{FailureAction, MonitorKind, MonitorMode};

const PATH: &str = "/etc/appmon/guest.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(PATH))
}

fn error(text: &str) -> (usize, String) {
    match parse(text) {
        Err(ConfigError::Parse { line, message, .. }) => (line, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

const FULL: &str = r#"port = 5315

[[monitor]]
name = "db-process"
application = "db"
kind = "process"
mode = "both"
process = "postgres"
owner = 0
instances = 2
stabilization_interval = 20
monitor_interval = 5
restart_count = 2
restart_interval = 300
failure_action = "need-reset"
start = "/bin/sh -c-free start"
cleanup = ["/bin/true"]
command_timeout = 30

[[monitor]]
name = "db-ping"
application = "db"
kind = "custom"
command = ["/bin/sh", "-c", "exit 0"]
timeout = 4
failure_action = "stop-heartbeats"
restart_count = 0
"#;

#[test]
fn monitors_parse_with_their_defaults() {
    let config = parse(FULL).expect("valid");
    let [p, c] = &config.monitors[..] else {
        panic!("two monitors")
    };
    assert_eq!((p.name(), p.application()), ("db-process", "db"));
    assert_eq!((p.kind, p.mode), (MonitorKind::Process, MonitorMode::Both));
    assert_eq!(
        p.target(),
        Some(ProcessTarget::Name {
            name: "postgres".into(),
            owner: Some(Owner {
                name: "0".into(),
                uid: Some(0)
            }),
            instances: 2
        })
    );
    assert_eq!(p.restart_interval(), Duration::from_secs(300));
    assert_eq!(p.failure_action, FailureAction::NeedReset);
    assert_eq!(
        p.start.as_ref().map(|s| s.get_ref().0.clone()),
        Some(vec!["/bin/sh".into(), "-c-free".into(), "start".into()])
    );
    assert_eq!(c.mode, MonitorMode::LongRunning, "the default mode");
    assert_eq!(c.check_timeout(), Duration::from_secs(4));
    assert_eq!(c.monitor_interval, Duration::from_secs(60));
    assert_eq!(c.failure_action, FailureAction::StopHeartbeats);
}

#[test]
fn the_default_restart_interval_is_powerhas() {
    let config = parse(
        "[[monitor]]\nname = \"a\"\nkind = \"process\"\nprocess = \"a\"\nstart = \"/bin/true\"\n",
    )
    .expect("valid");
    // 1.1 x 3 x (60 + 60)
    assert_eq!(
        config.monitors[0].restart_interval(),
        Duration::from_secs(396)
    );
}

#[test]
fn bad_monitor_tables_are_refused_naming_the_line() {
    let cases = [
        ("[[monitor]]\nname = \"a\"\nkind = \"daemon\"\n", 3, "not a monitor kind"),
        ("[[monitor]]\nname = \"a\"\nkind = \"process\"\nrestart_count = 0\n", 2, "needs `process` or `pid_file`"),
        ("[[monitor]]\nname = \"a\"\nkind = \"process\"\nprocess = \"x\"\npid_file = \"/run/x.pid\"\nrestart_count = 0\n", 5, "exclude each other"),
        ("[[monitor]]\nname = \"a\"\nkind = \"custom\"\nrestart_count = 0\n", 2, "needs `command`"),
        ("[[monitor]]\nname = \"a\"\nkind = \"custom\"\ncommand = \"/bin/true\"\nprocess = \"x\"\nrestart_count = 0\n", 5, "for process monitors"),
        ("[[monitor]]\nname = \"a\"\nkind = \"process\"\nprocess = \"x\"\n", 2, "needs a `restart` or `start` command"),
        ("[[monitor]]\nname = \"a\"\nkind = \"process\"\nprocess = \"x\"\nrestart_count = 0\nmode = \"sometimes\"\n", 6, "not a monitor mode"),
        ("[[monitor]]\nname = \"a\"\nkind = \"process\"\nprocess = \"x\"\nrestart_count = 0\nfailure_action = \"reboot\"\n", 6, "not a failure action"),
        ("[[monitor]]\nname = \"a\"\nkind = \"process\"\nprocess = \"x\"\nrestart_count = 0\nmonitor_interval = 0\n", 6, "at least 1 second"),
        ("[[monitor]]\nname = \"a\"\nkind = \"process\"\nprocess = \"x\"\nstart = \"/bin/start $HOME\"\n", 5, "no shell runs it"),
        ("[[monitor]]\nname = \"a\"\nkind = \"process\"\nprocess = \"x\"\nstart = []\n", 5, "an empty command"),
        ("[[monitor]]\nname = \"a\"\nkind = \"process\"\nprocess = \"x\"\nrestart_count = 0\ncolour = 1\n", 6, "unknown field"),
        ("[[monitor]]\nname = \"a\"\nkind = \"process\"\nprocess = \"x\"\nrestart_count = 0\n[[monitor]]\nname = \"a\"\nkind = \"process\"\nprocess = \"y\"\nrestart_count = 0\n", 7, "defined twice (first on line 2)"),
        ("[[monitor]]\nname = \"a\"\napplication = \"x\"\nkind = \"process\"\nprocess = \"x\"\nstart = \"/bin/one\"\n[[monitor]]\nname = \"b\"\napplication = \"x\"\nkind = \"process\"\nprocess = \"y\"\nstart = \"/bin/two\"\n", 12, "another start command in monitor `a` (line 6)"),
    ];
    for (text, line, message) in cases {
        let (got_line, got) = error(text);
        assert!(got.contains(message), "{text}: {got}");
        assert_eq!(got_line, line, "{text}: {got}");
    }
}

#[test]
fn a_command_that_does_not_exist_is_refused_at_load_with_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("guest.toml");
    std::fs::write(
        &path,
        "port = 5315\n\n[[monitor]]\nname = \"web\"\nkind = \"process\"\nprocess = \"httpd\"\nstart = \"/usr/sbin/no-such-httpd -k start\"\n",
    )
    .expect("write");

    let err = Config::load(&path).expect_err("missing program");

    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:7:9: key `start`: ", path.display())),
        "{text}"
    );
    assert!(
        text.ends_with("monitor `web`: /usr/sbin/no-such-httpd: no such file"),
        "{text}"
    );
}

#[test]
fn bare_program_names_are_found_in_path_and_run_by_their_full_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("guest.toml");
    std::fs::write(
        &path,
        "[[monitor]]\nname = \"c\"\nkind = \"custom\"\ncommand = \"sh -c true\"\nrestart_count = 0\n",
    )
    .expect("write");

    let config = Config::load(&path).expect("sh is in PATH");

    let argv = &config.monitors[0]
        .command
        .as_ref()
        .expect("command")
        .get_ref()
        .0;
    assert!(
        argv[0].starts_with('/') && argv[0].ends_with("/sh"),
        "{argv:?}"
    );
    assert_eq!(&argv[1..], ["-c", "true"]);
}

#[test]
fn a_program_that_is_not_executable_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("check");
    std::fs::write(&script, "#!/bin/sh\n").expect("write");
    let path = dir.path().join("guest.toml");
    std::fs::write(
        &path,
        format!(
            "[[monitor]]\nname = \"c\"\nkind = \"custom\"\ncommand = \"{}\"\nrestart_count = 0\n",
            script.display()
        ),
    )
    .expect("write");

    let err = Config::load(&path).expect_err("not executable");

    assert!(err.to_string().ends_with("not an executable file"), "{err}");
}

#[test]
fn an_unknown_owner_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("guest.toml");
    std::fs::write(
        &path,
        "[[monitor]]\nname = \"p\"\nkind = \"process\"\nprocess = \"x\"\nowner = \"no-such-user-here\"\nrestart_count = 0\n",
    )
    .expect("write");

    let err = Config::load(&path).expect_err("unknown user");

    assert!(
        err.to_string()
            .contains(":5:9: key `owner`: monitor `p`: owner: user \"no-such-user-here\" does not exist in /etc/passwd"),
        "{err}"
    );
}
