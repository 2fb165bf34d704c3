//! The host's ENIs for `Node.Info`: links that could serve as one, and which group holds
//! each.

use eci_api::v1::NodeEni;

use super::DevNet;
use crate::store::HeldEni;

/// Ethernet links of the host netns (not the loopback, bridges, tunnels, or the dev
/// bridge's veths), then the ENIs groups hold (which are in their netns), under the
/// name they get back. Blocking (netlink on a thread of its own).
pub fn enis(held: &[(String, HeldEni)], dev: Option<&DevNet>) -> Vec<NodeEni> {
    let mut out: Vec<NodeEni> = eci_netns::link::host_links()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| {
            // NICs, and the kinds that stand in for one (a veth end or macvlan
            // playing the ENI in labs and tests); not bridges, tunnels, ifbs.
            l.mac.is_some()
                && matches!(
                    l.kind.as_deref(),
                    None | Some("veth" | "macvlan" | "ipvlan" | "vlan")
                )
                && !(l.kind.as_deref() == Some("veth") && l.name.starts_with("eci"))
                && dev.is_none_or(|d| d.bridge != l.name)
        })
        .map(|l| NodeEni {
            group: held
                .iter()
                .find(|(_, h)| Some(h.mac.as_str()) == l.mac.map(|m| m.to_string()).as_deref())
                .map(|(_, h)| h.group.clone())
                .unwrap_or_default(),
            name: l.name,
            mac_address: l.mac.map(|m| m.to_string()).unwrap_or_default(),
            kind: l.kind.unwrap_or_default(),
        })
        .collect();
    for (_, h) in held {
        if !out.iter().any(|e| e.mac_address == h.mac) {
            out.push(NodeEni {
                name: h.original_name.clone(),
                mac_address: h.mac.clone(),
                kind: String::new(),
                group: h.group.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
