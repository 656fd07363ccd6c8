//! `appmon-cli-docs OUTDIR`: writes the man pages and shell completions of appmon's programs
//! under OUTDIR (man/manN/, bash-completion/completions/, zsh/vendor-completions/,
//! fish/vendor_completions.d/), laid out as under /usr/share.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: appmon-cli-docs OUTDIR");
        return ExitCode::from(2);
    };
    let out = PathBuf::from(out);
    match appmon_cli_docs::write_all(&out) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("appmon-cli-docs: writing under {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
