//! Hostile tenant against group networking (issue 8; docs/security.md, rows 15-18).
//!
//! - Container root has no `CAP_NET_ADMIN` over its group's netns: `ip link/addr/route`
//!   changes, deleting its security-group table over nfnetlink, a network or user
//!   namespace of its own, a nested user namespace joining the group's netns, and a
//!   binary carrying every file capability all fail; eth0, its address and MAC and the
//!   `eci_sg` table are unchanged afterwards.
//! - On the dev bridge, a group with `CAP_NET_RAW` (a default capability) writes forged
//!   frames below netfilter: another source IP (the gateway's, which the victim's
//!   security group trusts), another group's MAC, gratuitous ARP for the gateway's and
//!   the victim's addresses. The port guard drops them: the victim never gets the
//!   spoofed datagram (a genuine one over the same raw path arrives), no neighbour or
//!   forwarding table learns the attacker's MAC, and a closed port stays closed. Its
//!   router advertisements give no other group a route or an address, and it cannot
//!   reach a metadata service behind the host; its own IPv4/IPv6 traffic passes, and
//!   the guard is back after an agent restart if something removed it.
//! - A spec naming a link the host needs as its ENI — one carrying a default route, a
//!   bridge port, a bridge, a configured `reserved_links` name, the host's real uplink
//!   — is refused by Create, naming `network.eni`; the link never leaves the host.
//!
//! Needs root (CI is root). Unique names (pid + counter); guards remove what is made.

use std::time::Duration;

use eci_tests::netspec::{SgRule, group_netns, wait_ip_addresses};
use eci_tests::scenario::{attack_agent_with, busybox_agent_with, group, group_id, wait_log};
use eci_tests::vpc::{DevNet, Netns, host_link, ip, links_in, next_seq};
use eci_tests::{Agent, text, wait_for};

const LONG: Duration = Duration::from_secs(60);

fn apply_ok(agent: &Agent, name: &str, spec: &str) {
    let out = agent.apply(name, spec);
    assert!(out.status.success(), "apply {name}: {}", text(&out));
}

fn delete_wait(agent: &Agent, name: &str) {
    let out = agent.ctl(&[
        "delete",
        name,
        "--grace-period",
        "0",
        "--wait",
        "--timeout",
        "30s",
    ]);
    assert!(out.status.success(), "delete {name}: {}", text(&out));
}

fn rule(proto: &str, port: u16, cidr: &str) -> SgRule {
    SgRule {
        direction: "ingress".into(),
        protocol: proto.into(),
        port_range: format!("{port}/{port}"),
        cidr: cidr.into(),
        policy: "accept".into(),
        priority: 1,
    }
}

fn rules_yaml(rules: &[SgRule]) -> String {
    eci_tests::netspec::Net {
        rules: rules.to_vec(),
        ..Default::default()
    }
    .yaml()
}

/// Runs a command in the namespace at `ns` (`nsenter --net`); its stdout.
fn in_ns(ns: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("nsenter")
}

/// The `lladdr` of `addr` in `ip -j neigh` output, if any.
fn neigh_mac(json: &str, addr: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.as_array()?
        .iter()
        .find(|n| n["dst"] == addr)
        .and_then(|n| n["lladdr"].as_str().map(str::to_string))
}

