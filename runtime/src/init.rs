//! The container side of process creation. The shim runs `eci-shim init <config>`, a
//! fresh single-threaded process, which joins the container's namespaces, forks the
//! process that will exec the container's program, and exits.
//!
//! Confinement comes before visibility (runc CVE-2019-5736 / CVE-2016-9962 class):
//! - a container's first process is PID 1 of a new PID namespace, seen by nothing in
//!   the group; it builds the filesystem view, then confines itself;
//! - an exec'd process joins a running container's PID namespace, where a tenant
//!   process (possibly holding `CAP_SYS_PTRACE`) can see it. So the helper joins the
//!   container's cgroup, then its namespaces, then confines itself fully (ids,
//!   capabilities, `no_new_privs`, non-dumpable, seccomp) *before* it forks: the forked
//!   child is confined from the first instant it exists in the container.
//!
//! Every descriptor above 2 is close-on-exec from the start. File descriptors: 0-2 the
//! container's stdio, 3 the start pipe (one byte = exec), 4 the sync pipe (JSON lines to
//! the shim: EOF after `Ready` means the exec happened); with a terminal, a container's
//! first process also has 5, the console socket (see [`crate::console`]).

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Uid};
use oci_spec::runtime::{Mount, Process};
use serde::{Deserialize, Serialize};

use crate::mounts::{self, Rootfs};
use crate::userns::IdRange;
use crate::{capabilities, seccomp, user};

/// Start pipe fd in the init process.
pub const START_FD: i32 = 3;
/// Sync pipe fd in the init process.
pub const SYNC_FD: i32 = 4;

/// Where a process goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // built once per process, never stored in bulk
pub enum Target {
    /// A container's first process: joins the group namespaces (paths of bind-mounted
    /// namespace files), gets its own mount and PID namespaces and the overlay root.
    Container {
        rootfs: Rootfs,
        /// Where the overlay is mounted (`<bundle>/rootfs`).
        rootfs_mount: PathBuf,
        group_namespaces: Vec<(String, PathBuf)>,
        mounts: Vec<Mount>,
        masked_paths: Vec<String>,
        readonly_paths: Vec<String>,
        sysctls: HashMap<String, String>,
        readonly_root: bool,
        /// The group's user namespace, when it has one: joined last, after the root
        /// is built (see [`GroupUserns`]).
        #[serde(default)]
        userns: Option<GroupUserns>,
    },
    /// An extra process in a running container: joins all namespaces of `pid`.
    Exec { pid: i32 },
}

/// A group's user namespace as a container's first process needs it: the pinned nsfs
/// file to join, and the range it maps, to turn ids the spec states inside (mount
/// options, the working directory's owner) into the host ids that host root, which
/// builds the root, must use.
///
/// The container's mount and PID namespaces are created by host root *before* the user
/// namespace is joined, so they stay owned by the initial user namespace: container
/// root, capable only in the group's user namespace, can never mount, unmount or
/// `pivot_root` in them (docs/userns.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupUserns {
    pub path: PathBuf,
    pub range: IdRange,
}

/// Everything the init process needs; written by the shim as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    pub target: Target,
    pub process: Process,
    /// User as stated ("name", "uid"), resolved inside the container.
    pub user: String,
    pub group: Option<String>,
    /// The container's cgroup, relative to each hierarchy's root. A container's first
    /// process is moved there by the shim while it sets itself up; an exec helper joins
    /// it itself before entering the container (see `eci-shim`'s process module).
    pub cgroup: String,
    /// Compiled seccomp programs (see [`seccomp::write_profile`]).
    pub seccomp: PathBuf,
}

/// Messages from init to the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sync {
    /// The container process, as seen from the shim's PID namespace.
    Pid(i32),
    /// Set up and waiting for the start byte.
    Ready,
    /// Setup failed; the process exits.
    Error(String),
}

fn send(sync: &mut std::fs::File, msg: &Sync) {
    if let Ok(mut line) = serde_json::to_vec(msg) {
        line.push(b'\n');
        let _ = sync.write_all(&line);
    }
}

