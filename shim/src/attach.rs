//! Attaching to a container's first process: the output fan-out, the input it reads,
//! and the listener on the group's attach socket (protocol: `eci_runtime::attach`).
//!
//! Every container has a [`Hub`]. The log copy thread shows it each chunk of output
//! (a [`Tap`]) before logging it; the hub queues a copy for each attacher, up to
//! [`MAX_QUEUED`] bytes. An attacher that reads more slowly than the container writes
//! loses output past that (never the container or the log: they never wait for an
//! attacher) and is told how much with a notice once it catches up.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use eci_runtime::attach::Frame;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::logs::copier::Tap;
use crate::logs::records::Stream;

/// Output queued for one attacher beyond which its output is dropped.
pub const MAX_QUEUED: usize = 1 << 20;

/// One container's attach point.
pub struct Hub {
    /// The container was created with `stdin: true`.
    pub wants_stdin: bool,
    /// The process has a terminal.
    pub tty: bool,
    /// Where input goes: the write end of its stdin pipe, or the pty master.
    stdin: OnceLock<tokio::sync::Mutex<AsyncFd<OwnedFd>>>,
    subs: Mutex<Vec<Sub>>,
    next: AtomicU64,
}

struct Sub {
    id: u64,
    tx: mpsc::UnboundedSender<Frame>,
    queued: Arc<AtomicUsize>,
    dropped: u64,
}

/// One attacher's output queue; leaves the hub when dropped.
pub struct Subscription {
    id: u64,
    rx: mpsc::UnboundedReceiver<Frame>,
    queued: Arc<AtomicUsize>,
    hub: Arc<Hub>,
}

/// Errors feeding a process's stdin.
#[derive(Debug, thiserror::Error)]
pub enum StdinError {
    #[error("the container has no stdin (it was not created with stdin: true)")]
    None,
    #[error("setting stdin non-blocking")]
    NonBlocking(#[source] nix::Error),
    #[error("writing to the container's stdin")]
    Write(#[source] std::io::Error),
}

impl Hub {
    pub fn new(wants_stdin: bool, tty: bool) -> Arc<Self> {
        Arc::new(Hub {
            wants_stdin,
            tty,
            stdin: OnceLock::new(),
            subs: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
        })
    }

    /// Sets where input goes (once). Needs the tokio runtime.
    pub fn set_stdin(&self, fd: OwnedFd) -> Result<(), StdinError> {
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(StdinError::NonBlocking)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(StdinError::NonBlocking)?;
        // SAFETY: `fd` is owned by the AsyncFd for its whole registration and closed
        // only when it is dropped, after deregistration.
        let fd =
            unsafe { AsyncFd::register(fd) }.map_err(|e| StdinError::Write(e.into_parts().1))?;
        let _ = self.stdin.set(tokio::sync::Mutex::new(fd));
        Ok(())
    }

    /// Whether attachers can write input.
    pub fn has_stdin(&self) -> bool {
        self.stdin.get().is_some()
    }

    /// Writes `data` to the process's input, waiting while its pipe (or terminal) is
    /// full; one attacher at a time.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), StdinError> {
        let w = self.stdin.get().ok_or(StdinError::None)?;
        let w = w.lock().await;
        let mut off = 0;
        while off < data.len() {
            let mut ready = w.writable().await.map_err(StdinError::Write)?;
            match ready.try_io(|fd| {
                nix::unistd::write(fd.get_ref(), &data[off..]).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => off += n,
                Ok(Err(e)) => return Err(StdinError::Write(e)),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// A new attacher's output queue.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Sub {
                id,
                tx,
                queued: queued.clone(),
                dropped: 0,
            });
        Subscription {
            id,
            rx,
            queued,
            hub: self.clone(),
        }
    }

    /// How many attachers are connected.
    pub fn attachers(&self) -> usize {
        self.subs.lock().map_or(0, |s| s.len())
    }
}

impl Tap for Hub {
    fn output(&self, stream: Stream, data: &[u8]) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain_mut(|s| {
            if s.queued.load(Ordering::Relaxed) + data.len() > MAX_QUEUED {
                s.dropped += data.len() as u64;
                return !s.tx.is_closed();
            }
            if s.dropped > 0 {
                let note = format!(
                    "{} bytes of output were dropped for this attacher: it read more slowly \
                     than the container wrote (the log has them)",
                    s.dropped
                );
                s.dropped = 0;
                if s.tx.send(Frame::Notice(note)).is_err() {
                    return false;
                }
            }
            s.queued.fetch_add(data.len(), Ordering::Relaxed);
            let f = match stream {
                Stream::Stdout => Frame::Stdout(data.to_vec()),
                Stream::Stderr => Frame::Stderr(data.to_vec()),
            };
            s.tx.send(f).is_ok()
        });
    }
}

fn frame_len(f: &Frame) -> usize {
    match f {
        Frame::Stdout(d) | Frame::Stderr(d) => d.len(),
        _ => 0,
    }
}

impl Subscription {
    /// The next chunk of output (or notice); None once the hub is gone.
    pub async fn recv(&mut self) -> Option<Frame> {
        let f = self.rx.recv().await?;
        self.queued.fetch_sub(frame_len(&f), Ordering::Relaxed);
        Some(f)
    }

    /// What is queued now, without waiting.
    pub fn try_recv(&mut self) -> Option<Frame> {
        let f = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(frame_len(&f), Ordering::Relaxed);
        Some(f)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub
            .subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.id != self.id);
    }
}

/// Listens on `path` (mode 0600) and hands each connection to `handle`.
pub fn listen<F, Fut>(path: &Path, handle: F) -> std::io::Result<()>
where
    F: Fn(tokio::net::UnixStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    tokio::spawn(handle(conn));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an attach connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_attacher_loses_output_and_is_told_while_a_fast_one_gets_it_all() {
        let hub = Hub::new(false, false);
        let mut slow = hub.subscribe();
        let mut fast = hub.subscribe();
        let chunk = vec![b'x'; 64 * 1024];
        let mut fast_got = 0;
        for _ in 0..40 {
            hub.output(Stream::Stdout, &chunk);
            while let Some(f) = fast.try_recv() {
                fast_got += frame_len(&f);
            }
        }
        assert_eq!(fast_got, 40 * chunk.len());
        let mut slow_got = 0;
        while let Some(f) = slow.try_recv() {
            slow_got += frame_len(&f);
        }
        assert_eq!(slow_got, MAX_QUEUED);
        // Caught up: the next output comes after a notice of what was lost.
        hub.output(Stream::Stderr, b"after");
        match slow.try_recv() {
            Some(Frame::Notice(n)) => assert!(n.starts_with("1572864 bytes"), "{n}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(slow.try_recv(), Some(Frame::Stderr(b"after".to_vec())));
        drop(slow);
        assert_eq!(hub.attachers(), 1);
    }
}
