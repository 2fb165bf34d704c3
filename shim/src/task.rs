//! The containerd shim v2 Task API over ttrpc, for the containers of one group.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim_protos::shim_async::Task;
use eci_runtime::cgroup::{self, Limits};
use eci_runtime::init::{InitConfig, Target};
use eci_runtime::mounts::Rootfs;
use eci_runtime::namespaces;
use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use ttrpc::asynchronous::TtrpcContext;
use ttrpc::{Code, Error as TtrpcError, Status as RpcStatus};

use crate::process::{self, Created, Placement};
use crate::reaper::Reaper;
use crate::seccomp_profiles::SeccompProfiles;

/// How a process ended, as recorded in `<bundle>/exit.json` for the agent (which may
/// have been down when it happened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// RFC 3339.
    pub exited_at: String,
    pub started_at: String,
}

/// Longest wait for a process's output to reach its log before its exit is reported.
const LOG_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// File name of the exit record in a bundle.
pub const EXIT_FILE: &str = "exit.json";

fn err(code: Code, msg: impl Into<String>) -> TtrpcError {
    TtrpcError::RpcStatus(RpcStatus {
        code: EnumOrUnknown::new(code),
        message: msg.into(),
        ..Default::default()
    })
}

fn timestamp(rfc3339: &str) -> MessageField<Timestamp> {
    let t = humantime::parse_rfc3339(rfc3339).unwrap_or(SystemTime::UNIX_EPOCH);
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    })
}

struct Proc {
    bundle: String,
    stdin: String,
    stdout: String,
    stderr: String,
    cgroup: String,
    /// Compiled seccomp programs: the container's, also for its execs.
    seccomp: PathBuf,
    /// Exec with a terminal: the pty, once started.
    terminal: bool,
    /// Initial terminal size (rows, cols) from the process's `consoleSize`.
    console: Option<(u16, u16)>,
    pty: Mutex<Option<crate::pty::Pty>>,
    state: Mutex<ProcState>,
    exited: watch::Sender<Option<ExitRecord>>,
}

struct ProcState {
    pid: i32,
    status: Status,
    created: Option<Created>,
    /// For execs: the process to run, until Start.
    exec: Option<Process>,
    started_at: String,
}

/// Group-wide settings of this shim.
pub struct GroupConfig {
    pub dir: PathBuf,
    pub cgroup: String,
    pub seccomp: SeccompProfiles,
    /// Rotation of the containers' log files.
    pub log_rotation: crate::logs::Rotation,
}

/// The Task service.
pub struct TaskService {
    group: GroupConfig,
    reaper: Reaper,
    procs: Mutex<HashMap<(String, String), Arc<Proc>>>,
    pub shutdown: tokio::sync::Notify,
}

impl TaskService {
    pub fn new(group: GroupConfig, reaper: Reaper) -> Self {
        TaskService {
            group,
            reaper,
            procs: Mutex::new(HashMap::new()),
            shutdown: tokio::sync::Notify::new(),
        }
    }

    fn get(&self, id: &str, exec_id: &str) -> ttrpc::Result<Arc<Proc>> {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs
            .get(&(id.to_string(), exec_id.to_string()))
            .cloned()
            .ok_or_else(|| err(Code::NOT_FOUND, format!("process {id}/{exec_id} not found")))
    }

