//! `eci-shim start`: detach from the agent, set up the group sandbox (namespaces, group
//! cgroup, compiled seccomp profile), serve the Task API, and tear the sandbox down on
//! Shutdown.
//!
//! The process the agent runs forks once: the parent waits until the child serves (or
//! failed) and exits, so the agent never holds the shim as a child, and the shim lives
//! on, reparented, when the agent restarts.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use containerd_shim_protos::shim_async::create_task;
use eci_runtime::cgroup::{self, Limits};
use eci_runtime::namespaces;
use nix::unistd::ForkResult;

use crate::reaper::Reaper;
use crate::seccomp_profiles::SeccompProfiles;
use crate::task::{GroupConfig, TaskService};
use eci_runtime::layout::GroupDir;

/// `pids.max` of a group when the caller names none (the agent always does).
pub const DEFAULT_PIDS_MAX: u64 = 4096;

/// What the agent passes.
#[derive(Debug, Clone)]
pub struct StartArgs {
    pub id: String,
    pub run_dir: PathBuf,
    pub hostname: String,
    pub cgroup_parent: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub log_max_bytes: u64,
    /// Log files kept per container run, the current one included.
    pub log_max_files: u32,
    /// Gzip rotated log files other than the newest.
    pub log_compress: bool,
    /// `pids.max` of the group's cgroup.
    pub pids_max: u64,
    /// First host id of the group's user namespace range (65536 ids); none: the group
    /// runs without a user namespace.
    pub userns_base: Option<u32>,
    /// `--sandbox vm --vm-config <group dir>/vm.json`: the containers run in a VM (see
    /// [`crate::vm`]); None: namespaced.
    pub vm_config: Option<PathBuf>,
}

/// Memory the group cgroup allows beyond the guest's RAM in vm mode: QEMU's own
/// (device emulation, TCG translation cache, page tables).
pub const VM_OVERHEAD_BYTES: u64 = 256 << 20;

impl StartArgs {
    /// Parses `--key value` pairs.
    pub fn parse(args: &[String]) -> Result<Self> {
        let get = |k: &str| -> Result<String> {
            let i = args
                .iter()
                .position(|a| a == k)
                .with_context(|| format!("{k} is required"))?;
            args.get(i + 1)
                .cloned()
                .with_context(|| format!("{k} needs a value"))
        };
        let num = |k: &str| -> Result<u64> {
            get(k)?
                .parse()
                .with_context(|| format!("{k} must be a number"))
        };
        Ok(StartArgs {
            id: get("--id")?,
            run_dir: get("--run-dir")?.into(),
            hostname: get("--hostname")?,
            cgroup_parent: get("--cgroup-parent").unwrap_or_else(|_| "eci".into()),
            cpu_millis: num("--cpu-millis")?,
            memory_bytes: num("--memory-bytes")?,
            log_max_bytes: num("--log-max-bytes").unwrap_or(10 << 20),
            log_max_files: num("--log-max-files").map_or(2, |n| n.min(u32::MAX as u64) as u32),
            log_compress: get("--log-compress").is_ok_and(|v| v == "true"),
            pids_max: num("--pids-max").unwrap_or(DEFAULT_PIDS_MAX),
            userns_base: match get("--userns-base") {
                Ok(v) => Some(v.parse().context("--userns-base must be a host uid")?),
                Err(_) => None,
            },
            vm_config: match get("--sandbox").as_deref() {
                Err(_) | Ok("namespaced") => None,
                Ok("vm") => Some(get("--vm-config")?.into()),
                Ok(other) => bail!("--sandbox {other}: expected namespaced or vm"),
            },
        })
    }
}

