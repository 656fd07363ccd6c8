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
//! It stands in for the guest agent until that exists, so the VM tests can prove host → guest
//! traffic through vhost-device-vsock. Plain libc calls keep it free of dependencies; the
//! binary is linked statically by scripts/build-guest-binaries.

use std::fs::File;
use std::io::{self, Read, Write};
use std::mem;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::thread;

/// Exists only in the rig's guest image.
const GUEST_MARKER: &str = "/etc/appmon/rig-guest";
const DEFAULT_PORT: u32 = 5399;

fn main() -> ExitCode {
    if !Path::new(GUEST_MARKER).exists() {
        eprintln!(
            "vsock-echo: {GUEST_MARKER} not found: this is not a test-rig guest; refusing to open AF_VSOCK"
        );
        return ExitCode::from(2);
    }
    let port = match std::env::args().nth(1).map(|a| a.parse::<u32>()) {
        None => DEFAULT_PORT,
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
        match accept(&listener) {
            Ok((conn, peer_cid, peer_port)) => {
                n += 1;
                println!("vsock-echo: connection {n} from cid {peer_cid} port {peer_port}");
                thread::spawn(move || {
                    let echoed = echo(conn);
                    match echoed {
                        Ok(bytes) => {
                            println!("vsock-echo: connection {n} closed, {bytes} bytes echoed")
                        }
                        Err(e) => println!("vsock-echo: connection {n} failed: {e}"),
                    }
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

fn echo(conn: OwnedFd) -> io::Result<u64> {
    let mut f = File::from(conn);
    let mut buf = [0u8; 4096];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        f.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    libc::sockaddr_vm {
        svm_family: libc::AF_VSOCK as libc::sa_family_t,
        svm_reserved1: 0,
        svm_port: port,
        svm_cid: cid,
        svm_zero: [0; 4],
    }
}

fn listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket owned by nothing else; OwnedFd closes it exactly once.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    let len = mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm that outlives the call, and len is its size.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_vm).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a socket fd that `sock` keeps open; no pointers.
    if unsafe { libc::listen(fd, 16) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn accept(listener: &OwnedFd) -> io::Result<(OwnedFd, u32, u32)> {
    use std::os::fd::AsRawFd;
    let mut peer = vsock_addr(0, 0);
    let mut len = mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: peer and len are valid for writes for the call's duration and len holds peer's
    // size, so the kernel writes at most that many bytes.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut peer as *mut libc::sockaddr_vm).cast::<libc::sockaddr>(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly accepted socket owned by nothing else.
    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((conn, peer.svm_cid, peer.svm_port))
}
