//! Idmapped bind mounts: a directory seen through a user namespace's id mapping, so one
//! unpacked image layer (owned by host ids 0..65536 on disk) shows each group the host
//! ids of its own range, with no chown copy (issue 14; see docs/userns.md).
//!
//! The sequence is the new mount API's: `open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`
//! makes a detached copy of the mount tree at the source, `mount_setattr` with
//! `MOUNT_ATTR_IDMAP` gives the detached copy the mapping of a user namespace (only a
//! detached, never-attached mount may get one), and `move_mount` attaches it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Errors making an idmapped mount; each names the step and the path.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("{step} {path}")]
    Step {
        step: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("path {0} contains a NUL byte")]
    Nul(String),
    #[error("creating a user namespace to probe idmapped mounts of {path}")]
    Userns {
        path: String,
        #[source]
        source: crate::userns::UsernsError,
    },
}

/// Whether this kernel and the filesystem of `dir` can do what user namespaces for
/// groups need: a user namespace with `range`, and an idmapped, read-only copy of
/// `dir` (the layers directory). Nothing is attached or left behind. The agent calls
/// this at start and reports a failure instead of silently running without.
pub fn probe(dir: &Path, range: crate::userns::IdRange) -> Result<(), IdmapError> {
    let ns = crate::userns::create(range).map_err(|source| IdmapError::Userns {
        path: dir.display().to_string(),
        source,
    })?;
    idmapped_tree(dir, std::os::fd::AsFd::as_fd(&ns), true).map(drop)
}

fn cpath(p: &Path) -> Result<CString, IdmapError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| IdmapError::Nul(p.display().to_string()))
}

fn last(step: &'static str, path: &Path) -> IdmapError {
    IdmapError::Step {
        step,
        path: path.display().to_string(),
        source: std::io::Error::last_os_error(),
    }
}

/// A detached, recursive copy of the mounts at `source`, idmapped through `userns`
/// (an nsfs file of a user namespace). With `read_only` the copy is also read-only,
/// as every image layer is. Attach it with [`attach`], or hand it to overlayfs as a
/// layer by descriptor.
pub fn idmapped_tree(
    source: &Path,
    userns: BorrowedFd<'_>,
    read_only: bool,
) -> Result<OwnedFd, IdmapError> {
    let c = cpath(source)?;
    // SAFETY: open_tree reads the NUL-terminated path and returns a new descriptor or
    // -1; no other memory is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(last("open_tree (clone) of", source));
    }
    // SAFETY: open_tree returned a fresh descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let extra = if read_only {
        libc::MOUNT_ATTR_RDONLY
    } else {
        0
    };
    if set_idmap(&tree, userns, extra, true) < 0 {
        return Err(last("idmapping (mount_setattr) a copy of", source));
    }
    Ok(tree)
}

/// Idmaps the detached mount `mnt` (and, with `recursive`, the mounts below it) through
/// `userns`, setting `extra` mount attributes with it. Returns mount_setattr's result
/// (< 0: see `errno`), so each caller names its own step.
pub(crate) fn set_idmap(
    mnt: &OwnedFd,
    userns: BorrowedFd<'_>,
    extra: u64,
    recursive: bool,
) -> libc::c_long {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP | extra,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: `attr` is a valid mount_attr that lives across the call and its size is
    // passed; the path is the empty C string with AT_EMPTY_PATH, naming `mnt` itself.
    unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            flags as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    }
}

/// Attaches a detached mount (from [`idmapped_tree`]) at `target`, an existing
/// directory.
pub fn attach(tree: OwnedFd, target: &Path) -> Result<(), IdmapError> {
    let c = cpath(target)?;
    // SAFETY: both paths are NUL-terminated C strings that live across the call; the
    // empty source path with MOVE_MOUNT_F_EMPTY_PATH names `tree` itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(last("attaching (move_mount) an idmapped mount at", target));
    }
    Ok(())
}

/// Bind-mounts `source` at `target` idmapped through `userns`.
pub fn bind(
    source: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
    read_only: bool,
) -> Result<(), IdmapError> {
    attach(idmapped_tree(source, userns, read_only)?, target)
}

/// Mounts an overlay at `target` with the new mount API, its lower layers given as
/// descriptors (`lowerdir+` with `FSCONFIG_SET_FD`, Linux 6.13+): the idmapped layer
/// copies from [`idmapped_tree`] stay detached and never appear in any mount table.
/// `lower` is top layer first, as in `lowerdir=`.
pub fn overlay_from_fds(
    lower: &[OwnedFd],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), IdmapError> {
    // SAFETY: fsopen reads the NUL-terminated fs type and returns a descriptor or -1.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), libc::FSOPEN_CLOEXEC) };
    if fs < 0 {
        return Err(last("fsopen overlay for", target));
    }
    // SAFETY: fsopen returned a fresh descriptor that nothing else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    let config = |cmd: u32, key: Option<&std::ffi::CStr>, value: *const libc::c_void, aux: i32| {
        // SAFETY: key and value are NUL-terminated strings (or null) that live across
        // the call, or value is null with aux a descriptor, as `cmd` requires.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                cmd,
                key.map_or(std::ptr::null(), |k| k.as_ptr()),
                value,
                aux,
            )
        };
        if rc < 0 { Err(()) } else { Ok(()) }
    };
    for l in lower {
        config(
            libc::FSCONFIG_SET_FD,
            Some(c"lowerdir+"),
            std::ptr::null(),
            l.as_raw_fd(),
        )
        .map_err(|_| last("adding an idmapped lower layer (lowerdir+) to", target))?;
    }
    let upper_c = cpath(upper)?;
    let work_c = cpath(work)?;
    for (key, val, step) in [
        (c"upperdir", &upper_c, "setting upperdir of"),
        (c"workdir", &work_c, "setting workdir of"),
        (c"index", &CString::from(c"off"), "setting index=off on"),
    ] {
        config(libc::FSCONFIG_SET_STRING, Some(key), val.as_ptr().cast(), 0)
            .map_err(|_| last(step, target))?;
    }
    config(libc::FSCONFIG_CMD_CREATE, None, std::ptr::null(), 0)
        .map_err(|_| last("creating the overlay for", target))?;
    // SAFETY: fsmount takes the configured context's descriptor and flags; returns a
    // new descriptor or -1.
    let mnt = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            libc::MOUNT_ATTR_NODEV,
        )
    };
    if mnt < 0 {
        return Err(last("fsmount of the overlay for", target));
    }
    // SAFETY: fsmount returned a fresh descriptor that nothing else owns.
    attach(unsafe { OwnedFd::from_raw_fd(mnt as i32) }, target)
}
