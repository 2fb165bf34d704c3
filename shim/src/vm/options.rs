//! The options a forwarded Create carries into the guest ([`CreateOptions`]): the
//! bundle's `config.json`, the host files and directories its bind mounts name (hosts,
//! resolv.conf, configFile volumes, empty volume directories), and the layers of its
//! rootfs by virtio-blk serial.
//!
//! Only sources under the group's own directories are sent (the group run directory,
//! its writable directory with the on-disk volumes), each opened component by
//! component with `O_NOFOLLOW` from the root down: a symbolic link anywhere below the
//! root is refused, never followed, so nothing outside those directories can be copied
//! into the guest. Only regular files and directories are sent, at most
//! [`MAX_CREATE_FILES_BYTES`] of file data and [`MAX_ENTRIES`] entries.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};
use oci_spec::runtime::Spec;

use super::config::VmConfig;
use crate::guest_proto::{CreateOptions, GuestFile, MAX_CREATE_FILES_BYTES};

/// Most files and directories one Create sends.
pub const MAX_ENTRIES: usize = 4096;
/// Deepest directory level walked below a mount source.
const MAX_DEPTH: usize = 32;
/// Largest `config.json` read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Errors building the options.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("{path}: {step}")]
    Io {
        path: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: a symbolic link; mount sources sent to the guest are never followed")]
    Symlink(String),
    #[error("{0}: neither a regular file nor a directory")]
    NotRegular(String),
    #[error("{0}: not an absolute path without '..'")]
    BadPath(String),
    #[error("mount sources hold over {MAX_CREATE_FILES_BYTES} bytes of files")]
    TooLarge,
    #[error("mount sources hold over {MAX_ENTRIES} files and directories, or nest too deep")]
    TooMany,
    #[error("config.json: {0}")]
    Config(String),
    #[error("rootfs: {0}")]
    Rootfs(String),
    #[error("rootfs: lowerdir {0} is not a layer of this group's VM (vm.json)")]
    UnknownLayer(String),
}

fn io_err(path: &Path, step: &'static str) -> impl FnOnce(std::io::Error) -> OptionsError {
    let path = path.display().to_string();
    move |source| OptionsError::Io { path, step, source }
}

/// Reads `path` (no symbolic link as its last component), at most `max` bytes.
fn read_nofollow(path: &Path, max: u64) -> Result<Vec<u8>, OptionsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path, "opening"))?;
    let mut out = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(io_err(path, "reading"))?;
    if out.len() as u64 > max {
        return Err(OptionsError::Config(format!(
            "{} is over {max} bytes",
            path.display()
        )));
    }
    Ok(out)
}

/// Whether `p` is absolute and has no `.` or `..` component.
pub fn is_clean_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// The lowerdirs of the rootfs overlay mount.
pub fn lowerdirs(
    mounts: &[containerd_shim_protos::api::Mount],
) -> Result<Vec<PathBuf>, OptionsError> {
    let m = mounts
        .iter()
        .find(|m| m.type_ == "overlay")
        .ok_or_else(|| OptionsError::Rootfs("an overlay mount is required".into()))?;
    let lower = m
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .ok_or_else(|| OptionsError::Rootfs("overlay without lowerdir".into()))?;
    Ok(lower.split(':').map(PathBuf::from).collect())
}

/// Builds the options for a Create of the bundle at `bundle`, whose rootfs overlay has
/// `lower` as lowerdirs; mount sources are sent when they lie under one of `roots`.
pub fn build(
    bundle: &Path,
    lower: &[PathBuf],
    roots: &[PathBuf],
    vm: &VmConfig,
) -> Result<CreateOptions, OptionsError> {
    let config = read_nofollow(&bundle.join("config.json"), MAX_CONFIG_BYTES)?;
    let spec: Spec =
        serde_json::from_slice(&config).map_err(|e| OptionsError::Config(e.to_string()))?;
    let mut layers = BTreeMap::new();
    for l in lower {
        let layer = vm
            .layer(l)
            .ok_or_else(|| OptionsError::UnknownLayer(l.display().to_string()))?;
        layers.insert(l.display().to_string(), layer.serial());
    }
    let mut c = Collector::default();
    let mut disks = BTreeMap::new();
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let opts = m.options().as_deref().unwrap_or_default();
        let bind =
            m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind");
        let Some(src) = m.source().as_ref().filter(|_| bind) else {
            continue;
        };
        if !is_clean_absolute(src) {
            return Err(OptionsError::BadPath(src.display().to_string()));
        }
        // A disk volume (or a subPath in it): the guest mounts the disk there itself.
        if let Some(d) = vm.disks.iter().find(|d| src.starts_with(&d.path)) {
            disks.insert(d.path.display().to_string(), d.serial.clone());
            continue;
        }
        let Some(root) = roots.iter().find(|r| src.starts_with(r)) else {
            tracing::debug!(source = %src.display(), "bind source outside the group's directories: not sent");
            continue;
        };
        c.source(root, src)?;
    }
    Ok(CreateOptions {
        config_json_b64: STANDARD.encode(&config),
        files: c.files,
        dirs: c.dirs,
        layers,
        disks,
    })
}

