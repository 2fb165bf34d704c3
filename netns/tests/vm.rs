//! Privileged tests of a vm group's network (root; skipped otherwise): a "vpc" netns and
//! a "group" netns joined by a veth (the group's eth0), the group plugged for a VM, and
//! a test thread playing the guest on the tap's descriptor with raw Ethernet frames
//! (ARP replies, handcrafted UDP, TCP SYNs observed). Names are unique; netns and links
//! go away in `Drop` even when an assertion fails.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use common::{HostLinkGuard, Netns, in_netns, ip, ip_json, name, root, unique};
use eci_netns::vm::{GuestNet, configure_guest, plug, unplug};
use eci_netns::{EniConfig, EniRecord, EniSelector, MacAddress, Rule};

const VPC4: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const GUEST4: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 5);
const VPC6: Ipv6Addr = Ipv6Addr::new(0xfd78, 0, 0, 0, 0, 0, 0, 1);
const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd78, 0, 0, 0, 0, 0, 0, 5);

/// vpc (10.78.0.1/24, fd78::1/64) ←veth→ group eth0 (10.78.0.5/24, fd78::5/64, default
/// routes via the vpc, a known MAC).
struct Fixture {
    vpc: Netns,
    group: Netns,
    mac: MacAddress,
    vpc_mac: [u8; 6],
    /// The vpc end of the veth.
    peer: String,
}

