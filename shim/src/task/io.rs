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
        if proc_.terminal && proc_.hub.is_some() {
            return self
                .spawn_console(proc_, config, placement, record_to)
                .await;
        }
        if proc_.terminal {
            return self
                .spawn_with_pty(proc_, config, placement, record_to)
                .await;
        }
        let stdin = match (&proc_.hub, proc_.stdin.as_str()) {
            // A pipe the shim keeps: attachers write to it; the process never sees EOF
            // while the shim lives (as Docker's `-i` without stdinOnce).
            (Some(hub), eci_runtime::attach::STDIN_URI) => {
                let (r, w) = process::pipe().map_err(|e| err(Code::INTERNAL, e.to_string()))?;
                hub.set_stdin(w)
                    .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
                Stdio::from(r)
            }
            (_, uri) => input(uri)?,
        };
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
            .create_process(config, placement, stdin, stdout, stderr, false)
            .await?;
        let copying = match log {
            Some((path, or, er)) => Some(
                crate::logs::start(
                    or,
                    Some(er),
                    path,
                    self.group.log_rotation,
                    Some(Path::new(&proc_.bundle).join(crate::logs::copier::STATS_FILE)),
                    tap(proc_),
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

/// The attach hub of a container's process, as the log copy's tap.
fn tap(proc_: &Proc) -> Option<Arc<dyn crate::logs::copier::Tap>> {
    proc_
        .hub
        .clone()
        .map(|h| h as Arc<dyn crate::logs::copier::Tap>)
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
        console: bool,
    ) -> ttrpc::Result<Created> {
        let reaper = self.reaper.clone();
        tokio::task::spawn_blocking(move || {
            process::create(&config, &placement, stdin, stdout, stderr, console, &reaper)
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
                false,
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

impl TaskService {
    /// A container's first process with a terminal (`tty`): its init opens the pty in
    /// the container's devpts and sends the master here. The master's output goes to
    /// the log (as stdout, as Docker and CRI log a terminal) and to attachers; input
    /// comes from attachers when the container has `stdin`.
    async fn spawn_console(
        &self,
        proc_: &Arc<Proc>,
        config: PathBuf,
        placement: Placement,
        record_to: Option<PathBuf>,
    ) -> ttrpc::Result<Created> {
        let internal = |e: &dyn std::fmt::Display| err(Code::INTERNAL, e.to_string());
        let mut created = self
            .create_process(
                config,
                placement,
                Stdio::null(),
                Stdio::null(),
                Stdio::null(),
                true,
            )
            .await?;
        let master = created
            .console
            .take()
            .ok_or_else(|| err(Code::INTERNAL, "the container's init sent no terminal"))?;
        let pty = crate::pty::Pty::from_master(master).map_err(|e| internal(&e))?;
        if let Some((rows, cols)) = proc_.console {
            let _ = pty.resize(rows, cols);
        }
        let hub = proc_.hub.clone();
        if let Some(h) = &hub
            && proc_.stdin == eci_runtime::attach::STDIN_URI
        {
            h.set_stdin(pty.master().map_err(|e| internal(&e))?)
                .map_err(|e| internal(&e))?;
        }
        let copying = match output(&proc_.stdout)? {
            Output::Log(path) => Some(
                crate::logs::start(
                    pty.master().map_err(|e| internal(&e))?,
                    None,
                    path,
                    self.group.log_rotation,
                    Some(Path::new(&proc_.bundle).join(crate::logs::copier::STATS_FILE)),
                    tap(proc_),
                )
                .map_err(|e| internal(&e))?,
            ),
            Output::Fifo(out) => {
                let stdin = match proc_.stdin.as_str() {
                    "" | eci_runtime::attach::STDIN_URI => None,
                    uri => Some(open_stdio(uri, false)?),
                };
                pty.serve(stdin, out).map_err(|e| internal(&e))?;
                None
            }
            Output::Null => None,
        };
        if let Ok(mut p) = proc_.pty.lock() {
            *p = Some(pty);
        }
        self.watch_exit(proc_.clone(), created.pid, record_to, copying);
        Ok(created)
    }
}
