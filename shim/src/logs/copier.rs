//! The copy thread of one container run: both output pipes to the log file.
//!
//! One OS thread per run polls both pipes (and a notification pipe), reads up to
//! [`READ_SIZE`] at a time, turns what it read into records with one timestamp per
//! read, and writes them with one `write` per poll round. No async runtime, no task hop
//! or allocation per line: the container writes at the speed of the disk.
//!
//! Exit: the reaper tells the thread (through [`Copying::process_exited`]) when the
//! process was reaped. Everything the process wrote is then already in the pipes, which
//! hold at most their capacity; so the thread reads each pipe until it is empty, at EOF,
//! or one capacity further, writes what it read (a last line without a newline as a `P`
//! record), and only then reports "drained" — the exit is reported after that. A daemon
//! the container left running may keep a pipe open: its later output is still copied,
//! after the exit has been reported, until EOF.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::SystemTime;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::sync::oneshot;

use super::file::{LogFile, Rotation};
use super::records::{Splitter, Stream};

/// Largest single read from a pipe.
pub const READ_SIZE: usize = 256 * 1024;

/// Pipe capacity asked for (`F_SETPIPE_SZ`; up to `/proc/sys/fs/pipe-max-size` needs no
/// privilege): fewer, larger reads, fewer wake-ups of the writer.
const PIPE_SIZE: i32 = 1 << 20;

/// How long a carried partial line waits for its end before it is written as `P`.
const IDLE_FLUSH_MS: i32 = 100;

