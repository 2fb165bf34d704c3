//! Privileged tests of ENI attach/detach: a veth end in the host plays the ENI, its peer
//! sits in a "vpc" netns with the router's addresses.

mod common;

use std::net::IpAddr;

use common::{HostLinkGuard, Netns, call, ip, ip_json, name, root, serve_once, unique};
use eci_netns::{AttachError, EniConfig, EniRecord, EniSelector, MacAddress};

/// A fake ENI: host link `eni` with a unique MAC, peer `peer` in `vpc` holding
/// 10.77.0.1/24 and fd77::1/64, up.
struct Fixture {
    vpc: Netns,
    group: Netns,
    eni: String,
    mac: MacAddress,
    _eni_guard: HostLinkGuard,
}

impl Fixture {
    fn new() -> Fixture {
        let u = unique();
        let vpc = Netns::new("v");
        let group = Netns::new("g");
        let eni = name("xe", u);
        let peer = name("xp", u);
        let mac = MacAddress([0x02, 0xec, (u >> 16) as u8, (u >> 8) as u8, u as u8, 0x01]);
        let guard = HostLinkGuard(eni.clone());
        ip(&[
            "link",
            "add",
            &eni,
            "address",
            &mac.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &vpc.name,
        ]);
        vpc.ip(&["addr", "add", "10.77.0.1/24", "dev", &peer]);
        vpc.ip(&["addr", "add", "fd77::1/64", "dev", &peer, "nodad"]);
        vpc.ip(&["link", "set", &peer, "up"]);
        Fixture {
            vpc,
            group,
            eni,
            mac,
            _eni_guard: guard,
        }
    }

    fn record(&self) -> EniRecord {
        let link = eci_netns::find(&EniSelector::Mac(self.mac)).expect("find the ENI");
        assert_eq!(link.name, self.eni);
        assert_eq!(link.kind.as_deref(), Some("veth"));
        EniRecord::of(&link).expect("record")
    }
}

fn config() -> EniConfig {
    EniConfig {
        mtu: Some(1400),
        ipv4: Some("10.77.0.2/24".parse().expect("v4")),
        ipv4_gateway: Some("10.77.0.1".parse().expect("gw4")),
        ipv6: Some("fd77::2/64".parse().expect("v6")),
        ipv6_gateway: Some("fd77::1".parse().expect("gw6")),
    }
}

/// Checks the group's eth0 is the ENI, configured as `config()` says, and reaches the
/// vpc peer over TCP on IPv4 and IPv6.
fn assert_attached(f: &Fixture) {
    let link = &f.group.ip_json(&["link", "show", "eth0"])[0];
    assert_eq!(link["address"], f.mac.to_string(), "{link}");
    assert_eq!(link["mtu"], 1400, "{link}");
    let flags = link["flags"].as_array().expect("flags");
    assert!(flags.iter().any(|x| x == "UP"), "{link}");
    let addrs = &f.group.ip_json(&["addr", "show", "dev", "eth0"])[0]["addr_info"];
    let have: Vec<String> = addrs
        .as_array()
        .expect("addr_info")
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().expect("local"), a["prefixlen"]))
        .collect();
    assert!(have.contains(&"10.77.0.2/24".to_string()), "{have:?}");
    assert!(have.contains(&"fd77::2/64".to_string()), "{have:?}");
    let r4 = &f.group.ip_json(&["route", "show", "default"])[0];
    assert_eq!(r4["gateway"], "10.77.0.1", "{r4}");
    assert_eq!(r4["dev"], "eth0", "{r4}");
    let r6 = &f.group.ip_json(&["-6", "route", "show", "default"])[0];
    assert_eq!(r6["gateway"], "fd77::1", "{r6}");
    // Not in the host any more.
    assert!(
        !eci_netns::host_links()
            .expect("host links")
            .iter()
            .any(|l| l.mac == Some(f.mac))
    );
    for peer in ["10.77.0.1", "fd77::1"] {
        let to = serve_once(Some(&f.vpc.path), peer.parse::<IpAddr>().expect("ip"));
        assert_eq!(call(&f.group.path, to), Ok("pong".into()), "to {to}");
    }
    // And the vpc side reaches the group's address.
    let to = serve_once(Some(&f.group.path), "10.77.0.2".parse().expect("ip"));
    assert_eq!(call(&f.vpc.path, to), Ok("pong".into()));
}

