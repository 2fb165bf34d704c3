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
//!
//! The container never pays for the log: a read end is closed only at EOF (a closed
//! read end would SIGPIPE the container), a panic in the copy falls back to reading and
//! dropping, and when the log cannot be written (full or failing filesystem) the thread
//! keeps reading, counts what it drops (in `<bundle>/log-stats.json`, which the agent
//! turns into an event and a metric), tries the log again every [`RETRY`], and when a
//! write succeeds again first writes a record saying how many bytes were dropped.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::sync::oneshot;

use super::file::{LogFile, Rotation, dropped_record};
use super::records::{Splitter, Stream};

/// Largest single read from a pipe.
pub const READ_SIZE: usize = 256 * 1024;

/// Pipe capacity asked for (`F_SETPIPE_SZ`; up to `/proc/sys/fs/pipe-max-size` needs no
/// privilege): fewer, larger reads, fewer wake-ups of the writer.
const PIPE_SIZE: i32 = 1 << 20;

/// How long a carried partial line waits for its end before it is written as `P`.
const IDLE_FLUSH_MS: i32 = 100;

/// Time between attempts to write a log that failed, and between updates of the
/// stats file while output is being dropped.
pub const RETRY: Duration = Duration::from_millis(500);

/// File name of a run's log stats in its bundle (read by the agent).
pub const STATS_FILE: &str = "log-stats.json";

/// What the agent reads in [`STATS_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogStats {
    /// Bytes of output dropped in this run so far.
    pub dropped_bytes: u64,
    /// Whether the log is failing now.
    pub failing: bool,
    /// The last write error.
    pub error: String,
}

/// Output being dropped because the log cannot be written.
struct Dropping {
    /// Since the last record written: goes into the "dropped" record.
    bytes: u64,
    error: String,
    last_try: Instant,
}

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

/// Sees every chunk of output as it is read, before it is logged (attachers). Called on
/// the copy thread: it must never block.
pub trait Tap: Send + Sync {
    fn output(&self, stream: Stream, data: &[u8]);
}

/// Starts copying `stdout` and `stderr` (read ends of pipes; a pty master as `stdout`
/// and no `stderr` for a process with a terminal) into the log at `path`, showing each
/// chunk to `tap` first.
pub fn start(
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    path: PathBuf,
    rotation: Rotation,
    stats: Option<PathBuf>,
    tap: Option<std::sync::Arc<dyn Tap>>,
) -> Result<Copying, CopyError> {
    let (notify_r, notify_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(CopyError::Pipe)?;
    for fd in std::iter::once(&stdout).chain(stderr.as_ref()) {
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(CopyError::NonBlocking)?;
        // Best effort: a smaller pipe only means more, smaller reads.
        let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as _));
    }
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("log-copy".into())
        .spawn(move || {
            let mut c = Copier::new(stdout, stderr, notify_r, path, rotation, stats);
            c.tap = tap;
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.run(tx)));
            if run.is_err() {
                // Never leave the container a closed pipe: read and drop to EOF.
                tracing::error!("the log copy failed; the container's output is dropped");
                c.discard();
            }
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
    tap: Option<std::sync::Arc<dyn Tap>>,
    notify: Option<OwnedFd>,
    log: Option<LogFile>,
    path: PathBuf,
    rotation: Rotation,
    buf: Vec<u8>,
    out: Vec<u8>,
    stats_path: Option<PathBuf>,
    stats: LogStats,
    dropping: Option<Dropping>,
    stats_written: Option<Instant>,
    /// The stats file is behind the count (its updates are spaced out).
    stats_dirty: bool,
}