#[test]
fn container_root_cannot_change_its_groups_network() {
    let dev = DevNet::new();
    let agent = attack_agent_with(&dev.config());
    let script = r#"
for c in "link set eth0 down" "addr add 10.99.0.9/32 dev eth0" "addr flush dev eth0" "route add 10.98.0.0/24 dev eth0" "route del default" "link set eth0 address 02:00:00:00:00:99" "link add x0 type veth peer name x1" "link set lo down"; do
  out=$(ip $c 2>&1); rc=$?; echo "  said: $out"; echo "ip $c: rc=$rc"
done
/eci-attack netadmin
unshare -n true 2>/dev/null; echo "unshare -n: rc=$?"
unshare -U -r -n true 2>/dev/null; echo "unshare -Urn: rc=$?"
cp /bin/busybox /tmp/bb && /eci-attack setcap /tmp/bb
/tmp/bb grep CapEff /proc/self/status | sed 's/^/fcap /'
/tmp/bb ip link set eth0 down 2>/dev/null; echo "fcap ip link set eth0 down: rc=$?"
/tmp/bb ip addr add 10.99.0.9/32 dev eth0 2>/dev/null; echo "fcap ip addr add: rc=$?"
echo attack-done; exec sleep 3600"#;
    let rules = rules_yaml(&[rule("tcp", 8080, &dev.subnet)]);
    apply_ok(
        &agent,
        "na",
        &group("na", "Always", &[("app", script)], &rules),
    );
    let addrs = wait_ip_addresses(&agent, "na");
    let ns = group_netns(&agent, &group_id(&agent, "na"));
    let before = links_in(Some(&ns)).expect("links");
    let log = wait_log(&agent, "na", "app", "attack-done");

    let (mut refused, mut eperm) = (0, 0);
    for l in log.lines() {
        if let Some((what, rc)) = l.split_once(": rc=") {
            assert_ne!(rc.trim(), "0", "{what} succeeded:\n{log}");
            refused += 1;
        }
        // `ip` failed for want of the capability, not for a usage error.
        if let Some(said) = l.trim().strip_prefix("said:") {
            assert!(said.contains("Operation not permitted"), "{l}\n{log}");
        }
        for name in [
            "nft_delete_eci_sg",
            "unshare_net",
            "unshare_user_net",
            "nested_userns_setns_group_netns",
        ] {
            if let Some(r) = l.strip_prefix(&format!("{name}: ")) {
                assert!(r.starts_with("EPERM"), "{name}: {r}\n{log}");
                eperm += 1;
            }
        }
        // A binary with every file capability either is not executed at all (the
        // kernel refuses file capabilities outside the bounding set with EPERM) or
        // runs without NET_ADMIN (bit 12).
        if let Some(hex) = l.strip_prefix("fcap CapEff:") {
            let caps = u64::from_str_radix(hex.trim(), 16).expect("CapEff");
            assert_eq!(caps & (1 << 12), 0, "NET_ADMIN through file caps: {l}");
        }
    }
    assert_eq!(
        (refused, eperm),
        (8 + 2 + 2, 4),
        "not every attempt ran:\n{log}"
    );
    assert!(
        log.contains("setcap: ok"),
        "the file capabilities were not set:\n{log}"
    );

    // Nothing changed: eth0 up with its address and MAC, the firewall in place.
    let after = links_in(Some(&ns)).expect("links");
    let eth0 = |ls: &[eci_tests::vpc::LinkInfo]| ls.iter().find(|l| l.name == "eth0").cloned();
    let (b, a) = (eth0(&before).expect("eth0"), eth0(&after).expect("eth0"));
    assert_eq!(a, b, "eth0 changed");
    assert!(
        a.up && a.addresses.iter().any(|x| x.starts_with(&addrs[0])),
        "{a:?}"
    );
    assert_eq!(after.len(), before.len(), "links added: {after:?}");
    let t = in_ns(&ns, &["nft", "list", "table", "inet", "eci_sg"]);
    assert!(
        t.status.success() && text(&t).contains("dport 8080"),
        "{}",
        text(&t)
    );
    delete_wait(&agent, "na");
}

/// The host table that guards a dev group's port.
fn guard_table(agent: &Agent, name: &str) -> String {
    let id = group_id(agent, name);
    format!("eci_guard_eci{}", &id[..12])
}