/// Entry point of `eci-shim init CONFIG` and `eci-guest init CONFIG`. Never returns.
pub fn main(config: &Path) -> ! {
    // Rust's runtime ignores SIGPIPE in every binary; a disposition set to "ignore"
    // survives exec, so without this every container and exec would run with SIGPIPE
    // ignored, unlike under any other runtime.
    // SAFETY: restoring the default disposition installs no handler; this process is
    // single-threaded here.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    // Nothing this process inherited above stdio may reach the container's program:
    // a leaked descriptor to a host directory is an escape. The start and sync pipes
    // (3, 4) are closed or meant to close at exec too.
    // SAFETY: close_range only changes descriptor flags; no memory is passed.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    // SAFETY: fd 4 was set up by the shim as the sync pipe's write end and is owned by
    // nothing else in this freshly exec'd process.
    let mut sync = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(SYNC_FD) });
    // Non-dumpable until exec: no ptrace, no /proc/<pid>/{mem,exe,fd} of this process
    // for anything short of host CAP_SYS_PTRACE.
    let _ = nix::sys::prctl::set_dumpable(false);
    match run(config, &mut sync) {
        Ok(never) => match never {},
        Err(e) => {
            send(&mut sync, &Sync::Error(e));
            std::process::exit(1);
        }
    }
}

enum Never {}

fn run(config: &Path, sync: &mut std::fs::File) -> Result<Never, String> {
    let text = std::fs::read(config).map_err(|e| format!("reading {}: {e}", config.display()))?;
    let cfg: InitConfig =
        serde_json::from_slice(&text).map_err(|e| format!("parsing {}: {e}", config.display()))?;
    // Read before changing namespaces: the file is not reachable from inside.
    let programs = seccomp::read(&cfg.seccomp).map_err(chain)?;
    // Here, while /proc is still the host's: inherited by everything forked below.
    if let Some(adj) = cfg.process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("oom_score_adj {adj}: {e}"))?;
    }
    match &cfg.target {
        Target::Container {
            group_namespaces,
            userns,
            ..
        } => {
            // Opened while the host's paths are still in view.
            let user = match userns {
                Some(u) => Some((open_ns(&u.path, "user")?, u.range)),
                None => None,
            };
            for (kind, path) in group_namespaces {
                setns_path(path, kind)?;
            }
            // Still host root in the initial user namespace: these two are owned by it.
            nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)
                .map_err(|e| format!("unshare mount and pid namespaces: {e}"))?;
            match fork()? {
                None => {
                    build_root(&cfg, user.as_ref().map(|(fd, r)| (fd.as_fd(), *r)))?;
                    if cfg.process.terminal().unwrap_or(false) {
                        // In its own devpts, before the tenant runs anything here.
                        crate::console::open_and_send().map_err(chain)?;
                    }
                    session(&cfg)?;
                    let confined = confine(&cfg, &programs, user.map(|(fd, _)| fd))?;
                    wait_and_exec(confined, sync)
                }
                Some(child) => report_pid(sync, child),
            }
        }
        Target::Exec { pid } => {
            // Under the container's cgroup (its device rules, pids and memory limits)
            // before entering anything of the container: from the fork on, a tenant
            // ptracer can see the child, and the child inherits this cgroup.
            crate::cgroup::join(&cfg.cgroup, std::process::id()).map_err(chain)?;
            // The user namespace is joined last (in `confine`), but found now: after
            // the mount namespace, `/proc/<pid>` names something else or nothing.
            let user = other_user_ns(*pid)?;
            // Mount last: the others are found through this mount namespace's /proc.
            for kind in ["ipc", "uts", "net", "pid", "mnt"] {
                setns_path(&PathBuf::from(format!("/proc/{pid}/ns/{kind}")), kind)?;
            }
            let confined = confine(&cfg, &programs, user)?;
            match fork()? {
                None => {
                    session(&cfg)?;
                    wait_and_exec(confined, sync)
                }
                Some(child) => report_pid(sync, child),
            }
        }
    }
}

/// Forks; `None` in the child.
fn fork() -> Result<Option<nix::unistd::Pid>, String> {
    // SAFETY: this process is single-threaded (freshly exec'd, no threads started), so the
    // child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => Ok(Some(child)),
        ForkResult::Child => Ok(None),
    }
}

