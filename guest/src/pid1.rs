//! PID 1: the boot sequence and the service loop.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::shim_async::create_task;
use eci_runtime::layout::GroupDir;
use eci_runtime::namespaces;
use eci_shim::guest_proto::{CTL_PORT, Control, IO_PORT};
use eci_shim::reaper::Reaper;
use eci_shim::seccomp_profiles::SeccompProfiles;
use eci_shim::task::{GroupConfig, TaskService};

use crate::boot::{self, console, power_off};
use crate::cmdline::BootArgs;
use crate::io::IoPort;
use crate::task::GuestTask;

/// The line the accelerator probe waits for on the console.
pub const PROBE_OK: &str = "ECI-GUEST-PROBE-OK";
/// The guest-local socket of the Task API (bridged to the `eci.ctl` port).
pub const TASK_SOCKET: &str = "/run/eci-guest/task.sock";
/// How long the virtio-serial ports may take to appear after the modules load.
const PORT_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of the service phase (each ends the guest: the host sees QEMU exit).
#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Cmdline(#[from] crate::cmdline::CmdlineError),
    #[error("creating the group namespaces: {0}")]
    Namespaces(#[from] namespaces::NamespaceError),
    #[error("creating the group cgroup: {0}")]
    Cgroup(#[from] eci_runtime::cgroup::CgroupError),
    #[error(transparent)]
    Port(#[from] crate::ports::PortError),
    #[error("guest network: {0}")]
    Net(#[from] eci_netns::vm::VmNetError),
    #[error("{0}")]
    Other(String),
}

fn other(what: &str) -> impl FnOnce(std::fmt::Arguments) -> Pid1Error + '_ {
    move |e| Pid1Error::Other(format!("{what}: {e}"))
}

/// Runs PID 1. On the initramfs (`args` empty): answers the probe or moves onto the
/// tmpfs root and re-executes; there (`args[0] == pid1`): boots and serves.
pub fn main(args: &[String]) -> ExitCode {
    if args.first().map(String::as_str) != Some(boot::SWITCHED_ARG) {
        if let Err(e) = boot::early_proc() {
            console(&format!("eci-guest: {e}"));
        }
        let probe = std::fs::read_to_string("/proc/cmdline")
            .map(|c| c.split_whitespace().any(|w| w == "eci.probe=1"))
            .unwrap_or(false);
        if probe {
            console(PROBE_OK);
            power_off();
        }
        let e = boot::leave_initramfs();
        console(&format!("eci-guest: leaving the initramfs: {e}"));
        power_off();
    }
    if let Err(e) = run() {
        let mut msg = format!("eci-guest: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        console(&msg);
    }
    power_off()
}

fn run() -> Result<(), Pid1Error> {
    boot::mount_kernel_filesystems()?;
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let loaded = boot::load_modules();
    // The rootfs benchmark (eci-rootfsbench) needs only the early boot above.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(spec) = crate::bench::requested(&cmdline) {
        crate::bench::run(spec, crate::bench::idle(&cmdline));
        return Ok(());
    }
    let args = BootArgs::read()?;
    tracing::info!(modules = loaded, group = %args.id, "eci-guest booting");
    boot::enable_controllers();
    // Rust's runtime ignores SIGPIPE already: a host that went away costs a failed
    // write, never PID 1.
    let dir = PathBuf::from(&args.dir);
    crate::options::mkdir_safe(&dir).map_err(|e| Pid1Error::Other(e.to_string()))?;
    let group = GroupDir::from_root(&dir);
    namespaces::create(&group.namespaces(), &args.host, None)?;
    configure_network(&args, &group.namespaces())?;
    let cgroup = format!("eci/{}", args.id);
    eci_runtime::cgroup::create(&cgroup, &eci_runtime::cgroup::Limits::default())?;
    let seccomp =
        SeccompProfiles::new(&dir).map_err(|e| other("seccomp")(format_args!("{e:#}")))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| other("runtime")(format_args!("{e}")))?;
    rt.block_on(serve(dir, cgroup, seccomp))
}

/// The group's network inside the guest: eth0 (found by the MAC on the command line;
/// `configure_guest` waits a little for its driver to bind) moved into the group's
/// network namespace and configured there.
fn configure_network(args: &BootArgs, netns_dir: &Path) -> Result<(), Pid1Error> {
    let Some(net) = &args.net else { return Ok(()) };
    let guest = eci_netns::vm::GuestNet::from_cmdline(net)?;
    eci_netns::vm::configure_guest(&guest, &netns_dir.join("net"))?;
    Ok(())
}

async fn serve(dir: PathBuf, cgroup: String, seccomp: SeccompProfiles) -> Result<(), Pid1Error> {
    let svc_cgroup = cgroup.clone();
    let reaper = Reaper::start().map_err(|e| other("reaper")(format_args!("{e}")))?;
    let svc = Arc::new(TaskService::new(
        GroupConfig {
            dir: dir.clone(),
            cgroup,
            seccomp,
            log_rotation: eci_shim::logs::Rotation::default(),
            userns: None,
        },
        reaper,
    ));
    let (io_port, ctl_port) = tokio::task::spawn_blocking(|| {
        Ok::<_, crate::ports::PortError>((
            crate::ports::open(IO_PORT, PORT_TIMEOUT)?,
            crate::ports::open(CTL_PORT, PORT_TIMEOUT)?,
        ))
    })
    .await
    .map_err(|e| other("ports")(format_args!("{e}")))??;
    let io = IoPort::start(io_port).map_err(|e| other("io port")(format_args!("{e}")))?;
    let group_cgroup = svc_cgroup.clone();
    crate::oom::watch(&group_cgroup, io.clone())
        .map_err(|e| other("oom watch")(format_args!("{e}")))?;
    let guest = Arc::new(GuestTask::new(svc.clone(), io.clone(), dir));
    // eci-chanbench only: the same Task service on vsock too (docs/benchmark.md).
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let _vsock = match crate::vsock::requested(&cmdline) {
        Some(port) => Some(
            crate::vsock::start(guest.clone(), port)
                .await
                .map_err(|e| other("vsock benchmark")(format_args!("{e}")))?,
        ),
        None => None,
    };

    let sock = Path::new(TASK_SOCKET);
    if let Some(parent) = sock.parent() {
        std::fs::create_dir_all(parent).map_err(|e| other("run dir")(format_args!("{e}")))?;
    }
    let _ = std::fs::remove_file(sock);
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&format!("unix://{TASK_SOCKET}"))
        .map_err(|e| other("binding the task socket")(format_args!("{e}")))?
        .register_service(create_task(guest));
    server
        .start()
        .await
        .map_err(|e| other("serving")(format_args!("{e}")))?;
    let socket = sock.to_path_buf();
    std::thread::Builder::new()
        .name("ctl".into())
        .spawn(move || crate::ctl::bridge(ctl_port, socket))
        .map_err(|e| other("ctl bridge")(format_args!("{e}")))?;
    // Blocks until the host connects the io port.
    let ready = io.clone();
    tokio::task::spawn_blocking(move || ready.control(&Control::Ready));
    tracing::info!("eci-guest serving");
    svc.shutdown.notified().await;
    tracing::info!("shutdown requested");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = server.shutdown().await;
    Ok(())
}
