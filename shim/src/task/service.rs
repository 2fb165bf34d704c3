//! The Task API handlers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim_protos::shim_async::Task;
use eci_runtime::cgroup;
use eci_runtime::init::{GroupUserns, InitConfig, Target};
use eci_runtime::namespaces;
use oci_spec::runtime::{Process, Spec};
use ttrpc::Code;
use ttrpc::asynchronous::TtrpcContext;

use super::bundle::{limits_of, rootfs_of};
use super::exits::unreachable_exit;
use super::procs::{Proc, Stdio};
use super::{EXIT_FILE, TaskService, err, timestamp};
use crate::kill;
use crate::process::Placement;

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
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "config.json: process is required"))?;
        // A terminal when the client asks (containerd's `terminal`) or the spec says so;
        // the init then opens it in the container's devpts.
        let terminal = req.terminal || process.terminal().unwrap_or(false);
        process.set_terminal(Some(terminal));
        let seccomp = self
            .group
            .seccomp
            .for_process(&process)
            .map_err(|e| err(Code::INTERNAL, format!("{e:#}")))?;
        let rootfs_mount = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs_mount).map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        let ns_dir = eci_runtime::layout::GroupDir::from_root(&self.group.dir).namespaces();
        let config = InitConfig {
            target: Target::Container {
                rootfs,
                rootfs_mount,
                group_namespaces: namespaces::paths(&ns_dir),
                userns: self.group.userns.map(|range| GroupUserns {
                    path: ns_dir.join(namespaces::USER),
                    range,
                }),
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
        let mut proc_ = Proc::new(
            Stdio {
                bundle: req.bundle.clone(),
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
            },
            cg.clone(),
            seccomp,
            None,
        );
        proc_.terminal = terminal;
        proc_.hub = Some(crate::attach::Hub::new(
            req.stdin == eci_runtime::attach::STDIN_URI,
            terminal,
        ));
        let proc_ = Arc::new(proc_);
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
        if !self.insert(&req.id, "", proc_) {
            kill::sigkill(pid);
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("container {} exists", req.id),
            ));
        }
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
        // From the start byte to RUNNING in one piece that runs to its end: the request
        // may be dropped meanwhile (its deadline passed, the agent died), and a process
        // that runs while the table still says CREATED could never be adopted or
        // deleted (a CREATED process is one that waits for its start byte).
        let p = proc_.clone();
        let started = tokio::task::spawn_blocking(move || {
            let started = created.start();
            match &started {
                Ok(()) => p.mark_running(),
                Err(_) => kill::sigkill(pid),
            }
            started
        })
        .await
        .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        if let Err(e) = started {
            return Err(err(Code::FAILED_PRECONDITION, e.to_string()));
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
        let pid = proc_.state.lock().unwrap_or_else(|p| p.into_inner()).pid;
        let exit = proc_.exited.borrow().clone();
        let mut resp = api::StateResponse {
            id: req.id,
            exec_id: req.exec_id,
            bundle: proc_.bundle.clone(),
            pid: pid as u32,
            status: EnumOrUnknown::new(proc_.status()),
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
        let (pid, created, status) = {
            let mut s = proc_.state.lock().unwrap_or_else(|p| p.into_inner());
            (s.pid, s.created.take(), s.status)
        };
        if created.is_some() || (status == Status::CREATED && proc_.exited.borrow().is_none()) {
            // Created but never started: it waits on the start pipe; end it.
            kill::sigkill(pid);
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
            let cg = proc_.cgroup.clone();
            let removed = tokio::task::spawn_blocking(move || kill::kill_cgroup_and_remove(&cg))
                .await
                .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
            if let Err(e) = removed {
                tracing::warn!(cgroup = %proc_.cgroup, error = %e, "removing container cgroup");
            }
            let _ = std::fs::remove_file(Path::new(&proc_.bundle).join("init.json"));
        }
        self.remove(&req.id, &req.exec_id);
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
        if container.status() != Status::RUNNING {
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
        let console = process.console_size().as_ref().map(|b| {
            (
                b.height().min(u16::MAX as u64) as u16,
                b.width().min(u16::MAX as u64) as u16,
            )
        });
        let mut proc_ = Proc::new(
            Stdio {
                bundle: container.bundle.clone(),
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            },
            container.cgroup.clone(),
            container.seccomp.clone(),
            Some(process),
        );
        proc_.terminal = req.terminal;
        proc_.console = console;
        let proc_ = Arc::new(proc_);
        if !self.insert(&req.id, &req.exec_id, proc_) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
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
        if self.any_running() {
            return Err(err(
                Code::FAILED_PRECONDITION,
                "processes are still running; kill and delete them first",
            ));
        }
        self.shutdown.notify_one();
        Ok(api::Empty::default())
    }
}