#[test]
fn a_dev_group_cannot_spoof_addresses_on_the_bridge() {
    let dev = DevNet::new();
    let agent = attack_agent_with(&dev.config());
    let gw = dev.gateway.clone();
    // The victim trusts the gateway (the host) alone on UDP 9000, the subnet on 9001;
    // TCP 9002 serves but is closed. It keeps pinging the gateway, so both sides hold
    // a neighbour entry for each other.
    let victim = format!(
        "/eci-attack udp-listen 9000 & /eci-attack udp-listen 9001 & \
         nc -ll -p 9002 -e echo hello-closed & \
         while true; do ping -c 1 -W 1 {gw} >/dev/null 2>&1; sleep 0.5; done"
    );
    let rules = rules_yaml(&[
        rule("udp", 9000, &format!("{gw}/32")),
        rule("udp", 9001, &dev.subnet),
    ]);
    apply_ok(
        &agent,
        "victim",
        &group("victim", "Always", &[("app", &victim)], &rules),
    );
    let vip = wait_ip_addresses(&agent, "victim")
        .first()
        .cloned()
        .expect("victim address");
    let vns = group_netns(&agent, &group_id(&agent, "victim"));
    let vmac = links_in(Some(&vns))
        .expect("links")
        .into_iter()
        .find(|l| l.name == "eth0")
        .expect("eth0")
        .mac;
    let br_mac = host_link(&dev.bridge).expect("bridge").mac;

    let attack = format!(
        "sleep 2; i=0; while [ $i -lt 12 ]; do \
         /eci-attack spoof-udp self self {vip} {vmac} 9001 genuine; \
         /eci-attack spoof-udp {gw} self {vip} {vmac} 9000 spoofed-ip; \
         /eci-attack spoof-udp {vip} {vmac} {gw} ff:ff:ff:ff:ff:ff 9 stolen-mac; \
         /eci-attack spoof-arp {gw}; /eci-attack spoof-arp {vip}; \
         nc -w 1 {vip} 9002 </dev/null | grep -q hello-closed && echo closed-port-reached; \
         i=$((i+1)); sleep 0.3; done; echo spoof-done; exec sleep 3600"
    );
    apply_ok(
        &agent,
        "attacker",
        &group("attacker", "Always", &[("app", &attack)], ""),
    );
    let aip = wait_ip_addresses(&agent, "attacker")
        .first()
        .cloned()
        .expect("attacker address");
    let alog = wait_for(LONG, || {
        let l = eci_tests::scenario::logs(&agent, "attacker", "app");
        l.contains("spoof-done").then_some(l)
    })
    .expect("the attacker finished");
    let vlog = eci_tests::scenario::logs(&agent, "victim", "app");

    // The raw path works (the tool is not merely refused): a genuine datagram arrives.
    assert!(
        alog.contains("sent") && !alog.contains("spoof-udp:") && !alog.contains("spoof-arp:"),
        "{alog}"
    );
    assert!(
        vlog.contains(&format!("got genuine from {aip}")),
        "the genuine datagram never arrived:\n{vlog}\n{alog}"
    );
    // The forged source the victim trusts never gets through.
    assert!(!vlog.contains("spoofed-ip"), "IP spoofing worked:\n{vlog}");
    assert!(!alog.contains("closed-port-reached"), "{alog}");

    // Nobody learnt the attacker's MAC for the gateway's or the victim's address, and
    // the bridge still forwards the victim's MAC to the victim's port.
    let v_neigh = text(&in_ns(&vns, &["ip", "-j", "neigh", "show", &gw]));
    assert_eq!(
        neigh_mac(&v_neigh, &gw).as_deref(),
        Some(br_mac.as_str()),
        "the victim's neighbour entry for the gateway: {v_neigh}"
    );
    let h_neigh = ip(&["-j", "neigh", "show", &vip, "dev", &dev.bridge]).unwrap_or_default();
    if let Some(m) = neigh_mac(&h_neigh, &vip) {
        assert_eq!(
            m, vmac,
            "the host's neighbour entry for the victim: {h_neigh}"
        );
    }
    let victim_port = format!("eci{}", &group_id(&agent, "victim")[..12]);
    let fdb = std::process::Command::new("bridge")
        .args(["-j", "fdb", "show", "br", &dev.bridge])
        .output()
        .expect("bridge fdb");
    let fdb: serde_json::Value = serde_json::from_slice(&fdb.stdout).expect("fdb json");
    for e in fdb.as_array().into_iter().flatten() {
        if e["mac"] == vmac.as_str() {
            assert_eq!(e["ifname"], victim_port.as_str(), "FDB poisoned: {e}");
        }
    }

    // And it was the guard that dropped them: its counters moved.
    let table = guard_table(&agent, "attacker");
    let t = std::process::Command::new("nft")
        .args(["list", "table", "bridge", &table])
        .output()
        .expect("nft");
    let t = text(&t);
    for what in ["source MAC", "ARP sender IP", "IPv4 source"] {
        let line = t
            .lines()
            .find(|l| l.contains(&format!("\"eci-guard {what}\"")))
            .unwrap_or_else(|| panic!("no rule {what}: {t}"));
        assert!(
            !line.contains("packets 0 "),
            "{what} dropped nothing: {line}"
        );
    }

    delete_wait(&agent, "attacker");
    delete_wait(&agent, "victim");
    // The guard goes with the port.
    let gone = std::process::Command::new("nft")
        .args(["list", "table", "bridge", &table])
        .output()
        .expect("nft");
    assert!(!gone.status.success(), "{table} left on the host");
}

