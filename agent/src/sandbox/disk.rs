//! `disk` volumes: a host block device, checked, formatted when blank, and mounted for
//! one group at a time.
//!
//! The device path comes from the tenant's spec, so it is resolved (links followed,
//! the result must be under `/dev`), must be a block device the operator allows
//! (`volumes.disk_devices`), and must not hold the host's root or be mounted or in use
//! on the host. A device is formatted only when its first and last MiB are all zeros:
//! anything else that is not an ext4 or xfs filesystem is never written to.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Which devices `disk` volumes may use (config `volumes.disk_devices`), and where
/// the agent's own group mounts live (a device mounted there is a group's, which the
/// store's holder table answers for, not the host's).
#[derive(Debug, Clone, Default)]
pub struct DiskPolicy {
    pub allow: Vec<String>,
    pub groups_run_dir: PathBuf,
}

/// Why a device cannot serve as a disk volume. Each names the device.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("no block device has serial {0:?}")]
    NoSerial(String),
    #[error("resolving {0}")]
    Resolve(String, #[source] std::io::Error),
    #[error("{given} resolves to {resolved}, which is not under /dev")]
    OutsideDev { given: String, resolved: String },
    #[error("{0} is not a block device")]
    NotBlock(String),
    #[error("{dev} is not allowed by the node's volumes.disk_devices ({patterns})")]
    NotAllowed { dev: String, patterns: String },
    #[error("{0} holds the host's root filesystem")]
    HostRoot(String),
    #[error("{dev} is mounted on the host at {at}")]
    Mounted { dev: String, at: String },
    #[error("{0} is in use on the host (mounted, a swap area, or part of another device)")]
    Busy(String),
    #[error("reading {0}")]
    Read(String, #[source] std::io::Error),
    #[error("{dev} holds {found}, not an ext4 or xfs filesystem: it is never formatted")]
    Data { dev: String, found: &'static str },
    #[error("{dev} holds an {found} filesystem, not the {want} the volume asks for")]
    WrongFs {
        dev: String,
        found: &'static str,
        want: String,
    },
    #[error("{0} is blank and the volume is read-only: there is nothing to mount")]
    BlankReadOnly(String),
    #[error("formatting {dev}: {tool} is not installed (e2fsprogs / xfsprogs)")]
    NoFormatter { dev: String, tool: String },
    #[error("formatting {dev} with {tool}")]
    Format {
        dev: String,
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("formatting {dev} with {tool} failed: {stderr}")]
    FormatFailed {
        dev: String,
        tool: String,
        stderr: String,
    },
}

/// Resolves the spec's `device` (a `/dev` path or a disk serial) to the canonical path
/// of an allowed block device that the host does not use. Read-only; run at admission
/// and again before mounting.
pub fn resolve(device: &str, policy: &DiskPolicy) -> Result<PathBuf, DiskError> {
    let given = if device.starts_with("/dev/") {
        PathBuf::from(device)
    } else {
        by_serial(Path::new("/sys/class/block"), device)
            .ok_or_else(|| DiskError::NoSerial(device.to_string()))?
    };
    let real = std::fs::canonicalize(&given)
        .map_err(|e| DiskError::Resolve(given.display().to_string(), e))?;
    let shown = real.display().to_string();
    if !real.starts_with("/dev/") {
        return Err(DiskError::OutsideDev {
            given: device.to_string(),
            resolved: shown,
        });
    }
    let meta = std::fs::metadata(&real).map_err(|e| DiskError::Resolve(shown.clone(), e))?;
    if !meta.file_type().is_block_device() {
        return Err(DiskError::NotBlock(shown));
    }
    if !policy.allow.iter().any(|p| fnmatch(p, &shown)) {
        return Err(DiskError::NotAllowed {
            dev: shown,
            patterns: if policy.allow.is_empty() {
                "empty: no device is allowed".into()
            } else {
                policy.allow.join(", ")
            },
        });
    }
    let rdev = meta.rdev();
    if holds_root(rdev) {
        return Err(DiskError::HostRoot(shown));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(at) = mounted_at(&mountinfo, rdev)
        .into_iter()
        .find(|at| !Path::new(at).starts_with(&policy.groups_run_dir))
    {
        return Err(DiskError::Mounted { dev: shown, at });
    }
    Ok(real)
}

/// The block device whose sysfs `serial` (or `device/serial`) is `serial`.
fn by_serial(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(sys_block).ok()?.flatten() {
        for f in ["serial", "device/serial"] {
            if std::fs::read_to_string(e.path().join(f)).is_ok_and(|s| s.trim() == serial) {
                return Some(Path::new("/dev").join(e.file_name()));
            }
        }
    }
    None
}

/// `fnmatch(3)` with `FNM_PATHNAME`: `*` does not cross `/`.
fn fnmatch(pattern: &str, path: &str) -> bool {
    let (Ok(p), Ok(s)) = (
        std::ffi::CString::new(pattern),
        std::ffi::CString::new(path),
    ) else {
        return false;
    };
    // SAFETY: both are NUL-terminated strings that live across the call.
    unsafe { libc::fnmatch(p.as_ptr(), s.as_ptr(), libc::FNM_PATHNAME) == 0 }
}

fn sys_dir(rdev: u64) -> Option<PathBuf> {
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).ok()
}

/// Whether device `rdev` is the host root's device, or the disk one of whose
/// partitions is (a partition's sysfs directory is inside its disk's).
fn holds_root(rdev: u64) -> bool {
    let Ok(root) = std::fs::metadata("/") else {
        return false;
    };
    if root.dev() == rdev {
        return true;
    }
    match (sys_dir(root.dev()), sys_dir(rdev)) {
        (Some(r), Some(d)) => r.starts_with(&d),
        _ => false,
    }
}

/// Mount points of device `rdev` in a `mountinfo` text.
fn mounted_at(mountinfo: &str, rdev: u64) -> Vec<String> {
    let want = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2)?;
            let at = f.nth(1)?;
            (dev == want).then(|| at.replace("\\040", " "))
        })
        .collect()
}

