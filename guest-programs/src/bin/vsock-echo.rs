//! vsock-echo: an AF_VSOCK echo server for the VM tests.
//!
//! ************************************************************************************************
//! GUEST-ONLY. This program opens AF_VSOCK sockets. It runs ONLY inside the nested test guests,
//! started by the rig image's /init. NEVER run it on the host: the host's /dev/vsock belongs to
//! the infrastructure of the machine the tests run on. It refuses to start unless
//! /etc/appmon/rig-guest exists, which only scripts/build-guest-image puts into the guest image.
//! ************************************************************************************************
//!
//!   vsock-echo [PORT]     listen on vsock PORT (default 5399) of any CID, echo every connection
//!
//! The VM tests use it to prove host → guest traffic through vhost-device-vsock independently of
//! the guest agent, and to keep traffic in flight (the reset defect of ENVIRONMENT.md).

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::thread;

use appmon_guest_programs::{listen, require_rig_guest, VSOCK_ECHO_PORT};

fn main() -> ExitCode {
    if let Err(e) = require_rig_guest("vsock-echo") {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let port = match std::env::args().nth(1).map(|a| a.parse::<u32>()) {
        None => VSOCK_ECHO_PORT,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("vsock-echo: bad port argument: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match listen(port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vsock-echo: cannot listen on vsock port {port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("vsock-echo: listening on vsock port {port}");
    let mut n: u64 = 0;
    loop {
        match listener.accept() {
            Ok((conn, peer)) => {
                n += 1;
                println!(
                    "vsock-echo: connection {n} from cid {} port {}",
                    peer.cid(),
                    peer.port()
                );
                thread::spawn(move || match echo(conn) {
                    Ok(bytes) => {
                        println!("vsock-echo: connection {n} closed, {bytes} bytes echoed")
                    }
                    Err(e) => println!("vsock-echo: connection {n} failed: {e}"),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("vsock-echo: accept failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}

fn echo(mut conn: vsock::VsockStream) -> io::Result<u64> {
    let mut buf = [0u8; 4096];
    let mut total = 0u64;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        conn.write_all(&buf[..n])?;
        total += n as u64;
    }
}
