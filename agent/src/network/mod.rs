//! A group's network (issue 8): its ENI moved into the group's netns, or, off a fleet
//! host, a veth on the agent's dev bridge; its security-group rules; what the host's
//! ENIs are and who holds them. The kernel work is `eci-netns`'s; this module decides
//! what to do, records it in the store first, and reports it.
//!
//! The order that makes a crash harmless: an ENI's record (its host name, ifindex, MAC,
//! MTU) is committed before the ENI leaves the host netns, and removed only after it is
//! back ([`crate::store::HeldEni`]); every path that releases a group's netns gives the
//! ENI back first ([`crate::supervisor`]'s teardown, and the cleanup of leftovers, which
//! finds groups by what exists on the host).

pub mod admit;
mod dev;
mod error;
pub mod inventory;
pub mod release;
pub mod setup;

pub use dev::DevNet;
pub use error::NetworkError;

/// The agent's network settings, shared by admission and the supervisor.
#[derive(Debug, Default)]
pub struct NetworkPlan {
    /// The dev bridge for groups without an ENI; None on a fleet host.
    pub dev: Option<DevNet>,
    /// `[network] reserved_links`: names or `prefix*` no spec may take as its ENI.
    pub reserved_links: Vec<String>,
    /// `[network] allow_host_links_as_eni`.
    pub allow_host_links: bool,
}

impl NetworkPlan {
    /// From the agent's `[network]` config (already checked).
    pub fn from_config(
        cfg: &crate::config::NetworkConfig,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(NetworkPlan {
            dev: cfg
                .dev()?
                .map(|(v4, v6)| DevNet::new(cfg.bridge.clone(), v4, v6)),
            reserved_links: cfg.reserved()?,
            allow_host_links: cfg.allow_host_links_as_eni,
        })
    }

    /// For `Node.Info`: "eci0 10.88.0.1/16", or "off".
    pub fn describe_dev(&self) -> String {
        match &self.dev {
            Some(d) => d.describe(),
            None => "off".into(),
        }
    }
}

/// The name of a group's netns pin under its run directory.
pub(crate) fn netns_path(dir: &eci_runtime::layout::GroupDir) -> std::path::PathBuf {
    dir.namespaces().join("net")
}

/// Whether `new` differs from `old` in the security-group rules only: such an Update is
/// applied to the running sandbox, without recreating the containers.
pub fn rules_only_change(old: &eci_api::v1::GroupSpec, new: &eci_api::v1::GroupSpec) -> bool {
    let strip = |s: &eci_api::v1::GroupSpec| {
        let mut s = s.clone();
        if let Some(n) = s.network.as_mut() {
            n.security_group_rules.clear();
            // Update fills in kept addresses; an empty one means "unchanged".
            n.ipv4_address.clear();
            n.ipv6_address.clear();
        }
        s
    };
    let rules = |s: &eci_api::v1::GroupSpec| {
        s.network
            .as_ref()
            .map(|n| n.security_group_rules.clone())
            .unwrap_or_default()
    };
    rules(old) != rules(new) && strip(old) == strip(new)
}
