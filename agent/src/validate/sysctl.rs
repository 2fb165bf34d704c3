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

/// What a throwaway namespace said about one sysctl.
enum Outcome {
    Set,
    Missing,
    Refused(std::io::Error),
}

/// Refuses each allowed sysctl (`(index, name, value)`) that this kernel does not have,
/// or whose value it does not take. Both are tried where the group's will be set: in a
/// fresh network and IPC namespace (every allowed sysctl belongs to one of the two, and
/// some `net.*` names exist only in the host's), made by a short-lived thread and gone
/// with it. If those cannot be made, the host's entries say only whether a name exists
/// (nothing is ever written on the host).
pub(super) fn check_on_kernel(sysctls: &[(usize, &str, &str)], errs: &mut Errors) {
    let items: Vec<(usize, &str, &str, PathBuf)> = sysctls
        .iter()
        .filter_map(|&(i, n, v)| Some((i, n, v, path_of(n)?)))
        .collect();
    if items.is_empty() {
        return;
    }
    let writes: Vec<(PathBuf, String)> = items
        .iter()
        .map(|(_, _, v, p)| (p.clone(), v.to_string()))
        .collect();
    let outcomes = in_fresh_namespaces(writes).unwrap_or_else(|| {
        items
            .iter()
            .map(|(_, _, _, p)| {
                if settable(p) {
                    Outcome::Set
                } else {
                    Outcome::Missing
                }
            })
            .collect()
    });
    for ((i, n, v, _), outcome) in items.iter().zip(outcomes) {
        match outcome {
            Outcome::Set => {}
            Outcome::Missing => errs.add(
                format!("securityContext.sysctls[{i}].name"),
                format!(
                    "{} does not exist on this node's kernel (or is read-only) in a group's namespaces",
                    quote(n)
                ),
            ),
            Outcome::Refused(e) => errs.add(
                format!("securityContext.sysctls[{i}].value"),
                format!("{} is refused by this node's kernel for {n}: {e}", quote(v)),
            ),
        }
    }
}

/// Writes each value in a new network and IPC namespace; `None` when they cannot be made.
fn in_fresh_namespaces(writes: Vec<(PathBuf, String)>) -> Option<Vec<Outcome>> {
    use nix::sched::CloneFlags;
    std::thread::Builder::new()
        .name("sysctl-check".into())
        .spawn(move || {
            // Only this thread moves; it writes nothing unless the move succeeded.
            nix::sched::unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC).ok()?;
            Some(
                writes
                    .iter()
                    .map(|(p, v)| {
                        if !settable(p) {
                            return Outcome::Missing;
                        }
                        match std::fs::write(p, v) {
                            Ok(()) => Outcome::Set,
                            Err(e) => Outcome::Refused(e),
                        }
                    })
                    .collect(),
            )
        })
        .ok()?
        .join()
        .ok()
        .flatten()
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
    fn names_and_values_the_kernel_lacks_are_refused() {
        let host_shmmni = std::fs::read_to_string("/proc/sys/kernel/shmmni").expect("shmmni");
        let host_forward =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("ip_forward");
        let sysctls = [
            (0, "kernel.shmmni", "4000"),
            (1, "net.ipv4.ip_forward", "1"),
            (2, "kernel.shm", "1"),
            (3, "net.ipv4.no_such_thing", "1"),
            (4, "net.ipv4", "1"),
            (5, "kernel.shm_rmid_forced", "1"),
            (6, "net.ipv4.ip_forward", "yes"),
            (7, "kernel.msgmax", "-5x"),
        ];
        let mut errs = Errors::default();
        check_on_kernel(&sysctls, &mut errs);
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "securityContext.sysctls[2].name",
                "securityContext.sysctls[3].name",
                "securityContext.sysctls[4].name",
                "securityContext.sysctls[6].value",
                "securityContext.sysctls[7].value",
            ],
            "{:?}",
            errs.0
        );
        // The writes went to throwaway namespaces, not to the host.
        assert_eq!(
            std::fs::read_to_string("/proc/sys/kernel/shmmni").expect("shmmni"),
            host_shmmni
        );
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("ip_forward"),
            host_forward
        );
    }
}
