//! The VM sandbox (issue 15) end to end: `sandbox: vm` groups run in a QEMU microVM with
//! the guest kernel of the guest image (`scripts/guest-image.sh`), under TCG here
//! (`[vm] allow_tcg = true`; this machine's KVM cannot boot a guest, see DESIGN.md).
//!
//! Needs root and the guest image: `ECI_TEST_GUEST_DIR` names it (CI builds it in
//! `.ci/run`). Without it the tests skip, unless `CI` is set, where they fail.
//!
//! Guest CPU work is 6–15× slower under TCG than on the host, so waits are long.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use eci_tests::netspec::{Net, SgRule, group_netns, wait_ip_addresses};
use eci_tests::scenario::{busybox_agent_with, group, group_id, logs, phase};
use eci_tests::vpc::{BannerServer, DevNet, banner_in, links_in};
use eci_tests::{Agent, cgroup_dirs, free_port, text, wait_for};

/// Longest wait for a VM group to get somewhere (boot, first output, exit).
const VM_WAIT: Duration = Duration::from_secs(180);

/// The guest image the tests boot, or `None` to skip.
fn guest_dir() -> Option<PathBuf> {
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
fn guest_release(dir: &std::path::Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    m["kernel_release"]
        .as_str()
        .expect("kernel_release")
        .to_string()
}

/// An agent with the busybox image that may run vm groups under TCG; `extra` is more
/// TOML (e.g. a dev network).
fn vm_agent(dir: &std::path::Path, extra: &str) -> Agent {
    busybox_agent_with(&format!(
        "{extra}\n[vm]\nguest_dir = {:?}\nallow_tcg = true\n",
        dir.display().to_string()
    ))
}

fn apply_ok(agent: &Agent, name: &str, spec: &str) {
    // A fresh agent probe-boots the guest image first (TCG: up to a minute), refusing
    // vm groups until it knows.
    let out = wait_for(VM_WAIT, || {
        let out = agent.apply(name, spec);
        let probing = text(&out).contains("still being probed");
        if probing {
            std::thread::sleep(Duration::from_secs(1));
        }
        (!probing).then_some(out)
    })
    .expect("the vm sandbox is probed");
    assert!(out.status.success(), "apply {name}: {}", text(&out));
}

fn wait_phase_vm(agent: &Agent, name: &str, want: &str) {
    let got = wait_for(VM_WAIT, || (phase(agent, name) == want).then_some(()));
    assert!(
        got.is_some(),
        "group {name} never reached {want}: {}\n{}",
        phase(agent, name),
        text(&agent.ctl(&["describe", name]))
    );
}

fn wait_log_vm(agent: &Agent, name: &str, container: &str, needle: &str) -> String {
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

/// Host processes whose command line names the group's VM (`-name eci-<id>`).
fn qemu_of(id: &str) -> Vec<u32> {
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
        if is_qemu
            && args
                .iter()
                .any(|a| String::from_utf8_lossy(a).contains(&needle))
        {
            found.push(pid);
        }
    }
    found
}

/// Deletes the group and checks that nothing of its VM is left on the host: no QEMU,
/// no cgroup, no run directory (which held the netns pins, sockets and console log).
fn delete_and_check_clean(agent: &Agent, name: &str, id: &str) {
    assert!(!qemu_of(id).is_empty(), "the group's QEMU runs");
    let out = agent.ctl(&["delete", name, "--wait", "--timeout", "120s"]);
    assert!(out.status.success(), "delete: {}", text(&out));
    let gone = wait_for(Duration::from_secs(30), || {
        qemu_of(id).is_empty().then_some(())
    });
    assert!(gone.is_some(), "QEMU left running: {:?}", qemu_of(id));
    let parent = agent.cgroup_parent();
    let left: Vec<_> = cgroup_dirs(&parent)
        .into_iter()
        .filter(|d| d.display().to_string().contains(id))
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    let ns = group_netns(agent, id);
    let run = ns.parent().and_then(|p| p.parent()).expect("group dir");
    assert!(!run.exists(), "run directory left: {}", run.display());
}

#[test]
fn a_two_container_vm_group_runs_on_the_guest_kernel_with_exec_logs_and_metrics() {
    let Some(dir) = guest_dir() else { return };
    let release = guest_release(&dir);
    let host_release = nix::sys::utsname::uname()
        .expect("uname")
        .release()
        .to_string_lossy()
        .to_string();
    let agent = vm_agent(&dir, "");
    let spec = group(
        "vmpair",
        "Always",
        &[
            (
                "server",
                "echo kernel:$(uname -r); echo procs:$(ls /proc | grep -c '^[0-9]'); \
                 echo parts:$(cat /proc/partitions | tail -n +3 | wc -l); \
                 echo hello-from-vm | nc -l -p 8080; echo served; sleep 3600",
            ),
            (
                "client",
                "sleep 3; echo \"client got: $(nc 127.0.0.1 8080)\"; sleep 3600",
            ),
        ],
        "sandbox: vm\n",
    );
    apply_ok(&agent, "vmpair", &spec);
    wait_phase_vm(&agent, "vmpair", "Running");
    let id = group_id(&agent, "vmpair");
    let server = wait_log_vm(&agent, "vmpair", "server", "procs:");
    assert!(
        server.contains(&format!("kernel:{release}")) && release != host_release,
        "the container runs on the guest kernel {release}, not the host's {host_release}: {server}"
    );
    let procs: u32 = server
        .lines()
        .find_map(|l| l.split("procs:").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .expect("procs");
    assert!(procs <= 4, "host processes are visible: {server}");
    wait_log_vm(&agent, "vmpair", "client", "client got: hello-from-vm");
    wait_log_vm(&agent, "vmpair", "server", "served");

    // Exec runs in the guest too.
    let out = agent.ctl(&[
        "exec", "vmpair", "-c", "server", "--", "sh", "-c", "uname -r",
    ]);
    assert!(out.status.success(), "exec: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), release);
    let out = agent.ctl(&["exec", "vmpair", "-c", "client", "--", "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));

    // Metrics come from inside the guest: the server container uses some memory.
    let top = wait_for(Duration::from_secs(60), || {
        let t = text(&agent.ctl(&["top", "vmpair"]));
        (t.contains("server") && t.contains("client")).then_some(t)
    })
    .expect("top lists both containers");
    assert!(top.contains("server"), "{top}");

    let g = agent.get_json("vmpair").expect("get");
    assert_eq!(g["spec"]["sandbox"], "vm", "{g}");
    delete_and_check_clean(&agent, "vmpair", &id);
}

#[test]
fn a_container_over_its_memory_limit_in_the_guest_is_oom_killed() {
    let Some(dir) = guest_dir() else { return };
    let agent = vm_agent(&dir, "");
    let spec = format!(
        "{}  resources: {{memory: 32Mi}}\n",
        group(
            "vmhog",
            "Never",
            &[("eat", "exec dd if=/dev/zero of=/dev/null bs=256M count=1")],
            "sandbox: vm\n"
        )
    );
    apply_ok(&agent, "vmhog", &spec);
    wait_phase_vm(&agent, "vmhog", "Failed");
    let c = &agent.get_json("vmhog").expect("get")["status"]["containerStatuses"][0];
    assert_eq!(c["reason"], "OOMKilled", "{c}");
    let id = group_id(&agent, "vmhog");
    let out = agent.ctl(&["delete", "vmhog", "--wait", "--timeout", "120s"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        wait_for(Duration::from_secs(30), || qemu_of(&id)
            .is_empty()
            .then_some(()))
        .is_some()
    );
}

#[test]
fn a_vm_group_is_reached_through_its_tap_at_the_group_address() {
    let Some(dir) = guest_dir() else { return };
    let dev = DevNet::new();
    let agent = vm_agent(&dir, &dev.config());
    let port = free_port();
    let _host = BannerServer::start(None, SocketAddr::from(([0, 0, 0, 0], port)), "hello-host")
        .expect("host server");
    // The security group stays on the host side of the tap: 8080 is let in, 8081 not.
    let rules = Net {
        rules: vec![SgRule::allow_tcp_in(8080, &dev.subnet)],
        ..Default::default()
    };
    let script = format!(
        "ip -o addr show eth0; echo hello-from-guest > /tmp/b; \
         while true; do nc -l -p 8080 < /tmp/b; done & \
         while true; do nc -l -p 8081 < /tmp/b; done & \
         sleep 1; echo \"host said: $(nc {} {port})\"; sleep 3600",
        dev.gateway
    );
    apply_ok(
        &agent,
        "vmnet",
        &group(
            "vmnet",
            "Always",
            &[("app", &script)],
            &format!("sandbox: vm\n{}", rules.yaml()),
        ),
    );
    wait_phase_vm(&agent, "vmnet", "Running");
    let addrs = wait_ip_addresses(&agent, "vmnet");
    let addr = addrs.first().cloned().expect("an address");
    let l = wait_log_vm(&agent, "vmnet", "app", "host said:");
    assert!(l.contains(&addr), "the guest's eth0 carries {addr}: {l}");
    assert!(l.contains("host said: hello-host"), "{l}");
    // From the host side of the dev bridge to the guest, through the group's tap.
    let target: SocketAddr = format!("{addr}:8080").parse().expect("addr");
    let got = wait_for(Duration::from_secs(60), || {
        banner_in(
            std::path::Path::new("/proc/self/ns/net"),
            target,
            Duration::from_secs(5),
        )
        .filter(|b| b.contains("hello-from-guest"))
    });
    assert!(
        got.is_some(),
        "the host never reached the guest at {target}"
    );
    let id = group_id(&agent, "vmnet");
    let ns = group_netns(&agent, &id);
    let links = links_in(Some(&ns)).expect("links of the group netns");
    assert!(
        links.iter().any(|l| l.name == "tap0"),
        "the group netns holds the tap: {links:?}"
    );
    delete_and_check_clean(&agent, "vmnet", &id);
}