/// Checks the ENI is back in the host: original name, MAC and MTU, down, no addresses.
fn assert_returned(f: &Fixture) {
    let link = &ip_json(&["link", "show", &f.eni])[0];
    assert_eq!(link["address"], f.mac.to_string(), "{link}");
    assert_eq!(link["mtu"], 1500, "{link}");
    let flags = link["flags"].as_array().expect("flags");
    assert!(!flags.iter().any(|x| x == "UP"), "{link}");
    let addrs = &ip_json(&["addr", "show", "dev", &f.eni])[0]["addr_info"];
    assert_eq!(addrs.as_array().map(Vec::len), Some(0), "{addrs}");
    assert!(
        f.group
            .ip_json(&["link"])
            .as_array()
            .expect("links")
            .iter()
            .all(|l| l["ifname"] != "eth0")
    );
}

#[test]
fn attach_configures_eth0_and_detach_gives_it_back() {
    if !root() {
        return;
    }
    let f = Fixture::new();
    let rec = f.record();
    eci_netns::attach(&rec, &f.group.path, &config()).expect("attach");
    assert_attached(&f);
    // Idempotent: a second attach changes nothing and still works.
    eci_netns::attach(&rec, &f.group.path, &config()).expect("attach again");
    assert_attached(&f);

    assert!(eci_netns::detach(&rec, Some(&f.group.path)).expect("detach"));
    assert_returned(&f);
    assert!(eci_netns::detach(&rec, Some(&f.group.path)).expect("detach again"));
    assert_returned(&f);

    // The record survives a round trip through JSON (the agent stores it).
    let json = serde_json::to_string(&rec).expect("serialize");
    assert!(json.contains(&format!("\"{}\"", f.mac)), "{json}");
    let back: EniRecord = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, rec);
}

#[test]
fn attach_finishes_after_a_crash_at_any_step() {
    if !root() {
        return;
    }
    let f = Fixture::new();
    let rec = f.record();
    // Crash after the move, before the rename.
    ip(&["link", "set", &f.eni, "netns", &f.group.name]);
    eci_netns::attach(&rec, &f.group.path, &config()).expect("attach after move");
    assert_attached(&f);
    // Crash halfway through configuration: an extra address, a missing one, link down.
    f.group.ip(&["addr", "del", "10.77.0.2/24", "dev", "eth0"]);
    f.group.ip(&["addr", "add", "10.77.0.9/24", "dev", "eth0"]);
    f.group.ip(&["link", "set", "eth0", "down"]);
    eci_netns::attach(&rec, &f.group.path, &config()).expect("attach after partial config");
    assert_attached(&f);
    let addrs = f.group.ip(&["-4", "addr", "show", "dev", "eth0"]);
    assert!(!addrs.contains("10.77.0.9"), "{addrs}");

    // Crash during detach: moved back to the host under a temporary name, still up.
    let tmp = name("xt", unique());
    f.group.ip(&["link", "set", "eth0", "down"]);
    f.group.ip(&["link", "set", "eth0", "name", &tmp]);
    f.group.ip(&[
        "link",
        "set",
        &tmp,
        "netns",
        &std::process::id().to_string(),
    ]);
    let _tmp_guard = HostLinkGuard(tmp.clone());
    ip(&["link", "set", &tmp, "up"]);
    assert!(eci_netns::detach(&rec, Some(&f.group.path)).expect("detach after crash"));
    assert_returned(&f);
}

#[test]
fn detach_restores_a_changed_mac_and_mtu() {
    if !root() {
        return;
    }
    let f = Fixture::new();
    let rec = f.record();
    eci_netns::attach(&rec, &f.group.path, &config()).expect("attach");
    // A link-local IPv6 gateway (as clouds use) needs no on-link flag.
    let peer = f
        .vpc
        .ip_json(&["link"])
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l["ifname"] != "lo")
        .expect("peer")["ifname"]
        .as_str()
        .expect("name")
        .to_string();
    f.vpc
        .ip(&["addr", "add", "fe80::1/64", "dev", &peer, "nodad"]);
    let cfg = EniConfig {
        ipv6_gateway: Some("fe80::1".parse().expect("gw6")),
        ..config()
    };
    eci_netns::attach(&rec, &f.group.path, &cfg).expect("attach with a link-local gateway");
    let r6 = &f.group.ip_json(&["-6", "route", "show", "default"])[0];
    assert_eq!(r6["gateway"], "fe80::1", "{r6}");
    let to = serve_once(Some(&f.vpc.path), "fd77::1".parse::<IpAddr>().expect("ip"));
    assert_eq!(call(&f.group.path, to), Ok("pong".into()));
    // A bad MTU is refused before anything is touched, naming the field.
    let err = eci_netns::attach(
        &rec,
        &f.group.path,
        &EniConfig {
            mtu: Some(1000),
            ..config()
        },
    )
    .expect_err("mtu too small for IPv6");
    assert!(err.to_string().contains("mtu 1000"), "{err}");
    // Found by ifindex though the tenant changed its MAC.
    f.group.ip(&[
        "link",
        "set",
        "eth0",
        "address",
        "02:ee:ee:ee:ee:ee",
        "mtu",
        "1300",
    ]);
    assert!(eci_netns::detach(&rec, Some(&f.group.path)).expect("detach"));
    assert_returned(&f);
}

