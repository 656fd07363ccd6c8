//! The generated man pages and completions describe the programs as they parse their arguments.

use std::fs;

#[test]
fn every_program_gets_a_man_page_per_command_and_three_completions() {
    let out = tempfile::tempdir().unwrap();
    let files = appmon_cli_docs::write_all(out.path()).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(out.path()).unwrap().display().to_string())
        .collect();
    for want in [
        "man/man8/appmon-host.8",
        "man/man8/appmon-guest.8",
        "man/man1/appmonctl.1",
        "man/man1/appmonctl-show.1",
        "man/man1/appmonctl-enable.1",
        "man/man1/appmonctl-alarms.1",
        "man/man1/appmonctl-alarm-set.1",
        "man/man1/appmonctl-alarm-remove.1",
        "man/man1/appmon.1",
        "man/man1/appmon-markActive.1",
        "bash-completion/completions/appmonctl",
        "bash-completion/completions/appmon",
        "zsh/vendor-completions/_appmon-host",
        "fish/vendor_completions.d/appmon-guest.fish",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    for file in &files {
        assert!(
            fs::metadata(file).unwrap().len() > 0,
            "{} is empty",
            file.display()
        );
    }
}

#[test]
fn man_pages_carry_the_options_and_exit_codes_of_the_clap_definitions() {
    let out = tempfile::tempdir().unwrap();
    appmon_cli_docs::write_all(out.path()).unwrap();
    let read = |p: &str| fs::read_to_string(out.path().join(p)).unwrap();
    let ctl = read("man/man1/appmonctl.1");
    assert!(ctl.contains("APPMONCTL_SOCKET"), "{ctl}");
    assert!(ctl.contains("3 host agent not reachable"), "{ctl}");
    assert!(ctl.contains("5 an alarm is raised"), "{ctl}");
    let set = read("man/man1/appmonctl-alarm-set.1");
    for option in [
        "\\-\\-above",
        "\\-\\-below",
        "\\-\\-hysteresis",
        "\\-\\-domain",
    ] {
        assert!(set.contains(option), "{option} not in {set}");
    }
    let host = read("man/man8/appmon-host.8");
    assert!(host.contains("\\-\\-check"), "{host}");
    let guest_cli = read("man/man1/appmon.1");
    assert!(guest_cli.contains("markActive"), "{guest_cli}");
    assert!(guest_cli.contains("APPMON_SOCKET"), "{guest_cli}");
    let bash = read("bash-completion/completions/appmonctl");
    for sub in [
        "list",
        "show",
        "enable",
        "disable",
        "clear",
        "alarms",
        "alarm-set",
        "alarm-remove",
    ] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
}
