//! Volumes whose data lives off the node's state directory: `disk` (a host block
//! device) and `nfs`. They are mounted once the group's sandbox exists — a disk is
//! idmapped through the group's user namespace, an NFS export is mounted from inside
//! the group's network namespace (its server is on the group's VPC, not the host's) —
//! at the path [`super::volumes::paths`] gives, which containers then bind.
//! Unmounted with the other volumes by [`super::volumes::unmount_all`].

use std::os::fd::AsFd;
use std::path::Path;

use eci_api::v1::{GroupSpec, NfsVolume, Volume};
use eci_runtime::fsmount::{FsMount, kernel_has};

use super::disk::{self, DiskPolicy};
use super::volumes::VolumeError;

/// Where the sandbox's namespaces are, for the mounts that need them.
#[derive(Debug, Clone)]
pub struct Sandbox<'a> {
    /// The group's pinned user namespace, when it has one: disks are idmapped through it.
    pub userns: Option<&'a Path>,
    /// The group's pinned network namespace: NFS is mounted from inside it.
    pub netns: &'a Path,
}

/// Mounts every disk and nfs volume of `spec` under `run_root/volumes`. One already
/// mounted (a restart of the group's containers, an adopted group) is kept.
pub fn mount_all(
    spec: &GroupSpec,
    run_root: &Path,
    sandbox: &Sandbox<'_>,
    policy: &DiskPolicy,
) -> Result<(), VolumeError> {
    let dir = run_root.join("volumes");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for v in &spec.volumes {
        if v.disk.is_none() && v.nfs.is_none() {
            continue;
        }
        let target = dir.join(&v.name);
        if is_mount_point(&mountinfo, &target) {
            continue;
        }
        std::fs::create_dir_all(&target).map_err(|source| VolumeError::Io {
            volume: v.name.clone(),
            step: "creating its mount point",
            source,
        })?;
        if v.disk.is_some() {
            mount_disk(v, &target, sandbox, policy)?;
        } else if let Some(n) = &v.nfs {
            mount_nfs(&v.name, n, &target, sandbox.netns)?;
        }
    }
    Ok(())
}

/// How long a busy device is waited for: up to 5 s.
const BUSY_TRIES: u32 = 50;
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

