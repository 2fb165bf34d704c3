//! Applying the host's `CreateOptions` before a forwarded Create: the bundle's
//! config.json, bind-mount sources (files and directories) at their host paths, the
//! rootfs overlay's writable directories, the layers' erofs disks, and the group's disk
//! volumes (mounted read-write at the host path a namespaced group would have used).
//!
//! Everything lands on the guest's own tmpfs root. Paths must be absolute, without
//! `..`, and below the group directory or a directory the rootfs or config.json names
//! (never the guest's own /init, /proc…); no existing component may be a symlink.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use containerd_shim_protos::api;
use eci_shim::guest_proto::{CreateOptions, MAX_CREATE_FILES_BYTES};
use nix::mount::MsFlags;

/// Errors applying options.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("{0}: not an absolute path without '..'")]
    Path(String),
    #[error("{0}: outside the group directory and the paths the container names")]
    Outside(String),
    #[error("{0}: a symlink or not a directory on the way")]
    Link(String),
    #[error("{what}: not valid base64")]
    Base64 { what: String },
    #[error("config.json: {0}")]
    Config(#[source] serde_json::Error),
    #[error("files: {0} bytes in all, over the limit")]
    TooLarge(usize),
    #[error("layer {path}: serial {serial} is not 20 hex characters")]
    Serial { path: String, serial: String },
    #[error("layer {path}: no disk with serial {serial}")]
    NoDisk { path: String, serial: String },
    #[error("layer {path}: not a lower directory of the rootfs")]
    NotALayer { path: String },
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("disk volume {path}: serial {serial} is not disk-<n> (at most 20 characters)")]
    DiskSerial { path: String, serial: String },
    #[error("disk volume {0}: no bind mount of the container names it")]
    NotAVolume(String),
    #[error("mounting disk volume {path} (ext4, xfs): {source}")]
    DiskMount {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("mounting layer {path}: {source}")]
    Mount {
        path: String,
        #[source]
        source: nix::Error,
    },
}

/// Whether `p` is absolute and free of `.`/`..` components.
pub fn is_clean_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fn clean(p: &str) -> Result<PathBuf, OptionsError> {
    let path = PathBuf::from(p);
    if is_clean_absolute(&path) && !p.contains('\0') {
        Ok(path)
    } else {
        Err(OptionsError::Path(p.to_string()))
    }
}

