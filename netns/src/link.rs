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