fn is_mount_point(mountinfo: &str, path: &Path) -> bool {
    let want = path.display().to_string().replace(' ', "\\040");
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A vm group's disk volumes: each device resolved and formatted when blank as
/// [`mount_all`] does, listed for `vm.json` with the path `mount_all` would have
/// mounted it at (`run_root/volumes/<name>`). Nothing is mounted on the host.
pub fn prepare_vm_disks(
    spec: &GroupSpec,
    run_root: &Path,
    policy: &DiskPolicy,
) -> Result<Vec<eci_runtime::vm_config::VmDisk>, VolumeError> {
    let dir = run_root.join("volumes");
    let mut out = Vec::new();
    for v in &spec.volumes {
        let Some(d) = &v.disk else { continue };
        let err = |source| VolumeError::Disk {
            volume: v.name.clone(),
            source,
        };
        let dev = disk::resolve(&d.device, policy).map_err(err)?;
        let mut tries = 0;
        let fs = loop {
            match disk::ensure_filesystem(&dev, &d.fs_type, d.read_only) {
                Err(disk::DiskError::Busy(_)) if tries < BUSY_TRIES => {
                    tries += 1;
                    std::thread::sleep(BUSY_WAIT);
                }
                r => break r.map_err(err)?,
            }
        };
        let serial = eci_runtime::vm_config::disk_serial(out.len());
        tracing::info!(volume = %v.name, device = %dev.display(), fs, %serial, "disk volume attached to the VM");
        out.push(eci_runtime::vm_config::VmDisk {
            device: dev,
            serial,
            path: dir.join(&v.name),
        });
    }
    Ok(out)
}

fn mount_disk(
    v: &Volume,
    target: &Path,
    sandbox: &Sandbox<'_>,
    policy: &DiskPolicy,
) -> Result<(), VolumeError> {
    let Some(d) = &v.disk else { return Ok(()) };
    let err = |source| VolumeError::Disk {
        volume: v.name.clone(),
        source,
    };
    // Checked again: the host may have started using the device since admission.
    let dev = disk::resolve(&d.device, policy).map_err(err)?;
    // A group deleted just now may still hold it for a moment: its last container's
    // mount namespace, which kept the detached mount alive, is going away.
    let mut tries = 0;
    let fs = loop {
        match disk::ensure_filesystem(&dev, &d.fs_type, d.read_only) {
            Err(disk::DiskError::Busy(_)) if tries < BUSY_TRIES => {
                tries += 1;
                std::thread::sleep(BUSY_WAIT);
            }
            r => break r.map_err(err)?,
        }
    };
    let userns = sandbox
        .userns
        .map(std::fs::File::open)
        .transpose()
        .map_err(|source| VolumeError::Io {
            volume: v.name.clone(),
            step: "opening the group's user namespace",
            source,
        })?;
    let dev_s = dev.display().to_string();
    FsMount {
        fs_type: fs,
        source: &dev_s,
        options: &[],
        read_only: d.read_only,
        idmap: userns.as_ref().map(|f| f.as_fd()),
    }
    .attach(target)
    .map_err(|source| VolumeError::Mount {
        volume: v.name.clone(),
        what: dev_s.clone(),
        source,
    })?;
    tracing::info!(volume = %v.name, device = %dev_s, fs, "disk volume mounted");
    crate::failpoint::hit("disk-mounted");
    Ok(())
}

fn mount_nfs(name: &str, n: &NfsVolume, target: &Path, netns: &Path) -> Result<(), VolumeError> {
    let fs_type = if kernel_has("nfs4") {
        "nfs4"
    } else if kernel_has("nfs") {
        "nfs"
    } else {
        return Err(VolumeError::NoNfsClient(name.to_string()));
    };
    // The kernel client takes an address, not a name (mount.nfs resolves it too).
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(n.server.as_str(), 2049))
        .and_then(|mut a| {
            a.next().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the name")
            })
        })
        .map_err(|source| VolumeError::NfsServer {
            volume: name.to_string(),
            server: n.server.clone(),
            source,
        })?
        .ip()
        .to_string();
    let source = format!("{}:{}", n.server, n.path);
    let netns_file = std::fs::File::open(netns).map_err(|source| VolumeError::Io {
        volume: name.to_string(),
        step: "opening the group's network namespace",
        source,
    })?;
    let (target2, name2, ro) = (target.to_path_buf(), name.to_string(), n.read_only);
    // The client's sockets live in the netns the mount is made from: a dedicated
    // thread enters the group's, mounts, and ends (never a tokio worker, DESIGN.md).
    std::thread::spawn(move || -> Result<(), VolumeError> {
        nix::sched::setns(&netns_file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
            VolumeError::Namespace {
                volume: name2.clone(),
                step: "entering the group's network namespace",
                source,
            }
        })?;
        FsMount {
            fs_type,
            source: &source,
            options: &[("addr", &addr)],
            read_only: ro,
            idmap: None,
        }
        .attach(&target2)
        .map_err(|e| VolumeError::Mount {
            volume: name2,
            what: source.clone(),
            source: e,
        })
    })
    .join()
    .unwrap_or_else(|_| {
        Err(VolumeError::Io {
            volume: name.to_string(),
            step: "mounting it",
            source: std::io::Error::other("the mount thread panicked"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_matched_whole() {
        let m = "1 2 7:3 / /run/eci/groups/x/volumes/data rw - ext4 /dev/loop3 rw\n";
        assert!(is_mount_point(
            m,
            Path::new("/run/eci/groups/x/volumes/data")
        ));
        assert!(!is_mount_point(
            m,
            Path::new("/run/eci/groups/x/volumes/dat")
        ));
    }
}
