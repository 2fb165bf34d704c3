//! The host side of a vm group's network, run by the host shim before it boots QEMU:
//! the group's `eth0` becomes a port of a bridge `br0` in the group's netns, next to a
//! tap `tap0` that QEMU serves, and hands its MAC and addresses to the guest. The
//! bridge calls the netns' netfilter hooks (`nf_call_iptables`/`ip6tables`), so the
//! security-group table filters the guest's traffic in its forward chain, out of the
//! tenant's reach (a tenant owns the guest kernel, never the host netns).
//!
//! The guest writes any frame it likes to the tap (a tenant owns the guest kernel), so
//! the tap port carries the same guard as a dev-mode veth (`crate::nft::PortGuard`, a
//! `bridge eci_guard_tap0` table in the group's netns): only the guest's MAC, its
//! addresses (IPv6 link-local and `::` too), IPv4/IPv6/ARP, no router advertisements,
//! nothing to the instance metadata service.
//!
//! What [`unplug`] needs to undo it (eth0's MAC, addresses, routes, IPv6 switch) is
//! kept by the kernel as the alias of `br0`, written before eth0 is touched and gone
//! only when `br0` is: it survives a crash of the shim and goes with the netns.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::Path;

use ipnet::IpNet;
use rtnetlink::LinkBridge;

use super::{GuestNet, VmNetError, step, tap};
use crate::attach::ETH0;
use crate::eni::MacAddress;
use crate::rtnl::{self, Addr, Link, Target};

/// The bridge joining `eth0` and the tap in a vm group's netns.
pub const BRIDGE: &str = "br0";
/// The tap QEMU serves, in a vm group's netns.
pub const TAP: &str = "tap0";
/// Prefix of `br0`'s alias that marks it as a plug record.
const RECORD: &str = "eci-vm-plug";
/// How long [`plug`] waits for the bridge ports to forward.
const FORWARDING_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// IFALIASZ is 256 with the NUL.
const MAX_ALIAS: usize = 255;

/// A plugged group: the tap queue for QEMU and what the guest NIC must carry.
#[derive(Debug)]
pub struct Plugged {
    /// An open queue of `tap0` (raw Ethernet frames, no vnet header; close-on-exec),
    /// for `-netdev tap,fd=N`. The tap goes away when the last descriptor closes.
    pub tap: OwnedFd,
    /// eth0's identity: QEMU's NIC gets `guest.mac`, the guest gets
    /// `eci.net=<guest.to_cmdline()>`.
    pub guest: GuestNet,
}

/// What `br0`'s alias records: the guest's identity (eth0's before the plug) and
/// whether eth0 had IPv6 disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    net: GuestNet,
    v6_disabled: bool,
}

impl Record {
    fn to_alias(&self) -> String {
        let v6 = if self.v6_disabled { 1 } else { 0 };
        format!("{RECORD} v6off={v6} {}", self.net.to_cmdline())
    }

    fn from_alias(alias: &str) -> Option<Record> {
        let mut words = alias.split(' ');
        if words.next()? != RECORD {
            return None;
        }
        let v6_disabled = match words.next()? {
            "v6off=0" => false,
            "v6off=1" => true,
            _ => return None,
        };
        let net = GuestNet::from_cmdline(words.next()?).ok()?;
        Some(Record { net, v6_disabled })
    }
}