/// A log error for the stats and the "dropped" record: its cause only (e.g. "No space
/// left on device"), since the record lands in the tenant's log and the host path of
/// the file is none of its business.
fn error_text(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(s) => s.to_string(),
        None => e.to_string(),
    }
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
        stderr: Option<OwnedFd>,
        notify: OwnedFd,
        path: PathBuf,
        rotation: Rotation,
        stats_path: Option<PathBuf>,
    ) -> Self {
        if let Some(p) = &stats_path {
            // Stats are per run.
            let _ = std::fs::remove_file(p);
        }
        let mut dropping = None;
        let log = match LogFile::open(&path, rotation) {
            Ok(l) => Some(l),
            Err(e) => {
                // The pipes are still read (and the output dropped until the log can
                // be opened): a container must not block on a log it cannot have.
                tracing::error!(error = %e, "container output is not logged");
                dropping = Some(Dropping {
                    bytes: 0,
                    error: error_text(&e),
                    last_try: Instant::now(),
                });
                None
            }
        };
        let input = |fd: Option<OwnedFd>, stream| {
            let capacity = fd.as_ref().map_or(65536, |fd| {
                fcntl(fd, FcntlArg::F_GETPIPE_SZ).map_or(65536, |n| n as usize)
            });
            Input {
                fd,
                split: Splitter::new(stream),
                capacity,
            }
        };
        Copier {
            inputs: [
                input(Some(stdout), Stream::Stdout),
                input(stderr, Stream::Stderr),
            ],
            tap: None,
            notify: Some(notify),
            log,
            path,
            rotation,
            buf: vec![0u8; READ_SIZE],
            out: Vec::with_capacity(2 * READ_SIZE),
            stats_path,
            stats: LogStats::default(),
            dropping,
            stats_written: None,
            stats_dirty: false,
        }
    }

    /// After a panic: reads every pipe to EOF, dropping what it reads.
    fn discard(&mut self) {
        while self.inputs.iter().any(|i| i.fd.is_some()) {
            let (ready, _) = self.poll(-1);
            for (k, r) in ready.into_iter().enumerate() {
                if r {
                    self.read_once(k);
                }
            }
            self.out.clear();
        }
    }

    fn run(&mut self, drained: oneshot::Sender<()>) {
        let mut drained = Some(drained);
        while self.inputs.iter().any(|i| i.fd.is_some()) {
            let partial = self.inputs.iter().any(|i| i.split.has_partial());
            let timeout = if partial {
                IDLE_FLUSH_MS
            } else if self.stats_dirty {
                RETRY.as_millis() as i32
            } else {
                -1
            };
            let (ready, notified) = self.poll(timeout);
            if ready == [false, false] && !notified {
                // Idle with a part of a line held: write it now; and the final count.
                self.flush_partials();
                if self.stats_dirty {
                    self.write_stats(true);
                }
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
                if let Some(tap) = &self.tap {
                    let stream = if k == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                    tap.output(stream, &self.buf[..n]);
                }
                let ts = now();
                self.inputs[k]
                    .split
                    .push(&ts, &self.buf[..n], &mut self.out);
                Read::Data(n)
            }
            Err(nix::Error::EAGAIN) => Read::Empty,
            // A pty master whose slaves are all closed (the shim keeps one until the
            // process is reaped and drained): the end of a terminal's output.
            Err(nix::Error::EIO) => {
                let ts = now();
                self.inputs[k].split.flush(&ts, &mut self.out);
                self.inputs[k].fd = None;
                Read::Eof
            }
            // A read error on a pipe is not expected; closing it would SIGPIPE the
            // writer, so it stays open (and the next poll tries again, a little later).
            Err(e) => {
                tracing::warn!(error = %e, "reading container output");
                std::thread::sleep(Duration::from_millis(10));
                Read::Empty
            }
            Ok(_) => {
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
    /// While the log is failing, drops them (counted), trying the log again every
    /// [`RETRY`]; the first write that succeeds is preceded by the "dropped" record.
    fn write_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let result = match &self.dropping {
            Some(d) if d.last_try.elapsed() < RETRY => Err(None),
            Some(d) => self.try_resume(d.bytes, d.error.clone()).map_err(Some),
            None => match self.log.as_mut() {
                Some(log) => log.write(&self.out).map_err(|e| Some(error_text(&e))),
                None => Err(Some("the log file is not open".into())),
            },
        };
        match result {
            Ok(()) => {
                if self.dropping.take().is_some() {
                    tracing::info!(path = %self.path.display(), "container output is logged again");
                    self.stats.failing = false;
                    self.write_stats(true);
                }
            }
            Err(error) => self.dropped(self.out.len() as u64, error),
        }
        self.out.clear();
    }

    /// Reopens the log if needed, writes the "dropped" record, then the records held.
    fn try_resume(&mut self, bytes: u64, error: String) -> Result<(), String> {
        if let Some(d) = self.dropping.as_mut() {
            d.last_try = Instant::now();
        }
        let log = match self.log.as_mut() {
            Some(log) => {
                log.resume().map_err(|e| error_text(&e))?;
                log
            }
            None => self
                .log
                .insert(LogFile::open(&self.path, self.rotation).map_err(|e| error_text(&e))?),
        };
        log.write(&dropped_record(bytes, &error))
            .map_err(|e| error_text(&e))?;
        if let Some(d) = self.dropping.as_mut() {
            // Told: a later drop starts its own count.
            d.bytes = 0;
        }
        log.write(&self.out).map_err(|e| error_text(&e))
    }

    /// Counts `n` bytes as dropped; `error` is the failure of a write just tried.
    fn dropped(&mut self, n: u64, error: Option<String>) {
        self.stats.dropped_bytes += n;
        self.stats.failing = true;
        let first = self.dropping.is_none();
        let d = self.dropping.get_or_insert_with(|| Dropping {
            bytes: 0,
            error: String::new(),
            last_try: Instant::now(),
        });
        d.bytes += n;
        if let Some(e) = error {
            d.error = e.clone();
            self.stats.error = e;
        }
        if first {
            tracing::error!(path = %self.path.display(), error = %d.error, "container output is dropped until the log can be written");
        }
        self.write_stats(first);
    }

    /// Writes the stats file: now when `now`, else at most once per [`RETRY`].
    fn write_stats(&mut self, now: bool) {
        let Some(path) = &self.stats_path else {
            return;
        };
        if !now && self.stats_written.is_some_and(|t| t.elapsed() < RETRY) {
            self.stats_dirty = true;
            return;
        }
        self.stats_written = Some(Instant::now());
        self.stats_dirty = false;
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&self.stats)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&tmp, json))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "writing log stats");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use super::*;

    fn wait_until(mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn stats(path: &std::path::Path) -> LogStats {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// A log that fails (a link to /dev/full: every write is ENOSPC) is drained and
    /// counted, never closed on the writer; once writable again, the "dropped" record
    /// comes first, then the new output.
    #[test]
    fn a_failing_log_drops_counts_and_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        let stats_path = dir.path().join(STATS_FILE);
        std::os::unix::fs::symlink("/dev/full", &log).expect("link to /dev/full");
        let (or, ow) = nix::unistd::pipe().expect("pipe");
        let (er, _ew) = nix::unistd::pipe().expect("pipe");
        let copying = start(
            or,
            Some(er),
            log.clone(),
            Rotation::default(),
            Some(stats_path.clone()),
            None,
        )
        .expect("start");
        let mut out = std::fs::File::from(ow);
        // Far more than the pipe holds: only a reader that keeps draining takes it all.
        for i in 0..20_000 {
            writeln!(out, "lost line {i} {}", "x".repeat(100)).expect("never EPIPE, never blocked");
        }
        assert!(
            wait_until(|| stats(&stats_path).dropped_bytes > 2_000_000),
            "{:?}",
            stats(&stats_path)
        );
        let s = stats(&stats_path);
        assert!(s.failing, "{s:?}");
        assert!(s.error.contains("No space left"), "{s:?}");
        assert!(
            !s.error.contains(dir.path().to_str().expect("utf-8")),
            "{s:?}"
        );

        // Writable again.
        std::fs::remove_file(&log).expect("unlink");
        let found = wait_until(|| {
            writeln!(out, "kept line").expect("write");
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("kept line"))
        });
        assert!(found, "logging never resumed");
        let text = std::fs::read_to_string(&log).expect("log");
        let first = text.lines().next().expect("a line");
        assert!(
            first.contains("bytes of output were dropped here") && first.contains("No space left"),
            "{first}"
        );
        assert!(!text.contains("lost line"), "dropped output was written");
        assert!(wait_until(|| !stats(&stats_path).failing));
        drop(out);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(copying.process_exited());
    }
}
