//! Dev mode: anti-spoofing on the host side of a group's veth.
//!
//! A container holds `CAP_NET_RAW` by default, so it can write any Ethernet frame to its
//! `eth0` through an `AF_PACKET` socket: netfilter in its own netns never sees those,
//! and the dev bridge would forward them. Without a guard a tenant could claim the
//! gateway's or another group's IP address (ARP/NDP spoofing, stealing their traffic),
//! take another group's MAC in the bridge's forwarding table, or send packets whose
//! source address another group's security group trusts (the gateway's, say).
//!
//! The guard is one table per port, `bridge eci_guard_<port>`, with one base chain on
//! the bridge `prerouting` hook (every frame entering a port, whether bridged to another
//! port or delivered to the host). Every rule starts with `iifname <port>` and drops:
//!
//! 1. a source MAC other than the group's;
//! 2. an ethertype other than IPv4, IPv6 and ARP (802.1Q tags and the rest included);
//! 3. ARP whose sender MAC or sender IP is not the group's;
//! 4. IPv4 whose source is not the group's address;
//! 5. IPv6 whose source is not the group's address, a link-local address or `::`
//!    (duplicate address detection);
//! 6. ICMPv6 router advertisements and redirects (a group is never a router);
//! 7. ICMPv6 neighbour advertisements for a target other than the group's address or a
//!    link-local one;
//! 8. anything to 169.254.0.0/16 or `fd00:ec2::254`: a cloud's instance metadata
//!    service, which would hand a group the host's credentials.
//!
//! Fail-closed by construction: the agent writes the guard *before* it creates the veth
//! (the rules match the port by name, so they can exist first), and removes it only
//! after the veth is gone. A crash in between leaves either a guard without a port
//! (harmless, rewritten or removed by the next setup or cleanup) or a port with its
//! guard; never a port a container can use without one.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::NftError;
use super::batch::Batch;
use super::consts::*;
use super::expr::{Base, Expr, MetaKey, Verdict};
use super::security_groups::ifname;
use super::socket::NfSocket;
use super::table::{self, Chain, Hook, NftRule, Table};
use crate::eni::MacAddress;

/// The prefix of every port guard's table name (family bridge).
pub const GUARD_TABLE_PREFIX: &str = "eci_guard_";

const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const ETH_P_ARP: [u8; 2] = [0x08, 0x06];
/// The instance metadata service's IPv6 address on AWS (its IPv4 one is in
/// 169.254.0.0/16, dropped whole).
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// `fe80::/10` as address and mask.
const LINK_LOCAL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const LINK_LOCAL_MASK: [u8; 16] = [0xff, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// What may leave a group's port: its own MAC and addresses only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGuard {
    /// The host end of the group's veth (a bridge port), at most 15 bytes.
    pub port: String,
    /// The MAC of the group's `eth0`.
    pub mac: MacAddress,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

/// The name of the guard table of `port`.
pub fn port_guard_table(port: &str) -> String {
    format!("{GUARD_TABLE_PREFIX}{port}")
}

fn check_port(port: &str) -> Result<(), NftError> {
    let bad = port.is_empty()
        || port.len() > 15
        || port == "."
        || port == ".."
        || port
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(NftError::PortName(port.into()));
    }
    Ok(())
}

fn ll(offset: u32, len: u32) -> Expr {
    Expr::Payload {
        base: Base::Link,
        offset,
        len,
    }
}

fn nh(offset: u32, len: u32) -> Expr {
    Expr::Payload {
        base: Base::Network,
        offset,
        len,
    }
}

/// `ether type T` (the two bytes after the MACs: an 802.1Q tag shows as 0x8100).
fn ether_type(t: [u8; 2]) -> Vec<Expr> {
    vec![ll(12, 2), Expr::cmp_eq(&t)]
}

/// The loaded IPv6 address (in the register) is none of: `own`, `::` (when
/// `unspecified`), link-local. The link-local mask comes last: it changes the register.
fn v6_not_allowed(own: &[Ipv6Addr], unspecified: bool) -> Vec<Expr> {
    let mut e = Vec::new();
    for a in own {
        e.push(Expr::cmp_ne(&a.octets()));
    }
    if unspecified {
        e.push(Expr::cmp_ne(&[0; 16]));
    }
    e.push(Expr::Bitwise {
        mask: LINK_LOCAL_MASK.to_vec(),
        xor: vec![0; 16],
    });
    e.push(Expr::cmp_ne(&LINK_LOCAL));
    e
}

fn icmpv6_type(t: u8) -> Vec<Expr> {
    let mut e = ether_type(ETH_P_IPV6);
    e.extend([
        Expr::Meta(MetaKey::L4Proto),
        Expr::cmp_eq(&[IPPROTO_ICMPV6]),
        Expr::Payload {
            base: Base::Transport,
            offset: 0,
            len: 1,
        },
        Expr::cmp_eq(&[t]),
    ]);
    e
}

