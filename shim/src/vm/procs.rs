//! The host's record of every process in the guest: what the agent asked for (bundle,
//! stdio), the streams standing in for its stdio, and how it ended. The host, not the
//! guest, is the authority on these: an exit the guest reports is checked against this
//! table and recorded here (and in `exit.json`) before Wait returns.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::demux::Drained;
use crate::task::{EXIT_FILE, ExitRecord, write_durably};

/// Longest wait for a process's output to reach its log before its exit is reported.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// One process (a container's first process when `exec_id` is empty).
pub(super) struct VmProc {
    pub bundle: String,
    pub exec: bool,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    /// The guest's stdio URIs (`eci-io://n` or empty), in order stdin, stdout, stderr.
    pub guest_io: [String; 3],
    /// Set up on the host already (containers at Create, execs at Start).
    pub io_ready: AtomicBool,
    pub hub: Option<std::sync::Arc<crate::attach::Hub>>,
    pub pid: Mutex<u32>,
    pub started_at: Mutex<String>,
    /// Output sinks: resolve when their stream's EOF was written.
    pub drained: Mutex<Vec<Drained>>,
    pub copying: Mutex<Option<crate::logs::Copying>>,
    /// Output streams to close if the process goes before their EOF.
    pub streams: Mutex<Vec<u32>>,
    /// The exit was taken (by a guest report or the VM's end): once only.
    exit_taken: AtomicBool,
    pub exited: watch::Sender<Option<ExitRecord>>,
}

/// How a process ended, as far as the host believes it (times are the host's).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ending {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// QEMU itself was OOM-killed on the host (see `ExitRecord::vm_oom_killed`).
    pub vm_oom_killed: bool,
}

impl Ending {
    /// What a guest report may say: the code, a signal number that is one, and the OOM
    /// flag; its times and strings are ignored.
    pub fn from_guest(r: &ExitRecord) -> Self {
        Ending {
            exit_code: r.exit_code,
            signal: r.signal.filter(|s| (1..=64).contains(s)),
            oom_killed: r.oom_killed,
            vm_oom_killed: false,
        }
    }
}

impl VmProc {
    pub fn new(bundle: String, exec: bool, stdio: [String; 3], guest_io: [String; 3]) -> Self {
        let [stdin, stdout, stderr] = stdio;
        VmProc {
            bundle,
            exec,
            stdin,
            stdout,
            stderr,
            guest_io,
            io_ready: AtomicBool::new(false),
            hub: None,
            pid: Mutex::new(0),
            started_at: Mutex::new(String::new()),
            drained: Mutex::new(Vec::new()),
            copying: Mutex::new(None),
            streams: Mutex::new(Vec::new()),
            exit_taken: AtomicBool::new(false),
            exited: watch::channel(None).0,
        }
    }

    pub fn is_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Claims the right to record this process's exit; false if it was claimed.
    pub fn take_exit(&self) -> bool {
        !self.exit_taken.swap(true, Ordering::SeqCst)
    }

    /// Records the exit: waits (bounded) for the output to reach its sinks and log,
    /// writes `exit.json` for a container, then tells Wait and State. Call after
    /// [`VmProc::take_exit`] returned true.
    pub async fn finish(&self, end: Ending) {
        let drained: Vec<Drained> =
            std::mem::take(&mut *self.drained.lock().unwrap_or_else(|p| p.into_inner()));
        let copying = self
            .copying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let drain = async {
            for d in drained {
                let _ = d.await;
            }
            if let Some(c) = copying {
                c.process_exited().await;
            }
        };
        if tokio::time::timeout(LOG_DRAIN_TIMEOUT, drain)
            .await
            .is_err()
        {
            tracing::warn!(bundle = %self.bundle, "output still draining; reporting the exit anyway");
        }
        let rec = ExitRecord {
            exit_code: end.exit_code,
            signal: end.signal,
            oom_killed: end.oom_killed,
            vm_oom_killed: end.vm_oom_killed,
            exited_at: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            started_at: self
                .started_at
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default(),
        };
        if !self.exec
            && let Ok(json) = serde_json::to_vec(&rec)
        {
            let path = std::path::Path::new(&self.bundle).join(EXIT_FILE);
            // Written before anyone is told, so an agent that restarts finds it.
            if let Err(e) = write_durably(&path, &json) {
                tracing::warn!(path = %path.display(), error = %e, "writing the exit record");
            }
        }
        tracing::info!(bundle = %self.bundle, exec = self.exec, code = rec.exit_code, oom = rec.oom_killed, "process in the guest exited");
        self.exited.send_replace(Some(rec));
    }
}
