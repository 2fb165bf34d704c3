//! The group's compiled seccomp profiles: one program file per distinct capability set,
//! in the group directory, because the default profile allows more syscalls to a
//! container with more capabilities (containerd's rules). Execs use their container's
//! file: an exec never holds more than its container's bounding set.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use eci_runtime::{capabilities, seccomp};
use oci_spec::runtime::Process;

/// Program files of this shim's group, compiled on first use.
pub struct SeccompProfiles {
    dir: PathBuf,
    /// File names this shim has written. A file left by an earlier shim of the group is
    /// rewritten, not trusted: that shim may have been another version.
    written: Mutex<HashSet<String>>,
}

impl SeccompProfiles {
    /// Profiles in `dir`; compiles the one for the default capability set at once, so a
    /// profile that cannot be built fails the group at start, not its first container.
    pub fn new(dir: &Path) -> Result<Self> {
        let profiles = SeccompProfiles {
            dir: dir.to_path_buf(),
            written: Mutex::new(HashSet::new()),
        };
        let default: Vec<String> = capabilities::DEFAULT
            .iter()
            .map(|c| c.to_string())
            .collect();
        profiles.for_capabilities(&default)?;
        Ok(profiles)
    }

    /// The program file for a container whose process is `process`: by its bounding
    /// set, read the way `eci-shim init` reads it (no capabilities stanza means the
    /// OCI default set).
    pub fn for_process(&self, process: &Process) -> Result<PathBuf> {
        let caps = process.capabilities().clone().unwrap_or_default();
        let bounding: Vec<String> = caps
            .bounding()
            .iter()
            .flatten()
            .map(|c| format!("CAP_{c}"))
            .collect();
        self.for_capabilities(&bounding)
    }

    fn for_capabilities(&self, caps: &[String]) -> Result<PathBuf> {
        let name = seccomp::file_name(caps);
        let path = self.dir.join(&name);
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if !written.contains(&name) {
            seccomp::write_profile(&path, caps)
                .with_context(|| format!("compiling the seccomp profile for {caps:?}"))?;
            written.insert(name);
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Capability, LinuxCapabilitiesBuilder, ProcessBuilder};

    fn process(bounding: &[Capability]) -> Process {
        let caps = LinuxCapabilitiesBuilder::default()
            .bounding(
                bounding
                    .iter()
                    .copied()
                    .collect::<oci_spec::runtime::Capabilities>(),
            )
            .build()
            .expect("caps");
        ProcessBuilder::default()
            .capabilities(caps)
            .build()
            .expect("process")
    }

    #[test]
    fn one_file_per_relevant_capability_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profiles = SeccompProfiles::new(dir.path()).expect("profiles");
        let plain = profiles
            .for_process(&process(&[Capability::Chown, Capability::Kill]))
            .expect("plain");
        // NET_ADMIN gates no syscall: same program.
        let net = profiles
            .for_process(&process(&[Capability::Chown, Capability::NetAdmin]))
            .expect("net");
        let ptrace = profiles
            .for_process(&process(&[Capability::SysPtrace]))
            .expect("ptrace");
        assert_eq!(plain, net);
        assert_ne!(plain, ptrace);
        assert!(ptrace.is_file() && plain.is_file());
        assert_ne!(
            std::fs::read(&plain).expect("plain"),
            std::fs::read(&ptrace).expect("ptrace")
        );
    }
}
