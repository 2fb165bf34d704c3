//! The OCI runtime spec (`config.json`) of a container: the image and container spec
//! merged into a process, Docker's defaults for mounts, capabilities, masked and
//! read-only paths, and the container's cgroup and limits. Built with `oci-spec`'s typed
//! builders from the checked [`ContainerSpec`], so what the shim loads with
//! `Spec::load` is what was built, field for field.

use std::collections::HashMap;
use std::path::Path;

use eci_api::v1::{Container, GroupSpec};
use eci_runtime::capabilities::CapsError;
use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::images::process::Process;
use crate::validate::{ContainerSpec, ValidationErrors};

/// Paths hidden from containers (containerd's default spec).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths containers may read but not write (containerd's default spec).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What a container's spec needs beyond the container itself.
pub struct SpecInputs<'a> {
    pub group_id: &'a str,
    pub cgroup_parent: &'a str,
    pub group: &'a GroupSpec,
    pub container: &'a Container,
    pub process: &'a Process,
    pub shm_bytes: u64,
    /// The group's `/dev/shm` tmpfs ([`super::volumes::prepare_shm`]), shared by its
    /// containers as they share the IPC namespace; None: one of `shm_bytes` each.
    pub shm_dir: Option<&'a Path>,
    /// Directory holding `hosts`, `hostname`, `resolv.conf` for the group.
    pub etc_dir: &'a Path,
    /// Host directory of each volume of the group.
    pub volumes: &'a std::collections::HashMap<String, std::path::PathBuf>,
    /// `oom_score_adj` of the container's processes (agent config).
    pub oom_score_adj: i32,
    /// The group's user namespace range, when it has one.
    pub userns: Option<eci_runtime::userns::IdRange>,
}

/// Resource limits every container process gets, whatever the agent's own limits are
/// (its unit raises them for itself). `(type, soft, hard)`; documented in
/// docs/security.md.
pub const RLIMITS: &[(PosixRlimitType, u64, u64)] = &[
    // As Docker on containerd: many servers need more than the kernel's 1024.
    (PosixRlimitType::RlimitNofile, 1_048_576, 1_048_576),
    // No core files: a core dump fills the group's disk, and a piped core_pattern
    // would run a host helper on the tenant's behalf.
    (PosixRlimitType::RlimitCore, 0, 0),
    // The kernel's default; IPC_LOCK (allowed to add) lifts it within the group's memory.
    (PosixRlimitType::RlimitMemlock, 8 << 20, 8 << 20),
    // Counted per uid across the host, not per group: pids.max on the group's cgroup
    // is the real limit, so this one only needs to stay out of its way.
    (PosixRlimitType::RlimitNproc, 4_194_304, 4_194_304),
];

/// The CFS period every container quota is over (100 ms).
const CFS_PERIOD_US: u64 = 100_000;

/// Why a container's spec could not be built. Admission makes the first two impossible
/// for a stored spec; they are kept rather than assumed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("container {name:?}: {errors}")]
    Container {
        name: String,
        errors: ValidationErrors,
    },
    #[error(transparent)]
    Capabilities(#[from] CapsError),
    #[error("capability {0} is not in the OCI spec's set")]
    Capability(String),
    #[error("building the OCI spec")]
    Oci(#[from] OciSpecError),
}

/// The kernel's names (`CAP_CHOWN`) as `oci-spec` capabilities.
fn capability_set(names: &[String]) -> Result<Capabilities, BuildError> {
    names
        .iter()
        .map(|n| {
            n.strip_prefix("CAP_")
                .and_then(|bare| bare.parse::<Capability>().ok())
                .ok_or_else(|| BuildError::Capability(n.clone()))
        })
        .collect()
}

fn mount(
    destination: impl Into<std::path::PathBuf>,
    typ: &str,
    source: impl Into<std::path::PathBuf>,
    options: &[&str],
) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
}