#[derive(Default)]
struct Collector {
    files: Vec<GuestFile>,
    dirs: Vec<String>,
    seen: BTreeSet<PathBuf>,
    bytes: usize,
}

fn open_below(
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
    flags: OFlag,
) -> Result<OwnedFd, OptionsError> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    openat(dir, name, flags, Mode::empty()).map_err(|e| {
        // With O_DIRECTORY a symbolic link fails as ENOTDIR, not ELOOP: look.
        let link = e == nix::Error::ELOOP
            || nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits());
        match e {
            _ if link => OptionsError::Symlink(path.display().to_string()),
            nix::Error::ENOTDIR => OptionsError::NotRegular(path.display().to_string()),
            e => OptionsError::Io {
                path: path.display().to_string(),
                step: "opening",
                source: e.into(),
            },
        }
    })
}

impl Collector {
    /// Sends `src` (under `root`), opened from `root` one component at a time.
    fn source(&mut self, root: &Path, src: &Path) -> Result<(), OptionsError> {
        let mut fd: OwnedFd = std::fs::File::open(root)
            .map_err(io_err(root, "opening"))?
            .into();
        let rel = src.strip_prefix(root).unwrap_or(Path::new(""));
        let comps: Vec<&OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let mut path = root.to_path_buf();
        for (i, name) in comps.iter().enumerate() {
            path.push(name);
            let last = i + 1 == comps.len();
            // O_NONBLOCK: a FIFO planted as a source must not block the open.
            let flags = if last {
                OFlag::O_NONBLOCK
            } else {
                OFlag::O_DIRECTORY
            };
            fd = open_below(&fd, name, &path, flags)?;
        }
        self.entry(&path, fd, 0)
    }

