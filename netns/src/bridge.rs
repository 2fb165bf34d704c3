//! Dev mode: a group without an ENI gets a veth whose host end is a port of an
//! agent-managed bridge in the host netns, the bridge holding the groups' gateway
//! address. Outbound masquerade is the nftables layer's job.

use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::LinkBridge;

use crate::attach::{ETH0, EniConfig};
use crate::eni::MacAddress;
use crate::rtnl::{self, Addr, Target, ThreadError, fd};

/// Errors setting up the dev bridge or a group's veth.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Thread(#[from] ThreadError),
    #[error(transparent)]
    Config(#[from] crate::attach::AttachError),
    /// A kernel request failed; `what` names the step, the link and the netns.
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {field} {value:?}: 1-15 characters, no '/', whitespace or ':'")]
    BadName { field: &'static str, value: String },
    #[error("host link {name} exists and is a {kind}, not a {want}")]
    WrongKind {
        name: String,
        kind: String,
        want: &'static str,
    },
    #[error("no bridge {name} in the host network namespace (call ensure_bridge first)")]
    NoBridge { name: String },
    #[error(
        "{netns} already has a link named eth0 (ifindex {index}) that is not the peer of {host_name}"
    )]
    Eth0Taken {
        netns: String,
        host_name: String,
        index: u32,
    },
    #[error("writing {path}")]
    Sysctl {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The agent-managed bridge of dev mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The bridge's link name, e.g. "eci0".
    pub name: String,
    /// The groups' IPv4 gateway, held by the bridge, with the subnet's prefix
    /// (e.g. 10.88.0.1/16).
    pub gateway_v4: Ipv4Net,
    pub gateway_v6: Option<Ipv6Net>,
    pub mtu: Option<u32>,
}

const HOST: &str = "the host network namespace";

fn step(what: String) -> impl FnOnce(std::io::Error) -> BridgeError {
    move |source| BridgeError::Step { what, source }
}

/// Checks a link name as the kernel would take it (IFNAMSIZ is 16 with the NUL).
fn check_name(field: &'static str, name: &str) -> Result<(), BridgeError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace)
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(BridgeError::BadName {
            field,
            value: name.to_string(),
        })
    }
}

fn kind_of(l: &rtnl::Link) -> String {
    l.kind.clone().unwrap_or_else(|| "physical link".into())
}

/// Writes "1" to a sysctl unless it already holds it.
fn enable(path: &'static str) -> Result<(), BridgeError> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|source| BridgeError::Sysctl { path, source })
}