/// The mounts every container gets: the kernel filesystems, /dev, and the group's
/// hosts, hostname and resolv.conf.
fn base_mounts(i: &SpecInputs<'_>) -> Result<Vec<Mount>, OciSpecError> {
    let etc = ["rbind", "rprivate", "nosuid", "nodev"];
    let shm = format!("size={}", i.shm_bytes);
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        match i.shm_dir {
            Some(dir) => mount(
                "/dev/shm",
                "bind",
                dir,
                &["rbind", "rprivate", "nosuid", "noexec", "nodev"],
            )?,
            None => mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", &shm],
            )?,
        },
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount("/etc/hosts", "bind", i.etc_dir.join("hosts"), &etc)?,
        mount("/etc/hostname", "bind", i.etc_dir.join("hostname"), &etc)?,
        mount(
            "/etc/resolv.conf",
            "bind",
            i.etc_dir.join("resolv.conf"),
            &etc,
        )?,
    ])
}

/// The container's volumes. The volume's content is the tenant's: the runtime resolves
/// subPath inside the volume root by fd (a symlink written there cannot lead out) and
/// mounts what it opened.
fn volume_mounts(i: &SpecInputs<'_>, c: &ContainerSpec) -> Result<Vec<Mount>, OciSpecError> {
    let mut out = Vec::with_capacity(c.mounts.len());
    for m in &c.mounts {
        // Admission guarantees the volume exists.
        let Some(dir) = i.volumes.get(&m.volume) else {
            continue;
        };
        let mut options = vec![
            "rbind".to_string(),
            "rprivate".into(),
            "nosuid".into(),
            "nodev".into(),
        ];
        if m.read_only {
            options.push("ro".into());
        }
        if let Some(sub) = &m.sub_path {
            options.push(format!("{}{sub}", eci_runtime::mounts::SUBPATH_OPTION));
        }
        out.push(
            MountBuilder::default()
                .destination(&m.destination)
                .typ("bind")
                .source(dir)
                .options(options)
                .build()?,
        );
    }
    Ok(out)
}