impl Fixture {
    fn new() -> Fixture {
        let u = unique();
        let vpc = Netns::new("v");
        let group = Netns::new("g");
        let mac = MacAddress([0x02, 0xed, (u >> 16) as u8, (u >> 8) as u8, u as u8, 0x05]);
        let peer = name("vp", u);
        group.ip(&[
            "link",
            "add",
            "eth0",
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
        vpc.ip(&["addr", "add", "10.78.0.1/24", "dev", &peer]);
        vpc.ip(&["addr", "add", "fd78::1/64", "dev", &peer, "nodad"]);
        vpc.ip(&["link", "set", &peer, "up"]);
        group.ip(&["addr", "add", "10.78.0.5/24", "dev", "eth0"]);
        group.ip(&["addr", "add", "fd78::5/64", "dev", "eth0", "nodad"]);
        group.ip(&["link", "set", "eth0", "up"]);
        group.ip(&["route", "add", "default", "via", "10.78.0.1"]);
        group.ip(&["-6", "route", "add", "default", "via", "fd78::1"]);
        let l = &vpc.ip_json(&["link", "show", &peer])[0];
        let vpc_mac: MacAddress = l["address"].as_str().expect("mac").parse().expect("mac");
        Fixture {
            vpc,
            group,
            mac,
            vpc_mac: vpc_mac.0,
            peer,
        }
    }

    fn expected(&self) -> GuestNet {
        GuestNet {
            mac: self.mac,
            mtu: 1500,
            addrs: vec![
                "10.78.0.5/24".parse().expect("v4"),
                "fd78::5/64".parse().expect("v6"),
            ],
            gateways: vec![
                "10.78.0.1".parse().expect("gw"),
                "fd78::1".parse().expect("gw6"),
            ],
            probe_source: Some(eci_netns::vm::PROBE_SOURCE),
        }
    }
}

fn link(ns: &Netns, name: &str) -> serde_json::Value {
    ns.ip_json(&["-d", "link", "show", name])[0].clone()
}

fn has_link(ns: &Netns, name: &str) -> bool {
    ns.ip_json(&["link"])
        .as_array()
        .expect("links")
        .iter()
        .any(|l| l["ifname"] == name)
}

fn addrs(ns: &Netns, dev: &str) -> Vec<String> {
    let a = &ns.ip_json(&["addr", "show", "dev", dev])[0]["addr_info"];
    a.as_array()
        .map(|v| {
            v.iter()
                .filter(|a| a["scope"] != "link")
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks eth0 is as the fixture made it: its MAC, no master, its addresses, routes,
/// and no br0 / tap0.
fn assert_unplugged(f: &Fixture) {
    let l = link(&f.group, "eth0");
    assert_eq!(l["address"], f.mac.to_string(), "{l}");
    assert!(l.get("master").is_none(), "{l}");
    assert!(
        l["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .any(|x| x == "UP"),
        "{l}"
    );
    let mut have = addrs(&f.group, "eth0");
    have.sort();
    assert_eq!(have, vec!["10.78.0.5/24", "fd78::5/64"]);
    assert_eq!(
        f.group.ip_json(&["route", "show", "default"])[0]["gateway"],
        "10.78.0.1"
    );
    assert_eq!(
        f.group.ip_json(&["-6", "route", "show", "default"])[0]["gateway"],
        "fd78::1"
    );
    assert!(!has_link(&f.group, "br0"));
    assert!(!has_link(&f.group, "tap0"));
}

/// `nft list tables` in `ns`.
fn nft_tables(ns: &Netns) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "list", "tables"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- the guest: raw frames on the tap descriptor ----

/// A received IPv4 packet (Ethernet header stripped).
type Packet = Vec<u8>;

/// Plays the guest on the tap: answers ARP requests for its IPv4 address with its MAC,
/// hands every IPv4 packet for its MAC to the test, sends what the test writes.
struct Guest {
    rx: Receiver<Packet>,
    tap: File,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Guest {
    fn start(tap: OwnedFd, mac: MacAddress, ip4: Ipv4Addr) -> Guest {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let tap = File::from(tap);
        let reader = tap.try_clone().expect("dup tap");
        let writer = tap.try_clone().expect("dup tap");
        let s = stop.clone();
        let thread = std::thread::spawn(move || guest_loop(reader, writer, mac.0, ip4, tx, s));
        Guest {
            rx,
            tap,
            stop,
            thread: Some(thread),
        }
    }

    fn send(&mut self, frame: &[u8]) {
        self.tap.write_all(frame).expect("write to the tap");
    }

    /// The next received packet `want` accepts within `within`; None at the deadline.
    fn expect(&self, within: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Packet> {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(p) if want(&p) => return Some(p),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => panic!("guest thread gone"),
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn guest_loop(
    mut reader: File,
    mut writer: File,
    mac: [u8; 6],
    ip4: Ipv4Addr,
    tx: Sender<Packet>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: reader.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that lives across the call.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            // The tap was deleted under us (unplug): the guest is done.
            Err(_) => return,
        };
        let f = &buf[..n];
        if f.len() < 14 {
            continue;
        }
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        if ethertype == 0x0806 && f.len() >= 42 {
            let a = &f[14..];
            // Request (op 1) for our address.
            if a[6..8] == [0, 1] && a[24..28] == ip4.octets() {
                let mut r = Vec::with_capacity(42);
                r.extend_from_slice(&a[8..14]); // to the asker
                r.extend_from_slice(&mac);
                r.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
                r.extend_from_slice(&mac);
                r.extend_from_slice(&ip4.octets());
                r.extend_from_slice(&a[8..18]);
                let _ = writer.write_all(&r);
            }
        } else if (ethertype == 0x0800 || ethertype == 0x86dd) && f[0..6] == mac {
            let _ = tx.send(f[14..].to_vec());
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame with an IPv4 UDP datagram (UDP checksum 0: none, valid for IPv4).
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&src.1.to_be_bytes());
    ip.extend_from_slice(&dst.1.to_be_bytes());
    ip.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(payload);
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f
}

/// An Ethernet frame with an IPv6 UDP datagram (checksum over the pseudo-header).
fn udp6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.1.to_be_bytes());
    udp.extend_from_slice(&dst.1.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.0.octets());
    pseudo.extend_from_slice(&dst.0.octets());
    pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(&udp);
    let c = checksum(&pseudo);
    udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    f.extend_from_slice(&udp);
    f
}

/// Whether `p` is an IPv6 UDP datagram to `port`.
fn is_udp6_to(port: u16) -> impl Fn(&[u8]) -> bool {
    move |p| {
        p.len() >= 48 && p[0] >> 4 == 6 && p[6] == 17 && u16::from_be_bytes([p[42], p[43]]) == port
    }
}

/// (protocol, source, destination port) of an IPv4 packet.
fn ports(p: &[u8]) -> Option<(u8, Ipv4Addr, u16)> {
    if p.len() < 24 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0xf) * 4;
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let t = p.get(ihl..ihl + 4)?;
    Some((p[9], src, u16::from_be_bytes([t[2], t[3]])))
}

fn is_udp_to(port: u16) -> impl Fn(&[u8]) -> bool {
    move |p| ports(p).is_some_and(|(proto, _, d)| proto == 17 && d == port)
}

fn is_tcp_to(port: u16) -> impl Fn(&[u8]) -> bool {
    move |p| ports(p).is_some_and(|(proto, _, d)| proto == 6 && d == port)
}

/// A UDP socket bound in the vpc netns.
fn vpc_udp(f: &Fixture, port: u16) -> UdpSocket {
    let s = in_netns(&f.vpc.path, move || {
        UdpSocket::bind((VPC4, port)).expect("bind")
    });
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s
}

/// Tries to connect from the vpc to the guest in the background (the SYNs are what the
/// test watches on the tap; nothing answers them).
fn vpc_connect(f: &Fixture, port: u16) {
    let path = f.vpc.path.clone();
    std::thread::spawn(move || {
        in_netns(&path, move || {
            let _ = TcpStream::connect_timeout(
                &SocketAddr::new(IpAddr::V4(GUEST4), port),
                Duration::from_secs(3),
            );
        })
    });
}

#[test]
fn plug_bridges_the_guest_and_the_security_group_filters_it() {
    if !root() {
        return;
    }
    let f = Fixture::new();
    let plugged = plug(&f.group.path).expect("plug").expect("eth0 present");
    assert_eq!(plugged.guest, f.expected());
    assert_eq!(
        plugged.guest.to_cmdline(),
        format!(
            "mac={};mtu=1500;a=10.78.0.5/24;a=fd78::5/64;g=10.78.0.1;g=fd78::1;p=192.0.0.8",
            f.mac
        )
    );

    // The plug's shape.
    let br = link(&f.group, "br0");
    let data = &br["linkinfo"]["info_data"];
    assert_eq!(data["nf_call_iptables"], 1, "{br}");
    assert_eq!(data["nf_call_ip6tables"], 1, "{br}");
    let eth0 = link(&f.group, "eth0");
    assert_eq!(eth0["master"], "br0", "{eth0}");
    assert_ne!(eth0["address"], f.mac.to_string(), "{eth0}");
    let fresh: MacAddress = eth0["address"].as_str().expect("mac").parse().expect("mac");
    assert_eq!(
        fresh.0[0] & 0x03,
        0x02,
        "locally administered unicast: {fresh}"
    );
    assert!(addrs(&f.group, "eth0").is_empty());
    let tap = link(&f.group, "tap0");
    assert_eq!(tap["master"], "br0", "{tap}");
    assert_eq!(tap["linkinfo"]["info_data"]["type"], "tap", "{tap}");
    for dev in ["br0", "tap0", "eth0"] {
        let v = in_netns(&f.group.path, move || {
            std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"))
                .expect("sysctl")
        });
        assert_eq!(v.trim(), "1", "{dev} speaks no IPv6 of its own");
    }

    // The group's addresses, as the status observes them, are the guest's now.
    assert_eq!(
        eci_netns::vm::guest_of(&f.group.path).expect("guest_of"),
        Some(f.expected())
    );
    let seen: Vec<String> = eci_netns::observe::addresses(&f.group.path)
        .expect("observe")
        .into_iter()
        .filter(|a| a.link == "eth0" && a.up)
        .map(|a| a.address.to_string())
        .collect();
    assert_eq!(seen, vec!["10.78.0.5", "fd78::5"]);
    // The agent's ENI attach, re-run while plugged (adoption), leaves eth0 to the guest.
    let rec = EniRecord {
        mac: f.mac,
        original_name: "unused".into(),
        index: eth0["ifindex"].as_u64().expect("ifindex") as u32,
        mtu: 1500,
    };
    let cfg = EniConfig {
        mtu: Some(1500),
        ipv4: Some("10.78.0.5/24".parse().expect("v4")),
        ..Default::default()
    };
    eci_netns::attach(&rec, &f.group.path, &cfg).expect("attach while plugged");
    assert!(addrs(&f.group, "eth0").is_empty());
    assert_eq!(link(&f.group, "eth0")["address"], eth0["address"]);

    let mut guest = Guest::start(plugged.tap, f.mac, GUEST4);

    // 1. A datagram for the guest's address crosses the bridge onto the tap (the vpc
    //    resolves 10.78.0.5 to the original MAC through the guest's ARP reply).
    let vpc = vpc_udp(&f, 5000);
    vpc.send_to(b"hello guest", (GUEST4, 4000)).expect("send");
    let p = guest
        .expect(Duration::from_secs(5), is_udp_to(4000))
        .expect("the datagram reaches the tap");
    assert_eq!(&p[28..], b"hello guest");

    // 2. The guest's datagram (original MAC and IP) reaches the vpc.
    guest.send(&udp_frame(
        f.mac.0,
        f.vpc_mac,
        (GUEST4, 4000),
        (VPC4, 5000),
        b"hello vpc",
    ));
    let mut buf = [0u8; 64];
    let (n, from) = vpc.recv_from(&mut buf).expect("the vpc receives");
    assert_eq!(&buf[..n], b"hello vpc");
    assert_eq!(from, SocketAddr::new(IpAddr::V4(GUEST4), 4000));

    // The tap's guard: a frame from another MAC never gets out, even with the guest's
    // address.
    assert!(nft_tables(&f.group).contains("bridge eci_guard_tap0"));
    guest.send(&udp_frame(
        [0x02, 0, 0, 0, 0, 0x99],
        f.vpc_mac,
        (GUEST4, 4000),
        (VPC4, 5000),
        b"other mac",
    ));
    vpc.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    assert!(vpc.recv_from(&mut buf).is_err(), "a foreign MAC gets out");
    vpc.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");

    // Without a security-group table everything is bridged: a SYN to 8081 arrives.
    vpc_connect(&f, 8081);
    assert!(
        guest
            .expect(Duration::from_secs(3), is_tcp_to(8081))
            .is_some(),
        "without the table a SYN to 8081 arrives"
    );
    std::thread::sleep(Duration::from_secs(4)); // that connect gives up
    while guest.rx.try_recv().is_ok() {} // and its SYNs are forgotten

    // 3. The security group, in the forward chain: ingress only TCP 8080.
    let rules =
        vec![Rule::parse("ingress", "tcp", "8080/8080", "0.0.0.0/0", "accept", 1).expect("rule")];
    let guest_addrs: Vec<IpAddr> = vec![IpAddr::V4(GUEST4), "fd78::5".parse().expect("v6")];
    eci_netns::nft::apply_vm_security_groups(&f.group.path, &rules, &guest_addrs).expect("apply");
    vpc_connect(&f, 8080);
    vpc_connect(&f, 8081);
    assert!(
        guest
            .expect(Duration::from_secs(3), is_tcp_to(8080))
            .is_some(),
        "a SYN to 8080 is let through"
    );
    assert!(
        guest
            .expect(Duration::from_secs(2), is_tcp_to(8081))
            .is_none(),
        "a SYN to 8081 is dropped in forward"
    );
    let counters = eci_netns::nft::security_group_counters(&f.group.path).expect("counters");
    assert!(
        counters.iter().any(|c| c.index == 0 && c.packets > 0),
        "{counters:?}"
    );
    // Unsolicited UDP is dropped now...
    vpc.send_to(b"unsolicited", (GUEST4, 4001)).expect("send");
    assert!(
        guest
            .expect(Duration::from_secs(2), is_udp_to(4001))
            .is_none(),
        "UDP to the guest is dropped"
    );
    // ...but a reply to the guest's own datagram is established: conntrack sees the
    // bridged flow in the group's netns.
    guest.send(&udp_frame(
        f.mac.0,
        f.vpc_mac,
        (GUEST4, 4002),
        (VPC4, 5000),
        b"ask",
    ));
    let (n, from) = vpc
        .recv_from(&mut buf)
        .expect("the vpc receives the question");
    assert_eq!(&buf[..n], b"ask");
    vpc.send_to(b"answer", from).expect("answer");
    let p = guest
        .expect(Duration::from_secs(3), is_udp_to(4002))
        .expect("the answer is established and reaches the guest");
    assert_eq!(&p[28..], b"answer");
    // A spoofed source is dropped: the vpc never hears it.
    guest.send(&udp_frame(
        f.mac.0,
        f.vpc_mac,
        (Ipv4Addr::new(10, 78, 0, 99), 4003),
        (VPC4, 5000),
        b"spoof",
    ));
    vpc.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    assert!(
        vpc.recv_from(&mut buf).is_err(),
        "a spoofed source gets out"
    );

    // 4. Unplug gives eth0 back, twice, and removes the tap's guard.
    unplug(&f.group.path).expect("unplug");
    assert_unplugged(&f);
    assert!(!nft_tables(&f.group).contains("eci_guard_tap0"));
    unplug(&f.group.path).expect("unplug again");
    assert_unplugged(&f);
    drop(guest);
}

#[test]
fn plug_after_a_crash_and_without_eth0() {
    if !root() {
        return;
    }
    let f = Fixture::new();
    // The shim dies with the tap: the tap goes with its descriptor, br0 and eth0's
    // new identity stay; the next plug undoes that first and hands out the same
    // identity again.
    let first = plug(&f.group.path).expect("plug").expect("eth0");
    drop(first);
    assert!(!has_link(&f.group, "tap0"));
    assert!(has_link(&f.group, "br0"));
    let second = plug(&f.group.path).expect("plug again").expect("eth0");
    assert_eq!(second.guest, f.expected());
    assert!(has_link(&f.group, "tap0"));
    drop(second);
    unplug(&f.group.path).expect("unplug");
    assert_unplugged(&f);

    // No eth0: nothing to plug, nothing created.
    let empty = Netns::new("e");
    assert!(plug(&empty.path).expect("plug").is_none());
    assert!(!has_link(&empty, "br0"));
    unplug(&empty.path).expect("unplug of nothing");
    // A netns that is gone.
    unplug(std::path::Path::new("/nonexistent/ns/net")).expect("unplug of a missing pin");
}

#[test]
fn the_eni_returns_from_a_plugged_group_without_unplug() {
    if !root() {
        return;
    }
    let u = unique();
    let vpc = Netns::new("v");
    let group = Netns::new("g");
    let eni = name("xv", u);
    let peer = name("xw", u);
    let mac = MacAddress([0x02, 0xee, (u >> 16) as u8, (u >> 8) as u8, u as u8, 0x07]);
    let _guard = HostLinkGuard(eni.clone());
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
    let link = eci_netns::find(&EniSelector::Mac(mac)).expect("find");
    let rec = EniRecord::of(&link).expect("record");
    let cfg = EniConfig {
        mtu: Some(1400),
        ipv4: Some("10.79.0.2/24".parse().expect("v4")),
        ipv4_gateway: Some("10.79.0.1".parse().expect("gw")),
        ipv6: None,
        ipv6_gateway: None,
    };
    eci_netns::attach(&rec, &group.path, &cfg).expect("attach");
    let plugged = plug(&group.path).expect("plug").expect("eth0");
    assert_eq!(plugged.guest.mtu, 1400);
    assert_eq!(
        plugged.guest.addrs,
        vec!["10.79.0.2/24".parse().expect("v4")]
    );
    // The shim is gone without unplugging: the agent's ENI return still works.
    drop(plugged);
    assert!(eci_netns::detach(&rec, Some(&group.path)).expect("detach"));
    let l = &ip_json(&["link", "show", &eni])[0];
    assert_eq!(l["address"], mac.to_string(), "{l}");
    assert!(l.get("master").is_none(), "{l}");
    assert_eq!(l["mtu"], 1500, "{l}");
    assert!(!has_link(&group, "br0"));
    assert!(!has_link(&group, "eth0"));
}

#[test]
fn configure_guest_gives_the_nic_the_identity_in_the_group_netns() {
    if !root() {
        return;
    }
    // "root" plays the guest's root netns holding the virtio NIC (a veth end here).
    let root_ns = Netns::new("r");
    let group = Netns::new("g");
    let other = Netns::new("o");
    let u = unique();
    let mac = MacAddress([0x02, 0xef, (u >> 16) as u8, (u >> 8) as u8, u as u8, 0x09]);
    root_ns.ip(&[
        "link",
        "add",
        "ens3",
        "address",
        &mac.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
        "netns",
        &other.name,
    ]);
    other.ip(&["addr", "add", "10.80.0.1/24", "dev", "peer0"]);
    other.ip(&["link", "set", "peer0", "up"]);
    group.ip(&["link", "set", "lo", "down"]);
    let net = GuestNet::from_cmdline(&format!(
        "mac={mac};mtu=1450;a=10.80.0.5/24;a=fd80::5/64;g=10.80.0.1;g=fd80::1;p=192.0.0.8"
    ))
    .expect("cmdline");
    let (n2, gp) = (net.clone(), group.path.clone());
    in_netns(&root_ns.path, move || configure_guest(&n2, &gp)).expect("configure");
    // Again: idempotent.
    let (n2, gp) = (net.clone(), group.path.clone());
    in_netns(&root_ns.path, move || configure_guest(&n2, &gp)).expect("configure again");
    assert!(!has_link(&root_ns, "ens3"));
    let l = link(&group, "eth0");
    assert_eq!(l["address"], mac.to_string(), "{l}");
    assert_eq!(l["mtu"], 1450, "{l}");
    let mut have = addrs(&group, "eth0");
    have.sort();
    assert_eq!(have, vec!["10.80.0.5/24", "fd80::5/64"]);
    assert_eq!(
        group.ip_json(&["route", "show", "default"])[0]["gateway"],
        "10.80.0.1"
    );
    // The IPv6 gateway is outside the on-link prefix only if not covered: fd80::1 is
    // covered by fd80::/64.
    assert_eq!(
        group.ip_json(&["-6", "route", "show", "default"])[0]["gateway"],
        "fd80::1"
    );
    // The host's probe source is on-link through eth0, not behind the gateway.
    let probe = &group.ip_json(&["route", "show", "192.0.0.8/32"])[0];
    assert_eq!(probe["dev"], "eth0", "{probe}");
    assert!(probe.get("gateway").is_none(), "{probe}");
    assert_eq!(probe["scope"], "link", "{probe}");
    let lo = link(&group, "lo");
    assert!(
        lo["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .any(|x| x == "UP"),
        "{lo}"
    );
    // It works: the group reaches the peer.
    let to = common::serve_once(Some(&other.path), "10.80.0.1".parse().expect("ip"));
    assert_eq!(common::call(&group.path, to), Ok("pong".into()));
    // A NIC that is nowhere fails clearly.
    let mut missing = net.clone();
    missing.mac = MacAddress([0x02, 0, 0, 0, 0, 0x42]);
    let gp = group.path.clone();
    let err =
        in_netns(&root_ns.path, move || configure_guest(&missing, &gp)).expect_err("no such NIC");
    assert!(
        err.to_string()
            .contains("no NIC with MAC 02:00:00:00:00:42"),
        "{err}"
    );
}

#[test]
fn ipv6_is_bridged_and_filtered_in_forward_too() {
    if !root() {
        return;
    }
    let f = Fixture::new();
    let plugged = plug(&f.group.path).expect("plug").expect("eth0");
    // The vpc resolves the guest statically: this test does not answer neighbour
    // solicitations.
    f.vpc.ip(&[
        "-6",
        "neigh",
        "replace",
        "fd78::5",
        "lladdr",
        &f.mac.to_string(),
        "dev",
        &f.peer,
        "nud",
        "permanent",
    ]);
    let mut guest = Guest::start(plugged.tap, f.mac, GUEST4);
    let vpc = in_netns(&f.vpc.path, || UdpSocket::bind((VPC6, 5000)).expect("bind"));
    vpc.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buf = [0u8; 64];

    // Open: both ways (the guest speaks first: the vpc learns nothing from it, but the
    // bridge learns where the guest's MAC is).
    guest.send(&udp6_frame(
        f.mac.0,
        f.vpc_mac,
        (GUEST6, 4000),
        (VPC6, 5000),
        b"yo6",
    ));
    let (n, from) = vpc.recv_from(&mut buf).expect("the vpc receives");
    assert_eq!(&buf[..n], b"yo6");
    assert_eq!(from, SocketAddr::new(IpAddr::V6(GUEST6), 4000));
    vpc.send_to(b"hi6", (GUEST6, 4000)).expect("send");
    let p = guest
        .expect(Duration::from_secs(3), is_udp6_to(4000))
        .expect("IPv6 reaches the tap");
    assert_eq!(&p[48..], b"hi6");

    // With the security group (ingress only TCP 8080 from IPv6 anywhere).
    let rules = vec![Rule::parse("ingress", "tcp", "8080/8080", "::/0", "", 1).expect("rule")];
    eci_netns::nft::apply_vm_security_groups(
        &f.group.path,
        &rules,
        &[IpAddr::V4(GUEST4), IpAddr::V6(GUEST6)],
    )
    .expect("apply");
    vpc.send_to(b"unsolicited", (GUEST6, 4001)).expect("send");
    assert!(
        guest
            .expect(Duration::from_secs(2), is_udp6_to(4001))
            .is_none(),
        "unsolicited IPv6 UDP is dropped in forward"
    );
    guest.send(&udp6_frame(
        f.mac.0,
        f.vpc_mac,
        (GUEST6, 4002),
        (VPC6, 5000),
        b"ask6",
    ));
    let (n, from) = vpc
        .recv_from(&mut buf)
        .expect("the vpc receives the question");
    assert_eq!(&buf[..n], b"ask6");
    vpc.send_to(b"answer6", from).expect("answer");
    let p = guest
        .expect(Duration::from_secs(3), is_udp6_to(4002))
        .expect("the IPv6 answer is established");
    assert_eq!(&p[48..], b"answer6");
    let spoof: Ipv6Addr = "fd78::99".parse().expect("v6");
    guest.send(&udp6_frame(
        f.mac.0,
        f.vpc_mac,
        (spoof, 4003),
        (VPC6, 5000),
        b"spoof",
    ));
    vpc.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    assert!(
        vpc.recv_from(&mut buf).is_err(),
        "a spoofed IPv6 source gets out"
    );
    drop(guest);
    unplug(&f.group.path).expect("unplug");
    assert_unplugged(&f);
}

#[test]
fn a_dev_mode_group_plugs_too_and_adoption_leaves_it_plugged() {
    if !root() {
        return;
    }
    let u = unique();
    let net = (std::process::id() % 250) as u8;
    let br = name("xc", u);
    let _br_guard = HostLinkGuard(br.clone());
    let gw4: Ipv4Addr = format!("10.247.{net}.1").parse().expect("gw");
    let guest4: Ipv4Addr = format!("10.247.{net}.2").parse().expect("guest");
    eci_netns::ensure_bridge(&eci_netns::BridgeConfig {
        name: br.clone(),
        gateway_v4: format!("{gw4}/24").parse().expect("v4"),
        gateway_v6: None,
        mtu: None,
    })
    .expect("bridge");
    let group = Netns::new("d");
    let host = name("xd", unique());
    let _host_guard = HostLinkGuard(host.clone());
    let mac = MacAddress([0x02, 0xec, 10, 247, net, 2]);
    let cfg = EniConfig {
        mtu: None,
        ipv4: Some(format!("{guest4}/24").parse().expect("v4")),
        ipv4_gateway: Some(gw4),
        ipv6: None,
        ipv6_gateway: None,
    };
    let guard = eci_netns::nft::PortGuard {
        port: host.clone(),
        mac,
        ipv4: guest4,
        ipv6: None,
    };
    eci_netns::nft::ensure_port_guard(&guard).expect("guard");
    struct Unguard(String);
    impl Drop for Unguard {
        fn drop(&mut self) {
            let _ = eci_netns::nft::remove_port_guard(&self.0);
        }
    }
    let _unguard = Unguard(host.clone());
    eci_netns::attach_veth_with_mac(&host, &br, &group.path, &cfg, Some(mac)).expect("veth");

    let plugged = plug(&group.path).expect("plug").expect("eth0");
    assert_eq!(plugged.guest.mac, mac);
    assert_eq!(plugged.guest.gateways, vec![IpAddr::V4(gw4)]);
    // Adoption re-runs the veth setup: eth0 stays the guest's bridge port.
    let before = link(&group, "eth0");
    eci_netns::attach_veth_with_mac(&host, &br, &group.path, &cfg, Some(mac)).expect("veth again");
    let after = link(&group, "eth0");
    assert_eq!(after["address"], before["address"]);
    assert_eq!(after["master"], "br0");
    assert!(addrs(&group, "eth0").is_empty());

    // The guest reaches the gateway through the host port's guard (its MAC and address
    // are the group's).
    let gw_mac: MacAddress = ip_json(&["link", "show", &br])[0]["address"]
        .as_str()
        .expect("mac")
        .parse()
        .expect("mac");
    let sock = UdpSocket::bind((gw4, 0)).expect("bind on the gateway");
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let port = sock.local_addr().expect("addr").port();
    let mut guest = Guest::start(plugged.tap, mac, guest4);
    guest.send(&udp_frame(
        mac.0,
        gw_mac.0,
        (guest4, 4000),
        (gw4, port),
        b"dev",
    ));
    let mut buf = [0u8; 16];
    let (n, from) = sock.recv_from(&mut buf).expect("the gateway receives");
    assert_eq!(&buf[..n], b"dev");
    assert_eq!(from, SocketAddr::new(IpAddr::V4(guest4), 4000));
    drop(guest);
    unplug(&group.path).expect("unplug");
    assert_eq!(link(&group, "eth0")["address"], mac.to_string());
    eci_netns::detach_veth(&host).expect("detach");
}

/// An Ethernet frame with an IPv4 TCP segment without payload (`flags`: 0x02 SYN,
/// 0x12 SYN+ACK).
fn tcp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq_ack: (u32, u32),
    flags: u8,
) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&src.1.to_be_bytes());
    tcp.extend_from_slice(&dst.1.to_be_bytes());
    tcp.extend_from_slice(&seq_ack.0.to_be_bytes());
    tcp.extend_from_slice(&seq_ack.1.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.0.octets());
    pseudo.extend_from_slice(&dst.0.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let c = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// Whether `p` is an IPv4 TCP segment from `src`:`port` to port `to` with SYN and ACK
/// set.
fn is_syn_ack_from(src: Ipv4Addr, port: u16, to: u16) -> impl Fn(&[u8]) -> bool {
    move |p| {
        let ihl = usize::from(p.first().map_or(0, |b| b & 0xf)) * 4;
        ports(p).is_some_and(|(proto, s, d)| proto == 6 && s == src && d == to)
            && p.get(ihl..ihl + 2) == Some(&port.to_be_bytes()[..])
            && p.get(ihl + 13).is_some_and(|f| f & 0x12 == 0x12)
    }
}

#[test]
fn probes_reach_the_guest_from_the_probe_source_and_nothing_else_does() {
    if !root() {
        return;
    }
    let f = Fixture::new();
    let plugged = plug(&f.group.path).expect("plug").expect("eth0 present");
    let probe_src = eci_netns::vm::PROBE_SOURCE;
    assert_eq!(plugged.guest.probe_source, Some(probe_src));
    // br0 holds the probe source and routes each guest IPv4 address.
    assert_eq!(addrs(&f.group, "br0"), vec!["192.0.0.8/32"]);
    let r = &f.group.ip_json(&["route", "show", "10.78.0.5/32"])[0];
    assert_eq!(
        (&r["dev"], &r["prefsrc"]),
        (&"br0".into(), &"192.0.0.8".into()),
        "{r}"
    );
    // ...which is not a group address.
    let seen: Vec<IpAddr> = eci_netns::observe::addresses(&f.group.path)
        .expect("observe")
        .into_iter()
        .map(|a| a.address)
        .collect();
    assert!(!seen.contains(&IpAddr::V4(probe_src)), "{seen:?}");
    let br_mac: MacAddress = link(&f.group, "br0")["address"]
        .as_str()
        .expect("mac")
        .parse()
        .expect("mac");
    let mut guest = Guest::start(plugged.tap, f.mac, GUEST4);
    // A listener of the netns' own stack, which neither the guest nor the vpc may reach.
    let listener = in_netns(&f.group.path, || {
        std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7777)).expect("bind")
    });
    listener.set_nonblocking(true).expect("nonblocking");

    // The vpc cannot reach the probe source even with a route to it (no security
    // group yet: the tap guard's uplink chains alone keep br0 off eth0).
    f.vpc.ip(&["route", "add", "192.0.0.8/32", "dev", &f.peer]);
    let vpc_path = f.vpc.path.clone();
    let reached = in_netns(&vpc_path, move || {
        TcpStream::connect_timeout(&(probe_src, 7777).into(), Duration::from_secs(2)).is_ok()
    });
    assert!(!reached, "the vpc reached the netns' stack at 192.0.0.8");

    // Without a table the guest's SYN to 192.0.0.8 is answered (the control)...
    let guest_syn = |g: &mut Guest, sport: u16| {
        g.send(&tcp_frame(
            f.mac.0,
            br_mac.0,
            (GUEST4, sport),
            (probe_src, 7777),
            (1000, 0),
            0x02,
        ))
    };
    guest_syn(&mut guest, 40001);
    assert!(
        guest
            .expect(
                Duration::from_secs(3),
                is_syn_ack_from(probe_src, 7777, 40001)
            )
            .is_some(),
        "control: without the table the netns' stack answers"
    );

    // With the vm table (no rule admits anything): ...
    let rules = vec![Rule::parse("ingress", "all", "", "0.0.0.0/0", "accept", 1).expect("rule")];
    let guest_addrs: Vec<IpAddr> = vec![IpAddr::V4(GUEST4), IpAddr::V6(GUEST6)];
    eci_netns::nft::apply_vm_security_groups(&f.group.path, &rules, &guest_addrs).expect("apply");
    // ...the guest cannot open a connection to the netns' stack, even with a rule
    // admitting everything (the spec's rules are the guest's, in forward)...
    guest_syn(&mut guest, 40002);
    assert!(
        guest
            .expect(
                Duration::from_secs(2),
                is_syn_ack_from(probe_src, 7777, 40002)
            )
            .is_none(),
        "the guest opened a connection to the netns' stack"
    );
    // ...while a probe from the netns reaches the guest from 192.0.0.8 and its answer
    // comes back (established).
    let gp = f.group.path.clone();
    let probe = std::thread::spawn(move || {
        eci_netns::connect::tcp(
            &gp,
            SocketAddr::new(IpAddr::V4(GUEST4), 8080),
            Duration::from_secs(5),
        )
    });
    let syn = guest
        .expect(Duration::from_secs(3), is_tcp_to(8080))
        .expect("the probe's SYN reaches the guest");
    let (_, from, _) = ports(&syn).expect("tcp");
    assert_eq!(from, probe_src);
    let sport = u16::from_be_bytes([syn[20], syn[21]]);
    let seq = u32::from_be_bytes([syn[24], syn[25], syn[26], syn[27]]);
    guest.send(&tcp_frame(
        f.mac.0,
        br_mac.0,
        (GUEST4, 8080),
        (probe_src, sport),
        (5000, seq.wrapping_add(1)),
        0x12,
    ));
    let stream = probe.join().expect("probe thread");
    assert!(stream.is_ok(), "the probe connected: {stream:?}");
    // A probe elsewhere has no route: the netns' stack talks to the guest only.
    let err = eci_netns::connect::tcp(
        &f.group.path,
        SocketAddr::new(IpAddr::V4(VPC4), 80),
        Duration::from_secs(2),
    )
    .expect_err("no route to the vpc");
    assert!(err.to_string().contains("10.78.0.1:80"), "{err}");
    assert!(
        listener.accept().is_err(),
        "nothing ever connected to the netns' listener"
    );
    drop(guest);
    unplug(&f.group.path).expect("unplug");
}
