//! Sysctls a group may set, and whether a name exists on this kernel, so that a spec that
//! is accepted can run: the runtime writes each one when it starts a container, and a
//! name the kernel does not have would fail every start.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::Errors;
use super::quote::quote;

/// The namespaced sysctls a group may set (seed 004): they only affect the group's own
/// IPC and network namespaces.
pub(crate) fn allowed(name: &str) -> bool {
    components(name).is_some()
        && (name.starts_with("kernel.shm")
            || name.starts_with("kernel.msg")
            || name == "kernel.sem"
            || name.starts_with("fs.mqueue.")
            || (name.starts_with("net.") && name != "net.core.rmem_max"))
}

/// The `/proc/sys` path components of a name: dot-separated, each non-empty and made of
/// letters, digits, `_` and `-` only, so no component can be `.`, `..` or hold a `/`.
fn components(name: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = name.split('.').collect();
    let ok = parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    ok.then_some(parts)
}

fn path_of(name: &str) -> Option<PathBuf> {
    let mut p = PathBuf::from("/proc/sys");
    for c in components(name)? {
        p.push(c);
    }
    Some(p)
}

/// A sysctl exists when its `/proc/sys` entry is a file someone may write.
fn settable(p: &PathBuf) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o222 != 0)
}

/// Refuses each allowed name (`(index, name)`) that this kernel does not have. `net.*`
/// names are looked up in a fresh network namespace, as the group's will be (some exist
/// only in the host's); the others are IPC-namespace sysctls, the same in every one.
pub(super) fn check_exist(names: &[(usize, &str)], errs: &mut Errors) {
    let paths: Vec<(usize, &str, PathBuf)> = names
        .iter()
        .filter_map(|&(i, n)| Some((i, n, path_of(n)?)))
        .collect();
    let net: Vec<PathBuf> = paths
        .iter()
        .filter(|(_, n, _)| n.starts_with("net."))
        .map(|(_, _, p)| p.clone())
        .collect();
    let mut net_found = in_fresh_netns(net).into_iter();
    for (i, n, p) in &paths {
        let found = if n.starts_with("net.") {
            net_found.next().unwrap_or(false)
        } else {
            settable(p)
        };
        if !found {
            errs.add(
                format!("securityContext.sysctls[{i}].name"),
                format!(
                    "{} does not exist on this node's kernel (or is read-only) in a group's namespaces",
                    quote(n)
                ),
            );
        }
    }
}

/// Whether each path is a settable sysctl in a new network namespace. The namespace is
/// made by a short-lived thread (`unshare` moves only the calling thread) and goes away
/// with it. If it cannot be made, the host's entries answer: the names are the same but
/// for a few host-only ones.
fn in_fresh_netns(paths: Vec<PathBuf>) -> Vec<bool> {
    if paths.is_empty() {
        return Vec::new();
    }
    let host = paths.clone();
    let answer = std::thread::Builder::new()
        .name("sysctl-check".into())
        .spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .ok()
                .map(|()| paths.iter().map(settable).collect::<Vec<_>>())
        })
        .ok()
        .and_then(|t| t.join().ok())
        .flatten();
    answer.unwrap_or_else(|| host.iter().map(settable).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist() {
        for ok in [
            "kernel.shmmax",
            "kernel.msgmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
            "net.ipv4.ip_forward",
        ] {
            assert!(allowed(ok), "{ok}");
        }
        for no in [
            "net.core.rmem_max",
            "kernel.pid_max",
            "vm.swappiness",
            "fs.file-max",
            "kernel.semx",
            "net.ipv4.",
            "net..ipv4",
            "net.ipv4.conf.all.x/../../y",
            "net",
            "",
        ] {
            assert!(!allowed(no), "{no}");
        }
    }

    #[test]
    fn names_the_kernel_lacks_are_refused() {
        let names = [
            (0, "kernel.shmmax"),
            (1, "net.ipv4.ip_forward"),
            (2, "kernel.shm"),
            (3, "net.ipv4.no_such_thing"),
            (4, "net.ipv4"),
            (5, "kernel.shm_rmid_forced"),
        ];
        let mut errs = Errors::default();
        check_exist(&names, &mut errs);
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "securityContext.sysctls[2].name",
                "securityContext.sysctls[3].name",
                "securityContext.sysctls[4].name"
            ],
            "{:?}",
            errs.0
        );
    }
}
