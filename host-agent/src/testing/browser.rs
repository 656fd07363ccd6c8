//! Runs the MON page's browser driver (`host-agent/web/drive-page.mjs`: Node, puppeteer-core,
//! Debian's headless `chromium`) and reads what it saw. Used by host-agent/tests/mon_page.rs
//! and vm-tests/tests/mon_page.rs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What the driver is asked to do (see drive-page.mjs).
#[derive(Debug, Clone, Serialize)]
pub struct Drive {
    /// The page's address, `http://…/mon/`.
    pub url: String,
    pub user: String,
    pub password: String,
    /// The view the driver makes on the page.
    pub view: String,
    /// The counter its one chart draws.
    pub counter: CounterRef,
    /// How many values the chart must hold.
    pub points: usize,
    /// Where the screenshot goes.
    pub screenshot: Option<PathBuf>,
    /// How long each wait of the driver may take.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CounterRef {
    pub domain: String,
    pub entity: String,
    pub counter: String,
}

/// The driver's directory (its package.json, node_modules).
pub fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// Runs the driver; its report, or why it could not run or said nothing readable. The
/// report's `error` is the driver's own failure (a wait that timed out, with the page's
/// console in `console`).
pub fn drive(what: &Drive) -> Result<(serde_json::Value, Duration), String> {
    let script = web_dir().join("drive-page.mjs");
    let args = serde_json::to_string(what).expect("serializes");
    let started = Instant::now();
    let out = Command::new("node")
        .arg(&script)
        .arg(&args)
        .current_dir(web_dir())
        .output()
        .map_err(|e| {
            format!(
                "node {}: {e} (scripts/setup installs nodejs, npm and chromium, and runs \
                 `npm ci --ignore-scripts --prefix host-agent/web`)",
                script.display()
            )
        })?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    match line.map(serde_json::from_str::<serde_json::Value>) {
        Some(Ok(report)) if out.status.success() => Ok((report, took)),
        _ => Err(format!(
            "node {} exited {}: stdout:\n{stdout}\nstderr:\n{stderr}",
            script.display(),
            out.status
        )),
    }
}
