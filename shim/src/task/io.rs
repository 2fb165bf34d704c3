//! A process's stdio — the CRI log through pipes and the copy thread, FIFOs given by
//! the client, or a terminal — and starting it through `eci-shim init`.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use ttrpc::Code;

use super::procs::Proc;
use super::{TaskService, err};
use crate::process::{self, Created, Placement};

/// Stdio for a process: `file://PATH` is the CRI log (returns pipes to copy from), a
/// plain path is a FIFO opened for the process, empty is /dev/null.
enum Output {
    Log(PathBuf),
    Fifo(std::fs::File),
    Null,
}

/// Opens a FIFO (or file) the client named for a process's stdio.
fn open_stdio(uri: &str, write: bool) -> ttrpc::Result<std::fs::File> {
    let what = if write { "output" } else { "input" };
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open(uri)
        .map_err(|e| err(Code::INVALID_ARGUMENT, format!("opening {what} {uri}: {e}")))
}

fn output(uri: &str) -> ttrpc::Result<Output> {
    if let Some(p) = uri.strip_prefix("file://") {
        return Ok(Output::Log(PathBuf::from(p)));
    }
    if uri.is_empty() {
        return Ok(Output::Null);
    }
    open_stdio(uri, true).map(Output::Fifo)
}

fn input(uri: &str) -> ttrpc::Result<Stdio> {
    if uri.is_empty() {
        return Ok(Stdio::null());
    }
    open_stdio(uri, false).map(Stdio::from)
}

impl TaskService {
    /// Starts an init process with the given stdio and follows it.
    pub(super) async fn spawn(
        &self,
        proc_: &Arc<Proc>,
        config: PathBuf,
        placement: Placement,
        record_to: Option<PathBuf>,
    ) -> ttrpc::Result<Created> {
        if proc_.terminal {
            return self
                .spawn_with_pty(proc_, config, placement, record_to)
                .await;
        }
        let stdin = input(&proc_.stdin)?;
        let (out, errout) = (output(&proc_.stdout)?, output(&proc_.stderr)?);
        let mut log: Option<(PathBuf, OwnedFd, OwnedFd)> = None;
        let (stdout, stderr) = match (out, errout) {
            (Output::Log(path), _) => {
                let (or, ow) = process::pipe().map_err(|e| err(Code::INTERNAL, e.to_string()))?;
                let (er, ew) = process::pipe().map_err(|e| err(Code::INTERNAL, e.to_string()))?;
                log = Some((path, or, er));
                (Stdio::from(ow), Stdio::from(ew))
            }
            (o, e) => {
                let s = |o: Output| match o {
                    Output::Fifo(f) => Stdio::from(f),
                    _ => Stdio::null(),
                };
                (s(o), s(e))
            }
        };
        let created = self
            .create_process(config, placement, stdin, stdout, stderr)
            .await?;
        let copying = match log {
            Some((path, or, er)) => Some(
                crate::logs::start(
                    or,
                    er,
                    path,
                    self.group.log_rotation,
                    Some(Path::new(&proc_.bundle).join(crate::logs::copier::STATS_FILE)),
                )
                .map_err(|e| {
                    err(
                        Code::INTERNAL,
                        format!("{e}: {:?}", std::error::Error::source(&e)),
                    )
                })?,
            ),
            None => None,
        };
        self.watch_exit(proc_.clone(), created.pid, record_to, copying);
        Ok(created)
    }
}

impl TaskService {
    /// Runs `eci-shim init` for `proc_` on a blocking thread (see `process::create`).
    async fn create_process(
        &self,
        config: PathBuf,
        placement: Placement,
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    ) -> ttrpc::Result<Created> {
        let reaper = self.reaper.clone();
        tokio::task::spawn_blocking(move || {
            process::create(&config, &placement, stdin, stdout, stderr, &reaper)
        })
        .await
        .map_err(|e| err(Code::INTERNAL, e.to_string()))?
        .map_err(|e| err(Code::FAILED_PRECONDITION, e.to_string()))
    }

    /// As `spawn`, with a pty as the process's stdio (stderr joins stdout, as on a
    /// terminal).
    async fn spawn_with_pty(
        &self,
        proc_: &Arc<Proc>,
        config: PathBuf,
        placement: Placement,
        record_to: Option<PathBuf>,
    ) -> ttrpc::Result<Created> {
        // Execs only: the container's first process is running; its root holds the
        // devpts instance the terminal belongs to.
        let container_pid = self.container_pid(&proc_.cgroup);
        let container_root = PathBuf::from(format!("/proc/{container_pid}/root"));
        let (pty, slave) = crate::pty::Pty::open(&container_root, proc_.console)
            .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        let dup = |f: &OwnedFd| {
            f.try_clone()
                .map_err(|e| err(Code::INTERNAL, e.to_string()))
        };
        let (s_in, s_out, s_err) = (dup(&slave)?, dup(&slave)?, slave);
        let stdin = if proc_.stdin.is_empty() {
            None
        } else {
            Some(open_stdio(&proc_.stdin, false)?)
        };
        let stdout = open_stdio(&proc_.stdout, true)?;
        let created = self
            .create_process(
                config,
                placement,
                Stdio::from(s_in),
                Stdio::from(s_out),
                Stdio::from(s_err),
            )
            .await?;
        pty.serve(stdin, stdout)
            .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        if let Ok(mut p) = proc_.pty.lock() {
            *p = Some(pty);
        }
        self.watch_exit(proc_.clone(), created.pid, record_to, None);
        Ok(created)
    }
}