/// Creates `dir` and its parents, refusing any existing component that is a symlink or
/// not a directory.
pub fn mkdir_safe(dir: &Path) -> Result<(), OptionsError> {
    let mut at = PathBuf::from("/");
    for c in dir.components().skip(1) {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return Err(OptionsError::Link(at.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&at) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(OptionsError::Io {
                        step: "creating",
                        path: at.display().to_string(),
                        source,
                    });
                }
            },
            Err(source) => {
                return Err(OptionsError::Io {
                    step: "inspecting",
                    path: at.display().to_string(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Writes `data` at `path` (parents created safely), never through a symlink.
fn write_safe(path: &Path, mode: u32, data: &[u8]) -> Result<(), OptionsError> {
    if let Some(parent) = path.parent() {
        mkdir_safe(parent)?;
    }
    let io = |step| {
        move |source| OptionsError::Io {
            step,
            path: path.display().to_string(),
            source,
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode & 0o7777)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("opening"))?;
    f.write_all(data).map_err(io("writing"))?;
    let _ = nix::sys::stat::fchmod(&f, nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777));
    Ok(())
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>, OptionsError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| OptionsError::Base64 {
            what: what.to_string(),
        })
}

/// The overlay's lower, upper and work directories of a containerd rootfs mount.
fn overlay_dirs(rootfs: &[api::Mount]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut lower = Vec::new();
    let mut writable = Vec::new();
    for m in rootfs.iter().filter(|m| m.type_ == "overlay") {
        for o in &m.options {
            if let Some(l) = o.strip_prefix("lowerdir=") {
                lower.extend(l.split(':').map(PathBuf::from));
            } else if let Some(d) = o
                .strip_prefix("upperdir=")
                .or_else(|| o.strip_prefix("workdir="))
            {
                writable.push(PathBuf::from(d));
            }
        }
    }
    (lower, writable)
}

/// Creates the rootfs overlay's upper and work directories at their host paths (on the
/// guest's tmpfs: a container's writes never reach the host's disk).
pub fn create_writable(rootfs: &[api::Mount]) -> Result<(), OptionsError> {
    for w in overlay_dirs(rootfs).1 {
        mkdir_safe(&clean(&w.display().to_string())?)?;
    }
    Ok(())
}

/// What one Create may write, and where.
pub struct Scope {
    roots: Vec<PathBuf>,
}

impl Scope {
    fn allows(&self, p: &Path) -> bool {
        self.roots.iter().any(|r| p.starts_with(r))
    }

    fn check(&self, p: &str) -> Result<PathBuf, OptionsError> {
        let path = clean(p)?;
        if self.allows(&path) {
            Ok(path)
        } else {
            Err(OptionsError::Outside(p.to_string()))
        }
    }
}

/// Applies `opts` for a Create of `bundle` with `rootfs` in the group at `group_dir`.
/// `mounted` holds the layer paths mounted so far (each is mounted once per guest).
pub fn apply(
    opts: &CreateOptions,
    bundle: &str,
    rootfs: &[api::Mount],
    group_dir: &Path,
    mounted: &mut HashSet<PathBuf>,
) -> Result<(), OptionsError> {
    let bundle = clean(bundle)?;
    if !bundle.starts_with(group_dir) {
        return Err(OptionsError::Outside(bundle.display().to_string()));
    }
    let config = b64("config.json", &opts.config_json_b64)?;
    let spec: oci_spec::runtime::Spec =
        serde_json::from_slice(&config).map_err(OptionsError::Config)?;
    let (lower, writable) = overlay_dirs(rootfs);
    let mut binds = Vec::new();
    let mut roots = vec![group_dir.to_path_buf()];
    for w in &writable {
        let w = clean(&w.display().to_string())?;
        // The writable dir holds upper and work side by side.
        roots.push(w.parent().map_or(w.clone(), Path::to_path_buf));
    }
    for m in spec.mounts().iter().flatten() {
        let bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if let (true, Some(src)) = (bind, m.source())
            && is_clean_absolute(src)
        {
            roots.push(src.clone());
            binds.push(src.clone());
        }
    }
    let scope = Scope { roots };

    mkdir_safe(&bundle)?;
    write_safe(&bundle.join("config.json"), 0o600, &config)?;
    create_writable(rootfs)?;
    for d in &opts.dirs {
        mkdir_safe(&scope.check(d)?)?;
    }
    let mut total = 0usize;
    let mut files = Vec::new();
    for f in &opts.files {
        let path = scope.check(&f.path)?;
        let data = b64(&f.path, &f.data_b64)?;
        total += data.len();
        if total > MAX_CREATE_FILES_BYTES {
            return Err(OptionsError::TooLarge(total));
        }
        files.push((path, f.mode, data));
    }
    for (path, mode, data) in files {
        write_safe(&path, mode, &data)?;
    }
    for (path, serial) in &opts.layers {
        let p = clean(path)?;
        if !lower.iter().any(|l| l.starts_with(&p)) {
            return Err(OptionsError::NotALayer { path: path.clone() });
        }
        if mounted.contains(&p) {
            continue;
        }
        mount_layer(&p, serial)?;
        mounted.insert(p);
    }
    // Disk volumes: below the group directory, named (or a subPath in them named) by
    // a bind mount of this container; each mounted once per guest, read-write.
    for (path, serial) in &opts.disks {
        let p = clean(path)?;
        if p == group_dir || !p.starts_with(group_dir) {
            return Err(OptionsError::Outside(path.clone()));
        }
        if !binds.iter().any(|b| b.starts_with(&p)) {
            return Err(OptionsError::NotAVolume(path.clone()));
        }
        if mounted.contains(&p) {
            continue;
        }
        mount_disk(&p, serial)?;
        mounted.insert(p);
    }
    Ok(())
}

/// Whether `serial` is one the host gives disk volumes (`disk-<n>`), never a layer's.
fn is_disk_serial(serial: &str) -> bool {
    serial.len() <= 20
        && serial
            .strip_prefix("disk-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Mounts the disk volume whose virtio-blk serial is `serial` at `path`, with the
/// filesystem the host formatted it with (ext4 or xfs; the kernel checks the
/// superblock).
fn mount_disk(path: &Path, serial: &str) -> Result<(), OptionsError> {
    if !is_disk_serial(serial) {
        return Err(OptionsError::DiskSerial {
            path: path.display().to_string(),
            serial: serial.to_string(),
        });
    }
    let disk = disk_with_serial(serial).ok_or_else(|| OptionsError::NoDisk {
        path: path.display().to_string(),
        serial: serial.to_string(),
    })?;
    mkdir_safe(path)?;
    let mut last = nix::Error::EINVAL;
    for fs in ["ext4", "xfs"] {
        match nix::mount::mount(
            Some(&disk),
            path,
            Some(fs),
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(OptionsError::DiskMount {
        path: path.display().to_string(),
        source: last,
    })
}

/// The virtio-blk disk whose serial is `serial`.
pub(crate) fn disk_with_serial(serial: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("vd") {
            continue;
        }
        let s = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        if s.trim() == serial {
            return Some(Path::new("/dev").join(name));
        }
    }
    None
}

fn mount_layer(path: &Path, serial: &str) -> Result<(), OptionsError> {
    if serial.len() != 20 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OptionsError::Serial {
            path: path.display().to_string(),
            serial: serial.to_string(),
        });
    }
    let disk = disk_with_serial(serial).ok_or_else(|| OptionsError::NoDisk {
        path: path.display().to_string(),
        serial: serial.to_string(),
    })?;
    mkdir_safe(path)?;
    nix::mount::mount(
        Some(&disk),
        path,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|source| OptionsError::Mount {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_clean_and_in_scope() {
        assert!(is_clean_absolute(Path::new("/a/b")));
        assert!(!is_clean_absolute(Path::new("/a/../b")));
        assert!(!is_clean_absolute(Path::new("a/b")));
        let scope = Scope {
            roots: vec![PathBuf::from("/run/eci/groups/g")],
        };
        assert!(scope.check("/run/eci/groups/g/c/hosts").is_ok());
        assert!(scope.check("/run/eci/groups/gx").is_err());
        assert!(scope.check("/init").is_err());
        assert!(scope.check("/run/eci/groups/g/../../../init").is_err());
    }

    #[test]
    fn disk_serials_are_never_a_layers() {
        assert!(is_disk_serial("disk-0"));
        assert!(is_disk_serial("disk-12"));
        assert!(!is_disk_serial("disk-"));
        assert!(!is_disk_serial("abababababababababab"));
        assert!(!is_disk_serial("disk-1,x"));
        assert!(!is_disk_serial("disk-123456789012345678"));
    }

    #[test]
    fn mkdir_refuses_symlinks() {
        let d = tempfile::tempdir().expect("tempdir");
        let real = d.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        std::os::unix::fs::symlink(&real, d.path().join("link")).expect("symlink");
        assert!(mkdir_safe(&d.path().join("ok/x")).is_ok());
        assert!(matches!(
            mkdir_safe(&d.path().join("link/x")),
            Err(OptionsError::Link(_))
        ));
        let f = d.path().join("real/f");
        write_safe(&f, 0o644, b"hi").expect("write");
        std::os::unix::fs::symlink(&f, d.path().join("flink")).expect("symlink");
        assert!(write_safe(&d.path().join("flink"), 0o644, b"x").is_err());
    }
}