    /// Follows a process until it exits, then records how. With `log`, the exit is
    /// reported (exit record, STOPPED, the `exited` channel that Wait and State read)
    /// only once everything the process wrote is in its log file: a batch job's last
    /// line is often its result.
    fn watch_exit(
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
                exited_at: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
                started_at,
            };
            if let Some(path) = record_to
                && let Ok(json) = serde_json::to_vec(&rec)
            {
                // Written before anyone is told, so an agent that restarts finds it.
                let _ = write_durably(&path, &json);
            }
            if let Ok(mut s) = proc_.state.lock() {
                s.status = Status::STOPPED;
            }
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

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The overlay described by a containerd rootfs mount.
fn rootfs_of(mounts: &[api::Mount]) -> ttrpc::Result<Rootfs> {
    let m = mounts
        .iter()
        .find(|m| m.type_ == "overlay")
        .ok_or_else(|| {
            err(
                Code::INVALID_ARGUMENT,
                "rootfs: an overlay mount is required",
            )
        })?;
    let opt = |key: &str| {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix(&format!("{key}=")).map(str::to_string))
    };
    let lower = opt("lowerdir")
        .ok_or_else(|| err(Code::INVALID_ARGUMENT, "rootfs: overlay without lowerdir"))?;
    Ok(Rootfs {
        lower: lower.split(':').map(PathBuf::from).collect(),
        upper: opt("upperdir")
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "rootfs: overlay without upperdir"))?
            .into(),
        work: opt("workdir")
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "rootfs: overlay without workdir"))?
            .into(),
    })
}

/// Cgroup limits from an OCI spec.
fn limits_of(spec: &Spec) -> Limits {
    let res = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    let mem = res.memory().as_ref().and_then(|m| m.limit());
    let cpu = res.cpu().clone().unwrap_or_default();
    Limits {
        memory_bytes: mem,
        cpu_quota_us: cpu.quota(),
        cpu_period_us: cpu.period(),
        cpu_shares: cpu.shares(),
        pids: res.pids().as_ref().map(|p| p.limit()),
        restrict_devices: true,
    }
}

/// Stdio for a process: `file://PATH` is the CRI log (returns pipes to copy from), a
/// plain path is a FIFO opened for the process, empty is /dev/null.
enum Output {
    Log(PathBuf),
    Fifo(std::fs::File),
    Null,
}

fn output(uri: &str) -> ttrpc::Result<Output> {
    if let Some(p) = uri.strip_prefix("file://") {
        return Ok(Output::Log(PathBuf::from(p)));
    }
    if uri.is_empty() {
        return Ok(Output::Null);
    }
    OpenOptions::new()
        .write(true)
        .open(uri)
        .map(Output::Fifo)
        .map_err(|e| err(Code::INVALID_ARGUMENT, format!("opening output {uri}: {e}")))
}

fn input(uri: &str) -> ttrpc::Result<Stdio> {
    if uri.is_empty() {
        return Ok(Stdio::null());
    }
    OpenOptions::new()
        .read(true)
        .open(uri)
        .map(Stdio::from)
        .map_err(|e| err(Code::INVALID_ARGUMENT, format!("opening input {uri}: {e}")))
}