/// Runs `start`; returns in the parent once the child serves.
pub fn main(args: StartArgs) -> Result<()> {
    let dir = GroupDir::new(&args.run_dir, &args.id);
    std::fs::create_dir_all(dir.root())
        .with_context(|| format!("creating {}", dir.root().display()))?;
    let (ready_r, ready_w) = nix::unistd::pipe().context("pipe")?;
    // SAFETY: no threads exist yet (no runtime has been started), so the child may do
    // anything after fork.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        ForkResult::Parent { .. } => {
            drop(ready_w);
            // "ok" while the daemon keeps running, or an error message and EOF.
            let mut r = std::fs::File::from(ready_r);
            let mut msg = Vec::new();
            let mut buf = [0u8; 512];
            loop {
                let n = r.read(&mut buf).context("waiting for the shim")?;
                msg.extend_from_slice(&buf[..n]);
                if msg.starts_with(b"ok") {
                    return Ok(());
                }
                if n == 0 {
                    break;
                }
            }
            let msg = String::from_utf8_lossy(&msg);
            if msg.is_empty() {
                bail!(
                    "the shim died while starting; see {}",
                    dir.root().join("shim.log").display()
                );
            }
            bail!("{msg}")
        }
        ForkResult::Child => {
            drop(ready_r);
            let mut ready = std::fs::File::from(ready_w);
            if let Err(e) = daemon(args, dir, &mut ready) {
                let _ = write!(ready, "{e:#}");
                std::process::exit(1);
            }
            std::process::exit(0);
        }
    }
}

fn daemon(args: StartArgs, dir: GroupDir, ready: &mut std::fs::File) -> Result<()> {
    nix::unistd::setsid().context("setsid")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.root().join("shim.log"))?;
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(null.as_fd()).context("stdin")?;
    nix::unistd::dup2_stdout(log.as_fd()).context("stdout")?;
    nix::unistd::dup2_stderr(log.as_fd()).context("stderr")?;
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    nix::sys::prctl::set_child_subreaper(true).context("becoming a subreaper")?;
    // A reader that went away (an exec's client, the agent) must cost a failed write,
    // never the shim: Rust's runtime ignores SIGPIPE already; this says so here.
    // SAFETY: installing SIG_IGN replaces no handler of ours and runs before any thread
    // that could be affected is started.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .context("ignoring SIGPIPE")?;
    if !eci_runtime::sealed_exe::is_read_only(std::path::Path::new("/proc/self/exe")) {
        tracing::warn!(
            "this shim runs from a writable binary: start it through eci-agent, which \
             binds it read-only, so containers cannot reach a writable runtime binary"
        );
    }

    let cgroup = format!("{}/{}", args.cgroup_parent, args.id);
    let vm_config = match &args.vm_config {
        Some(p) => Some(crate::vm::VmConfig::load(p).context("--vm-config")?),
        None => None,
    };
    let userns = args.userns_base.map(eci_runtime::userns::IdRange::group);
    namespaces::create(&dir.namespaces(), &args.hostname, userns)
        .context("creating the group namespaces")?;
    // CPU as a CFS quota over a 100 ms period; memory hard, swap off.
    // In vm mode QEMU runs in the group cgroup (`<cgroup>/vm`): the limit holds the
    // guest's RAM and QEMU's own memory.
    let memory_bytes = match &vm_config {
        Some(c) => args
            .memory_bytes
            .max((c.memory_mib << 20) + VM_OVERHEAD_BYTES),
        None => args.memory_bytes,
    };
    let limits = Limits {
        memory_bytes: Some(memory_bytes as i64),
        cpu_quota_us: Some((args.cpu_millis * 100) as i64),
        cpu_period_us: Some(100_000),
        cpu_shares: Some((args.cpu_millis * 1024 / 1000).max(2)),
        pids: Some(args.pids_max as i64),
        restrict_devices: false,
    };
    cgroup::create(&cgroup, &limits).context("creating the group cgroup")?;
    let seccomp = SeccompProfiles::new(dir.root())?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(config) = vm_config {
        let settings = crate::vm::VmSettings {
            id: args.id.clone(),
            hostname: args.hostname.clone(),
            dir: dir.root().to_path_buf(),
            cgroup: cgroup.clone(),
            config,
            log_rotation: crate::logs::Rotation {
                max_bytes: args.log_max_bytes,
                max_files: args.log_max_files,
                compress: args.log_compress,
            },
        };
        drop(seccomp);
        return rt.block_on(serve_vm(settings, &dir, &cgroup, ready));
    }
    rt.block_on(async move {
        let reaper = Reaper::start().context("installing the SIGCHLD handler")?;
        let svc = Arc::new(TaskService::new(
            GroupConfig {
                dir: dir.root().to_path_buf(),
                cgroup: cgroup.clone(),
                seccomp,
                log_rotation: crate::logs::Rotation {
                    max_bytes: args.log_max_bytes,
                    max_files: args.log_max_files,
                    compress: args.log_compress,
                },
                userns,
            },
            reaper,
        ));
        let sock = dir.shim_socket();
        let _ = std::fs::remove_file(&sock);
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&format!("unix://{}", sock.display()))
            .context("binding the shim socket")?
            .register_service(create_task(svc.clone()));
        server.start().await.context("serving")?;
        // Attach is an extra: a group whose attach socket cannot be bound (a run
        // directory too long for a socket path) runs, and Attach answers UNAVAILABLE.
        let attaching = svc.clone();
        if let Err(e) = crate::attach::listen(&dir.attach_socket(), move |conn| {
            attaching.clone().serve_attach(conn)
        }) {
            tracing::error!(error = %e, socket = %dir.attach_socket().display(), "binding the attach socket");
        }
        std::fs::write(dir.shim_pid(), std::process::id().to_string())?;
        ready.write_all(b"ok")?;
        tracing::info!(group = %args.id, socket = %sock.display(), "shim serving");
        svc.shutdown.notified().await;
        tracing::info!("shutdown requested");
        // Answer the Shutdown call before going away.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let _ = server.shutdown().await;
        teardown(&dir, &cgroup);
        Ok::<_, anyhow::Error>(())
    })
}

