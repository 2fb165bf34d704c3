//! Moving a group's ENI into its network namespace and giving it back.
//!
//! Both verbs are written to be re-run: the agent records the ENI ([`EniRecord`]) before
//! the first step, and after a crash at any step it calls the same verb again, which
//! finds the link wherever it got to (by ifindex, else by MAC) and finishes the job.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::eni::MacAddress;
use crate::rtnl::{self, Eth0, Link, Target, ThreadError, fd};

/// The name an ENI takes inside a group's netns.
pub const ETH0: &str = "eth0";

/// Errors attaching or detaching an ENI.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Thread(#[from] ThreadError),
    #[error("invalid {field} {value}: {limit}")]
    Invalid {
        field: &'static str,
        value: String,
        limit: &'static str,
    },
    /// A kernel request failed; `what` names the step, the link and the netns.
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no link with MAC {mac} (recorded ifindex {index}) in the host network namespace or in {netns}"
    )]
    NotFound {
        mac: MacAddress,
        index: u32,
        netns: String,
    },
    #[error(
        "cannot name link {link} ({mac}) {name:?} in {netns}: link {other} already has that name"
    )]
    NameTaken {
        link: String,
        mac: MacAddress,
        name: String,
        netns: String,
        other: u32,
    },
    #[error("undoing the vm plug of the group's eth0")]
    Unplug(#[source] Box<crate::vm::VmNetError>),
}

/// How the ENI is configured inside the group's netns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniConfig {
    pub mtu: Option<u32>,
    pub ipv4: Option<ipnet::Ipv4Net>,
    pub ipv4_gateway: Option<Ipv4Addr>,
    pub ipv6: Option<ipnet::Ipv6Net>,
    pub ipv6_gateway: Option<Ipv6Addr>,
}

/// The MTU range every Linux Ethernet link accepts at least in part: 68 is the IPv4
/// minimum; IPv6 needs 1280, checked only when an IPv6 address is configured.
const MTU_MAX: u32 = 65535;

impl EniConfig {
    /// Refuses what the kernel would refuse with a bare EINVAL, naming the field.
    pub fn validate(&self) -> Result<(), AttachError> {
        if let Some(mtu) = self.mtu {
            let min = if self.ipv6.is_some() { 1280 } else { 68 };
            if mtu < min || mtu > MTU_MAX {
                return Err(AttachError::Invalid {
                    field: "mtu",
                    value: mtu.to_string(),
                    limit: if self.ipv6.is_some() {
                        "1280-65535 with an IPv6 address"
                    } else {
                        "68-65535"
                    },
                });
            }
        }
        if let Some(n) = self.ipv4
            && (n.prefix_len() == 0 || n.addr().is_unspecified() || n.addr().is_multicast())
        {
            return Err(AttachError::Invalid {
                field: "ipv4Address",
                value: n.to_string(),
                limit: "a unicast address with a prefix of 1-32 bits",
            });
        }
        if let Some(n) = self.ipv6
            && (n.prefix_len() == 0 || n.addr().is_unspecified() || n.addr().is_multicast())
        {
            return Err(AttachError::Invalid {
                field: "ipv6Address",
                value: n.to_string(),
                limit: "a unicast address with a prefix of 1-128 bits",
            });
        }
        Ok(())
    }

    pub(crate) fn eth0(&self) -> Eth0 {
        Eth0 {
            mtu: self.mtu,
            v4: self.ipv4,
            v4_gw: self.ipv4_gateway,
            v6: self.ipv6,
            v6_gw: self.ipv6_gateway,
        }
    }
}

/// What the agent records durably BEFORE moving the link, so a crash at any later
/// point can always give the ENI back to the host as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniRecord {
    /// Serialized as "aa:bb:cc:dd:ee:ff".
    pub mac: MacAddress,
    pub original_name: String,
    pub index: u32,
    pub mtu: u32,
}

impl EniRecord {
    /// The record of a host link, taken before it is moved.
    pub fn of(link: &crate::link::HostLink) -> Option<EniRecord> {
        Some(EniRecord {
            mac: link.mac?,
            original_name: link.name.clone(),
            index: link.index,
            mtu: link.mtu,
        })
    }
}

const HOST: &str = "the host network namespace";

fn step(what: String) -> impl FnOnce(std::io::Error) -> AttachError {
    move |source| AttachError::Step { what, source }
}