/// What the first and last MiB of a device hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Content {
    Blank,
    Fs(&'static str),
    Data(&'static str),
}

const PROBE: u64 = 1 << 20;

/// Reads the start and end of `dev`; refuses a device something else holds open
/// exclusively (`O_EXCL` on a block device: mounted, swap, md/dm member).
pub fn probe(dev: &Path) -> Result<Content, DiskError> {
    let shown = || dev.display().to_string();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(dev)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                DiskError::Busy(shown())
            } else {
                DiskError::Read(shown(), e)
            }
        })?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| DiskError::Read(shown(), e))?;
    let mut head = vec![0u8; PROBE.min(size) as usize];
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_exact(&mut head))
        .map_err(|e| DiskError::Read(shown(), e))?;
    let mut tail = vec![0u8; PROBE.min(size) as usize];
    f.seek(SeekFrom::Start(size - tail.len() as u64))
        .and_then(|_| f.read_exact(&mut tail))
        .map_err(|e| DiskError::Read(shown(), e))?;
    Ok(classify(&head, &tail))
}

/// The filesystem or data `head` (the first MiB) and `tail` (the last) show.
pub fn classify(head: &[u8], tail: &[u8]) -> Content {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(1080, &[0x53, 0xEF]) {
        return Content::Fs("ext4");
    }
    if at(0, b"XFSB") {
        return Content::Fs("xfs");
    }
    if head.iter().chain(tail).all(|b| *b == 0) {
        return Content::Blank;
    }
    Content::Data(if at(0x10040, b"_BHRfS_M") {
        "a btrfs filesystem"
    } else if at(0, b"LUKS\xba\xbe") {
        "a LUKS volume"
    } else if at(512, b"EFI PART") || at(510, &[0x55, 0xAA]) {
        "a partition table"
    } else if at(4086, b"SWAPSPACE2") {
        "a swap area"
    } else {
        "data"
    })
}

/// Makes `dev` hold a `want` filesystem (`ext4` when empty): a blank device is
/// formatted, a device with that filesystem is kept as it is. Returns the type.
pub fn ensure_filesystem(
    dev: &Path,
    want: &str,
    read_only: bool,
) -> Result<&'static str, DiskError> {
    let want: &'static str = if want == "xfs" { "xfs" } else { "ext4" };
    let shown = dev.display().to_string();
    match probe(dev)? {
        Content::Fs(found) if found == want => Ok(found),
        Content::Fs(found) => Err(DiskError::WrongFs {
            dev: shown,
            found,
            want: want.into(),
        }),
        Content::Data(found) => Err(DiskError::Data { dev: shown, found }),
        Content::Blank if read_only => Err(DiskError::BlankReadOnly(shown)),
        Content::Blank => {
            format(dev, want)?;
            Ok(want)
        }
    }
}

