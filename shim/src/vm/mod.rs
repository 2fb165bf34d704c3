//! vm mode of the shim (`eci-shim start --sandbox vm --vm-config <group dir>/vm.json`):
//! the group's containers run in a lightweight VM (QEMU microvm) whose PID 1,
//! `eci-guest`, serves the same Task API; this shim is its host-side proxy.
//!
//! - [`config`](config): `vm.json`.
//! - [`vmm`]: the VMM seam ([`vmm::Vmm`]); [`qemu`]: the QEMU implementation.
//! - [`net`]: the guest's network (the net helper's tap in the group netns).
//! - [`console`]: the guest's serial console, copied into `console.log` with a bound.
//! - [`boot`]: the lazy boot at the first Create and the end of the VM.
//! - [`demux`]: the `eci.io` port: frames to log pipes and FIFOs, control messages.
//! - [`options`]: what a forwarded Create carries (config.json, bind sources, layers).
//! - [`stdio`]: a process's stdio on the host side (logs, FIFOs, stdin pumps).
//! - [`procs`]: the host's table of guest processes and their exits.
//! - [`service`]: the Task API, forwarded; `attach`: the attach socket.
//!
//! Overhead accounting: QEMU runs in the host cgroup `<group cgroup>/vm`; its usage
//! (memory is QEMU's RSS: guest RAM touched plus the VMM's own) is what the group costs
//! the host, while container metrics come from inside the guest through Stats. The
//! agent reads the `vm` child cgroup (`eci_runtime::cgroup::usage("<group cgroup>/vm")`)
//! for the sandbox overhead.

mod attach;
pub mod boot;
pub mod config;
pub mod console;
#[cfg(test)]
mod ctl_tests;
pub mod demux;
pub mod net;
pub mod options;
mod procs;
pub mod qemu;
pub mod service;
mod stdio;
pub mod vmm;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

pub use config::VmConfig;

use crate::reaper::Reaper;

/// Group-wide settings of a vm-mode shim.
pub struct VmSettings {
    pub id: String,
    pub hostname: String,
    /// The group directory (`<run>/groups/<id>`).
    pub dir: PathBuf,
    /// The group cgroup; QEMU runs in `<cgroup>/vm`.
    pub cgroup: String,
    pub config: VmConfig,
    pub log_rotation: crate::logs::Rotation,
}

/// The Task service of a vm-mode shim: forwards to the guest.
pub struct VmTaskService {
    inner: Arc<Inner>,
}

struct Inner {
    s: VmSettings,
    vmm: Arc<dyn vmm::Vmm>,
    reaper: Reaper,
    /// The VM, once booted.
    vm: Mutex<Option<Arc<boot::Vm>>>,
    /// Held through a boot (and a stop), so there is never more than one VM.
    booting: tokio::sync::Mutex<()>,
    procs: Mutex<HashMap<(String, String), Arc<procs::VmProc>>>,
    next_stream: AtomicU32,
    shutdown: tokio::sync::Notify,
    stopping: std::sync::atomic::AtomicBool,
}

impl VmTaskService {
    pub fn new(s: VmSettings, vmm: Arc<dyn vmm::Vmm>, reaper: Reaper) -> Self {
        VmTaskService {
            inner: Arc::new(Inner {
                s,
                vmm,
                reaper,
                vm: Mutex::new(None),
                booting: tokio::sync::Mutex::new(()),
                procs: Mutex::new(HashMap::new()),
                next_stream: AtomicU32::new(1),
                shutdown: tokio::sync::Notify::new(),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Resolves once Shutdown was accepted.
    pub async fn shutdown_requested(&self) {
        self.inner.shutdown.notified().await;
    }

    /// Stops the VM if it still runs, unplugs the guest network and removes
    /// `<group dir>/vm`. Safe to run twice.
    pub async fn teardown(&self) {
        self.inner.stop_vm().await;
        let netns = eci_runtime::layout::GroupDir::from_root(&self.inner.s.dir)
            .namespaces()
            .join("net");
        let _ = tokio::task::spawn_blocking(move || net::unplug(&netns)).await;
        let dir = vmm::VmPaths::new(&self.inner.s.dir).dir;
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing the VM directory");
        }
        let _ = crate::kill::kill_cgroup_and_remove(&format!("{}/vm", self.inner.s.cgroup));
    }
}
