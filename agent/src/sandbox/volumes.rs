//! A group's volumes, shared by its containers: `emptyDir` on disk (under the state
//! directory) or in memory (a tmpfs of the given size), and `configFile` volumes whose
//! files the agent writes. Each is bind-mounted into the containers that name it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use eci_api::v1::GroupSpec;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::quantity::parse_memory_bytes;

/// The host directory of each volume by name. `run_root` and `state_root` are the
/// group's run and state directories: in-memory and config volumes live in the first,
/// disk volumes in the second.
pub fn paths(spec: &GroupSpec, run_root: &Path, state_root: &Path) -> HashMap<String, PathBuf> {
    spec.volumes
        .iter()
        .map(|v| {
            let on_disk = v.empty_dir.as_ref().is_some_and(|e| e.medium != "Memory");
            let dir = if on_disk {
                state_root.join(".volumes")
            } else {
                run_root.join("volumes")
            };
            (v.name.clone(), dir.join(&v.name))
        })
        .collect()
}

/// Creates every volume of `spec` at its [`paths`] entry.
pub fn prepare(spec: &GroupSpec, run_root: &Path, state_root: &Path) -> Result<(), String> {
    let dirs = paths(spec, run_root, state_root);
    for v in &spec.volumes {
        let dir = dirs.get(&v.name).cloned().unwrap_or_default();
        if let Some(e) = &v.empty_dir {
            if e.medium == "Memory" {
                std::fs::create_dir_all(&dir).map_err(|e| format!("volume {}: {e}", v.name))?;
                let size = parse_memory_bytes(&e.size_limit)
                    .map_err(|e| format!("volume {}: {e}", v.name))?;
                let data = format!("size={size},mode=1777");
                let already = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
                    m.lines()
                        .any(|l| l.split(' ').nth(4) == Some(&dir.display().to_string()))
                });
                if !already {
                    mount(
                        Some("tmpfs"),
                        &dir,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        Some(data.as_str()),
                    )
                    .map_err(|e| format!("volume {}: mounting its tmpfs: {e}", v.name))?;
                }
            } else {
                std::fs::create_dir_all(&dir).map_err(|e| format!("volume {}: {e}", v.name))?;
                // Writable by any container user, as Kubernetes makes emptyDir.
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
                    .map_err(|e| format!("volume {}: {e}", v.name))?;
            }
        } else if let Some(cf) = &v.config_file {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| format!("volume {}: {e}", v.name))?;
            for f in &cf.files {
                let bytes = if f.content_base64.is_empty() {
                    f.content.clone().into_bytes()
                } else {
                    base64::engine::general_purpose::STANDARD
                        .decode(&f.content_base64)
                        .map_err(|e| format!("volume {} file {}: {e}", v.name, f.path))?
                };
                // Validation made the path relative and free of '..'.
                let path = dir.join(&f.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("volume {}: {e}", v.name))?;
                }
                std::fs::write(&path, bytes)
                    .map_err(|e| format!("volume {} file {}: {e}", v.name, f.path))?;
                let mode = if f.mode == 0 { 0o644 } else { f.mode };
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .map_err(|e| format!("volume {} file {}: {e}", v.name, f.path))?;
            }
        } else {
            return Err(format!(
                "volume {}: only emptyDir and configFile volumes are available in this agent build",
                v.name
            ));
        }
    }
    Ok(())
}

/// Unmounts the group's in-memory volumes (before its run directory is removed).
pub fn unmount_all(run_root: &Path) {
    for e in std::fs::read_dir(run_root.join("volumes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        match umount2(&e.path(), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(err) => {
                tracing::warn!(volume = %e.path().display(), error = %err, "unmounting volume")
            }
        }
    }
}
