//! Harness for the end-to-end tests: starts the real `eci-agent` on a private `--root`
//! and runs the real `ecictl` against it. Everything a test starts is stopped, and its
//! directory removed, when the handle drops, even when the test fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod host;
pub mod loop_disk;
pub mod netspec;
pub mod oci;
pub mod peers;
pub mod registry;
pub mod scenario;
pub mod vm;
pub mod vpc;

/// Where cargo put the binaries: `ECI_BIN_DIR`, else the target dir of this test binary
/// (`target/<profile>/deps/<test>` → `target/<profile>`).
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("ECI_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // Tests run from target/<profile>/deps, tools (eci-bench) from target/<profile>.
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// The directory of the repository (for files such as the systemd unit).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A running agent with its own root directory.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Agent {
    /// Starts an agent with `config` (TOML) and waits until its socket answers.
    pub fn start(config: &str) -> Result<Self> {
        Self::start_with_env(config, &[])
    }

    /// As [`Agent::start`], with extra environment variables for the agent.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("eci-e2e-").tempdir()?;
        Self::start_on(dir, config, env)
    }

    /// As [`Agent::start_with_env`], on a root the test prepared (say, with a small
    /// filesystem mounted where the state directory goes: `<root>/var/lib/eci`).
    pub fn start_on(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Result<Self> {
        let cfg = dir.path().join("agent.toml");
        // Each agent gets its own cgroup subtree, so tests run in parallel and clean up
        // exactly what they made; restarts back off briefly so tests stay fast.
        let name = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ours = format!(
            "cgroup_parent = \"{name}\"\nrestart_backoff = \"200ms\"\nrestart_backoff_max = \"1s\"\n"
        );
        // Into the test's own [runtime] table when it has one (TOML allows one).
        let mut config = if config.contains("[runtime]\n") {
            config.replacen("[runtime]\n", &format!("[runtime]\n{ours}"), 1)
        } else {
            format!("{config}\n[runtime]\n{ours}")
        };
        // Agents of parallel tests would share the default dev bridge and subnet: a test
        // that wants dev networking names its own in a [network] table.
        if !config.contains("[network]\n") {
            config.push_str("\n[network]\nfleet_host = true\n");
        }
        std::fs::write(&cfg, config)?;
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut a = Agent {
            dir,
            config: cfg,
            env,
            child: None,
        };
        a.spawn()?;
        Ok(a)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.root().join("run/eci/agent.sock")
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join("agent.log"))?;
        let child = Command::new(bin("eci-agent"))
            .arg("--config")
            .arg(&self.config)
            .arg("--root")
            .arg(self.root())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting eci-agent")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("eci-agent exited with {status} at start:\n{}", self.log());
            }
            if self.ctl(&["node"]).status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("eci-agent did not answer within 20s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would, then start again on the same root.
    pub fn kill9_and_restart(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        self.spawn()
    }

    /// SIGKILL, stay down for `down`, then start again on the same root.
    pub fn kill9_and_restart_after(&mut self, down: Duration) -> Result<()> {
        self.kill9()?;
        std::thread::sleep(down);
        self.spawn()
    }

    /// Waits up to `timeout` for the agent to exit by itself (a crash point); true when
    /// it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL the agent (its groups keep running in their shims).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Replaces the extra environment of the agent's next start (say, to drop a crash
    /// point before the restart).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Starts the agent again on the same root after [`Agent::kill9`].
    pub fn restart(&mut self) -> Result<()> {
        self.spawn()
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("agent not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(c.wait()?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("agent.log")).unwrap_or_default()
    }

    /// Runs `ecictl --socket <this agent> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("ecictl"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ecictl")
    }

    /// `ecictl apply -f` of a spec given as text.
    pub fn apply(&self, name: &str, spec: &str) -> Output {
        let f = self.root().join(format!("{name}.yaml"));
        std::fs::write(&f, spec).expect("writing spec");
        self.ctl(&["apply", "-f", f.to_str().expect("utf-8 path")])
    }

    /// `ecictl get NAME -o json`, parsed.
    pub fn get_json(&self, name: &str) -> Result<serde_json::Value> {
        let out = self.ctl(&["get", name, "-o", "json"]);
        if !out.status.success() {
            bail!("get {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Lets other users reach the socket path (for permission tests).
    pub fn open_path_for_all(&self) -> Result<()> {
        for p in [
            self.root(),
            &self.root().join("run"),
            &self.root().join("run/eci"),
        ] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(())
    }
}

impl Agent {
    /// The cgroup subtree of this agent's groups.
    pub fn cgroup_parent(&self) -> String {
        self.root()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Kills every shim and container this agent started and removes their namespaces
    /// and cgroups, whatever state the test left them in.
    pub fn remove_sandboxes(&self) {
        let groups = self.root().join("run/eci/groups");
        for g in std::fs::read_dir(&groups).into_iter().flatten().flatten() {
            if let Ok(pid) = std::fs::read_to_string(g.path().join("shim.pid"))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for g in std::fs::read_dir(&groups).into_iter().flatten().flatten() {
            // A dev group's port guard (host table `bridge eci_guard_eci<id[..12]>`):
            // the agent removes it with the veth, which a killed agent did not get to.
            let id = g.file_name().to_string_lossy().into_owned();
            let port: String = id.chars().take(12).collect();
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "bridge", &format!("eci_guard_eci{port}")])
                .stderr(std::process::Stdio::null())
                .status();
            // The group's /dev/shm and its memory, disk and nfs volumes.
            let volumes = std::fs::read_dir(g.path().join("volumes"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path());
            for m in volumes.chain([g.path().join("shm")]) {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
            for ns in ["net", "ipc", "uts", "user"] {
                let _ = nix::mount::umount2(
                    &g.path().join("ns").join(ns),
                    nix::mount::MntFlags::MNT_DETACH,
                );
            }
        }
        // Killed processes take a moment to leave their cgroups: retry for up to 5 s.
        for _ in 0..100 {
            let dirs = cgroup_dirs(&self.cgroup_parent());
            if dirs.is_empty() {
                break;
            }
            for d in &dirs {
                for p in std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    if let Ok(pid) = p.trim().parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every directory of cgroup subtree `parent`, in all hierarchies, parents first.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if d.is_dir() {
            out.push(d.to_path_buf());
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        walk(&h.path().join(parent), &mut out);
    }
    out
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.remove_sandboxes();
        // The agent binds its shim binary read-only under its run dir.
        let _ = nix::mount::umount2(
            &self.root().join("run/eci/bin/eci-shim"),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Text of stdout and stderr together, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A gRPC channel to an agent's Unix socket.
pub async fn channel(socket: &Path) -> Result<tonic::transport::Channel> {
    let path = socket.to_path_buf();
    let ch = tonic::transport::Endpoint::from_static("http://agent.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await?;
    Ok(ch)
}