/// Moves the host link `rec` describes into the netns pinned at `netns`, renames it
/// `eth0`, sets MTU, addresses (IPv6 with IFA_F_NODAD so it is usable at once), default
/// routes via the gateways, and brings it up.
///
/// Idempotent: if the link (found by ifindex, else by MAC) is already inside that netns
/// — a retry after a crash at any step — it finishes the job there; if it is a bridge
/// port there (a vm group's plugged eth0, [`crate::vm::plug`]), it is left as it is. Blocking; runs on a
/// dedicated thread (see [`crate::rtnl`]).
pub fn attach(rec: &EniRecord, netns: &Path, cfg: &EniConfig) -> Result<(), AttachError> {
    cfg.validate()?;
    let rec = rec.clone();
    let eth0 = cfg.eth0();
    rtnl::run(Target::Required(netns), move |s| async move {
        // `run` opens a required netns or fails before calling us.
        let Some(g) = s.group else {
            unreachable!("a required netns is always opened")
        };
        let ns = g.path.as_str();
        let list_group = || async {
            rtnl::links(&g.handle)
                .await
                .map_err(step(format!("listing the links of {ns}")))
        };
        // The ENI inside the netns: by ifindex and MAC, else by MAC, else a vm group's
        // plugged eth0 (a bridge port whose MAC the guest took) by ifindex.
        let in_group = |links: &[Link]| {
            rtnl::by_index_or_mac(links, rec.index, rec.mac)
                .or_else(|| {
                    links
                        .iter()
                        .find(|l| l.index == rec.index && l.name == ETH0 && l.master.is_some())
                })
                .cloned()
        };
        let mut group_links = list_group().await?;
        if in_group(&group_links).is_none() {
            let host_links = rtnl::links(&s.host)
                .await
                .map_err(step(format!("listing the links of {HOST}")))?;
            let Some(l) = rtnl::by_index_or_mac(&host_links, rec.index, rec.mac) else {
                return Err(AttachError::NotFound {
                    mac: rec.mac,
                    index: rec.index,
                    netns: ns.to_string(),
                });
            };
            if let Some(other) = group_links.iter().find(|o| o.name == ETH0) {
                return Err(AttachError::NameTaken {
                    link: l.name.clone(),
                    mac: rec.mac,
                    name: ETH0.into(),
                    netns: ns.to_string(),
                    other: other.index,
                });
            }
            rtnl::move_to(&s.host, l.index, fd(&g.ns), ETH0)
                .await
                .map_err(step(format!(
                    "moving link {} ({}) into {ns}",
                    l.name, rec.mac
                )))?;
            group_links = list_group().await?;
        }
        let Some(link) = in_group(&group_links) else {
            return Err(AttachError::NotFound {
                mac: rec.mac,
                index: rec.index,
                netns: ns.to_string(),
            });
        };
        // A vm group's eth0 plugged into its guest's bridge (`crate::vm::plug`) lends
        // its MAC and addresses to the guest: a re-run must not take them back.
        if link.master.is_some() && link.name == ETH0 {
            return Ok(());
        }
        let link = ensure_name(&g.handle, &group_links, link, ETH0, rec.mac, ns).await?;
        rtnl::configure(&g.handle, &link, &eth0)
            .await
            .map_err(|(what, source)| AttachError::Step {
                what: format!("{what} link {} ({}) in {ns}", link.name, rec.mac),
                source,
            })
    })
}

/// Renames `link` to `name` unless it has it already; refuses to take a name another
/// link of the same netns holds.
pub(crate) async fn ensure_name(
    h: &rtnetlink::Handle,
    all: &[Link],
    link: Link,
    name: &str,
    mac: MacAddress,
    ns: &str,
) -> Result<Link, AttachError> {
    if link.name == name {
        return Ok(link);
    }
    if let Some(other) = all.iter().find(|o| o.name == name && o.index != link.index) {
        return Err(AttachError::NameTaken {
            link: link.name.clone(),
            mac,
            name: name.into(),
            netns: ns.to_string(),
            other: other.index,
        });
    }
    rtnl::rename(h, &link, name).await.map_err(step(format!(
        "renaming link {} ({mac}) to {name} in {ns}",
        link.name
    )))?;
    Ok(Link {
        name: name.into(),
        up: false,
        ..link
    })
}

