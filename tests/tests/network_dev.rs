//! Dev networking (issue 8): with the agent's dev network on, a group that names no ENI
//! gets a veth on the agent's bridge with an address from the configured subnet and a
//! default route, reaches a server on the host side, and reaches another dev group; its
//! address is kept across an agent SIGKILL and released on delete.
//!
//! Each test gives its agent a bridge and subnet of its own ([`DevNet`]), so they run in
//! parallel; the guard removes the bridge whatever the agent left.

use std::net::SocketAddr;
use std::time::Duration;

use eci_tests::netspec::{Net, SgRule, group_netns, reach_script, serve_script, wait_ip_addresses};
use eci_tests::scenario::{busybox_agent_with, group, group_id, wait_log, wait_phase};
use eci_tests::vpc::{BannerServer, DevNet, banner_in, host_link, ip, links_in};
use eci_tests::{Agent, free_port, text, wait_for};

const LONG: Duration = Duration::from_secs(20);

fn apply_ok(agent: &Agent, name: &str, spec: &str) {
    let out = agent.apply(name, spec);
    assert!(out.status.success(), "apply {name}: {}", text(&out));
}

/// The `/24` prefix of the dev subnet, e.g. `172.21.7.`.
fn prefix(dev: &DevNet) -> String {
    dev.subnet.trim_end_matches("0/24").to_string()
}

/// The one address of a dev group (IPv4, from the dev subnet).
fn dev_address(agent: &Agent, name: &str, dev: &DevNet) -> String {
    let addrs = wait_ip_addresses(agent, name);
    let a = addrs.first().cloned().unwrap_or_else(|| {
        panic!(
            "{name} has no address:\n{}",
            text(&agent.ctl(&["describe", name]))
        )
    });
    assert!(
        a.starts_with(&prefix(dev)) && a != dev.gateway,
        "{a} is not a group address in {}",
        dev.subnet
    );
    a
}

#[test]
fn a_dev_group_gets_a_bridge_address_and_reaches_the_host() {
    let dev = DevNet::new();
    let mut agent = busybox_agent_with(&dev.config());
    let port = free_port();
    let _host = BannerServer::start(None, SocketAddr::from(([0, 0, 0, 0], port)), "hello-host")
        .expect("host server");
    let script = format!(
        "{}; exec sleep 3600",
        reach_script(&dev.gateway, port, "hello-host")
    );
    apply_ok(
        &agent,
        "d1",
        &group("d1", "Always", &[("app", &script)], ""),
    );
    wait_phase(&agent, "d1", "Running");
    let addr = dev_address(&agent, "d1", &dev);
    wait_log(&agent, "d1", "app", "reached hello-host");

    // The bridge is the agent's, with the gateway address; the group's end is eth0.
    let br = host_link(&dev.bridge).expect("dev bridge in the host");
    assert!(
        br.addresses.contains(&format!("{}/24", dev.gateway)),
        "{br:?}"
    );
    let ns = group_netns(&agent, &group_id(&agent, "d1"));
    let links = links_in(Some(&ns)).expect("group links");
    assert!(
        links
            .iter()
            .any(|l| l.name == "eth0" && l.addresses.contains(&format!("{addr}/24"))),
        "{links:?}"
    );

    // The address is durable: kept across an agent SIGKILL.
    agent.kill9_and_restart().expect("restart");
    wait_phase(&agent, "d1", "Running");
    assert_eq!(dev_address(&agent, "d1", &dev), addr);

    // Released on delete: the group's veth leaves the bridge.
    let ports = || -> usize {
        ip(&["-j", "link", "show", "master", &dev.bridge])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or_default()
    };
    assert_eq!(ports(), 1, "one port on {} per group", dev.bridge);
    let out = agent.ctl(&[
        "delete",
        "d1",
        "--grace-period",
        "1",
        "--wait",
        "--timeout",
        "20s",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let fewer = wait_for(Duration::from_secs(5), || (ports() == 0).then_some(()));
    assert!(fewer.is_some(), "the group's veth stayed in the host");
}

#[test]
fn two_dev_groups_reach_each_other() {
    let dev = DevNet::new();
    let agent = busybox_agent_with(&dev.config());
    let rules = Net {
        rules: vec![SgRule::allow_tcp_in(8080, &dev.subnet)],
        ..Default::default()
    }
    .yaml();
    apply_ok(
        &agent,
        "da",
        &group(
            "da",
            "Always",
            &[("app", &serve_script(&[(8080, "hello-da")]))],
            &rules,
        ),
    );
    wait_phase(&agent, "da", "Running");
    let a = dev_address(&agent, "da", &dev);

    let script = format!(
        "nc -ll -p 8080 -e echo hello-db & ({}) & wait",
        reach_script(&a, 8080, "hello-da")
    );
    apply_ok(
        &agent,
        "db",
        &group("db", "Always", &[("app", &script)], &rules),
    );
    wait_phase(&agent, "db", "Running");
    let b = dev_address(&agent, "db", &dev);
    assert_ne!(a, b, "two groups got one address");
    wait_log(&agent, "db", "app", "reached hello-da");

    // And back, from da's namespace to db's server.
    let ns = group_netns(&agent, &group_id(&agent, "da"));
    let to_b = SocketAddr::new(b.parse().expect("addr"), 8080);
    let got = wait_for(LONG, || {
        banner_in(&ns, to_b, Duration::from_secs(1)).filter(|s| s == "hello-db")
    });
    assert!(got.is_some(), "da cannot reach db at {to_b}");
}

/// The agent SIGKILLed right after it made a group's veth: after a restart the group runs
/// with a dev address, and after delete its veth is gone from the host.
#[test]
fn a_crash_after_the_veth_converges() {
    let dev = DevNet::new();
    let mut agent = busybox_agent_with(&dev.config());
    agent.set_env(&[("ECI_CRASH_AT", "veth-attached")]);
    agent
        .kill9_and_restart()
        .expect("restart with the crash point");
    apply_ok(
        &agent,
        "cv",
        &group("cv", "Always", &[("app", "exec sleep 3600")], ""),
    );
    assert!(
        agent.wait_exit(LONG),
        "the agent did not reach its crash point:\n{}",
        agent.log()
    );
    agent.set_env(&[]);
    agent.restart().expect("restart");
    wait_phase(&agent, "cv", "Running");
    dev_address(&agent, "cv", &dev);
    let host_end = format!("eci{}", &group_id(&agent, "cv")[..12]);
    assert!(host_link(&host_end).is_some(), "no host end {host_end}");
    let out = agent.ctl(&[
        "delete",
        "cv",
        "--grace-period",
        "0",
        "--wait",
        "--timeout",
        "20s",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        host_link(&host_end).is_none(),
        "{host_end} left on the host"
    );
}
