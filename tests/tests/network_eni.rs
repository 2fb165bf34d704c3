//! Groups on ENIs in a simulated VPC (issue 8; harness in tests/src/vpc.rs): two groups
//! reach each other over TCP/IPv4 and ping over IPv6, a vpc client reaches a group's
//! server, security groups open and close ports and change on Update without restarting
//! the containers, a new image keeps the group's addresses, and the ENI comes back to
//! the host under its original name and MAC after a delete, an agent SIGKILL, or a
//! container that fails to start. An unknown MAC or an ENI in use is refused clearly and
//! leaves nothing behind.

use std::net::SocketAddr;
use std::time::Duration;

use eci_tests::host::group_processes;
use eci_tests::netspec::{
    Net, SgRule, group_netns, ip_addresses, reach_script, serve_script, wait_ip_addresses,
};
use eci_tests::scenario::{
    IMAGE, busybox_agent, group, group_id, group_on, import, wait_log, wait_phase,
};
use eci_tests::vpc::{Eni, Vpc, banner_in, host_link, links_in, ping_in, wait_banner_in};
use eci_tests::{Agent, oci, text, wait_for};

const LONG: Duration = Duration::from_secs(20);

/// Ingress the tests open: TCP `ports` from the VPC's IPv4 subnet, and ICMPv6 from its
/// IPv6 subnet.
fn vpc_rules(vpc: &Vpc, ports: &[u16]) -> Vec<SgRule> {
    let mut r: Vec<SgRule> = ports
        .iter()
        .map(|p| SgRule::allow_tcp_in(*p, &format!("10.{}.0.0/24", vpc.n)))
        .collect();
    r.push(SgRule::allow_in(
        "icmpv6",
        &format!("fdec:{:x}::/64", vpc.n),
    ));
    r
}

/// A one-container group on `eni` running `script`, with `rules`.
fn eni_group(name: &str, eni: &Eni, rules: &[SgRule], script: &str) -> String {
    group(
        name,
        "Always",
        &[("app", script)],
        &Net::eni(eni).rules(rules).yaml(),
    )
}

fn apply_ok(agent: &Agent, name: &str, spec: &str) {
    let out = agent.apply(name, spec);
    assert!(out.status.success(), "apply {name}: {}", text(&out));
}

fn delete_wait(agent: &Agent, name: &str) {
    // Short grace: a shell or sleep as a container's PID 1 ignores SIGTERM.
    let out = agent.ctl(&[
        "delete",
        name,
        "--grace-period",
        "1",
        "--wait",
        "--timeout",
        "20s",
    ]);
    assert!(out.status.success(), "delete {name}: {}", text(&out));
}

/// The ENI is back in the host namespace under its name with its MAC, down, without
/// addresses (waits a little: the move back may finish just after the delete returns).
fn assert_returned(eni: &Eni) {
    let link = wait_for(Duration::from_secs(5), || host_link(&eni.name));
    let link = link.unwrap_or_else(|| panic!("ENI {} is not back in the host", eni.name));
    assert_eq!(link.mac, eni.mac, "{link:?}");
    assert!(!link.up, "ENI came back up: {link:?}");
    assert!(link.addresses.is_empty(), "ENI kept addresses: {link:?}");
}

/// The ENI is inside the group's namespace as `eth0`, up, with its addresses.
fn assert_attached(agent: &Agent, name: &str, eni: &Eni) {
    assert!(
        host_link(&eni.name).is_none(),
        "ENI {} still in the host",
        eni.name
    );
    let ns = group_netns(agent, &group_id(agent, name));
    let links = links_in(Some(&ns)).expect("links of the group netns");
    let eth0 = links
        .iter()
        .find(|l| l.name == "eth0")
        .unwrap_or_else(|| panic!("no eth0 in {name}'s netns: {links:?}"));
    assert_eq!(eth0.mac, eni.mac);
    assert!(eth0.up, "{eth0:?}");
    for a in [&eni.ipv4, &eni.ipv6] {
        assert!(eth0.addresses.contains(a), "{a} missing: {eth0:?}");
    }
}

/// An apply that must not produce a working group: either refused (returns its text) or
/// a group that fails (returns its description). Either way the text names `needle`.
fn refused_or_failed(agent: &Agent, name: &str, spec: &str, needle: &str) -> String {
    let out = agent.apply(name, spec);
    let said = if out.status.success() {
        let failed = wait_for(LONG, || {
            let d = text(&agent.ctl(&["describe", name]));
            (d.contains("Failed") && d.to_lowercase().contains(&needle.to_lowercase())).then_some(d)
        });
        failed.unwrap_or_else(|| {
            panic!(
                "{name} neither refused nor failed naming {needle:?}:\n{}",
                text(&agent.ctl(&["describe", name]))
            )
        })
    } else {
        text(&out)
    };
    assert!(
        said.to_lowercase().contains(&needle.to_lowercase()),
        "{needle:?} not named: {said}"
    );
    said
}