/// Serves the Task API of a vm-mode group until Shutdown (see [`crate::vm`]).
async fn serve_vm(
    settings: crate::vm::VmSettings,
    dir: &GroupDir,
    cgroup: &str,
    ready: &mut std::fs::File,
) -> Result<()> {
    let reaper = Reaper::start().context("installing the SIGCHLD handler")?;
    let id = settings.id.clone();
    let svc = Arc::new(crate::vm::VmTaskService::new(
        settings,
        Arc::new(crate::vm::qemu::Qemu),
        reaper,
    ));
    let sock = dir.shim_socket();
    let _ = std::fs::remove_file(&sock);
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&format!("unix://{}", sock.display()))
        .context("binding the shim socket")?
        .register_service(create_task(svc.clone()));
    server.start().await.context("serving")?;
    let attaching = svc.clone();
    if let Err(e) = crate::attach::listen(&dir.attach_socket(), move |conn| {
        let svc = attaching.clone();
        async move { svc.serve_attach(conn).await }
    }) {
        tracing::error!(error = %e, socket = %dir.attach_socket().display(), "binding the attach socket");
    }
    std::fs::write(dir.shim_pid(), std::process::id().to_string())?;
    ready.write_all(b"ok")?;
    tracing::info!(group = %id, socket = %sock.display(), "shim serving (vm)");
    svc.shutdown_requested().await;
    tracing::info!("shutdown requested");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let _ = server.shutdown().await;
    svc.teardown().await;
    teardown(dir, cgroup);
    Ok(())
}

/// Removes what the group sandbox holds on the host. Safe to run twice.
fn teardown(dir: &GroupDir, cgroup: &str) {
    if let Err(e) = namespaces::remove(&dir.namespaces()) {
        tracing::warn!(error = %e, "removing group namespaces");
    }
    if let Err(e) = crate::kill::kill_cgroup_and_remove(cgroup) {
        tracing::warn!(error = %e, "removing the group cgroup");
    }
    let _ = std::fs::remove_file(dir.shim_socket());
    let _ = std::fs::remove_file(dir.attach_socket());
    let _ = std::fs::remove_file(dir.shim_pid());
}
