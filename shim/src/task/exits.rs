//! Following a process to its exit: the exit record (`<bundle>/exit.json`, for an
//! agent that may have been down when it happened), the state change, and the
//! `exited` channel that Wait and State read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use eci_runtime::cgroup;
use serde::{Deserialize, Serialize};

use super::TaskService;
use super::procs::Proc;

/// How a process ended, as recorded in `<bundle>/exit.json` for the agent (which may
/// have been down when it happened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// The group's VM (QEMU) was OOM-killed on the host, taking the process with it: a
    /// different event from the container's own limit (`oom_killed`) in the guest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vm_oom_killed: bool,
    /// RFC 3339.
    pub exited_at: String,
    pub started_at: String,
}

/// Longest wait for a process's output to reach its log before its exit is reported.
const LOG_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// File name of the exit record in a bundle.
pub const EXIT_FILE: &str = "exit.json";

impl TaskService {
    /// Follows a process until it exits, then records how. With `log`, the exit is
    /// reported (exit record, STOPPED, the `exited` channel that Wait and State read)
    /// only once everything the process wrote is in its log file: a batch job's last
    /// line is often its result.
    pub(super) fn watch_exit(
        &self,
        proc_: Arc<Proc>,
        pid: i32,
        record_to: Option<PathBuf>,
        log: Option<crate::logs::Copying>,
    ) {
        let rx = self.reaper.subscribe(pid);
        tokio::spawn(async move {
            let Ok(exit) = rx.await else { return };
            if let Some(log) = log {
                // The drain is bounded by the pipes' capacity (see logs::copier); the
                // timeout only guards against a log file that stopped taking writes.
                let drained = tokio::time::timeout(LOG_DRAIN_TIMEOUT, log.process_exited()).await;
                if drained.is_err() {
                    tracing::warn!(pid, "log copy still busy; reporting the exit anyway");
                }
            }
            let oom_killed =
                exit.signal == Some(libc::SIGKILL) && cgroup::oom_kills(&proc_.cgroup) > 0;
            let started_at = proc_
                .state
                .lock()
                .map(|s| s.started_at.clone())
                .unwrap_or_default();
            let rec = ExitRecord {
                exit_code: exit.code,
                signal: exit.signal,
                oom_killed,
                vm_oom_killed: false,
                exited_at: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
                started_at,
            };
            if let Some(path) = record_to
                && let Ok(json) = serde_json::to_vec(&rec)
            {
                // Written before anyone is told, so an agent that restarts finds it.
                let _ = write_durably(&path, &json);
            }
            proc_.mark_stopped();
            tracing::info!(
                pid,
                code = rec.exit_code,
                oom = rec.oom_killed,
                "process exited"
            );
            if let Ok(pty) = proc_.pty.lock()
                && let Some(p) = pty.as_ref()
            {
                p.release();
            }
            // send_replace stores the value even when nobody is subscribed yet.
            proc_.exited.send_replace(Some(rec));
        });
    }
}

pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Only reached if a watch channel says "exited" without a record, which it never does.
pub(super) fn unreachable_exit() -> ExitRecord {
    ExitRecord {
        exit_code: 255,
        signal: None,
        oom_killed: false,
        vm_oom_killed: false,
        exited_at: String::new(),
        started_at: String::new(),
    }
}
