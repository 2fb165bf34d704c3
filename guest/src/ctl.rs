//! The `eci.ctl` port ↔ the guest-local ttrpc socket: one connection per host session.
//!
//! A virtio-serial port reads EOF while no host side is connected, so the bridge polls
//! for the first bytes of a session, then connects to the Task API socket and copies
//! both ways until the host goes away; the connection closes with the session and the
//! next host connection gets a fresh one (the ttrpc server holds no state per
//! connection that a new client could miss).

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// How often a port without a host is looked at again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Bridges `port` to the Unix socket `socket` forever (run it on its own thread).
pub fn bridge(port: File, socket: PathBuf) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut port_in = port;
    loop {
        let n = match port_in.read(&mut buf) {
            Ok(0) => {
                std::thread::sleep(IDLE_POLL);
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading the ctl port");
                std::thread::sleep(IDLE_POLL);
                continue;
            }
        };
        let conn = match UnixStream::connect(&socket) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "connecting to the task socket");
                std::thread::sleep(IDLE_POLL);
                continue;
            }
        };
        tracing::info!("host connected to the ctl port");
        let first = buf[..n].to_vec();
        session(&mut port_in, conn, first, &mut buf);
        tracing::info!("host left the ctl port");
    }
}

/// One host session: `first` bytes already read from the port.
fn session(port: &mut File, conn: UnixStream, first: Vec<u8>, buf: &mut [u8]) {
    let (Ok(mut to_server), Ok(mut from_server), Ok(mut port_out)) =
        (conn.try_clone(), conn.try_clone(), port.try_clone())
    else {
        return;
    };
    let back = std::thread::spawn(move || {
        let mut b = vec![0u8; 64 * 1024];
        loop {
            match from_server.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if port_out.write_all(&b[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    if to_server.write_all(&first).is_ok() {
        loop {
            match port.read(buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to_server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
    let _ = back.join();
}
