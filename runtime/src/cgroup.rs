//! Cgroups of groups and containers (`eci/<group id>[/<container>]` in every hierarchy),
//! on cgroup v1, hybrid and v2 hosts (cgroups-rs picks the layout).

use cgroups_rs::fs::cgroup::Cgroup;
use cgroups_rs::fs::devices::{DevicePermissions, DeviceType};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::{
    CpuResources, DeviceResource, DeviceResources, MaxValue, MemoryResources, PidResources,
    Resources, hierarchies,
};

use crate::device_filter::{self, DeviceFilterError};
use crate::devices::ALLOWED_DEVICES;

/// Errors of cgroup operations.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("joining cgroup via {path}")]
    Join {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {path}: {op}")]
    Op {
        path: String,
        op: &'static str,
        #[source]
        source: cgroups_rs::fs::error::Error,
    },
    #[error("cgroup {path}: restricting devices")]
    Devices {
        path: String,
        #[source]
        source: DeviceFilterError,
    },
}

/// The limits a cgroup gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<i64>,
    /// CPU time per period, in microseconds (cores x period).
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub pids: Option<i64>,
    /// Restrict devices to the container defaults (v1 rules, or a BPF program on v2).
    pub restrict_devices: bool,
}

/// The v1 controllers a container is placed in. Each attach to a v1 hierarchy costs an
/// RCU grace period in the kernel (milliseconds), so only the ones limits and accounting
/// use: memory, CPU, pids, devices.
pub const CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "devices"];

/// The same on cgroup v2 (where `io` also exists and is enabled for the tree).
pub const V2_CONTROLLERS: &[&str] = &["memory", "cpu", "pids", "io"];

fn load(rel: &str) -> Cgroup {
    Cgroup::load(hierarchies::auto(), rel)
}

fn device_rules() -> Vec<DeviceResource> {
    let rwm = vec![
        DevicePermissions::Read,
        DevicePermissions::Write,
        DevicePermissions::MkNod,
    ];
    let mut rules = vec![DeviceResource {
        allow: false,
        devtype: DeviceType::All,
        major: -1,
        minor: -1,
        access: rwm.clone(),
    }];
    for t in [DeviceType::Char, DeviceType::Block] {
        rules.push(DeviceResource {
            allow: true,
            devtype: t,
            major: -1,
            minor: -1,
            access: vec![DevicePermissions::MkNod],
        });
    }
    for d in ALLOWED_DEVICES {
        rules.push(DeviceResource {
            allow: true,
            devtype: DeviceType::Char,
            major: d.major.into(),
            minor: d.minor.map_or(-1, i64::from),
            access: rwm.clone(),
        });
    }
    rules
}

/// Creates the cgroup (and its parents) and applies `limits`. Swap is off: the swap
/// limit equals the memory limit.
pub fn create(rel: &str, limits: &Limits) -> Result<(), CgroupError> {
    let op = |op| {
        move |source| CgroupError::Op {
            path: rel.to_string(),
            op,
            source,
        }
    };
    let controllers = if hierarchies::is_cgroup2_unified_mode() {
        // cgroup v2 (the vm sandbox's guest, modern hosts): cpuacct and devices are no
        // v2 controllers (CPU accounting is in `cpu`, devices a BPF program), and
        // cgroups-rs refuses a name the root's cgroup.controllers lacks.
        let root = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        let available: Vec<&str> = root.split_whitespace().collect();
        V2_CONTROLLERS
            .iter()
            .filter(|c| available.contains(c))
            .map(|c| c.to_string())
            .collect()
    } else {
        CONTROLLERS.iter().map(|c| c.to_string()).collect()
    };
    let cg = Cgroup::new_with_specified_controllers(hierarchies::auto(), rel, Some(controllers))
        .map_err(op("create"))?;
    let mut res = Resources {
        memory: MemoryResources {
            memory_hard_limit: limits.memory_bytes,
            ..Default::default()
        },
        cpu: CpuResources {
            shares: limits.cpu_shares,
            quota: limits.cpu_quota_us,
            period: limits.cpu_period_us,
            ..Default::default()
        },
        pid: PidResources {
            maximum_number_of_processes: limits.pids.map(MaxValue::Value),
        },
        ..Default::default()
    };
    if limits.restrict_devices && !hierarchies::is_cgroup2_unified_mode() {
        res.devices = DeviceResources {
            devices: device_rules(),
        };
    }
    cg.apply(&res).map_err(op("apply limits"))?;
    if limits.restrict_devices && hierarchies::is_cgroup2_unified_mode() {
        restrict_devices_v2(rel)?;
    }
    if limits.memory_bytes.is_some() {
        swap_off(rel, &cg, limits.memory_bytes);
    }
    Ok(())
}

/// No swap for a limited cgroup: memory beyond the limit is an OOM kill in the group,
/// not host swap traffic. Not every kernel accounts swap; where it does not, the files
/// are missing and there is nothing to turn off.
fn swap_off(rel: &str, cg: &Cgroup, memory: Option<i64>) {
    if hierarchies::is_cgroup2_unified_mode() {
        let max = hierarchies::auto().root().join(rel).join("memory.swap.max");
        if max.exists() {
            let _ = std::fs::write(max, "0");
        }
        return;
    }
    if let (Some(mem), Some(m)) = (memory, cg.controller_of::<MemController>()) {
        // v1: the memory+swap limit equal to the memory limit leaves no room for swap.
        let _ = m.set_memswap_limit(mem);
        let _ = m.set_swappiness(0);
    }
}

