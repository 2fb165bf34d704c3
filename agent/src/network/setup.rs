//! Setting up a group's network in its netns: the ENI (or the dev veth), addresses,
//! routes, then the security-group rules. Blocking; every step is idempotent, so a
//! retry after a crash at any point finishes the job.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Instant;

use eci_api::v1::{GroupNetworkStatus, NetworkSpec};
use eci_netns::eni::{EniConfig, EniRecord};
use eci_netns::{EniSelector, MacAddress, Rule};
use ipnet::{Ipv4Net, Ipv6Net};

use super::admit::selector_of;
use super::{DevNet, NetworkError, NetworkPlan};
use crate::store::{HeldEni, Store};

/// What a setup did, for the group's status and events.
#[derive(Debug)]
pub struct Setup {
    pub status: GroupNetworkStatus,
    /// The ENI just moved in (None when it was in already, or there is none).
    pub attached: Option<HeldEni>,
}

fn store_err(e: crate::store::StoreError) -> NetworkError {
    NetworkError::Store(crate::error::chain(&e))
}

/// One spec rule in its typed form: the same parse validation and the kernel side use.
pub fn parse_rule(
    r: &eci_api::v1::SecurityGroupRule,
) -> Result<Rule, eci_netns::security_group::RuleError> {
    Rule::parse(
        &r.direction,
        &r.protocol,
        &r.port_range,
        &r.cidr,
        &r.policy,
        r.priority,
    )
}

/// The spec's rules, parsed (the spec was validated when it was stored).
pub fn rules_of(net: &NetworkSpec) -> Vec<Rule> {
    net.security_group_rules
        .iter()
        .filter_map(|r| parse_rule(r).ok())
        .collect()
}

/// The record kept for an ENI, in the form `eci-netns` takes.
pub fn record_of(h: &HeldEni) -> Result<EniRecord, NetworkError> {
    let mac: MacAddress = h
        .mac
        .parse()
        .map_err(|e: eci_netns::eni::EniError| NetworkError::Store(e.to_string()))?;
    Ok(EniRecord {
        mac,
        original_name: h.original_name.clone(),
        index: h.index,
        mtu: h.mtu,
    })
}

