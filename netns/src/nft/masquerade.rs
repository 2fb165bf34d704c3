//! Dev mode: the host's NAT table that lets groups on the agent's bridge reach out.
//!
//! Table `eci_dev` (family inet):
//! - chain `postrouting` (nat, hook postrouting, priority srcnat): for each subnet,
//!   `meta nfproto F ip[6] saddr SUBNET oifname != BRIDGE masquerade`;
//! - chain `forward` (filter, hook forward, priority filter): `iifname BRIDGE accept`,
//!   `oifname BRIDGE accept`. An accept here does not override a drop in another table
//!   (Docker's iptables FORWARD policy, say): each table's chains see the packet.
//!
//! It runs in the calling thread's network namespace: the host's, for the agent.

use ipnet::IpNet;

use super::NftError;
use super::batch::Batch;
use super::consts::*;
use super::expr::{Base, Expr, MetaKey, Verdict};
use super::security_groups::ifname;
use super::socket::NfSocket;
use super::table::{self, Chain, Hook, NftRule, Table};

/// The table's name in the host netns.
pub const MASQUERADE_TABLE: &str = "eci_dev";
/// `NF_IP_PRI_NAT_SRC`.
const PRIORITY_SRCNAT: i32 = 100;

/// Refuses what the kernel would not take as a link name.
fn check_bridge(bridge: &str) -> Result<(), NftError> {
    let bad = bridge.is_empty()
        || bridge.len() > 15
        || bridge == "."
        || bridge == ".."
        || bridge
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(NftError::BridgeName(bridge.into()));
    }
    Ok(())
}

pub(crate) fn compile(bridge: &str, subnets: &[IpNet]) -> Table {
    let mut post = Vec::new();
    for net in subnets {
        let net = net.trunc();
        let (nfproto, offset, addr, mask) = match net {
            IpNet::V4(n) => (
                NFPROTO_IPV4,
                12,
                n.network().octets().to_vec(),
                n.netmask().octets().to_vec(),
            ),
            IpNet::V6(n) => (
                NFPROTO_IPV6,
                8,
                n.network().octets().to_vec(),
                n.netmask().octets().to_vec(),
            ),
        };
        let mut e = vec![Expr::Meta(MetaKey::NfProto), Expr::cmp_eq(&[nfproto])];
        if net.prefix_len() > 0 {
            e.push(Expr::Payload {
                base: Base::Network,
                offset,
                len: addr.len() as u32,
            });
            e.push(Expr::Bitwise {
                xor: vec![0; mask.len()],
                mask,
            });
            e.push(Expr::cmp_eq(&addr));
        }
        e.push(Expr::Meta(MetaKey::OifName));
        e.push(Expr::Cmp {
            eq: false,
            data: ifname(bridge),
        });
        e.push(Expr::Counter);
        e.push(Expr::Masquerade);
        post.push(NftRule {
            exprs: e,
            comment: Some(format!("eci-dev masquerade {net}")),
        });
    }
    let fwd = [MetaKey::IifName, MetaKey::OifName]
        .into_iter()
        .map(|k| NftRule {
            exprs: vec![
                Expr::Meta(k),
                Expr::cmp_eq(&ifname(bridge)),
                Expr::Counter,
                Expr::Verdict(Verdict::Accept),
            ],
            comment: Some("eci-dev bridge".into()),
        })
        .collect();
    Table {
        name: MASQUERADE_TABLE.into(),
        family: NFPROTO_INET,
        chains: vec![
            Chain {
                name: "postrouting",
                hook: Hook {
                    num: NF_INET_POST_ROUTING,
                    priority: PRIORITY_SRCNAT,
                    kind: "nat",
                    policy: Verdict::Accept,
                },
                rules: post,
            },
            Chain {
                name: "forward",
                hook: Hook {
                    num: NF_INET_FORWARD,
                    priority: 0,
                    kind: "filter",
                    policy: Verdict::Accept,
                },
                rules: fwd,
            },
        ],
    }
}

/// Host netns: NAT table [`MASQUERADE_TABLE`] masquerading traffic from `subnets` leaving
/// through any link but `bridge`, and accepting forward to/from the bridge. Idempotent,
/// replaced atomically (old table deleted and new one added in one batch).
///
/// Runs in the calling thread's namespace, which must be the host's.
pub fn ensure_masquerade(bridge: &str, subnets: &[IpNet]) -> Result<(), NftError> {
    check_bridge(bridge)?;
    let t = compile(bridge, subnets);
    let mut b = Batch::new();
    table::delete_table(&mut b, t.family, &t.name);
    table::add_table(&mut b, &t);
    NfSocket::open()?.apply(b)
}

/// Deletes the [`MASQUERADE_TABLE`] table of the calling thread's namespace, if present.
pub fn remove_masquerade() -> Result<(), NftError> {
    let mut b = Batch::new();
    table::delete_table(&mut b, NFPROTO_INET, MASQUERADE_TABLE);
    NfSocket::open()?.apply(b)
}
