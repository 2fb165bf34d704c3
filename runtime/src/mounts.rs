//! The container's filesystem view, built inside its own mount namespace: the overlay
//! root, the OCI spec's mounts, device nodes, `pivot_root`, then masked and read-only
//! paths. Every mount target is resolved inside the rootfs with
//! `openat2(RESOLVE_IN_ROOT)`, so a symlink in an image cannot send a mount elsewhere.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknodat};
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
    // nodev: a device node in an image layer or written by the container opens nothing;
    // the container's devices live on its own /dev tmpfs.
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(step("mounting the overlay root at", target))
}

/// Mounts the overlay at `target` over idmapped copies of the lower layers: each layer,
/// owned by ids 0..65536 on disk and shared by every group, shows this group's host
/// ids (`base + id`), with no chown copy. The copies stay detached (handed to overlayfs
/// by descriptor). The upper and work directories are plain directories owned by the
/// range's root (the agent chowns them): only read-only layers are ever idmapped, as
/// a write through an idmapped mount would store unmapped ids on the host's disk.
pub fn mount_overlay_idmapped(
    fs: &Rootfs,
    target: &Path,
    userns: std::os::fd::BorrowedFd<'_>,
) -> Result<(), crate::idmap::IdmapError> {
    let lower = fs
        .lower
        .iter()
        .map(|l| crate::idmap::idmapped_tree(l, userns, true))
        .collect::<Result<Vec<_>, _>>()?;
    crate::idmap::overlay_from_fds(&lower, &fs.upper, &fs.work, target)
}

/// Filesystems whose `uid=`/`gid=` options the runtime maps to host ids.
const ID_OPTION_TYPES: &[&str] = &["tmpfs", "devpts"];

/// `m` with the ids of its options turned into host ids of `range`, for a mount that
/// host root makes for a container in a user namespace (the kernel reads `uid=`/`gid=`
/// in the mounter's namespace). A tmpfs without an owner gets the range's root, so
/// `/dev` and `/dev/shm` belong to container root as they would without a user
/// namespace. An id outside the range is left out (the kernel's default: host root,
/// shown as `nobody` inside).
pub fn host_ids(m: &Mount, range: crate::userns::IdRange) -> Mount {
    let typ = m.typ().clone().unwrap_or_default();
    let options = m.options().clone().unwrap_or_default();
    if !ID_OPTION_TYPES.contains(&typ.as_str())
        || options.iter().any(|o| o == "bind" || o == "rbind")
    {
        return m.clone();
    }
    let mut out: Vec<String> = Vec::with_capacity(options.len() + 2);
    let (mut uid, mut gid) = (false, false);
    for o in options {
        let mapped = ["uid=", "gid="].iter().find_map(|k| {
            let id = o.strip_prefix(k)?.parse::<u32>().ok()?;
            Some((k, range.host_id(id)))
        });
        match mapped {
            Some((k, host)) => {
                uid |= *k == "uid=";
                gid |= *k == "gid=";
                if let Some(h) = host {
                    out.push(format!("{k}{h}"));
                }
            }
            None => out.push(o),
        }
    }
    if typ == "tmpfs" {
        if !uid {
            out.push(format!("uid={}", range.base));
        }
        if !gid {
            out.push(format!("gid={}", range.base));
        }
    }
    let mut m = m.clone();
    m.set_options(Some(out));
    m
}

