//! Compiling a group's security-group rules into the `eci_sg` table.
//!
//! Layout (family inet, so one table covers IPv4 and IPv6):
//! - chain `input` (hook input, priority filter, policy drop): ct state
//!   established,related accept; iifname "lo" accept; ICMP errors (dest-unreachable,
//!   time-exceeded, parameter-problem) accept; ICMPv6 errors (also packet-too-big) and
//!   neighbour discovery / router solicitation and advertisement accept; then the ingress
//!   rules by priority.
//! - chain `output` (hook output, priority filter, policy accept): ct state
//!   established,related accept (replies to admitted connections always leave);
//!   oifname "lo" accept; ICMPv6 neighbour discovery accept; then the egress rules.
//!
//! For a vm group the netns' own stack holds no address of the group (the guest does),
//! only `br0`'s host-only probe source (`crate::vm::PROBE_SOURCE`), so the spec's rules
//! go to `forward` alone: `input` keeps only its defaults (replies to probes come in as
//! established), and `output` (policy drop) accepts, after its defaults, only TCP from
//! the probe source to a guest IPv4 address — the agent's probes and hooks.
//!
//! - chain `forward` (hook forward, priority filter, policy drop), only for a vm group
//!   (`guest` addresses given): the guest's traffic, bridged between the tap and `eth0`
//!   with the bridge's netfilter calls on (`crate::vm::plug`). Direction is by the
//!   guest's addresses: ct state established,related accept; ICMP/ICMPv6 errors,
//!   neighbour discovery and multicast listener messages accept; each ingress rule
//!   matched on `daddr == guest address` (one copy per guest address of the rule's
//!   family), then `daddr == guest address` drop; each egress rule matched on `saddr ==
//!   guest address` (IPv6 also from `fe80::/10`, the guest's link-local), then those
//!   sources accept. Everything else (spoofed sources, traffic to other addresses) is
//!   dropped by the policy.
//!
//! Each spec rule carries its own counter and the comment `eci-sg rule N`, N its index
//! in the slice given to `apply_security_groups`; counters are read back by that comment.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};

use super::consts::*;
use super::expr::{Base, Expr, MetaKey, Verdict};
use super::table::{Chain, Hook, NftRule, Table};
use crate::security_group::{Direction, Policy, Protocol, Rule};

/// The table's name in the group netns.
pub const TABLE: &str = "eci_sg";
/// The comment prefix that names a spec rule.
pub(crate) const COMMENT_PREFIX: &str = "eci-sg rule ";
/// `NF_IP_PRI_FILTER`.
const PRIORITY_FILTER: i32 = 0;

/// The spec index in a rule comment, if it is one of ours.
pub(crate) fn index_of(comment: &str) -> Option<usize> {
    comment.strip_prefix(COMMENT_PREFIX)?.parse().ok()
}

/// The whole table for `rules`; with a `forward` chain for the guest's traffic when
/// `guest` holds a vm group's addresses.
pub(crate) fn compile(rules: &[Rule], guest: Option<&[IpAddr]>) -> Table {
    let mut order: Vec<usize> = (0..rules.len()).collect();
    // Stable: ties keep spec order.
    order.sort_by_key(|&i| rules[i].priority);
    let mut input = base_rules(Direction::Ingress);
    let mut output = base_rules(Direction::Egress);
    let mut output_policy = Verdict::Accept;
    if let Some(guest) = guest {
        // A vm group: the spec's rules are the guest's, in `forward`. The netns' own
        // stack only sends the agent's probes to the guest; it takes in replies only.
        output.extend(probe_rules(guest));
        output_policy = Verdict::Drop;
    } else {
        for i in order {
            let r = &rules[i];
            let rule = NftRule {
                exprs: rule_exprs(r),
                comment: Some(format!("{COMMENT_PREFIX}{i}")),
            };
            match r.direction {
                Direction::Ingress => input.push(rule),
                Direction::Egress => output.push(rule),
            }
        }
    }
    let mut chains = vec![
        Chain {
            name: "input",
            hook: Hook {
                num: NF_INET_LOCAL_IN,
                priority: PRIORITY_FILTER,
                kind: "filter",
                policy: Verdict::Drop,
            },
            rules: input,
        },
        Chain {
            name: "output",
            hook: Hook {
                num: NF_INET_LOCAL_OUT,
                priority: PRIORITY_FILTER,
                kind: "filter",
                policy: output_policy,
            },
            rules: output,
        },
    ];
    if let Some(guest) = guest {
        chains.push(Chain {
            name: "forward",
            hook: Hook {
                num: NF_INET_FORWARD,
                priority: PRIORITY_FILTER,
                kind: "filter",
                policy: Verdict::Drop,
            },
            rules: forward_rules(rules, guest),
        });
    }
    Table {
        name: TABLE.into(),
        family: NFPROTO_INET,
        chains,
    }
}