fn report_pid(sync: &mut std::fs::File, child: nix::unistd::Pid) -> ! {
    send(sync, &Sync::Pid(child.as_raw()));
    std::process::exit(0);
}

fn open_ns(path: &Path, kind: &str) -> Result<OwnedFd, String> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("opening {kind} namespace {}: {e}", path.display()))
}

/// The user namespace of `pid`, when it is not this process's own (a container of a
/// group with a user namespace): `setns` into one's own user namespace is an error.
fn other_user_ns(pid: i32) -> Result<Option<OwnedFd>, String> {
    let theirs = open_ns(&PathBuf::from(format!("/proc/{pid}/ns/user")), "user")?;
    let ours = open_ns(Path::new("/proc/self/ns/user"), "user")?;
    let id = |fd: &OwnedFd| nix::sys::stat::fstat(fd).map(|st| (st.st_dev, st.st_ino));
    let same = id(&theirs)
        .and_then(|a| id(&ours).map(|b| a == b))
        .map_err(|e| format!("comparing user namespaces: {e}"))?;
    Ok((!same).then_some(theirs))
}

fn setns_path(path: &Path, kind: &str) -> Result<(), String> {
    let f = std::fs::File::open(path)
        .map_err(|e| format!("opening {kind} namespace {}: {e}", path.display()))?;
    nix::sched::setns(f, CloneFlags::empty())
        .map_err(|e| format!("joining {kind} namespace {}: {e}", path.display()))
}

