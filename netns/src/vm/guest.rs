//! The guest side: `eci-guest` (PID 1 of the VM) gives its virtio NIC the group's
//! network identity inside the group netns it pinned, as the agent does for an ENI on
//! the host.

use std::net::IpAddr;
use std::path::Path;

use super::{GuestNet, VmNetError, step};
use crate::attach::ETH0;
use crate::rtnl::{self, Addr, Target, fd};

/// How long [`configure_guest`] waits for the NIC to show up.
const NIC_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Finds the NIC whose MAC is `net.mac` (waiting up to 5 s for it to appear) (in the caller's network namespace, or already
/// in the group's), moves it into the netns pinned at `netns` as `eth0`, sets its MTU,
/// exactly `net.addrs` (IPv6 without duplicate address detection), a default route via
/// each gateway, an on-link route to the host's probe source (when given), and brings
/// `lo` and `eth0` up.
///
/// Idempotent: a retry finds the NIC wherever the last run left it. Blocking; runs on a
/// dedicated thread, so no caller thread enters the group's netns.
pub fn configure_guest(net: &GuestNet, netns: &Path) -> Result<(), VmNetError> {
    net.validate()?;
    let net = net.clone();
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
        let by_mac = |links: &[rtnl::Link]| {
            links
                .iter()
                .find(|l| l.mac == Some(net.mac) && !l.loopback)
                .cloned()
        };
        let mut group_links = list_group().await?;
        if by_mac(&group_links).is_none() {
            // The NIC appears when its driver has probed it; give it a moment.
            let deadline = std::time::Instant::now() + NIC_WAIT;
            let nic = loop {
                let root = rtnl::links(&s.host)
                    .await
                    .map_err(step("listing the links of the guest's root netns".into()))?;
                if let Some(nic) = by_mac(&root) {
                    break nic;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(VmNetError::NoNic {
                        mac: net.mac,
                        netns: ns.to_string(),
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            };
            if let Some(other) = group_links.iter().find(|l| l.name == ETH0) {
                return Err(VmNetError::Eth0Taken {
                    netns: ns.to_string(),
                    index: other.index,
                });
            }
            rtnl::move_to(&s.host, nic.index, fd(&g.ns), ETH0)
                .await
                .map_err(step(format!(
                    "moving NIC {} ({}) into {ns}",
                    nic.name, net.mac
                )))?;
            group_links = list_group().await?;
        }
        let Some(nic) = by_mac(&group_links) else {
            return Err(VmNetError::NoNic {
                mac: net.mac,
                netns: ns.to_string(),
            });
        };
        let nic =
            crate::attach::ensure_name(&g.handle, &group_links, nic, ETH0, net.mac, ns).await?;
        if let Some(lo) = group_links.iter().find(|l| l.loopback && !l.up) {
            rtnl::set(&g.handle, rtnl::change(lo.index).up().build())
                .await
                .map_err(step(format!("setting lo up in {ns}")))?;
        }
        let want: Vec<Addr> = net
            .addrs
            .iter()
            .map(|a| Addr {
                ip: a.addr(),
                prefix: a.prefix_len(),
            })
            .collect();
        let gws: Vec<IpAddr> = net.gateways.clone();
        rtnl::configure_all(&g.handle, &nic, Some(net.mtu), &want, &gws)
            .await
            .map_err(|(what, source)| VmNetError::Step {
                what: format!("{what} eth0 ({}) in {ns}", net.mac),
                source,
            })?;
        if let Some(src) = net.probe_source {
            // The host's probes come from `src` on the bridge: answer them on-link, not
            // through the default gateway (where they would leave for the VPC).
            let route = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(src, 32)
                .output_interface(nic.index)
                .scope(rtnetlink::packet_route::route::RouteScope::Link)
                .build();
            g.handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(rtnl::io)
                .map_err(step(format!(
                    "adding the route to the probe source {src} in {ns}"
                )))?;
        }
        Ok(())
    })
}