/// Creates the bridge in the host netns if missing, gives it exactly the gateway
/// address(es), sets its MTU and brings it up; enables IPv4 forwarding (and IPv6
/// forwarding when `gateway_v6` is set — note that on Linux this stops the host's links
/// from accepting router advertisements unless their `accept_ra` is 2). Idempotent.
/// Blocking; runs on a dedicated thread.
pub fn ensure_bridge(cfg: &BridgeConfig) -> Result<(), BridgeError> {
    check_name("bridge name", &cfg.name)?;
    let cfg = cfg.clone();
    rtnl::run(Target::None, move |s| async move {
        let name = cfg.name.as_str();
        let list = || async {
            rtnl::links(&s.host)
                .await
                .map_err(step(format!("listing the links of {HOST}")))
        };
        let mut br = list().await?.into_iter().find(|l| l.name == name);
        if br.is_none() {
            let mut b = LinkBridge::new(name);
            if let Some(mtu) = cfg.mtu {
                b = b.mtu(mtu);
            }
            match s
                .host
                .link()
                .add(b.build())
                .execute()
                .await
                .map_err(rtnl::io)
            {
                // Created concurrently: use it.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                r => r.map_err(step(format!("creating bridge {name} in {HOST}")))?,
            }
            br = list().await?.into_iter().find(|l| l.name == name);
        }
        let Some(br) = br else {
            return Err(BridgeError::NoBridge { name: name.into() });
        };
        if !br.is_kind("bridge") {
            return Err(BridgeError::WrongKind {
                name: name.into(),
                kind: kind_of(&br),
                want: "bridge",
            });
        }
        // A bridge's MAC follows its ports' (the lowest) unless set explicitly: pin it,
        // so the groups' gateway MAC does not change as groups come and go.
        if let Some(mac) = br.mac {
            rtnl::set(
                &s.host,
                rtnl::change(br.index).address(mac.0.to_vec()).build(),
            )
            .await
            .map_err(step(format!("pinning the MAC of bridge {name} in {HOST}")))?;
        }
        let eth = rtnl::Eth0 {
            mtu: cfg.mtu,
            ..Default::default()
        };
        rtnl::configure(&s.host, &br, &eth)
            .await
            .map_err(|(what, source)| BridgeError::Step {
                what: format!("{what} bridge {name} in {HOST}"),
                source,
            })?;
        let mut want = vec![Addr {
            ip: cfg.gateway_v4.addr().into(),
            prefix: cfg.gateway_v4.prefix_len(),
        }];
        if let Some(v6) = cfg.gateway_v6 {
            want.push(Addr {
                ip: v6.addr().into(),
                prefix: v6.prefix_len(),
            });
        }
        rtnl::converge_addresses(&s.host, br.index, &want)
            .await
            .map_err(step(format!(
                "setting the gateway addresses of bridge {name} in {HOST}"
            )))?;
        // This thread never left the host netns, so these are the host's sysctls.
        enable("/proc/sys/net/ipv4/ip_forward")?;
        if cfg.gateway_v6.is_some() {
            enable("/proc/sys/net/ipv6/conf/all/forwarding")?;
        }
        Ok(())
    })
}

/// Creates a veth pair: host end `host_name` (at most 15 characters, chosen by the
/// caller, e.g. "eci" + 8 hex digits of the group id) enslaved to `bridge` and up; the
/// peer created directly inside `netns` as `eth0`, with the addresses, default route(s)
/// and MTU of `cfg`, up.
///
/// Idempotent: a leftover pair whose ends are each other's peers is reused and
/// reconfigured (but a peer that is a bridge port, a vm group's plugged eth0, keeps its
/// MAC and has no addresses: the guest holds them); a leftover host end whose peer is not the netns's `eth0` is deleted and
/// the pair recreated. Blocking; runs on a dedicated thread.
pub fn attach_veth(
    host_name: &str,
    bridge: &str,
    netns: &Path,
    cfg: &EniConfig,
) -> Result<(), BridgeError> {
    attach_veth_with_mac(host_name, bridge, netns, cfg, None)
}

