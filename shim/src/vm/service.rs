//! The Task API of a vm-mode shim: each call is checked against the host's process
//! table and forwarded to the guest's Task service over the `eci.ctl` port, with the
//! stdio URIs replaced by io-port streams and, on Create, the options the guest needs
//! to find the bundle's files and layers. Exits are recorded on the host (see
//! [`super::procs`]), so Wait, State and `exit.json` never depend on the guest alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim_protos::shim_async::Task;
use ttrpc::Code;
use ttrpc::asynchronous::TtrpcContext;

use super::boot::Vm;
use super::procs::{Ending, VmProc};
use super::{Inner, VmTaskService, options};
use crate::guest_proto::CREATE_OPTIONS_TYPE;
use crate::task::{EXIT_FILE, ExitRecord};

/// A ttrpc error status.
pub fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::Status {
        code: EnumOrUnknown::new(code),
        message: msg.into(),
        ..Default::default()
    })
}

/// How long Wait waits for the guest's exit report once the guest's own Wait returned.
const EXIT_REPORT_WAIT: Duration = Duration::from_secs(10);
/// How long a call that failed waits to learn whether the VM died under it.
const VM_DEATH_WAIT: Duration = Duration::from_secs(1);

fn timestamp(rfc3339: &str) -> MessageField<Timestamp> {
    let t = humantime::parse_rfc3339(rfc3339).unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    let d = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    })
}

/// The caller's deadline, passed on to the guest.
fn fwd(ctx: &TtrpcContext) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(ctx.timeout_nano)
}

fn not_running() -> ttrpc::Error {
    status(Code::FAILED_PRECONDITION, "the group's VM is not running")
}

impl Inner {
    pub(super) fn proc_(&self, id: &str, exec_id: &str) -> Option<Arc<VmProc>> {
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(id.to_string(), exec_id.to_string()))
            .cloned()
    }

    fn get(&self, id: &str, exec_id: &str) -> ttrpc::Result<Arc<VmProc>> {
        self.proc_(id, exec_id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("process {id}/{exec_id} not found")))
    }

    fn insert(&self, id: &str, exec_id: &str, p: Arc<VmProc>) -> bool {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (id.to_string(), exec_id.to_string());
        if procs.contains_key(&key) {
            return false;
        }
        procs.insert(key, p);
        true
    }

    /// Forgets a process and closes what is left of its output streams.
    fn remove(&self, vm: Option<&Vm>, id: &str, exec_id: &str) {
        let p = self
            .procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(id.to_string(), exec_id.to_string()));
        if let (Some(p), Some(vm)) = (p, vm) {
            for n in p
                .streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                vm.demux.close(n);
            }
        }
    }

    async fn create(
        self: Arc<Self>,
        ctx_timeout: i64,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        if req.id.is_empty() || req.id.contains('/') {
            return Err(status(Code::INVALID_ARGUMENT, "id: required, without '/'"));
        }
        if self.proc_(&req.id, "").is_some() {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} exists", req.id),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.starts_with(&self.s.dir) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("bundle {}: not in the group directory", req.bundle),
            ));
        }
        let lower = options::lowerdirs(&req.rootfs)
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        let roots = roots(&self.s.dir, &self.s.id, &req.rootfs);
        let me = self.clone();
        let b = bundle.clone();
        let opts =
            tokio::task::spawn_blocking(move || options::build(&b, &lower, &roots, &me.s.config))
                .await
                .map_err(|e| status(Code::INTERNAL, e.to_string()))?
                .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        let vm = self.ensure_vm().await?;
        let stdio = [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()];
        let guest_io = self.guest_uris(&stdio, req.terminal);
        let mut p = VmProc::new(req.bundle.clone(), false, stdio, guest_io.clone());
        p.hub = Some(crate::attach::Hub::new(
            req.stdin == eci_runtime::attach::STDIN_URI,
            req.terminal,
        ));
        let p = Arc::new(p);
        let _ = std::fs::remove_file(bundle.join(EXIT_FILE));
        if !self.insert(&req.id, "", p.clone()) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} exists", req.id),
            ));
        }
        let forwarded = async {
            self.open_io(&vm, &p).await?;
            let value =
                serde_json::to_vec(&opts).map_err(|e| status(Code::INTERNAL, e.to_string()))?;
            let [stdin, stdout, stderr] = guest_io;
            let greq = api::CreateTaskRequest {
                stdin,
                stdout,
                stderr,
                options: MessageField::some(Any {
                    type_url: CREATE_OPTIONS_TYPE.into(),
                    value,
                    ..Default::default()
                }),
                ..req.clone()
            };
            vm.client
                .create(ttrpc::context::with_timeout(ctx_timeout), &greq)
                .await
        };
        match forwarded.await {
            Ok(r) => {
                *p.pid.lock().unwrap_or_else(|e| e.into_inner()) = r.pid;
                tracing::info!(container = %req.id, pid = r.pid, "created in the guest");
                Ok(r)
            }
            Err(e) => {
                self.remove(Some(&vm), &req.id, "");
                Err(e)
            }
        }
    }
}