/// Replaces the security-group table of the netns at `netns` with `rules`. For a vm
/// group (`vm`) the table also filters what is bridged between the guest's tap and
/// `eth0` (the guest holds the group's addresses, so the input chain sees none of its
/// traffic): directions come from the group's addresses, read from the netns (or, once
/// the shim plugged the guest in, from the plug record).
pub fn apply_rules(netns: &Path, rules: &[Rule], vm: bool) -> Result<(), NetworkError> {
    let sg = |e: eci_netns::nft::NftError| NetworkError::SecurityGroup(crate::error::chain(&e));
    if !vm {
        return eci_netns::nft::apply_security_groups(netns, rules).map_err(sg);
    }
    let addrs: Vec<std::net::IpAddr> = eci_netns::observe::addresses(netns)
        .map_err(|e| NetworkError::SecurityGroup(crate::error::chain(&e)))?
        .into_iter()
        .map(|a| a.address)
        .filter(|a| !matches!(a, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect();
    eci_netns::nft::apply_vm_security_groups(netns, rules, &addrs).map_err(sg)
}

/// Sets up group `id`'s (named `name`) network in the netns pinned at `netns`.
pub fn setup(
    store: &Store,
    plan: &NetworkPlan,
    id: &str,
    name: &str,
    net: Option<&NetworkSpec>,
    netns: &Path,
    vm: bool,
) -> Result<Setup, NetworkError> {
    let started = Instant::now();
    let net = net.cloned().unwrap_or_default();
    let mut attached = None;
    let (mode, mac, host_link) = if let Some(sel) = selector_of(&net) {
        let (held, new) = hold(store, plan, id, name, &sel)?;
        crate::failpoint::hit("eni-recorded");
        let cfg = EniConfig {
            mtu: (net.mtu != 0).then_some(net.mtu),
            ipv4: net.ipv4_address.parse::<Ipv4Net>().ok(),
            ipv4_gateway: net.ipv4_gateway.parse::<Ipv4Addr>().ok(),
            ipv6: net.ipv6_address.parse::<Ipv6Net>().ok(),
            ipv6_gateway: net.ipv6_gateway.parse::<Ipv6Addr>().ok(),
        };
        eci_netns::eni::attach(&record_of(&held)?, netns, &cfg).map_err(|e| {
            NetworkError::Attach {
                link: held.original_name.clone(),
                mac: held.mac.clone(),
                message: crate::error::chain(&e),
            }
        })?;
        crate::failpoint::hit("eni-attached");
        let out = ("eni", held.mac.clone(), held.original_name.clone());
        if new {
            attached = Some(held);
        }
        out
    } else if let Some(dev) = &plan.dev {
        let host = dev_port(store, dev, id, name, netns)?;
        crate::failpoint::hit("veth-attached");
        ("bridge", String::new(), host)
    } else {
        return Ok(Setup {
            status: GroupNetworkStatus {
                mode: "none".into(),
                ..Default::default()
            },
            attached: None,
        });
    };
    let rules = rules_of(&net);
    apply_rules(netns, &rules, vm)?;
    Ok(Setup {
        status: GroupNetworkStatus {
            mode: mode.into(),
            mac_address: mac,
            host_link,
            setup_micros: started.elapsed().as_micros() as u64,
            security_group_rules: rules.len() as u32,
        },
        attached,
    })
}

/// Group `id`'s port on the dev bridge: its address, then the port guard, then the veth
/// (whose `eth0` gets the MAC the guard lets out). Returns the port's (host end's) name.
/// Idempotent: on a running group it only re-converges, which brings back a guard that
/// a host firewall reload (`nft flush ruleset`) removed.
fn dev_port(
    store: &Store,
    dev: &DevNet,
    id: &str,
    name: &str,
    netns: &Path,
) -> Result<String, NetworkError> {
    let v4 = dev_address(store, dev, name)?;
    dev.ensure()?;
    let host = DevNet::host_end(id);
    let cfg = EniConfig {
        mtu: None,
        ipv4: Ipv4Net::new(v4, dev.v4.prefix_len()).ok(),
        ipv4_gateway: Some(dev.gateway_v4().addr()),
        ipv6: dev.v6_for(v4),
        ipv6_gateway: dev.gateway_v6().map(|g| g.addr()),
    };
    // The guard first: the port never exists without it (see `PortGuard`).
    let mac = DevNet::mac_for(v4);
    eci_netns::nft::ensure_port_guard(&eci_netns::nft::PortGuard {
        port: host.clone(),
        mac,
        ipv4: v4,
        ipv6: cfg.ipv6.map(|n| n.addr()),
    })
    .map_err(|e| NetworkError::Veth(format!("port guard: {}", crate::error::chain(&e))))?;
    eci_netns::bridge::attach_veth_with_mac(&host, &dev.bridge, netns, &cfg, Some(mac))
        .map_err(|e| NetworkError::Veth(crate::error::chain(&e)))?;
    Ok(host)
}

/// After an agent restart, for a running dev group: makes sure its port guard (and the
/// MAC it allows) are in place again. Nothing to do for ENI groups or without a dev
/// bridge. Blocking.
pub fn reguard(
    store: &Store,
    plan: &NetworkPlan,
    id: &str,
    name: &str,
    net: Option<&NetworkSpec>,
    netns: &Path,
) -> Result<(), NetworkError> {
    let eni = net.and_then(selector_of).is_some();
    // Only a group that holds its address: never give a running group a new one.
    let holds = store.dev_address_of(name).map_err(store_err)?.is_some();
    match &plan.dev {
        Some(dev) if !eni && holds && netns.exists() => {
            dev_port(store, dev, id, name, netns).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// The ENI record of group `id`: the one it holds, or a new one committed before the
/// ENI is touched. The bool says whether it is new.
fn hold(
    store: &Store,
    plan: &NetworkPlan,
    id: &str,
    name: &str,
    sel: &EniSelector,
) -> Result<(HeldEni, bool), NetworkError> {
    if let Some(h) = store.held_eni(id).map_err(store_err)? {
        return Ok((h, false));
    }
    let all = store.held_enis().map_err(store_err)?;
    let link = super::admit::find(sel, &all, plan).map_err(NetworkError::EniNotFound)?;
    let mac = link
        .mac
        .ok_or_else(|| NetworkError::EniNoMac(link.name.clone()))?;
    let held = HeldEni {
        group: name.to_string(),
        mac: mac.to_string(),
        original_name: link.name.clone(),
        index: link.index,
        mtu: link.mtu,
    };
    store
        .write(|tx| tx.hold_eni(id, &held))
        .map_err(store_err)?;
    Ok((held, true))
}

/// The group's dev address: the one admission gave it, or (a group admitted while the
/// dev bridge was off) a new one.
fn dev_address(store: &Store, dev: &DevNet, name: &str) -> Result<Ipv4Addr, NetworkError> {
    if let Some(a) = store.dev_address_of(name).map_err(store_err)? {
        return Ok(a);
    }
    store
        .write(|tx| tx.allocate_dev_address(name, dev.hosts()))
        .map_err(store_err)?
        .ok_or_else(|| NetworkError::DevPoolFull(dev.v4.to_string()))
}
