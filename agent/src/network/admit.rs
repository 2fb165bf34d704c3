//! Checks made when a group naming an ENI is admitted, so that a wrong MAC or an ENI
//! another group holds is refused by Create itself, with nothing created.

use eci_api::phase;
use eci_api::v1::{ContainerGroup, GroupSpec};
use eci_netns::{EniSelector, MacAddress};

use super::NetworkPlan;
use crate::store::HeldEni;

/// The host link a spec's ENI selector found: its name and MAC.
#[derive(Debug, Clone)]
pub struct EniIdentity {
    pub name: String,
    pub mac: Option<MacAddress>,
    pub index: u32,
    pub mtu: u32,
}

impl EniIdentity {
    fn matches(&self, sel: &EniSelector) -> bool {
        match sel {
            EniSelector::Mac(m) => self.mac == Some(*m),
            EniSelector::LinkName(n) => *n == self.name,
        }
    }
}

/// The spec's ENI selector, when it names one (the spec is validated already).
pub fn selector(spec: &GroupSpec) -> Option<EniSelector> {
    selector_of(spec.network.as_ref()?)
}

/// As [`selector`], from the network part of a spec.
pub fn selector_of(net: &eci_api::v1::NetworkSpec) -> Option<EniSelector> {
    let eni = net.eni.as_ref()?;
    EniSelector::parse(&eni.mac_address, &eni.link_name).ok()
}

/// Whether `name` matches one of `[network] reserved_links` (a name, or a prefix
/// ending in `*`).
fn reserved(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// Refuses a link no group may take: one the host needs ([`eci_netns::reserved_by_host`]:
/// its default-route uplink, a bridge or bond port) unless the config allows it, the dev
/// bridge, and the config's `reserved_links`. Blocking (a route dump).
fn check_allowed(link: &eci_netns::HostLink, plan: &NetworkPlan) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "network.eni: host link {} ({}) cannot be an ENI: {why}",
            link.name,
            link.mac.map(|m| m.to_string()).unwrap_or_default()
        ))
    };
    if reserved(&plan.reserved_links, &link.name) {
        return refuse("it is in the agent's [network] reserved_links");
    }
    if plan.dev.as_ref().is_some_and(|d| d.bridge == link.name)
        || (link.kind.as_deref() == Some("veth") && link.name.starts_with("eci"))
    {
        return refuse("it belongs to the agent's dev bridge");
    }
    if plan.allow_host_links {
        return Ok(());
    }
    let uplinks = eci_netns::default_route_links()
        .map_err(|e| format!("network.eni: {}", crate::error::chain(&e)))?;
    match eci_netns::reserved_by_host(link, &uplinks) {
        Some(why) => refuse(&format!(
            "{why} (set [network] allow_host_links_as_eni to allow it)"
        )),
        None => Ok(()),
    }
}

/// Finds the ENI on the host, or says why it cannot be had: held by a group (its
/// record in `held`), absent, or a link the host keeps ([`check_allowed`]). Blocking
/// (netlink on a thread of its own).
pub fn find(
    sel: &EniSelector,
    held: &[(String, HeldEni)],
    plan: &NetworkPlan,
) -> Result<EniIdentity, String> {
    let holder = |h: &HeldEni| match sel {
        EniSelector::Mac(m) => h.mac.parse::<MacAddress>().ok() == Some(*m),
        EniSelector::LinkName(n) => h.original_name == *n,
    };
    if let Some((_, h)) = held.iter().find(|(_, h)| holder(h)) {
        return Err(format!(
            "network.eni: {} ({}) is held by group {:?}",
            h.original_name, h.mac, h.group
        ));
    }
    match eci_netns::link::find(sel) {
        Ok(link) => {
            check_allowed(&link, plan)?;
            Ok(EniIdentity {
                name: link.name,
                mac: link.mac,
                index: link.index,
                mtu: link.mtu,
            })
        }
        Err(e) => Err(format!("network.eni: {}", crate::error::chain(&e))),
    }
}

/// The unfinished group other than `except` whose spec names the same ENI, if any.
pub fn holder<'a>(
    groups: &'a [ContainerGroup],
    eni: &EniIdentity,
    except: &str,
) -> Option<&'a str> {
    groups.iter().find_map(|g| {
        let spec = g.spec.as_ref()?;
        let phase_now = g.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
        if spec.name == except || phase::is_final(phase_now) {
            return None;
        }
        selector(spec)
            .filter(|s| eni.matches(s))
            .map(|_| spec.name.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_patterns_match_names_and_prefixes() {
        let p = vec!["eth0".to_string(), "mgmt*".to_string()];
        assert!(reserved(&p, "eth0"));
        assert!(!reserved(&p, "eth01"));
        assert!(reserved(&p, "mgmt"));
        assert!(reserved(&p, "mgmt7"));
        assert!(!reserved(&p, "eni1"));
    }

    /// The host's real uplink (the link of its default route) is refused by the check
    /// Create and setup make — checked without ever moving it.
    #[test]
    fn the_hosts_default_route_link_is_refused() {
        let uplinks = eci_netns::default_route_links().expect("routes");
        let links = eci_netns::host_links().expect("links");
        let Some(uplink) = links.iter().find(|l| uplinks.contains(&l.index)) else {
            eprintln!("skipped: this host has no default route");
            return;
        };
        let plan = NetworkPlan::default();
        let err = check_allowed(uplink, &plan).expect_err("the uplink is refused");
        assert!(
            err.contains("network.eni")
                && err.contains(&uplink.name)
                && err.contains("default route"),
            "{err}"
        );
        let plan = NetworkPlan {
            reserved_links: vec!["zz-none".into()],
            allow_host_links: true,
            ..Default::default()
        };
        assert!(check_allowed(uplink, &plan).is_ok());
    }
}
