//! A filesystem mounted with the new mount API (`fsopen`, `fsconfig`, `fsmount`,
//! `move_mount`): the agent's disk and NFS volumes. The new superblock's mount is
//! detached until the last step, so it can be idmapped first (a disk volume of a group
//! in a user namespace, see docs/userns.md) and the unmapped view of the filesystem
//! never appears in any mount table.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Errors mounting a filesystem; each names the step, and the kernel's error.
#[derive(Debug, thiserror::Error)]
pub enum FsMountError {
    #[error("{step} ({fs_type} from {source_name})")]
    Step {
        step: &'static str,
        fs_type: String,
        source_name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
}

/// What to mount, and how.
#[derive(Debug, Clone)]
pub struct FsMount<'a> {
    /// Filesystem type as in `/proc/filesystems` (`ext4`, `xfs`, `nfs4`).
    pub fs_type: &'a str,
    /// The `source` parameter: a block device path, or `server:/export`.
    pub source: &'a str,
    /// Further string parameters (`vers=4.2`, `addr=10.0.0.2`), key and value.
    pub options: &'a [(&'a str, &'a str)],
    pub read_only: bool,
    /// Idmap the mount through this user namespace (an nsfs descriptor): files the
    /// filesystem stores as uid X show as the namespace's X.
    pub idmap: Option<BorrowedFd<'a>>,
}

fn cstr(s: &str) -> Result<CString, FsMountError> {
    CString::new(s).map_err(|_| FsMountError::Nul(s.to_string()))
}

impl FsMount<'_> {
    fn err(&self, step: &'static str) -> FsMountError {
        FsMountError::Step {
            step,
            fs_type: self.fs_type.to_string(),
            source_name: self.source.to_string(),
            source: std::io::Error::last_os_error(),
        }
    }

    /// Mounts the filesystem at `target` (an existing directory), `nosuid`, `nodev`,
    /// read-only when asked.
    pub fn attach(&self, target: &Path) -> Result<(), FsMountError> {
        let ty = cstr(self.fs_type)?;
        // SAFETY: fsopen reads the NUL-terminated type name; returns a descriptor or -1.
        let fs = unsafe { libc::syscall(libc::SYS_fsopen, ty.as_ptr(), libc::FSOPEN_CLOEXEC) };
        if fs < 0 {
            return Err(self.err("opening a filesystem context (fsopen)"));
        }
        // SAFETY: fsopen returned a fresh descriptor that nothing else owns.
        let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
        let config = |cmd: u32, key: Option<&CString>, value: Option<&CString>| {
            // SAFETY: key and value are NUL-terminated strings (or null) that live
            // across the call, as `cmd` requires.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.as_raw_fd(),
                    cmd,
                    key.map_or(std::ptr::null(), |k| k.as_ptr()),
                    value.map_or(std::ptr::null(), |v| v.as_ptr()),
                    0,
                )
            };
            rc >= 0
        };
        let source = cstr(self.source)?;
        if !config(
            libc::FSCONFIG_SET_STRING,
            Some(&cstr("source")?),
            Some(&source),
        ) {
            return Err(self.err("setting the source"));
        }
        for (k, v) in self.options {
            if !config(libc::FSCONFIG_SET_STRING, Some(&cstr(k)?), Some(&cstr(v)?)) {
                return Err(self.err("setting a mount option"));
            }
        }
        if self.read_only && !config(libc::FSCONFIG_SET_FLAG, Some(&cstr("ro")?), None) {
            return Err(self.err("setting ro"));
        }
        if !config(libc::FSCONFIG_CMD_CREATE, None, None) {
            return Err(self.err("creating the filesystem instance"));
        }
        let mut attrs = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
        if self.read_only {
            attrs |= libc::MOUNT_ATTR_RDONLY;
        }
        // SAFETY: fsmount takes the configured context's descriptor and flags; returns
        // a new descriptor or -1.
        let mnt = unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                fs.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                attrs,
            )
        };
        if mnt < 0 {
            return Err(self.err("making a mount of it (fsmount)"));
        }
        // SAFETY: fsmount returned a fresh descriptor that nothing else owns.
        let mnt = unsafe { OwnedFd::from_raw_fd(mnt as i32) };
        if let Some(userns) = self.idmap
            && crate::idmap::set_idmap(&mnt, userns, 0, false) < 0
        {
            return Err(self.err("idmapping the mount for the group's user namespace"));
        }
        let t = CString::new(target.as_os_str().as_bytes())
            .map_err(|_| FsMountError::Nul(target.display().to_string()))?;
        // SAFETY: both paths are NUL-terminated C strings that live across the call;
        // the empty source path with MOVE_MOUNT_F_EMPTY_PATH names `mnt` itself.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if rc < 0 {
            return Err(self.err("attaching the mount (move_mount)"));
        }
        Ok(())
    }
}

/// Whether the running kernel has filesystem type `name` (`/proc/filesystems`).
pub fn kernel_has(name: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|t| t.lines().any(|l| l.split_whitespace().last() == Some(name)))
}
