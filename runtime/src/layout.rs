//! Where a group's runtime files live: `<run_dir>/groups/<group id>/`. The agent and
//! the shim both use this, so an agent that restarts finds its shims by layout alone.

use std::path::{Path, PathBuf};

/// Paths of one group's runtime files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDir {
    root: PathBuf,
}

impl GroupDir {
    /// `run_dir` is the agent's run directory (`/run/eci` by default); `id` the group id.
    pub fn new(run_dir: &Path, id: &str) -> Self {
        GroupDir {
            root: run_dir.join("groups").join(id),
        }
    }

    /// The layout of an existing group directory.
    pub fn from_root(root: &Path) -> Self {
        GroupDir {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ttrpc socket of the shim's Task API.
    pub fn shim_socket(&self) -> PathBuf {
        self.root.join("shim.sock")
    }

    /// The shim's attach socket: the containers' stdio for `Containers.Attach`
    /// (protocol in [`crate::attach`]).
    pub fn attach_socket(&self) -> PathBuf {
        self.root.join("attach.sock")
    }

    /// The shim's pid, written once it has detached, for re-adoption and cleanup.
    pub fn shim_pid(&self) -> PathBuf {
        self.root.join("shim.pid")
    }

    /// One container's OCI bundle (`config.json` + `rootfs/`).
    pub fn bundle(&self, container: &str) -> PathBuf {
        self.root.join("containers").join(container)
    }

    /// The pinned group namespaces (`ns/net`, `ns/ipc`, `ns/uts`).
    pub fn namespaces(&self) -> PathBuf {
        self.root.join("ns")
    }

    /// Files the agent writes for every container: hosts, hostname, resolv.conf.
    pub fn etc(&self) -> PathBuf {
        self.root.join("etc")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let d = GroupDir::new(Path::new("/run/eci"), "0a1b");
        assert_eq!(d.shim_socket(), Path::new("/run/eci/groups/0a1b/shim.sock"));
        assert_eq!(
            d.bundle("app"),
            Path::new("/run/eci/groups/0a1b/containers/app")
        );
    }
}
