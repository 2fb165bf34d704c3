//! The guest image `scripts/guest-image.sh` writes: `vmlinux`, `initrd.img` and
//! `manifest.json` (`{"kernel_release": …, "eci_guest_sha256": …}`) in one directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A guest image that is all there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `uname -r` in the guest.
    pub kernel_release: String,
    /// SHA-256 of the `eci-guest` binary in the initrd (part of the probe cache key).
    pub guest_sha256: String,
}

#[derive(Deserialize)]
struct Manifest {
    kernel_release: String,
    #[serde(default)]
    eci_guest_sha256: String,
}

/// Most bytes of a manifest read.
const MAX_MANIFEST: u64 = 64 * 1024;

impl GuestImage {
    /// Reads the image in `dir`; the error is the reason `sandbox: vm` is refused,
    /// naming what is missing and how to make it.
    pub fn find(dir: &Path) -> Result<Self, String> {
        let missing = |what: &str| {
            format!(
                "no guest image at {} ({what}; run scripts/guest-image.sh {})",
                dir.display(),
                dir.display()
            )
        };
        for f in ["vmlinux", "initrd.img", "manifest.json"] {
            if !dir.join(f).is_file() {
                return Err(missing(&format!("{f} is missing")));
            }
        }
        let path = dir.join("manifest.json");
        let text = std::fs::metadata(&path)
            .ok()
            .filter(|m| m.len() <= MAX_MANIFEST)
            .and_then(|_| std::fs::read(&path).ok())
            .ok_or_else(|| missing("manifest.json is unreadable or too large"))?;
        let m: Manifest = serde_json::from_slice(&text)
            .map_err(|e| missing(&format!("manifest.json does not parse: {e}")))?;
        if m.kernel_release.is_empty() || m.kernel_release.len() > 256 {
            return Err(missing("manifest.json names no kernel_release"));
        }
        Ok(GuestImage {
            dir: dir.to_path_buf(),
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd.img"),
            kernel_release: m.kernel_release,
            guest_sha256: m.eci_guest_sha256.chars().take(128).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_partial_image_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = GuestImage::find(&dir.path().join("guest")).expect_err("none");
        assert!(
            e.starts_with("no guest image at ") && e.contains("scripts/guest-image.sh"),
            "{e}"
        );
        std::fs::write(dir.path().join("vmlinux"), b"k").expect("write");
        std::fs::write(dir.path().join("initrd.img"), b"i").expect("write");
        let e = GuestImage::find(dir.path()).expect_err("no manifest");
        assert!(e.contains("manifest.json is missing"), "{e}");
        std::fs::write(dir.path().join("manifest.json"), b"{}").expect("write");
        assert!(GuestImage::find(dir.path()).is_err());
        std::fs::write(
            dir.path().join("manifest.json"),
            br#"{"kernel_release":"6.1.0-28-cloud-amd64","eci_guest_sha256":"ab"}"#,
        )
        .expect("write");
        let img = GuestImage::find(dir.path()).expect("complete");
        assert_eq!(img.kernel_release, "6.1.0-28-cloud-amd64");
        assert_eq!(img.kernel, dir.path().join("vmlinux"));
    }
}