#[test]
fn two_eni_groups_reach_each_other_and_a_vpc_client_reaches_them() {
    let vpc = Vpc::new().expect("vpc");
    let (a, b) = (vpc.eni().expect("eni"), vpc.eni().expect("eni"));
    let agent = busybox_agent();
    let rules = vpc_rules(&vpc, &[8080]);
    let script = |me: &str, peer: &Eni, peer_name: &str| {
        format!(
            "nc -ll -p 8080 -e echo hello-{me} & ({}) & wait",
            reach_script(&peer.ip4().to_string(), 8080, &format!("hello-{peer_name}"))
        )
    };
    apply_ok(
        &agent,
        "ga",
        &eni_group("ga", &a, &rules, &script("ga", &b, "gb")),
    );
    apply_ok(
        &agent,
        "gb",
        &eni_group("gb", &b, &rules, &script("gb", &a, "ga")),
    );
    wait_phase(&agent, "ga", "Running");
    wait_phase(&agent, "gb", "Running");
    assert_attached(&agent, "ga", &a);
    assert_attached(&agent, "gb", &b);

    // Status: IPv4 first, then IPv6.
    assert_eq!(
        wait_ip_addresses(&agent, "ga"),
        [a.ip4().to_string(), a.ip6().to_string()]
    );

    // TCP over IPv4 both ways, from inside the containers.
    wait_log(&agent, "ga", "app", "reached hello-gb");
    wait_log(&agent, "gb", "app", "reached hello-ga");
    // IPv6 ping both ways between the group namespaces.
    let (na, nb) = (
        group_netns(&agent, &group_id(&agent, "ga")),
        group_netns(&agent, &group_id(&agent, "gb")),
    );
    assert!(ping_in(&na, b.ip6()), "ga → gb over IPv6");
    assert!(ping_in(&nb, a.ip6()), "gb → ga over IPv6");
    // A client in the VPC reaches a group's server port.
    assert_eq!(
        vpc.wait_banner(a.ip4(), 8080, "hello-ga", LONG).as_deref(),
        Some("hello-ga")
    );
    // The group reaches a server in the VPC through its gateway (egress is open).
    let server = vpc.serve(0, "hello-vpc").expect("vpc server");
    let router = SocketAddr::new(vpc.router_v4().parse().expect("router"), server.addr.port());
    assert_eq!(
        banner_in(&na, router, Duration::from_secs(3)).as_deref(),
        Some("hello-vpc")
    );

    // The node lists the host's ENIs and which group holds each.
    let node = text(&agent.ctl(&["node"]));
    assert!(node.contains(&a.mac) && node.contains("ga"), "{node}");
    let ev = text(&agent.ctl(&["events", "--group", "ga"]));
    assert!(ev.contains("AttachedENI"), "{ev}");

    delete_wait(&agent, "ga");
    delete_wait(&agent, "gb");
    assert_returned(&a);
    assert_returned(&b);
    let ev = text(&agent.ctl(&["events"]));
    assert!(ev.contains("DetachedENI"), "{ev}");
}