/// The container's filesystem view, in its new mount namespace: pivot_root, then its
/// working directory (created when missing), then the read-only root. With a user
/// namespace, the image layers are idmapped through it and ids in mount options and the
/// working directory's owner are the range's host ids.
fn build_root(
    cfg: &InitConfig,
    userns: Option<(std::os::fd::BorrowedFd<'_>, IdRange)>,
) -> Result<(), String> {
    let target = &cfg.target;
    let Target::Container {
        rootfs,
        rootfs_mount,
        mounts,
        masked_paths,
        readonly_paths,
        sysctls,
        readonly_root,
        ..
    } = target
    else {
        return Ok(());
    };
    let m = |e: mounts::MountError| {
        let src = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        format!("{e}{src}")
    };
    mounts::make_private().map_err(m)?;
    match userns {
        Some((fd, _)) => mounts::mount_overlay_idmapped(rootfs, rootfs_mount, fd).map_err(chain)?,
        None => mounts::mount_overlay(rootfs, rootfs_mount).map_err(m)?,
    }
    let root = mounts::open_root(rootfs_mount).map_err(m)?;
    for mnt in mounts {
        match userns {
            Some((_, range)) => mounts::apply_mount(
                &root,
                &mounts::host_ids(mnt, range),
                Some((range.base, range.base)),
            ),
            None => mounts::apply_mount(&root, mnt, None),
        }
        .map_err(m)?;
    }
    mounts::create_devices(&root).map_err(m)?;
    drop(root);
    mounts::pivot_root(rootfs_mount).map_err(m)?;
    for (k, v) in sysctls {
        write_sysctl(k, v, userns.map(|(_, r)| r))?;
    }
    mounts::mask(masked_paths).map_err(m)?;
    mounts::read_only(readonly_paths).map_err(m)?;
    // A workingDir the image lacks is created (Docker and Kubernetes do), owned by the
    // container's user, inside the new root by fd: a link the tenant planted cannot
    // send the mkdir elsewhere. Before the root turns read-only, as Docker does.
    let ids = user::resolve(
        &cfg.user,
        cfg.group.as_deref(),
        &read_account_file("/etc/passwd"),
        &read_account_file("/etc/group"),
    )
    .map_err(|e| e.to_string())?;
    let owner = match userns {
        Some((_, range)) => (
            range
                .host_id(ids.uid)
                .ok_or_else(|| outside(range, "uid", ids.uid))?,
            range
                .host_id(ids.gid)
                .ok_or_else(|| outside(range, "gid", ids.gid))?,
        ),
        None => (ids.uid, ids.gid),
    };
    let root = mounts::open_root(Path::new("/")).map_err(m)?;
    mounts::make_dir_in_root(&root, cfg.process.cwd(), owner)
        .map_err(|e| format!("working directory: {}", m(e)))?;
    drop(root);
    if *readonly_root {
        mounts::root_read_only().map_err(m)?;
    }
    Ok(())
}

/// Writes one sysctl of the container's namespaces through its `/proc`.
///
/// The kernel lets only the owner of an IPC namespace, by uid (its user namespace's
/// root), write the IPC and mqueue sysctls; `net.*` wants `CAP_NET_ADMIN` over the
/// network namespace, which host root has. So with a user namespace every sysctl but
/// `net.*` is written with that root as the effective uid, then root again (the
/// permitted set is kept, so the effective one returns).
fn write_sysctl(key: &str, value: &str, userns: Option<IdRange>) -> Result<(), String> {
    let p = format!("/proc/sys/{}", key.replace('.', "/"));
    let owner = userns.filter(|_| !key.starts_with("net.")).map(|r| r.base);
    if let Some(uid) = owner {
        nix::unistd::seteuid(Uid::from_raw(uid))
            .map_err(|e| format!("seteuid {uid} for sysctl {key}: {e}"))?;
    }
    let written = std::fs::write(&p, value).map_err(|e| format!("sysctl {key}: {e}"));
    if owner.is_some() {
        nix::unistd::seteuid(Uid::from_raw(0)).map_err(|e| format!("seteuid 0: {e}"))?;
    }
    written
}

fn outside(range: IdRange, what: &str, id: u32) -> String {
    format!(
        "{what} {id} is outside the group's user namespace (ids 0-{})",
        range.len - 1
    )
}

/// What [`confine`] resolved for the exec.
struct Confined {
    program: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

/// A new session, with the pty on stdin as its controlling terminal when there is one
/// (the shim's for an exec, the container's own for a first process).
fn session(cfg: &InitConfig) -> Result<(), String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    if cfg.process.terminal().unwrap_or(false) {
        // SAFETY: TIOCSCTTY takes an integer argument and touches no memory; fd 0 is the
        // pty slave the shim passed as stdin.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(format!(
                "making the pty the controlling terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Everything that confines the process, in the order the kernel needs: rlimits while
/// host root, then the group's user namespace (joining one resets the bounding set to
/// full, so it comes before the bounding set is limited), the bounding set while
/// privileged, then ids, capabilities, `no_new_privs`, non-dumpable, working
/// directory, and seccomp last (its allowlist has no room for the calls before it).
/// Runs inside the container's namespaces and root.
///
/// Without `no_new_privs` (`allowPrivilegeEscalation`), seccomp is loaded before the
/// capabilities are set: the kernel then wants `CAP_SYS_ADMIN` of the loader, which
/// the container's own set may lack.
fn confine(
    cfg: &InitConfig,
    programs: &[seccompiler::BpfProgram],
    userns: Option<OwnedFd>,
) -> Result<Confined, String> {
    let p = &cfg.process;
    apply_rlimits(p)?;
    if let Some(ns) = userns {
        nix::sched::setns(ns, CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("joining the group's user namespace: {e}"))?;
        // Root of the namespace first, so every later id change follows the kernel's
        // own rules for root (docs/userns.md).
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .map_err(|e| format!("setgid 0 in the user namespace: {e}"))?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .map_err(|e| format!("setuid 0 in the user namespace: {e}"))?;
    }
    let nnp = p.no_new_privileges().unwrap_or(true);
    let caps = p.capabilities().clone().unwrap_or_default();
    let names = |s: &Option<oci_spec::runtime::Capabilities>| -> Vec<String> {
        s.iter().flatten().map(|c| format!("CAP_{c}")).collect()
    };
    capabilities::limit_bounding(&names(caps.bounding())).map_err(chain)?;
    let passwd = read_account_file("/etc/passwd");
    let groups = read_account_file("/etc/group");
    let ids = user::resolve(&cfg.user, cfg.group.as_deref(), &passwd, &groups)
        .map_err(|e| e.to_string())?;
    // Keep the permitted set across the uid change; the sets are set right after.
    nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("keepcaps: {e}"))?;
    let extra: Vec<Gid> = ids.additional.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&extra).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(
        Gid::from_raw(ids.gid),
        Gid::from_raw(ids.gid),
        Gid::from_raw(ids.gid),
    )
    .map_err(|e| format!("setgid {}: {e}", ids.gid))?;
    nix::unistd::setresuid(
        Uid::from_raw(ids.uid),
        Uid::from_raw(ids.uid),
        Uid::from_raw(ids.uid),
    )
    .map_err(|e| format!("setuid {}: {e}", ids.uid))?;
    if !nnp {
        capabilities::raise_effective().map_err(chain)?;
        seccomp::load_keeping_privileges(programs).map_err(chain)?;
    }
    capabilities::apply(
        &names(caps.effective()),
        &names(caps.permitted()),
        &names(caps.inheritable()),
        &names(caps.ambient()),
    )
    .map_err(chain)?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| format!("keepcaps: {e}"))?;
    if nnp {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    }
    // A uid change resets the flag from fs.suid_dumpable: set it again.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("dumpable: {e}"))?;
    let cwd = p.cwd();
    nix::unistd::chdir(cwd).map_err(|e| format!("working directory {}: {e}", cwd.display()))?;
    let mut env: Vec<String> = p.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", ids.home));
    }
    let args = p.args().clone().unwrap_or_default();
    let program = find_program(args.first().ok_or("no command")?, &env)?;
    let confined = Confined {
        program: cstring(&program)?,
        args: args.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?,
        env: env.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?,
    };
    if nnp {
        seccomp::load(programs).map_err(chain)?;
    }
    Ok(confined)
}