/// `meta nfproto F payload network OFF == ADDR/PREFIX` for the source (`src`) or
/// destination address.
fn addr_match(net: IpNet, src: bool) -> Vec<Expr> {
    let (nfproto, offset, len) = match (net, src) {
        (IpNet::V4(_), true) => (NFPROTO_IPV4, 12, 4),
        (IpNet::V4(_), false) => (NFPROTO_IPV4, 16, 4),
        (IpNet::V6(_), true) => (NFPROTO_IPV6, 8, 16),
        (IpNet::V6(_), false) => (NFPROTO_IPV6, 24, 16),
    };
    let mut e = vec![
        Expr::Meta(MetaKey::NfProto),
        Expr::cmp_eq(&[nfproto]),
        Expr::Payload {
            base: Base::Network,
            offset,
            len,
        },
    ];
    let net = net.trunc();
    let (addr, mask) = match net {
        IpNet::V4(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
        IpNet::V6(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
    };
    if net.prefix_len() < net.max_prefix_len() {
        e.push(Expr::Bitwise {
            xor: vec![0; mask.len()],
            mask,
        });
    }
    e.push(Expr::cmp_eq(&addr));
    e
}

/// `output` of a vm group: TCP from the probe source (`crate::vm::PROBE_SOURCE`, the
/// only address of the netns' `br0`) to each guest IPv4 address: the agent's httpGet
/// and tcpSocket probes and hooks.
fn probe_rules(guest: &[IpAddr]) -> Vec<NftRule> {
    let src = IpNet::from(IpAddr::V4(crate::vm::PROBE_SOURCE));
    guest
        .iter()
        .filter(|a| a.is_ipv4())
        .map(|a| {
            let mut e = addr_match(src, true);
            // addr_match starts with the same `meta nfproto` compare: skip it.
            e.extend(addr_match(IpNet::from(*a), false).into_iter().skip(2));
            e.push(Expr::Meta(MetaKey::L4Proto));
            e.push(Expr::cmp_eq(&[IPPROTO_TCP]));
            accept(e, "eci-sg probe")
        })
        .collect()
}

/// IPv6 link-local sources: the guest's own (made from its MAC) count as the guest's.
const LINK_LOCAL: IpNet = IpNet::V6(Ipv6Net::new_assert(
    std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
    10,
));

/// The rules of the `forward` chain of a vm group whose guest holds `guest`.
fn forward_rules(rules: &[Rule], guest: &[IpAddr]) -> Vec<NftRule> {
    let mut order: Vec<usize> = (0..rules.len()).collect();
    order.sort_by_key(|&i| rules[i].priority);
    let hosts: Vec<IpNet> = guest.iter().map(|a| IpNet::from(*a)).collect();
    let mut sources = hosts.clone();
    sources.push(LINK_LOCAL);

    let mut out = base_rules(Direction::Egress)
        .into_iter()
        .take(1)
        .collect::<Vec<_>>();
    out.push(accept(icmp_types(false, 3, 3), "eci-sg icmp errors"));
    out.push(accept(icmp_types(false, 11, 12), "eci-sg icmp errors"));
    out.push(accept(icmp_types(true, 1, 4), "eci-sg icmpv6 errors"));
    out.push(accept(icmp_types(true, 133, 136), "eci-sg icmpv6 nd"));
    // Multicast listener query/report/done (130-132) and MLDv2 report (143).
    out.push(accept(icmp_types(true, 130, 132), "eci-sg icmpv6 mld"));
    out.push(accept(icmp_types(true, 143, 143), "eci-sg icmpv6 mld"));
    // Copies of a spec rule, each behind a match on one guest address.
    let copies = |dir: Direction, nets: &[IpNet], src: bool, out: &mut Vec<NftRule>| {
        for &i in &order {
            let r = &rules[i];
            if r.direction != dir {
                continue;
            }
            for net in nets.iter().filter(|n| same_family(n, &r.cidr)) {
                let mut exprs = addr_match(*net, src);
                // rule_exprs starts with the same `meta nfproto` compare: skip it.
                exprs.extend(rule_exprs(r).into_iter().skip(2));
                out.push(NftRule {
                    exprs,
                    comment: Some(format!("{COMMENT_PREFIX}{i}")),
                });
            }
        }
    };
    copies(Direction::Ingress, &hosts, false, &mut out);
    for h in &hosts {
        let mut e = addr_match(*h, false);
        e.push(Expr::Verdict(Verdict::Drop));
        out.push(NftRule {
            exprs: e,
            comment: Some("eci-sg guest ingress default".into()),
        });
    }
    copies(Direction::Egress, &sources, true, &mut out);
    for s in &sources {
        out.push(accept(addr_match(*s, true), "eci-sg guest egress default"));
    }
    out
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

fn accept(mut exprs: Vec<Expr>, comment: &str) -> NftRule {
    exprs.push(Expr::Verdict(Verdict::Accept));
    NftRule {
        exprs,
        comment: Some(comment.into()),
    }
}

/// `meta nfproto X meta l4proto Y @th,0,8 FROM-TO`: ICMP types FROM..=TO.
fn icmp_types(v6: bool, from: u8, to: u8) -> Vec<Expr> {
    let mut e = vec![
        Expr::Meta(MetaKey::NfProto),
        Expr::cmp_eq(&[if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }]),
        Expr::Meta(MetaKey::L4Proto),
        Expr::cmp_eq(&[if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP }]),
        Expr::Payload {
            base: Base::Transport,
            offset: 0,
            len: 1,
        },
    ];
    if from == to {
        e.push(Expr::cmp_eq(&[from]));
    } else {
        e.push(Expr::Range {
            from: vec![from],
            to: vec![to],
        });
    }
    e
}

/// A link name as the 16-byte register `meta iifname`/`oifname` loads.
pub(crate) fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(16, 0);
    v
}

