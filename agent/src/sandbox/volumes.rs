//! A group's volumes, shared by its containers: `emptyDir` on disk (under the state
//! directory) or in memory (a tmpfs of the given size), and `configFile` volumes whose
//! files the agent writes. Each is bind-mounted into the containers that name it.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use eci_api::v1::GroupSpec;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::quantity::parse_memory_bytes;

/// Errors preparing a group's volumes. Each names the volume (and file) the spec gave.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: {step}")]
    Io {
        volume: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {volume}: sizeLimit")]
    Size {
        volume: String,
        #[source]
        source: crate::quantity::QuantityError,
    },
    #[error("volume {volume} file {file}: content is not base64")]
    Base64 {
        volume: String,
        file: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error("volume {volume} file {file}: {step}")]
    File {
        volume: String,
        file: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {0}: no source (emptyDir, configFile, disk or nfs)")]
    NoSource(String),
    #[error("volume {volume}: disk")]
    Disk {
        volume: String,
        #[source]
        source: super::disk::DiskError,
    },
    #[error("volume {volume}: mounting {what}")]
    Mount {
        volume: String,
        what: String,
        #[source]
        source: eci_runtime::fsmount::FsMountError,
    },
    #[error(
        "volume {0}: nfs: this host's kernel has no NFS client (neither nfs4 nor nfs is in /proc/filesystems)"
    )]
    NoNfsClient(String),
    #[error("volume {volume}: nfs server {server:?} has no address")]
    NfsServer {
        volume: String,
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {volume}: {step}")]
    Namespace {
        volume: String,
        step: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// The host directory of each volume by name. `run_root` and `state_root` are the
/// group's run and state directories: in-memory and config volumes live in the first,
/// disk volumes in the second.
pub fn paths(spec: &GroupSpec, run_root: &Path, state_root: &Path) -> HashMap<String, PathBuf> {
    spec.volumes
        .iter()
        .map(|v| {
            let on_disk = v.empty_dir.as_ref().is_some_and(|e| e.medium != "Memory");
            let dir = if on_disk {
                state_root.join(".volumes")
            } else {
                run_root.join("volumes")
            };
            (v.name.clone(), dir.join(&v.name))
        })
        .collect()
}

/// Creates every volume of `spec` at its [`paths`] entry. With `owner` (the host id of
/// root in the group's user namespace), each volume's root, and every file and
/// directory the agent writes into a configFile volume, belong to it: container root
/// owns its volumes as it would without a user namespace. What a container writes
/// lands with its own mapped ids.
pub fn prepare(
    spec: &GroupSpec,
    run_root: &Path,
    state_root: &Path,
    owner: Option<u32>,
) -> Result<(), VolumeError> {
    let dirs = paths(spec, run_root, state_root);
    for v in &spec.volumes {
        let dir = dirs.get(&v.name).cloned().unwrap_or_default();
        if let Some(e) = &v.empty_dir {
            if e.medium == "Memory" {
                std::fs::create_dir_all(&dir).map_err(|source| VolumeError::Io {
                    volume: v.name.clone(),
                    step: "creating its directory",
                    source,
                })?;
                let size =
                    parse_memory_bytes(&e.size_limit).map_err(|source| VolumeError::Size {
                        volume: v.name.clone(),
                        source,
                    })?;
                let ids = owner
                    .map(|id| format!(",uid={id},gid={id}"))
                    .unwrap_or_default();
                let data = format!("size={size},mode=1777{ids}");
                let already = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
                    m.lines()
                        .any(|l| l.split(' ').nth(4) == Some(&dir.display().to_string()))
                });
                if !already {
                    mount(
                        Some("tmpfs"),
                        &dir,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        Some(data.as_str()),
                    )
                    .map_err(|e| VolumeError::Io {
                        volume: v.name.clone(),
                        step: "mounting its tmpfs",
                        source: e.into(),
                    })?;
                }
            } else {
                std::fs::create_dir_all(&dir).map_err(|source| VolumeError::Io {
                    volume: v.name.clone(),
                    step: "creating its directory",
                    source,
                })?;
                // Writable by any container user, as Kubernetes makes emptyDir.
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
                    .map_err(|source| VolumeError::Io {
                        volume: v.name.clone(),
                        step: "setting its mode",
                        source,
                    })?;
                // The directory itself only (lchown, no recursion): what is inside is
                // the tenant's, and may be links to anywhere.
                if let Some(id) = owner {
                    std::os::unix::fs::lchown(&dir, Some(id), Some(id)).map_err(|source| {
                        VolumeError::Io {
                            volume: v.name.clone(),
                            step: "giving it to the group's user namespace",
                            source,
                        }
                    })?;
                }
            }
        } else if let Some(cf) = &v.config_file {
            fresh_dir(&dir).map_err(|source| VolumeError::Io {
                volume: v.name.clone(),
                step: "creating its directory",
                source,
            })?;
            for f in &cf.files {
                let bytes = if f.content_base64.is_empty() {
                    f.content.clone().into_bytes()
                } else {
                    base64::engine::general_purpose::STANDARD
                        .decode(&f.content_base64)
                        .map_err(|source| VolumeError::Base64 {
                            volume: v.name.clone(),
                            file: f.path.clone(),
                            source,
                        })?
                };
                // Validation made the path relative and free of '..'.
                let path = dir.join(&f.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| VolumeError::File {
                        volume: v.name.clone(),
                        file: f.path.clone(),
                        step: "creating its directory",
                        source,
                    })?;
                }
                // A new file (never through a link: `create_new` is O_EXCL), and its mode
                // set on the descriptor, in a directory only the agent can reach.
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path)
                    .and_then(|mut w| w.write_all(&bytes).map(|()| w))
                    .map_err(|source| VolumeError::File {
                        volume: v.name.clone(),
                        file: f.path.clone(),
                        step: "writing it",
                        source,
                    })?;
                if let Some(id) = owner {
                    chown_written(&dir, &path, id).map_err(|source| VolumeError::File {
                        volume: v.name.clone(),
                        file: f.path.clone(),
                        step: "giving it to the group's user namespace",
                        source,
                    })?;
                }
                let mode = if f.mode == 0 { 0o644 } else { f.mode };
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .map_err(|source| VolumeError::File {
                        volume: v.name.clone(),
                        file: f.path.clone(),
                        step: "setting its mode",
                        source,
                    })?;
            }
        } else if v.disk.is_none() && v.nfs.is_none() {
            // disk and nfs volumes are mounted once the sandbox is up (`external`).
            return Err(VolumeError::NoSource(v.name.clone()));
        }
    }
    Ok(())
}

