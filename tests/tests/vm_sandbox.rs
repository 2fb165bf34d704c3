//! The VM sandbox (issue 15) end to end: `sandbox: vm` groups run in a QEMU microVM with
//! the guest kernel of the guest image (`scripts/guest-image.sh`), under TCG here
//! (`[vm] allow_tcg = true`; this machine's KVM cannot boot a guest, see DESIGN.md).
//!
//! Needs root and the guest image (`ECI_TEST_GUEST_DIR`, see `eci_tests::vm`).

use std::net::SocketAddr;
use std::time::Duration;

use eci_tests::netspec::{Net, SgRule, group_netns, wait_ip_addresses};
use eci_tests::scenario::{group, group_id};
use eci_tests::vm::{
    delete_vm, guest_dir, guest_release, qemu_of, vm_agent, wait_log_vm, wait_phase_vm,
};
use eci_tests::vpc::{BannerServer, DevNet, banner_in, links_in};
use eci_tests::{Agent, free_port, text, wait_for};

fn apply_ok(agent: &Agent, name: &str, spec: &str) {
    let out = agent.apply(name, spec);
    assert!(out.status.success(), "apply {name}: {}", text(&out));
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
    assert!(!qemu_of(&id).is_empty(), "the group\'s QEMU runs");
    delete_vm(&agent, "vmpair");
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
    assert!(!qemu_of(&id).is_empty(), "the group\'s QEMU runs");
    delete_vm(&agent, "vmnet");
}
