//! What a container's OCI bundle says, in the runtime's terms.

use std::path::PathBuf;

use containerd_shim_protos::api;
use eci_runtime::cgroup::Limits;
use eci_runtime::mounts::Rootfs;
use oci_spec::runtime::Spec;
use ttrpc::Code;

use super::err;

/// The overlay described by a containerd rootfs mount.
pub(super) fn rootfs_of(mounts: &[api::Mount]) -> ttrpc::Result<Rootfs> {
    let m = mounts
        .iter()
        .find(|m| m.type_ == "overlay")
        .ok_or_else(|| {
            err(
                Code::INVALID_ARGUMENT,
                "rootfs: an overlay mount is required",
            )
        })?;
    let opt = |key: &str| {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix(&format!("{key}=")).map(str::to_string))
    };
    let lower = opt("lowerdir")
        .ok_or_else(|| err(Code::INVALID_ARGUMENT, "rootfs: overlay without lowerdir"))?;
    Ok(Rootfs {
        lower: lower.split(':').map(PathBuf::from).collect(),
        upper: opt("upperdir")
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "rootfs: overlay without upperdir"))?
            .into(),
        work: opt("workdir")
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "rootfs: overlay without workdir"))?
            .into(),
    })
}

/// Cgroup limits from an OCI spec.
pub(super) fn limits_of(spec: &Spec) -> Limits {
    let res = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    let mem = res.memory().as_ref().and_then(|m| m.limit());
    let cpu = res.cpu().clone().unwrap_or_default();
    Limits {
        memory_bytes: mem,
        cpu_quota_us: cpu.quota(),
        cpu_period_us: cpu.period(),
        cpu_shares: cpu.shares(),
        pids: res.pids().as_ref().map(|p| p.limit()),
        restrict_devices: true,
    }
}