/// Host links made for one test; removed on drop.
struct Links(Vec<String>);

impl Drop for Links {
    fn drop(&mut self) {
        for l in &self.0 {
            let _ = ip(&["link", "del", l]);
        }
    }
}

#[test]
fn a_spec_cannot_take_a_link_the_host_needs() {
    let peers = Netns::new("hn").expect("netns");
    let tag = format!("{:05}{:x}", std::process::id() % 100_000, next_seq() & 0xff);
    let (uplink, brname, port, reserved) = (
        format!("hu{tag}"),
        format!("hb{tag}"),
        format!("hp{tag}"),
        format!("hr{tag}"),
    );
    let links = Links(vec![
        uplink.clone(),
        port.clone(),
        reserved.clone(),
        brname.clone(),
    ]);
    for (l, peer) in [(&uplink, "pu"), (&port, "pp"), (&reserved, "pr")] {
        ip(&[
            "link",
            "add",
            l,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            &peers.name,
        ])
        .expect("veth");
        peers.ip(&["link", "set", peer, "up"]).expect("peer up");
    }
    // A second default route through a veth, behind the host's own (a high metric), so
    // the host's routing does not change.
    ip(&["link", "set", &uplink, "up"]).expect("up");
    let metric = format!("{}", 40_000 + next_seq() % 20_000);
    ip(&["route", "add", "default", "dev", &uplink, "metric", &metric]).expect("route");
    ip(&["link", "add", &brname, "type", "bridge"]).expect("bridge");
    ip(&["link", "set", &port, "master", &brname]).expect("enslave");

    let config = format!("[network]\nfleet_host = true\nreserved_links = [\"hr{tag}*\"]\n");
    let agent = busybox_agent_with(&config);
    let spec = |name: &str, link: &str| {
        let net = eci_tests::netspec::Net {
            link_name: link.into(),
            ipv4_address: "10.250.0.2/24".into(),
            ..Default::default()
        };
        group(name, "Always", &[("app", "exec sleep 3600")], &net.yaml())
    };
    let mut cases = vec![
        (uplink.clone(), "default route"),
        (port.clone(), "port of a host bridge"),
        (brname.clone(), "bridge"),
        (reserved.clone(), "reserved_links"),
    ];
    // The host's real uplink, last: only once the checks above proved the guard.
    let real = ip(&["-j", "route", "show", "default"]).unwrap_or_default();
    let real: serde_json::Value = serde_json::from_str(&real).unwrap_or_default();
    if let Some(dev) = real
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["dev"].as_str())
        .find(|d| *d != uplink)
    {
        cases.push((dev.to_string(), "default route"));
    }
    for (i, (link, why)) in cases.iter().enumerate() {
        let name = format!("take{i}");
        let out = agent.apply(&name, &spec(&name, link));
        let said = text(&out);
        assert!(!out.status.success(), "{link} was accepted: {said}");
        assert!(
            said.contains("network.eni") && said.contains(link.as_str()) && said.contains(why),
            "{link}: {said}"
        );
        assert!(
            !agent.ctl(&["get", &name]).status.success(),
            "group {name} was created"
        );
        assert!(host_link(link).is_some(), "{link} left the host");
    }
    drop(agent);
    drop(links);
}