/// Directories whose files a Create may send: the group directory and the group's
/// writable directory (`<state>/groups/<id>`, the parent of the container's
/// `<container>/upper`), which holds the on-disk volumes.
fn roots(group_dir: &Path, id: &str, rootfs: &[api::Mount]) -> Vec<PathBuf> {
    let mut roots = vec![group_dir.to_path_buf()];
    let upper = rootfs
        .iter()
        .filter(|m| m.type_ == "overlay")
        .flat_map(|m| m.options.iter())
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from);
    if let Some(w) = upper
        .as_deref()
        .and_then(Path::parent)
        .and_then(Path::parent)
        && w.file_name().is_some_and(|n| n == id)
        && crate::vm::options::is_clean_absolute(w)
    {
        roots.push(w.to_path_buf());
    }
    roots
}

impl VmTaskService {
    async fn vm(&self) -> ttrpc::Result<Arc<Vm>> {
        self.inner.current_vm().await.ok_or_else(not_running)
    }
}

#[async_trait]
impl Task for VmTaskService {
    async fn create(
        &self,
        ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        // In a task of its own: a caller that gives up does not leave a half-made
        // container behind in the table.
        let inner = self.inner.clone();
        let timeout = ctx.timeout_nano;
        tokio::spawn(async move { inner.create(timeout, req).await })
            .await
            .map_err(|e| status(Code::INTERNAL, e.to_string()))?
    }

    async fn start(
        &self,
        ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let p = self.inner.get(&req.id, &req.exec_id)?;
        let vm = self.vm().await?;
        self.inner.open_io(&vm, &p).await?;
        let r = vm.client.start(fwd(ctx), &req).await?;
        *p.pid.lock().unwrap_or_else(|e| e.into_inner()) = r.pid;
        *p.started_at.lock().unwrap_or_else(|e| e.into_inner()) =
            humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        Ok(r)
    }

    async fn state(
        &self,
        ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let p = self.inner.get(&req.id, &req.exec_id)?;
        let exit = p.exited.borrow().clone();
        let mut resp = match (&exit, self.inner.current_vm().await) {
            (None, Some(vm)) => vm.client.state(fwd(ctx), &req).await?,
            _ => api::StateResponse {
                pid: *p.pid.lock().unwrap_or_else(|e| e.into_inner()),
                status: EnumOrUnknown::new(Status::STOPPED),
                ..Default::default()
            },
        };
        // What the host asked about, not what the guest says it answered.
        resp.id = req.id;
        resp.exec_id = req.exec_id;
        resp.bundle = p.bundle.clone();
        resp.stdin = p.stdin.clone();
        resp.stdout = p.stdout.clone();
        resp.stderr = p.stderr.clone();
        if let Some(e) = exit {
            resp.status = EnumOrUnknown::new(Status::STOPPED);
            resp.exit_status = e.exit_code as u32;
            resp.exited_at = timestamp(&e.exited_at);
        }
        Ok(resp)
    }

