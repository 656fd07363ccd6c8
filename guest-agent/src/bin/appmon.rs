//! `appmon`: vSphere HA application-monitoring verbs for applications in this VM.
//! See `appmon --help` and appmon_guest_agent::cli.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = appmon_guest_agent::cli::Cli::parse();
    let code = appmon_guest_agent::cli::run(&cli, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}
