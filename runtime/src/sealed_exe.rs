//! The runtime binary out of the container's reach (runc CVE-2019-5736 class).
//!
//! `eci-shim init` runs inside a container's namespaces until it execs the container's
//! program. A tenant that gets hold of `/proc/<pid>/exe` of such a process (a ptracer,
//! or a racing `open`) could reopen it for writing once no process executes the file
//! any more (after the shim dies) and the agent would run the tenant's code as host
//! root. So shims are never executed from a writable file: the agent binds the shim
//! binary read-only at a path of its own and starts every shim from there; the shim
//! re-executes itself (`/proc/self/exe`) for `init`, so the container only ever sees an
//! inode on a read-only mount, where any open for writing fails with `EROFS`.
//!
//! A bind mount costs nothing per group (a sealed `memfd` copy would cost the binary's
//! size in memory for every shim).

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Errors binding the binary.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("creating {path}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} {path}")]
    Mount {
        step: &'static str,
        path: String,
        #[source]
        source: nix::Error,
    },
}

/// Binds `binary` read-only (and `nodev`, `nosuid`) at `at`, replacing an earlier bind
/// there (processes started from the earlier one keep it: it is detached, not removed).
/// Returns `at`, the path to execute.
pub fn bind_read_only(binary: &Path, at: &Path) -> Result<PathBuf, SealError> {
    let create = |source| SealError::Create {
        path: at.display().to_string(),
        source,
    };
    let mnt = |step| {
        move |source| SealError::Mount {
            step,
            path: at.display().to_string(),
            source,
        }
    };
    release(at);
    if let Some(dir) = at.parent() {
        std::fs::create_dir_all(dir).map_err(create)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(at)
        .map_err(create)?;
    mount(
        Some(binary),
        at,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(mnt("binding the runtime binary at"))?;
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOSUID;
    if let Err(e) = mount(None::<&str>, at, None::<&str>, ro, None::<&str>) {
        release(at);
        return Err(mnt("making read-only")(e));
    }
    Ok(at.to_path_buf())
}

/// Detaches a bind made by [`bind_read_only`], if any.
pub fn release(at: &Path) {
    while umount2(at, MntFlags::MNT_DETACH).is_ok() {}
}

/// True when `path` lies on a read-only mount.
pub fn is_read_only(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path)
        .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CI is root): a real bind mount.
    #[test]
    fn the_bound_binary_cannot_be_opened_for_writing() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("tool");
        std::fs::write(&bin, b"\x7fELF original").expect("write");
        let at = dir.path().join("run/bin/tool");
        bind_read_only(&bin, &at).expect("bind");
        assert!(is_read_only(&at));
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(&at)
            .expect_err("writable");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        // A second bind replaces the first; release leaves a plain file.
        bind_read_only(&bin, &at).expect("rebind");
        release(&at);
        assert!(!is_read_only(&at));
        assert_eq!(std::fs::read(&bin).expect("read"), b"\x7fELF original");
    }
}
