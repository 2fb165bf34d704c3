//! Safe unpacking of one image layer (a tar stream) into its own directory, in the form
//! overlayfs stacks: OCI whiteouts become overlay whiteouts (0/0 character devices) and
//! opaque directories get `trusted.overlay.opaque=y`.
//!
//! Every file operation is relative to a directory fd opened with
//! `openat2(RESOLVE_BENEATH)`, so no entry can create or write anything outside the layer
//! directory: names are taken inside the layer root (`/etc/x` is the layer's `etc/x`),
//! `..` is refused by name, a symlink that leads out is
//! refused by the kernel while resolving, and hard links may only point at files already
//! inside the layer. A refused entry fails the whole layer with its name in the error.
//!
//! Device nodes in a layer are skipped, not created: a character or block device in an
//! image would give the container whatever host device its numbers name (`/dev/sda`,
//! `/dev/mem`) whatever the runtime's device policy meant to allow. Images built with
//! `/dev` entries still import; the runtime gives each container its own `/dev`. The only
//! device this module creates is the 0/0 overlay whiteout it converts `.wh.` files into.
//!
//! File capabilities (`security.capability`) are written in the form that keeps working
//! through the idmapped mounts of user-namespaced groups: revision 2, which names no
//! root uid (see [`file_caps_v2`] and docs/userns.md).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, mknodat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use tar::EntryType;

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?}: {reason}")]
    Refused { entry: String, reason: &'static str },
    #[error("layer entry {entry:?}")]
    Entry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer")]
    Read(#[source] io::Error),
    #[error("opening the layer directory {path}")]
    Root {
        path: String,
        #[source]
        source: io::Error,
    },
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";
/// The xattr holding a file's capabilities (`struct vfs_cap_data`, little-endian).
const XATTR_CAPS: &str = "security.capability";
const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x0000_0001;
/// Revision 1: magic, one permitted/inheritable pair (32 capabilities); 12 bytes.
const VFS_CAP_REVISION_1: u32 = 0x0100_0000;
const XATTR_CAPS_SZ_1: usize = 12;
/// Revision 2: magic, two permitted/inheritable pairs; 20 bytes.
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const XATTR_CAPS_SZ_2: usize = 20;
/// Revision 3: revision 2 plus the root uid of the user namespace it applies in; 24 bytes.
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
const XATTR_CAPS_SZ_3: usize = 24;

/// How much of a file's data is gathered before one `write`: most files of an image
/// are smaller, so they are written with one call (`io::copy` would use 8 KiB ones).
const COPY_BUF: usize = 1 << 20;

/// Copies `src` (an entry's data) into `f` through `buf`, filling `buf` before each
/// write: the decompressor hands out what it has, often less than asked for.
fn copy_data(src: &mut impl Read, f: &mut File, buf: &mut [u8]) -> io::Result<()> {
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match src.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        io::Write::write_all(f, &buf[..filled])?;
        if filled < buf.len() {
            return Ok(());
        }
    }
}

fn nix_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Unpacks the uncompressed tar stream `layer` into the empty directory `dest`.
/// Returns the number of entries applied.
pub fn unpack(layer: impl Read, dest: &Path) -> Result<u64, UnpackError> {
    let root: OwnedFd = File::open(dest)
        .map_err(|source| UnpackError::Root {
            path: dest.display().to_string(),
            source,
        })?
        .into();
    let mut archive = tar::Archive::new(layer);
    let mut dir_times = Vec::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut count = 0;
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |reason| UnpackError::Refused {
            entry: name.clone(),
            reason,
        };
        let path = clean_path(Path::new(OsStr::from_bytes(&raw))).map_err(refuse)?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        if matches!(kind, EntryType::Char | EntryType::Block) {
            tracing::debug!(entry = %name, "skipping a device node in a layer");
            continue;
        }
        let Some(file_name) = path.file_name().map(|n| n.to_os_string()) else {
            // "./": the layer root itself; its metadata belongs to the lower layers.
            continue;
        };
        let parent_path = path.parent().unwrap_or(Path::new(""));
        let wrap = |source: io::Error| {
            if source.raw_os_error() == Some(Errno::EXDEV as i32)
                || source.raw_os_error() == Some(Errno::ELOOP as i32)
            {
                UnpackError::Refused {
                    entry: name.clone(),
                    reason: "its path leads outside the layer through a symlink",
                }
            } else {
                UnpackError::Entry {
                    entry: name.clone(),
                    source,
                }
            }
        };
        let parent = ensure_dir(&root, parent_path).map_err(wrap)?;
        let fname = file_name.as_os_str();
        if let Some(hidden) = fname.to_str().and_then(|n| n.strip_prefix(WHITEOUT_PREFIX)) {
            if fname == OPAQUE_MARKER {
                xattr::FileExt::set_xattr(&File::from(parent), OVERLAY_OPAQUE, b"y")
                    .map_err(wrap)?;
            } else {
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(refuse("a whiteout must name a file"));
                }
                remove_existing(&parent, OsStr::new(hidden)).map_err(wrap)?;
                mknodat(&parent, hidden, SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(nix_io)
                    .map_err(wrap)?;
            }
            count += 1;
            continue;
        }
        let header = entry.header().clone();
        let mode = Mode::from_bits_truncate(header.mode().map_err(wrap)? & 0o7777);
        let uid = Uid::from_raw(header.uid().map_err(wrap)? as u32);
        let gid = Gid::from_raw(header.gid().map_err(wrap)? as u32);
        let mtime = header.mtime().unwrap_or(0) as i64;
        let mut xattrs = pax_xattrs(&mut entry).map_err(wrap)?;
        for (k, v) in &mut xattrs {
            if k == XATTR_CAPS {
                *v = file_caps_v2(v).map_err(refuse)?;
            }
        }
        match kind {
            EntryType::Directory => {
                let dir = match open_beneath(&parent, fname, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW)
                {
                    Ok(d) => d,
                    Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => {
                        nix::sys::stat::mkdirat(&parent, fname, Mode::from_bits_truncate(0o700))
                            .map_err(nix_io)
                            .map_err(wrap)?;
                        open_beneath(&parent, fname, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW)
                            .map_err(wrap)?
                    }
                    Err(e) => {
                        // A non-directory is in the way: replace it.
                        if e.raw_os_error() != Some(Errno::ENOTDIR as i32)
                            && e.raw_os_error() != Some(Errno::ELOOP as i32)
                        {
                            return Err(wrap(e));
                        }
                        remove_existing(&parent, fname).map_err(wrap)?;
                        nix::sys::stat::mkdirat(&parent, fname, Mode::from_bits_truncate(0o700))
                            .map_err(nix_io)
                            .map_err(wrap)?;
                        open_beneath(&parent, fname, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW)
                            .map_err(wrap)?
                    }
                };
                let f = File::from(dir);
                set_meta(&f, uid, gid, mode, &xattrs).map_err(wrap)?;
                dir_times.push((path.clone(), mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_existing(&parent, fname).map_err(wrap)?;
                let fd = nix::fcntl::openat(
                    &parent,
                    fname,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(nix_io)
                .map_err(wrap)?;
                let mut f = File::from(fd);
                copy_data(&mut entry, &mut f, &mut buf).map_err(wrap)?;
                set_meta(&f, uid, gid, mode, &xattrs).map_err(wrap)?;
                let t = TimeSpec::new(mtime, 0);
                nix::sys::stat::futimens(&f, &t, &t)
                    .map_err(nix_io)
                    .map_err(wrap)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("symlink without a target"))?;
                remove_existing(&parent, fname).map_err(wrap)?;
                nix::unistd::symlinkat(OsStr::from_bytes(&target), &parent, fname)
                    .map_err(nix_io)
                    .map_err(wrap)?;
                lchown(&parent, fname, uid, gid).map_err(wrap)?;
                let t = TimeSpec::new(mtime, 0);
                nix::sys::stat::utimensat(
                    &parent,
                    fname,
                    &t,
                    &t,
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                )
                .map_err(nix_io)
                .map_err(wrap)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("hard link without a target"))?;
                let target = clean_path(Path::new(OsStr::from_bytes(&target)))
                    .map_err(|_| refuse("a hard link must point inside the layer"))?;
                let (Some(src_parent), Some(src_name)) = (target.parent(), target.file_name())
                else {
                    return Err(refuse("a hard link must point at a file"));
                };
                let src_dir = open_beneath(&root, src_parent, OFlag::O_DIRECTORY).map_err(|e| {
                    if e.raw_os_error() == Some(Errno::ENOENT as i32) {
                        refuse("a hard link must point at a file earlier in the same layer")
                    } else {
                        wrap(e)
                    }
                })?;
                remove_existing(&parent, fname).map_err(wrap)?;
                nix::unistd::linkat(&src_dir, src_name, &parent, fname, AtFlags::empty())
                    .map_err(nix_io)
                    .map_err(|e| {
                        if e.raw_os_error() == Some(Errno::ENOENT as i32) {
                            refuse("a hard link must point at a file earlier in the same layer")
                        } else {
                            wrap(e)
                        }
                    })?;
            }
            EntryType::Fifo => {
                remove_existing(&parent, fname).map_err(wrap)?;
                mknodat(&parent, fname, SFlag::S_IFIFO, mode, 0)
                    .map_err(nix_io)
                    .map_err(wrap)?;
                lchown(&parent, fname, uid, gid).map_err(wrap)?;
            }
            _ => return Err(refuse("unsupported tar entry type")),
        }
        count += 1;
    }
    // Directory times last: creating their children changed them.
    for (path, mtime) in dir_times.into_iter().rev() {
        if let Ok(d) = open_beneath(&root, &path, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW) {
            let t = TimeSpec::new(mtime, 0);
            let _ = nix::sys::stat::futimens(&d, &t, &t);
        }
    }
    // Drain the padding after the end-of-archive marker, so a caller hashing the stream
    // sees all of it.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(UnpackError::Read)?;
    Ok(count)
}

/// An entry name as a path inside the layer root: a leading `/` is the layer root (what
/// `umoci` and other tools write, and how containerd and Docker read it), `./` and
/// repeated slashes go; `..` is refused (it could only mean an escape).
fn clean_path(p: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err("'..' is not allowed in a layer path"),
        }
    }
    Ok(out)
}

