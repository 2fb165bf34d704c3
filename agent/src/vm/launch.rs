//! `<group dir>/vm.json`: what a vm group's shim boots (contract "Host shim in vm
//! mode"). Written by the agent before it launches the shim with `--sandbox vm
//! --vm-config <path>`.

use std::path::{Path, PathBuf};

use super::VmSettings;
use super::image::GuestImage;
use super::probe::Accel;

pub use eci_runtime::vm_config::{VmConfig as VmJson, VmDisk, VmLayer};

/// vCPUs of a VM for a group of `cpu_millis`: whole vCPUs, rounded up, at least 1.
pub fn vcpus(cpu_millis: u64) -> u32 {
    u32::try_from(cpu_millis.div_ceil(1000).max(1)).unwrap_or(u32::MAX)
}

/// MiB of a VM for a group of `memory_bytes` plus the guest's own overhead, rounded up.
pub fn memory_mib(memory_bytes: u64, overhead_bytes: u64) -> u64 {
    memory_bytes
        .saturating_add(overhead_bytes)
        .div_ceil(1 << 20)
}

/// `name` as an absolute path: itself if it has a slash, else the first executable of
/// that name on `PATH` (the shim is not to depend on the agent's `PATH`).
pub fn resolve_binary(name: &Path) -> PathBuf {
    if name.components().count() > 1 || name.is_absolute() {
        return name.to_path_buf();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| {
                std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                    && m.is_file()
            })
        })
        .unwrap_or_else(|| name.to_path_buf())
}

/// The VM of a group of the given normalized size with these layers.
pub fn vm_json(
    s: &VmSettings,
    image: &GuestImage,
    accel: Accel,
    cpu_millis: u64,
    memory_bytes: u64,
    layers: Vec<VmLayer>,
) -> VmJson {
    VmJson {
        qemu: resolve_binary(&s.qemu),
        kernel: image.kernel.clone(),
        initrd: image.initrd.clone(),
        accel,
        tsc_khz: super::probe::host_tsc_khz().unwrap_or(0),
        vcpus: vcpus(cpu_millis),
        memory_mib: memory_mib(memory_bytes, s.overhead_bytes),
        layers,
        disks: Vec::new(),
    }
}

/// Writes `<group dir>/vm.json` atomically; returns its path.
pub fn write(vm: &VmJson, group_dir: &Path) -> std::io::Result<PathBuf> {
    let path = group_dir.join("vm.json");
    std::fs::create_dir_all(group_dir)?;
    let json = serde_json::to_vec_pretty(vm).map_err(std::io::Error::other)?;
    super::write_atomic(&path, &json)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rounds_up() {
        assert_eq!(vcpus(0), 1);
        assert_eq!(vcpus(250), 1);
        assert_eq!(vcpus(1000), 1);
        assert_eq!(vcpus(1001), 2);
        assert_eq!(vcpus(8000), 8);
        assert_eq!(memory_mib(512 << 20, 64 << 20), 576);
        assert_eq!(memory_mib((512 << 20) + 1, 0), 513);
    }

    #[test]
    fn vm_json_has_the_contract_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = VmSettings::from_config(&crate::config::VmConfig::default(), dir.path());
        let image = GuestImage {
            dir: "/g".into(),
            kernel: "/g/vmlinux".into(),
            initrd: "/g/initrd.img".into(),
            kernel_release: "6.1".into(),
            guest_sha256: String::new(),
        };
        let layers = vec![VmLayer {
            path: "/var/lib/eci/layers/ab".into(),
            erofs: "/var/lib/eci/layers/ab.erofs".into(),
        }];
        let vm = vm_json(&s, &image, Accel::Tcg, 1500, 1 << 30, layers);
        let path = write(&vm, dir.path()).expect("write");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
        assert_eq!(v["accel"], "tcg");
        assert_eq!(v["vcpus"], 2);
        assert_eq!(v["memory_mib"], 1024 + 64);
        assert_eq!(v["kernel"], "/g/vmlinux");
        assert_eq!(v["layers"][0]["erofs"], "/var/lib/eci/layers/ab.erofs");
        assert!(v["tsc_khz"].as_u64().is_some_and(|k| k > 0));
        assert!(
            v["qemu"].as_str().is_some_and(|q| q.starts_with('/')),
            "{v}"
        );
    }
}