pub(crate) fn compile(g: &PortGuard) -> Table {
    compile_for(&Guarded {
        port: &g.port,
        mac: g.mac,
        ipv4: &[g.ipv4],
        ipv6: g.ipv6.as_slice(),
        uplink: None,
    })
}

/// What a guard lets out of a port: frames from `mac`, packets from these addresses
/// (none of a family: nothing of it, ARP included for IPv4).
pub(crate) struct Guarded<'a> {
    pub port: &'a str,
    pub mac: MacAddress,
    pub ipv4: &'a [Ipv4Addr],
    pub ipv6: &'a [Ipv6Addr],
    /// A vm group's netns: the bridge port towards the VPC (`eth0`). The netns' own
    /// stack (`br0`, which holds only the host-only probe source address) talks to the
    /// guest alone: nothing it sends leaves by this port (its ARP requests, a probe
    /// SYN flooded before the bridge learnt the guest's MAC) and nothing that comes in
    /// by it is delivered to it (ARP for the probe address, packets to it).
    pub uplink: Option<&'a str>,
}

/// `cmp != a` for each of `addrs`: the loaded address is none of them.
fn none_of<const N: usize>(addrs: impl IntoIterator<Item = [u8; N]>) -> Vec<Expr> {
    addrs.into_iter().map(|a| Expr::cmp_ne(&a)).collect()
}

pub(crate) fn compile_for(g: &Guarded<'_>) -> Table {
    let port = ifname(g.port);
    let drop = |what: &str, matches: Vec<Expr>| {
        let mut exprs = vec![Expr::Meta(MetaKey::IifName), Expr::cmp_eq(&port)];
        exprs.extend(matches);
        exprs.push(Expr::Counter);
        exprs.push(Expr::Verdict(Verdict::Drop));
        NftRule {
            exprs,
            comment: Some(format!("eci-guard {what}")),
        }
    };
    let mac = g.mac.0.to_vec();
    let v4 = || none_of(g.ipv4.iter().map(|a| a.octets()));
    let with = |mut a: Vec<Expr>, b: Vec<Expr>| {
        a.extend(b);
        a
    };
    let mut rules = vec![
        drop("source MAC", vec![ll(6, 6), Expr::cmp_ne(&mac)]),
        drop(
            "ethertype",
            vec![
                ll(12, 2),
                Expr::cmp_ne(&ETH_P_IP),
                Expr::cmp_ne(&ETH_P_IPV6),
                Expr::cmp_ne(&ETH_P_ARP),
            ],
        ),
        // ARP for IPv4 over Ethernet: sender MAC at 8, sender IP at 14.
        drop(
            "ARP sender MAC",
            with(ether_type(ETH_P_ARP), vec![nh(8, 6), Expr::cmp_ne(&mac)]),
        ),
        drop(
            "ARP sender IP",
            with(ether_type(ETH_P_ARP), with(vec![nh(14, 4)], v4())),
        ),
        drop(
            "IPv4 source",
            with(ether_type(ETH_P_IP), with(vec![nh(12, 4)], v4())),
        ),
        drop(
            "IPv6 source",
            with(
                ether_type(ETH_P_IPV6),
                with(vec![nh(8, 16)], v6_not_allowed(g.ipv6, true)),
            ),
        ),
        drop("router advertisement", icmpv6_type(134)),
        drop("redirect", icmpv6_type(137)),
    ];
    // Neighbour advertisement: the target address follows type, code, checksum, flags.
    let mut na = icmpv6_type(136);
    na.push(Expr::Payload {
        base: Base::Transport,
        offset: 8,
        len: 16,
    });
    na.extend(v6_not_allowed(g.ipv6, false));
    rules.push(drop("neighbour advertisement target", na));
    // The cloud's instance metadata service hands out the host's credentials: a dev host
    // on a cloud VM must not route a group there (masquerade would make the request the
    // host's). Nothing else a group may reach lives on IPv4 link-local addresses.
    rules.push(drop(
        "metadata service",
        with(
            ether_type(ETH_P_IP),
            vec![
                nh(16, 4),
                Expr::Bitwise {
                    mask: vec![255, 255, 0, 0],
                    xor: vec![0; 4],
                },
                Expr::cmp_eq(&[169, 254, 0, 0]),
            ],
        ),
    ));
    rules.push(drop(
        "metadata service v6",
        with(
            ether_type(ETH_P_IPV6),
            vec![nh(24, 16), Expr::cmp_eq(&METADATA_V6.octets())],
        ),
    ));
    let mut chains = vec![Chain {
        name: "prerouting",
        hook: Hook {
            num: NF_BR_PRE_ROUTING,
            priority: NF_BR_PRI_FILTER,
            kind: "filter",
            policy: Verdict::Accept,
        },
        rules,
    }];
    if let Some(uplink) = g.uplink {
        chains.extend(uplink_isolation(uplink));
    }
    Table {
        name: port_guard_table(g.port),
        family: NFPROTO_BRIDGE,
        chains,
    }
}