/// Builds `config.json`.
pub fn build(i: &SpecInputs<'_>) -> Result<Spec, BuildError> {
    let c = ContainerSpec::try_from(i.container).map_err(|errors| BuildError::Container {
        name: i.container.name.clone(),
        errors,
    })?;
    let strings = |caps: &[crate::validate::Capability]| -> Vec<String> {
        caps.iter().map(|c| c.as_str().to_string()).collect()
    };
    let caps = eci_runtime::capabilities::compute(&strings(&c.add), &strings(&c.drop))?;
    let root = i.process.user == "0" || i.process.user == "root";
    let bounding = capability_set(&caps)?;
    let held = if root {
        bounding.clone()
    } else {
        Capabilities::new()
    };
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(m) = c.memory {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(m.as_i64())
                .swap(m.as_i64())
                .build()?,
        );
    }
    if let Some(cpu) = c.cpu {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(cpu.cfs_quota_us())
                .period(CFS_PERIOD_US)
                .shares(cpu.shares())
                .build()?,
        );
    }
    let sysctls: HashMap<String, String> = i
        .group
        .security_context
        .iter()
        .flat_map(|s| &s.sysctls)
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    let mut mounts = base_mounts(i)?;
    mounts.extend(volume_mounts(i, &c)?);
    let mut annotations = HashMap::from([
        ("io.eci.user".to_string(), i.process.user.clone()),
        ("io.eci.group-id".to_string(), i.group_id.to_string()),
    ]);
    if let Some(g) = &i.process.group {
        annotations.insert("io.eci.group".into(), g.clone());
    }
    let rlimits = RLIMITS
        .iter()
        .map(|&(typ, soft, hard)| {
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(soft)
                .hard(hard)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let process = ProcessBuilder::default()
        // `tty`: the shim's init opens the terminal in the container's devpts.
        .terminal(i.container.tty)
        .user(
            UserBuilder::default()
                // The runtime resolves the user by name (the annotation) inside the
                // container; a numeric one is also given here.
                .uid(i.process.user.parse::<u32>().unwrap_or(0))
                .gid(0u32)
                .build()?,
        )
        .args(i.process.args.clone())
        .env(i.process.env.clone())
        .cwd(&i.process.cwd)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(bounding)
                .effective(held.clone())
                .permitted(held)
                .inheritable(Capabilities::new())
                .ambient(Capabilities::new())
                .build()?,
        )
        .no_new_privileges(c.no_new_privileges(i.userns.is_some()))
        .oom_score_adj(i.oom_score_adj)
        .rlimits(rlimits)
        .build()?;
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
    ]
    .into_iter()
    .chain(i.userns.map(|_| LinuxNamespaceType::User))
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;
    // What the shim's group user namespace maps, stated for whoever reads the bundle.
    let mappings = i
        .userns
        .map(|r| {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(r.base)
                .size(r.len)
                .build()
        })
        .transpose()?;
    let strings = |paths: &[&str]| paths.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let linux = LinuxBuilder::default()
        .cgroups_path(format!(
            "{}/{}/{}",
            i.cgroup_parent, i.group_id, i.container.name
        ))
        .resources(resources.build()?)
        .namespaces(namespaces)
        .uid_mappings(mappings.iter().cloned().collect::<Vec<_>>())
        .gid_mappings(mappings.into_iter().collect::<Vec<_>>())
        .masked_paths(strings(MASKED_PATHS))
        .readonly_paths(strings(READONLY_PATHS))
        .sysctl(sysctls)
        .build()?;
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(c.read_only_root)
                .build()?,
        )
        .hostname(i.group.name.clone())
        .mounts(mounts)
        .annotations(annotations)
        .linux(linux)
        .build()?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use eci_api::v1::{
        Capabilities as WireCaps, Container, GroupSecurityContext, GroupSpec, ResourceRequirements,
        SecurityContext, Sysctl, VolumeMount,
    };

    use super::*;

    fn process(user: &str) -> Process {
        Process {
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/bin".into(), "A=b".into()],
            cwd: "/srv".into(),
            user: user.into(),
            group: Some("users".into()),
        }
    }

    fn built(container: &Container, user: &str) -> serde_json::Value {
        let group = GroupSpec {
            name: "web".into(),
            security_context: Some(GroupSecurityContext {
                sysctls: vec![Sysctl {
                    name: "net.ipv4.ip_forward".into(),
                    value: "1".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let volumes = HashMap::from([("v".to_string(), PathBuf::from("/run/eci/g/volumes/v"))]);
        let spec = build(&SpecInputs {
            group_id: "gid",
            cgroup_parent: "eci",
            group: &group,
            container,
            process: &process(user),
            shm_bytes: 64 << 20,
            shm_dir: None,
            etc_dir: Path::new("/run/eci/g/etc"),
            volumes: &volumes,
            oom_score_adj: 500,
            userns: None,
        })
        .expect("build");
        // What the shim does: load it back as an OCI spec.
        let json = serde_json::to_vec(&spec).expect("json");
        let loaded: Spec = serde_json::from_slice(&json).expect("the shim's parse");
        assert_eq!(loaded, spec);
        serde_json::from_slice(&json).expect("value")
    }

    #[test]
    fn the_container_becomes_a_typed_oci_spec() {
        let c = Container {
            name: "app".into(),
            image: "busybox:1".into(),
            resources: Some(ResourceRequirements {
                cpu: "250m".into(),
                memory: "512Mi".into(),
                gpu: 0,
            }),
            volume_mounts: vec![VolumeMount {
                name: "v".into(),
                mount_path: "/data/".into(),
                sub_path: "sub/dir".into(),
                read_only: true,
            }],
            security_context: Some(SecurityContext {
                read_only_root_filesystem: true,
                capabilities: Some(WireCaps {
                    add: vec!["NET_RAW".into()],
                    drop: vec!["ALL".into()],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = built(&c, "0");
        assert_eq!(v["ociVersion"], "1.0.2");
        assert_eq!(v["hostname"], "web");
        assert_eq!(
            v["root"],
            serde_json::json!({"path": "rootfs", "readonly": true})
        );
        let p = &v["process"];
        assert_eq!(p["args"], serde_json::json!(["sh", "-c", "true"]));
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["terminal"], false);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["oomScoreAdj"], 500);
        assert_eq!(
            p["capabilities"]["bounding"],
            serde_json::json!(["CAP_NET_RAW"])
        );
        assert_eq!(
            p["capabilities"]["effective"],
            serde_json::json!(["CAP_NET_RAW"])
        );
        assert_eq!(p["capabilities"]["inheritable"], serde_json::json!([]));
        assert_eq!(p["rlimits"].as_array().map(Vec::len), Some(4));
        assert_eq!(p["rlimits"][0]["type"], "RLIMIT_NOFILE");
        let l = &v["linux"];
        assert_eq!(l["cgroupsPath"], "eci/gid/app");
        assert_eq!(l["resources"]["cpu"]["quota"], 25_000);
        assert_eq!(l["resources"]["cpu"]["period"], 100_000);
        assert_eq!(l["resources"]["cpu"]["shares"], 256);
        assert_eq!(l["resources"]["memory"]["limit"], 512 << 20);
        assert_eq!(l["sysctl"]["net.ipv4.ip_forward"], "1");
        assert_eq!(l["namespaces"].as_array().map(Vec::len), Some(5));
        assert_eq!(
            l["maskedPaths"].as_array().map(Vec::len),
            Some(MASKED_PATHS.len())
        );
        assert_eq!(v["annotations"]["io.eci.user"], "0");
        assert_eq!(v["annotations"]["io.eci.group"], "users");
        assert_eq!(v["annotations"]["io.eci.group-id"], "gid");
        let mounts = v["mounts"].as_array().expect("mounts");
        assert_eq!(mounts.len(), 10);
        let vol = &mounts[9];
        // The destination is the normalized path.
        assert_eq!(vol["destination"], "/data");
        assert_eq!(vol["source"], "/run/eci/g/volumes/v");
        let opts = vol["options"].as_array().expect("options");
        assert!(opts.contains(&"ro".into()), "{vol}");
        assert!(
            opts.contains(&format!("{}sub/dir", eci_runtime::mounts::SUBPATH_OPTION).into()),
            "{vol}"
        );
    }

    #[test]
    fn a_non_root_user_holds_no_capabilities_and_no_limits_mean_none_written() {
        let c = Container {
            name: "app".into(),
            image: "busybox:1".into(),
            ..Default::default()
        };
        let v = built(&c, "1000");
        assert_eq!(
            v["process"]["capabilities"]["effective"],
            serde_json::json!([])
        );
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .is_some_and(|b| b.len() == 14),
            "{}",
            v["process"]["capabilities"]
        );
        assert!(
            v["linux"]["resources"].get("cpu").is_none(),
            "{}",
            v["linux"]
        );
        assert!(v["linux"]["resources"].get("memory").is_none());
        assert_eq!(v["root"]["readonly"], false);
    }

    #[test]
    fn a_container_that_breaks_a_rule_is_not_built() {
        let c = Container {
            name: "app".into(),
            image: "busybox:1".into(),
            resources: Some(ResourceRequirements {
                cpu: "1m".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let group = GroupSpec::default();
        let err = build(&SpecInputs {
            group_id: "gid",
            cgroup_parent: "eci",
            group: &group,
            container: &c,
            process: &process("0"),
            shm_bytes: 1,
            shm_dir: None,
            etc_dir: Path::new("/e"),
            volumes: &HashMap::new(),
            oom_score_adj: 0,
            userns: None,
        })
        .expect_err("1m cpu");
        assert!(err.to_string().contains("resources.cpu"), "{err}");
    }
}
