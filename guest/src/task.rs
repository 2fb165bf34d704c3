//! The guest's Task service: the host shim's [`TaskService`], with what only the guest
//! does around it — applying the host's [`CreateOptions`] before a Create, serving
//! `eci-io://N` stdio over the io port, and telling the host of each exit
//! ([`Control::Exit`]) after the process's last output frame. Every other call is
//! delegated unchanged.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task;
use eci_shim::guest_proto::{CREATE_OPTIONS_TYPE, Control, CreateOptions, parse_io_uri};
use eci_shim::task::{EXIT_FILE, ExitRecord, TaskService};
use nix::sys::stat::Mode;
use ttrpc::asynchronous::TtrpcContext;
use ttrpc::{Code, Status};

use crate::io::IoPort;

/// Where the stdio FIFOs of `eci-io://N` streams live in the guest.
pub const FIFO_DIR: &str = "/run/eci-guest/io";
/// Longest wait, after a process exits, for its output to be sent before its exit is.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(Status {
        code: code.into(),
        message: msg.into(),
        ..Default::default()
    })
}

/// One process's io-port streams: our ends of its FIFOs, from Create/Exec until the
/// process has its ends (then the pumps start).
#[derive(Default)]
struct Streams {
    /// Output streams and the FIFO read ends (opened non-blocking).
    outputs: Vec<(u32, File)>,
    /// The stdin stream and the FIFO (opened read-write).
    stdin: Option<(u32, File)>,
    fifos: Vec<PathBuf>,
}

