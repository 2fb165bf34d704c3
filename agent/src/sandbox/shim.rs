//! The agent's side of a group's shim: starting it, and the Task API client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::TaskClient;
use eci_runtime::layout::GroupDir;
use ttrpc::context;

/// Errors talking to a shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("starting the shim: {0}")]
    Start(String),
    #[error("connecting to the shim at {path}")]
    Connect {
        path: String,
        #[source]
        source: ttrpc::Error,
    },
    #[error("shim {call}")]
    Call {
        call: &'static str,
        #[source]
        source: ttrpc::Error,
    },
    /// The shim took longer than the call's deadline: stopped, hung or overloaded.
    #[error("the group's shim did not answer {call} within {after:?}")]
    Unresponsive { call: &'static str, after: Duration },
}

impl ShimError {
    /// Whether the shim itself failed (no answer, connection gone) rather than the call
    /// (an error status the shim sent back).
    pub fn is_unavailable(&self) -> bool {
        match self {
            ShimError::Unresponsive { .. } | ShimError::Connect { .. } => true,
            ShimError::Call { source, .. } => !matches!(source, ttrpc::Error::RpcStatus(_)),
            ShimError::Start(_) => false,
        }
    }

    /// The shim's own message for a failed call (e.g. a container setup error).
    pub fn message(&self) -> String {
        match self {
            ShimError::Call {
                source: ttrpc::Error::RpcStatus(s),
                ..
            } => s.message.clone(),
            other => {
                let mut m = other.to_string();
                if let Some(s) = std::error::Error::source(other) {
                    m.push_str(&format!(": {s}"));
                }
                m
            }
        }
    }
}

/// How the agent starts a shim.
#[derive(Debug, Clone)]
pub struct ShimLaunch {
    pub binary: PathBuf,
    pub run_dir: PathBuf,
    pub cgroup_parent: String,
    pub log_max_bytes: u64,
    /// Log files kept per container run (`runtime.log_max_files`).
    pub log_max_files: u32,
    /// Gzip older rotated logs (`runtime.log_compress`).
    pub log_compress: bool,
    /// `pids.max` of each group's cgroup.
    pub pids_max: u32,
}

/// Where an exec'd process's stdio goes: FIFO paths ("" for none) and whether it gets
/// a terminal (then stdout carries stderr too).
#[derive(Debug, Clone, Default)]
pub struct ExecIo {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A connected shim.
#[derive(Clone)]
pub struct Shim {
    client: TaskClient,
}

/// Deadlines of agent→shim calls. Every call has one: a stopped or hung shim must cost
/// its caller a bounded wait, never a task, a lock or an API request of another group.
/// The ttrpc server drops a handler whose deadline passed, so nothing piles up there.
pub mod deadline {
    use std::time::Duration;

