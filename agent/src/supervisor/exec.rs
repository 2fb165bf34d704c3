//! Running an extra process in a running container (Containers.Exec): FIFOs in the
//! group's run directory carry its stdio between the shim and the agent.

use std::path::PathBuf;

use oci_spec::runtime::{BoxBuilder, Spec};
use tokio::net::unix::pipe;

use super::{GroupCtx, Supervisor};
use crate::error::{Error, Result};
use crate::sandbox::{ExecIo, Shim, ShimError};

/// A started exec: its output pipes, its input (when asked for), and its end.
pub struct ExecSession {
    pub stdout: pipe::Receiver,
    /// None with a terminal: stderr is the terminal too.
    pub stderr: Option<pipe::Receiver>,
    pub stdin: Option<pipe::Sender>,
    /// With a terminal: changes its size.
    pub resize: Option<ExecResize>,
    pub exit: ExecExit,
}

/// Resizes an exec's terminal.
#[derive(Clone)]
pub struct ExecResize {
    shim: Shim,
    container: String,
    exec_id: String,
}

impl ExecResize {
    pub async fn to(&self, rows: u32, cols: u32) -> Result<()> {
        self.shim
            .resize_pty(&self.container, &self.exec_id, rows, cols)
            .await
            .map_err(|e| failed("resizing the terminal", e.message()))
    }
}

/// Waits for an exec and cleans up after it.
pub struct ExecExit {
    shim: Shim,
    group: String,
    container: String,
    exec_id: String,
    dir: PathBuf,
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::FailedPrecondition(format!("{what}: {e}"))
}

/// A failed shim call of an exec into `group`: UNAVAILABLE when the shim does not
/// answer (the caller may retry later), FAILED_PRECONDITION when it refused.
fn shim_failed(group: &str, what: &str, e: ShimError) -> Error {
    if e.is_unavailable() {
        Error::Unavailable(format!("group {group:?}: {what}: {}", e.message()))
    } else {
        failed(what, e.message())
    }
}

fn mkfifo(path: &std::path::Path) -> Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| failed(&format!("creating {}", path.display()), e))
}

impl Supervisor {
    /// Starts `command` in `container` of the group. The process gets the container's
    /// environment, working directory, user and capabilities.
    pub async fn exec(
        &self,
        group: &str,
        container: &str,
        command: Vec<String>,
        stdin: bool,
        tty: bool,
        size: Option<(u32, u32)>,
    ) -> Result<ExecSession> {
        let g = self.groups.get(group)?;
        let ctx: GroupCtx = self.ctx(&g);
        let running = g
            .status
            .iter()
            .flat_map(|s| &s.container_statuses)
            .any(|s| s.name == container && s.state == super::transitions::RUNNING);
        if !running {
            return Err(Error::FailedPrecondition(format!(
                "container {container:?} of group {group:?} is not running"
            )));
        }
        self.start_exec(&ctx, container, command, stdin, tty, size)
            .await
    }

    /// Starts `command` in `container` whatever its recorded state (a postStart hook
    /// runs before the container is recorded Running).
    pub(crate) async fn start_exec(
        &self,
        ctx: &GroupCtx,
        container: &str,
        command: Vec<String>,
        stdin: bool,
        tty: bool,
        size: Option<(u32, u32)>,
    ) -> Result<ExecSession> {
        let group = ctx.name.as_str();
        let bundle = ctx.dir.bundle(container);
        let exec_id = format!("exec-{}", crate::groups::new_id());
        let dir = ctx.dir.root().join("exec").join(&exec_id);
        // File work off the async workers.
        let d2 = dir.clone();
        let spec = tokio::task::spawn_blocking(move || -> Result<Spec> {
            let spec = Spec::load(bundle.join("config.json"))
                .map_err(|e| failed("reading the container spec", e))?;
            std::fs::create_dir_all(&d2).map_err(|e| failed("creating the exec directory", e))?;
            Ok(spec)
        })
        .await
        .map_err(super::join_err)??;
        // The container's own process (env, cwd, ids, capabilities, rlimits), running
        // `command` instead.
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| failed("reading the container spec", "it has no process"))?;
        process.set_args(Some(command));
        process.set_terminal(Some(tty));
        if let (true, Some((rows, cols))) = (tty, size) {
            let console = BoxBuilder::default()
                .height(rows as u64)
                .width(cols as u64)
                .build()
                .map_err(|e| failed("the terminal size", e))?;
            process.set_console_size(Some(console));
        }
        // The container's user by name, resolved inside it as for the container itself.
        if let Some(user) = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get("io.eci.user"))
        {
            process.user_mut().set_username(Some(user.clone()));
        }
        let (out, err, inp) = (dir.join("stdout"), dir.join("stderr"), dir.join("stdin"));
        mkfifo(&out)?;
        // Readers first, so the shim's opens for writing do not block. (A FIFO that
        // never gets a writer never reports hang-up either, so none is made for stderr
        // with a terminal.)
        let stdout = pipe::OpenOptions::new()
            .open_receiver(&out)
            .map_err(|e| failed("opening stdout", e))?;
        let stderr = if tty {
            None
        } else {
            mkfifo(&err)?;
            Some(
                pipe::OpenOptions::new()
                    .open_receiver(&err)
                    .map_err(|e| failed("opening stderr", e))?,
            )
        };
        let stdin_tx = if stdin {
            mkfifo(&inp)?;
            Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&inp)
                    .map_err(|e| failed("opening stdin", e))?,
            )
        } else {
            None
        };
        let shim = Shim::connect(&ctx.dir.shim_socket())
            .await
            .map_err(|e| shim_failed(group, "the group's shim", e));
        let shim = match shim {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let json = serde_json::to_vec(&process).map_err(|e| failed("encoding the process", e))?;
        let stdin_path = if stdin {
            inp.display().to_string()
        } else {
            String::new()
        };
        let io = ExecIo {
            stdin: stdin_path,
            stdout: out.display().to_string(),
            stderr: if tty {
                String::new()
            } else {
                err.display().to_string()
            },
            terminal: tty,
        };
        if let Err(e) = shim.exec(container, &exec_id, json, &io).await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(shim_failed(group, "exec", e));
        }
        if let Err(e) = shim.start(container, &exec_id).await {
            let _ = shim.delete(container, &exec_id).await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(shim_failed(group, "exec", e));
        }
        let resize = tty.then(|| ExecResize {
            shim: shim.clone(),
            container: container.into(),
            exec_id: exec_id.clone(),
        });
        let exit = ExecExit {
            shim,
            group: group.into(),
            container: container.into(),
            exec_id,
            dir,
        };
        Ok(ExecSession {
            stdout,
            stderr,
            stdin: stdin_tx,
            resize,
            exit,
        })
    }
}

impl ExecExit {
    /// SIGKILLs the process (a probe or hook past its timeout); [`ExecExit::wait`]
    /// then reaps it.
    pub(crate) async fn kill(&self) {
        let _ = self
            .shim
            .kill_exec(
                &self.container,
                &self.exec_id,
                nix::sys::signal::Signal::SIGKILL as i32,
            )
            .await;
    }

    /// Waits for the process, then forgets it; returns its exit code.
    pub async fn wait(self) -> Result<i32> {
        let code = self
            .shim
            .wait(&self.container, &self.exec_id)
            .await
            .map_err(|e| shim_failed(&self.group, "waiting for the exec", e))?
            .code as i32;
        let _ = self.shim.delete(&self.container, &self.exec_id).await;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(code)
    }
}