/// The guard lets a group's own traffic through, IPv6 included: neighbour discovery
/// (from link-local and global sources), ping to the gateway and to another group over
/// both families.
#[test]
fn the_guard_lets_a_groups_own_traffic_through() {
    let dev = DevNet::new();
    let v6 = format!(
        "fdec:{:x}:{:x}::",
        std::process::id() & 0xffff,
        next_seq() & 0xffff
    );
    let config = format!("{}dev_subnet_v6 = \"{v6}/64\"\n", dev.config());
    let agent = busybox_agent_with(&config);
    let open = rules_yaml(&[
        SgRule::allow_in("icmp", &dev.subnet),
        SgRule::allow_in("icmpv6", &format!("{v6}/64")),
    ]);
    apply_ok(
        &agent,
        "ok-b",
        &group("ok-b", "Always", &[("app", "exec sleep 3600")], &open),
    );
    let b = wait_ip_addresses(&agent, "ok-b");
    assert_eq!(b.len(), 2, "{b:?}");
    let script = format!(
        "for t in '-4 {gw4}' '-6 {v6}1' '-4 {b4}' '-6 {b6}'; do \
         n=0; until ping $t -c 1 -W 1 >/dev/null 2>&1; do n=$((n+1)); [ $n -gt 20 ] && break; done; \
         [ $n -le 20 ] && echo \"reached $t\"; done; echo pings-done; exec sleep 3600",
        gw4 = dev.gateway,
        b4 = b[0],
        b6 = b[1],
    );
    apply_ok(
        &agent,
        "ok-a",
        &group("ok-a", "Always", &[("app", &script)], ""),
    );
    let log = wait_log(&agent, "ok-a", "app", "pings-done");
    for t in [
        format!("-4 {}", dev.gateway),
        format!("-6 {v6}1"),
        format!("-4 {}", b[0]),
        format!("-6 {}", b[1]),
    ] {
        assert!(log.contains(&format!("reached {t}")), "{t}:\n{log}");
    }
    delete_wait(&agent, "ok-a");
    delete_wait(&agent, "ok-b");
}

/// A "metadata service" on a link-local address behind the host (as 169.254.169.254 is
/// on a cloud VM): a dev group cannot reach it, though it reaches a server on an
/// ordinary address over the same link (the control). Without the guard (its table
/// deleted mid-test, checked by hand) the group reaches it.
#[test]
fn a_dev_group_cannot_reach_the_metadata_service() {
    let md = Netns::new("md").expect("netns");
    let n = (std::process::id().wrapping_mul(13).wrapping_add(next_seq())) % 250 + 1;
    let host_end = format!(
        "hm{:05}{:x}",
        std::process::id() % 100_000,
        next_seq() & 0xff
    );
    let _links = Links(vec![host_end.clone()]);
    ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", "pm", "netns", &md.name,
    ])
    .expect("veth");
    for (a, b) in [
        (format!("169.254.{n}.1/30"), format!("169.254.{n}.2/30")),
        (format!("198.18.{n}.1/30"), format!("198.18.{n}.2/30")),
    ] {
        ip(&["addr", "add", &a, "dev", &host_end]).expect("addr");
        md.ip(&["addr", "add", &b, "dev", "pm"]).expect("addr");
    }
    ip(&["link", "set", &host_end, "up"]).expect("up");
    md.ip(&["link", "set", "pm", "up"]).expect("up");
    md.ip(&["route", "add", "default", "via", &format!("198.18.{n}.1")])
        .expect("route");
    let server = eci_tests::vpc::BannerServer::start(
        Some(&md.path()),
        std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        "md-banner",
    )
    .expect("server");
    let port = server.addr.port();

    let dev = DevNet::new();
    let agent = busybox_agent_with(&dev.config());
    let script = format!(
        "until nc -w 1 198.18.{n}.2 {port} </dev/null | grep -q md-banner; do sleep 0.2; done; \
         echo control-reached; i=0; while [ $i -lt 5 ]; do \
         nc -w 1 169.254.{n}.2 {port} </dev/null | grep -q md-banner && echo metadata-reached; \
         i=$((i+1)); done; echo md-done; exec sleep 3600"
    );
    apply_ok(
        &agent,
        "md",
        &group("md", "Always", &[("app", &script)], ""),
    );
    let log = wait_log(&agent, "md", "app", "md-done");
    assert!(log.contains("control-reached"), "{log}");
    assert!(!log.contains("metadata-reached"), "{log}");
    delete_wait(&agent, "md");
}

