//! Our side: one group's network setup through `eci-netns`, as the agent does it — find
//! the ENI by MAC among the host's links, record it, move it into the group's namespace
//! as `eth0` with MTU, addresses, default routes, up; then the security-group table.
//! Teardown moves the ENI back under its original name.
//!
//! LEAD: `setup_ours` and `teardown_ours` are the two functions to fill in once the
//! link layer (branch h-link: `eci_netns::link`, `eci_netns::attach`) and the nftables
//! module (branch h-nft: `eci_netns::nft`) are merged. Until then they return
//! "eci-netns link layer not merged" and the table shows our rows as n/a. The intended bodies, against the
//! signatures on those branches:
//!
//! ```text
//! // Attached { record: eci_netns::attach::EniRecord }
//! // setup_ours
//! let sel = eci_netns::eni::EniSelector::parse(g.mac, "")?;
//! let link = eci_netns::link::find(&sel)?;                   // HostLink
//! let record = eci_netns::attach::EniRecord::of(&link).context("ENI without a MAC")?;
//! let cfg = eci_netns::attach::EniConfig {
//!     mtu: None,
//!     ipv4: Some(g.ipv4.parse()?), ipv4_gateway: Some(g.ipv4_gateway.parse()?),
//!     ipv6: Some(g.ipv6.parse()?), ipv6_gateway: Some(g.ipv6_gateway.parse()?),
//! };
//! eci_netns::attach::attach(&record, g.netns, &cfg)?;
//! eci_netns::nft::apply_security_groups(g.netns, g.rules)?;
//! Ok(Attached { record })
//!
//! // teardown_ours
//! eci_netns::attach::detach(&a.record, Some(g.netns))?;
//! ```
//!
//! (The agent records `record` durably between `find` and `attach`; a redb commit per
//! group belongs in the figure once the agent does it, the bench leaves it out.)

use std::path::Path;

use anyhow::Result;
use eci_netns::security_group::Rule;

/// One group's network, as the agent would pass it.
#[derive(Debug, Clone, Copy)]
pub struct GroupNet<'a> {
    /// `/run/netns/<name>`, already made (the same way for both sides).
    pub netns: &'a Path,
    /// The ENI's MAC, lowercase.
    pub mac: &'a str,
    /// `10.<n>.0.<h>/24`.
    pub ipv4: &'a str,
    pub ipv4_gateway: &'a str,
    /// `fdec:<n>::<h>/64`.
    pub ipv6: &'a str,
    pub ipv6_gateway: &'a str,
    pub rules: &'a [Rule],
}

/// What setup hands to teardown.
#[derive(Debug)]
pub struct Attached {
    pub record: eci_netns::attach::EniRecord,
}

/// Moves the ENI in and configures it, then loads the security group.
pub fn setup_ours(g: &GroupNet<'_>) -> Result<Attached> {
    use anyhow::Context;
    let sel = eci_netns::eni::EniSelector::parse(g.mac, "")?;
    let link = eci_netns::link::find(&sel)?;
    let record = eci_netns::attach::EniRecord::of(&link).context("ENI without a MAC")?;
    let cfg = eci_netns::attach::EniConfig {
        mtu: None,
        ipv4: Some(g.ipv4.parse()?),
        ipv4_gateway: Some(g.ipv4_gateway.parse()?),
        ipv6: Some(g.ipv6.parse()?),
        ipv6_gateway: Some(g.ipv6_gateway.parse()?),
    };
    eci_netns::attach::attach(&record, g.netns, &cfg)?;
    eci_netns::nft::apply_security_groups(g.netns, g.rules)?;
    Ok(Attached { record })
}

/// Returns the ENI to the host under its original name.
pub fn teardown_ours(g: &GroupNet<'_>, a: Attached) -> Result<()> {
    eci_netns::attach::detach(&a.record, Some(g.netns))?;
    Ok(())
}
