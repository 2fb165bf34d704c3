//! The VM's life: booted lazily at the first Create (the agent sets up the netns
//! network after the shim starts and before the first Create), ready once the guest
//! says so on the io port, stopped at Shutdown; when QEMU ends on its own, every
//! process still running in it is recorded as killed.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::TaskClient;
use tokio::sync::{oneshot, watch};

use super::config::Accel;
use super::demux::{Demux, Events, STALL};
use super::procs::Ending;
use super::vmm::{BootSpec, RunningVm, VmPaths};
use super::{Inner, net};
use crate::guest_proto::Control;

/// How long the guest may take from QEMU's start to `ready` (TCG boots in ~2–3 s here,
/// but a loaded host is slower).
const READY_TCG: Duration = Duration::from_secs(90);
const READY_KVM: Duration = Duration::from_secs(30);
/// How long QEMU may take to create its port sockets.
const PORT_WAIT: Duration = Duration::from_secs(10);
/// How long a guest asked to power off may take before QEMU is killed.
const POWEROFF_WAIT: Duration = Duration::from_secs(10);

/// A running VM and the shim's two channels into it.
pub struct Vm {
    running: Box<dyn RunningVm>,
    pub client: TaskClient,
    pub demux: Arc<Demux>,
    /// The io port's write side (stdin frames), one writer at a time.
    pub port: Arc<Mutex<UnixStream>>,
    /// True once QEMU has exited.
    pub dead: watch::Receiver<bool>,
}

impl Vm {
    pub fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    pub fn pid(&self) -> i32 {
        self.running.pid()
    }

    /// Whether QEMU has exited, or does within `d`.
    pub async fn died_within(&self, d: Duration) -> bool {
        let mut dead = self.dead.clone();
        tokio::time::timeout(d, dead.wait_for(|x| *x))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The port's control messages, for the service.
struct PortEvents {
    inner: Weak<Inner>,
    ready: Mutex<Option<oneshot::Sender<()>>>,
    rt: tokio::runtime::Handle,
    pid: i32,
    /// QEMU was reaped: its pid may belong to someone else now.
    dead: watch::Receiver<bool>,
    /// OOM reports so far (logged at powers of two: the guest decides how many come).
    ooms: std::sync::atomic::AtomicU64,
}

impl Events for PortEvents {
    fn control(&self, msg: Control) {
        match msg {
            Control::Ready => {
                if let Some(tx) = self.ready.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = tx.send(());
                }
            }
            Control::Exit {
                id,
                exec_id,
                record,
            } => {
                let Some(inner) = self.inner.upgrade() else {
                    return;
                };
                // Only a process the host created, and only once.
                let Some(p) = inner.proc_(&id, &exec_id) else {
                    tracing::debug!("exit report for an unknown process: dropped");
                    return;
                };
                if p.take_exit() {
                    let end = Ending::from_guest(&record);
                    self.rt.spawn(async move { p.finish(end).await });
                }
            }
            Control::Oom => {
                let n = self.ooms.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(times = n, "the guest kernel's OOM killer ran");
                }
            }
        }
    }

    fn ended(&self, why: String) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        if !inner.stopping.load(Ordering::SeqCst) && !*self.dead.borrow() {
            // Without the io port there is no output and no exit: the VM is of no use.
            tracing::error!(%why, "io port ended; stopping the VM");
            crate::kill::sigkill(self.pid);
        }
    }
}

fn internal(msg: impl Into<String>) -> ttrpc::Error {
    super::service::status(ttrpc::Code::INTERNAL, msg)
}