/// Sets `link` down, removes its addresses and restores the recorded MAC and MTU.
async fn reset(
    h: &rtnetlink::Handle,
    link: &Link,
    rec: &EniRecord,
    ns: &str,
) -> Result<(), AttachError> {
    let what = |s: &str| format!("{s} link {} ({}) in {ns}", link.name, rec.mac);
    if link.up {
        rtnl::set(h, rtnl::change(link.index).down().build())
            .await
            .map_err(step(what("setting down")))?;
    }
    rtnl::flush(h, link.index)
        .await
        .map_err(step(what("removing the addresses of")))?;
    let mut b = rtnl::change(link.index);
    let mut changed = false;
    if link.mac != Some(rec.mac) {
        b = b.address(rec.mac.0.to_vec());
        changed = true;
    }
    if rec.mtu != 0 && link.mtu != rec.mtu {
        b = b.mtu(rec.mtu);
        changed = true;
    }
    if changed {
        rtnl::set(h, b.build())
            .await
            .map_err(step(what("restoring the MAC and MTU of")))?;
    }
    Ok(())
}

/// Gives the ENI back: finds it inside `netns` (by ifindex, else MAC, else the only
/// non-lo, non-veth link), sets it down, flushes its addresses, restores the recorded MAC
/// and MTU if changed, moves it to the host netns and renames it `rec.original_name`.
///
/// Idempotent: if the link is already in the host netns, it only makes sure it is down,
/// unaddressed and named right. A host link that already holds `original_name` is never
/// clobbered: that is an error. Returns `Ok(false)` when the link is nowhere to be found
/// (a missing or unmounted `netns` pin counts as an empty netns). Blocking; runs on a
/// dedicated thread.
///
/// A vm group's eth0 may still be plugged into the guest's bridge (the shim died before
/// its unplug): that is undone first ([`crate::vm::unplug`], a no-op otherwise), so the
/// ENI leaves the bridge with its MAC back from the plug record.
pub fn detach(rec: &EniRecord, netns: Option<&Path>) -> Result<bool, AttachError> {
    if let Some(ns) = netns {
        crate::vm::unplug(ns).map_err(|e| AttachError::Unplug(Box::new(e)))?;
    }
    let rec = rec.clone();
    let target = netns.map_or(Target::None, Target::Optional);
    rtnl::run(target, move |s| async move {
        let list_host = || async {
            rtnl::links(&s.host)
                .await
                .map_err(step(format!("listing the links of {HOST}")))
        };
        let mut host_links = list_host().await?;
        let taken = |links: &[Link], ours: Option<u32>| {
            links
                .iter()
                .find(|o| o.name == rec.original_name && Some(o.index) != ours)
                .map(|o| o.index)
        };
        if let Some(g) = &s.group {
            let ns = g.path.as_str();
            let group_links = rtnl::links(&g.handle)
                .await
                .map_err(step(format!("listing the links of {ns}")))?;
            // Inside the group's netns the recorded ifindex alone is enough (the tenant
            // may have changed the MAC); on the host side a MAC match is also required.
            let found = rtnl::by_index_or_mac(&group_links, rec.index, rec.mac)
                .or_else(|| {
                    group_links
                        .iter()
                        .find(|l| l.index == rec.index && !l.loopback)
                })
                .or_else(|| only_candidate(&group_links))
                .cloned();
            if let Some(link) = found {
                if let Some(other) = taken(&host_links, None) {
                    return Err(AttachError::NameTaken {
                        link: link.name.clone(),
                        mac: rec.mac,
                        name: rec.original_name.clone(),
                        netns: HOST.into(),
                        other,
                    });
                }
                reset(&g.handle, &link, &rec, ns).await?;
                rtnl::move_to(&g.handle, link.index, fd(&s.host_ns), &rec.original_name)
                    .await
                    .map_err(step(format!(
                        "moving link {} ({}) from {ns} to {HOST}",
                        link.name, rec.mac
                    )))?;
                host_links = list_host().await?;
            }
        }
        let Some(link) = rtnl::by_index_or_mac(&host_links, rec.index, rec.mac).cloned() else {
            return Ok(false);
        };
        reset(&s.host, &link, &rec, HOST).await?;
        let link = Link { up: false, ..link };
        ensure_name(
            &s.host,
            &host_links,
            link,
            &rec.original_name,
            rec.mac,
            HOST,
        )
        .await?;
        Ok(true)
    })
}

/// The only link of a group netns that can be its ENI when neither its ifindex nor its
/// MAC match the record (a tenant with CAP_NET_ADMIN in its netns may change the MAC).
/// Only a physical link (no IFLA_INFO_KIND) qualifies: a tenant can create virtual links
/// (veth, macvlan, bridge, tun) in its own netns, and those must never be moved into the
/// host.
fn only_candidate(links: &[Link]) -> Option<&Link> {
    let mut c = links.iter().filter(|l| !l.loopback && l.kind.is_none());
    match (c.next(), c.next()) {
        (Some(l), None) => Some(l),
        _ => None,
    }
}