/// As [`attach_veth`], with `eth0`'s MAC chosen by the caller (set when the pair is
/// made, and again on a reused pair whose `eth0` has another one). The agent derives it
/// from the group's address, so the port guard that only lets this MAC out
/// ([`crate::nft::ensure_port_guard`]) can be written before the veth exists.
pub fn attach_veth_with_mac(
    host_name: &str,
    bridge: &str,
    netns: &Path,
    cfg: &EniConfig,
    mac: Option<MacAddress>,
) -> Result<(), BridgeError> {
    check_name("veth host name", host_name)?;
    check_name("bridge name", bridge)?;
    cfg.validate()?;
    let host_name = host_name.to_string();
    let bridge = bridge.to_string();
    let eth = cfg.eth0();
    rtnl::run(Target::Required(netns), move |s| async move {
        // `run` opens a required netns or fails before calling us.
        let Some(g) = s.group else {
            unreachable!("a required netns is always opened")
        };
        let ns = g.path.as_str();
        let list_host = || async {
            rtnl::links(&s.host)
                .await
                .map_err(step(format!("listing the links of {HOST}")))
        };
        let list_group = || async {
            rtnl::links(&g.handle)
                .await
                .map_err(step(format!("listing the links of {ns}")))
        };
        let host_links = list_host().await?;
        let Some(br) = host_links.iter().find(|l| l.name == bridge).cloned() else {
            return Err(BridgeError::NoBridge { name: bridge });
        };
        if !br.is_kind("bridge") {
            return Err(BridgeError::WrongKind {
                name: bridge,
                kind: kind_of(&br),
                want: "bridge",
            });
        }
        let mut host_end = host_links.iter().find(|l| l.name == host_name).cloned();
        let mut group_links = list_group().await?;
        if let Some(h) = &host_end {
            if !h.is_kind("veth") {
                return Err(BridgeError::WrongKind {
                    name: host_name,
                    kind: kind_of(h),
                    want: "veth",
                });
            }
            let paired = group_links.iter().any(|p| {
                p.name == ETH0
                    && p.is_kind("veth")
                    && p.peer == Some(h.index)
                    && h.peer == Some(p.index)
            });
            if !paired {
                // A leftover from a crash with its peer elsewhere: start over.
                match rtnl::delete(&s.host, h.index).await {
                    Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                    r => r.map_err(step(format!("deleting stale veth {host_name} in {HOST}")))?,
                }
                host_end = None;
                group_links = list_group().await?;
            }
        }
        if host_end.is_none() {
            if let Some(other) = group_links.iter().find(|l| l.name == ETH0) {
                return Err(BridgeError::Eth0Taken {
                    netns: ns.to_string(),
                    host_name,
                    index: other.index,
                });
            }
            rtnl::add_veth(&s.host, &host_name, ETH0, fd(&g.ns), mac)
                .await
                .map_err(step(format!(
                    "creating veth {host_name} in {HOST} with peer eth0 in {ns}"
                )))?;
            host_end = list_host().await?.into_iter().find(|l| l.name == host_name);
            group_links = list_group().await?;
        }
        let Some(h) = host_end else {
            return Err(BridgeError::Step {
                what: format!("finding veth {host_name} in {HOST} after creating it"),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            });
        };
        let mut b = rtnl::change(h.index).controller(br.index).up();
        if let Some(mtu) = eth.mtu.filter(|m| *m != h.mtu) {
            b = b.mtu(mtu);
        }
        rtnl::set(&s.host, b.build()).await.map_err(step(format!(
            "enslaving veth {host_name} to bridge {bridge} in {HOST}"
        )))?;
        let Some(peer) = group_links.into_iter().find(|l| l.name == ETH0) else {
            return Err(BridgeError::Step {
                what: format!("finding eth0, the peer of {host_name}, in {ns}"),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            });
        };
        // A vm group's eth0 plugged into its guest's bridge (`crate::vm::plug`) lends
        // its MAC and addresses to the guest: a re-run (adoption) must not take them
        // back.
        if peer.master.is_some() {
            return Ok(());
        }
        if let Some(mac) = mac.filter(|m| peer.mac != Some(*m)) {
            rtnl::set(
                &g.handle,
                rtnl::change(peer.index).address(mac.0.to_vec()).build(),
            )
            .await
            .map_err(step(format!(
                "setting the MAC of eth0 (peer of {host_name}) in {ns} to {mac}"
            )))?;
        }
        rtnl::configure(&g.handle, &peer, &eth)
            .await
            .map_err(|(what, source)| BridgeError::Step {
                what: format!("{what} link eth0 (peer of {host_name}) in {ns}"),
                source,
            })
    })
}

/// Deletes the host end `host_name` (its peer in the group's netns goes with it).
/// Ok if absent; refuses to delete a link of another kind. Blocking.
pub fn detach_veth(host_name: &str) -> Result<(), BridgeError> {
    check_name("veth host name", host_name)?;
    let host_name = host_name.to_string();
    rtnl::run(Target::None, move |s| async move {
        let links = rtnl::links(&s.host)
            .await
            .map_err(step(format!("listing the links of {HOST}")))?;
        let Some(h) = links.into_iter().find(|l| l.name == host_name) else {
            return Ok(());
        };
        if !h.is_kind("veth") {
            return Err(BridgeError::WrongKind {
                name: host_name,
                kind: kind_of(&h),
                want: "veth",
            });
        }
        match rtnl::delete(&s.host, h.index).await {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            r => r.map_err(step(format!("deleting veth {host_name} in {HOST}"))),
        }
    })
}