/// cgroup v2 has no device rules to write: attach the BPF program instead (see
/// [`device_filter`]).
fn restrict_devices_v2(rel: &str) -> Result<(), CgroupError> {
    let dir = hierarchies::auto().root().join(rel);
    device_filter::attach(&dir).map_err(|source| CgroupError::Devices {
        path: rel.to_string(),
        source,
    })
}

/// Moves process `pid` into the cgroup, in every hierarchy where it exists.
///
/// Written directly rather than through cgroups-rs: this runs on every container start
/// (in `eci-shim init`), where re-discovering the hierarchies cost milliseconds.
pub fn join(rel: &str, pid: u32) -> Result<(), CgroupError> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let pid = pid.to_string();
    let io = |path: &std::path::Path, e: std::io::Error| CgroupError::Join {
        path: path.display().to_string(),
        source: e,
    };
    if hierarchies::is_cgroup2_unified_mode() {
        let procs = root.join(rel).join("cgroup.procs");
        return std::fs::write(&procs, &pid).map_err(|e| io(&procs, e));
    }
    let mut joined = 0;
    let mut seen = std::collections::HashSet::new();
    for c in CONTROLLERS {
        // cpu and cpuacct usually share one hierarchy: attach once per hierarchy.
        let Ok(h) = std::fs::canonicalize(root.join(c)) else {
            continue;
        };
        if !seen.insert(h.clone()) {
            continue;
        }
        let procs = h.join(rel).join("cgroup.procs");
        if procs.exists() {
            std::fs::write(&procs, &pid).map_err(|e| io(&procs, e))?;
            joined += 1;
        }
    }
    if joined == 0 {
        return Err(io(
            &root.join(rel),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    Ok(())
}

/// Processes in the cgroup and below.
pub fn procs(rel: &str) -> Vec<u32> {
    let mut out: Vec<u32> = load(rel)
        .procs()
        .into_iter()
        .map(|p| p.pid as u32)
        .collect();
    let root = hierarchies::auto().root();
    // Children (container cgroups of a group cgroup).
    if let Ok(dir) = std::fs::read_dir(root.join("pids").join(rel))
        .or_else(|_| std::fs::read_dir(root.join(rel)))
    {
        for e in dir.flatten().filter(|e| e.path().is_dir()) {
            let child = format!("{rel}/{}", e.file_name().to_string_lossy());
            out.extend(procs(&child));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// How many times the OOM killer fired in the cgroup.
pub fn oom_kills(rel: &str) -> u64 {
    let cg = load(rel);
    if hierarchies::is_cgroup2_unified_mode() {
        let events =
            std::fs::read_to_string(hierarchies::auto().root().join(rel).join("memory.events"))
                .unwrap_or_default();
        return events
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
    }
    cg.controller_of::<MemController>()
        .map_or(0, |m| m.memory_stat().oom_control.oom_kill)
}

/// Memory and CPU usage, for metrics and the Task API's Stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: u64,
    /// Memory limit; None when unlimited.
    pub memory_limit: Option<u64>,
    pub cache_bytes: u64,
    pub rss_bytes: u64,
    pub inactive_file_bytes: u64,
    /// CPU time used, all CPUs, in nanoseconds.
    pub cpu_nanos: u64,
}

/// Usage of the cgroup and everything below it.
pub fn usage(rel: &str) -> Usage {
    let cg = load(rel);
    let mut u = Usage::default();
    if let Some(m) = cg.controller_of::<MemController>() {
        let st = m.memory_stat();
        u.memory_bytes = st.usage_in_bytes;
        // Values at or above 2^62 mean "no limit" on v1.
        u.memory_limit = (st.limit_in_bytes > 0 && st.limit_in_bytes < (1 << 62))
            .then_some(st.limit_in_bytes as u64);
        u.cache_bytes = st.stat.total_cache;
        u.rss_bytes = st.stat.total_rss;
        u.inactive_file_bytes = st.stat.total_inactive_file;
    }
    u.cpu_nanos = cg
        .controller_of::<cgroups_rs::fs::cpuacct::CpuAcctController>()
        .map_or(0, |c| c.cpuacct().usage);
    if hierarchies::is_cgroup2_unified_mode() {
        // No cpuacct on v2: `cpu.stat` has the usage in microseconds.
        let stat = std::fs::read_to_string(hierarchies::auto().root().join(rel).join("cpu.stat"))
            .unwrap_or_default();
        u.cpu_nanos = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(u.cpu_nanos, |us| us.saturating_mul(1000));
    }
    u
}

/// Removes the cgroup; its processes must be gone.
pub fn destroy(rel: &str) -> Result<(), CgroupError> {
    let cg = load(rel);
    cg.delete().map_err(|source| CgroupError::Op {
        path: rel.to_string(),
        op: "delete",
        source,
    })
}

/// True when the cgroup exists in any hierarchy (the unified one, or any v1
/// controller's): a removal cut short (a controller busy while killed processes exit)
/// can leave it in some controllers only, and the next removal must still see it.
pub fn exists(rel: &str) -> bool {
    let root = hierarchies::auto().root();
    if root.join(rel).join("cgroup.procs").is_file() {
        return true;
    }
    std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join(rel).is_dir())
}
