//! The dev bridge: networking for groups that name no ENI, off fleet hosts.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::sync::Mutex;

use ipnet::{Ipv4Net, Ipv6Net};

use super::NetworkError;

/// The agent's bridge and its subnets. The first address of each subnet is the bridge's
/// (the groups' gateway); groups get the others, one each, held in the store.
#[derive(Debug)]
pub struct DevNet {
    pub bridge: String,
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
    /// Whether the bridge and masquerade were set up by this agent process.
    ready: Mutex<bool>,
}

impl DevNet {
    pub fn new(bridge: String, v4: Ipv4Net, v6: Option<Ipv6Net>) -> Self {
        DevNet {
            bridge,
            v4,
            v6,
            ready: Mutex::new(false),
        }
    }

    /// The bridge's own IPv4 address, with the subnet's prefix.
    pub fn gateway_v4(&self) -> Ipv4Net {
        let first = Ipv4Addr::from(u32::from(self.v4.network()) + 1);
        Ipv4Net::new(first, self.v4.prefix_len()).unwrap_or(self.v4)
    }

    /// The bridge's own IPv6 address, when the dev bridge has IPv6.
    pub fn gateway_v6(&self) -> Option<Ipv6Net> {
        self.v6.map(|n| {
            let first = Ipv6Addr::from(u128::from(n.network()) + 1);
            Ipv6Net::new(first, n.prefix_len()).unwrap_or(n)
        })
    }

    /// The addresses groups may hold: after the gateway, before the broadcast address.
    pub fn hosts(&self) -> RangeInclusive<u32> {
        let net = u32::from(self.v4.network());
        let broadcast = u32::from(self.v4.broadcast());
        net + 2..=broadcast - 1
    }

    /// A group's IPv6 address: the subnet's prefix with the group's IPv4 address as its
    /// last 32 bits, so it follows the (durably held) IPv4 address without a second pool.
    pub fn v6_for(&self, v4: Ipv4Addr) -> Option<Ipv6Net> {
        self.v6.map(|n| {
            let a = Ipv6Addr::from(u128::from(n.network()) | u128::from(u32::from(v4)));
            Ipv6Net::new(a, n.prefix_len()).unwrap_or(n)
        })
    }

    /// "eci0 10.88.0.1/16 fd00:88::1/64" for `Node.Info`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.bridge, self.gateway_v4());
        if let Some(v6) = self.gateway_v6() {
            s.push_str(&format!(" {v6}"));
        }
        s
    }

    /// The MAC of a group's `eth0`: `02:ec` (locally administered) and its IPv4
    /// address, so it is unique on the bridge and known before the veth exists (the
    /// port guard, written first, lets only this MAC out).
    pub fn mac_for(v4: Ipv4Addr) -> eci_netns::MacAddress {
        let o = v4.octets();
        eci_netns::MacAddress([0x02, 0xec, o[0], o[1], o[2], o[3]])
    }

    /// The host end of a group's veth: "eci" and the first 12 hex digits of its id
    /// (15 bytes, the kernel's limit), so cleanup finds it from the id alone.
    pub fn host_end(group_id: &str) -> String {
        let short: String = group_id.chars().take(12).collect();
        format!("eci{short}")
    }

    /// Makes sure the bridge (with the gateway addresses, forwarding on) and the
    /// outbound masquerade exist. Blocking; done once per agent process, and again after
    /// a failure. Idempotent in the kernel, so a second agent start only re-checks.
    pub fn ensure(&self) -> Result<(), NetworkError> {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        if *ready {
            return Ok(());
        }
        eci_netns::bridge::ensure_bridge(&eci_netns::bridge::BridgeConfig {
            name: self.bridge.clone(),
            gateway_v4: self.gateway_v4(),
            gateway_v6: self.gateway_v6(),
            mtu: None,
        })
        .map_err(|e| NetworkError::Bridge(crate::error::chain(&e)))?;
        let mut subnets = vec![ipnet::IpNet::V4(self.v4)];
        subnets.extend(self.v6.map(ipnet::IpNet::V6));
        eci_netns::nft::ensure_masquerade(&self.bridge, &subnets)
            .map_err(|e| NetworkError::Bridge(crate::error::chain(&e)))?;
        *ready = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_addresses() {
        let d = DevNet::new(
            "eci0".into(),
            "10.88.0.0/16".parse().expect("net"),
            Some("fd00:88::/64".parse().expect("net")),
        );
        assert_eq!(d.gateway_v4().to_string(), "10.88.0.1/16");
        assert_eq!(
            d.hosts(),
            u32::from(Ipv4Addr::new(10, 88, 0, 2))..=u32::from(Ipv4Addr::new(10, 88, 255, 254))
        );
        assert_eq!(
            d.v6_for(Ipv4Addr::new(10, 88, 0, 2))
                .expect("v6")
                .to_string(),
            "fd00:88::a58:2/64"
        );
        assert_eq!(d.describe(), "eci0 10.88.0.1/16 fd00:88::1/64");
        assert_eq!(DevNet::host_end("0123456789abcdef"), "eci0123456789ab");
        assert_eq!(
            DevNet::mac_for(Ipv4Addr::new(10, 88, 1, 2)).to_string(),
            "02:ec:0a:58:01:02"
        );
    }
}
