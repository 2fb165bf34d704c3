//! Volume rules: names, exactly one source, refused host paths, sizes, config files.

use std::collections::HashSet;

use eci_api::v1::Volume;

use super::group::parse_opt;
use super::limits::*;
use super::quote::quote;
use super::{Errors, check_name, paths};
use crate::quantity::parse_memory_bytes;

/// What the container checks need to know about the group's volumes.
#[derive(Debug, Default)]
pub(super) struct VolumeSet {
    pub names: HashSet<String>,
    /// Sum of the size limits of in-memory emptyDirs.
    pub memory_bytes: u64,
}

pub(super) fn check_all(volumes: &[Volume], errs: &mut Errors) -> VolumeSet {
    let mut set = VolumeSet::default();
    for (i, v) in volumes.iter().enumerate() {
        let path = format!("volumes[{i}]");
        if let Err(m) = check_name(&v.name) {
            errs.add(format!("{path}.name"), m.to_string());
        } else if !set.names.insert(v.name.clone()) {
            errs.add(
                format!("{path}.name"),
                format!("{} is used by another volume", quote(&v.name)),
            );
        }
        let sources = [
            v.empty_dir.is_some(),
            v.config_file.is_some(),
            v.disk.is_some(),
            v.nfs.is_some(),
            v.host_path.is_some(),
        ];
        if v.host_path.is_some() {
            errs.add(
                format!("{path}.hostPath"),
                "is not supported: groups cannot mount host paths",
            );
        }
        match sources.iter().filter(|s| **s).count() {
            1 => {}
            0 => errs.add(&path, "set exactly one of emptyDir, configFile, disk, nfs"),
            _ => errs.add(&path, "set only one of emptyDir, configFile, disk, nfs"),
        }
        if let Some(e) = &v.empty_dir {
            let size = parse_opt(
                &e.size_limit,
                &format!("{path}.emptyDir.sizeLimit"),
                parse_memory_bytes,
                errs,
            );
            match e.medium.as_str() {
                "" => {}
                "Memory" => match size {
                    Some(s) => set.memory_bytes = set.memory_bytes.saturating_add(s),
                    None if e.size_limit.is_empty() => errs.add(
                        format!("{path}.emptyDir.sizeLimit"),
                        "is required for medium Memory (it counts against the group memory)",
                    ),
                    None => {}
                },
                other => errs.add(
                    format!("{path}.emptyDir.medium"),
                    format!("{} is not one of \"\" (disk), Memory", quote(other)),
                ),
            }
        }
        if let Some(cf) = &v.config_file {
            if cf.files.is_empty() {
                errs.add(
                    format!("{path}.configFile.files"),
                    "at least one file is required",
                );
            }
            if cf.files.len() > MAX_CONFIG_FILES {
                errs.add(
                    format!("{path}.configFile.files"),
                    format!(
                        "{} files is over the limit of {MAX_CONFIG_FILES}",
                        cf.files.len()
                    ),
                );
            }
            let mut seen = HashSet::new();
            let mut bytes = 0usize;
            for (j, f) in cf.files.iter().enumerate() {
                let fpath = format!("{path}.configFile.files[{j}]");
                match paths::relative(&f.path) {
                    Err(e) => errs.add(format!("{fpath}.path"), e.to_string()),
                    Ok(n) => {
                        if !seen.insert(n) {
                            errs.add(
                                format!("{fpath}.path"),
                                format!("{} is given twice", quote(&f.path)),
                            );
                        }
                    }
                }
                // Decoded size: base64 holds 3 bytes in 4 characters.
                bytes = bytes
                    .saturating_add(f.content.len())
                    .saturating_add(f.content_base64.len() / 4 * 3);
                if !f.content.is_empty() && !f.content_base64.is_empty() {
                    errs.add(&fpath, "set content or contentBase64, not both");
                }
                if !f.content_base64.is_empty() && !is_base64(&f.content_base64) {
                    errs.add(format!("{fpath}.contentBase64"), "is not valid base64");
                }
                if f.mode > 0o777 {
                    errs.add(
                        format!("{fpath}.mode"),
                        format!("{:o} is over 0777", f.mode),
                    );
                }
            }
            if bytes > MAX_CONFIG_BYTES {
                errs.add(
                    format!("{path}.configFile.files"),
                    format!("the files hold {bytes} bytes, over the limit of {MAX_CONFIG_BYTES}"),
                );
            }
        }
        if let Some(d) = &v.disk {
            if d.device.len() > MAX_PATH {
                errs.add(
                    format!("{path}.disk.device"),
                    format!("{} is longer than {MAX_PATH} bytes", quote(&d.device)),
                );
            } else if (!d.device.starts_with("/dev/")
                && (d.device.is_empty() || d.device.contains('/')))
                || d.device.split('/').any(|c| c == "..")
            {
                errs.add(
                    format!("{path}.disk.device"),
                    "must be a /dev path or a disk serial",
                );
            }
            if !matches!(d.fs_type.as_str(), "" | "ext4" | "xfs") {
                errs.add(
                    format!("{path}.disk.fsType"),
                    format!("{} is not one of ext4, xfs", quote(&d.fs_type)),
                );
            }
        }
        if let Some(n) = &v.nfs {
            if n.server.is_empty() || n.server.len() > MAX_SERVER || n.server.contains(['/', ' ']) {
                errs.add(
                    format!("{path}.nfs.server"),
                    "must be a host name or address of at most 253 bytes",
                );
            }
            if paths::absolute(&n.path).is_err() {
                errs.add(
                    format!("{path}.nfs.path"),
                    "must be an absolute export path",
                );
            }
        }
    }
    set
}

fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}