#[test]
fn security_group_update_opens_a_port_without_restarting_containers() {
    let vpc = Vpc::new().expect("vpc");
    let a = vpc.eni().expect("eni");
    let agent = busybox_agent();
    let script = serve_script(&[(8080, "p8080"), (8081, "p8081")]);
    apply_ok(
        &agent,
        "sg",
        &eni_group("sg", &a, &vpc_rules(&vpc, &[8080]), &script),
    );
    wait_phase(&agent, "sg", "Running");
    wait_log(&agent, "sg", "app", "serving");
    assert_eq!(
        vpc.wait_banner(a.ip4(), 8080, "p8080", LONG).as_deref(),
        Some("p8080")
    );
    // The server listens on 8081 too, but the security group drops it.
    assert!(
        !vpc.connect_tcp(a.ip4(), 8081, Duration::from_secs(2)),
        "8081 answered without a rule"
    );
    // The server answers from inside the group's own namespace (loopback is allowed).
    let id = group_id(&agent, "sg");
    let ns = group_netns(&agent, &id);
    assert_eq!(
        wait_banner_in(&ns, SocketAddr::from(([127, 0, 0, 1], 8081)), "p8081", LONG).as_deref(),
        Some("p8081")
    );

    let before: Vec<i32> = group_processes(&id).iter().map(|p| p.pid).collect();
    assert!(!before.is_empty(), "no processes for group {id}");
    let container =
        agent.get_json("sg").expect("get")["status"]["containerStatuses"][0]["containerId"].clone();

    apply_ok(
        &agent,
        "sg",
        &eni_group("sg", &a, &vpc_rules(&vpc, &[8080, 8081]), &script),
    );
    assert_eq!(
        vpc.wait_banner(a.ip4(), 8081, "p8081", LONG).as_deref(),
        Some("p8081"),
        "8081 still closed after the update:\n{}",
        text(&agent.ctl(&["describe", "sg"]))
    );
    assert_eq!(vpc.banner(a.ip4(), 8080).as_deref(), Some("p8080"));
    // Same containers: every process seen before still runs in the group.
    let after: Vec<i32> = group_processes(&id).iter().map(|p| p.pid).collect();
    for pid in &before {
        assert!(
            after.contains(pid),
            "pid {pid} gone: {before:?} → {after:?}"
        );
    }
    let g = agent.get_json("sg").expect("get");
    assert_eq!(
        g["status"]["containerStatuses"][0]["containerId"],
        container
    );
    assert_eq!(
        g["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or_default(),
        0
    );
    // Counters per rule are shown by describe.
    let d = text(&agent.ctl(&["describe", "sg"]));
    assert!(d.contains("8081"), "{d}");

    // And back: removing the rule closes 8081 again.
    apply_ok(
        &agent,
        "sg",
        &eni_group("sg", &a, &vpc_rules(&vpc, &[8080]), &script),
    );
    let closed = wait_for(LONG, || {
        (!vpc.connect_tcp(a.ip4(), 8081, Duration::from_secs(1))).then_some(())
    });
    assert!(closed.is_some(), "8081 stayed open after the rule went");
    delete_wait(&agent, "sg");
    assert_returned(&a);
}

#[test]
fn a_new_image_keeps_the_group_addresses() {
    let vpc = Vpc::new().expect("vpc");
    let a = vpc.eni().expect("eni");
    let agent = busybox_agent();
    let image2 = IMAGE.replace(":1", ":2");
    import(
        &agent,
        &oci::Image {
            layers: vec![oci::busybox_layer().expect("busybox-static")],
            cmd: vec!["sh".into()],
            env: vec!["VERSION=2".into()],
            ..Default::default()
        },
        &image2,
    );
    // The server's shell ignores SIGTERM: a short grace keeps the Update quick.
    let net = format!(
        "terminationGracePeriodSeconds: 1\n{}",
        Net::eni(&a).rules(&vpc_rules(&vpc, &[8080])).yaml()
    );
    let v1 = group(
        "img",
        "Always",
        &[("app", &serve_script(&[(8080, "v1")]))],
        &net,
    );
    apply_ok(&agent, "img", &v1);
    wait_phase(&agent, "img", "Running");
    assert_eq!(
        vpc.wait_banner(a.ip4(), 8080, "v1", LONG).as_deref(),
        Some("v1")
    );
    let before = ip_addresses(&agent, "img");
    assert!(before.contains(&a.ip4().to_string()), "{before:?}");

    let v2 = group_on(
        &image2,
        "img",
        "Always",
        &[("app", &serve_script(&[(8080, "v2")]))],
        &net,
    );
    apply_ok(&agent, "img", &v2);
    assert_eq!(
        vpc.wait_banner(a.ip4(), 8080, "v2", LONG).as_deref(),
        Some("v2"),
        "the new container does not answer on the same IP:\n{}",
        text(&agent.ctl(&["describe", "img"]))
    );
    let g = agent.get_json("img").expect("get");
    assert_eq!(
        g["status"]["containerStatuses"][0]["image"].as_str(),
        Some(image2.as_str())
    );
    assert_eq!(ip_addresses(&agent, "img"), before);
    assert_attached(&agent, "img", &a);
    delete_wait(&agent, "img");
    assert_returned(&a);
}

#[test]
fn delete_returns_the_eni_named_by_link_name() {
    let vpc = Vpc::new().expect("vpc");
    let a = vpc.eni().expect("eni");
    let agent = busybox_agent();
    let net = Net {
        mac_address: String::new(),
        link_name: a.name.clone(),
        ..Net::eni(&a)
    };
    apply_ok(
        &agent,
        "del",
        &group(
            "del",
            "Always",
            &[("app", "exec sleep 3600")],
            &net.rules(&vpc_rules(&vpc, &[])).yaml(),
        ),
    );
    wait_phase(&agent, "del", "Running");
    assert_attached(&agent, "del", &a);
    assert!(vpc.ping(a.ip6()), "vpc → group over IPv6");
    delete_wait(&agent, "del");
    assert_returned(&a);
    // The ENI is free again: a new group takes it.
    apply_ok(
        &agent,
        "again",
        &eni_group("again", &a, &[], "exec sleep 3600"),
    );
    wait_phase(&agent, "again", "Running");
    assert_attached(&agent, "again", &a);
    delete_wait(&agent, "again");
    assert_returned(&a);
}

#[test]
fn agent_sigkill_then_delete_returns_the_eni() {
    let vpc = Vpc::new().expect("vpc");
    let a = vpc.eni().expect("eni");
    let mut agent = busybox_agent();
    apply_ok(
        &agent,
        "k9",
        &eni_group(
            "k9",
            &a,
            &vpc_rules(&vpc, &[8080]),
            &serve_script(&[(8080, "k9")]),
        ),
    );
    wait_phase(&agent, "k9", "Running");
    assert_eq!(
        vpc.wait_banner(a.ip4(), 8080, "k9", LONG).as_deref(),
        Some("k9")
    );
    let before = ip_addresses(&agent, "k9");

    agent.kill9_and_restart().expect("restart");
    // The group kept running, on its ENI, with its addresses.
    wait_phase(&agent, "k9", "Running");
    assert_eq!(vpc.banner(a.ip4(), 8080).as_deref(), Some("k9"));
    assert_eq!(ip_addresses(&agent, "k9"), before);
    assert_attached(&agent, "k9", &a);

    delete_wait(&agent, "k9");
    assert_returned(&a);
}

#[test]
fn a_container_that_fails_to_start_returns_the_eni() {
    let vpc = Vpc::new().expect("vpc");
    let a = vpc.eni().expect("eni");
    let agent = busybox_agent();
    let spec = eni_group("bad", &a, &[], "exit 0").replace(
        "command: [\"/bin/sh\", \"-c\"]",
        "command: [\"/no/such/binary\"]",
    );
    let spec = spec.replace("restartPolicy: Always", "restartPolicy: Never");
    apply_ok(&agent, "bad", &spec);
    wait_phase(&agent, "bad", "Failed");
    delete_wait(&agent, "bad");
    assert_returned(&a);
}

#[test]
fn an_unknown_mac_is_refused_and_leaves_nothing() {
    let vpc = Vpc::new().expect("vpc");
    let a = vpc.eni().expect("eni");
    let agent = busybox_agent();
    let missing = "02:ec:ff:ff:ff:fe";
    assert!(
        links_in(None)
            .expect("links")
            .iter()
            .all(|l| l.mac != missing)
    );
    let net = Net {
        mac_address: missing.into(),
        ..Net::eni(&a)
    };
    let spec = group(
        "nomac",
        "Always",
        &[("app", "exec sleep 3600")],
        &net.yaml(),
    );
    refused_or_failed(&agent, "nomac", &spec, missing);
    // Nothing moved or made: the unused ENI is as it was, and once the group is gone
    // (if it was created at all) so is everything of it.
    let link = host_link(&a.name).expect("eni still in the host");
    assert!(!link.up && link.addresses.is_empty(), "{link:?}");
    let _ = agent.ctl(&[
        "delete",
        "nomac",
        "--grace-period",
        "1",
        "--wait",
        "--timeout",
        "20s",
    ]);
    let groups = agent.root().join("run/eci/groups");
    let left: Vec<_> = std::fs::read_dir(&groups)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", groups.display());
}

#[test]
fn an_eni_in_use_is_refused_and_the_holder_keeps_it() {
    let vpc = Vpc::new().expect("vpc");
    let a = vpc.eni().expect("eni");
    let agent = busybox_agent();
    let rules = vpc_rules(&vpc, &[8080]);
    apply_ok(
        &agent,
        "holder",
        &eni_group("holder", &a, &rules, &serve_script(&[(8080, "holder")])),
    );
    wait_phase(&agent, "holder", "Running");
    assert_eq!(
        vpc.wait_banner(a.ip4(), 8080, "holder", LONG).as_deref(),
        Some("holder")
    );
    // Same ENI, another address: refused, naming the group that holds it.
    let mut other = Net::eni(&a);
    other.ipv4_address = format!("10.{}.0.250/24", vpc.n);
    let spec = group(
        "thief",
        "Always",
        &[("app", "exec sleep 3600")],
        &other.yaml(),
    );
    refused_or_failed(&agent, "thief", &spec, "holder");
    let _ = agent.ctl(&[
        "delete",
        "thief",
        "--grace-period",
        "1",
        "--wait",
        "--timeout",
        "20s",
    ]);
    // The holder still has it and still answers.
    assert_attached(&agent, "holder", &a);
    assert_eq!(vpc.banner(a.ip4(), 8080).as_deref(), Some("holder"));
    let stolen = eci_tests::vpc::addr_of(&other.ipv4_address);
    assert!(!vpc.ping(stolen), "the refused group's address answers");
    delete_wait(&agent, "holder");
    assert_returned(&a);
}

/// The harness's group-side helpers on today's agent (a namespace with only `lo`): the
/// busybox server answers every connection inside the group's namespace, a container
/// reaches it with `reach_script`, and a client from the test joins that namespace.
#[test]
fn group_servers_answer_inside_the_group_namespace() {
    let agent = busybox_agent();
    let script = format!(
        "nc -ll -p 8080 -e echo hello-lo & ({}) & wait",
        reach_script("127.0.0.1", 8080, "hello-lo")
    );
    apply_ok(
        &agent,
        "lo",
        &group("lo", "Always", &[("app", &script)], ""),
    );
    wait_phase(&agent, "lo", "Running");
    wait_log(&agent, "lo", "app", "reached hello-lo");
    let id = group_id(&agent, "lo");
    let ns = group_netns(&agent, &id);
    let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
    for _ in 0..3 {
        assert_eq!(
            wait_banner_in(&ns, addr, "hello-lo", LONG).as_deref(),
            Some("hello-lo")
        );
    }
    assert!(!group_processes(&id).is_empty());
    delete_wait(&agent, "lo");
}

/// Whether the agent's store still has group `name` (false once a delete finished).
fn exists(agent: &Agent, name: &str) -> bool {
    agent.ctl(&["get", name]).status.success()
}

/// The agent SIGKILLed (`ECI_CRASH_AT`) right after it recorded the ENI and before it
/// moved it, then right after the move before the rules and status: after a restart the
/// group runs on its ENI with its addresses, and a delete gives the ENI back.
#[test]
fn a_crash_while_attaching_the_eni_converges() {
    for point in ["eni-recorded", "eni-attached"] {
        let vpc = Vpc::new().expect("vpc");
        let a = vpc.eni().expect("eni");
        let mut agent = busybox_agent();
        agent.set_env(&[("ECI_CRASH_AT", point)]);
        agent
            .kill9_and_restart()
            .expect("restart with the crash point");
        let spec = eni_group(
            "cr",
            &a,
            &vpc_rules(&vpc, &[8080]),
            &serve_script(&[(8080, "cr")]),
        );
        apply_ok(&agent, "cr", &spec);
        assert!(
            agent.wait_exit(LONG),
            "{point}: the agent did not reach its crash point:\n{}",
            agent.log()
        );
        agent.set_env(&[]);
        agent.restart().expect("restart");
        wait_phase(&agent, "cr", "Running");
        assert_eq!(
            vpc.wait_banner(a.ip4(), 8080, "cr", LONG).as_deref(),
            Some("cr"),
            "{point}"
        );
        assert_attached(&agent, "cr", &a);
        delete_wait(&agent, "cr");
        assert_returned(&a);
    }
}

/// The agent SIGKILLed after it gave the ENI back and before it forgot its record, in
/// the middle of a delete: after a restart the delete finishes, the ENI stays on the
/// host under its name, and nothing of the group is left.
#[test]
fn a_crash_while_returning_the_eni_converges() {
    let vpc = Vpc::new().expect("vpc");
    let a = vpc.eni().expect("eni");
    let mut agent = busybox_agent();
    let spec = eni_group("rt", &a, &[], "exec sleep 3600");
    apply_ok(&agent, "rt", &spec);
    wait_phase(&agent, "rt", "Running");
    let id = group_id(&agent, "rt");
    agent.set_env(&[("ECI_CRASH_AT", "eni-detached")]);
    agent
        .kill9_and_restart()
        .expect("restart with the crash point");
    wait_phase(&agent, "rt", "Running");
    let out = agent.ctl(&["delete", "rt", "--grace-period", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        agent.wait_exit(LONG),
        "the agent did not reach its crash point:\n{}",
        agent.log()
    );
    agent.set_env(&[]);
    agent.restart().expect("restart");
    assert!(
        wait_for(LONG, || (!exists(&agent, "rt")).then_some(())).is_some(),
        "the delete did not finish after the restart"
    );
    assert_returned(&a);
    assert!(
        !group_netns(&agent, &id).exists(),
        "the group's netns pin is left"
    );
}
