//! The OCI runtime spec (`config.json`) of a container: the image and container spec
//! merged into a process, Docker's defaults for mounts, capabilities, masked and
//! read-only paths, and the container's cgroup and limits.

use std::path::Path;

use eci_api::v1::{Container, GroupSpec};
use serde_json::{Value, json};

use crate::images::process::Process;
use crate::quantity::{parse_cpu_millis, parse_memory_bytes};

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
    /// Directory holding `hosts`, `hostname`, `resolv.conf` for the group.
    pub etc_dir: &'a Path,
    /// Host directory of each volume of the group.
    pub volumes: &'a std::collections::HashMap<String, std::path::PathBuf>,
    /// `oom_score_adj` of the container's processes (agent config).
    pub oom_score_adj: i32,
}

/// Resource limits every container process gets, whatever the agent's own limits are
/// (its unit raises them for itself). `(type, soft, hard)`; documented in
/// docs/security.md.
pub const RLIMITS: &[(&str, u64, u64)] = &[
    // As Docker on containerd: many servers need more than the kernel's 1024.
    ("RLIMIT_NOFILE", 1_048_576, 1_048_576),
    // No core files: a core dump fills the group's disk, and a piped core_pattern
    // would run a host helper on the tenant's behalf.
    ("RLIMIT_CORE", 0, 0),
    // The kernel's default; IPC_LOCK (allowed to add) lifts it within the group's memory.
    ("RLIMIT_MEMLOCK", 8 << 20, 8 << 20),
    // Counted per uid across the host, not per group: pids.max on the group's cgroup
    // is the real limit, so this one only needs to stay out of its way.
    ("RLIMIT_NPROC", 4_194_304, 4_194_304),
];

/// Builds `config.json`.
pub fn build(i: &SpecInputs<'_>) -> Result<Value, eci_runtime::capabilities::CapsError> {
    let sc = i.container.security_context.clone().unwrap_or_default();
    let caps_spec = sc.capabilities.clone().unwrap_or_default();
    let caps = eci_runtime::capabilities::compute(&caps_spec.add, &caps_spec.drop)?;
    let root = i.process.user == "0" || i.process.user == "root";
    let held = if root { caps.clone() } else { Vec::new() };
    let res = i.container.resources.clone().unwrap_or_default();
    let mut resources = json!({});
    if let Ok(m) = parse_memory_bytes(&res.memory) {
        resources["memory"] = json!({ "limit": m, "swap": m });
    }
    if let Ok(c) = parse_cpu_millis(&res.cpu) {
        resources["cpu"] =
            json!({ "quota": c * 100, "period": 100_000, "shares": (c * 1024 / 1000).max(2) });
    }
    let sysctls: serde_json::Map<String, Value> = i
        .group
        .security_context
        .iter()
        .flat_map(|s| &s.sysctls)
        .map(|s| (s.name.clone(), Value::String(s.value.clone())))
        .collect();
    let bind = |dest: &str, file: &str| json!({ "destination": dest, "type": "bind", "source": i.etc_dir.join(file), "options": ["rbind", "rprivate", "nosuid", "nodev"] });
    let mut mounts = vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] }),
        json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={}", i.shm_bytes)] }),
        json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }),
        bind("/etc/hosts", "hosts"),
        bind("/etc/hostname", "hostname"),
        bind("/etc/resolv.conf", "resolv.conf"),
    ];
    for m in &i.container.volume_mounts {
        // Validation guarantees the volume exists. The volume's content is the tenant's:
        // the runtime resolves subPath inside the volume root by fd (a symlink written
        // there cannot lead out) and mounts what it opened.
        let Some(dir) = i.volumes.get(&m.name) else {
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
        if !m.sub_path.is_empty() {
            options.push(format!(
                "{}{}",
                eci_runtime::mounts::SUBPATH_OPTION,
                m.sub_path
            ));
        }
        mounts.push(json!({ "destination": m.mount_path, "type": "bind", "source": dir, "options": options }));
    }
    let mut annotations = json!({ "io.eci.user": i.process.user, "io.eci.group-id": i.group_id });
    if let Some(g) = &i.process.group {
        annotations["io.eci.group"] = json!(g);
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": i.process.user.parse::<u32>().unwrap_or(0), "gid": 0 },
            "args": i.process.args,
            "env": i.process.env,
            "cwd": i.process.cwd,
            "capabilities": {
                "bounding": caps, "effective": held, "permitted": held, "inheritable": [], "ambient": []
            },
            "noNewPrivileges": true,
            "oomScoreAdj": i.oom_score_adj,
            "rlimits": RLIMITS.iter().map(|(t, soft, hard)| json!({ "type": t, "soft": soft, "hard": hard })).collect::<Vec<_>>()
        },
        "root": { "path": "rootfs", "readonly": sc.read_only_root_filesystem },
        "hostname": i.group.name,
        "mounts": mounts,
        "annotations": annotations,
        "linux": {
            "cgroupsPath": format!("{}/{}/{}", i.cgroup_parent, i.group_id, i.container.name),
            "resources": resources,
            "namespaces": [
                { "type": "pid" }, { "type": "mount" }, { "type": "network" }, { "type": "ipc" }, { "type": "uts" }
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "sysctl": sysctls
        }
    }))
}
