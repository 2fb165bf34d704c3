//! The host end of the `eci.io` port: one thread reads frames and routes each to its
//! stream's sink (a log pipe, an exec's FIFO), and control messages to a handler.
//!
//! Bounds (the guest is hostile): a frame is at most [`MAX_FRAME`] bytes (a larger
//! header ends the port: the framing cannot be trusted after it); each sink queues at
//! most [`QUEUE_FRAMES`] frames, written by a thread of its own, and a frame for a full
//! queue waits for room, but each stream may hold the router for at most [`STALL`] in
//! every [`STALL_WINDOW`]: past that, its frames are dropped (and counted) while its
//! queue is full. So a sink whose reader stalls (an exec client that stopped reading)
//! delays the other streams by one stall per window at most, and a busy log whose
//! copier is briefly behind is waited for, not cut. Frames of a stream the host did
//! not open (or already closed) are dropped. Streams are opened only by the host, so
//! memory is bounded by the host's own processes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

#[cfg(test)]
use crate::guest_proto::MAX_FRAME;
use crate::guest_proto::{CONTROL_STREAM, Control, Frame, FrameError};

/// Frames queued per sink (of at most [`MAX_FRAME`] bytes each).
pub const QUEUE_FRAMES: usize = 16;
/// How long frames for a full sink may hold the router, per stream and window.
pub const STALL: Duration = Duration::from_secs(1);
/// The window [`STALL`] is counted over.
pub const STALL_WINDOW: Duration = Duration::from_secs(10);

/// What the router does with control messages and the end of the port.
pub trait Events: Send + Sync {
    fn control(&self, msg: Control);
    /// The port ended (the guest closed it, or broke the framing).
    fn ended(&self, why: String);
}

struct Route {
    tx: SyncSender<Vec<u8>>,
    /// How long frames of this stream have held the router in this window.
    waited: Duration,
    window: Instant,
    dropped: u64,
}

/// The router of one io port.
pub struct Demux {
    routes: Mutex<HashMap<u32, Route>>,
    stall: Duration,
    events: Arc<dyn Events>,
}

/// Resolves when a sink has written everything up to its stream's EOF (or was closed).
pub type Drained = oneshot::Receiver<()>;

impl Demux {
    pub fn new(stall: Duration, events: Arc<dyn Events>) -> Arc<Self> {
        Arc::new(Demux {
            routes: Mutex::new(HashMap::new()),
            stall,
            events,
        })
    }

