//! The simulated VPC itself (tests/src/vpc.rs), without the agent: ENIs moved by hand
//! into two namespaces reach each other, the router and a vpc client through the vpc
//! bridge over IPv4 and IPv6, and nothing is left after the guards drop.

use std::net::SocketAddr;
use std::time::Duration;

use eci_tests::vpc::{BannerServer, Eni, Netns, Vpc, banner_in, host_link, ip, links_in, ping_in};
use eci_tests::wait_for;

/// Does by hand what the agent does with an ENI: into `ns`, renamed `eth0`, addresses,
/// up, default routes.
fn attach(eni: &Eni, ns: &Netns) {
    ip(&["link", "set", &eni.name, "netns", &ns.name]).expect("move");
    ns.ip(&["link", "set", &eni.name, "name", "eth0"])
        .expect("rename");
    ns.ip(&["addr", "add", &eni.ipv4, "dev", "eth0"])
        .expect("v4");
    ns.ip(&["addr", "add", &eni.ipv6, "dev", "eth0", "nodad"])
        .expect("v6");
    ns.ip(&["link", "set", "eth0", "up"]).expect("up");
    ns.ip(&["route", "add", "default", "via", &eni.gateway_v4])
        .expect("route v4");
    ns.ip(&["-6", "route", "add", "default", "via", &eni.gateway_v6])
        .expect("route v6");
}

fn netns_gone(name: &str) -> bool {
    !ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn enis_in_two_namespaces_reach_each_other_through_the_vpc_bridge() {
    let vpc = Vpc::new().expect("vpc");
    let a = vpc.eni().expect("eni a");
    let b = vpc.eni().expect("eni b");
    assert_ne!(a.name, b.name);
    assert_ne!(a.mac, b.mac);
    assert!(a.name.len() <= 15, "{}", a.name);
    let link = host_link(&a.name).expect("eni a in the host");
    assert_eq!(link.mac, a.mac);
    assert!(!link.up && link.addresses.is_empty(), "{link:?}");

    let na = Netns::new("ha").expect("netns a");
    let nb = Netns::new("hb").expect("netns b");
    attach(&a, &na);
    attach(&b, &nb);
    assert!(host_link(&a.name).is_none(), "eni a left the host");
    let eth0 = links_in(Some(&na.path()))
        .expect("links")
        .into_iter()
        .find(|l| l.name == "eth0")
        .expect("eth0 in netns a");
    assert_eq!(eth0.mac, a.mac);

    // TCP over IPv4, a → b.
    let server = BannerServer::start(Some(&nb.path()), SocketAddr::new(b.ip4(), 8080), "hello-b")
        .expect("server in b");
    assert_eq!(
        banner_in(&na.path(), server.addr, Duration::from_secs(3)).as_deref(),
        Some("hello-b")
    );
    // A vpc client reaches b; b reaches a server in the vpc through its gateway.
    assert!(vpc.wait_connect(b.ip4(), 8080, Duration::from_secs(5)));
    assert_eq!(vpc.banner(b.ip4(), 8080).as_deref(), Some("hello-b"));
    let router = vpc.serve(9090, "hello-vpc").expect("vpc server");
    let to_router = SocketAddr::new(vpc.router_v4().parse().expect("addr"), router.addr.port());
    assert_eq!(
        banner_in(&nb.path(), to_router, Duration::from_secs(3)).as_deref(),
        Some("hello-vpc")
    );
    // IPv6 ping both ways, and to the router.
    assert!(ping_in(&na.path(), b.ip6()), "a → b over IPv6");
    assert!(ping_in(&nb.path(), a.ip6()), "b → a over IPv6");
    assert!(vpc.ping(a.ip6()), "vpc → a over IPv6");
    assert!(vpc.ping(b.ip4()), "vpc → b over IPv4");

    let names = [a.name.clone(), b.name.clone()];
    let (vpc_name, na_name) = (vpc.ns.name.clone(), na.name.clone());
    drop(server);
    drop(router);
    // The vpc goes first while the ENIs still sit in a and b: they must die with it.
    drop(vpc);
    assert!(netns_gone(&vpc_name));
    let gone = wait_for(Duration::from_secs(5), || {
        let links = links_in(Some(&na.path())).ok()?;
        (!links.iter().any(|l| l.mac == a.mac)).then_some(())
    });
    assert!(gone.is_some(), "eni a outlived the vpc in {na_name}");
    drop(na);
    drop(nb);
    assert!(netns_gone(&na_name));
    for n in names {
        assert!(host_link(&n).is_none(), "{n} left in the host");
    }
}

#[test]
fn drop_removes_enis_left_in_the_host() {
    let vpc = Vpc::new().expect("vpc");
    let enis: Vec<Eni> = (0..3).map(|_| vpc.eni().expect("eni")).collect();
    for e in &enis {
        assert!(host_link(&e.name).is_some(), "{}", e.name);
    }
    let name = vpc.ns.name.clone();
    drop(vpc);
    for e in &enis {
        assert!(host_link(&e.name).is_none(), "{} left in the host", e.name);
    }
    assert!(netns_gone(&name));
}

#[test]
fn two_vpcs_do_not_share_names_or_addresses() {
    let v1 = Vpc::new().expect("vpc 1");
    let v2 = Vpc::new().expect("vpc 2");
    assert_ne!(v1.ns.name, v2.ns.name);
    let (a, b) = (v1.eni().expect("eni"), v2.eni().expect("eni"));
    assert_ne!(a.name, b.name);
    assert_ne!(a.mac, b.mac);
    assert_eq!(a.gateway_v4, v1.router_v4());
    assert_eq!(b.gateway_v6, v2.router_v6());
}
