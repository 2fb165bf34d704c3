//! The seam between the shim and the virtual machine monitor: what the rest of vm mode
//! needs from a VMM (start one VM with the two ports, its pid, kill it), so that another
//! VMM (Firecracker, Cloud Hypervisor) can be added beside QEMU without touching the
//! proxy.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::config::VmConfig;

/// Errors starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Files of a group's VM, all under `<group dir>/vm/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
    /// The `eci.ctl` port (ttrpc Task API): a socket the VMM listens on.
    pub ctl: PathBuf,
    /// The `eci.io` port (frames).
    pub io: PathBuf,
    /// The guest's serial console.
    pub console: PathBuf,
    /// The VMM's pid, to find an orphan after a crash.
    pub pid: PathBuf,
}

impl VmPaths {
    pub fn new(group_dir: &Path) -> Self {
        let dir = group_dir.join("vm");
        VmPaths {
            ctl: dir.join("ctl.sock"),
            io: dir.join("io.sock"),
            console: dir.join("console.log"),
            pid: dir.join("qemu.pid"),
            dir,
        }
    }
}

/// The guest's network, as the net helper's plug gives it.
pub struct NetPlug {
    /// An opened queue of the tap in the group netns.
    pub tap: OwnedFd,
    /// The MAC the guest's interface carries.
    pub mac: String,
    /// The `eci.net=` value.
    pub cmdline: String,
}

/// Everything a VMM needs to boot one group's VM.
pub struct BootSpec<'a> {
    pub id: &'a str,
    pub group_dir: &'a Path,
    pub hostname: &'a str,
    pub config: &'a VmConfig,
    pub paths: &'a VmPaths,
    /// The pinned group network namespace the VMM runs in.
    pub netns: &'a Path,
    /// The host cgroup the VMM runs in (`<group cgroup>/vm`).
    pub cgroup: &'a str,
    pub net: Option<NetPlug>,
}

/// A started VM.
pub trait RunningVm: Send + Sync {
    /// The VMM process (a child of the shim: the reaper reports its exit).
    fn pid(&self) -> i32;
    /// Ends the VMM at once.
    fn kill(&self);
}

/// A virtual machine monitor.
pub trait Vmm: Send + Sync {
    /// Starts the VM described by `spec`, with its ports listening at `spec.paths`;
    /// returns once the VMM process runs (not once the guest has booted). Blocking.
    fn boot(&self, spec: BootSpec<'_>) -> Result<Box<dyn RunningVm>, VmmError>;
}

/// The kernel command line every guest gets (see the contract): short values only,
/// none may hold whitespace.
pub fn kernel_cmdline(spec: &BootSpec<'_>) -> Result<String, VmmError> {
    let mut parts = vec![
        "console=ttyS0".to_string(),
        "quiet".into(),
        "panic=-1".into(),
        "reboot=t".into(),
    ];
    if spec.config.accel == super::config::Accel::Tcg && spec.config.tsc_khz > 0 {
        parts.push(format!("tsc_early_khz={}", spec.config.tsc_khz));
    }
    let word = |k: &str, v: &str| -> Result<String, VmmError> {
        if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(VmmError::Invalid(format!(
                "kernel command line: {k} is empty or holds whitespace: {v:?}"
            )));
        }
        Ok(format!("{k}={v}"))
    };
    parts.push(word("eci.id", spec.id)?);
    parts.push(word("eci.dir", &spec.group_dir.display().to_string())?);
    parts.push(word("eci.host", spec.hostname)?);
    if let Some(n) = &spec.net {
        parts.push(word("eci.net", &n.cmdline)?);
    }
    Ok(parts.join(" "))
}
