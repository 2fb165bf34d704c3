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
}

impl ShimError {
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

/// Wraps a failed call with the call's name.
fn call(name: &'static str) -> impl FnOnce(ttrpc::Error) -> ShimError {
    move |source| ShimError::Call { call: name, source }
}

fn ctx() -> context::Context {
    context::with_timeout(0)
}

/// How a process ended (the Task API's view; OOM comes from the exit record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    pub code: u32,
}

impl Shim {
    /// Starts a shim for group `id` and connects to it. Blocks until it serves.
    pub async fn launch(
        l: &ShimLaunch,
        id: &str,
        hostname: &str,
        cpu_millis: u64,
        memory_bytes: u64,
    ) -> Result<Self, ShimError> {
        let out = tokio::process::Command::new(&l.binary)
            .arg("start")
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

    /// Connects to a running shim's socket.
    pub async fn connect(socket: &Path) -> Result<Self, ShimError> {
        let addr = format!("unix://{}", socket.display());
        let c = tokio::time::timeout(
            Duration::from_secs(5),
            ttrpc::asynchronous::Client::connect(&addr),
        )
        .await
        .map_err(|_| ShimError::Connect {
            path: socket.display().to_string(),
            source: ttrpc::Error::Others("timed out".into()),
        })?
        .map_err(|source| ShimError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
        let client = TaskClient::new(c);
        // A socket file can outlive its shim: make one call to be sure.
        let shim = Shim { client };
        shim.client
            .connect(ctx(), &api::ConnectRequest::default())
            .await
            .map_err(|source| ShimError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        Ok(shim)
    }

    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: api::Mount,
        log: &Path,
    ) -> Result<u32, ShimError> {
        let req = api::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            rootfs: vec![rootfs],
            stdout: format!("file://{}", log.display()),
            stderr: format!("file://{}", log.display()),
            ..Default::default()
        };
        let r = self
            .client
            .create(ctx(), &req)
            .await
            .map_err(call("create"))?;
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
            .start(ctx(), &req)
            .await
            .map_err(call("start"))?;
        Ok(r.pid)
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exited, ShimError> {
        let req = api::WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        let r = self.client.wait(ctx(), &req).await.map_err(call("wait"))?;
        Ok(Exited {
            code: r.exit_status,
        })
    }

    /// The process state: (pid, running).
    pub async fn state(&self, id: &str) -> Result<(u32, bool), ShimError> {
        let req = api::StateRequest {
            id: id.into(),
            ..Default::default()
        };
        let r = self
            .client
            .state(ctx(), &req)
            .await
            .map_err(call("state"))?;
        Ok((
            r.pid,
            r.status.enum_value_or_default() == api::Status::RUNNING,
        ))
    }

    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), ShimError> {
        let req = api::KillRequest {
            id: id.into(),
            signal: signal as u32,
            all,
            ..Default::default()
        };
        self.client.kill(ctx(), &req).await.map_err(call("kill"))?;
        Ok(())
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        let req = api::DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.client
            .delete(ctx(), &req)
            .await
            .map_err(call("delete"))?;
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
        self.client.exec(ctx(), &req).await.map_err(call("exec"))?;
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
            .resize_pty(ctx(), &req)
            .await
            .map_err(call("resize_pty"))?;
        Ok(())
    }

    pub async fn shutdown(&self) -> Result<(), ShimError> {
        let req = api::ShutdownRequest::default();
        self.client
            .shutdown(ctx(), &req)
            .await
            .map_err(call("shutdown"))?;
        Ok(())
    }
}