/// Errors starting a copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("creating the exit notification pipe")]
    Pipe(#[source] nix::Error),
    #[error("setting a pipe non-blocking")]
    NonBlocking(#[source] nix::Error),
    #[error("starting the log copy thread")]
    Thread(#[source] std::io::Error),
}

/// The running copy of one process's output.
pub struct Copying {
    /// Written to (then closed) when the process was reaped.
    exited: OwnedFd,
    drained: oneshot::Receiver<()>,
}

impl Copying {
    /// Tells the copy thread the process is gone; resolves once everything it wrote is
    /// in the log file (or the thread ended).
    pub async fn process_exited(self) {
        let _ = nix::unistd::write(&self.exited, b"x");
        drop(self.exited);
        let _ = self.drained.await;
    }
}

/// Starts copying `stdout` and `stderr` (read ends of pipes) into the log at `path`.
pub fn start(
    stdout: OwnedFd,
    stderr: OwnedFd,
    path: PathBuf,
    rotation: Rotation,
) -> Result<Copying, CopyError> {
    let (notify_r, notify_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(CopyError::Pipe)?;
    for fd in [&stdout, &stderr] {
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(CopyError::NonBlocking)?;
        // Best effort: a smaller pipe only means more, smaller reads.
        let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as _));
    }
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("log-copy".into())
        .spawn(move || {
            let mut c = Copier::new(stdout, stderr, notify_r, path, rotation);
            c.run(tx);
        })
        .map_err(CopyError::Thread)?;
    Ok(Copying {
        exited: notify_w,
        drained: rx,
    })
}

struct Input {
    fd: Option<OwnedFd>,
    split: Splitter,
    /// Pipe capacity: the most a pipe can hold when the process is reaped.
    capacity: usize,
}

struct Copier {
    inputs: [Input; 2],
    notify: Option<OwnedFd>,
    log: Option<LogFile>,
    path: PathBuf,
    buf: Vec<u8>,
    out: Vec<u8>,
}

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// What one read gave.
enum Read {
    Data(usize),
    Empty,
    Eof,
}

impl Copier {
    fn new(
        stdout: OwnedFd,
        stderr: OwnedFd,
        notify: OwnedFd,
        path: PathBuf,
        rotation: Rotation,
    ) -> Self {
        let log = match LogFile::open(&path, rotation) {
            Ok(l) => Some(l),
            Err(e) => {
                // The pipes are still read (and the output dropped): a container must
                // not block on a log it cannot have.
                tracing::error!(error = %e, "container output is not logged");
                None
            }
        };
        let input = |fd: OwnedFd, stream| {
            let capacity = fcntl(&fd, FcntlArg::F_GETPIPE_SZ).map_or(65536, |n| n as usize);
            Input {
                fd: Some(fd),
                split: Splitter::new(stream),
                capacity,
            }
        };
        Copier {
            inputs: [input(stdout, Stream::Stdout), input(stderr, Stream::Stderr)],
            notify: Some(notify),
            log,
            path,
            buf: vec![0u8; READ_SIZE],
            out: Vec::with_capacity(2 * READ_SIZE),
        }
    }

    fn run(&mut self, drained: oneshot::Sender<()>) {
        let mut drained = Some(drained);
        while self.inputs.iter().any(|i| i.fd.is_some()) {
            let partial = self.inputs.iter().any(|i| i.split.has_partial());
            let (ready, notified) = self.poll(if partial { IDLE_FLUSH_MS } else { -1 });
            if ready == [false, false] && !notified {
                // Idle with a part of a line held: write it now.
                self.flush_partials();
            }
            for (k, r) in ready.into_iter().enumerate() {
                if r {
                    self.read_once(k);
                }
            }
            if notified {
                self.notify = None;
                self.drain();
                if let Some(tx) = drained.take() {
                    let _ = tx.send(());
                }
            }
            self.write_out();
        }
        self.flush_partials();
        self.write_out();
        if let Some(log) = self.log.take() {
            log.finish();
        }
        if let Some(tx) = drained.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for input; returns which pipes are readable (or hung up) and whether the
    /// exit was notified. `timeout` in ms, -1 for none.
    fn poll(&mut self, timeout: i32) -> ([bool; 2], bool) {
        let mut fds = [libc::pollfd {
            fd: -1,
            events: libc::POLLIN,
            revents: 0,
        }; 3];
        for (k, i) in self.inputs.iter().enumerate() {
            fds[k].fd = i.fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        }
        fds[2].fd = self.notify.as_ref().map_or(-1, |f| f.as_raw_fd());
        // SAFETY: `fds` is a valid array of 3 pollfd for the duration of the call; the
        // descriptors are owned by `self` and stay open; negative ones are ignored.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n <= 0 {
            return ([false, false], false);
        }
        let hit = |p: &libc::pollfd| p.fd >= 0 && p.revents != 0;
        ([hit(&fds[0]), hit(&fds[1])], hit(&fds[2]))
    }

    /// One read from input `k` into records.
    fn read_once(&mut self, k: usize) -> Read {
        let Some(fd) = self.inputs[k].fd.as_ref() else {
            return Read::Eof;
        };
        let r = loop {
            match nix::unistd::read(fd.as_fd(), &mut self.buf) {
                Err(nix::Error::EINTR) => continue,
                other => break other,
            }
        };
        match r {
            Ok(n) if n > 0 => {
                let ts = now();
                self.inputs[k]
                    .split
                    .push(&ts, &self.buf[..n], &mut self.out);
                Read::Data(n)
            }
            Err(nix::Error::EAGAIN) => Read::Empty,
            // EOF, or an error that ends this pipe for good.
            Ok(_) | Err(_) => {
                let ts = now();
                self.inputs[k].split.flush(&ts, &mut self.out);
                self.inputs[k].fd = None;
                Read::Eof
            }
        }
    }

    /// After the exit: reads each pipe until empty, at EOF, or one capacity further;
    /// writes it all, with parts of lines as `P` records.
    fn drain(&mut self) {
        for k in 0..2 {
            let mut budget = self.inputs[k].capacity;
            while budget > 0 {
                match self.read_once(k) {
                    Read::Data(n) => budget = budget.saturating_sub(n),
                    Read::Empty | Read::Eof => break,
                }
                if self.out.len() >= 2 * READ_SIZE {
                    self.write_out();
                }
            }
        }
        self.flush_partials();
        self.write_out();
    }

    fn flush_partials(&mut self) {
        let ts = now();
        for i in &mut self.inputs {
            i.split.flush(&ts, &mut self.out);
        }
    }

    /// Writes the records gathered so far in one write (rotation may cut it in two).
    fn write_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if let Some(log) = self.log.as_mut()
            && let Err(e) = log.write(&self.out)
        {
            tracing::error!(path = %self.path.display(), error = %e, "container output is no longer logged");
            self.log = None;
        }
        self.out.clear();
    }
}