impl Inner {
    /// The running VM, booting it first if there is none (or the last one ended). The
    /// boot runs in a task of its own: a caller that gives up (its deadline passed)
    /// does not cut a boot short, and the next caller waits for the same boot.
    pub(super) async fn ensure_vm(self: &Arc<Self>) -> ttrpc::Result<Arc<Vm>> {
        let me = self.clone();
        tokio::spawn(async move {
            // One boot at a time; the slot itself is only ever locked briefly, so calls
            // about other containers are answered during a boot.
            let _booting = me.booting.lock().await;
            let current = me.slot().clone();
            if let Some(vm) = current
                && !vm.is_dead()
            {
                return Ok(vm);
            }
            if me.stopping.load(Ordering::SeqCst) {
                return Err(super::service::status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    "the group is shutting down",
                ));
            }
            let ended = me.slot().take();
            if ended.is_some() {
                drop(ended);
                let netns = me.netns();
                let _ = tokio::task::spawn_blocking(move || net::unplug(&netns)).await;
            }
            let vm = me.boot().await?;
            *me.slot() = Some(vm.clone());
            Ok(vm)
        })
        .await
        .map_err(|e| internal(e.to_string()))?
    }

    /// The VM if it runs (never boots one).
    pub(super) async fn current_vm(&self) -> Option<Arc<Vm>> {
        self.slot().clone().filter(|vm| !vm.is_dead())
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Vm>>> {
        self.vm.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn netns(&self) -> std::path::PathBuf {
        eci_runtime::layout::GroupDir::from_root(&self.s.dir)
            .namespaces()
            .join("net")
    }

    async fn boot(self: &Arc<Self>) -> ttrpc::Result<Arc<Vm>> {
        let paths = VmPaths::new(&self.s.dir);
        let t0 = std::time::Instant::now();
        let me = self.clone();
        let bp = paths.clone();
        let running = tokio::task::spawn_blocking(move || {
            let netns = me.netns();
            // A VM of a shim that died (its pid file is left): its plug may be left too.
            if bp.pid.exists() {
                net::unplug(&netns);
            }
            let net = net::plug(&netns)
                .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
            let cgroup = format!("{}/vm", me.s.cgroup);
            let spec = BootSpec {
                id: &me.s.id,
                group_dir: &me.s.dir,
                hostname: &me.s.hostname,
                config: &me.s.config,
                paths: &bp,
                netns: &netns,
                cgroup: &cgroup,
                net,
            };
            me.vmm.boot(spec).map_err(|e| {
                let why = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                format!("starting the VM: {e}{why}")
            })
        })
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| {
            let netns = self.netns();
            std::thread::spawn(move || net::unplug(&netns));
            internal(e)
        })?;
        let pid = running.pid();
        let exited = self.reaper.subscribe(pid);
        let (dead_tx, dead) = watch::channel(false);
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let exit = exited.await.ok();
            dead_tx.send_replace(true);
            if let Some(inner) = me.upgrade() {
                inner.vm_ended(pid, exit).await;
            }
        });
        let reaped = dead.clone();
        match self.connect(running, &paths, dead, t0).await {
            Ok(vm) => {
                tracing::info!(pid, ms = t0.elapsed().as_millis() as u64, "VM ready");
                Ok(vm)
            }
            Err((running, e)) => {
                if !*reaped.borrow() {
                    running.kill();
                }
                let netns = self.netns();
                let _ = tokio::task::spawn_blocking(move || net::unplug(&netns)).await;
                Err(e)
            }
        }
    }

    /// Connects both ports and waits for the guest's `ready`.
    async fn connect(
        self: &Arc<Self>,
        running: Box<dyn RunningVm>,
        paths: &VmPaths,
        mut dead: watch::Receiver<bool>,
        t0: std::time::Instant,
    ) -> Result<Arc<Vm>, (Box<dyn RunningVm>, ttrpc::Error)> {
        let console = paths.console.display().to_string();
        let fail = |msg: String| internal(format!("{msg}; see {console}"));
        let io = match wait_connect(&paths.io, &dead).await {
            Ok(s) => s,
            Err(e) => return Err((running, fail(e))),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let events = Arc::new(PortEvents {
            inner: Arc::downgrade(self),
            ready: Mutex::new(Some(ready_tx)),
            rt: tokio::runtime::Handle::current(),
            pid: running.pid(),
            dead: dead.clone(),
            ooms: std::sync::atomic::AtomicU64::new(0),
        });
        let demux = Demux::new(STALL, events);
        let (reader, writer) = match io.try_clone() {
            Ok(w) => (io, w),
            Err(e) => return Err((running, fail(format!("io port: {e}")))),
        };
        let d = demux.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("io-port".into())
            .spawn(move || d.run(std::io::BufReader::with_capacity(128 * 1024, reader)))
        {
            return Err((running, fail(format!("io port thread: {e}"))));
        }
        let limit = match self.s.config.accel {
            Accel::Tcg => READY_TCG,
            Accel::Kvm => READY_KVM,
        };
        let left = limit.saturating_sub(t0.elapsed());
        tokio::select! {
            r = tokio::time::timeout(left, ready_rx) => match r {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err((running, fail("the io port ended before the guest was ready".into()))),
                Err(_) => return Err((running, fail(format!("the guest was not ready within {}s", limit.as_secs())))),
            },
            _ = dead.wait_for(|d| *d) => return Err((running, fail("QEMU exited while the guest booted".into()))),
        }
        let addr = format!("unix://{}", paths.ctl.display());
        let client = match tokio::time::timeout(
            PORT_WAIT,
            ttrpc::asynchronous::Client::connect(&addr),
        )
        .await
        {
            Ok(Ok(c)) => TaskClient::new(c),
            Ok(Err(e)) => {
                return Err((
                    running,
                    fail(format!("connecting {}: {e}", paths.ctl.display())),
                ));
            }
            Err(_) => {
                return Err((
                    running,
                    fail(format!("connecting {}: timed out", paths.ctl.display())),
                ));
            }
        };
        let ping = client
            .connect(
                ttrpc::context::with_duration(PORT_WAIT),
                &api::ConnectRequest::default(),
            )
            .await;
        if let Err(e) = ping {
            return Err((
                running,
                fail(format!("the guest's Task API does not answer: {e}")),
            ));
        }
        Ok(Arc::new(Vm {
            running,
            client,
            demux,
            port: Arc::new(Mutex::new(writer)),
            dead,
        }))
    }

    /// QEMU ended: every process not yet recorded ends as killed, with the VM's OOM
    /// (QEMU's cgroup saw the OOM killer) told apart from a container's own.
    async fn vm_ended(&self, pid: i32, exit: Option<crate::reaper::Exit>) {
        let console = VmPaths::new(&self.s.dir).console;
        let cg = format!("{}/vm", self.s.cgroup);
        let oom = eci_runtime::cgroup::oom_kills(&cg) > 0;
        if !self.stopping.load(Ordering::SeqCst) {
            tracing::error!(pid, ?exit, oom, console = %console.display(), "QEMU exited");
        }
        let procs: Vec<_> = self
            .procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for p in procs {
            if p.take_exit() {
                p.finish(Ending {
                    exit_code: 128 + libc::SIGKILL,
                    signal: Some(libc::SIGKILL),
                    oom_killed: false,
                    vm_oom_killed: oom,
                })
                .await;
            }
        }
    }

    /// Stops the VM: asks the guest to power off, then kills QEMU.
    pub(super) async fn stop_vm(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // A boot under way finishes first (then its VM is stopped here).
        let _booting = self.booting.lock().await;
        let taken = self.slot().take();
        let Some(vm) = taken else {
            return;
        };
        if !vm.is_dead() {
            let _ = vm
                .client
                .shutdown(
                    ttrpc::context::with_duration(Duration::from_secs(3)),
                    &api::ShutdownRequest::default(),
                )
                .await;
            let mut dead = vm.dead.clone();
            if tokio::time::timeout(POWEROFF_WAIT, dead.wait_for(|d| *d))
                .await
                .is_err()
            {
                tracing::warn!(pid = vm.pid(), "the guest did not power off; killing QEMU");
                vm.running.kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), dead.wait_for(|d| *d)).await;
            }
        }
        let _ = std::fs::remove_file(VmPaths::new(&self.s.dir).pid);
    }
}

/// Connects to a port socket QEMU creates shortly after it starts.
async fn wait_connect(path: &Path, dead: &watch::Receiver<bool>) -> Result<UnixStream, String> {
    let until = std::time::Instant::now() + PORT_WAIT;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() >= until || *dead.borrow() => {
                return Err(format!("connecting {}: {e}", path.display()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