    fn entry(&mut self, path: &Path, fd: OwnedFd, depth: usize) -> Result<(), OptionsError> {
        if !self.seen.insert(path.to_path_buf()) {
            return Ok(());
        }
        if self.seen.len() > MAX_ENTRIES || depth > MAX_DEPTH {
            return Err(OptionsError::TooMany);
        }
        let st = fstat(&fd).map_err(|e| OptionsError::Io {
            path: path.display().to_string(),
            step: "stat",
            source: e.into(),
        })?;
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let mode = st.st_mode & 0o7777;
        if kind == SFlag::S_IFREG {
            let left = MAX_CREATE_FILES_BYTES.saturating_sub(self.bytes);
            let mut data = Vec::new();
            std::fs::File::from(fd)
                .take(left as u64 + 1)
                .read_to_end(&mut data)
                .map_err(io_err(path, "reading"))?;
            if data.len() > left {
                return Err(OptionsError::TooLarge);
            }
            self.bytes += data.len();
            self.files.push(GuestFile {
                path: path.display().to_string(),
                mode,
                data_b64: STANDARD.encode(&data),
            });
            return Ok(());
        }
        if kind != SFlag::S_IFDIR {
            return Err(OptionsError::NotRegular(path.display().to_string()));
        }
        self.dirs.push(path.display().to_string());
        let listing = fd.try_clone().map_err(io_err(path, "listing"))?;
        let mut dir = nix::dir::Dir::from_fd(listing).map_err(|e| OptionsError::Io {
            path: path.display().to_string(),
            step: "listing",
            source: e.into(),
        })?;
        let mut names = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(|e| OptionsError::Io {
                path: path.display().to_string(),
                step: "listing",
                source: e.into(),
            })?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_os_string());
            }
            if names.len() > MAX_ENTRIES {
                return Err(OptionsError::TooMany);
            }
        }
        names.sort();
        for name in names {
            let child = path.join(&name);
            let cfd = open_below(&fd, &name, &child, OFlag::O_NONBLOCK)?;
            self.entry(&child, cfd, depth + 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::config::{Accel, VmLayer};

    fn vm(layer: &Path) -> VmConfig {
        VmConfig {
            qemu: "/q".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            accel: Accel::Tcg,
            tsc_khz: 0,
            vcpus: 1,
            memory_mib: 256,
            disks: Vec::new(),
            layers: vec![VmLayer {
                path: layer.to_path_buf(),
                erofs: layer.with_extension("erofs"),
            }],
        }
    }

    /// A group dir with a bundle whose config.json binds `sources`.
    fn bundle(root: &Path, sources: &[&Path]) -> PathBuf {
        let b = root.join("containers/app");
        std::fs::create_dir_all(&b).expect("mkdir");
        let mounts: Vec<serde_json::Value> = sources
            .iter()
            .map(|s| {
                serde_json::json!({"destination": "/x", "type": "bind", "source": s,
                    "options": ["rbind", "ro"]})
            })
            .chain([serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"})])
            .collect();
        let spec = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "mounts": mounts});
        std::fs::write(b.join("config.json"), spec.to_string()).expect("config");
        b
    }

    #[test]
    fn sends_files_dirs_and_layers_and_skips_foreign_sources() {
        let t = tempfile::tempdir().expect("tmp");
        let g = t.path().join("groups/g1");
        std::fs::create_dir_all(g.join("etc")).expect("mkdir");
        std::fs::write(g.join("etc/hosts"), "127.0.0.1 localhost\n").expect("hosts");
        std::fs::create_dir_all(g.join("volumes/cfg/sub")).expect("mkdir");
        std::fs::write(g.join("volumes/cfg/sub/a.conf"), "a=1").expect("file");
        let b = bundle(
            &g,
            &[
                &g.join("etc/hosts"),
                &g.join("volumes/cfg"),
                Path::new("/etc/passwd"),
            ],
        );
        let layer = t.path().join(format!("layers/{}", "ef".repeat(32)));
        let o = build(
            &b,
            std::slice::from_ref(&layer),
            std::slice::from_ref(&g),
            &vm(&layer),
        )
        .expect("build");
        let files: Vec<&str> = o.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            files,
            [
                g.join("etc/hosts").to_str().expect("utf8"),
                g.join("volumes/cfg/sub/a.conf").to_str().expect("utf8")
            ]
        );
        assert_eq!(STANDARD.decode(&o.files[1].data_b64).expect("b64"), b"a=1");
        assert_eq!(o.dirs.len(), 2);
        assert_eq!(
            o.layers[layer.to_str().expect("utf8")],
            "efefefefefefefefefef"
        );
        assert!(!o.config_json_b64.is_empty());

        let other = t.path().join("layers/other");
        assert!(matches!(
            build(&b, &[other], std::slice::from_ref(&g), &vm(&layer)),
            Err(OptionsError::UnknownLayer(_))
        ));
    }

    #[test]
    fn planted_symlinks_are_refused_anywhere() {
        let t = tempfile::tempdir().expect("tmp");
        let g = t.path().join("g");
        std::fs::create_dir_all(g.join("volumes/v")).expect("mkdir");
        // In a volume directory.
        std::os::unix::fs::symlink("/etc/shadow", g.join("volumes/v/leak")).expect("link");
        let layer = t.path().join("l");
        let b = bundle(&g, &[&g.join("volumes/v")]);
        assert!(matches!(
            build(&b, &[], std::slice::from_ref(&g), &vm(&layer)),
            Err(OptionsError::Symlink(_))
        ));
        // As the source itself.
        std::os::unix::fs::symlink("/etc/shadow", g.join("hosts")).expect("link");
        let b = bundle(&g, &[&g.join("hosts")]);
        assert!(matches!(
            build(&b, &[], std::slice::from_ref(&g), &vm(&layer)),
            Err(OptionsError::Symlink(_))
        ));
        // As a directory on the way.
        std::os::unix::fs::symlink("/etc", g.join("etcdir")).expect("link");
        let b = bundle(&g, &[&g.join("etcdir/passwd")]);
        assert!(matches!(
            build(&b, &[], std::slice::from_ref(&g), &vm(&layer)),
            Err(OptionsError::Symlink(_))
        ));
        // config.json itself.
        let b2 = g.join("containers/evil");
        std::fs::create_dir_all(&b2).expect("mkdir");
        std::os::unix::fs::symlink("/etc/passwd", b2.join("config.json")).expect("link");
        assert!(build(&b2, &[], std::slice::from_ref(&g), &vm(&layer)).is_err());
        // `..` in a source.
        let b = bundle(&g, &[&g.join("volumes/../../x")]);
        assert!(matches!(
            build(&b, &[], std::slice::from_ref(&g), &vm(&layer)),
            Err(OptionsError::BadPath(_))
        ));
    }

    #[test]
    fn fifos_and_oversize_are_refused() {
        let t = tempfile::tempdir().expect("tmp");
        let g = t.path().join("g");
        std::fs::create_dir_all(g.join("v")).expect("mkdir");
        nix::unistd::mkfifo(&g.join("v/p"), Mode::from_bits_truncate(0o600)).expect("fifo");
        let layer = t.path().join("l");
        let b = bundle(&g, &[&g.join("v")]);
        assert!(matches!(
            build(&b, &[], std::slice::from_ref(&g), &vm(&layer)),
            Err(OptionsError::NotRegular(_))
        ));
        std::fs::remove_file(g.join("v/p")).expect("rm");
        std::fs::write(g.join("v/big"), vec![0u8; MAX_CREATE_FILES_BYTES + 1]).expect("big");
        assert!(matches!(
            build(&b, &[], std::slice::from_ref(&g), &vm(&layer)),
            Err(OptionsError::TooLarge)
        ));
    }
}
