//! Privileged tests of dev mode: an agent-managed bridge in the host netns and a veth per
//! group netns.

mod common;

use std::net::IpAddr;

use common::{HostLinkGuard, Netns, call, ip, ip_json, name, root, serve_once, unique};
use eci_netns::{BridgeConfig, BridgeError, EniConfig};

#[test]
fn two_groups_on_the_bridge_reach_each_other_and_the_gateway() {
    if !root() {
        return;
    }
    let u = unique();
    // A subnet of this process's own, so parallel test binaries do not collide.
    let net = (std::process::id() % 250) as u8;
    let br = name("xb", u);
    let _br_guard = HostLinkGuard(br.clone());
    let gw4 = format!("10.248.{net}.1");
    let cfg = BridgeConfig {
        name: br.clone(),
        gateway_v4: format!("{gw4}/24").parse().expect("v4"),
        gateway_v6: Some(format!("fd48:{net:x}::1/64").parse().expect("v6")),
        mtu: Some(1450),
    };
    eci_netns::ensure_bridge(&cfg).expect("bridge");
    eci_netns::ensure_bridge(&cfg).expect("bridge again");
    let link = &ip_json(&["link", "show", &br])[0];
    assert_eq!(link["mtu"], 1450, "{link}");
    assert!(
        link["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .any(|f| f == "UP"),
        "{link}"
    );
    let addrs = ip(&["addr", "show", "dev", &br]);
    assert!(addrs.contains(&format!("{gw4}/24")), "{addrs}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .ok()
            .as_deref(),
        Some("1\n")
    );

    let groups: Vec<(Netns, String, HostLinkGuard, EniConfig)> = (2..4)
        .map(|i| {
            let ns = Netns::new("d");
            let host = name("xh", unique());
            let guard = HostLinkGuard(host.clone());
            let cfg = EniConfig {
                mtu: Some(1450),
                ipv4: Some(format!("10.248.{net}.{i}/24").parse().expect("v4")),
                ipv4_gateway: Some(gw4.parse().expect("gw4")),
                ipv6: Some(format!("fd48:{net:x}::{i}/64").parse().expect("v6")),
                ipv6_gateway: Some(format!("fd48:{net:x}::1").parse().expect("gw6")),
            };
            eci_netns::attach_veth(&host, &br, &ns.path, &cfg).expect("attach_veth");
            (ns, host, guard, cfg)
        })
        .collect();
    let (a, b) = (&groups[0], &groups[1]);
    // Idempotent: again, the same pair is reused.
    let before = &ip_json(&["link", "show", &a.1])[0]["ifindex"];
    eci_netns::attach_veth(&a.1, &br, &a.0.path, &a.3).expect("attach_veth again");
    assert_eq!(&ip_json(&["link", "show", &a.1])[0]["ifindex"], before);
    let port = &ip_json(&["link", "show", &a.1])[0];
    assert_eq!(port["master"], br.as_str(), "{port}");
    let eth0 = &a.0.ip_json(&["link", "show", "eth0"])[0];
    assert_eq!(eth0["mtu"], 1450, "{eth0}");
    let r4 = &a.0.ip_json(&["route", "show", "default"])[0];
    assert_eq!(r4["gateway"], gw4.as_str(), "{r4}");

    // Group to group (v4 and v6), group to the gateway in the host netns.
    let to = serve_once(
        Some(&b.0.path),
        format!("10.248.{net}.3").parse::<IpAddr>().expect("ip"),
    );
    assert_eq!(call(&a.0.path, to), Ok("pong".into()));
    let to = serve_once(
        Some(&b.0.path),
        format!("fd48:{net:x}::3").parse::<IpAddr>().expect("ip"),
    );
    assert_eq!(call(&a.0.path, to), Ok("pong".into()));
    let to = serve_once(None, gw4.parse::<IpAddr>().expect("ip"));
    assert_eq!(call(&b.0.path, to), Ok("pong".into()));

    // A crash left a host end whose peer is not the group's eth0: it is replaced.
    eci_netns::detach_veth(&a.1).expect("detach");
    let stray = name("xz", unique());
    let _stray_guard = HostLinkGuard(stray.clone());
    ip(&["link", "add", &a.1, "type", "veth", "peer", "name", &stray]);
    eci_netns::attach_veth(&a.1, &br, &a.0.path, &a.3).expect("attach_veth over a stray");
    assert!(
        ip_json(&["link", "show"])
            .as_array()
            .expect("links")
            .iter()
            .all(|l| l["ifname"] != stray.as_str())
    );
    let to = serve_once(
        Some(&b.0.path),
        format!("10.248.{net}.3").parse::<IpAddr>().expect("ip"),
    );
    assert_eq!(call(&a.0.path, to), Ok("pong".into()));

    // Detach removes both ends; twice is fine.
    eci_netns::detach_veth(&a.1).expect("detach");
    eci_netns::detach_veth(&a.1).expect("detach again");
    assert!(
        ip_json(&["link", "show"])
            .as_array()
            .expect("links")
            .iter()
            .all(|l| l["ifname"] != a.1.as_str())
    );
    assert!(
        a.0.ip_json(&["link"])
            .as_array()
            .expect("links")
            .iter()
            .all(|l| l["ifname"] != "eth0")
    );
}

#[test]
fn bad_names_and_wrong_kinds_are_refused() {
    if !root() {
        return;
    }
    let err = eci_netns::detach_veth("a-name-far-too-long").expect_err("long name");
    assert!(matches!(err, BridgeError::BadName { .. }), "{err}");
    assert!(err.to_string().contains("veth host name"), "{err}");
    // detach_veth never deletes what is not a veth (the bridge here).
    let u = unique();
    let br = name("xb", u);
    let _g = HostLinkGuard(br.clone());
    ip(&["link", "add", &br, "type", "bridge"]);
    let err = eci_netns::detach_veth(&br).expect_err("a bridge");
    assert!(err.to_string().contains("not a veth"), "{err}");
    // ensure_bridge refuses a non-bridge of that name.
    let v = name("xv", u);
    let p = name("xw", u);
    let _v = HostLinkGuard(v.clone());
    ip(&["link", "add", &v, "type", "veth", "peer", "name", &p]);
    let cfg = BridgeConfig {
        name: v.clone(),
        gateway_v4: "10.247.0.1/24".parse().expect("v4"),
        gateway_v6: None,
        mtu: None,
    };
    let err = eci_netns::ensure_bridge(&cfg).expect_err("a veth");
    assert!(err.to_string().contains("not a bridge"), "{err}");
    // attach_veth without the bridge.
    let ns = Netns::new("d");
    let err = eci_netns::attach_veth(&name("xh", u), "xnobridge", &ns.path, &EniConfig::default())
        .expect_err("no bridge");
    assert!(matches!(err, BridgeError::NoBridge { .. }), "{err}");
}

/// A port guard is a `bridge` table the kernel accepts and `nft` decodes rule by rule;
/// rewriting it is atomic and harmless, removing it twice is fine, and a bad port name
/// is refused before anything is sent.
#[test]
fn a_port_guard_is_written_replaced_and_removed() {
    if !root() {
        return;
    }
    let port = name("xg", unique());
    let table = eci_netns::nft::port_guard_table(&port);
    struct TableGuard(String);
    impl Drop for TableGuard {
        fn drop(&mut self) {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "bridge", &self.0])
                .status();
        }
    }
    let _guard = TableGuard(table.clone());
    let mut g = eci_netns::nft::PortGuard {
        port: port.clone(),
        mac: "02:ec:0a:f8:00:02".parse().expect("mac"),
        ipv4: "10.248.0.2".parse().expect("v4"),
        ipv6: Some("fd48::af8:2".parse().expect("v6")),
    };
    eci_netns::nft::ensure_port_guard(&g).expect("guard");
    g.ipv4 = "10.248.0.3".parse().expect("v4");
    eci_netns::nft::ensure_port_guard(&g).expect("guard again");
    let out = std::process::Command::new("nft")
        .args(["list", "table", "bridge", &table])
        .output()
        .expect("nft");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listed}");
    assert_eq!(
        listed.matches(" drop comment \"eci-guard").count(),
        11,
        "{listed}"
    );
    assert!(
        listed.contains("ether saddr != 02:ec:0a:f8:00:02"),
        "{listed}"
    );
    assert!(listed.contains("ip saddr != 10.248.0.3"), "{listed}");
    assert!(!listed.contains("10.248.0.2"), "not replaced: {listed}");
    assert!(listed.contains("hook prerouting"), "{listed}");
    eci_netns::nft::remove_port_guard(&port).expect("remove");
    eci_netns::nft::remove_port_guard(&port).expect("remove again");
    let gone = std::process::Command::new("nft")
        .args(["list", "table", "bridge", &table])
        .output()
        .expect("nft");
    assert!(!gone.status.success(), "{table} still there");
    g.port = "bad/port".into();
    assert!(eci_netns::nft::ensure_port_guard(&g).is_err());
}