    /// Routes `stream` to `out` (a pipe's write end, a FIFO) from now on, written by a
    /// thread of its own; `out` is closed at the stream's EOF.
    pub fn add_output(&self, stream: u32, out: File) -> std::io::Result<Drained> {
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_FRAMES);
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("io-sink-{stream}"))
            .spawn(move || {
                let mut out = out;
                let mut broken = false;
                while let Ok(data) = rx.recv() {
                    if data.is_empty() {
                        break;
                    }
                    // A reader that went away: keep taking frames (the router must not
                    // wait on us), drop them.
                    if !broken && out.write_all(&data).is_err() {
                        broken = true;
                    }
                }
                drop(out);
                let _ = done_tx.send(());
            })?;
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                stream,
                Route {
                    tx,
                    waited: Duration::ZERO,
                    window: Instant::now(),
                    dropped: 0,
                },
            );
        Ok(done_rx)
    }

    /// Stops routing `stream` (its sink sees EOF).
    pub fn close(&self, stream: u32) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&stream);
    }

    /// Reads frames from `port` until it ends; run on a thread of its own.
    pub fn run(&self, mut port: impl Read) {
        let mut unknown = 0u64;
        let mut bad_control = 0u64;
        let why = loop {
            let f = match Frame::read_from(&mut port) {
                Ok(Some(f)) => f,
                Ok(None) => break "the guest closed the io port".to_string(),
                Err(e @ FrameError::TooLarge(_)) => {
                    break format!("the guest broke the framing: {e}");
                }
                Err(e) => break format!("reading the io port: {e}"),
            };
            if f.stream == CONTROL_STREAM {
                match f.parse_control() {
                    Ok(c) => self.events.control(c),
                    Err(e) => {
                        bad_control += 1;
                        if bad_control <= 10 {
                            tracing::warn!(error = %e, "malformed control message from the guest: dropped");
                        }
                    }
                }
                continue;
            }
            if !self.route(f) {
                unknown += 1;
                if unknown <= 10 {
                    tracing::debug!("frame for a stream the host did not open: dropped");
                }
            }
        };
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.events.ended(why);
    }

    /// Hands one frame to its sink; false when the stream is unknown.
    fn route(&self, f: Frame) -> bool {
        let eof = f.is_eof();
        let (tx, waited) = {
            let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            let Some(r) = routes.get_mut(&f.stream) else {
                return false;
            };
            if r.window.elapsed() >= STALL_WINDOW {
                r.window = Instant::now();
                r.waited = Duration::ZERO;
            }
            let got = (r.tx.clone(), r.waited);
            if eof {
                // Whatever follows for this stream is unknown; the sink ends after
                // writing what it has.
                if let Some(r) = routes.remove(&f.stream)
                    && r.dropped > 0
                {
                    tracing::warn!(
                        stream = f.stream,
                        bytes = r.dropped,
                        "output dropped: its reader was too slow"
                    );
                }
            }
            got
        };
        let mut data = f.data;
        let len = data.len() as u64;
        let start = Instant::now();
        let deadline = start + self.stall.saturating_sub(waited);
        let sent = loop {
            match tx.try_send(data) {
                Ok(()) => break true,
                Err(TrySendError::Disconnected(_)) => break false,
                Err(TrySendError::Full(d)) => {
                    if Instant::now() >= deadline {
                        break false;
                    }
                    data = d;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        };
        if !eof {
            let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(r) = routes.get_mut(&f.stream) {
                r.waited += start.elapsed();
                if !sent {
                    r.dropped += len;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);
    impl Events for Seen {
        fn control(&self, msg: Control) {
            self.0.lock().expect("lock").push(format!("{msg:?}"));
        }
        fn ended(&self, why: String) {
            self.0.lock().expect("lock").push(why);
        }
    }

    fn frames(fs: &[Frame]) -> Vec<u8> {
        fs.iter().flat_map(Frame::encode).collect()
    }

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        (File::from(r), File::from(w))
    }

    #[tokio::test]
    async fn routes_by_stream_drops_unknown_and_ends_at_eof() {
        let seen = Arc::new(Seen::default());
        let d = Demux::new(STALL, seen.clone());
        let (mut r1, w1) = pipe();
        let (mut r2, w2) = pipe();
        let done1 = d.add_output(1, w1).expect("sink");
        let done2 = d.add_output(2, w2).expect("sink");
        let wire = frames(&[
            Frame {
                stream: 1,
                data: b"one ".to_vec(),
            },
            Frame {
                stream: 9,
                data: b"nobody".to_vec(),
            },
            Frame {
                stream: 2,
                data: b"two".to_vec(),
            },
            Frame::control(&Control::Ready).expect("ctl"),
            Frame {
                stream: 0,
                data: b"{not json".to_vec(),
            },
            Frame {
                stream: 1,
                data: b"more".to_vec(),
            },
            Frame::eof(1),
            Frame {
                stream: 1,
                data: b"after eof".to_vec(),
            },
            Frame::eof(2),
        ]);
        d.run(&wire[..]);
        done1.await.expect("drained");
        done2.await.expect("drained");
        let mut s = String::new();
        r1.read_to_string(&mut s).expect("read");
        assert_eq!(s, "one more");
        s.clear();
        r2.read_to_string(&mut s).expect("read");
        assert_eq!(s, "two");
        let seen = seen.0.lock().expect("lock").clone();
        assert_eq!(seen, ["Ready", "the guest closed the io port"]);
    }

    #[test]
    fn an_oversized_frame_ends_the_port() {
        let seen = Arc::new(Seen::default());
        let d = Demux::new(STALL, seen.clone());
        let mut wire = 1u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&(MAX_FRAME + 1).to_be_bytes());
        d.run(&wire[..]);
        assert!(seen.0.lock().expect("lock")[0].contains("broke the framing"));
    }

    #[tokio::test]
    async fn a_frame_cut_short_ends_the_port_after_delivering_what_came_whole() {
        let seen = Arc::new(Seen::default());
        let d = Demux::new(STALL, seen.clone());
        let (mut r1, w1) = pipe();
        let done1 = d.add_output(1, w1).expect("sink");
        // The largest frame allowed, then one whose body never comes whole.
        let mut wire = frames(&[Frame {
            stream: 1,
            data: vec![b'a'; MAX_FRAME as usize],
        }]);
        wire.extend_from_slice(&1u32.to_be_bytes());
        wire.extend_from_slice(&1000u32.to_be_bytes());
        wire.extend_from_slice(b"short");
        d.run(&wire[..]);
        done1.await.expect("drained");
        let mut got = Vec::new();
        r1.read_to_end(&mut got).expect("read");
        assert_eq!(got.len(), MAX_FRAME as usize);
        let seen = seen.0.lock().expect("lock").clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].starts_with("reading the io port"), "{seen:?}");
    }

    #[test]
    fn a_guest_spraying_control_garbage_and_unknown_streams_reaches_no_sink() {
        let seen = Arc::new(Seen::default());
        let d = Demux::new(STALL, seen.clone());
        let mut fs = Vec::new();
        for i in 0..5000u32 {
            fs.push(Frame {
                stream: 0,
                data: format!("{{\"kind\":\"exit\",\"id\":{i}}}").into_bytes(),
            });
            fs.push(Frame {
                stream: i.wrapping_mul(2_654_435_761) | 1,
                data: vec![0; 64],
            });
        }
        d.run(&frames(&fs)[..]);
        assert!(d.routes.lock().expect("lock").is_empty());
        let seen = seen.0.lock().expect("lock").clone();
        assert_eq!(seen, ["the guest closed the io port"]);
    }

    #[test]
    fn a_stalled_sink_costs_one_stall_then_drops_while_others_flow() {
        let seen = Arc::new(Seen::default());
        let stall = Duration::from_millis(200);
        let d = Demux::new(stall, seen.clone());
        // Stream 1's reader never reads: its pipe fills, then its queue.
        let (_r1, w1) = pipe();
        let (mut r2, w2) = pipe();
        let _done1 = d.add_output(1, w1).expect("sink");
        let done2 = d.add_output(2, w2).expect("sink");
        let chunk = vec![b'x'; MAX_FRAME as usize];
        let mut fs = Vec::new();
        for i in 0..200 {
            fs.push(Frame {
                stream: 1,
                data: chunk.clone(),
            });
            if i % 20 == 0 {
                fs.push(Frame {
                    stream: 2,
                    data: b"y".to_vec(),
                });
            }
        }
        fs.push(Frame::eof(2));
        let wire = frames(&fs);
        let t = Instant::now();
        d.run(&wire[..]);
        // 200 × 64 KiB into a 64 KiB pipe and a 16-frame queue: without the drop rule
        // this would block forever; with it, about one stall.
        assert!(t.elapsed() < stall * 5, "took {:?}", t.elapsed());
        let mut s = String::new();
        r2.read_to_string(&mut s).expect("read");
        assert_eq!(s, "y".repeat(10));
        drop(done2);
    }
}
