//! The run directory of one group: `<run_dir>/groups/<group id>/`.

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

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ttrpc socket of the shim's Task API.
    pub fn shim_socket(&self) -> PathBuf {
        self.root.join("shim.sock")
    }

    /// The shim's pid, written once it has detached, for re-adoption and cleanup.
    pub fn shim_pid(&self) -> PathBuf {
        self.root.join("shim.pid")
    }

    /// One container's OCI bundle (`config.json` + `rootfs/`).
    pub fn bundle(&self, container: &str) -> PathBuf {
        self.root.join("containers").join(container)
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
