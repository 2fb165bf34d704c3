//! What the host sees of a group: its processes and their host ids, found through
//! `/proc`, and files below a directory. For the user-namespace tests, which check from
//! outside what a container runs as.

use std::path::{Path, PathBuf};

use crate::Agent;

/// A process of a group as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProcess {
    pub pid: i32,
    /// Real and effective host uid, real host gid.
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    /// `/proc/<pid>/uid_map` as read from the host.
    pub uid_map: String,
}

/// Every process in the group's cgroups (found by the group id in `/proc/<pid>/cgroup`),
/// by pid.
pub fn group_processes(group_id: &str) -> Vec<HostProcess> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !cg.lines().any(|l| l.contains(&format!("/{group_id}/"))) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str, n: usize| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().nth(n))
                .and_then(|v| v.parse().ok())
                .unwrap_or(u32::MAX)
        };
        out.push(HostProcess {
            pid,
            uid: field("Uid:", 0),
            euid: field("Uid:", 1),
            gid: field("Gid:", 0),
            uid_map: std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap_or_default(),
        });
    }
    out.sort_unstable_by_key(|p| p.pid);
    out
}

/// The first host id of the group's user namespace range; panics when it has none.
pub fn userns_base(agent: &Agent, name: &str) -> u32 {
    let g = agent.get_json(name).expect("get");
    g["status"]["userNamespace"]["hostIdBase"]
        .as_u64()
        .unwrap_or_else(|| panic!("no userNamespace in status: {g}")) as u32
}

/// The first regular file below `dir` whose path ends with `suffix`.
pub fn find_file(dir: &Path, suffix: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.ends_with(suffix) && p.is_file() {
            return Some(p);
        }
        if e.file_type().ok()?.is_dir()
            && let Some(f) = find_file(&p, suffix)
        {
            return Some(f);
        }
    }
    None
}
