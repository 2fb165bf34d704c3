//! A group's shared namespaces (network, IPC, UTS, and its user namespace when it has
//! one), kept alive by bind-mounting their nsfs files under the group's run directory,
//! so they outlive any one container and need no holder process.
//!
//! With a user namespace, the network, IPC and UTS namespaces are created *owned by*
//! it (see [`crate::userns`]): container root's capabilities then act on the group's own
//! network, IPC objects and hostname, and on nothing of the host.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;

/// Errors creating or removing group namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("{step} {path}")]
    Step {
        step: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bringing up lo")]
    Loopback(#[source] eci_netns::loopback::LoopbackError),
    #[error("the namespace thread panicked")]
    Thread,
    #[error("creating the group's user namespace")]
    Userns(#[from] crate::userns::UsernsError),
}

/// The kinds shared by all containers of a group.
pub const SHARED: &[(&str, CloneFlags)] = &[
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

/// Where the group's user namespace is pinned, below the namespaces directory.
pub const USER: &str = "user";

/// Paths of a group's namespace files: `<dir>/<kind>`.
pub fn paths(dir: &Path) -> Vec<(String, PathBuf)> {
    SHARED
        .iter()
        .map(|(k, _)| (k.to_string(), dir.join(k)))
        .collect()
}

fn io_step<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::Error) -> NamespaceError + 'a {
    move |e| NamespaceError::Step {
        step,
        path: path.display().to_string(),
        source: e.into(),
    }
}

/// Creates the namespaces with `hostname` and `lo` up, pinned at `dir/{net,ipc,uts}`,
/// and, with `userns`, a user namespace mapping that range pinned at `dir/user` that
/// owns the other three.
///
/// Runs on a dedicated thread: `unshare`/`setns` change only that thread, which ends
/// after the namespaces are pinned, so no other thread of the caller ever runs inside
/// them.
pub fn create(
    dir: &Path,
    hostname: &str,
    userns: Option<crate::userns::IdRange>,
) -> Result<(), NamespaceError> {
    std::fs::create_dir_all(dir).map_err(|e| NamespaceError::Step {
        step: "creating",
        path: dir.display().to_string(),
        source: e,
    })?;
    for (kind, _) in SHARED {
        let p = dir.join(kind);
        std::fs::File::create(&p).map_err(|e| NamespaceError::Step {
            step: "creating",
            path: p.display().to_string(),
            source: e,
        })?;
    }
    let flags = SHARED.iter().fold(CloneFlags::empty(), |a, (_, f)| a | *f);
    if let Some(range) = userns {
        return create_owned(dir, hostname, range, flags);
    }
    let dir = dir.to_path_buf();
    let hostname = hostname.to_string();
    std::thread::spawn(move || -> Result<(), NamespaceError> {
        nix::sched::unshare(flags).map_err(io_step("unshare", &dir))?;
        nix::unistd::sethostname(&hostname).map_err(io_step("sethostname", &dir))?;
        eci_netns::loopback::up().map_err(NamespaceError::Loopback)?;
        for (kind, _) in SHARED {
            let src = format!("/proc/thread-self/ns/{kind}");
            let target = dir.join(kind);
            mount(
                Some(src.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io_step("pinning namespace at", &target))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| NamespaceError::Thread)?
}

/// [`create`] with a user namespace: a cloned child makes the user namespace and the
/// shared ones owned by it (a multi-threaded process may not), all are pinned, then a
/// thread joins the new network and UTS namespaces to set the hostname and bring up
/// `lo` (host root is privileged over every namespace a descendant user namespace
/// owns, and a thread may join those, unlike the user namespace itself).
fn create_owned(
    dir: &Path,
    hostname: &str,
    range: crate::userns::IdRange,
    flags: CloneFlags,
) -> Result<(), NamespaceError> {
    let ns = crate::userns::create_with(range, flags)?;
    crate::userns::pin(&ns.user, &dir.join(USER))?;
    for (kind, fd) in &ns.owned {
        crate::userns::pin(fd, &dir.join(kind))?;
    }
    let dir = dir.to_path_buf();
    let hostname = hostname.to_string();
    std::thread::spawn(move || -> Result<(), NamespaceError> {
        for (kind, fd) in ns.owned {
            let flag = SHARED
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(CloneFlags::empty(), |(_, f)| *f);
            if flag == CloneFlags::CLONE_NEWNET || flag == CloneFlags::CLONE_NEWUTS {
                nix::sched::setns(fd, flag).map_err(io_step("joining", &dir.join(kind)))?;
            }
        }
        nix::unistd::sethostname(&hostname).map_err(io_step("sethostname", &dir))?;
        eci_netns::loopback::up().map_err(NamespaceError::Loopback)
    })
    .join()
    .map_err(|_| NamespaceError::Thread)?
}

/// Unpins the namespaces (they go when their last process does) and removes the files.
/// Missing files are fine, so this can finish an interrupted teardown.
pub fn remove(dir: &Path) -> Result<(), NamespaceError> {
    for kind in SHARED.iter().map(|(k, _)| *k).chain([USER]) {
        let p = dir.join(kind);
        match umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(io_step("unmounting", &p)(e)),
        }
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(NamespaceError::Step {
                    step: "removing",
                    path: p.display().to_string(),
                    source: e,
                });
            }
            _ => {}
        }
    }
    Ok(())
}
