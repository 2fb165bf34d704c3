//! The container's filesystem view, built inside its own mount namespace: the overlay
//! root, the OCI spec's mounts, device nodes, `pivot_root`, then masked and read-only
//! paths. Every mount target is resolved inside the rootfs with
//! `openat2(RESOLVE_IN_ROOT)`, so a symlink in an image cannot send a mount elsewhere.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use oci_spec::runtime::Mount;

/// Errors building the filesystem view; each names the step and the path.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{step} {path}")]
    Step {
        step: &'static str,
        path: String,
        #[source]
        source: Errno,
    },
}

fn step(step: &'static str, path: impl AsRef<Path>) -> impl FnOnce(Errno) -> MountError {
    let path = path.as_ref().display().to_string();
    move |source| MountError::Step { step, path, source }
}

/// The overlay that is the container's root: read-only image layers (top first) under a
/// writable directory of its own.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Rootfs {
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// Makes every mount private so nothing done here propagates to the host.
pub fn make_private() -> Result<(), MountError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("making / private", "/"))
}

/// Mounts the overlay at `target`.
pub fn mount_overlay(fs: &Rootfs, target: &Path) -> Result<(), MountError> {
    let lower: Vec<String> = fs.lower.iter().map(|p| p.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lower.join(":"),
        fs.upper.display(),
        fs.work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(step("mounting the overlay root at", target))
}

/// Opens (creating when missing) `dest` inside `root`, resolving as if `root` were `/`.
fn open_in_root(root: &OwnedFd, dest: &Path, dir: bool) -> Result<OwnedFd, MountError> {
    let how = |flags| {
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    let rel: PathBuf = dest
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    if let Ok(fd) = openat2(root, &rel, how(OFlag::O_PATH)) {
        return Ok(fd);
    }
    // Create the missing parents one by one, then the target.
    let mut so_far = PathBuf::new();
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        so_far.push(c);
        if openat2(root, &so_far, how(OFlag::O_PATH)).is_ok() {
            continue;
        }
        let parent_path = so_far
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let parent = openat2(root, parent_path, how(OFlag::O_DIRECTORY))
            .map_err(step("opening the parent of", dest))?;
        let last = i + 1 == comps.len();
        if last && !dir {
            nix::fcntl::openat(
                &parent,
                c.as_os_str(),
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map_err(step("creating mount point", dest))?;
        } else {
            match nix::sys::stat::mkdirat(&parent, c.as_os_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(step("creating mount point", dest)(e)),
            }
        }
    }
    openat2(root, &rel, how(OFlag::O_PATH)).map_err(step("opening mount point", dest))
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Splits OCI mount options into flags and filesystem data.
fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "private" => propagation |= MsFlags::MS_PRIVATE,
            "rprivate" => propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "slave" => propagation |= MsFlags::MS_SLAVE,
            "rslave" => propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC,
            other => data.push(other.to_string()),
        }
    }
    (flags, propagation, data.join(","))
}

/// Applies one OCI mount below `root_path` (whose fd is `root`).
pub fn apply_mount(root: &OwnedFd, m: &Mount) -> Result<(), MountError> {
    let typ = m.typ().clone().unwrap_or_default();
    let options = m.options().clone().unwrap_or_default();
    let (flags, propagation, data) = parse_options(&options);
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
    let is_bind = flags.contains(MsFlags::MS_BIND);
    let dir = !is_bind || source.is_dir();
    let target = open_in_root(root, m.destination(), dir)?;
    let at = fd_path(&target);
    let dest = m.destination();
    if is_bind {
        mount(
            Some(&source),
            &at,
            None::<&str>,
            flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(step("bind-mounting", dest))?;
    } else {
        let data = (!data.is_empty()).then_some(data.as_str());
        mount(Some(&source), &at, Some(typ.as_str()), flags, data)
            .map_err(step("mounting", dest))?;
    }
    // The fd above names what lies under the new mount; flag changes go to the mount.
    let extra = flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
    let remount = is_bind && !extra.is_empty();
    if remount || !propagation.is_empty() {
        let mounted = open_in_root(root, dest, dir)?;
        let at = fd_path(&mounted);
        if remount {
            mount(
                None::<&str>,
                &at,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                None::<&str>,
            )
            .map_err(step("remounting", dest))?;
        }
        if !propagation.is_empty() {
            mount(None::<&str>, &at, None::<&str>, propagation, None::<&str>)
                .map_err(step("setting propagation of", dest))?;
        }
    }
    Ok(())
}

/// Opens the rootfs directory for [`apply_mount`].
pub fn open_root(rootfs: &Path) -> Result<OwnedFd, MountError> {
    nix::fcntl::open(rootfs, OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(step("opening rootfs", rootfs))
}

/// Device nodes every container gets on its /dev tmpfs.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Creates /dev nodes and links; `rootfs/dev` is a fresh tmpfs by now.
pub fn create_devices(rootfs: &Path) -> Result<(), MountError> {
    let dev = rootfs.join("dev");
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        match mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(step("creating device", &p)(e)),
        }
        // mknod is subject to the umask.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &p,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(step("chmod", &p))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        let p = dev.join(link);
        match nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, &p) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(step("creating link", &p)(e)),
        }
    }
    Ok(())
}

/// Makes `rootfs` the root: the host tree is detached and unreachable afterwards.
pub fn pivot_root(rootfs: &Path) -> Result<(), MountError> {
    nix::unistd::chdir(rootfs).map_err(step("chdir", rootfs))?;
    nix::unistd::pivot_root(".", ".").map_err(step("pivot_root", rootfs))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detaching the old root", "/"))?;
    nix::unistd::chdir("/").map_err(step("chdir", "/"))
}

/// Hides `paths` (after pivot_root): /dev/null over files, an empty read-only tmpfs over
/// directories. Missing paths are skipped.
pub fn mask(paths: &[String]) -> Result<(), MountError> {
    for p in paths {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if meta.is_dir() {
            mount(
                Some("tmpfs"),
                p.as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(step("masking", p))?;
        } else {
            mount(
                Some("/dev/null"),
                p.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(step("masking", p))?;
        }
    }
    Ok(())
}

/// Makes `paths` read-only (after pivot_root). Missing paths are skipped.
pub fn read_only(paths: &[String]) -> Result<(), MountError> {
    for p in paths {
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        mount(
            Some(p.as_str()),
            p.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(step("binding read-only path", p))?;
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        mount(None::<&str>, p.as_str(), None::<&str>, flags, None::<&str>)
            .map_err(step("remounting read-only", p))?;
    }
    Ok(())
}

/// Remounts the root read-only (`readOnlyRootFilesystem`).
pub fn root_read_only() -> Result<(), MountError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(step("remounting read-only", "/"))
}