/// The group's `/dev/shm`: one tmpfs for all its containers, which share the IPC
/// namespace (as a pod's containers share the sandbox's `/dev/shm`).
pub fn shm_dir(run_root: &Path) -> PathBuf {
    run_root.join("shm")
}

/// Mounts the group's `/dev/shm` tmpfs of `bytes` (`shmSize`) at [`shm_dir`], owned by
/// `owner` (the group's root) when it has a user namespace. Kept when already there,
/// so what containers put in it outlives their restarts, as in a pod.
pub fn prepare_shm(run_root: &Path, bytes: u64, owner: Option<u32>) -> Result<(), VolumeError> {
    // Containers of a group start in parallel: one check-and-mount at a time, or two
    // would stack two tmpfs at the same path.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = shm_dir(run_root);
    let err = |step, source| VolumeError::Io {
        volume: "/dev/shm".into(),
        step,
        source,
    };
    std::fs::create_dir_all(&dir).map_err(|e| err("creating its directory", e))?;
    if is_mounted(&dir) {
        return Ok(());
    }
    let ids = owner
        .map(|id| format!(",uid={id},gid={id}"))
        .unwrap_or_default();
    let data = format!("size={bytes},mode=1777{ids}");
    mount(
        Some("shm"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|e| err("mounting its tmpfs", e.into()))
}

/// Whether something is mounted at `path` (a mount point of this mount namespace).
pub fn is_mounted(path: &Path) -> bool {
    let want = path.display().to_string().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
    })
}

/// Makes `dir` a new, empty directory only the agent has seen. What stood there (the
/// volume of an earlier run, maybe still mounted read-write in a container that is
/// running) is first renamed aside, atomically, then removed: a tenant that keeps
/// adding entries to it makes the removal fail (`ENOTEMPTY`), and it must never be
/// written to again, or a link planted there would take the agent's writes (and
/// chmod) to any host file. A leftover goes with the group's run directory.
fn fresh_dir(dir: &Path) -> std::io::Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)?;
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Volume names are DNS labels: a name starting with '.' is never a volume's.
    let aside = parent.join(format!(".old-{name}-{nanos}"));
    match std::fs::rename(dir, &aside) {
        Ok(()) => {
            if let Err(e) = std::fs::remove_dir_all(&aside) {
                tracing::warn!(dir = %aside.display(), error = %e, "removing an earlier configFile volume");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Fails if anything stands at `dir` again: nothing but the agent writes there.
    std::fs::create_dir(dir)
}

/// Gives `path` and each directory between it and `root` (all written by the agent
/// just now, in a directory it recreated) to `id`, without following links.
fn chown_written(root: &Path, path: &Path, id: u32) -> std::io::Result<()> {
    let mut p = Some(path);
    while let Some(cur) = p {
        std::os::unix::fs::lchown(cur, Some(id), Some(id))?;
        if cur == root {
            break;
        }
        p = cur.parent().filter(|q| q.starts_with(root));
    }
    Ok(())
}

/// Unmounts the group's in-memory, disk and nfs volumes (before its run directory is
/// removed). A disk's filesystem is flushed and released once no container holds it.
pub fn unmount_all(run_root: &Path) {
    let entries = std::fs::read_dir(run_root.join("volumes"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    for path in entries.chain([shm_dir(run_root)]) {
        // Until nothing is mounted there (EINVAL): mounts stacked by an earlier agent
        // go too.
        for _ in 0..16 {
            match umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(err) => {
                    tracing::warn!(volume = %path.display(), error = %err, "unmounting volume")
                }
            }
            break;
        }
    }
}

/// Whether anything is still mounted among the group's volumes or `/dev/shm` (a
/// teardown that a crash cut short leaves a disk mounted).
pub fn has_mounts(run_root: &Path) -> bool {
    let (dir, shm) = (run_root.join("volumes"), shm_dir(run_root));
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|at| Path::new(at).starts_with(&dir) || Path::new(at) == shm)
        })
    })
}
