//! Checks made when a group naming an ENI is admitted, so that a wrong MAC or an ENI
//! another group holds is refused by Create itself, with nothing created.

use eci_api::phase;
use eci_api::v1::{ContainerGroup, GroupSpec};
use eci_netns::{EniSelector, MacAddress};

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

/// Finds the ENI on the host, or says why it cannot be had: held by a group (its
/// record in `held`), or absent. Blocking (netlink on a thread of its own).
pub fn find(sel: &EniSelector, held: &[(String, HeldEni)]) -> Result<EniIdentity, String> {
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
        Ok(link) => Ok(EniIdentity {
            name: link.name,
            mac: link.mac,
            index: link.index,
            mtu: link.mtu,
        }),
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