impl TaskService {
    /// Starts an init process with the given stdio and follows it.
    async fn spawn(
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
        let container_pid = self
            .procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|((_, exec), p)| exec.is_empty() && p.cgroup == proc_.cgroup)
            .and_then(|(_, p)| p.state.lock().ok().map(|s| s.pid))
            .unwrap_or(0);
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
            Some(
                OpenOptions::new()
                    .read(true)
                    .open(&proc_.stdin)
                    .map_err(|e| {
                        err(
                            Code::INVALID_ARGUMENT,
                            format!("opening input {}: {e}", proc_.stdin),
                        )
                    })?,
            )
        };
        let stdout = OpenOptions::new()
            .write(true)
            .open(&proc_.stdout)
            .map_err(|e| {
                err(
                    Code::INVALID_ARGUMENT,
                    format!("opening output {}: {e}", proc_.stdout),
                )
            })?;
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

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        if req.id.is_empty() || req.id.contains('/') {
            return Err(err(Code::INVALID_ARGUMENT, "id: required, without '/'"));
        }
        if self.get(&req.id, "").is_ok() {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("container {} exists", req.id),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json")).map_err(|e| {
            err(
                Code::INVALID_ARGUMENT,
                format!("{}/config.json: {e}", req.bundle),
            )
        })?;
        let rootfs = rootfs_of(&req.rootfs)?;
        let linux = spec.linux().clone().unwrap_or_default();
        let cg = linux
            .cgroups_path()
            .as_ref()
            .map(|p| p.display().to_string().trim_start_matches('/').to_string());
        let cg = cg.unwrap_or_else(|| format!("{}/{}", self.group.cgroup, req.id));
        cgroup::create(&cg, &limits_of(&spec)).map_err(|e| {
            err(
                Code::INTERNAL,
                format!("{e}: {:?}", std::error::Error::source(&e)),
            )
        })?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "config.json: process is required"))?;
        let seccomp = self
            .group
            .seccomp
            .for_process(&process)
            .map_err(|e| err(Code::INTERNAL, format!("{e:#}")))?;
        let rootfs_mount = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs_mount).map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        let config = InitConfig {
            target: Target::Container {
                rootfs,
                rootfs_mount,
                group_namespaces: namespaces::paths(
                    &eci_runtime::layout::GroupDir::from_root(&self.group.dir).namespaces(),
                ),
                mounts: spec.mounts().clone().unwrap_or_default(),
                masked_paths: linux.masked_paths().clone().unwrap_or_default(),
                readonly_paths: linux.readonly_paths().clone().unwrap_or_default(),
                sysctls: linux.sysctl().clone().unwrap_or_default(),
                readonly_root: spec
                    .root()
                    .as_ref()
                    .and_then(|r| r.readonly())
                    .unwrap_or(false),
            },
            user: annotations
                .get("io.eci.user")
                .cloned()
                .unwrap_or_else(|| process.user().uid().to_string()),
            group: annotations.get("io.eci.group").cloned(),
            process,
            cgroup: cg.clone(),
            seccomp: seccomp.clone(),
        };
        let config_path = bundle.join("init.json");
        let json = serde_json::to_vec(&config).map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        std::fs::write(&config_path, json).map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        let _ = std::fs::remove_file(bundle.join(EXIT_FILE));
        let (tx, _) = watch::channel(None);
        let proc_ = Arc::new(Proc {
            bundle: req.bundle.clone(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            cgroup: cg.clone(),
            seccomp,
            terminal: false,
            console: None,
            pty: Mutex::new(None),
            state: Mutex::new(ProcState {
                pid: 0,
                status: Status::CREATED,
                created: None,
                exec: None,
                started_at: String::new(),
            }),
            exited: tx,
        });
        let created = match self
            .spawn(
                &proc_,
                config_path,
                Placement::ByShim(cg.clone()),
                Some(bundle.join(EXIT_FILE)),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let _ = cgroup::destroy(&cg);
                return Err(e);
            }
        };
        let pid = created.pid;
        if let Ok(mut s) = proc_.state.lock() {
            s.pid = pid;
            s.created = Some(created);
        }
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((req.id.clone(), String::new()), proc_);
        tracing::info!(container = %req.id, pid, "created");
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let proc_ = self.get(&req.id, &req.exec_id)?;
        let (created, exec) = {
            let mut s = proc_.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.status != Status::CREATED {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("process {}/{} is not in created state", req.id, req.exec_id),
                ));
            }
            (s.created.take(), s.exec.take())
        };
        let created = match (created, exec) {
            (Some(c), _) => c,
            (None, Some(process)) => {
                let container = self.get(&req.id, "")?;
                // Its pid names its namespaces: once it has exited the number may be
                // reused by a process that is not the container's.
                if container.exited.borrow().is_some() {
                    return Err(err(
                        Code::FAILED_PRECONDITION,
                        format!("container {} is not running", req.id),
                    ));
                }
                let pid = container.state.lock().map(|s| s.pid).unwrap_or(0);
                let config = InitConfig {
                    target: Target::Exec { pid },
                    // A name (as the container's user) or the numeric ids.
                    user: process
                        .user()
                        .username()
                        .clone()
                        .unwrap_or_else(|| process.user().uid().to_string()),
                    group: match process.user().username() {
                        Some(_) => None,
                        None => Some(process.user().gid().to_string()),
                    },
                    process,
                    cgroup: container.cgroup.clone(),
                    seccomp: container.seccomp.clone(),
                };
                let path =
                    PathBuf::from(&container.bundle).join(format!("exec-{}.json", req.exec_id));
                let json =
                    serde_json::to_vec(&config).map_err(|e| err(Code::INTERNAL, e.to_string()))?;
                std::fs::write(&path, json).map_err(|e| err(Code::INTERNAL, e.to_string()))?;
                let placement = Placement::Itself {
                    pid_ns: PathBuf::from(format!("/proc/{pid}/ns/pid")),
                };
                let c = self.spawn(&proc_, path, placement, None).await?;
                if let Ok(mut s) = proc_.state.lock() {
                    s.pid = c.pid;
                }
                c
            }
            (None, None) => return Err(err(Code::FAILED_PRECONDITION, "nothing to start")),
        };
        let pid = created.pid;
        let started = tokio::task::spawn_blocking(move || created.start())
            .await
            .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        if let Err(e) = started {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(err(Code::FAILED_PRECONDITION, e.to_string()));
        }
        if let Ok(mut s) = proc_.state.lock() {
            s.status = Status::RUNNING;
            s.started_at = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        }
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let proc_ = self.get(&req.id, &req.exec_id)?;
        let (pid, status) = {
            let s = proc_.state.lock().unwrap_or_else(|p| p.into_inner());
            (s.pid, s.status)
        };
        let exit = proc_.exited.borrow().clone();
        let mut resp = api::StateResponse {
            id: req.id,
            exec_id: req.exec_id,
            bundle: proc_.bundle.clone(),
            pid: pid as u32,
            status: EnumOrUnknown::new(if exit.is_some() {
                Status::STOPPED
            } else {
                status
            }),
            stdin: proc_.stdin.clone(),
            stdout: proc_.stdout.clone(),
            stderr: proc_.stderr.clone(),
            ..Default::default()
        };
        if let Some(e) = exit {
            resp.exit_status = e.exit_code as u32;
            resp.exited_at = timestamp(&e.exited_at);
        }
        Ok(resp)
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let proc_ = self.get(&req.id, &req.exec_id)?;
        let mut rx = proc_.exited.subscribe();
        let rec = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| err(Code::INTERNAL, "exit watcher gone"))?
            .clone()
            .unwrap_or_else(unreachable_exit);
        Ok(api::WaitResponse {
            exit_status: rec.exit_code as u32,
            exited_at: timestamp(&rec.exited_at),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        let proc_ = self.get(&req.id, &req.exec_id)?;
        let sig = nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|_| {
            err(
                Code::INVALID_ARGUMENT,
                format!("signal {} is not valid", req.signal),
            )
        })?;
        let pids = if req.all {
            cgroup::procs(&proc_.cgroup)
                .into_iter()
                .map(|p| p as i32)
                .collect()
        } else {
            vec![proc_.state.lock().map(|s| s.pid).unwrap_or(0)]
        };
        for pid in pids.into_iter().filter(|p| *p > 0) {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(err(Code::INTERNAL, format!("kill {pid}: {e}"))),
            }
        }
        Ok(api::Empty::default())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let proc_ = self.get(&req.id, &req.exec_id)?;
        let (pid, created) = {
            let mut s = proc_.state.lock().unwrap_or_else(|p| p.into_inner());
            (s.pid, s.created.take())
        };
        if created.is_some() {
            // Created but never started: it waits on the start pipe; end it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            drop(created);
        }
        let exit = {
            let mut rx = proc_.exited.subscribe();
            let done = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                rx.wait_for(Option::is_some),
            )
            .await;
            match done {
                Ok(Ok(r)) => r.clone(),
                _ => {
                    return Err(err(
                        Code::FAILED_PRECONDITION,
                        format!("process {}/{} is still running", req.id, req.exec_id),
                    ));
                }
            }
        };
        if req.exec_id.is_empty() {
            // Processes left behind (daemons the container started) go with it.
            for p in cgroup::procs(&proc_.cgroup) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let mut last = None;
            for _ in 0..50 {
                match cgroup::destroy(&proc_.cgroup) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            if let Some(e) = last {
                tracing::warn!(cgroup = %proc_.cgroup, error = %e, "removing container cgroup");
            }
            let _ = std::fs::remove_file(Path::new(&proc_.bundle).join("init.json"));
        }
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(req.id.clone(), req.exec_id.clone()));
        let rec = exit.unwrap_or_else(unreachable_exit);
        Ok(api::DeleteResponse {
            pid: pid as u32,
            exit_status: rec.exit_code as u32,
            exited_at: timestamp(&rec.exited_at),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let proc_ = self.get(&req.id, "")?;
        let processes = cgroup::procs(&proc_.cgroup)
            .into_iter()
            .map(|pid| api::ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        let container = self.get(&req.id, "")?;
        if req.exec_id.is_empty() {
            return Err(err(Code::INVALID_ARGUMENT, "exec_id: required"));
        }
        if container
            .state
            .lock()
            .map(|s| s.status != Status::RUNNING)
            .unwrap_or(true)
        {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("container {} is not running", req.id),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "spec: required"))?;
        let process: Process = serde_json::from_slice(&spec.value).map_err(|e| {
            err(
                Code::INVALID_ARGUMENT,
                format!("spec: not an OCI process: {e}"),
            )
        })?;
        let (tx, _) = watch::channel(None);
        let proc_ = Arc::new(Proc {
            bundle: container.bundle.clone(),
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            cgroup: container.cgroup.clone(),
            seccomp: container.seccomp.clone(),
            terminal: req.terminal,
            console: process.console_size().as_ref().map(|b| {
                (
                    b.height().min(u16::MAX as u64) as u16,
                    b.width().min(u16::MAX as u64) as u16,
                )
            }),
            pty: Mutex::new(None),
            state: Mutex::new(ProcState {
                pid: 0,
                status: Status::CREATED,
                created: None,
                exec: Some(process),
                started_at: String::new(),
            }),
            exited: tx,
        });
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        if procs.contains_key(&(req.id.clone(), req.exec_id.clone())) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        procs.insert((req.id, req.exec_id), proc_);
        Ok(api::Empty::default())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        let proc_ = self.get(&req.id, &req.exec_id)?;
        let pty = proc_.pty.lock().unwrap_or_else(|p| p.into_inner());
        match pty.as_ref() {
            Some(p) => {
                let (rows, cols) = (
                    req.height.min(u16::MAX as u32) as u16,
                    req.width.min(u16::MAX as u32) as u16,
                );
                p.resize(rows, cols)
                    .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
                Ok(api::Empty::default())
            }
            None => Err(err(
                Code::FAILED_PRECONDITION,
                format!("process {}/{} has no terminal", req.id, req.exec_id),
            )),
        }
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<api::Empty> {
        // Stdin is a FIFO the process reads directly: it closes when the writer does.
        self.get(&req.id, &req.exec_id)?;
        Ok(api::Empty::default())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        use containerd_shim_protos::cgroups::metrics::{
            CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics,
        };
        let proc_ = self.get(&req.id, "")?;
        let u = cgroup::usage(&proc_.cgroup);
        let m = Metrics {
            memory: MessageField::some(MemoryStat {
                usage: MessageField::some(MemoryEntry {
                    usage: u.memory_bytes,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage: MessageField::some(CPUUsage {
                    total: u.cpu_nanos,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = containerd_shim_protos::protobuf::well_known_types::any::Any::pack(&m)
            .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let task_pid = self
            .get(&req.id, "")
            .ok()
            .and_then(|p| p.state.lock().ok().map(|s| s.pid))
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid as u32,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        let running = self
            .procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|p| p.exited.borrow().is_none());
        if running {
            return Err(err(
                Code::FAILED_PRECONDITION,
                "processes are still running; kill and delete them first",
            ));
        }
        self.shutdown.notify_one();
        Ok(api::Empty::default())
    }
}

/// Only reached if a watch channel says "exited" without a record, which it never does.
fn unreachable_exit() -> ExitRecord {
    ExitRecord {
        exit_code: 255,
        signal: None,
        oom_killed: false,
        exited_at: String::new(),
        started_at: String::new(),
    }
}