impl Streams {
    fn remove_fifos(&self) {
        for f in &self.fifos {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn fifo(stream: u32) -> Result<PathBuf, ttrpc::Error> {
    let path = Path::new(FIFO_DIR).join(stream.to_string());
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
        .map_err(|e| err(Code::INTERNAL, format!("mkfifo {}: {e}", path.display())))?;
    Ok(path)
}

fn open_fifo(path: &Path, read: bool, write: bool, flags: i32) -> Result<File, ttrpc::Error> {
    std::fs::OpenOptions::new()
        .read(read)
        .write(write)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| err(Code::INTERNAL, format!("opening {}: {e}", path.display())))
}

/// Replaces `eci-io://N` URIs with FIFOs and opens our ends; other URIs stay as they
/// are (the host proxy sends only these, or empty).
fn prepare(
    stdin: &mut String,
    stdout: &mut String,
    stderr: &mut String,
) -> Result<Streams, ttrpc::Error> {
    let mut s = Streams::default();
    std::fs::create_dir_all(FIFO_DIR).map_err(|e| err(Code::INTERNAL, e.to_string()))?;
    if let Some(n) = parse_io_uri(stdin) {
        let path = fifo(n)?;
        s.fifos.push(path.clone());
        s.stdin = Some((n, open_fifo(&path, true, true, 0)?));
        *stdin = path.display().to_string();
    }
    let mut seen: HashMap<u32, String> = HashMap::new();
    for uri in [stdout, stderr] {
        let Some(n) = parse_io_uri(uri) else { continue };
        if let Some(p) = seen.get(&n) {
            *uri = p.clone();
            continue;
        }
        let path = fifo(n)?;
        s.fifos.push(path.clone());
        s.outputs
            .push((n, open_fifo(&path, true, false, libc::O_NONBLOCK)?));
        *uri = path.display().to_string();
        seen.insert(n, uri.clone());
    }
    Ok(s)
}

/// The guest's Task service.
pub struct GuestTask {
    inner: Arc<TaskService>,
    io: Arc<IoPort>,
    group_dir: PathBuf,
    layers: Mutex<HashSet<PathBuf>>,
    /// Execs created but not started: their streams.
    pending: Mutex<HashMap<(String, String), Streams>>,
}

impl GuestTask {
    /// Wraps `inner` for the group at `group_dir`, with stdio over `io`.
    pub fn new(inner: Arc<TaskService>, io: Arc<IoPort>, group_dir: PathBuf) -> Self {
        GuestTask {
            inner,
            io,
            group_dir,
            layers: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the pumps of a process that now holds its FIFOs, and the watcher that
    /// sends its exit after its output.
    fn follow(&self, id: String, exec_id: String, bundle: Option<PathBuf>, streams: Streams) {
        let Streams {
            outputs,
            stdin,
            fifos,
        } = streams;
        // The process has its ends open: the names are no longer needed.
        for f in &fifos {
            let _ = std::fs::remove_file(f);
        }
        let stdin_stream = stdin.as_ref().map(|(n, _)| *n);
        if let Some((n, f)) = stdin {
            self.io.add_stdin(n, f);
        }
        let pumps: Vec<_> = outputs
            .into_iter()
            .map(|(n, f)| self.io.pump(n, f))
            .collect();
        let inner = self.inner.clone();
        let io = self.io.clone();
        tokio::spawn(async move {
            let ctx = TtrpcContext::default();
            let waited = inner
                .wait(
                    &ctx,
                    api::WaitRequest {
                        id: id.clone(),
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    },
                )
                .await;
            let drained = tokio::task::spawn_blocking(move || {
                for p in pumps {
                    let _ = p.join();
                }
            });
            if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
                tracing::warn!(%id, %exec_id, "output still open after exit; reporting the exit");
            }
            if let Some(n) = stdin_stream {
                io.remove_stdin(n);
            }
            let record = match (&bundle, &waited) {
                (Some(b), _) => std::fs::read(b.join(EXIT_FILE))
                    .ok()
                    .and_then(|j| serde_json::from_slice::<ExitRecord>(&j).ok()),
                _ => None,
            };
            let record = match (record, waited) {
                (Some(r), _) => r,
                (None, Ok(w)) => record_of(&w),
                (None, Err(e)) => {
                    tracing::warn!(%id, %exec_id, error = %e, "waiting for a process");
                    return;
                }
            };
            let msg = Control::Exit {
                id,
                exec_id,
                record,
            };
            let _ = tokio::task::spawn_blocking(move || io.control(&msg)).await;
        });
    }
}

/// An exit record from a Wait answer (execs, which have no exit.json).
fn record_of(w: &api::WaitResponse) -> ExitRecord {
    let at = w.exited_at.as_ref().map_or(SystemTime::UNIX_EPOCH, |t| {
        SystemTime::UNIX_EPOCH
            + Duration::new(
                t.seconds.max(0) as u64,
                t.nanos.clamp(0, 999_999_999) as u32,
            )
    });
    let code = w.exit_status as i32;
    ExitRecord {
        exit_code: code,
        signal: (code > 128 && code < 128 + 65).then_some(code - 128),
        oom_killed: false,
        vm_oom_killed: false,
        exited_at: humantime::format_rfc3339_nanos(at).to_string(),
        started_at: String::new(),
    }
}

#[async_trait]
impl Task for GuestTask {
    async fn create(
        &self,
        ctx: &TtrpcContext,
        mut req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        if let Some(any) = req.options.as_ref()
            && any.type_url == CREATE_OPTIONS_TYPE
        {
            let opts: CreateOptions = serde_json::from_slice(&any.value)
                .map_err(|e| err(Code::INVALID_ARGUMENT, format!("options: {e}")))?;
            let mut layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
            crate::options::apply(
                &opts,
                &req.bundle,
                &req.rootfs,
                &self.group_dir,
                &mut layers,
            )
            .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
            req.options = MessageField::none();
        } else {
            crate::options::create_writable(&req.rootfs)
                .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
        }
        let streams = prepare(&mut req.stdin, &mut req.stdout, &mut req.stderr)?;
        let (id, bundle) = (req.id.clone(), PathBuf::from(&req.bundle));
        match self.inner.create(ctx, req).await {
            Ok(resp) => {
                self.follow(id, String::new(), Some(bundle), streams);
                Ok(resp)
            }
            Err(e) => {
                streams.remove_fifos();
                Err(e)
            }
        }
    }

    async fn start(
        &self,
        ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let key = (req.id.clone(), req.exec_id.clone());
        let resp = self.inner.start(ctx, req).await;
        if key.1.is_empty() {
            return resp;
        }
        let streams = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        if let Some(s) = streams {
            match &resp {
                Ok(_) => self.follow(key.0, key.1, None, s),
                Err(_) => s.remove_fifos(),
            }
        }
        resp
    }

    async fn exec(
        &self,
        ctx: &TtrpcContext,
        mut req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        let streams = prepare(&mut req.stdin, &mut req.stdout, &mut req.stderr)?;
        let key = (req.id.clone(), req.exec_id.clone());
        match self.inner.exec(ctx, req).await {
            Ok(r) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, streams);
                Ok(r)
            }
            Err(e) => {
                streams.remove_fifos();
                Err(e)
            }
        }
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let key = (req.id.clone(), req.exec_id.clone());
        let resp = self.inner.delete(ctx, req).await;
        if resp.is_ok()
            && let Some(s) = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key)
        {
            s.remove_fifos();
        }
        resp
    }

    async fn state(
        &self,
        ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        self.inner.state(ctx, req).await
    }

    async fn pids(
        &self,
        ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        self.inner.pids(ctx, req).await
    }

    async fn pause(&self, ctx: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<api::Empty> {
        self.inner.pause(ctx, req).await
    }

    async fn resume(
        &self,
        ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.inner.resume(ctx, req).await
    }

    async fn checkpoint(
        &self,
        ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.inner.checkpoint(ctx, req).await
    }

    async fn kill(&self, ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        self.inner.kill(ctx, req).await
    }

    async fn resize_pty(
        &self,
        ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.inner.resize_pty(ctx, req).await
    }

    async fn close_io(
        &self,
        ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<api::Empty> {
        self.inner.close_io(ctx, req).await
    }

    async fn update(
        &self,
        ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.inner.update(ctx, req).await
    }

    async fn wait(
        &self,
        ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        self.inner.wait(ctx, req).await
    }

    async fn stats(
        &self,
        ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        self.inner.stats(ctx, req).await
    }

    async fn connect(
        &self,
        ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        self.inner.connect(ctx, req).await
    }

    async fn shutdown(
        &self,
        ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.inner.shutdown(ctx, req).await
    }
}
