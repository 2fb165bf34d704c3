//! Privileged tests of the security-group and masquerade tables (root; skipped otherwise).
//! Each test builds its own pair of namespaces joined by a veth, with unique names, and
//! removes them in `Drop` even when an assertion fails. `ip` is used here only.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use eci_netns::Rule;
use eci_netns::nft::{
    apply_security_groups, ensure_masquerade, remove_masquerade, security_group_counters,
};
use nix::sched::{CloneFlags, setns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipped: needs root");
        false
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named netns (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!(
            "ecisg-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn exec(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// Runs `f` on a thread inside this namespace (sockets made there stay in it).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The group netns ("g", 10.77.0.1, fd77::1) and a peer ("p", 10.77.0.2, fd77::2).
struct Pair {
    group: Netns,
    peer: Netns,
}

const G4: &str = "10.77.0.1";
const P4: &str = "10.77.0.2";
const G6: &str = "fd77::1";

impl Pair {
    fn new() -> Self {
        let group = Netns::new("g");
        let peer = Netns::new("p");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let (a, b) = (
            format!("esa{}x{n}", std::process::id() % 100_000),
            format!("esb{}x{n}", std::process::id() % 100_000),
        );
        group.exec(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        group.exec(&["link", "set", &b, "netns", &peer.name]);
        group.exec(&["addr", "add", &format!("{G4}/24"), "dev", &a]);
        group.exec(&["addr", "add", &format!("{G6}/64"), "dev", &a, "nodad"]);
        group.exec(&["link", "set", &a, "up"]);
        peer.exec(&["addr", "add", &format!("{P4}/24"), "dev", &b]);
        peer.exec(&["addr", "add", "fd77::2/64", "dev", &b, "nodad"]);
        peer.exec(&["link", "set", &b, "up"]);
        Pair { group, peer }
    }

    /// Echo listeners in `ns` on `ports` (all addresses, v4 and v6).
    fn listen(ns: &Netns, ports: &[u16]) {
        let listeners: Vec<TcpListener> = {
            let ports = ports.to_vec();
            ns.run(move || {
                ports
                    .iter()
                    .map(|p| TcpListener::bind(("::", *p)).expect("bind"))
                    .collect()
            })
        };
        for l in listeners {
            std::thread::spawn(move || {
                for mut s in l.incoming().flatten() {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
    }

    /// A TCP connection from `from` to `to`, or the error (timeout when dropped).
    fn connect(from: &Netns, to: SocketAddr) -> std::io::Result<TcpStream> {
        from.run(move || TcpStream::connect_timeout(&to, Duration::from_millis(700)))
    }
}

fn echo(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

fn rule(dir: &str, proto: &str, ports: &str, cidr: &str, policy: &str, prio: u32) -> Rule {
    Rule::parse(dir, proto, ports, cidr, policy, prio).expect("valid rule")
}

fn addr(host: &str, port: u16) -> SocketAddr {
    format!("{host}:{port}").parse().expect("addr")
}

#[test]
fn tcp_8080_only_then_8081_without_breaking_connections() {
    if !root() {
        return;
    }
    let pair = Pair::new();
    Pair::listen(&pair.group, &[8080, 8081]);
    Pair::listen(&pair.peer, &[9090]);

    // Without a table everything passes.
    assert!(Pair::connect(&pair.peer, addr(G4, 8081)).is_ok());

    let only_8080 = vec![
        rule("egress", "tcp", "1/65535", "10.99.0.0/16", "drop", 50),
        rule("ingress", "tcp", "8080/8080", "10.77.0.0/24", "accept", 10),
    ];
    apply_security_groups(&pair.group.path(), &only_8080).expect("apply 8080");
    let mut kept = Pair::connect(&pair.peer, addr(G4, 8080)).expect("8080 answers");
    assert!(echo(&mut kept));
    assert!(
        Pair::connect(&pair.peer, addr(G4, 8081)).is_err(),
        "8081 must not answer"
    );
    // Egress is allowed by default (and the reply comes back as established).
    let mut out = Pair::connect(&pair.group, addr(P4, 9090)).expect("egress");
    assert!(echo(&mut out));

    let c1 = security_group_counters(&pair.group.path()).expect("counters");
    let c8080 = c1.iter().find(|c| c.index == 1).expect("8080 rule counter");
    assert!(c8080.packets > 0 && c8080.bytes > 0, "{c1:?}");
    assert!(c1.iter().any(|c| c.index == 0), "{c1:?}");

    let mut both = only_8080.clone();
    both.push(rule("ingress", "tcp", "8081/8081", "0.0.0.0/0", "", 20));
    apply_security_groups(&pair.group.path(), &both).expect("apply 8081");
    assert!(
        echo(&mut kept),
        "connection opened before re-apply still works"
    );
    assert!(echo(&mut out), "egress connection still works");
    let mut c = Pair::connect(&pair.peer, addr(G4, 8081)).expect("8081 answers now");
    assert!(echo(&mut c));
    let mut c = Pair::connect(&pair.peer, addr(G4, 8080)).expect("8080 still answers");
    assert!(echo(&mut c));
    let c2 = security_group_counters(&pair.group.path()).expect("counters");
    assert_eq!(
        c2.iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(c2[1].packets > 0, "new table counts afresh: {c2:?}");
    assert!(c2[2].packets > 0, "{c2:?}");

    // A drop rule before the accept wins (priority order), and egress drop holds.
    let dropped = vec![
        rule("ingress", "tcp", "8080/8080", "10.77.0.2/32", "accept", 9),
        rule("ingress", "all", "", "10.77.0.0/24", "drop", 5),
        rule("egress", "tcp", "9090/9090", "10.77.0.2/32", "drop", 1),
    ];
    apply_security_groups(&pair.group.path(), &dropped).expect("apply drop");
    assert!(Pair::connect(&pair.peer, addr(G4, 8080)).is_err());
    assert!(Pair::connect(&pair.group, addr(P4, 9090)).is_err());
}

#[test]
fn a_hundred_rules_apply_quickly_and_count_separately() {
    if !root() {
        return;
    }
    let pair = Pair::new();
    Pair::listen(&pair.group, &[8080]);
    let mut rules: Vec<Rule> = (0..99u16)
        .map(|i| {
            let port = format!("{}/{}", 20000 + i, 20000 + i);
            rule(
                "ingress",
                "tcp",
                &port,
                "10.77.0.0/24",
                "",
                1 + u32::from(i % 7),
            )
        })
        .collect();
    rules.push(rule("ingress", "tcp", "8080/8080", "10.77.0.2/32", "", 100));
    let started = std::time::Instant::now();
    apply_security_groups(&pair.group.path(), &rules).expect("apply 100");
    let took = started.elapsed();
    eprintln!("apply of 100 rules: {took:?}");
    let mut c = Pair::connect(&pair.peer, addr(G4, 8080)).expect("8080 answers");
    assert!(echo(&mut c));
    let counters = security_group_counters(&pair.group.path()).expect("counters");
    assert_eq!(counters.len(), 100);
    assert!(
        counters[..99].iter().all(|c| c.packets == 0),
        "{counters:?}"
    );
    assert!(counters[99].packets > 0, "{counters:?}");
}

#[test]
fn ipv6_rules_and_icmpv6() {
    if !root() {
        return;
    }
    let pair = Pair::new();
    Pair::listen(&pair.group, &[8080, 8081]);
    let rules = vec![
        rule("ingress", "tcp", "8080/8080", "fd77::/64", "", 1),
        // An IPv4 rule must not open IPv6.
        rule("ingress", "tcp", "8081/8081", "0.0.0.0/0", "", 1),
    ];
    apply_security_groups(&pair.group.path(), &rules).expect("apply");
    let g6 = |p| SocketAddr::new(G6.parse().expect("v6"), p);
    // Neighbour discovery must work for this to succeed.
    assert!(Pair::connect(&pair.peer, g6(8080)).is_ok());
    assert!(Pair::connect(&pair.peer, g6(8081)).is_err());
    assert!(Pair::connect(&pair.peer, addr(G4, 8080)).is_err());
    assert!(Pair::connect(&pair.peer, addr(G4, 8081)).is_ok());
    assert!(
        !ping6(&pair.peer, G6),
        "echo request is not allowed by default"
    );

    let mut with_ping = rules.clone();
    with_ping.push(rule("ingress", "icmpv6", "", "::/0", "", 3));
    apply_security_groups(&pair.group.path(), &with_ping).expect("apply");
    assert!(ping6(&pair.peer, G6), "icmpv6 rule admits echo request");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.group.name,
            "nft",
            "list",
            "table",
            "inet",
            "eci_sg",
        ])
        .output()
        .expect("nft");
    let listed = String::from_utf8_lossy(&out.stdout);
    // `nft` decodes what this crate encoded into the intended rules.
    for want in [
        "policy drop;",
        "ct state established,related accept",
        "icmpv6 type 133-136 accept",
        "ip6 saddr fd77::/64 tcp dport 8080 counter packets",
        "meta nfproto ipv4 tcp dport 8081 counter packets",
        "comment \"eci-sg rule 2\"",
    ] {
        assert!(listed.contains(want), "{want:?} not in {listed}");
    }
}

/// One ICMPv6 echo from `from` to `to` over a raw socket; true when a reply comes.
fn ping6(from: &Netns, to: &str) -> bool {
    let to: std::net::Ipv6Addr = to.parse().expect("v6");
    from.run(move || {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn6, recv, sendto, socket,
        };
        let s = socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::IcmpV6,
        )
        .expect("raw icmpv6 socket");
        let tv = nix::sys::time::TimeVal::new(0, 700_000);
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .expect("timeout");
        // Type 128 (echo request), code 0, checksum filled by the kernel, id, seq.
        let req = [128u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'e', b'c', b'i', 0];
        let dst = SockaddrIn6::from(std::net::SocketAddrV6::new(to, 0, 0, 0));
        use std::os::fd::AsRawFd;
        sendto(
            s.as_raw_fd(),
            &req,
            &dst,
            nix::sys::socket::MsgFlags::empty(),
        )
        .expect("send");
        let mut buf = [0u8; 1500];
        let deadline = std::time::Instant::now() + Duration::from_millis(700);
        while std::time::Instant::now() < deadline {
            match recv(s.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty()) {
                Ok(n) if n >= 8 && buf[0] == 129 && buf[4..6] == [0x12, 0x34] => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
        false
    })
}

#[test]
fn masquerade_table_is_replaced_idempotently() {
    if !root() {
        return;
    }
    let host = Netns::new("m");
    let nets: Vec<ipnet::IpNet> = vec![
        "10.88.0.0/16".parse().expect("net"),
        "fd88::/64".parse().expect("net"),
    ];
    let list = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &host.name, "nft", "list", "ruleset"])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Someone else's table in the same namespace is left alone.
    let made = Command::new("ip")
        .args([
            "netns", "exec", &host.name, "nft", "add", "table", "inet", "other",
        ])
        .status()
        .expect("nft");
    assert!(made.success());
    host.run({
        let nets = nets.clone();
        move || {
            ensure_masquerade("ecibr0", &nets).expect("first");
            ensure_masquerade("ecibr0", &nets).expect("again");
        }
    });
    let ruleset = list();
    assert!(ruleset.contains("table inet eci_dev"), "{ruleset}");
    assert_eq!(
        ruleset.matches(" masquerade comment").count(),
        2,
        "{ruleset}"
    );
    assert!(ruleset.contains("oifname != \"ecibr0\""), "{ruleset}");
    assert!(ruleset.contains("ip saddr 10.88.0.0/16"), "{ruleset}");
    host.run(move || {
        assert!(ensure_masquerade("bad/name", &nets).is_err());
        remove_masquerade().expect("remove");
        remove_masquerade().expect("remove again");
    });
    let ruleset = list();
    assert!(!ruleset.contains("eci_dev"), "{ruleset}");
    assert!(ruleset.contains("table inet other"), "{ruleset}");
}
