//! A C program (tests/c/appmon_calls.c), compiled here with the system's `cc` against
//! include/appmon.h and the freshly built libappmon.so, calls every function against the real
//! guest agent (its local API socket only; never AF_VSOCK), and then with no agent at all.

use std::path::{Path, PathBuf};
use std::process::Command;

use appmon_guest_agent::config::Config;
use appmon_guest_agent::daemon::Tuning;
use appmon_guest_agent::testing::Background;

/// Where cargo put libappmon.so when it built this crate for the test: target/<profile>/deps/,
/// beside this test's executable (a `cargo build` also copies it up to target/<profile>/).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("target/<profile>/deps/");
    let found = [Some(deps), deps.parent()]
        .into_iter()
        .flatten()
        .find(|d| d.join("libappmon.so").is_file())
        .unwrap_or_else(|| panic!("no libappmon.so in or above {}", deps.display()))
        .to_owned();
    found
}

fn compile(out: &Path) -> PathBuf {
    let lib_dir = library_dir();
    // Programs load the library by its SONAME, as from the package's libappmon.so.0.
    std::os::unix::fs::symlink(lib_dir.join("libappmon.so"), out.join("libappmon.so.0"))
        .expect("symlink libappmon.so.0");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let program = out.join("appmon_calls");
    let status = Command::new("cc")
        .args([
            "-std=c99",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
        ])
        .arg(&program)
        .arg(manifest.join("tests/c/appmon_calls.c"))
        .arg("-I")
        .arg(manifest.join("include"))
        .arg("-L")
        .arg(&lib_dir)
        .arg(format!("-Wl,-rpath,{}", out.display()))
        .args(["-lappmon", "-lpthread"])
        .status()
        .expect("run cc (Debian's gcc; scripts/setup installs it)");
    assert!(status.success(), "cc failed: {status}");
    program
}

fn run(program: &Path, mode: &str, socket: &Path) -> (bool, String) {
    let out = Command::new(program)
        .arg(mode)
        .env("APPMON_SOCKET", socket)
        .output()
        .expect("run the C program");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_c_program_uses_every_call_against_the_real_agent_and_without_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = compile(dir.path());
    let socket = dir.path().join("app.sock");
    let config = Config {
        vsock: false,
        host_unix_socket: Some(dir.path().join("host.sock")),
        socket: socket.clone(),
        ..Config::default()
    };

    let agent = Background::start(config, None, Tuning::default()).expect("start the guest agent");
    let (ok, text) = run(&program, "up", &socket);
    assert!(ok, "with the agent running:\n{text}");
    drop(agent);

    let (ok, text) = run(&program, "down", &socket);
    assert!(ok, "with no agent:\n{text}");
}
