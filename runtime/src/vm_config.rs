//! `<group dir>/vm.json`: what the agent decided about a vm group's VM before launching
//! its shim (VMM binary, guest image, accelerator, size, the layers it may attach). One
//! definition for the agent, which writes it, and the shim, which boots from it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The virtio-blk serial of a layer: the first 20 hex characters of its digest (the
/// longest serial virtio-blk carries).
pub fn layer_serial(hex: &str) -> String {
    hex.chars().take(20).collect()
}

/// Largest `vm.json` read (it lists layers; a few hundred fit easily).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Errors reading `vm.json`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: over {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {field}: {why}")]
    Invalid {
        path: String,
        field: &'static str,
        why: &'static str,
    },
}

/// The host's TSC rate in kHz, for `tsc_early_khz` under TCG (the microvm guest has no
/// HPET or PM timer to calibrate against): sysfs when the kernel exports it, else
/// `cpu MHz` of /proc/cpuinfo.
pub fn host_tsc_khz() -> Option<u64> {
    if let Some(k) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        return Some(k);
    }
    parse_cpu_mhz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

/// `cpu MHz` of a /proc/cpuinfo text, in kHz.
pub fn parse_cpu_mhz(cpuinfo: &str) -> Option<u64> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|m| *m > 0.0)
        .map(|m| (m * 1000.0) as u64)
}

/// The accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The name QEMU's `-accel` and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// One image layer the VM may attach: the unpacked directory's host path (what the
/// rootfs overlay names as a lowerdir) and its erofs image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmLayer {
    pub path: PathBuf,
    pub erofs: PathBuf,
}

impl VmLayer {
    /// The virtio-blk serial of this layer: [`layer_serial`] of its directory name
    /// (the layer's hex digest).
    pub fn serial(&self) -> String {
        layer_serial(
            &self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
    }
}

/// Longest virtio-blk serial (what the guest sees in `/sys/block/vd*/serial`).
pub const MAX_SERIAL: usize = 20;

/// One `disk` volume of the group, attached read-write as a virtio-blk disk: the host
/// block device, the serial the guest finds it by, and `path`, the host path a
/// namespaced group would have mounted it at (the bind source `config.json` names),
/// which the guest mounts it at instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisk {
    pub device: PathBuf,
    pub serial: String,
    pub path: PathBuf,
}

/// The serial of a group's `n`th disk volume.
pub fn disk_serial(n: usize) -> String {
    format!("disk-{n}")
}

/// The contents of `vm.json` (docs/vm.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub accel: Accel,
    /// Host TSC frequency, passed as `tsc_early_khz` under TCG (without it the microvm
    /// guest hangs calibrating its clock in about one boot in four).
    #[serde(default)]
    pub tsc_khz: u64,
    pub vcpus: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub layers: Vec<VmLayer>,
    /// The group's `disk` volumes, attached read-write.
    #[serde(default)]
    pub disks: Vec<VmDisk>,
}

impl VmConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let p = path.display().to_string();
        let f = std::fs::File::open(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let mut bytes = Vec::new();
        f.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: p });
        }
        let cfg: VmConfig =
            serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse {
                path: p.clone(),
                source,
            })?;
        cfg.check().map_err(|(field, why)| ConfigError::Invalid {
            path: p,
            field,
            why,
        })?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.vcpus == 0 {
            return Err(("vcpus", "must be at least 1"));
        }
        if self.memory_mib < 64 {
            return Err(("memory_mib", "must be at least 64"));
        }
        for l in &self.layers {
            if !l.path.is_absolute() || !l.erofs.is_absolute() {
                return Err(("layers", "paths must be absolute"));
            }
            // The serial and the drive option must not be able to carry QEMU syntax.
            let ok = |p: &Path| !p.to_string_lossy().contains(',');
            if !ok(&l.erofs) || l.serial().is_empty() {
                return Err((
                    "layers",
                    "an erofs path holds a comma, or a layer has no name",
                ));
            }
        }
        for d in &self.disks {
            if !d.path.is_absolute() || !d.device.is_absolute() {
                return Err(("disks", "paths must be absolute"));
            }
            let serial_ok = !d.serial.is_empty()
                && d.serial.len() <= MAX_SERIAL
                && d.serial
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if d.device.to_string_lossy().contains(',') || !serial_ok {
                return Err((
                    "disks",
                    "a device path holds a comma, or a serial is not 1-20 of [A-Za-z0-9-]",
                ));
            }
        }
        Ok(())
    }

    /// The disk volume the guest mounts at `path`, if any.
    pub fn disk(&self, path: &Path) -> Option<&VmDisk> {
        self.disks.iter().find(|d| d.path == path)
    }

    /// The layer whose directory is `path`, if the VM may attach it.
    pub fn layer(&self, path: &Path) -> Option<&VmLayer> {
        self.layers.iter().find(|l| l.path == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_contract_example() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("vm.json");
        let hex = "ab".repeat(32);
        std::fs::write(
            &p,
            format!(
                r#"{{"qemu": "/usr/bin/qemu-system-x86_64", "kernel": "/g/vmlinux", "initrd": "/g/initrd.img",
                "accel": "tcg", "tsc_khz": 2400000, "vcpus": 1, "memory_mib": 512,
                "layers": [{{"path": "/var/lib/eci/layers/{hex}", "erofs": "/var/lib/eci/layers/{hex}.erofs"}}]}}"#
            ),
        )
        .expect("write");
        let c = VmConfig::load(&p).expect("load");
        assert_eq!(c.accel, Accel::Tcg);
        assert_eq!(c.layers[0].serial(), "abababababababababab");
        assert!(
            c.layer(Path::new(&format!("/var/lib/eci/layers/{hex}")))
                .is_some()
        );
        assert!(c.layer(Path::new("/etc")).is_none());
    }
}
