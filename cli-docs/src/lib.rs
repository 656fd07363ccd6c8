//! Man pages and shell completions for appmon's programs, generated from the same clap
//! definitions the programs parse their arguments with, so `--help`, the man page and the
//! completion can never disagree. The packages install what [`write_all`] writes.

use std::io;
use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// One program: its command definition and the man section it belongs to (1 for commands
/// people and scripts run, 8 for daemons).
pub struct Program {
    pub command: Command,
    pub section: &'static str,
    /// Where the program runs, for the man page's description.
    pub side: &'static str,
}

/// appmon's four programs.
pub fn programs() -> Vec<Program> {
    vec![
        Program {
            command: appmon_host_agent::daemon::Args::command(),
            section: "8",
            side: "host",
        },
        Program {
            command: appmon_host_agent::ctl::Cli::command(),
            section: "1",
            side: "host",
        },
        Program {
            command: appmon_guest_agent::daemon::Args::command(),
            section: "8",
            side: "guest",
        },
        Program {
            command: appmon_guest_agent::cli::Cli::command(),
            section: "1",
            side: "guest",
        },
    ]
}

/// The shells completions are written for, and the directory each shell's packages use.
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "bash-completion/completions"),
    (Shell::Zsh, "zsh/vendor-completions"),
    (Shell::Fish, "fish/vendor_completions.d"),
];

/// Writes, under `out`, `man/manN/NAME.N` for every program and `NAME-COMMAND.N` for each of
/// its commands (`appmonctl-show.1`, as git does), and the completions under `out/<shell dir>/`
/// named as each shell looks them up, laid out as under /usr/share. Returns the files written.
pub fn write_all(out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for program in programs() {
        let command = program.command;
        let name = command.get_name().to_string();
        let man_dir = out.join("man").join(format!("man{}", program.section));
        std::fs::create_dir_all(&man_dir)?;
        let mut pages = vec![(name.clone(), command.clone())];
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            let page = format!("{name}-{}", sub.get_name());
            pages.push((page.clone(), sub.clone().name(page)));
        }
        for (page, command) in pages {
            let path = man_dir.join(format!("{page}.{}", program.section));
            let mut text = Vec::new();
            clap_mangen::Man::new(command)
                .section(program.section)
                .source(format!("appmon {}", env!("CARGO_PKG_VERSION")))
                .manual(format!("appmon ({} side)", program.side))
                .render(&mut text)?;
            std::fs::write(&path, text)?;
            written.push(path);
        }
        for (shell, dir) in SHELLS {
            let dir = out.join(dir);
            std::fs::create_dir_all(&dir)?;
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), &name, &mut text);
            let file = match shell {
                Shell::Zsh => format!("_{name}"),
                Shell::Fish => format!("{name}.fish"),
                _ => name.clone(),
            };
            let path = dir.join(file);
            std::fs::write(&path, text)?;
            written.push(path);
        }
    }
    written.sort();
    Ok(written)
}
