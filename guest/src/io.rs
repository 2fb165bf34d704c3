//! The `eci.io` port: processes' stdio as frames (`eci_shim::guest_proto::Frame`) and
//! control messages to the host.
//!
//! Output FIFOs are read by one thread each and sent as frames, then an EOF frame;
//! frames from the host for a stdin stream go to that stream's FIFO through a bounded
//! queue and a writer thread (a process that does not read its stdin stalls the
//! queue, then the port: the host's frames are its backpressure).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eci_shim::guest_proto::{CONTROL_STREAM, Control, Frame, FrameError, MAX_FRAME};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Frames queued for one stdin FIFO.
const STDIN_QUEUE: usize = 16;

/// The io port, shared by every process's streams.
pub struct IoPort {
    out: Mutex<File>,
    stdin: Mutex<HashMap<u32, SyncSender<Vec<u8>>>>,
}

impl IoPort {
    /// Serves `port`: starts the thread that routes the host's frames.
    pub fn start(port: File) -> std::io::Result<Arc<Self>> {
        let reader = port.try_clone()?;
        let me = Arc::new(IoPort {
            out: Mutex::new(port),
            stdin: Mutex::new(HashMap::new()),
        });
        let router = me.clone();
        std::thread::Builder::new()
            .name("io-in".into())
            .spawn(move || router.route(reader))?;
        Ok(me)
    }

    /// Sends one frame whole (frames never interleave). Blocks while no host is
    /// connected: output waits for the host rather than being lost.
    pub fn send(&self, frame: &Frame) -> std::io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        frame.write_to(&mut *out)
    }

    /// Sends a control message.
    pub fn control(&self, msg: &Control) {
        match Frame::control(msg) {
            Ok(f) => {
                if let Err(e) = self.send(&f) {
                    tracing::warn!(error = %e, "sending a control message");
                }
            }
            Err(e) => tracing::warn!(error = %e, "encoding a control message"),
        }
    }

    fn route(&self, mut port: File) {
        loop {
            match Frame::read_from(&mut port) {
                Ok(Some(f)) if f.stream == CONTROL_STREAM => {}
                Ok(Some(f)) => {
                    let mut streams = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
                    if f.is_eof() {
                        // Dropping the queue ends the writer, which closes the FIFO.
                        streams.remove(&f.stream);
                    } else if let Some(tx) = streams.get(&f.stream).cloned() {
                        drop(streams);
                        let _ = tx.send(f.data);
                    }
                }
                // No host on the port (it reads EOF until one connects).
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading the io port");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Feeds `stream`'s frames into `fifo` (opened read-write, so the process's open for
    /// reading does not wait for a writer) until the host ends the stream.
    pub fn add_stdin(&self, stream: u32, fifo: File) {
        let (tx, rx) = sync_channel::<Vec<u8>>(STDIN_QUEUE);
        self.stdin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream, tx);
        let spawned = std::thread::Builder::new()
            .name(format!("stdin-{stream}"))
            .spawn(move || {
                let mut fifo = fifo;
                while let Ok(data) = rx.recv() {
                    if fifo.write_all(&data).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(stream, error = %e, "starting a stdin writer");
        }
    }

    /// Forgets a stdin stream (its process is gone).
    pub fn remove_stdin(&self, stream: u32) {
        self.stdin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&stream);
    }

    /// Sends what a process writes to `fifo` as frames of `stream`, then the EOF frame,
    /// on a thread of its own. Call once the process holds the FIFO's write end (the
    /// reader was opened non-blocking before it had one).
    pub fn pump(self: &Arc<Self>, stream: u32, fifo: File) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        let run = move || {
            if let Ok(flags) = fcntl(fifo.as_fd(), FcntlArg::F_GETFL) {
                let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
                let _ = fcntl(fifo.as_fd(), FcntlArg::F_SETFL(flags));
            }
            let mut fifo = fifo;
            let mut buf = vec![0u8; MAX_FRAME as usize];
            loop {
                match fifo.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let f = Frame {
                            stream,
                            data: buf[..n].to_vec(),
                        };
                        if me.send(&f).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = me.send(&Frame::eof(stream));
        };
        std::thread::Builder::new()
            .name(format!("out-{stream}"))
            .spawn(run)
            .unwrap_or_else(|e| {
                tracing::warn!(stream, error = %e, "starting an output pump");
                std::thread::spawn(|| {})
            })
    }
}