/// Plugs the group whose netns is pinned at `netns`: reads eth0 (MAC, MTU, addresses,
/// default routes), records them as `br0`'s alias, creates `br0` (netfilter calls on,
/// multicast snooping off, IPv6 off), creates `tap0` (MTU of eth0, IPv6 off), gives
/// eth0 a fresh locally administered MAC, removes its addresses and switches IPv6 off
/// on it, enslaves eth0 and tap0, brings all up and waits (at most 3 s) until both
/// ports forward.
///
/// `Ok(None)` when the netns has no eth0 (a group without network): nothing is created.
/// (Contract change, vm-contract.md "Network": the contract's `guest: None`-like case is
/// this `None`, so that a `Plugged` always holds both a tap and the guest's identity.)
/// A leftover plug (a crash, a second call) is undone first ([`unplug`]), so the
/// result is always a fresh tap and eth0's original identity. Blocking; runs on a
/// dedicated thread.
pub fn plug(netns: &Path) -> Result<Option<Plugged>, VmNetError> {
    unplug(netns)?;
    rtnl::run(Target::Required(netns), move |s| async move {
        let Some(g) = s.group else {
            unreachable!("a required netns is always opened")
        };
        let h = &g.handle;
        let ns = g.path.as_str();
        let list = || async {
            rtnl::links(h)
                .await
                .map_err(step(format!("listing the links of {ns}")))
        };
        let links = list().await?;
        let Some(eth0) = links.iter().find(|l| l.name == ETH0).cloned() else {
            return Ok(None);
        };
        let Some(mac) = eth0.mac else {
            return Err(VmNetError::Invalid {
                field: "eth0 MAC",
                value: "none".into(),
                limit: "an Ethernet link",
            });
        };
        if let Some(other) = links.iter().find(|l| l.name == BRIDGE || l.name == TAP) {
            return Err(VmNetError::NameTaken {
                name: other.name.clone(),
                netns: ns.to_string(),
            });
        }
        let net = read_identity(h, &eth0, mac, ns).await?;
        let record = Record {
            net: net.clone(),
            v6_disabled: sysctl_v6_disabled(ETH0)?,
        };
        let alias = record.to_alias();
        if alias.len() > MAX_ALIAS {
            return Err(VmNetError::Invalid {
                field: "eth0 addresses",
                value: net.to_cmdline(),
                limit: "fit in a 255-byte plug record",
            });
        }

        // 1. The bridge and, before eth0 changes, the record.
        let b = LinkBridge::new(BRIDGE)
            .nf_call_iptables(true)
            .nf_call_ip6tables(true)
            .mcast_snooping(false)
            .mtu(eth0.mtu)
            .build();
        h.link()
            .add(b)
            .execute()
            .await
            .map_err(rtnl::io)
            .map_err(step(format!("creating bridge {BRIDGE} in {ns}")))?;
        let br = find(&list().await?, BRIDGE, ns)?;
        rtnl::set(
            h,
            rtnl::change(br.index)
                .append_extra_attribute(rtnetlink::packet_route::link::LinkAttribute::IfAlias(
                    alias,
                ))
                .build(),
        )
        .await
        .map_err(step(format!(
            "recording the plug as the alias of {BRIDGE} in {ns}"
        )))?;
        set_v6_disabled(BRIDGE, true)?;

        // 2. The tap's guard first (it matches the port by name), so no frame of the
        //    guest ever crosses the bridge unguarded; then the tap, created by this
        //    thread inside the netns.
        let (v4, v6) = split(&net.addrs);
        crate::nft::ensure_guard_here(&crate::nft::Guarded {
            port: TAP,
            mac: net.mac,
            ipv4: &v4,
            ipv6: &v6,
            uplink: Some(ETH0),
        })
        .map_err(VmNetError::Guard)?;
        let tap_fd = tap::open(TAP).map_err(step(format!("creating tap {TAP} in {ns}")))?;
        set_v6_disabled(TAP, true)?;
        let tap = find(&list().await?, TAP, ns)?;

        // 3. eth0 gives up its identity.
        let what = |s: &str| format!("{s} {ETH0} in {ns}");
        rtnl::set(h, rtnl::change(eth0.index).down().build())
            .await
            .map_err(step(what("setting down")))?;
        set_v6_disabled(ETH0, true)?;
        rtnl::flush(h, eth0.index)
            .await
            .map_err(step(what("removing the addresses of")))?;
        rtnl::set(
            h,
            rtnl::change(eth0.index)
                .address(fresh_mac()?.0.to_vec())
                .build(),
        )
        .await
        .map_err(step(what("giving a fresh MAC to")))?;

        // 4. Ports in, all up.
        for (l, name) in [(&eth0, ETH0), (&tap, TAP)] {
            rtnl::set(
                h,
                rtnl::change(l.index)
                    .controller(br.index)
                    .mtu(eth0.mtu)
                    .up()
                    .build(),
            )
            .await
            .map_err(step(format!("enslaving {name} to {BRIDGE} in {ns}")))?;
        }
        rtnl::set(h, rtnl::change(br.index).up().build())
            .await
            .map_err(step(format!("setting {BRIDGE} up in {ns}")))?;
        // 5. The probe path: br0 holds the host-only probe source, with a route to each
        //    of the guest's IPv4 addresses (br0 must be up for the routes).
        if let Some(src) = net.probe_source {
            probe_path(h, br.index, src, &v4)
                .await
                .map_err(step(format!("adding the probe path on {BRIDGE} in {ns}")))?;
        }
        // A port forwards only once the kernel's link watcher has seen it up (up to a
        // second later); frames before that are dropped. Wait for it, bounded: a port
        // whose carrier is down (an ENI link down) never forwards, and that is no
        // reason to fail the plug.
        let deadline = std::time::Instant::now() + FORWARDING_WAIT;
        loop {
            let links = list().await?;
            let ready = [eth0.index, tap.index]
                .iter()
                .all(|i| links.iter().any(|l| l.index == *i && l.forwarding));
            if ready || std::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(Some(Plugged {
            tap: tap_fd,
            guest: net,
        }))
    })
}

/// Undoes [`plug`] in the netns pinned at `netns`: eth0 leaves `br0` and gets back its
/// MAC, addresses, default routes and IPv6 switch from the record; `tap0` and `br0`
/// are deleted (the record last). Safe to run twice, after a crash at any step of plug
/// or unplug, and on a netns that was never plugged or is gone. Blocking.
pub fn unplug(netns: &Path) -> Result<(), VmNetError> {
    rtnl::run(Target::Optional(netns), move |s| async move {
        let Some(g) = s.group else {
            return Ok(());
        };
        let h = &g.handle;
        let ns = g.path.as_str();
        let links = rtnl::links(h)
            .await
            .map_err(step(format!("listing the links of {ns}")))?;
        let br = links
            .iter()
            .find(|l| l.name == BRIDGE && l.is_kind("bridge"))
            .cloned();
        let record = br
            .as_ref()
            .and_then(|b| b.alias.as_deref())
            .and_then(Record::from_alias);
        // Without a record eth0 was never touched (plug writes it first), or unplug
        // already gave everything back: only the devices remain to delete.
        if let (Some(rec), Some(eth0)) = (&record, links.iter().find(|l| l.name == ETH0)) {
            restore_eth0(h, eth0, rec, ns).await?;
        }
        let mut plugged = false;
        for (name, kind) in [(TAP, "tun"), (BRIDGE, "bridge")] {
            if let Some(l) = links.iter().find(|l| l.name == name && l.is_kind(kind)) {
                plugged = true;
                match rtnl::delete(h, l.index).await {
                    Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                    r => r.map_err(step(format!("deleting {name} in {ns}")))?,
                }
            }
        }
        // Only once the tap is gone: it never exists without its guard. (A guard left
        // by a crash between the two is harmless: it only matches a tap0, which only a
        // plug creates, after writing the guard again.)
        if plugged {
            crate::nft::remove_guard_here(TAP).map_err(VmNetError::Guard)?;
        }
        Ok(())
    })
}

/// The identity the guest of the netns pinned at `netns` took over, read from the plug
/// record: what the group's addresses are while its eth0 holds none. `None` when the
/// netns is not plugged (or gone). Blocking.
pub fn guest_of(netns: &Path) -> Result<Option<GuestNet>, VmNetError> {
    rtnl::run(Target::Optional(netns), move |s| async move {
        let Some(g) = s.group else {
            return Ok(None);
        };
        let links = rtnl::links(&g.handle)
            .await
            .map_err(step(format!("listing the links of {}", g.path)))?;
        Ok(links
            .iter()
            .find(|l| l.name == BRIDGE && l.is_kind("bridge"))
            .and_then(|b| b.alias.as_deref())
            .and_then(Record::from_alias)
            .map(|r| r.net))
    })
}

/// Gives eth0 back what [`plug`] took: out of the bridge, its MAC, its IPv6 switch,
/// its addresses and default routes, up.
async fn restore_eth0(
    h: &rtnetlink::Handle,
    eth0: &Link,
    rec: &Record,
    ns: &str,
) -> Result<(), VmNetError> {
    let what = |s: &str| format!("{s} {ETH0} in {ns}");
    if eth0.master.is_some() {
        rtnl::set(h, rtnl::change(eth0.index).nocontroller().build())
            .await
            .map_err(step(what("taking out of the bridge")))?;
    }
    if eth0.mac != Some(rec.net.mac) {
        if eth0.up {
            rtnl::set(h, rtnl::change(eth0.index).down().build())
                .await
                .map_err(step(what("setting down")))?;
        }
        rtnl::set(
            h,
            rtnl::change(eth0.index)
                .address(rec.net.mac.0.to_vec())
                .build(),
        )
        .await
        .map_err(step(what("restoring the MAC of")))?;
    }
    set_v6_disabled(ETH0, rec.v6_disabled)?;
    let want: Vec<Addr> = rec
        .net
        .addrs
        .iter()
        .map(|a| Addr {
            ip: a.addr(),
            prefix: a.prefix_len(),
        })
        .collect();
    let eth0 = Link {
        up: false,
        ..eth0.clone()
    };
    rtnl::configure_all(h, &eth0, Some(rec.net.mtu), &want, &rec.net.gateways)
        .await
        .map_err(|(w, source)| VmNetError::Step {
            what: what(w),
            source,
        })
}

/// eth0's identity as the guest takes it: MAC, MTU, addresses but the IPv6
/// link-local ones, the gateways of its default routes.
async fn read_identity(
    h: &rtnetlink::Handle,
    eth0: &Link,
    mac: MacAddress,
    ns: &str,
) -> Result<GuestNet, VmNetError> {
    let addrs = rtnl::addresses(h, eth0.index)
        .await
        .map_err(step(format!("reading the addresses of {ETH0} in {ns}")))?;
    let mut out = Vec::new();
    for (a, _) in addrs {
        if rtnl::is_link_local(a.ip) {
            continue;
        }
        let net = IpNet::new(a.ip, a.prefix).map_err(|_| VmNetError::Invalid {
            field: "eth0 address",
            value: format!("{}/{}", a.ip, a.prefix),
            limit: "a valid prefix",
        })?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    let gateways: Vec<IpAddr> =
        rtnl::default_gateways(h, eth0.index)
            .await
            .map_err(step(format!(
                "reading the default routes of {ETH0} in {ns}"
            )))?;
    // Only for a guest with IPv4 (probes target the first IPv4 address) that does not
    // hold the probe source itself.
    let probe_source = Some(super::PROBE_SOURCE).filter(|p| {
        out.iter().any(|a| a.addr().is_ipv4()) && !out.iter().any(|a| a.addr() == IpAddr::V4(*p))
    });
    let net = GuestNet {
        mac,
        mtu: eth0.mtu,
        addrs: out,
        gateways,
        probe_source,
    };
    net.validate()?;
    Ok(net)
}

/// `src`/32 on the bridge (index `br`) and a link-scope route to each of `guests`
/// through it with `src` as preferred source: what the agent's probes and hooks,
/// connecting from the group netns, leave by. Replaces what is there (a retry).
async fn probe_path(
    h: &rtnetlink::Handle,
    br: u32,
    src: std::net::Ipv4Addr,
    guests: &[std::net::Ipv4Addr],
) -> std::io::Result<()> {
    use rtnetlink::RouteMessageBuilder;
    use rtnetlink::packet_route::route::RouteScope;
    h.address()
        .add(br, IpAddr::V4(src), 32)
        .replace()
        .execute()
        .await
        .map_err(rtnl::io)?;
    for g in guests {
        let route = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(*g, 32)
            .output_interface(br)
            .pref_source(src)
            .scope(RouteScope::Link)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(rtnl::io)?;
    }
    Ok(())
}

/// The IPv4 and IPv6 addresses of `addrs`.
fn split(addrs: &[IpNet]) -> (Vec<std::net::Ipv4Addr>, Vec<std::net::Ipv6Addr>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for a in addrs {
        match a {
            IpNet::V4(n) => v4.push(n.addr()),
            IpNet::V6(n) => v6.push(n.addr()),
        }
    }
    (v4, v6)
}

fn find(links: &[Link], name: &str, ns: &str) -> Result<Link, VmNetError> {
    links
        .iter()
        .find(|l| l.name == name)
        .cloned()
        .ok_or_else(|| VmNetError::Step {
            what: format!("finding {name} in {ns} after creating it"),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })
}

/// A random unicast, locally administered MAC.
fn fresh_mac() -> Result<MacAddress, VmNetError> {
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`, a live buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if usize::try_from(n).ok() != Some(b.len()) {
        return Err(VmNetError::Step {
            what: "drawing a random MAC".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    b[0] = (b[0] & 0xfc) | 0x02;
    Ok(MacAddress(b))
}

fn v6_path(link: &str) -> String {
    format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6")
}

/// The calling thread's netns' `disable_ipv6` of `link` (false when IPv6 is absent).
fn sysctl_v6_disabled(link: &str) -> Result<bool, VmNetError> {
    match std::fs::read_to_string(v6_path(link)) {
        Ok(v) => Ok(v.trim() == "1"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(VmNetError::Step {
            what: format!("reading {}", v6_path(link)),
            source,
        }),
    }
}

/// Sets `disable_ipv6` of `link` in the calling thread's netns (net sysctls follow
/// the netns of the thread that opens them): the bridge, the tap and eth0 as a port
/// must not speak IPv6 (router solicitations, DAD) with addresses of their own.
fn set_v6_disabled(link: &str, off: bool) -> Result<(), VmNetError> {
    let path = v6_path(link);
    let want = if off { "1" } else { "0" };
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == want) {
        return Ok(());
    }
    match std::fs::write(&path, want) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !off => Ok(()),
        r => r.map_err(|source| VmNetError::Step {
            what: format!("writing {want} to {path}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_and_refuses_strangers() {
        let rec = Record {
            net: GuestNet {
                mac: MacAddress([2, 0, 0, 0, 0, 7]),
                mtu: 9001,
                addrs: vec!["10.1.2.3/20".parse().expect("v4")],
                gateways: vec!["10.1.0.1".parse().expect("gw")],
                probe_source: Some(crate::vm::PROBE_SOURCE),
            },
            v6_disabled: true,
        };
        let alias = rec.to_alias();
        assert!(alias.starts_with("eci-vm-plug v6off=1 mac=02:00:00:00:00:07;"));
        assert_eq!(Record::from_alias(&alias), Some(rec));
        for other in [
            "",
            "uplink to the VPC",
            "eci-vm-plug",
            "eci-vm-plug v6off=2 mac=02:00:00:00:00:07;mtu=1500",
        ] {
            assert_eq!(Record::from_alias(other), None, "{other}");
        }
    }
}
