//! Embeds the MON page's chart library, uPlot, into the binary: its files come from the npm
//! registry through `host-agent/web/package-lock.json` (`npm ci --ignore-scripts --prefix
//! host-agent/web`, which scripts/setup and scripts/lib.sh's builds run); nothing generated is
//! committed. The build fails, naming that command, when they are missing.

use std::path::PathBuf;

/// The files of uPlot the page serves, relative to its package directory.
const FILES: [&str; 3] = [
    "dist/uPlot.iife.min.js",
    "dist/uPlot.min.css",
    "package.json",
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let web = manifest.join("web");
    let dir = web.join("node_modules").join("uplot");
    println!(
        "cargo:rerun-if-changed={}",
        web.join("package-lock.json").display()
    );
    for file in FILES {
        let path = dir.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        if !path.is_file() {
            eprintln!(
                "error: {} is missing: the MON page's chart library (uPlot) is installed from the npm \
                 registry by `npm ci --ignore-scripts --prefix host-agent/web` (run from the \
                 repository's root; scripts/setup installs npm and runs it)",
                path.display()
            );
            std::process::exit(1);
        }
    }
    println!("cargo:rustc-env=APPMON_UPLOT_DIR={}", dir.display());
}
