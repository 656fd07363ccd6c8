//! `appmonctl`: see [`appmon_host_agent::ctl`].

use clap::Parser;

fn main() {
    let cli = appmon_host_agent::ctl::Cli::parse();
    let code = appmon_host_agent::ctl::run(&cli, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
