//! QEMU processes whose group is gone. A vm group's QEMU runs with `-name eci-<group
//! id>` and its sockets under `<run>/groups/<id>/vm/` (contract "Host shim in vm
//! mode"); a QEMU the shim could not stop (a shim killed mid-teardown, an agent crash
//! in a delete) would otherwise hold its memory forever. Found by `/proc/*/cmdline`
//! only, and only a process that is QEMU, carries such a name and points into this
//! agent's run directory is ever signalled: another agent's VMs (tests run several on
//! one host) and anything else stay untouched.

use std::collections::HashSet;
use std::path::Path;

/// A QEMU of this agent's groups: (pid, group id).
pub fn qemus(run_dir: &Path) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if let Some(id) = group_of(&raw, run_dir) {
            out.push((pid, id));
        }
    }
    out
}

/// The group id of a QEMU command line (NUL-separated, as `/proc/PID/cmdline`), or
/// None when it is not a QEMU of a group under `run_dir`.
pub fn group_of(cmdline: &[u8], run_dir: &Path) -> Option<String> {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let exe = args.first()?;
    let base = exe.rsplit('/').next().unwrap_or(exe);
    if !base.starts_with("qemu-system-") {
        return None;
    }
    let name = args
        .iter()
        .position(|a| a == "-name")
        .and_then(|i| args.get(i + 1))?;
    // `-name eci-ID`, `-name guest=eci-ID,debug-threads=on`.
    let name = name.strip_prefix("guest=").unwrap_or(name);
    let id = name.split(',').next()?.strip_prefix("eci-")?;
    let valid = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    if !valid {
        return None;
    }
    let dir = run_dir.join("groups").join(id);
    let dir = format!("{}/", dir.display());
    args.iter()
        .any(|a| a.contains(&dir))
        .then(|| id.to_string())
}

/// Kills the QEMU of every group not in `live`; returns the (pid, id) killed.
pub fn kill_orphans(run_dir: &Path, live: &HashSet<String>) -> Vec<(i32, String)> {
    let mut killed = Vec::new();
    for (pid, id) in qemus(run_dir) {
        if live.contains(&id) {
            continue;
        }
        tracing::warn!(group_id = %id, pid, "killing the QEMU of a group that is gone");
        kill(pid);
        killed.push((pid, id));
    }
    killed
}

/// Kills the QEMU processes of group `id` (its leftovers are being removed).
pub fn kill_of(run_dir: &Path, id: &str) {
    for (pid, of) in qemus(run_dir) {
        if of == id {
            tracing::warn!(group_id = %id, pid, "killing a leftover QEMU");
            kill(pid);
        }
    }
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(args: &[&str]) -> Vec<u8> {
        args.join("\0").into_bytes()
    }

    #[test]
    fn only_a_qemu_of_this_run_dir_is_a_group_vm() {
        let run = Path::new("/run/eci");
        let sock = "socket,id=ctl,path=/run/eci/groups/0a1b2c3d4e5f6071/vm/ctl.sock,server=on";
        let q = cmdline(&[
            "/usr/bin/qemu-system-x86_64",
            "-name",
            "eci-0a1b2c3d4e5f6071",
            "-chardev",
            sock,
        ]);
        assert_eq!(group_of(&q, run).as_deref(), Some("0a1b2c3d4e5f6071"));
        let guest_eq = cmdline(&[
            "qemu-system-x86_64",
            "-name",
            "guest=eci-0a1b2c3d4e5f6071,debug-threads=on",
            "-chardev",
            sock,
        ]);
        assert_eq!(
            group_of(&guest_eq, run).as_deref(),
            Some("0a1b2c3d4e5f6071")
        );
        // Another agent's run dir, another program, the probe, a hostile name.
        assert_eq!(group_of(&q, Path::new("/tmp/other/run/eci")), None);
        let not_qemu = cmdline(&["/bin/sleep", "-name", "eci-0a1b2c3d4e5f6071", sock]);
        assert_eq!(group_of(&not_qemu, run), None);
        let probe = cmdline(&["qemu-system-x86_64", "-name", "eci-probe"]);
        assert_eq!(group_of(&probe, run), None);
        let dots = cmdline(&[
            "qemu-system-x86_64",
            "-name",
            "eci-../../x",
            "-chardev",
            "path=/run/eci/groups/../../x/",
        ]);
        assert_eq!(group_of(&dots, run), None);
        assert_eq!(group_of(b"", run), None);
    }

    /// A stand-in QEMU (bash renamed by `exec -a`, blocked in its `read` builtin, so
    /// no child outlives it) of a group under a temp run dir: killed once its group
    /// is not live, left alone while it is.
    #[test]
    fn an_orphan_is_killed_and_a_live_vm_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let id = "00c0ffee00c0ffee";
        let sock = format!("path={}/groups/{id}/vm/ctl.sock", run.display());
        let script = format!(
            "exec -a /usr/bin/qemu-system-x86_64 bash -c 'read -t 60 x' stand-in -name eci-{id} {sock}"
        );
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn bash");
        let pid = child.id() as i32;
        let seen = (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            qemus(&run).iter().any(|(p, _)| *p == pid)
        });
        assert!(seen, "the stand-in is found: {:?}", qemus(&run));
        let live: HashSet<String> = [id.to_string()].into();
        assert!(
            kill_orphans(&run, &live).is_empty(),
            "a live group's VM stays"
        );
        assert!(kill_orphans(&dir.path().join("other"), &HashSet::new()).is_empty());
        let killed = kill_orphans(&run, &HashSet::new());
        assert_eq!(killed, vec![(pid, id.to_string())]);
        let status = child.wait().expect("wait");
        assert!(!status.success(), "killed: {status:?}");
    }
}
