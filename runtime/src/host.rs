//! Facts about the host that decide how containers can be run here.

use std::path::Path;

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, TMPFS_MAGIC, statfs};

/// Errors while probing the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("statfs {path}")]
    Statfs {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("uname")]
    Uname(#[source] nix::Error),
}

/// How the cgroup filesystems are mounted; the runtime writes limits differently for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Only v1 controller hierarchies.
    Legacy,
    /// v1 controllers plus a v2 hierarchy at `/sys/fs/cgroup/unified` (controllers there
    /// are few or none, so limits go to v1).
    Hybrid,
    /// One v2 hierarchy at `/sys/fs/cgroup`.
    Unified,
}

impl CgroupMode {
    /// Reads the layout under `root` (normally `/sys/fs/cgroup`).
    pub fn detect(root: &Path) -> Result<Self, HostError> {
        let fs = statfs(root).map_err(|source| HostError::Statfs {
            path: root.display().to_string(),
            source,
        })?;
        if fs.filesystem_type() == CGROUP2_SUPER_MAGIC {
            return Ok(CgroupMode::Unified);
        }
        let unified = root.join("unified");
        let hybrid = fs.filesystem_type() == TMPFS_MAGIC
            && statfs(&unified).is_ok_and(|u| u.filesystem_type() == CGROUP2_SUPER_MAGIC);
        Ok(if hybrid {
            CgroupMode::Hybrid
        } else {
            CgroupMode::Legacy
        })
    }

    /// The name used in the API: `v1`, `hybrid` or `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupMode::Legacy => "v1",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::Unified => "v2",
        }
    }
}

/// The sandboxes a group can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxKind {
    /// Linux namespaces + cgroups + capabilities + seccomp, on the host kernel.
    Namespaced,
    /// A microVM with its own guest kernel.
    Vm,
}

impl SandboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Namespaced => "namespaced",
            SandboxKind::Vm => "vm",
        }
    }
}

/// What the agent reports about the host in `Node.Info`.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub kernel_release: String,
    pub architecture: String,
    pub cgroup_mode: CgroupMode,
    /// Kinds whose host prerequisites are present.
    pub sandbox_kinds: Vec<SandboxKind>,
}

impl HostFacts {
    /// Probes the running host. The namespaced kind needs the namespace files of the
    /// kinds a group uses. The VM kind is offered only once a VM backend exists: a host
    /// with QEMU but no backend must not advertise what it cannot run.
    pub fn probe(cgroup_root: &Path) -> Result<Self, HostError> {
        let uts = nix::sys::utsname::uname().map_err(HostError::Uname)?;
        let cgroup_mode = CgroupMode::detect(cgroup_root)?;
        let mut sandbox_kinds = Vec::new();
        let ns = ["mnt", "pid", "net", "ipc", "uts"];
        if ns
            .iter()
            .all(|n| Path::new("/proc/self/ns").join(n).exists())
        {
            sandbox_kinds.push(SandboxKind::Namespaced);
        }
        Ok(HostFacts {
            kernel_release: uts.release().to_string_lossy().into_owned(),
            architecture: uts.machine().to_string_lossy().into_owned(),
            cgroup_mode,
            sandbox_kinds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_this_host() {
        let facts = HostFacts::probe(Path::new("/sys/fs/cgroup")).expect("probe");
        assert!(!facts.kernel_release.is_empty());
        assert!(facts.sandbox_kinds.contains(&SandboxKind::Namespaced));
        assert!(!facts.sandbox_kinds.contains(&SandboxKind::Vm));
    }
}
