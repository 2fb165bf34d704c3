//! The host's links, as candidates for a group's ENI.

use crate::eni::{EniSelector, MacAddress};
use crate::rtnl::{self, Target, ThreadError};

/// Errors listing or finding host links.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Thread(#[from] ThreadError),
    #[error("listing the links of the host network namespace")]
    List(#[source] std::io::Error),
    #[error("no link {} in the host network namespace", describe(.selector))]
    NotFound { selector: EniSelector },
    #[error("listing the routes of the host network namespace")]
    Routes(#[source] std::io::Error),
}

fn describe(s: &EniSelector) -> String {
    match s {
        EniSelector::Mac(m) => format!("with MAC {m}"),
        EniSelector::LinkName(n) => format!("named {n:?}"),
    }
}

/// One link of the host network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub name: String,
    pub index: u32,
    pub mac: Option<MacAddress>,
    pub mtu: u32,
    pub up: bool,
    /// IFLA_INFO_KIND, e.g. "veth", "macvlan", "bridge"; None for a physical link.
    pub kind: Option<String>,
    /// IFLA_MASTER: the bridge or bond this link is a port of, if any.
    pub master: Option<u32>,
}

impl From<rtnl::Link> for HostLink {
    fn from(l: rtnl::Link) -> Self {
        HostLink {
            name: l.name,
            index: l.index,
            mac: l.mac,
            mtu: l.mtu,
            up: l.up,
            kind: l.kind,
            master: l.master,
        }
    }
}

/// Every link of the calling process's (host) network namespace except loopback, so the
/// node can list its ENIs and the agent can resolve a spec's selector before it records
/// anything. Blocking; runs on a dedicated thread.
pub fn host_links() -> Result<Vec<HostLink>, LinkError> {
    rtnl::run(Target::None, |s| async move {
        let links = rtnl::links(&s.host).await.map_err(LinkError::List)?;
        Ok(links
            .into_iter()
            .filter(|l| !l.loopback)
            .map(HostLink::from)
            .collect())
    })
}

/// The host link `selector` names. Blocking.
pub fn find(selector: &EniSelector) -> Result<HostLink, LinkError> {
    host_links()?
        .into_iter()
        .find(|l| match selector {
            EniSelector::Mac(m) => l.mac == Some(*m),
            EniSelector::LinkName(n) => &l.name == n,
        })
        .ok_or_else(|| LinkError::NotFound {
            selector: selector.clone(),
        })
}

/// Why the host needs a link for itself, so that no spec may take it as an ENI; None
/// when it is free to give. A link that carries a default route of the host's main
/// table (its uplink: moving it into a tenant's netns cuts the host off, the agent's
/// control plane included), or that is a port of a bridge or bond, or a bridge, bond or
/// the loopback, is the host's.
pub fn reserved_by_host(link: &HostLink, default_route_links: &[u32]) -> Option<&'static str> {
    if default_route_links.contains(&link.index) {
        return Some("it carries the host's default route");
    }
    if link.master.is_some() {
        return Some("it is a port of a host bridge or bond");
    }
    match link.kind.as_deref() {
        Some("bridge" | "bond" | "team" | "vrf") => Some("it is a host bridge, bond or VRF"),
        _ => None,
    }
}

/// The ifindexes of the host links that carry a default route of the main table (IPv4
/// or IPv6, each next hop of a multipath route). Blocking; runs on a dedicated thread.
pub fn default_route_links() -> Result<Vec<u32>, LinkError> {
    rtnl::run(Target::None, |s| async move {
        rtnl::default_route_links(&s.host)
            .await
            .map_err(LinkError::Routes)
    })
}