/// A host firewall reload (`nft flush ruleset`, here the guard table deleted by hand)
/// while the agent is down: the agent puts the guard back when it adopts the group.
#[test]
fn the_port_guard_comes_back_when_the_agent_adopts_the_group() {
    let dev = DevNet::new();
    let mut agent = busybox_agent_with(&dev.config());
    apply_ok(
        &agent,
        "rg",
        &group("rg", "Always", &[("app", "exec sleep 3600")], ""),
    );
    let addr = wait_ip_addresses(&agent, "rg");
    let table = guard_table(&agent, "rg");
    let listed = |t: &str| {
        std::process::Command::new("nft")
            .args(["list", "table", "bridge", t])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(listed(&table), "{table} missing");
    agent.kill9().expect("kill");
    let out = std::process::Command::new("nft")
        .args(["delete", "table", "bridge", &table])
        .output()
        .expect("nft");
    assert!(out.status.success(), "{}", text(&out));
    agent.restart().expect("restart");
    let back = wait_for(Duration::from_secs(20), || listed(&table).then_some(()));
    assert!(back.is_some(), "{table} was not put back:\n{}", agent.log());
    assert_eq!(wait_ip_addresses(&agent, "rg"), addr);
    delete_wait(&agent, "rg");
}

/// A dev group with IPv6 sends router advertisements (raw, `CAP_NET_RAW`) offering
/// itself as the default router and a prefix: no other group learns a route or an
/// address from them.
#[test]
fn a_dev_group_cannot_become_the_other_groups_router() {
    let dev = DevNet::new();
    let v6 = format!(
        "fdec:{:x}:{:x}::",
        std::process::id() & 0xffff,
        next_seq() & 0xffff
    );
    let config = format!("{}dev_subnet_v6 = \"{v6}/64\"\n", dev.config());
    let agent = attack_agent_with(&config);
    apply_ok(
        &agent,
        "ra-victim",
        &group("ra-victim", "Always", &[("app", "exec sleep 3600")], ""),
    );
    wait_ip_addresses(&agent, "ra-victim");
    let vns = group_netns(&agent, &group_id(&agent, "ra-victim"));
    let script = "sleep 1; i=0; while [ $i -lt 10 ]; do /eci-attack spoof-ra fd66:6666:6666:6666::; \
                  i=$((i+1)); sleep 0.3; done; echo ra-done; exec sleep 3600";
    apply_ok(
        &agent,
        "ra-attacker",
        &group("ra-attacker", "Always", &[("app", script)], ""),
    );
    let log = wait_log(&agent, "ra-attacker", "app", "ra-done");
    assert!(log.contains("sent") && !log.contains("spoof-ra:"), "{log}");
    std::thread::sleep(Duration::from_secs(1));
    let routes = text(&in_ns(&vns, &["ip", "-6", "route", "show"]));
    let addrs = text(&in_ns(&vns, &["ip", "-6", "addr", "show", "dev", "eth0"]));
    assert!(
        !routes.contains("proto ra"),
        "a route from the attacker: {routes}"
    );
    assert!(
        !addrs.contains("fd66:"),
        "an address from the attacker: {addrs}"
    );
    delete_wait(&agent, "ra-attacker");
    delete_wait(&agent, "ra-victim");
}
