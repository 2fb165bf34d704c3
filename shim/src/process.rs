//! Starting a process through `eci-shim init` and the sync protocol with it
//! (see `eci_runtime::init`): `Pid`, then `Ready`; one byte on the start pipe execs it;
//! EOF on the sync pipe means the exec happened.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use eci_runtime::init::{START_FD, SYNC_FD, Sync};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::reaper::Reaper;

/// Errors starting a process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}")]
    Io(String),
    #[error("container setup failed: {0}")]
    Init(String),
    #[error("container init exited before reporting")]
    Vanished,
}

fn io(what: &str) -> impl FnOnce(nix::Error) -> SpawnError + '_ {
    move |e| SpawnError::Io(format!("{what}: {e}"))
}

/// A process that is set up and waits for its start byte.
pub struct Created {
    pub pid: i32,
    /// A container's first process with a terminal: the pty master its init opened in
    /// the container's devpts (see `eci_runtime::console`).
    pub console: Option<OwnedFd>,
    start: File,
    sync: BufReader<File>,
}

/// Duplicates `fd` above the range init uses, so the dup2 onto 3 and 4 cannot clobber it.
fn high(fd: &OwnedFd) -> Result<OwnedFd, SpawnError> {
    let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(io("dup"))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// How a new process gets into its container's cgroup, and what the shim may believe of
/// the pid it reports.
#[derive(Debug, Clone)]
pub enum Placement {
    /// A container's first process: PID 1 of a new PID namespace, seen by nothing in the
    /// group while it builds its root, so the shim moves it into this cgroup meanwhile
    /// (the attach waits for an RCU grace period; in parallel it costs nothing).
    ByShim(String),
    /// An exec'd process: it joins the container's cgroup itself before it enters the
    /// container's namespaces, so it is under the container's device rules before the
    /// container can see (and ptrace) it. Its report comes through a pipe a tenant
    /// ptracer could write to, so the reported pid must be in this PID namespace
    /// (`/proc/<container init>/ns/pid`) and a child of the helper or of the shim.
    Itself { pid_ns: PathBuf },
}

/// Runs `eci-shim init CONFIG` with the given stdio, places the process per `placement`,
/// and waits until it is set up (or failed). With `console`, the init opens the
/// process's terminal itself and sends its master back ([`Created::console`]).
/// Blocking: call from a blocking thread.
pub fn create(
    config: &Path,
    placement: &Placement,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    console: bool,
    reaper: &Reaper,
) -> Result<Created, SpawnError> {
    let (start_r, start_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io("pipe"))?;
    let (sync_r, sync_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io("pipe"))?;
    let (start_r, sync_w) = (high(&start_r)?, high(&sync_w)?);
    let (sr, sw) = (start_r.as_raw_fd(), sync_w.as_raw_fd());
    let console_pair = if console {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io("console socket"))?;
        Some((ours, high(&theirs)?))
    } else {
        None
    };
    let cf = console_pair.as_ref().map_or(-1, |(_, t)| t.as_raw_fd());
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("init")
        .arg(config)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: between fork and exec this only calls dup2, which is async-signal-safe, on
    // descriptors that stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(sr, START_FD) < 0 || libc::dup2(sw, SYNC_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if cf >= 0 && libc::dup2(cf, eci_runtime::console::CONSOLE_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| SpawnError::Io(format!("starting eci-shim init: {e}")))?;
    reaper.forget(child.id() as i32);
    drop(cmd);
    drop((start_r, sync_w));
    let console_sock = console_pair.map(|(ours, _theirs)| ours);
    let mut sync = BufReader::new(File::from(sync_r));
    // The helper reports the pid after its fork returns; the child reports Ready when
    // set up. An exec's child has little to set up and may well be first: both orders
    // are fine, each message once.
    let mut ready = false;
    let pid = loop {
        match read(&mut sync)? {
            Some(Sync::Pid(p)) => break p,
            Some(Sync::Ready) if !ready => ready = true,
            Some(Sync::Error(e)) => return Err(SpawnError::Init(e)),
            _ => return Err(SpawnError::Vanished),
        }
    };
    match placement {
        Placement::ByShim(cgroup) => {
            // Into its cgroup while it builds its root in parallel: the first attach to
            // a v1 hierarchy waits for an RCU grace period, about as long as the rest of
            // the setup. It cannot exec before the start byte, which comes after this.
            if let Err(e) = eci_runtime::cgroup::join(cgroup, pid as u32) {
                crate::kill::sigkill(pid);
                // A process that failed its setup may be gone before it could be
                // joined: its own report says why, not the join.
                if let Ok(Some(Sync::Error(why))) = read(&mut sync) {
                    return Err(SpawnError::Init(why));
                }
                let why = std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                return Err(SpawnError::Io(format!("{e}: {why}")));
            }
        }
        Placement::Itself { pid_ns } => {
            if let Err(why) = verify_exec_pid(pid, child.id() as i32, pid_ns) {
                crate::kill::sigkill(child.id() as i32);
                return Err(SpawnError::Io(why));
            }
        }
    }
    if !ready {
        match read(&mut sync)? {
            Some(Sync::Ready) => {}
            Some(Sync::Error(e)) => return Err(SpawnError::Init(e)),
            _ => return Err(SpawnError::Vanished),
        }
    }
    // Sent before Ready: already queued.
    let console = match console_sock {
        Some(sock) => match eci_runtime::console::receive(&sock) {
            Ok(master) => Some(master),
            Err(e) => {
                crate::kill::sigkill(pid);
                let why = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                return Err(SpawnError::Io(format!("{e}{why}")));
            }
        },
        None => None,
    };
    Ok(Created {
        pid,
        console,
        start: File::from(start_w),
        sync,
    })
}

/// Checks that `pid`, reported by an exec helper, is its child inside the container:
/// in the container's PID namespace and a child of the helper (or, once the helper has
/// exited, of this shim, the subreaper). A pid a tenant wrote into the pipe instead
/// (the agent's, another group's shim) fails both.
fn verify_exec_pid(pid: i32, helper: i32, pid_ns: &Path) -> Result<(), String> {
    let ns = |p: &Path| std::fs::read_link(p).map_err(|e| format!("{}: {e}", p.display()));
    if ns(Path::new(&format!("/proc/{pid}/ns/pid")))? != ns(pid_ns)? {
        return Err(format!(
            "exec helper reported pid {pid}, which is not in the container"
        ));
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let ppid: i32 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/stat: no parent"))?;
    if ppid != helper && ppid != std::process::id() as i32 {
        return Err(format!(
            "exec helper reported pid {pid}, which is not its child"
        ));
    }
    Ok(())
}

fn read(sync: &mut BufReader<File>) -> Result<Option<Sync>, SpawnError> {
    let mut line = String::new();
    let n = sync
        .read_line(&mut line)
        .map_err(|e| SpawnError::Io(format!("reading from init: {e}")))?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| SpawnError::Io(format!("message from init: {e}")))
}

impl Created {
    /// Lets the process exec; returns once it has (or reports why it could not).
    /// Blocking.
    pub fn start(mut self) -> Result<(), SpawnError> {
        self.start
            .write_all(b"1")
            .map_err(|e| SpawnError::Io(format!("start pipe: {e}")))?;
        drop(self.start);
        match read(&mut self.sync)? {
            None => Ok(()),
            Some(Sync::Error(e)) => Err(SpawnError::Init(e)),
            Some(other) => Err(SpawnError::Io(format!(
                "unexpected message from init: {other:?}"
            ))),
        }
    }
}

/// Pipe for a container stream: (reader for the shim, writer for the process).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io("pipe"))
}