/// Opens `path` below `dir`; the kernel refuses any resolution that leaves `dir`.
fn open_beneath(dir: &impl AsFd, path: impl AsRef<Path>, flags: OFlag) -> io::Result<OwnedFd> {
    let path = path.as_ref();
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_RDONLY)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(dir.as_fd(), path, how).map_err(nix_io)
}

/// Opens directory `path` below `root`, creating missing components (0755, root-owned;
/// an entry for the directory later in the stream sets its real metadata).
fn ensure_dir(root: &OwnedFd, path: &Path) -> io::Result<OwnedFd> {
    match open_beneath(root, path, OFlag::O_DIRECTORY) {
        Ok(d) => return Ok(d),
        Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => {}
        Err(e) => return Err(e),
    }
    let mut cur = open_beneath(root, "", OFlag::O_DIRECTORY)?;
    let mut so_far = PathBuf::new();
    for comp in path.components() {
        so_far.push(comp);
        match open_beneath(root, &so_far, OFlag::O_DIRECTORY) {
            Ok(d) => cur = d,
            Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => {
                nix::sys::stat::mkdirat(&cur, comp.as_os_str(), Mode::from_bits_truncate(0o755))
                    .map_err(nix_io)?;
                cur = open_beneath(root, &so_far, OFlag::O_DIRECTORY)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

/// Removes whatever is at `name` (a file, link, or an empty directory), if anything.
fn remove_existing(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => match nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(nix_io(e)),
        },
        Err(e) => Err(nix_io(e)),
    }
}

/// Sets the owner of `name` in `dir` without following a symlink.
fn lchown(dir: &OwnedFd, name: &OsStr, uid: Uid, gid: Gid) -> io::Result<()> {
    nix::unistd::fchownat(
        dir,
        name,
        Some(uid),
        Some(gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(nix_io)
}

/// Owner, then mode (chown clears set-id bits), then extended attributes.
fn set_meta(
    f: &File,
    uid: Uid,
    gid: Gid,
    mode: Mode,
    xattrs: &[(String, Vec<u8>)],
) -> io::Result<()> {
    nix::unistd::fchown(f, Some(uid), Some(gid)).map_err(nix_io)?;
    nix::sys::stat::fchmod(f, mode).map_err(nix_io)?;
    for (k, v) in xattrs {
        xattr::FileExt::set_xattr(f, k, v)?;
    }
    Ok(())
}

/// A `security.capability` value as revision 2, the form every layer file gets.
///
/// A revision-3 value names the root uid of the user namespace its capabilities apply in,
/// as a host uid. Through an idmapped mount the kernel maps that uid once more, so it names
/// no root a group knows: exec then grants nothing, or fails with `EOVERFLOW` through
/// overlayfs (measured, docs/userns.md). Revision 2 applies in whatever namespace owns the
/// mount, which is what an image means; containerd writes image capabilities the same way.
/// So revision 3 drops its root uid (the effective flag and the capability sets are kept),
/// revision 1 (32 capabilities, which the kernel no longer accepts from `setxattr`) is
/// widened with empty upper sets, revision 2 is kept as it is. Any other size or revision
/// is refused: the kernel would refuse it too, with an error naming neither the entry nor
/// the reason.
pub(crate) fn file_caps_v2(value: &[u8]) -> Result<Vec<u8>, &'static str> {
    let Some(magic) = value.get(..4) else {
        return Err("security.capability is shorter than its revision header");
    };
    let magic = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]);
    let flags = magic & VFS_CAP_FLAGS_EFFECTIVE;
    let header = (VFS_CAP_REVISION_2 | flags).to_le_bytes();
    match (magic & VFS_CAP_REVISION_MASK, value.len()) {
        (VFS_CAP_REVISION_2, XATTR_CAPS_SZ_2) => Ok(value.to_vec()),
        (VFS_CAP_REVISION_3, XATTR_CAPS_SZ_3) => {
            let mut out = Vec::with_capacity(XATTR_CAPS_SZ_2);
            out.extend_from_slice(&header);
            out.extend_from_slice(&value[4..XATTR_CAPS_SZ_2]);
            Ok(out)
        }
        (VFS_CAP_REVISION_1, XATTR_CAPS_SZ_1) => {
            let mut out = Vec::with_capacity(XATTR_CAPS_SZ_2);
            out.extend_from_slice(&header);
            out.extend_from_slice(&value[4..XATTR_CAPS_SZ_1]);
            out.resize(XATTR_CAPS_SZ_2, 0);
            Ok(out)
        }
        (VFS_CAP_REVISION_1 | VFS_CAP_REVISION_2 | VFS_CAP_REVISION_3, _) => {
            Err("security.capability has the wrong size for its revision")
        }
        _ => Err("security.capability has an unknown revision"),
    }
}

/// `SCHILY.xattr.*` PAX records of an entry.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Ok(key) = ext.key()
                && let Some(name) = key.strip_prefix("SCHILY.xattr.")
            {
                out.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capability xattr: `magic`, then permitted/inheritable pairs, then `rootid`.
    fn caps(magic: u32, words: &[u32]) -> Vec<u8> {
        std::iter::once(magic)
            .chain(words.iter().copied())
            .flat_map(u32::to_le_bytes)
            .collect()
    }

    const NET_RAW: u32 = 1 << 13;

    #[test]
    fn v3_becomes_v2_without_its_rootid_keeping_flags_and_sets() {
        let v3 = caps(VFS_CAP_REVISION_3 | 1, &[NET_RAW, 0, 0x7, 0x3, 1_048_576]);
        let v2 = file_caps_v2(&v3).expect("v3");
        assert_eq!(v2, caps(VFS_CAP_REVISION_2 | 1, &[NET_RAW, 0, 0x7, 0x3]));
        assert_eq!(v2.len(), XATTR_CAPS_SZ_2);
        // Without the effective flag it stays without.
        let v3 = caps(VFS_CAP_REVISION_3, &[NET_RAW, 0, 0, 0, 0]);
        assert_eq!(
            file_caps_v2(&v3).expect("v3"),
            caps(VFS_CAP_REVISION_2, &[NET_RAW, 0, 0, 0])
        );
    }

    #[test]
    fn v2_is_kept_and_v1_is_widened() {
        let v2 = caps(VFS_CAP_REVISION_2 | 1, &[NET_RAW, 0, 1, 0]);
        assert_eq!(file_caps_v2(&v2).expect("v2"), v2);
        let v1 = caps(VFS_CAP_REVISION_1 | 1, &[NET_RAW, 0]);
        assert_eq!(
            file_caps_v2(&v1).expect("v1"),
            caps(VFS_CAP_REVISION_2 | 1, &[NET_RAW, 0, 0, 0])
        );
    }

    #[test]
    fn malformed_values_are_refused_with_a_reason() {
        for bad in [
            Vec::new(),
            vec![0, 0, 0],
            // v3 missing its rootid, v2 with one, v1 too long.
            caps(VFS_CAP_REVISION_3, &[NET_RAW, 0, 0, 0]),
            caps(VFS_CAP_REVISION_2, &[NET_RAW, 0, 0, 0, 0]),
            caps(VFS_CAP_REVISION_1, &[NET_RAW, 0, 0]),
            // A revision the kernel does not know.
            caps(0x0400_0000, &[NET_RAW, 0, 0, 0, 0]),
        ] {
            let why = file_caps_v2(&bad).expect_err("must be refused");
            assert!(why.starts_with("security.capability"), "{why}");
        }
    }
}
