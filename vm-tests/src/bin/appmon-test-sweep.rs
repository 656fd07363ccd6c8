//! appmon-test-sweep: removes what VM test processes that are gone left behind. HOST side; never
//! opens AF_VSOCK. The same code the harness runs before each test process's first guest
//! (`appmon_vm_tests::sweep`), for the scripts: `scripts/test` after the VM tests,
//! `scripts/rig-down` before it stops libvirtd.
//!
//! Only the harness's own things are touched: domains `appmon-t-<test>-<pid>-<n>` and
//! directories `$APPMON_RIG_DIR/run/t/<pid>-<n>` whose test process is gone, and the
//! vhost-device-vsock and appmon-host processes such a directory recorded, by pid and only while
//! their command line names that directory's socket or host.toml, and the cluster nodes (cgroups
//! `appmon-t-<pid>-<n>-<node>`, every process in them) of test processes that are gone.

use std::process::ExitCode;

use appmon_vm_tests::sweep::{find_leftovers, running_test_domains};
use appmon_vm_tests::Rig;

const USAGE: &str = "\
usage: appmon-test-sweep [--dry-run | --running]

Removes what VM test processes that are gone left behind: their appmon-t-* domains, their
vhost-device-vsock and appmon-host processes, their cluster nodes' processes (cgroups
appmon-t-<pid>-<n>-<node>) and their directories under
$APPMON_RIG_DIR/run/t (default /var/tmp/appmon-rig).

  --dry-run  only list what would be removed
  --running  list the domains of VM test processes that still run (a test run in progress)

Exit codes:
  0  nothing found
  1  something found: listed, and removed unless --dry-run (with --running: tests still run)
  2  usage error
  3  something could not be looked at or removed (libvirtd does not answer, say)";

enum Mode {
    Remove,
    DryRun,
    Running,
}

fn main() -> ExitCode {
    let mut mode = Mode::Remove;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--dry-run" => mode = Mode::DryRun,
            "--running" => mode = Mode::Running,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("appmon-test-sweep: unknown argument {other:?} (see --help)");
                return ExitCode::from(2);
            }
        }
    }
    match mode {
        Mode::Running => running(),
        Mode::DryRun | Mode::Remove => sweep(matches!(mode, Mode::DryRun)),
    }
}

fn running() -> ExitCode {
    match running_test_domains() {
        Ok(domains) if domains.is_empty() => ExitCode::SUCCESS,
        Ok(domains) => {
            for d in domains {
                println!("running: domain {d}");
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!(
                "appmon-test-sweep: cannot list domains: {}",
                appmon_wire::report::error_chain(&e)
            );
            ExitCode::from(3)
        }
    }
}

fn sweep(dry_run: bool) -> ExitCode {
    let found = find_leftovers(&Rig::from_env());
    let found_any = !found.is_empty();
    let errors = if dry_run {
        for line in found.describe() {
            println!("leftover {line}");
        }
        found.errors
    } else {
        let report = found.remove();
        for cg in &report.cgroups {
            println!(
                "killed the processes of cluster node {} and removed it",
                cg.display()
            );
        }
        for d in &report.domains {
            println!("removed domain {d}");
        }
        for pid in &report.backends {
            println!("killed vhost-device-vsock pid {pid}");
        }
        for pid in &report.host_agents {
            println!("killed appmon-host pid {pid}");
        }
        for pid in &report.libvirtds {
            println!("stopped libvirtd pid {pid} (after destroying its domains)");
        }
        for dir in &report.dirs {
            println!("removed test directory {}", dir.display());
        }
        report.errors
    };
    for e in &errors {
        eprintln!("appmon-test-sweep: {e}");
    }
    if !errors.is_empty() {
        ExitCode::from(3)
    } else if found_any {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
