//! Read-only erofs images of unpacked layers, for vm groups (issue 15): a VM cannot
//! see the host's layer directories, so each layer it uses is attached as a virtio-blk
//! disk holding `<state>/layers/<hex>.erofs`, and the guest mounts it at the layer's
//! host path. One image per layer, built by `mkfs.erofs` the first time a vm group
//! needs it and shared by every VM; removed with the layer by garbage collection.
//!
//! The image is built from the verified layer directory into a temp file (named like an
//! unpack directory, so a crash's leftover is removed like one), synced, and renamed
//! into place: `<hex>.erofs` exists only complete. `mkfs.erofs` keeps what overlayfs
//! needs of a layer: `trusted.overlay.*` xattrs (opaque directories) and 0/0 character
//! devices (whiteouts), as the privileged test below checks.

use std::path::{Path, PathBuf};
use std::sync::PoisonError;

use super::{ImageError, ImageRecord, ImageStore, LayerRecord, io_err};
use crate::images::digest::Digest;

/// The tool that builds the images (Debian `erofs-utils`).
pub const MKFS: &str = "mkfs.erofs";
/// Suffix of a layer's image beside its directory.
pub const SUFFIX: &str = ".erofs";

/// A layer of a vm group: its directory (where the guest mounts it) and its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErofsLayer {
    pub dir: PathBuf,
    pub image: PathBuf,
}

impl ImageStore {
    /// Where the erofs image of the layer with this diff id lives.
    pub fn erofs_path(&self, diff_id: &Digest) -> PathBuf {
        self.layers.join(format!("{}{SUFFIX}", diff_id.hex()))
    }

    /// The layers of `image`, bottom first, each unpacked and with its erofs image
    /// (built where missing). Blocking: an image of a large layer takes seconds.
    pub fn erofs_layers(&self, image: &ImageRecord) -> Result<Vec<ErofsLayer>, ImageError> {
        let _shared = self.gc.read().unwrap_or_else(PoisonError::into_inner);
        image
            .layers
            .iter()
            .map(|l| {
                let dir = self.ensure_layer(l)?;
                let image = self.ensure_erofs(l, &dir)?;
                Ok(ErofsLayer { dir, image })
            })
            .collect()
    }

    /// The erofs image of `layer` (unpacked at `dir`), built unless it is there.
    /// Callers hold `gc` shared.
    fn ensure_erofs(&self, layer: &LayerRecord, dir: &Path) -> Result<PathBuf, ImageError> {
        let _busy = self.layer_locks.lock(&layer.diff_id);
        let dest = self.erofs_path(&layer.diff_id);
        match std::fs::symlink_metadata(&dest) {
            Ok(m) if m.is_file() => return Ok(dest),
            Ok(_) => super::layers::remove_path(&dest)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dest)(e)),
        }
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-erofs-")
            .tempfile_in(&self.layers)
            .map_err(io_err(&self.layers))?;
        build(tmp.path(), dir).map_err(|message| ImageError::Erofs {
            layer: layer.diff_id.clone(),
            message,
        })?;
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        std::fs::File::open(&self.layers)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.layers))?;
        tracing::info!(layer = %layer.diff_id, image = %dest.display(), "built the erofs image of a layer");
        Ok(dest)
    }
}

/// Runs `mkfs.erofs` to write an image of `dir` into `out` (which it overwrites).
/// Uncompressed: the guest reads it through the page cache like a directory, and the
/// layer blob already bounds what disk it takes.
pub fn build(out: &Path, dir: &Path) -> Result<(), String> {
    let res = std::process::Command::new(MKFS)
        .arg("--quiet")
        .arg(out)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{MKFS}: {e} (install erofs-utils)"))?;
    if !res.status.success() {
        let err = String::from_utf8_lossy(&res.stderr);
        let err: String = err
            .trim()
            .chars()
            .rev()
            .take(400)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!("{MKFS} exited with {}: {err}", res.status));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{Mode, SFlag, mknod};

    /// Privileged (mounts a loop device): the image keeps what overlayfs needs.
    #[test]
    fn the_image_keeps_overlay_xattrs_and_whiteouts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("opaque")).expect("mkdir");
        std::fs::write(src.join("file"), b"hello").expect("write");
        xattr::set(src.join("opaque"), "trusted.overlay.opaque", b"y").expect("xattr");
        mknod(&src.join("gone"), SFlag::S_IFCHR, Mode::empty(), 0).expect("whiteout");
        let img = dir.path().join("layer.erofs");
        build(&img, &src).expect("mkfs.erofs");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let loopdev = loop_attach(&img);
        nix::mount::mount(
            Some(loopdev.as_path()),
            &mnt,
            Some("erofs"),
            nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .expect("mount erofs");
        let check = || -> Result<(), String> {
            let data = std::fs::read(mnt.join("file")).map_err(|e| e.to_string())?;
            if data != b"hello" {
                return Err("content".into());
            }
            let x = xattr::get(mnt.join("opaque"), "trusted.overlay.opaque")
                .map_err(|e| e.to_string())?;
            if x.as_deref() != Some(&b"y"[..]) {
                return Err(format!("opaque xattr: {x:?}"));
            }
            let m = std::fs::symlink_metadata(mnt.join("gone")).map_err(|e| e.to_string())?;
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            if !m.file_type().is_char_device() || m.rdev() != 0 {
                return Err(format!("whiteout: {:?} rdev {}", m.file_type(), m.rdev()));
            }
            Ok(())
        };
        let res = check();
        let _ = nix::mount::umount(&mnt);
        loop_detach(&loopdev);
        res.expect("erofs keeps the layer");
    }

    /// Attaches `file` to a free loop device (the test's own, detached after).
    fn loop_attach(file: &Path) -> PathBuf {
        use std::os::fd::AsRawFd;
        const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
        const LOOP_SET_FD: libc::c_ulong = 0x4C00;
        let ctl = std::fs::File::open("/dev/loop-control").expect("loop-control");
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        assert!(n >= 0, "no free loop device");
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let d = std::fs::File::open(&dev).expect("open loop");
        let f = std::fs::File::open(file).expect("open image");
        // SAFETY: LOOP_SET_FD takes the backing file's descriptor, valid for the call.
        let r = unsafe { libc::ioctl(d.as_raw_fd(), LOOP_SET_FD, f.as_raw_fd()) };
        assert_eq!(r, 0, "LOOP_SET_FD");
        dev
    }

    fn loop_detach(dev: &Path) {
        use std::os::fd::AsRawFd;
        const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
        if let Ok(d) = std::fs::File::open(dev) {
            // SAFETY: LOOP_CLR_FD takes no argument.
            unsafe { libc::ioctl(d.as_raw_fd(), LOOP_CLR_FD) };
        }
    }
}
