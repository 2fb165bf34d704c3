//! Leftovers that belong to no group: shims, cgroups, pinned namespaces and run
//! directories of groups the store no longer has (a delete cut short by a crash, a shim
//! launch the crash interrupted). Found by what exists on the host — processes, cgroup
//! directories, run directories — never by the store alone, and removed at agent start
//! and after every delete.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use eci_runtime::{cgroup, namespaces};

use super::Supervisor;
use super::containers::SHIM_POLL;
use crate::sandbox::volumes;

/// Shim processes started for `run_dir`: (pid, group id). Read from `/proc/*/cmdline`
/// (`eci-shim start … --id ID … --run-dir DIR`), which a shim keeps for its life.
pub(crate) fn shims(run_dir: &Path) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with(b"eci-shim"))
            && args.get(1) == Some(&&b"start"[..]);
        if !is_shim {
            continue;
        }
        let value = |key: &[u8]| {
            args.iter()
                .position(|a| *a == key)
                .and_then(|i| args.get(i + 1))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if value(b"--run-dir").as_deref().map(Path::new) == Some(run_dir)
            && let Some(id) = value(b"--id")
        {
            out.push((pid, id));
        }
    }
    out
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

impl Supervisor {
    /// Kills every shim process of group `id` (however it was left: serving, starting,
    /// or detached from a removed run directory).
    pub(crate) fn kill_shims_of(&self, id: &str) {
        for (pid, _) in shims(&self.cfg.run_dir)
            .into_iter()
            .filter(|(_, of)| of == id)
        {
            tracing::warn!(group_id = %id, pid, "killing a leftover shim");
            kill(pid);
        }
    }

    /// Removes everything group `id` held on the host when no shim serves it: its
    /// processes, container and group cgroups, pinned namespaces, volumes and
    /// directories. Blocking; safe to run twice.
    pub(crate) fn remove_leftovers(&self, id: &str) {
        self.kill_shims_of(id);
        // A vm group's QEMU (in `<group cgroup>/vm`, which the loop below misses).
        crate::vm::orphans::kill_of(&self.cfg.run_dir, id);
        let group_cg = format!("{}/{id}", self.cfg.cgroup_parent);
        for p in cgroup::procs(&group_cg) {
            kill(p as i32);
        }
        for _ in 0..100 {
            if cgroup::procs(&group_cg).is_empty() {
                break;
            }
            std::thread::sleep(SHIM_POLL);
        }
        for child in cgroup_children(&self.cfg.cgroup_parent, id) {
            let _ = cgroup::destroy(&format!("{group_cg}/{child}"));
        }
        if cgroup::exists(&group_cg) {
            let _ = cgroup::destroy(&group_cg);
        }
        let run = self.cfg.run_dir.join("groups").join(id);
        // Never release a netns that may still hold an ENI: keep it pinned (and the
        // group's directories) for the next cleanup to try again.
        if !self.release_network_blocking(id) {
            return;
        }
        let _ = namespaces::remove(&run.join("ns"));
        crate::failpoint::hit("volumes-unmounting");
        volumes::unmount_all(&run);
        for d in [run, self.cfg.state_dir.join("groups").join(id)] {
            if let Err(e) = std::fs::remove_dir_all(&d)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %d.display(), error = %e, "removing leftover directory");
            }
        }
    }

    /// At start: removes what exists on the host for groups the store does not have
    /// (`live` holds the ids it has). Returns the ids cleaned.
    pub(crate) fn collect_orphans(&self, live: &HashSet<String>) -> Vec<String> {
        let mut ids: HashSet<String> = shims(&self.cfg.run_dir)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        ids.extend(dir_names(&self.cfg.run_dir.join("groups")));
        // A QEMU outlives its run directory if its shim was killed first.
        ids.extend(
            crate::vm::orphans::qemus(&self.cfg.run_dir)
                .into_iter()
                .map(|(_, id)| id),
        );
        ids.extend(dir_names(&self.cfg.state_dir.join("groups")));
        ids.extend(cgroup_children_of(&self.cfg.cgroup_parent));
        // An ENI record outlives everything else of its group until the ENI is back.
        if let Ok(held) = self.groups.store().held_enis() {
            ids.extend(held.into_iter().map(|(id, _)| id));
        }
        let mut cleaned: Vec<String> = ids.into_iter().filter(|id| !live.contains(id)).collect();
        cleaned.sort();
        for id in &cleaned {
            tracing::warn!(group_id = %id, "removing the leftovers of a group the store does not have");
            self.remove_leftovers(id);
        }
        cleaned
    }
}

impl Supervisor {
    /// Kills the QEMU of every vm group the store no longer has (run periodically: a
    /// VM must never outlive its group). Returns the group ids whose QEMU was killed.
    pub(crate) fn kill_orphan_vms(&self) -> Vec<String> {
        let Ok((groups, _)) = self.groups.store().list_groups() else {
            return Vec::new();
        };
        let live: HashSet<String> = groups.into_iter().map(|g| g.id).collect();
        crate::vm::orphans::kill_orphans(&self.cfg.run_dir, &live)
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// Group ids with a cgroup under `parent` (memory hierarchy, or the unified one).
fn cgroup_children_of(parent: &str) -> Vec<String> {
    let root = Path::new("/sys/fs/cgroup");
    let mut out = dir_names(&root.join("memory").join(parent));
    out.extend(dir_names(&root.join(parent)));
    out.sort();
    out.dedup();
    out
}

/// Container cgroups of group `id`, in any hierarchy.
fn cgroup_children(parent: &str, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir: PathBuf = h.path().join(parent).join(id);
        out.extend(dir_names(&dir));
    }
    out.sort();
    out.dedup();
    out
}
