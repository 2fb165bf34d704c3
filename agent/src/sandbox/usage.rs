//! Disk space a group uses on the node: its writable layers and disk emptyDirs, and
//! whether that is over `ephemeralStorage` or an emptyDir's `sizeLimit` (issue 9).
//!
//! Limits are enforced by eviction, as kubelet does: the supervisor measures every
//! group each `volumes.storage_check_interval` and ends a group over a limit with
//! reason `Evicted` and kubelet's message. Measured like `du`: allocated blocks (a
//! sparse file counts what it holds), each inode once (hard links), no link
//! followed, never leaving the directory's filesystem.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use eci_api::v1::GroupSpec;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};

use crate::quantity::parse_memory_bytes;
use crate::validate::limits::DEFAULT_EPHEMERAL_BYTES;

/// Bytes allocated under `dir` (0 when it does not exist). The tree is the tenant's
/// and may change while it is walked: every step is relative to a descriptor.
pub fn allocated_bytes(dir: &Path) -> u64 {
    let Ok(top) = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return 0;
    };
    let Ok(st) = nix::sys::stat::fstat(&top) else {
        return 0;
    };
    let dev = st.st_dev;
    let mut total = st.st_blocks as u64 * 512;
    let mut seen: HashSet<u64> = HashSet::new();
    let mut stack: Vec<OwnedFd> = vec![top];
    while let Some(d) = stack.pop() {
        let Ok(mut entries) = nix::dir::Dir::from_fd(d) else {
            continue;
        };
        let parent = entries.as_raw_fd();
        let mut subdirs = Vec::new();
        for e in entries.iter().flatten() {
            let name = e.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            // SAFETY: `parent` stays open while `entries` lives, which outlives this use.
            let at = unsafe { BorrowedFd::borrow_raw(parent) };
            let Ok(st) = nix::sys::stat::fstatat(at, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            if st.st_nlink > 1 && !seen.insert(st.st_ino) {
                continue;
            }
            total += st.st_blocks as u64 * 512;
            let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
            if is_dir && st.st_dev == dev {
                subdirs.push(name.to_owned());
            }
        }
        for name in subdirs {
            // SAFETY: as above.
            let at = unsafe { BorrowedFd::borrow_raw(parent) };
            if let Ok(fd) = nix::fcntl::openat(
                at,
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                stack.push(fd);
            }
        }
    }
    total
}

/// The group's `ephemeralStorage` in bytes (the default when unset).
pub fn ephemeral_limit(spec: &GroupSpec) -> u64 {
    parse_memory_bytes(&spec.ephemeral_storage).unwrap_or(DEFAULT_EPHEMERAL_BYTES)
}

/// Why the group whose writable directory is `writable` must be evicted, if it must:
/// a disk emptyDir over its `sizeLimit`, or everything over `ephemeralStorage`.
/// The messages are kubelet's, with the usage added.
pub fn over_limit(spec: &GroupSpec, writable: &Path) -> Option<String> {
    for v in &spec.volumes {
        let Some(e) = &v.empty_dir else { continue };
        if e.medium == "Memory" || e.size_limit.is_empty() {
            continue;
        }
        let Ok(limit) = parse_memory_bytes(&e.size_limit) else {
            continue;
        };
        let used = allocated_bytes(&writable.join(".volumes").join(&v.name));
        if used > limit {
            return Some(format!(
                "Usage of EmptyDir volume {:?} exceeds the limit {:?} ({} used).",
                v.name,
                e.size_limit,
                crate::quantity::human_memory(used)
            ));
        }
    }
    let limit = ephemeral_limit(spec);
    let used = allocated_bytes(writable);
    (used > limit).then(|| {
        format!(
            "Pod ephemeral local storage usage exceeds the total limit of containers {} ({} used).",
            crate::quantity::format_memory(limit),
            crate::quantity::human_memory(used)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml_limit: &str, ephemeral: &str) -> GroupSpec {
        GroupSpec {
            ephemeral_storage: ephemeral.into(),
            volumes: vec![eci_api::v1::Volume {
                name: "cache".into(),
                empty_dir: Some(eci_api::v1::EmptyDirVolume {
                    medium: String::new(),
                    size_limit: yaml_limit.into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn usage_counts_blocks_once_and_names_the_limit() {
        let d = tempfile::tempdir().expect("tmp");
        let vol = d.path().join(".volumes/cache");
        std::fs::create_dir_all(&vol).expect("dir");
        std::fs::create_dir_all(d.path().join("app/upper")).expect("dir");
        std::fs::write(vol.join("f"), vec![1u8; 256 << 10]).expect("write");
        // A hard link is counted once; a sparse file only for what it holds.
        std::fs::hard_link(vol.join("f"), vol.join("g")).expect("link");
        let sparse = std::fs::File::create(d.path().join("app/upper/sparse")).expect("file");
        sparse.set_len(1 << 30).expect("len");
        let used = allocated_bytes(d.path());
        assert!((256 << 10..1 << 20).contains(&used), "{used}");

        assert_eq!(over_limit(&spec("1Mi", "10Mi"), d.path()), None);
        let m = over_limit(&spec("100Ki", "10Mi"), d.path()).expect("over");
        assert!(
            m.starts_with("Usage of EmptyDir volume \"cache\" exceeds the limit \"100Ki\""),
            "{m}"
        );
        let m = over_limit(&spec("", "200Ki"), d.path()).expect("over");
        assert!(
            m.contains("exceeds the total limit of containers 200Ki"),
            "{m}"
        );
        assert_eq!(allocated_bytes(&d.path().join("missing")), 0);
    }
}