    async fn wait(
        &self,
        ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let p = self.inner.get(&req.id, &req.exec_id)?;
        let mut local = p.exited.subscribe();
        let mut later = p.exited.subscribe();
        let answer = |rec: ExitRecord| api::WaitResponse {
            exit_status: rec.exit_code as u32,
            exited_at: timestamp(&rec.exited_at),
            ..Default::default()
        };
        let vm = self.inner.current_vm().await;
        let guest = async {
            match &vm {
                Some(vm) => vm.client.wait(fwd(ctx), &req).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = async { local.wait_for(Option::is_some).await.map(|r| r.clone()) } => {
                let rec = r.map_err(|_| status(Code::INTERNAL, "exit watcher gone"))?;
                rec.map(answer).ok_or_else(|| status(Code::INTERNAL, "no exit record"))
            }
            g = guest => {
                let g = match g {
                    Ok(g) => g,
                    // The VM died under the call: its end records every process.
                    Err(e) => return match &vm {
                        Some(vm) if vm.died_within(VM_DEATH_WAIT).await => {
                            let r = tokio::time::timeout(EXIT_REPORT_WAIT, async {
                                later.wait_for(Option::is_some).await.map(|r| r.clone())
                            })
                            .await;
                            match r {
                                Ok(Ok(Some(rec))) => Ok(answer(rec)),
                                _ => Err(e),
                            }
                        }
                        _ => Err(e),
                    },
                };
                // The guest's Wait returned: its exit report is on its way (sent after
                // the process's output); wait for it, so exit.json is written first.
                let reported = match tokio::time::timeout(EXIT_REPORT_WAIT, later.wait_for(Option::is_some)).await {
                    Ok(Ok(rec)) => rec.clone(),
                    _ => None,
                };
                if let Some(rec) = reported {
                    return Ok(answer(rec));
                }
                tracing::warn!(id = %req.id, exec = %req.exec_id, "the guest reported no exit; recording its Wait answer");
                if p.take_exit() {
                    p.finish(Ending { exit_code: g.exit_status as i32, signal: None, oom_killed: false, vm_oom_killed: false }).await;
                }
                let rec = p.exited.borrow().clone();
                rec.map(answer).ok_or_else(|| status(Code::INTERNAL, "no exit record"))
            }
        }
    }

    async fn kill(&self, ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        let p = self.inner.get(&req.id, &req.exec_id)?;
        match self.inner.current_vm().await {
            Some(vm) => vm.client.kill(fwd(ctx), &req).await,
            None if p.is_exited() => Ok(api::Empty::default()),
            None => Err(not_running()),
        }
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let p = self.inner.get(&req.id, &req.exec_id)?;
        let vm = self.inner.current_vm().await;
        let mut resp = api::DeleteResponse {
            pid: *p.pid.lock().unwrap_or_else(|e| e.into_inner()),
            ..Default::default()
        };
        if let Some(vm) = &vm {
            match vm.client.delete(fwd(ctx), &req).await {
                Ok(r) => resp = r,
                // The VM died under the call: its end records every process.
                Err(e) => {
                    if !vm.died_within(VM_DEATH_WAIT).await {
                        return Err(e);
                    }
                    let mut rx = p.exited.subscribe();
                    let recorded =
                        tokio::time::timeout(EXIT_REPORT_WAIT, rx.wait_for(Option::is_some))
                            .await
                            .is_ok_and(|r| r.is_ok());
                    if !recorded {
                        return Err(e);
                    }
                }
            }
            if !p.is_exited() {
                let mut rx = p.exited.subscribe();
                let reported =
                    tokio::time::timeout(Duration::from_secs(2), rx.wait_for(Option::is_some))
                        .await
                        .is_ok_and(|r| r.is_ok());
                if !reported && p.take_exit() {
                    p.finish(Ending {
                        exit_code: resp.exit_status as i32,
                        signal: None,
                        oom_killed: false,
                        vm_oom_killed: false,
                    })
                    .await;
                }
            }
        } else if !p.is_exited() {
            return Err(not_running());
        }
        if let Some(rec) = p.exited.borrow().clone() {
            resp.exit_status = rec.exit_code as u32;
            resp.exited_at = timestamp(&rec.exited_at);
        }
        self.inner.remove(vm.as_deref(), &req.id, &req.exec_id);
        Ok(resp)
    }

    async fn pids(
        &self,
        ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        self.inner.get(&req.id, "")?;
        match self.inner.current_vm().await {
            Some(vm) => vm.client.pids(fwd(ctx), &req).await,
            None => Ok(api::PidsResponse::default()),
        }
    }

    async fn exec(
        &self,
        ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        let container = self.inner.get(&req.id, "")?;
        if req.exec_id.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "exec_id: required"));
        }
        let vm = self.vm().await?;
        let stdio = [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()];
        let guest_io = self.inner.guest_uris(&stdio, req.terminal);
        let p = Arc::new(VmProc::new(
            container.bundle.clone(),
            true,
            stdio,
            guest_io.clone(),
        ));
        if !self.inner.insert(&req.id, &req.exec_id, p) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        let [stdin, stdout, stderr] = guest_io;
        let greq = api::ExecProcessRequest {
            stdin,
            stdout,
            stderr,
            ..req.clone()
        };
        match vm.client.exec(fwd(ctx), &greq).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.inner.remove(Some(&vm), &req.id, &req.exec_id);
                Err(e)
            }
        }
    }

    async fn resize_pty(
        &self,
        ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.inner.get(&req.id, &req.exec_id)?;
        self.vm().await?.client.resize_pty(fwd(ctx), &req).await
    }

    async fn close_io(
        &self,
        ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<api::Empty> {
        self.inner.get(&req.id, &req.exec_id)?;
        self.vm().await?.client.close_io(fwd(ctx), &req).await
    }

    async fn update(
        &self,
        ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.inner.get(&req.id, "")?;
        self.vm().await?.client.update(fwd(ctx), &req).await
    }

    /// The container's metrics as the guest measures them. The sandbox overhead (QEMU)
    /// is the host cgroup `<group cgroup>/vm` (see the module comment of `vm`).
    async fn stats(
        &self,
        ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        self.inner.get(&req.id, "")?;
        self.vm().await?.client.stats(fwd(ctx), &req).await
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let task_pid = self
            .inner
            .proc_(&req.id, "")
            .map(|p| *p.pid.lock().unwrap_or_else(|e| e.into_inner()))
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
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
            .inner
            .procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|p| !p.is_exited());
        if running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                "processes are still running; kill and delete them first",
            ));
        }
        let inner = self.inner.clone();
        // The VM is stopped after the answer: powering off can take seconds.
        tokio::spawn(async move {
            inner.stop_vm().await;
            inner.shutdown.notify_one();
        });
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(upper: &str) -> Vec<api::Mount> {
        vec![api::Mount {
            type_: "overlay".into(),
            options: vec![
                "lowerdir=/l/a".into(),
                format!("upperdir={upper}"),
                "workdir=/w".into(),
            ],
            ..Default::default()
        }]
    }

    #[test]
    fn the_writable_directory_is_a_root_only_when_it_is_the_groups() {
        let g = Path::new("/run/eci/groups/g1");
        assert_eq!(
            roots(g, "g1", &overlay("/var/lib/eci/groups/g1/app/upper")),
            [g.to_path_buf(), PathBuf::from("/var/lib/eci/groups/g1")]
        );
        // Another group's, a relative one, one with `..`: the group directory only.
        for upper in [
            "/var/lib/eci/groups/g2/app/upper",
            "groups/g1/app/upper",
            "/x/../g1/app/upper",
        ] {
            assert_eq!(
                roots(g, "g1", &overlay(upper)),
                [g.to_path_buf()],
                "{upper}"
            );
        }
    }

    #[test]
    fn a_guest_exit_report_keeps_only_what_it_may_say() {
        let rec = ExitRecord {
            exit_code: 3,
            signal: Some(999),
            oom_killed: true,
            vm_oom_killed: true,
            exited_at: "whenever".into(),
            started_at: "x".repeat(1000),
        };
        let e = Ending::from_guest(&rec);
        assert_eq!((e.exit_code, e.signal, e.oom_killed), (3, None, true));
        assert!(
            !e.vm_oom_killed,
            "only the host can tell that QEMU was OOM-killed"
        );
    }
}
