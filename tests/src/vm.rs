//! Building blocks of the vm sandbox's end-to-end tests (issue 15): the guest image the
//! tests boot, an agent that may run vm groups under TCG, waits long enough for an
//! emulated guest, and the host's view of a group's QEMU.
//!
//! The guest image is named by `ECI_TEST_GUEST_DIR` (`scripts/guest-image.sh` builds it;
//! `.ci/run` does so in CI). Without it the tests skip, unless `CI` is set, where they
//! fail. Guest CPU work is 6–15× slower under TCG than on the host, so waits are long.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::scenario::{busybox_agent_with, logs, phase};
use crate::{Agent, text, wait_for};

/// Longest wait for a VM group to get somewhere (boot, first output, exit).
pub const VM_WAIT: Duration = Duration::from_secs(240);

/// The guest image the tests boot, or `None` to skip.
pub fn guest_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ECI_TEST_GUEST_DIR").map(PathBuf::from);
    let ok = dir
        .as_ref()
        .is_some_and(|d| d.join("vmlinux").is_file() && d.join("initrd.img").is_file());
    if ok {
        return dir;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must build the guest image (scripts/guest-image.sh) and set ECI_TEST_GUEST_DIR"
    );
    eprintln!("skipped: no guest image (set ECI_TEST_GUEST_DIR, see scripts/guest-image.sh)");
    None
}

/// The guest kernel's release, from the image's manifest.
pub fn guest_release(dir: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    m["kernel_release"]
        .as_str()
        .expect("kernel_release")
        .to_string()
}

/// The `[vm]` TOML of a test agent: the guest image, TCG allowed.
pub fn vm_toml(dir: &Path) -> String {
    format!(
        "\n[vm]\nguest_dir = {:?}\nallow_tcg = true\n",
        dir.display().to_string()
    )
}

/// Waits until the agent's probe boot is done and `vm` is among its sandbox kinds.
pub fn wait_vm_usable(agent: &Agent) {
    let ok = wait_for(VM_WAIT, || {
        let out = text(&agent.ctl(&["node"]));
        out.lines()
            .any(|l| l.starts_with("Sandbox kinds:") && l.contains("vm"))
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "vm never usable: {}",
        text(&agent.ctl(&["node"]))
    );
}

/// An agent with the busybox image that may run vm groups under TCG, once its probe
/// boot is done; `extra` is more TOML (e.g. a dev network).
pub fn vm_agent(dir: &Path, extra: &str) -> Agent {
    let agent = busybox_agent_with(&format!("{extra}{}", vm_toml(dir)));
    wait_vm_usable(&agent);
    agent
}

/// Waits up to [`VM_WAIT`] for the group to reach `want`; panics with its description.
pub fn wait_phase_vm(agent: &Agent, name: &str, want: &str) {
    let got = wait_for(VM_WAIT, || (phase(agent, name) == want).then_some(()));
    assert!(
        got.is_some(),
        "group {name} never reached {want}: {}\n{}\n{}",
        phase(agent, name),
        text(&agent.ctl(&["describe", name])),
        tail(&agent.log(), 40)
    );
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits up to [`VM_WAIT`] for `needle` in a container's log; returns the log.
pub fn wait_log_vm(agent: &Agent, name: &str, container: &str, needle: &str) -> String {
    wait_for(VM_WAIT, || {
        let l = logs(agent, name, container);
        l.contains(needle).then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "{container} never logged {needle:?}: {}\n{}",
            logs(agent, name, container),
            text(&agent.ctl(&["describe", name]))
        )
    })
}

/// Host processes that are QEMU and whose command line names the group's VM
/// (`-name eci-<id>`).
pub fn qemu_of(id: &str) -> Vec<u32> {
    let needle = format!("eci-{id}");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_qemu = args
            .first()
            .is_some_and(|a| String::from_utf8_lossy(a).contains("qemu-system"));
        if is_qemu && args.iter().any(|a| String::from_utf8_lossy(a) == needle) {
            found.push(pid);
        }
    }
    found
}

/// Deletes the group and checks that nothing of its VM is left on the host: no QEMU,
/// no cgroup, no run directory (which held the netns pins, sockets and console log).
pub fn delete_vm(agent: &Agent, name: &str) {
    let id = crate::scenario::group_id(agent, name);
    let out = agent.ctl(&["delete", name, "--wait", "--timeout", "120s"]);
    assert!(out.status.success(), "delete {name}: {}", text(&out));
    let gone = wait_for(Duration::from_secs(30), || {
        qemu_of(&id).is_empty().then_some(())
    });
    assert!(gone.is_some(), "QEMU left running: {:?}", qemu_of(&id));
    let left: Vec<_> = crate::cgroup_dirs(&agent.cgroup_parent())
        .into_iter()
        .filter(|d| d.display().to_string().contains(&id))
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    let ns = crate::netspec::group_netns(agent, &id);
    let run = ns.parent().and_then(|p| p.parent()).expect("group dir");
    assert!(!run.exists(), "run directory left: {}", run.display());
}
