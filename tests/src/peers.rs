//! The peers benchmarks compare against: a private containerd with its own root, state
//! and socket under a scratch directory, so the host's containerd (if any) is untouched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::wait_for;

/// A running private containerd; stopped, and its mounts removed, when dropped.
pub struct PrivateContainerd {
    root: PathBuf,
    sock: PathBuf,
    daemon: Child,
}

impl PrivateContainerd {
    /// Starts containerd (without its CRI plugin) under `dir/containerd`.
    pub fn start(dir: &Path) -> Result<Self, String> {
        let root = dir.join("containerd");
        let sock = root.join("containerd.sock");
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\naddress = \"{1}\"\n[ttrpc]\naddress = \"{1}.ttrpc\"\n",
            root.display(),
            sock.display()
        );
        std::fs::write(root.join("config.toml"), config).map_err(|e| e.to_string())?;
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("containerd: {e}"))?;
        let me = PrivateContainerd { root, sock, daemon };
        wait_for(Duration::from_secs(10), || me.sock.exists().then_some(()))
            .ok_or("containerd did not start")?;
        Ok(me)
    }

    /// Runs `ctr -a <socket> ARGS`.
    pub fn ctr(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep {} /proc/self/mountinfo | cut -d' ' -f5 | xargs -r umount -l",
                self.root.display()
            ))
            .status();
    }
}