/// The rules before the spec's rules in a chain.
fn base_rules(dir: Direction) -> Vec<NftRule> {
    let established = vec![
        Expr::CtState,
        Expr::Bitwise {
            mask: (CT_STATE_ESTABLISHED | CT_STATE_RELATED)
                .to_ne_bytes()
                .to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            eq: false,
            data: vec![0; 4],
        },
    ];
    let mut out = vec![accept(established, "eci-sg established,related")];
    match dir {
        Direction::Ingress => {
            out.push(accept(
                vec![Expr::Meta(MetaKey::IifName), Expr::cmp_eq(&ifname("lo"))],
                "eci-sg loopback",
            ));
            // ICMP: destination-unreachable 3, time-exceeded 11, parameter-problem 12.
            out.push(accept(icmp_types(false, 3, 3), "eci-sg icmp errors"));
            out.push(accept(icmp_types(false, 11, 12), "eci-sg icmp errors"));
            // ICMPv6: destination-unreachable 1, packet-too-big 2, time-exceeded 3,
            // parameter-problem 4; router solicitation/advertisement 133/134, neighbour
            // solicitation/advertisement 135/136 (without them IPv6 has no neighbours).
            out.push(accept(icmp_types(true, 1, 4), "eci-sg icmpv6 errors"));
            out.push(accept(icmp_types(true, 133, 136), "eci-sg icmpv6 nd"));
        }
        Direction::Egress => {
            out.push(accept(
                vec![Expr::Meta(MetaKey::OifName), Expr::cmp_eq(&ifname("lo"))],
                "eci-sg loopback",
            ));
            out.push(accept(icmp_types(true, 133, 136), "eci-sg icmpv6 nd"));
        }
    }
    out
}

