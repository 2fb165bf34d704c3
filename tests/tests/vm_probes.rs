//! Probes and lifecycle hooks of a vm group (issue 15), end to end under TCG: httpGet
//! and tcpSocket actions are made from the group's netns on the host, where the group's
//! address is no longer (the guest holds it), so they go from `br0`'s host-only probe
//! source (192.0.0.8) over the bridge to the guest (docs/vm.md, "Probes and hooks");
//! exec actions run in the guest through the shim.
//!
//! Needs root and the guest image (`ECI_TEST_GUEST_DIR`, see tests/tests/vm_sandbox.rs);
//! skipped without it unless `CI` is set.

use std::net::SocketAddr;
use std::time::Duration;

use eci_tests::netspec::{Net, SgRule, group_netns, wait_ip_addresses};
use eci_tests::scenario::{IMAGE, group_id};
use eci_tests::vm::{VM_WAIT, guest_dir, vm_agent, wait_phase_vm};
use eci_tests::vpc::{DevNet, banner_in};
use eci_tests::{Agent, text, wait_for};

fn status(agent: &Agent, group: &str, container: &str) -> serde_json::Value {
    let g = agent.get_json(group).unwrap_or_default();
    g["status"]["containerStatuses"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == container).cloned())
        .unwrap_or_default()
}

fn events(agent: &Agent, group: &str) -> String {
    text(&agent.ctl(&["events", "--group", group]))
}

fn wait_status(
    agent: &Agent,
    group: &str,
    container: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let ok = wait_for(VM_WAIT, || {
        check(&status(agent, group, container)).then_some(())
    });
    assert!(
        ok.is_some(),
        "{container}: never {what}: {}\n{}\n{}",
        status(agent, group, container),
        text(&agent.ctl(&["describe", group])),
        events(agent, group)
    );
}

/// A container of the spec: name, shell script, extra YAML (indented by two spaces).
fn container(name: &str, script: &str, extra: &str) -> String {
    format!(
        "- name: {name}\n  image: {IMAGE}\n  imagePullPolicy: IfNotPresent\n  command: [\"/bin/sh\", \"-c\"]\n  args: [{}]\n{extra}",
        serde_json::to_string(script).expect("json")
    )
}