/// Reports `Ready`, waits for the start byte, execs. Only calls the default seccomp
/// profile allows (write, read, close, execve).
fn wait_and_exec(c: Confined, sync: &mut std::fs::File) -> Result<Never, String> {
    send(sync, &Sync::Ready);
    // SAFETY: fd 3 is the start pipe's read end set up by the shim; nothing else owns it.
    let mut start = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(START_FD) });
    let mut byte = [0u8; 1];
    if start
        .read(&mut byte)
        .map_err(|e| format!("waiting for start: {e}"))?
        == 0
    {
        return Err("the shim closed the start pipe: not started".into());
    }
    drop(start);
    let err = nix::unistd::execve(&c.program, &c.args, &c.env).err();
    Err(format!(
        "exec {}: {}",
        c.program.to_string_lossy(),
        err.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Largest account file read: a container controls these files.
const ACCOUNT_FILE_MAX: u64 = 4 << 20;

/// Reads `/etc/passwd` or `/etc/group` of the container as it is: a regular file only
/// (a FIFO planted there must not block the runtime), at most [`ACCOUNT_FILE_MAX`].
fn read_account_file(path: &str) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    else {
        return String::new();
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut s = String::new();
    let _ = f.take(ACCOUNT_FILE_MAX).read_to_string(&mut s);
    s
}

/// An error with its causes, for the one-line message sent to the shim.
fn chain(e: impl std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// `args[0]` as given when it has a '/', else the first match in the process's PATH.
fn find_program(name: &str, env: &[String]) -> Result<String, String> {
    if name.contains('/') {
        return Ok(name.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    for dir in path.split(':') {
        let candidate = Path::new(dir).join(name);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
            return Ok(candidate.display().to_string());
        }
    }
    Err(format!("executable {name:?} not found in PATH {path:?}"))
}

fn apply_rlimits(p: &Process) -> Result<(), String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    for r in p.rlimits().iter().flatten() {
        let res = match r.typ() {
            oci_spec::runtime::PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
            oci_spec::runtime::PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
            oci_spec::runtime::PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
            oci_spec::runtime::PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
            oci_spec::runtime::PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
            _ => continue,
        };
        // Without CAP_SYS_RESOURCE a hard limit cannot be raised: stay within it.
        let (_, hard_now) = getrlimit(res).map_err(|e| format!("getrlimit: {e}"))?;
        let hard = r.hard().min(hard_now);
        let soft = r.soft().min(hard);
        setrlimit(res, soft, hard).map_err(|e| format!("setrlimit {:?}: {e}", r.typ()))?;
    }
    Ok(())
}