#[test]
fn detach_never_clobbers_a_host_link_with_the_original_name() {
    if !root() {
        return;
    }
    let f = Fixture::new();
    let rec = f.record();
    eci_netns::attach(&rec, &f.group.path, &config()).expect("attach");
    // Someone took the ENI's name on the host meanwhile.
    let other = name("xo", unique());
    let _g = HostLinkGuard(f.eni.clone());
    let _o = HostLinkGuard(other.clone());
    ip(&[
        "link", "add", &f.eni, "type", "veth", "peer", "name", &other,
    ]);
    let err = eci_netns::detach(&rec, Some(&f.group.path)).expect_err("name taken");
    assert!(matches!(err, AttachError::NameTaken { .. }), "{err}");
    assert!(err.to_string().contains(&f.eni), "{err}");
    // Nothing lost: the ENI is still the group's eth0.
    assert_eq!(
        f.group.ip_json(&["link", "show", "eth0"])[0]["address"],
        f.mac.to_string()
    );
    ip(&["link", "del", &f.eni]);
    assert!(eci_netns::detach(&rec, Some(&f.group.path)).expect("detach"));
    assert_returned(&f);
}

#[test]
fn unknown_mac_fails_clearly_and_leaves_nothing() {
    if !root() {
        return;
    }
    let group = Netns::new("g");
    let mac: MacAddress = "02:ec:ff:ff:ff:fe".parse().expect("mac");
    let err = eci_netns::find(&EniSelector::Mac(mac)).expect_err("no such MAC");
    assert_eq!(
        err.to_string(),
        "no link with MAC 02:ec:ff:ff:ff:fe in the host network namespace"
    );
    let rec = EniRecord {
        mac,
        original_name: "xnone".into(),
        index: 999_999,
        mtu: 1500,
    };
    let err = eci_netns::attach(&rec, &group.path, &config()).expect_err("no such link");
    assert!(matches!(err, AttachError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("02:ec:ff:ff:ff:fe"), "{err}");
    let links = group.ip_json(&["link"]);
    assert_eq!(links.as_array().map(Vec::len), Some(1), "only lo: {links}");
    assert!(!eci_netns::detach(&rec, Some(&group.path)).expect("detach of nothing"));
    // A missing pin is an empty netns for detach, an error for attach.
    let gone = std::path::Path::new("/run/netns/eci-t-does-not-exist");
    assert!(!eci_netns::detach(&rec, Some(gone)).expect("detach, missing pin"));
    let err = eci_netns::attach(&rec, gone, &config()).expect_err("missing pin");
    assert!(err.to_string().contains("eci-t-does-not-exist"), "{err}");
}

#[test]
fn a_macvlan_on_a_veth_parent_works_as_an_eni() {
    if !root() {
        return;
    }
    let f = Fixture::new();
    let u = unique();
    let mv = name("xm", u);
    let mac = MacAddress([0x02, 0xed, (u >> 16) as u8, (u >> 8) as u8, u as u8, 0x02]);
    let _g = HostLinkGuard(mv.clone());
    ip(&[
        "link",
        "add",
        &mv,
        "link",
        &f.eni,
        "address",
        &mac.to_string(),
        "type",
        "macvlan",
        "mode",
        "bridge",
    ]);
    ip(&["link", "set", &f.eni, "up"]);
    let link = eci_netns::find(&EniSelector::LinkName(mv.clone())).expect("find by name");
    assert_eq!(link.kind.as_deref(), Some("macvlan"));
    let rec = EniRecord::of(&link).expect("record");
    let cfg = EniConfig {
        ipv4: Some("10.77.0.5/24".parse().expect("v4")),
        ipv6: Some("fd77::5/64".parse().expect("v6")),
        ..config()
    };
    eci_netns::attach(&rec, &f.group.path, &cfg).expect("attach macvlan");
    for peer in ["10.77.0.1", "fd77::1"] {
        let to = serve_once(Some(&f.vpc.path), peer.parse::<IpAddr>().expect("ip"));
        assert_eq!(call(&f.group.path, to), Ok("pong".into()), "to {to}");
    }
    assert!(eci_netns::detach(&rec, Some(&f.group.path)).expect("detach"));
    let back = &ip_json(&["link", "show", &mv])[0];
    assert_eq!(back["address"], mac.to_string(), "{back}");
    assert!(
        !back["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .any(|x| x == "UP"),
        "{back}"
    );
}
