//! The process table: every container (exec id "") and exec of the group, by
//! (container id, exec id), with the state the Task API reports.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api::Status;
use oci_spec::runtime::Process;
use tokio::sync::watch;
use ttrpc::Code;

use super::{ExitRecord, TaskService, err};
use crate::process::Created;

pub(super) struct Proc {
    pub(super) bundle: String,
    pub(super) stdin: String,
    pub(super) stdout: String,
    pub(super) stderr: String,
    pub(super) cgroup: String,
    /// Compiled seccomp programs: the container's, also for its execs.
    pub(super) seccomp: PathBuf,
    /// With a terminal (an exec's, or a container's `tty`): the pty, once started.
    pub(super) terminal: bool,
    /// Initial terminal size (rows, cols) from the process's `consoleSize`.
    pub(super) console: Option<(u16, u16)>,
    pub(super) pty: Mutex<Option<crate::pty::Pty>>,
    /// A container's first process: its attach point (output fan-out, stdin).
    pub(super) hub: Option<Arc<crate::attach::Hub>>,
    pub(super) state: Mutex<ProcState>,
    pub(super) exited: watch::Sender<Option<ExitRecord>>,
}

pub(super) struct ProcState {
    pub(super) pid: i32,
    pub(super) status: Status,
    pub(super) created: Option<Created>,
    /// For execs: the process to run, until Start.
    pub(super) exec: Option<Process>,
    pub(super) started_at: String,
}

/// Where a process's stdio goes, as the client named it, and its bundle.
pub(super) struct Stdio {
    pub bundle: String,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

impl Proc {
    /// A process in state CREATED, not started yet; `exec` is the process of an exec
    /// (None for a container's first process).
    pub(super) fn new(io: Stdio, cgroup: String, seccomp: PathBuf, exec: Option<Process>) -> Self {
        let (exited, _) = watch::channel(None);
        Proc {
            bundle: io.bundle,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            cgroup,
            seccomp,
            terminal: false,
            console: None,
            pty: Mutex::new(None),
            hub: None,
            state: Mutex::new(ProcState {
                pid: 0,
                status: Status::CREATED,
                created: None,
                exec,
                started_at: String::new(),
            }),
            exited,
        }
    }
}

/// The process states, changed only here: CREATED (set up, waiting for its start
/// byte) → RUNNING (started) → STOPPED (exited and recorded).
impl Proc {
    /// CREATED → RUNNING; records when.
    pub(super) fn mark_running(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.status = Status::RUNNING;
        s.started_at = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    }

    /// → STOPPED, once its exit is recorded.
    pub(super) fn mark_stopped(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).status = Status::STOPPED;
    }

    /// The state the Task API reports: STOPPED as soon as the exit is known.
    pub(super) fn status(&self) -> Status {
        if self.exited.borrow().is_some() {
            return Status::STOPPED;
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).status
    }
}

impl TaskService {
    pub(super) fn get(&self, id: &str, exec_id: &str) -> ttrpc::Result<Arc<Proc>> {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs
            .get(&(id.to_string(), exec_id.to_string()))
            .cloned()
            .ok_or_else(|| err(Code::NOT_FOUND, format!("process {id}/{exec_id} not found")))
    }

    /// Adds a process; false when one with the same ids exists.
    pub(super) fn insert(&self, id: &str, exec_id: &str, proc_: Arc<Proc>) -> bool {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (id.to_string(), exec_id.to_string());
        if procs.contains_key(&key) {
            return false;
        }
        procs.insert(key, proc_);
        true
    }

    pub(super) fn remove(&self, id: &str, exec_id: &str) {
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(id.to_string(), exec_id.to_string()));
    }

    /// Whether any process has not exited yet.
    pub(super) fn any_running(&self) -> bool {
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|p| p.exited.borrow().is_none())
    }

    /// The pid of the container (first process) whose cgroup is `cgroup`; 0 if none.
    pub(super) fn container_pid(&self, cgroup: &str) -> i32 {
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|((_, exec), p)| exec.is_empty() && p.cgroup == cgroup)
            .and_then(|(_, p)| p.state.lock().ok().map(|s| s.pid))
            .unwrap_or(0)
    }
}