/// How every path below a root the tenant writes to is resolved: symlinks (absolute or
/// `..`) stay inside the root, and `/proc/<pid>/...` magic links are never followed.
fn in_root(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// `dest` relative to the root: without its leading `/` and `.` parts (`..` is kept:
/// RESOLVE_IN_ROOT clamps it at the root, as for a process whose root this is).
fn relative(dest: &Path) -> PathBuf {
    dest.components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect()
}

/// Most symlinks followed while creating one path, as the kernel's own limit.
const MAX_LINKS: usize = 40;

/// Opens (creating when missing) `dest` inside `root`, resolving as if `root` were `/`:
/// a symlink the image or a container planted, absolute or `..`, cannot lead out, and
/// nothing is ever created outside `root`. A dangling symlink on the way is followed
/// inside the root and what it names is created there, as runc does (images ship
/// `/etc/resolv.conf` pointing into an empty `/run`). Returns an `O_PATH` descriptor to
/// mount on.
pub fn open_in_root(root: &OwnedFd, dest: &Path, dir: bool) -> Result<OwnedFd, MountError> {
    ensure_in_root(
        root,
        dest,
        dir,
        None,
        ("creating mount point", "opening mount point"),
    )
}

/// The resolve-or-create loop of [`open_in_root`] and [`make_dir_in_root`]; `steps`
/// name the create and open steps in errors.
fn ensure_in_root(
    root: &OwnedFd,
    dest: &Path,
    dir: bool,
    owner: Option<(u32, u32)>,
    (creating, opening): (&'static str, &'static str),
) -> Result<OwnedFd, MountError> {
    let mut rel = relative(dest);
    for _ in 0..MAX_LINKS {
        if rel.as_os_str().is_empty() {
            return openat2(root, ".", in_root(OFlag::O_PATH)).map_err(step("opening", dest));
        }
        if let Ok(fd) = openat2(root, &rel, in_root(OFlag::O_PATH)) {
            return Ok(fd);
        }
        match create_missing(root, &rel, dir, owner).map_err(|e| step(creating, dest)(e))? {
            Created::Done => {
                return openat2(root, &rel, in_root(OFlag::O_PATH)).map_err(step(opening, dest));
            }
            Created::Redirect(next) => rel = next,
        }
    }
    Err(step(creating, dest)(Errno::ELOOP))
}

/// What [`create_missing`] did.
enum Created {
    /// Every missing component exists now.
    Done,
    /// A dangling symlink was met: resolve this path (its target, then the rest) next.
    Redirect(PathBuf),
}

/// Opens directory `dest` inside `root`, creating each missing component as
/// [`open_in_root`] does (never outside the root, whatever links the tenant planted),
/// and giving each directory it creates to `owner` (uid, gid): a container's working
/// directory that the image does not have is made for the user who runs there, as
/// Docker does. Existing components keep their owner.
pub fn make_dir_in_root(
    root: &OwnedFd,
    dest: &Path,
    owner: (u32, u32),
) -> Result<OwnedFd, MountError> {
    ensure_in_root(
        root,
        dest,
        true,
        Some(owner),
        ("creating directory", "opening directory"),
    )
}

/// Creates the missing components of `rel` one by one below `root`. Each parent is
/// opened inside the root; names are created with `mkdirat`/`openat(O_EXCL|O_NOFOLLOW)`
/// on that parent, which never follow a symlink. Directories made here are chowned to
/// `owner` when given (by name on the same parent, without following a link).
fn create_missing(
    root: &OwnedFd,
    rel: &Path,
    dir: bool,
    owner: Option<(u32, u32)>,
) -> Result<Created, Errno> {
    let comps: Vec<_> = rel.components().collect();
    let mut so_far = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        let next = so_far.join(c);
        if openat2(root, &next, in_root(OFlag::O_PATH)).is_ok() {
            so_far = next;
            continue;
        }
        let parent_path = if so_far.as_os_str().is_empty() {
            Path::new(".")
        } else {
            so_far.as_path()
        };
        let parent = openat2(root, parent_path, in_root(OFlag::O_DIRECTORY))?;
        if let Ok(target) = nix::fcntl::readlinkat(&parent, c.as_os_str()) {
            // Dangling: continue from the link's target (relative to its directory,
            // or to the root when absolute), then the components after it.
            let target = Path::new(&target);
            let mut redirect = if target.is_absolute() {
                PathBuf::new()
            } else {
                so_far.clone()
            };
            redirect.extend(
                target
                    .components()
                    .filter(|c| !matches!(c, Component::RootDir)),
            );
            redirect.extend(&comps[i + 1..]);
            return Ok(Created::Redirect(redirect));
        }
        if i + 1 == comps.len() && !dir {
            nix::fcntl::openat(
                &parent,
                c.as_os_str(),
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_WRONLY
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )?;
        } else {
            match nix::sys::stat::mkdirat(&parent, c.as_os_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) => {
                    if let Some((uid, gid)) = owner {
                        nix::unistd::fchownat(
                            &parent,
                            c.as_os_str(),
                            Some(nix::unistd::Uid::from_raw(uid)),
                            Some(nix::unistd::Gid::from_raw(gid)),
                            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                        )?;
                    }
                }
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        so_far = next;
    }
    Ok(Created::Done)
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Mount option (ours, not the kernel's) naming a path inside a bind mount's source to
/// mount instead of the whole source: a volume's `subPath`. The source is the volume's
/// root, which the agent owns; everything below it is the tenant's, so the sub-path is
/// resolved inside that root by fd and the fd is what gets mounted (never the path,
/// which a container could swap for a symlink between a check and the mount).
pub const SUBPATH_OPTION: &str = "eci.subpath=";

/// Split OCI mount options.
struct Options {
    flags: MsFlags,
    propagation: MsFlags,
    data: String,
    sub_path: Option<PathBuf>,
}

/// Splits OCI mount options into flags, propagation, filesystem data and our sub-path.
fn parse_options(options: &[String]) -> Options {
    let mut o = Options {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
        sub_path: None,
    };
    let mut data = Vec::new();
    for opt in options {
        match opt.as_str() {
            "ro" => o.flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => o.flags |= MsFlags::MS_NOSUID,
            "nodev" => o.flags |= MsFlags::MS_NODEV,
            "noexec" => o.flags |= MsFlags::MS_NOEXEC,
            "sync" => o.flags |= MsFlags::MS_SYNCHRONOUS,
            "noatime" => o.flags |= MsFlags::MS_NOATIME,
            "relatime" => o.flags |= MsFlags::MS_RELATIME,
            "strictatime" => o.flags |= MsFlags::MS_STRICTATIME,
            "bind" => o.flags |= MsFlags::MS_BIND,
            "rbind" => o.flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "private" => o.propagation |= MsFlags::MS_PRIVATE,
            "rprivate" => o.propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "slave" => o.propagation |= MsFlags::MS_SLAVE,
            "rslave" => o.propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC,
            other => match other.strip_prefix(SUBPATH_OPTION) {
                Some(p) => o.sub_path = Some(PathBuf::from(p)),
                None => data.push(other.to_string()),
            },
        }
    }
    o.data = data.join(",");
    o
}

/// Filesystems whose mount point must be a real directory at its stated path (runc
/// CVE-2019-19921 class): a symlinked `/proc` or `/sys` would move the kernel's
/// interfaces to where the image chose, away from the masks and read-only remounts
/// applied to their stated paths.
const NO_SYMLINK_TYPES: &[&str] = &["proc", "sysfs", "cgroup", "cgroup2"];

/// Opens a bind mount's source: the source itself (a path the agent owns), or, with a
/// sub-path, that path resolved inside the source as root (created as a directory when
/// missing, as Kubernetes does for `subPath`).
fn open_bind_source(
    source: &Path,
    sub_path: Option<&Path>,
    owner: Option<(u32, u32)>,
) -> Result<OwnedFd, MountError> {
    let fd = nix::fcntl::open(source, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(step("opening mount source", source))?;
    match sub_path {
        None => Ok(fd),
        Some(sub) => ensure_in_root(
            &fd,
            sub,
            true,
            owner,
            ("creating mount point", "opening mount point"),
        ),
    }
}

fn same_inode(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (nix::sys::stat::fstat(a), nix::sys::stat::fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

fn is_dir(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) == SFlag::S_IFDIR)
}

/// Applies one OCI mount inside the rootfs whose fd is `root`. Directories it creates
/// (missing mount points, a volume's missing `subPath`) are given to `owner` when set:
/// root of the group's user namespace, so container root owns them as it would
/// without one.
pub fn apply_mount(root: &OwnedFd, m: &Mount, owner: Option<(u32, u32)>) -> Result<(), MountError> {
    let typ = m.typ().clone().unwrap_or_default();
    let opts = parse_options(&m.options().clone().unwrap_or_default());
    let flags = opts.flags;
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
    let dest = m.destination();
    let is_bind = flags.contains(MsFlags::MS_BIND);
    if !is_bind && NO_SYMLINK_TYPES.contains(&typ.as_str()) {
        refuse_symlinks(root, dest)?;
    }
    let src = if is_bind {
        Some(open_bind_source(&source, opts.sub_path.as_deref(), owner)?)
    } else {
        None
    };
    let dir = src.as_ref().is_none_or(is_dir);
    let target = ensure_in_root(
        root,
        dest,
        dir,
        owner,
        ("creating mount point", "opening mount point"),
    )?;
    let at = fd_path(&target);
    match &src {
        Some(src) => mount(
            Some(&fd_path(src)),
            &at,
            None::<&str>,
            flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(step("bind-mounting", dest))?,
        None => {
            let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
            mount(Some(&source), &at, Some(typ.as_str()), flags, data)
                .map_err(step("mounting", dest))?
        }
    }
    // The fd above names what lies under the new mount; flag changes go to the mount.
    let extra = flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
    let remount = is_bind && !extra.is_empty();
    if remount || !opts.propagation.is_empty() {
        let mounted = open_in_root(root, dest, dir)?;
        // The path is resolved again, now through what was just mounted: a link inside
        // the mounted volume could lead the second resolution elsewhere (and `ro` or
        // `nodev` land on another mount). It must name the source we mounted.
        if let Some(src) = &src
            && !same_inode(src, &mounted)
        {
            return Err(step("remounting (the path now leads elsewhere)", dest)(
                Errno::EXDEV,
            ));
        }
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
        if !opts.propagation.is_empty() {
            mount(
                None::<&str>,
                &at,
                None::<&str>,
                opts.propagation,
                None::<&str>,
            )
            .map_err(step("setting propagation of", dest))?;
        }
    }
    Ok(())
}

/// Fails when any existing component of `dest` inside `root` is a symlink.
fn refuse_symlinks(root: &OwnedFd, dest: &Path) -> Result<(), MountError> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(root, &relative(dest), how) {
        Ok(_) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(step(
            "mount point must be a directory, not a symlink:",
            dest,
        )(e)),
    }
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

/// Creates /dev nodes and links in the fresh `/dev` tmpfs, by a descriptor of that
/// tmpfs opened inside the rootfs: an image whose `/dev` is a symlink gets them in the
/// directory it names inside the rootfs, never on the host.
pub fn create_devices(root: &OwnedFd) -> Result<(), MountError> {
    let dev = openat2(root, "dev", in_root(OFlag::O_DIRECTORY)).map_err(step("opening", "/dev"))?;
    // mknod applies the umask; the nodes must be 0666.
    let old = nix::sys::stat::umask(Mode::empty());
    let made = DEVICES.iter().try_for_each(|(name, major, minor)| {
        match mknodat(
            &dev,
            *name,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        ) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(step("creating device", Path::new("/dev").join(name))(e)),
        }
    });
    nix::sys::stat::umask(old);
    made?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        match nix::unistd::symlinkat(target, &dev, link) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(step("creating link", Path::new("/dev").join(link))(e)),
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A rootfs with a sibling directory on the "host" that must stay untouched.
    fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf, OwnedFd) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        let host = dir.path().join("host");
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::create_dir_all(&host).expect("host");
        let fd = open_root(&root).expect("open root");
        (dir, root, host, fd)
    }

    fn ino(fd: &OwnedFd) -> u64 {
        nix::sys::stat::fstat(fd).expect("fstat").st_ino
    }

    #[test]
    fn mount_options_name_host_ids_of_the_range() {
        let range = crate::userns::IdRange::group(1 << 20);
        let m = |typ: &str, opts: &[&str]| {
            oci_spec::runtime::MountBuilder::default()
                .destination("/x")
                .typ(typ)
                .source(typ)
                .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                .build()
                .expect("mount")
        };
        let opts = |mnt: Mount| mnt.options().clone().unwrap_or_default().join(",");
        assert_eq!(
            opts(host_ids(
                &m("devpts", &["newinstance", "gid=5", "mode=0620"]),
                range
            )),
            format!("newinstance,gid={},mode=0620", (1 << 20) + 5)
        );
        assert_eq!(
            opts(host_ids(&m("tmpfs", &["mode=1777", "size=64k"]), range)),
            format!("mode=1777,size=64k,uid={0},gid={0}", 1 << 20)
        );
        // Outside the range: left out (the kernel's default, host root: `nobody` inside),
        // never the host id of another range.
        assert_eq!(
            opts(host_ids(&m("tmpfs", &["uid=70000", "gid=0"]), range)),
            format!("gid={}", 1 << 20)
        );
        // Binds and other types are untouched.
        let bind = m("bind", &["rbind", "uid=1"]);
        assert_eq!(host_ids(&bind, range), bind);
        let proc_ = m("proc", &["nosuid"]);
        assert_eq!(host_ids(&proc_, range), proc_);
    }

    #[test]
    fn dangling_links_are_created_inside_the_root() {
        let (_d, root, host, fd) = scratch();
        // Absolute, `..`-laden and chained links to the host's directory.
        std::os::unix::fs::symlink(host.join("hosts"), root.join("etc/hosts")).expect("ln");
        std::os::unix::fs::symlink("../../../../host/x", root.join("etc/hostname")).expect("ln");
        std::os::unix::fs::symlink("/etc/chain2", root.join("etc/chain1")).expect("ln");
        std::os::unix::fs::symlink(&host, root.join("etc/chain2")).expect("ln");
        for (dest, dir) in [
            ("/etc/hosts", false),
            ("/etc/hostname", false),
            ("/etc/chain1/y", true),
        ] {
            let got = open_in_root(&fd, Path::new(dest), dir).expect(dest);
            assert!(
                std::fs::read_link(format!("/proc/self/fd/{}", got.as_raw_fd()))
                    .expect("readlink")
                    .starts_with(&root),
                "{dest} resolved outside the root"
            );
        }
        assert_eq!(
            std::fs::read_dir(&host).expect("ls").count(),
            0,
            "something was created on the host"
        );
        assert!(
            root.join(host.strip_prefix("/").expect("abs"))
                .join("hosts")
                .is_file()
        );
    }

    #[test]
    fn a_sub_path_link_to_the_host_root_stays_in_the_volume() {
        let (_d, root, _host, fd) = scratch();
        std::os::unix::fs::symlink("/", root.join("up")).expect("ln");
        std::os::unix::fs::symlink("../../../..", root.join("up2")).expect("ln");
        for sub in ["up", "up2", "up/etc/../..", "/up"] {
            let got = open_in_root(&fd, Path::new(sub), true).expect(sub);
            assert_eq!(
                ino(&got),
                std::fs::metadata(&root).expect("meta").ino(),
                "{sub}"
            );
        }
    }

    #[test]
    fn link_loops_are_refused() {
        let (_d, root, _host, fd) = scratch();
        std::os::unix::fs::symlink("b", root.join("a")).expect("ln");
        std::os::unix::fs::symlink("a", root.join("b")).expect("ln");
        assert!(open_in_root(&fd, Path::new("/a/x"), true).is_err());
    }

    #[test]
    fn proc_and_sys_mount_points_must_not_be_links() {
        let (_d, root, _host, fd) = scratch();
        std::os::unix::fs::symlink("/etc", root.join("proc")).expect("ln");
        assert!(refuse_symlinks(&fd, Path::new("/proc")).is_err());
        assert!(
            refuse_symlinks(&fd, Path::new("/sys")).is_ok(),
            "missing is fine"
        );
        std::fs::create_dir(root.join("sys")).expect("sys");
        assert!(refuse_symlinks(&fd, Path::new("/sys")).is_ok());
    }

    /// Needs root (chown to another user).
    #[test]
    fn missing_directories_are_made_for_the_owner_inside_the_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (_d, root, host, fd) = scratch();
        let made = make_dir_in_root(&fd, Path::new("/etc/app/data"), (1234, 2345)).expect("make");
        assert!(is_dir(&made));
        let etc = std::fs::metadata(root.join("etc")).expect("etc");
        assert_eq!(
            (etc.uid(), etc.gid()),
            (0, 0),
            "an existing directory kept its owner"
        );
        for d in ["etc/app", "etc/app/data"] {
            let m = std::fs::metadata(root.join(d)).expect(d);
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777),
                (1234, 2345, 0o755),
                "{d}"
            );
        }
        // Existing: opened, owner untouched.
        make_dir_in_root(&fd, Path::new("/etc/app"), (1, 1)).expect("again");
        assert_eq!(
            std::fs::metadata(root.join("etc/app")).expect("m").uid(),
            1234
        );

        // Links the tenant planted toward the host: absolute, `..`-laden, and dangling
        // into a host path. What they name is made inside the root.
        std::os::unix::fs::symlink(&host, root.join("abs")).expect("ln");
        std::os::unix::fs::symlink("../../../../../..", root.join("up")).expect("ln");
        std::os::unix::fs::symlink(host.join("new"), root.join("dangling")).expect("ln");
        for dest in ["/abs/w", "/up/w2", "/dangling/w3", "/up/../../abs/w4"] {
            let got = make_dir_in_root(&fd, Path::new(dest), (1234, 2345)).expect(dest);
            let at =
                std::fs::read_link(format!("/proc/self/fd/{}", got.as_raw_fd())).expect("readlink");
            assert!(at.starts_with(&root), "{dest} made at {}", at.display());
        }
        assert_eq!(
            std::fs::read_dir(&host).expect("ls").count(),
            0,
            "something was created on the host"
        );
        // A file in the way is not a directory.
        std::fs::write(root.join("etc/file"), b"").expect("file");
        let got = make_dir_in_root(&fd, Path::new("/etc/file"), (0, 0)).expect("opens");
        assert!(!is_dir(&got));
    }
}