#[test]
fn http_tcp_and_exec_probes_and_hooks_reach_the_guest() {
    let Some(dir) = guest_dir() else { return };
    let dev = DevNet::new();
    let agent = vm_agent(&dir, &dev.config());
    // The security group admits nothing the probes use: they do not cross it (as a
    // namespaced group's probes, which come over its loopback).
    let net = Net {
        rules: vec![SgRule::allow_tcp_in(22, &dev.subnet)],
        ..Default::default()
    };
    // web: httpd on 8080; ready once GET /hook answers 200 — the file its postStart
    // hook (an exec in the guest) writes; alive while 8080 accepts; started once an
    // exec probe sees the document root.
    let web = container(
        "web",
        "mkdir -p /www; busybox httpd -f -p 8080 -h /www & wait",
        "  startupProbe:\n    exec: {command: [test, -d, /www]}\n    periodSeconds: 1\n    failureThreshold: 120\n\
         \x20 readinessProbe:\n    httpGet: {path: /hook, port: 8080}\n    periodSeconds: 2\n    timeoutSeconds: 10\n\
         \x20 livenessProbe:\n    tcpSocket: {port: 8080}\n    periodSeconds: 2\n    timeoutSeconds: 10\n    failureThreshold: 3\n\
         \x20 lifecycle:\n    postStart:\n      exec: {command: [sh, -c, \"mkdir -p /www; echo hook-ran > /www/hook\"]}\n",
    );
    // flaky: nothing listens on 9090, so its liveness probe fails (the guest refuses
    // the connection) and the container is restarted; preStop leaves a marker its
    // TERM handler prints.
    let flaky = container(
        "flaky",
        "trap 'echo \"term handler saw: $(cat /tmp/marker)\"; exit 0' TERM; echo up; \
         while true; do sleep 0.2; done",
        "  livenessProbe:\n    tcpSocket: {port: 9090}\n    initialDelaySeconds: 2\n    periodSeconds: 2\n    timeoutSeconds: 10\n    failureThreshold: 2\n\
         \x20 lifecycle:\n    preStop:\n      exec: {command: [sh, -c, \"echo from-prestop > /tmp/marker\"]}\n",
    );
    let spec = format!(
        "name: vmprobe\nrestartPolicy: Always\ncpu: \"1\"\nmemory: 2Gi\nsandbox: vm\n\
         terminationGracePeriodSeconds: 20\n{}containers:\n{web}{flaky}",
        net.yaml()
    );
    let out = agent.apply("vmprobe", &spec);
    assert!(out.status.success(), "apply: {}", text(&out));
    wait_phase_vm(&agent, "vmprobe", "Running");

    // httpGet readiness (after the exec startup probe) passes: the postStart hook ran
    // in the guest and the agent reached the guest's httpd from the host.
    wait_status(&agent, "vmprobe", "web", "ready", |c| {
        c["ready"] == true && c["health"] == "healthy"
    });
    let out = agent.ctl(&["exec", "vmprobe", "-c", "web", "--", "cat", "/www/hook"]);
    assert_eq!(text(&out).trim(), "hook-ran", "{}", text(&out));

    // tcpSocket liveness against a closed port: Unhealthy, killed (preStop, TERM) and
    // restarted in the guest.
    wait_status(&agent, "vmprobe", "flaky", "restarted", |c| {
        c["restartCount"].as_u64().unwrap_or(0) >= 1
    });
    let ev = events(&agent, "vmprobe");
    assert!(ev.contains("Liveness probe failed: dial tcp"), "{ev}");
    assert!(ev.contains(":9090"), "{ev}");
    assert!(
        ev.contains("failed liveness probe, will be restarted"),
        "{ev}"
    );
    let prev = wait_for(Duration::from_secs(30), || {
        let l = text(&agent.ctl(&["logs", "vmprobe", "-c", "flaky", "--previous"]));
        l.contains("term handler saw").then_some(l)
    })
    .unwrap_or_else(|| text(&agent.ctl(&["logs", "vmprobe", "-c", "flaky", "--previous"])));
    assert!(
        prev.contains("term handler saw: from-prestop"),
        "the marker preStop wrote in the guest, printed by the TERM handler: {prev}"
    );
    // The passing liveness probe never killed web.
    let web = status(&agent, "vmprobe", "web");
    assert_eq!(web["restartCount"], 0, "{web}");

    // The security group still holds on the host side: from the dev bridge, 8080 of the
    // guest is dropped (only 22 is admitted), though the probes reach it.
    let addr = wait_ip_addresses(&agent, "vmprobe")
        .into_iter()
        .find(|a| !a.contains(':'))
        .expect("an IPv4 address");
    let target: SocketAddr = format!("{addr}:8080").parse().expect("addr");
    assert!(
        banner_in(
            std::path::Path::new("/proc/self/ns/net"),
            target,
            Duration::from_secs(3)
        )
        .is_none(),
        "the host reached {target} past the security group"
    );

    // The probe source stays in the group netns: its br0 holds 192.0.0.8, which is
    // not reported as a group address.
    let id = group_id(&agent, "vmprobe");
    let ns = group_netns(&agent, &id);
    assert!(ns.exists(), "{}", ns.display());
    let g = agent.get_json("vmprobe").expect("get");
    assert_eq!(g["status"]["sandboxKind"], "vm", "{g}");
    let ips = g["status"]["ipAddresses"].to_string();
    assert!(!ips.contains("192.0.0.8"), "{ips}");

    let out = agent.ctl(&["delete", "vmprobe", "--wait", "--timeout", "120s"]);
    assert!(out.status.success(), "delete: {}", text(&out));
}
