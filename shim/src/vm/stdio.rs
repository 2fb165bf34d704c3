//! A guest process's stdio on the host: each stdio the agent named becomes a stream
//! of the io port (`eci-io://n` for the guest). An agent log (`file://<log>`) is fed
//! through a host pipe into the same log copier as for namespaced groups (same files,
//! rotation, stats file, attach tap); a FIFO (an exec's) is opened here and written
//! (output) or read (input, sent as frames); a terminal's output arrives as stdout.

use std::fs::File;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ttrpc::Code;

use super::Inner;
use super::boot::Vm;
use super::procs::VmProc;
use super::service::status;
use crate::guest_proto::{Frame, MAX_FRAME, io_uri};

fn internal(e: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::INTERNAL, e.to_string())
}

/// Opens a FIFO the client named, on the blocking pool (the open waits for the other
/// end, as the namespaced shim's does).
async fn open_fifo(path: String, write: bool) -> ttrpc::Result<File> {
    tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open(&path)
            .map_err(|e| {
                let what = if write { "output" } else { "input" };
                status(
                    Code::INVALID_ARGUMENT,
                    format!("opening {what} {path}: {e}"),
                )
            })
    })
    .await
    .map_err(internal)?
}

impl Inner {
    /// The guest's stdio URIs for the client's: a fresh stream for each one named
    /// (no stderr with a terminal: its output is stdout).
    pub(super) fn guest_uris(&self, stdio: &[String; 3], terminal: bool) -> [String; 3] {
        let next = |uri: &str, skip: bool| {
            if uri.is_empty() || skip {
                String::new()
            } else {
                io_uri(self.next_stream.fetch_add(1, Ordering::Relaxed))
            }
        };
        [
            next(&stdio[0], false),
            next(&stdio[1], false),
            next(&stdio[2], terminal),
        ]
    }

    /// Sets up the host side of `p`'s stdio, once.
    pub(super) async fn open_io(&self, vm: &Vm, p: &Arc<VmProc>) -> ttrpc::Result<()> {
        if p.io_ready.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let stream = |uri: &str| crate::guest_proto::parse_io_uri(uri);
        // Output: stdout and stderr.
        let mut log: Option<(PathBuf, std::os::fd::OwnedFd, Option<std::os::fd::OwnedFd>)> = None;
        for (host, guest) in [(&p.stdout, &p.guest_io[1]), (&p.stderr, &p.guest_io[2])] {
            let Some(n) = stream(guest) else { continue };
            let sink = if let Some(path) = host.strip_prefix("file://") {
                let (r, w) = crate::process::pipe().map_err(internal)?;
                match &mut log {
                    None => log = Some((PathBuf::from(path), r, None)),
                    Some((_, _, err)) => *err = Some(r),
                }
                File::from(w)
            } else {
                open_fifo(host.clone(), true).await?
            };
            let drained = vm.demux.add_output(n, sink).map_err(internal)?;
            p.drained
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(drained);
            p.streams.lock().unwrap_or_else(|e| e.into_inner()).push(n);
        }
        if let Some((path, out, err)) = log {
            let tap = p
                .hub
                .clone()
                .map(|h| h as Arc<dyn crate::logs::copier::Tap>);
            let copying = crate::logs::start(
                out,
                err,
                path,
                self.s.log_rotation,
                Some(Path::new(&p.bundle).join(crate::logs::copier::STATS_FILE)),
                tap,
            )
            .map_err(internal)?;
            *p.copying.lock().unwrap_or_else(|e| e.into_inner()) = Some(copying);
        }
        // Input.
        if let Some(n) = stream(&p.guest_io[0]) {
            let input = if p.stdin == eci_runtime::attach::STDIN_URI {
                // Attachers write into this pipe (as into the namespaced shim's).
                let (r, w) = crate::process::pipe().map_err(internal)?;
                if let Some(h) = &p.hub {
                    h.set_stdin(w).map_err(internal)?;
                }
                File::from(r)
            } else {
                open_fifo(p.stdin.clone(), false).await?
            };
            pump(n, input, vm.port.clone()).map_err(internal)?;
        }
        Ok(())
    }
}

/// Sends what `input` gives as frames of `stream`, then its EOF; on a thread of its
/// own (a guest that does not read blocks only this).
fn pump(stream: u32, mut input: File, port: Arc<Mutex<UnixStream>>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("io-pump-{stream}"))
        .spawn(move || {
            let mut buf = vec![0u8; MAX_FRAME as usize];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let f = Frame {
                    stream,
                    data: buf[..n].to_vec(),
                };
                let mut w = port.lock().unwrap_or_else(|e| e.into_inner());
                if f.write_to(&mut *w).is_err() {
                    return;
                }
            }
            let mut w = port.lock().unwrap_or_else(|e| e.into_inner());
            let _ = Frame::eof(stream).write_to(&mut *w);
        })?;
    Ok(())
}