/// Runs `mkfs.<fs>` on `dev`. A formatter, not a mount: writing an ext4 or xfs
/// filesystem correctly is e2fsprogs' and xfsprogs' whole job, and no maintained crate
/// does it (docs/volumes.md).
fn format(dev: &Path, fs: &str) -> Result<(), DiskError> {
    let tool = format!("mkfs.{fs}");
    let dev_s = dev.display().to_string();
    let Some(bin) = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(&tool))
        .find(|p| p.exists())
    else {
        return Err(DiskError::NoFormatter { dev: dev_s, tool });
    };
    tracing::info!(device = %dev_s, fs, "formatting a blank disk");
    // No force flag: should the formatter find a signature the probe missed, it asks,
    // reads EOF from /dev/null, and refuses.
    let out = std::process::Command::new(&bin)
        .arg("-q")
        .arg(dev)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| DiskError::Format {
            dev: dev_s.clone(),
            tool: tool.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(DiskError::FormatFailed {
            dev: dev_s,
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_filesystems_and_data_are_told_apart() {
        let zero = vec![0u8; 1 << 17];
        assert_eq!(classify(&zero, &zero), Content::Blank);
        let mut ext = zero.clone();
        ext[1080] = 0x53;
        ext[1081] = 0xEF;
        assert_eq!(classify(&ext, &zero), Content::Fs("ext4"));
        let mut xfs = zero.clone();
        xfs[..4].copy_from_slice(b"XFSB");
        assert_eq!(classify(&xfs, &zero), Content::Fs("xfs"));
        let mut mbr = zero.clone();
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert_eq!(classify(&mbr, &zero), Content::Data("a partition table"));
        // Anything non-zero at the end (an md superblock, a backup GPT) is data too.
        let mut end = zero.clone();
        end[100] = 1;
        assert_eq!(classify(&zero, &end), Content::Data("data"));
    }

    #[test]
    fn patterns_do_not_cross_slashes() {
        assert!(fnmatch("/dev/loop*", "/dev/loop3"));
        assert!(fnmatch("/dev/vd[b-z]*", "/dev/vdb1"));
        assert!(!fnmatch("/dev/vd[b-z]*", "/dev/vda"));
        assert!(!fnmatch("/dev/*", "/dev/mapper/x"));
    }

    #[test]
    fn mountinfo_lines_name_the_device() {
        let m = "22 1 7:3 / /mnt/a\\040b rw - ext4 /dev/loop3 rw\n23 1 7:4 / /x rw - ext4 /dev/loop4 rw\n";
        assert_eq!(mounted_at(m, libc::makedev(7, 3)), ["/mnt/a b"]);
        assert!(mounted_at(m, libc::makedev(7, 5)).is_empty());
    }

    #[test]
    fn serials_come_from_sysfs() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("vdb")).expect("dir");
        std::fs::write(d.path().join("vdb/serial"), "disk-123\n").expect("serial");
        std::fs::create_dir_all(d.path().join("sdc/device")).expect("dir");
        std::fs::write(d.path().join("sdc/device/serial"), "S2\n").expect("serial");
        assert_eq!(by_serial(d.path(), "disk-123"), Some("/dev/vdb".into()));
        assert_eq!(by_serial(d.path(), "S2"), Some("/dev/sdc".into()));
        assert_eq!(by_serial(d.path(), "nope"), None);
    }

    #[test]
    fn paths_outside_dev_and_non_devices_are_refused() {
        let p = DiskPolicy {
            allow: vec!["/dev/*".into()],
            groups_run_dir: "/run/eci/groups".into(),
        };
        // /dev/fd leads to /proc/self/fd.
        assert!(matches!(
            resolve("/dev/fd", &p),
            Err(DiskError::OutsideDev { .. })
        ));
        assert!(matches!(
            resolve("/dev/null", &p),
            Err(DiskError::NotBlock(_))
        ));
    }
}