    /// Connect, State, Pids, Stats, Kill, ResizePty: answered from memory by the shim.
    pub const QUICK: Duration = Duration::from_secs(3);
    /// Delete: the shim waits up to 5 s for the process and removes its cgroup.
    pub const DELETE: Duration = Duration::from_secs(10);
    /// Exec (registers a process), Shutdown.
    pub const EXEC: Duration = Duration::from_secs(5);
    /// Create: mounts, cgroup, the container's init up to its start barrier.
    pub const CREATE: Duration = Duration::from_secs(60);
    /// Start: the process's last setup steps and exec.
    pub const START: Duration = Duration::from_secs(30);
    /// One round of the Wait long-poll; between rounds the shim is probed (see
    /// [`super::Shim::wait`]).
    pub const WAIT_ROUND: Duration = Duration::from_secs(30);
    /// Attempts of an idempotent call (State, Pids, Stats, Connect, Kill) before the
    /// shim is called unresponsive: one slow answer on a loaded host is not a verdict.
    pub const ATTEMPTS: u32 = 2;
}

fn ctx(timeout: Duration) -> context::Context {
    context::with_duration(timeout)
}

/// Turns a ttrpc failure into a [`ShimError`], telling a missed deadline (the client's
/// own, or the server's `DEADLINE_EXCEEDED`) from other failures.
fn classify(call: &'static str, after: Duration, source: ttrpc::Error) -> ShimError {
    let timed_out = match &source {
        ttrpc::Error::Others(m) => m.contains("deadline elapsed"),
        ttrpc::Error::RpcStatus(s) => {
            s.code.enum_value_or_default() == ttrpc::Code::DEADLINE_EXCEEDED
        }
        _ => false,
    };
    if timed_out {
        ShimError::Unresponsive { call, after }
    } else {
        ShimError::Call { call, source }
    }
}

/// Runs an idempotent call up to [`deadline::ATTEMPTS`] times while the shim itself
/// fails (no answer, broken connection); an error status from the shim is final.
async fn retried<T, F, Fut>(call: &'static str, after: Duration, mut f: F) -> Result<T, ShimError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ttrpc::Error>>,
{
    let mut attempt = 1;
    loop {
        match f().await.map_err(|e| classify(call, after, e)) {
            Err(e) if e.is_unavailable() && attempt < deadline::ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// How a process ended (the Task API's view; OOM comes from the exit record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    pub code: u32,
}

impl Shim {
    /// Starts a shim for group `id` and connects to it. Blocks until it serves.
    #[allow(clippy::too_many_arguments)]
    pub async fn launch(
        l: &ShimLaunch,
        id: &str,
        hostname: &str,
        cpu_millis: u64,
        memory_bytes: u64,
        userns_base: Option<u32>,
        vm_config: Option<&Path>,
    ) -> Result<Self, ShimError> {
        let mut cmd = tokio::process::Command::new(&l.binary);
        cmd.arg("start");
        if let Some(base) = userns_base {
            cmd.args(["--userns-base", &base.to_string()]);
        }
        // A vm group: the shim boots the VM `vm.json` describes (contract "Host shim in
        // vm mode") and forwards the Task API into it.
        if let Some(path) = vm_config {
            cmd.args(["--sandbox", "vm", "--vm-config"]).arg(path);
        }
        let out = cmd
            .args([
                "--id",
                id,
                "--hostname",
                hostname,
                "--cgroup-parent",
                &l.cgroup_parent,
            ])
            .arg("--run-dir")
            .arg(&l.run_dir)
            .args([
                "--cpu-millis",
                &cpu_millis.to_string(),
                "--memory-bytes",
                &memory_bytes.to_string(),
            ])
            .args(["--log-max-bytes", &l.log_max_bytes.to_string()])
            .args(["--log-max-files", &l.log_max_files.to_string()])
            .args([
                "--log-compress",
                if l.log_compress { "true" } else { "false" },
            ])
            .args(["--pids-max", &l.pids_max.to_string()])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| ShimError::Start(format!("{}: {e}", l.binary.display())))?;
        if !out.status.success() {
            return Err(ShimError::Start(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Self::connect(&GroupDir::new(&l.run_dir, id).shim_socket()).await
    }

    /// Connects to a running shim's socket, and checks with one call that it answers
    /// (a stopped shim's socket still accepts connections: the kernel does that).
    pub async fn connect(socket: &Path) -> Result<Self, ShimError> {
        let addr = format!("unix://{}", socket.display());
        let c = tokio::time::timeout(deadline::QUICK, ttrpc::asynchronous::Client::connect(&addr))
            .await
            .map_err(|_| ShimError::Unresponsive {
                call: "connect",
                after: deadline::QUICK,
            })?
            .map_err(|source| ShimError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        let client = TaskClient::new(c);
        // A socket file can outlive its shim: make one call to be sure.
        let shim = Shim { client };
        shim.ping().await?;
        Ok(shim)
    }

    /// One Connect call: whether the shim answers at all.
    pub async fn ping(&self) -> Result<(), ShimError> {
        let req = api::ConnectRequest::default();
        retried("connect", deadline::QUICK, || {
            self.client.connect(ctx(deadline::QUICK), &req)
        })
        .await?;
        Ok(())
    }

    /// Creates a container's first process, its output to `log`; with `stdin` the shim
    /// keeps a stdin pipe (or the terminal) for attachers; with `tty` the process gets a
    /// terminal of its own.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: api::Mount,
        log: &Path,
        stdin: bool,
        tty: bool,
    ) -> Result<u32, ShimError> {
        let req = api::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            rootfs: vec![rootfs],
            stdin: if stdin {
                eci_runtime::attach::STDIN_URI.into()
            } else {
                String::new()
            },
            stdout: format!("file://{}", log.display()),
            stderr: format!("file://{}", log.display()),
            terminal: tty,
            ..Default::default()
        };
        let r = self
            .client
            .create(ctx(deadline::CREATE), &req)
            .await
            .map_err(|e| classify("create", deadline::CREATE, e))?;
        Ok(r.pid)
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let req = api::StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        let r = self
            .client
            .start(ctx(deadline::START), &req)
            .await
            .map_err(|e| classify("start", deadline::START, e))?;
        Ok(r.pid)
    }

    /// Waits for a process to exit: a long-poll in rounds of [`deadline::WAIT_ROUND`].
    /// A round that ends without an exit is followed by a Connect probe: a shim that
    /// answers is waited on again; one that does not ends the wait with
    /// [`ShimError::Unresponsive`], so no caller waits on a stopped shim forever.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exited, ShimError> {
        let req = api::WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        loop {
            match self
                .client
                .wait(ctx(deadline::WAIT_ROUND), &req)
                .await
                .map_err(|e| classify("wait", deadline::WAIT_ROUND, e))
            {
                Ok(r) => {
                    return Ok(Exited {
                        code: r.exit_status,
                    });
                }
                Err(ShimError::Unresponsive { .. }) => self.ping().await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// The process state: (pid, running).
    pub async fn state(&self, id: &str) -> Result<(u32, bool), ShimError> {
        let req = api::StateRequest {
            id: id.into(),
            ..Default::default()
        };
        let r = retried("state", deadline::QUICK, || {
            self.client.state(ctx(deadline::QUICK), &req)
        })
        .await?;
        Ok((
            r.pid,
            r.status.enum_value_or_default() == api::Status::RUNNING,
        ))
    }

    /// A container's memory and CPU use as the shim measures it (for a vm group:
    /// measured inside the guest and forwarded). Every value the shim sends is data,
    /// never trusted further than a number to report.
    pub async fn stats(&self, id: &str) -> Result<eci_runtime::cgroup::Usage, ShimError> {
        use containerd_shim_protos::cgroups::metrics::Metrics;
        let req = api::StatsRequest {
            id: id.into(),
            ..Default::default()
        };
        let r = retried("stats", deadline::QUICK, || {
            self.client.stats(ctx(deadline::QUICK), &req)
        })
        .await?;
        let m: Option<Metrics> = r.stats.as_ref().and_then(|a| a.unpack().ok().flatten());
        let mut u = eci_runtime::cgroup::Usage::default();
        if let Some(m) = m {
            if let Some(mem) = m.memory.as_ref() {
                u.memory_bytes = mem.usage.as_ref().map_or(0, |e| e.usage);
                u.memory_limit = mem
                    .usage
                    .as_ref()
                    .map(|e| e.limit)
                    .filter(|l| *l > 0 && *l < (1 << 62));
                u.cache_bytes = mem.cache;
                u.rss_bytes = mem.rss;
                u.inactive_file_bytes = mem.inactive_file;
            }
            u.cpu_nanos = m
                .cpu
                .as_ref()
                .and_then(|c| c.usage.as_ref())
                .map_or(0, |c| c.total);
        }
        Ok(u)
    }

    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), ShimError> {
        let req = api::KillRequest {
            id: id.into(),
            signal: signal as u32,
            all,
            ..Default::default()
        };
        // Repeating a signal is harmless: retried.
        retried("kill", deadline::QUICK, || {
            self.client.kill(ctx(deadline::QUICK), &req)
        })
        .await?;
        Ok(())
    }

    /// Signals one exec'd process of container `id` (a probe or hook that overran).
    pub async fn kill_exec(&self, id: &str, exec_id: &str, signal: i32) -> Result<(), ShimError> {
        let req = api::KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal: signal as u32,
            ..Default::default()
        };
        retried("kill", deadline::QUICK, || {
            self.client.kill(ctx(deadline::QUICK), &req)
        })
        .await?;
        Ok(())
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        let req = api::DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.client
            .delete(ctx(deadline::DELETE), &req)
            .await
            .map_err(|e| classify("delete", deadline::DELETE, e))?;
        Ok(())
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        io: &ExecIo,
    ) -> Result<(), ShimError> {
        let any = containerd_shim_protos::protobuf::well_known_types::any::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: process_json,
            ..Default::default()
        };
        let req = api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            terminal: io.terminal,
            spec: MessageField::some(any),
            ..Default::default()
        };
        self.client
            .exec(ctx(deadline::EXEC), &req)
            .await
            .map_err(|e| classify("exec", deadline::EXEC, e))?;
        Ok(())
    }

    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), ShimError> {
        let req = api::ResizePtyRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            width: cols,
            height: rows,
            ..Default::default()
        };
        self.client
            .resize_pty(ctx(deadline::QUICK), &req)
            .await
            .map_err(|e| classify("resize_pty", deadline::QUICK, e))?;
        Ok(())
    }

    pub async fn shutdown(&self) -> Result<(), ShimError> {
        let req = api::ShutdownRequest::default();
        self.client
            .shutdown(ctx(deadline::EXEC), &req)
            .await
            .map_err(|e| classify("shutdown", deadline::EXEC, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_deadline_is_unresponsive_and_an_answer_is_not() {
        let client_side = ttrpc::Error::Others("Request deadline elapsed".into());
        let e = classify("state", deadline::QUICK, client_side);
        assert!(
            matches!(e, ShimError::Unresponsive { call: "state", .. }),
            "{e}"
        );
        assert!(e.is_unavailable());
        let server_side =
            ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::DEADLINE_EXCEEDED, "timeout"));
        let e = classify("wait", deadline::WAIT_ROUND, server_side);
        assert!(
            matches!(e, ShimError::Unresponsive { call: "wait", .. }),
            "{e}"
        );
        let refused = ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::NOT_FOUND, "no"));
        let e = classify("state", deadline::QUICK, refused);
        assert!(!e.is_unavailable(), "an answer is not an outage: {e}");
    }

    #[tokio::test]
    async fn a_socket_nobody_answers_fails_within_the_deadline() {
        // A listener that accepts (the kernel does, for a stopped process) and never
        // reads: what a SIGSTOPped shim looks like.
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("shim.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let t0 = std::time::Instant::now();
        let e = Shim::connect(&sock).await.err().expect("no answer");
        assert!(matches!(e, ShimError::Unresponsive { .. }), "{e}");
        let bound = deadline::QUICK * deadline::ATTEMPTS + Duration::from_secs(2);
        assert!(t0.elapsed() < bound, "{:?}", t0.elapsed());
    }
}