/// The match, counter and verdict of one spec rule.
pub(crate) fn rule_exprs(r: &Rule) -> Vec<Expr> {
    let mut e = Vec::new();
    let (nfproto, addr_offset, addr_len) = match (r.cidr, r.direction) {
        (IpNet::V4(_), Direction::Ingress) => (NFPROTO_IPV4, 12, 4),
        (IpNet::V4(_), Direction::Egress) => (NFPROTO_IPV4, 16, 4),
        (IpNet::V6(_), Direction::Ingress) => (NFPROTO_IPV6, 8, 16),
        (IpNet::V6(_), Direction::Egress) => (NFPROTO_IPV6, 24, 16),
    };
    e.push(Expr::Meta(MetaKey::NfProto));
    e.push(Expr::cmp_eq(&[nfproto]));
    let l4 = match r.protocol {
        Protocol::Tcp => Some(IPPROTO_TCP),
        Protocol::Udp => Some(IPPROTO_UDP),
        Protocol::Icmp => Some(IPPROTO_ICMP),
        Protocol::Icmpv6 => Some(IPPROTO_ICMPV6),
        Protocol::All => None,
    };
    if let Some(l4) = l4 {
        e.push(Expr::Meta(MetaKey::L4Proto));
        e.push(Expr::cmp_eq(&[l4]));
    }
    let net = r.cidr.trunc();
    if net.prefix_len() > 0 {
        e.push(Expr::Payload {
            base: Base::Network,
            offset: addr_offset,
            len: addr_len,
        });
        let (addr, mask) = match net {
            IpNet::V4(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
            IpNet::V6(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
        };
        if net.prefix_len() < net.max_prefix_len() {
            e.push(Expr::Bitwise {
                xor: vec![0; mask.len()],
                mask,
            });
        }
        e.push(Expr::cmp_eq(&addr));
    }
    if let (Some(p), Protocol::Tcp | Protocol::Udp) = (r.ports, r.protocol) {
        e.push(Expr::Payload {
            base: Base::Transport,
            offset: 2,
            len: 2,
        });
        if p.from == p.to {
            e.push(Expr::cmp_eq(&p.from.to_be_bytes()));
        } else {
            e.push(Expr::Range {
                from: p.from.to_be_bytes().to_vec(),
                to: p.to.to_be_bytes().to_vec(),
            });
        }
    }
    e.push(Expr::Counter);
    e.push(Expr::Verdict(match r.policy {
        Policy::Accept => Verdict::Accept,
        Policy::Drop => Verdict::Drop,
    }));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(dir: &str, proto: &str, ports: &str, cidr: &str, policy: &str, prio: u32) -> Rule {
        Rule::parse(dir, proto, ports, cidr, policy, prio).expect("valid rule")
    }

    #[test]
    fn compiles_a_tcp_port_range_from_an_ipv4_network() {
        let r = rule("ingress", "tcp", "8000/8080", "10.1.2.3/16", "", 1);
        assert_eq!(
            rule_exprs(&r),
            vec![
                Expr::Meta(MetaKey::NfProto),
                Expr::cmp_eq(&[NFPROTO_IPV4]),
                Expr::Meta(MetaKey::L4Proto),
                Expr::cmp_eq(&[IPPROTO_TCP]),
                Expr::Payload {
                    base: Base::Network,
                    offset: 12,
                    len: 4
                },
                Expr::Bitwise {
                    mask: vec![255, 255, 0, 0],
                    xor: vec![0; 4]
                },
                Expr::cmp_eq(&[10, 1, 0, 0]),
                Expr::Payload {
                    base: Base::Transport,
                    offset: 2,
                    len: 2
                },
                Expr::Range {
                    from: 8000u16.to_be_bytes().to_vec(),
                    to: 8080u16.to_be_bytes().to_vec()
                },
                Expr::Counter,
                Expr::Verdict(Verdict::Accept),
            ]
        );
    }

    #[test]
    fn compiles_egress_ipv6_host_and_any_network() {
        let r = rule("egress", "udp", "53/53", "fd00::1/128", "drop", 1);
        let e = rule_exprs(&r);
        assert_eq!(e[1], Expr::cmp_eq(&[NFPROTO_IPV6]));
        assert_eq!(
            e[4],
            Expr::Payload {
                base: Base::Network,
                offset: 24,
                len: 16
            }
        );
        // A /128 needs no mask.
        assert!(matches!(e[5], Expr::Cmp { .. }));
        assert_eq!(e[7], Expr::cmp_eq(&53u16.to_be_bytes()));
        assert_eq!(e.last(), Some(&Expr::Verdict(Verdict::Drop)));

        // "all" from anywhere: only the family, counter and verdict.
        let r = rule("ingress", "all", "-1/-1", "0.0.0.0/0", "", 1);
        assert_eq!(
            rule_exprs(&r),
            vec![
                Expr::Meta(MetaKey::NfProto),
                Expr::cmp_eq(&[NFPROTO_IPV4]),
                Expr::Counter,
                Expr::Verdict(Verdict::Accept),
            ]
        );
        let r = rule("ingress", "icmpv6", "", "::/0", "", 1);
        assert_eq!(rule_exprs(&r)[3], Expr::cmp_eq(&[IPPROTO_ICMPV6]));
    }

    #[test]
    fn orders_by_priority_then_spec_order_and_splits_directions() {
        let rules = vec![
            rule("ingress", "tcp", "1/1", "0.0.0.0/0", "", 50),
            rule("egress", "tcp", "2/2", "0.0.0.0/0", "drop", 1),
            rule("ingress", "tcp", "3/3", "0.0.0.0/0", "", 10),
            rule("ingress", "tcp", "4/4", "0.0.0.0/0", "", 50),
        ];
        let t = compile(&rules, None);
        let comments = |chain: usize| -> Vec<usize> {
            t.chains[chain]
                .rules
                .iter()
                .filter_map(|r| index_of(r.comment.as_deref()?))
                .collect()
        };
        assert_eq!(t.chains[0].name, "input");
        assert_eq!(t.chains[0].hook.policy, Verdict::Drop);
        assert_eq!(comments(0), vec![2, 0, 3]);
        assert_eq!(t.chains[1].name, "output");
        assert_eq!(t.chains[1].hook.policy, Verdict::Accept);
        assert_eq!(comments(1), vec![1]);
        // Defaults come first: established/related is the very first rule of both.
        for c in &t.chains {
            assert_eq!(c.rules[0].exprs[0], Expr::CtState);
        }
        assert_eq!(index_of("eci-sg rule 12"), Some(12));
        assert_eq!(t.chains.len(), 2, "no forward chain outside a vm group");
        assert_eq!(index_of("eci-sg loopback"), None);
    }

    #[test]
    fn a_vm_group_gets_a_forward_chain_split_by_the_guest_addresses() {
        let rules = vec![
            rule("ingress", "tcp", "8080/8080", "0.0.0.0/0", "", 1),
            rule("egress", "udp", "53/53", "::/0", "drop", 2),
        ];
        let guest: Vec<IpAddr> = vec![
            "10.0.0.5".parse().expect("v4"),
            "fd00::5".parse().expect("v6"),
        ];
        let t = compile(&rules, Some(&guest));
        let fwd = &t.chains[2];
        assert_eq!(fwd.name, "forward");
        assert_eq!(fwd.hook.num, NF_INET_FORWARD);
        assert_eq!(fwd.hook.policy, Verdict::Drop);
        assert_eq!(fwd.rules[0].exprs[0], Expr::CtState);
        let tagged = |c: &str| -> Vec<&NftRule> {
            fwd.rules
                .iter()
                .filter(|r| r.comment.as_deref() == Some(c))
                .collect()
        };
        // The IPv4 ingress rule once, behind `ip daddr 10.0.0.5`.
        let ingress = tagged("eci-sg rule 0");
        assert_eq!(ingress.len(), 1);
        assert_eq!(
            ingress[0].exprs[..4],
            [
                Expr::Meta(MetaKey::NfProto),
                Expr::cmp_eq(&[NFPROTO_IPV4]),
                Expr::Payload {
                    base: Base::Network,
                    offset: 16,
                    len: 4
                },
                Expr::cmp_eq(&[10, 0, 0, 5]),
            ]
        );
        // The IPv6 egress rule behind `ip6 saddr fd00::5` and `ip6 saddr fe80::/10`.
        let egress = tagged("eci-sg rule 1");
        assert_eq!(egress.len(), 2);
        assert!(egress.iter().all(|r| r.exprs[2]
            == Expr::Payload {
                base: Base::Network,
                offset: 8,
                len: 16
            }));
        // Ingress defaults to drop, egress to accept, per guest address, in that order.
        let pos = |c: &str| {
            fwd.rules
                .iter()
                .position(|r| r.comment.as_deref() == Some(c))
        };
        assert!(pos("eci-sg guest ingress default") < pos("eci-sg guest egress default"));
        assert_eq!(tagged("eci-sg guest ingress default").len(), 2);
        assert_eq!(tagged("eci-sg guest egress default").len(), 3);
        assert!(pos("eci-sg rule 0") < pos("eci-sg guest ingress default"));
        assert!(pos("eci-sg guest ingress default") < pos("eci-sg rule 1"));
        // The netns' own stack: no spec rule, only the probes out.
        for c in &t.chains[..2] {
            assert!(
                c.rules
                    .iter()
                    .all(|r| r.comment.as_deref().and_then(index_of).is_none())
            );
        }
        let out = &t.chains[1];
        assert_eq!(out.hook.policy, Verdict::Drop);
        let probes: Vec<&NftRule> = out
            .rules
            .iter()
            .filter(|r| r.comment.as_deref() == Some("eci-sg probe"))
            .collect();
        assert_eq!(probes.len(), 1, "one per guest IPv4 address");
        assert_eq!(
            probes[0].exprs[2..6],
            [
                Expr::Payload {
                    base: Base::Network,
                    offset: 12,
                    len: 4
                },
                Expr::cmp_eq(&[192, 0, 0, 8]),
                Expr::Payload {
                    base: Base::Network,
                    offset: 16,
                    len: 4
                },
                Expr::cmp_eq(&[10, 0, 0, 5]),
            ]
        );
    }
}