/// Chains that keep the bridge's own stack off `uplink`: frames from it are not
/// delivered locally (`input`), frames of the local stack do not leave by it
/// (`output`). Bridged frames (guest ↔ VPC) take neither hook.
fn uplink_isolation(uplink: &str) -> [Chain; 2] {
    let rule = |key: MetaKey, what: &str| NftRule {
        exprs: vec![
            Expr::Meta(key),
            Expr::cmp_eq(&ifname(uplink)),
            Expr::Counter,
            Expr::Verdict(Verdict::Drop),
        ],
        comment: Some(format!("eci-guard {what}")),
    };
    let hook = |num| Hook {
        num,
        priority: NF_BR_PRI_FILTER,
        kind: "filter",
        policy: Verdict::Accept,
    };
    [
        Chain {
            name: "input",
            hook: hook(NF_BR_LOCAL_IN),
            rules: vec![rule(MetaKey::IifName, "uplink to the local stack")],
        },
        Chain {
            name: "output",
            hook: hook(NF_BR_LOCAL_OUT),
            rules: vec![rule(MetaKey::OifName, "local stack to the uplink")],
        },
    ]
}

/// Host netns: writes (or rewrites, atomically) the guard of `g.port`. Call it before
/// the port exists or before it is enslaved to the bridge; idempotent.
///
/// Runs in the calling thread's namespace, which must be the host's.
pub fn ensure_port_guard(g: &PortGuard) -> Result<(), NftError> {
    check_port(&g.port)?;
    let t = compile(g);
    let mut b = Batch::new();
    table::delete_table(&mut b, t.family, &t.name);
    table::add_table(&mut b, &t);
    NfSocket::open()?.apply(b)
}

/// Host netns: deletes the guard of `port`, if present (also fine on a kernel without
/// nftables' bridge family, where no guard can exist). Call it only once the port is
/// gone.
pub fn remove_port_guard(port: &str) -> Result<(), NftError> {
    remove_here(port)
}

/// The calling thread's netns (a vm group's, from `crate::vm`): writes the guard of
/// `g.port` (a tap the guest writes to). Idempotent.
pub(crate) fn ensure_here(g: &Guarded<'_>) -> Result<(), NftError> {
    check_port(g.port)?;
    let t = compile_for(g);
    let mut b = Batch::new();
    table::delete_table(&mut b, t.family, &t.name);
    table::add_table(&mut b, &t);
    NfSocket::open()?.apply(b)
}

/// The calling thread's netns: deletes the guard of `port` if present.
pub(crate) fn remove_here(port: &str) -> Result<(), NftError> {
    check_port(port)?;
    let mut b = Batch::new();
    table::delete_table(&mut b, NFPROTO_BRIDGE, &port_guard_table(port));
    match NfSocket::open()?.apply(b) {
        // A kernel without the bridge family never held a guard.
        Err(NftError::Kernel { source, .. })
            if source.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            Ok(())
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_is_for_the_port_and_drops() {
        let g = PortGuard {
            port: "eci0123".into(),
            mac: "02:ec:ac:10:00:02".parse().expect("mac"),
            ipv4: Ipv4Addr::new(172, 16, 0, 2),
            ipv6: Some("fd00::ac10:2".parse().expect("v6")),
        };
        let t = compile(&g);
        assert_eq!(t.name, "eci_guard_eci0123");
        assert_eq!(t.family, NFPROTO_BRIDGE);
        let rules = &t.chains[0].rules;
        assert_eq!(rules.len(), 11);
        for r in rules {
            assert_eq!(r.exprs[0], Expr::Meta(MetaKey::IifName));
            assert_eq!(r.exprs[1], Expr::cmp_eq(&ifname("eci0123")));
            assert_eq!(r.exprs.last(), Some(&Expr::Verdict(Verdict::Drop)));
        }
        assert_eq!(
            rules[0].exprs[2..4],
            [ll(6, 6), Expr::cmp_ne(&[2, 0xec, 0xac, 0x10, 0, 2])]
        );
        // IPv4 source: ether type ip, then the source address must be the group's.
        assert_eq!(
            rules[4].exprs[2..6],
            [
                ll(12, 2),
                Expr::cmp_eq(&ETH_P_IP),
                nh(12, 4),
                Expr::cmp_ne(&[172, 16, 0, 2])
            ]
        );
        assert_eq!(t.chains.len(), 1, "a dev port's guard has no uplink chains");
        let vm = compile_for(&Guarded {
            port: "tap0",
            mac: g.mac,
            ipv4: &[g.ipv4],
            ipv6: &[],
            uplink: Some("eth0"),
        });
        let hooks: Vec<u32> = vm.chains.iter().map(|c| c.hook.num).collect();
        assert_eq!(hooks, [NF_BR_PRE_ROUTING, NF_BR_LOCAL_IN, NF_BR_LOCAL_OUT]);
        assert_eq!(
            vm.chains[2].rules[0].exprs[..2],
            [Expr::Meta(MetaKey::OifName), Expr::cmp_eq(&ifname("eth0"))]
        );
        assert!(check_port("a/b").is_err());
        assert!(check_port("").is_err());
    }
}
