//! What the guest's network card must carry, and its `eci.net=` kernel command line
//! form: the host shim reads it off the group's `eth0` before it hands that identity to
//! the guest ([`super::plug`]), and `eci-guest` parses it back to configure the card
//! ([`super::configure_guest`]).

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use super::VmNetError;
use crate::eni::MacAddress;

/// Most addresses (and, separately, gateways) one guest NIC carries: bounds what the
/// guest parses and what the command line holds.
pub const MAX_ADDRS: usize = 16;
/// Longest `eci.net=` value accepted (the whole kernel command line is 2 KiB on x86).
pub const MAX_CMDLINE: usize = 1024;

/// The identity and addressing the guest NIC takes over from the group's `eth0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    /// The ENI's MAC: QEMU gives it to the virtio NIC, the guest finds the NIC by it.
    pub mac: MacAddress,
    pub mtu: u32,
    /// Addresses with their prefixes (link-local IPv6 ones are left out: the kernel
    /// makes its own from the MAC).
    pub addrs: Vec<IpNet>,
    /// Default route gateways, at most one per family in practice.
    pub gateways: Vec<IpAddr>,
    /// The host-only address the agent's httpGet/tcpSocket probes and hooks come from
    /// (`br0`'s [`super::PROBE_SOURCE`] in the group netns): the guest routes it on-link
    /// through eth0, so its replies go back over the bridge instead of to the default
    /// gateway. `None` from an older host shim (or a group whose addresses hold it).
    /// (Contract change, vm-contract.md "Network": `eci.net` gains `;p=<IPv4>`.)
    pub probe_source: Option<std::net::Ipv4Addr>,
}

impl GuestNet {
    /// The `eci.net=` value: `mac=aa:..;mtu=1500;a=10.0.0.5/24;a=fd00::5/64;g=10.0.0.1;
    /// p=192.0.0.8` (no spaces, so it is one command-line word).
    pub fn to_cmdline(&self) -> String {
        let mut s = format!("mac={};mtu={}", self.mac, self.mtu);
        for a in &self.addrs {
            let _ = write!(s, ";a={a}");
        }
        for g in &self.gateways {
            let _ = write!(s, ";g={g}");
        }
        if let Some(p) = self.probe_source {
            let _ = write!(s, ";p={p}");
        }
        s
    }

    /// Parses an `eci.net=` value (without the `eci.net=` prefix) and checks it as
    /// [`GuestNet::validate`] does.
    pub fn from_cmdline(s: &str) -> Result<GuestNet, VmNetError> {
        let bad = |why: &'static str| VmNetError::BadCmdline {
            value: s.chars().take(64).collect(),
            why,
        };
        if s.len() > MAX_CMDLINE {
            return Err(bad("too long"));
        }
        let (mut mac, mut mtu) = (None, None);
        let (mut addrs, mut gateways) = (Vec::new(), Vec::new());
        let mut probe_source = None;
        for item in s.split(';').filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| bad("an item is not key=value"))?;
            match k {
                "mac" => mac = Some(v.parse::<MacAddress>().map_err(|_| bad("bad mac"))?),
                "mtu" => mtu = Some(v.parse::<u32>().map_err(|_| bad("bad mtu"))?),
                "a" => {
                    if addrs.len() >= MAX_ADDRS {
                        return Err(bad("too many addresses"));
                    }
                    addrs.push(v.parse::<IpNet>().map_err(|_| bad("bad address"))?);
                }
                "g" => {
                    if gateways.len() >= MAX_ADDRS {
                        return Err(bad("too many gateways"));
                    }
                    gateways.push(v.parse::<IpAddr>().map_err(|_| bad("bad gateway"))?);
                }
                "p" => {
                    if probe_source.is_some() {
                        return Err(bad("more than one probe source"));
                    }
                    probe_source = Some(
                        v.parse::<std::net::Ipv4Addr>()
                            .map_err(|_| bad("bad probe source"))?,
                    );
                }
                _ => return Err(bad("unknown key")),
            }
        }
        let net = GuestNet {
            mac: mac.ok_or_else(|| bad("no mac"))?,
            mtu: mtu.ok_or_else(|| bad("no mtu"))?,
            addrs,
            gateways,
            probe_source,
        };
        net.validate()?;
        Ok(net)
    }

    /// Refuses what the kernel would refuse with a bare EINVAL, naming the value.
    pub fn validate(&self) -> Result<(), VmNetError> {
        let invalid = |field: &'static str, value: String, limit: &'static str| {
            Err(VmNetError::Invalid {
                field,
                value,
                limit,
            })
        };
        let v6 = self.addrs.iter().any(|a| matches!(a, IpNet::V6(_)));
        let min = if v6 { 1280 } else { 68 };
        if self.mtu < min || self.mtu > 65535 {
            return invalid("mtu", self.mtu.to_string(), "68-65535 (1280 with IPv6)");
        }
        if self.mac.0[0] & 1 != 0 || self.mac.0 == [0; 6] {
            return invalid("mac", self.mac.to_string(), "a unicast MAC");
        }
        if self.addrs.len() > MAX_ADDRS || self.gateways.len() > MAX_ADDRS {
            return invalid(
                "addresses",
                self.addrs.len().to_string(),
                "at most 16 addresses and 16 gateways",
            );
        }
        for a in &self.addrs {
            if a.prefix_len() == 0 || a.addr().is_unspecified() || a.addr().is_multicast() {
                return invalid(
                    "address",
                    a.to_string(),
                    "a unicast address with a non-zero prefix",
                );
            }
        }
        for g in &self.gateways {
            if g.is_unspecified() || g.is_multicast() {
                return invalid("gateway", g.to_string(), "a unicast address");
            }
        }
        if let Some(p) = self.probe_source {
            let own = self.addrs.iter().any(|a| a.addr() == IpAddr::V4(p));
            if p.is_unspecified() || p.is_multicast() || p.is_broadcast() || own {
                return invalid(
                    "probe source",
                    p.to_string(),
                    "a unicast address that is not the guest's",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_round_trips() {
        let net = GuestNet {
            mac: MacAddress([0x02, 0, 0, 0, 0, 5]),
            mtu: 1500,
            addrs: vec![
                "10.0.0.5/24".parse().expect("v4"),
                "fd00::5/64".parse().expect("v6"),
            ],
            gateways: vec![
                "10.0.0.1".parse().expect("gw"),
                "fd00::1".parse().expect("gw6"),
            ],
            probe_source: Some(std::net::Ipv4Addr::new(192, 0, 0, 8)),
        };
        let s = net.to_cmdline();
        assert_eq!(
            s,
            "mac=02:00:00:00:00:05;mtu=1500;a=10.0.0.5/24;a=fd00::5/64;g=10.0.0.1;g=fd00::1;p=192.0.0.8"
        );
        assert_eq!(GuestNet::from_cmdline(&s).expect("parses"), net);
    }

    #[test]
    fn cmdline_refuses_garbage() {
        for bad in [
            "",
            "mtu=1500",
            "mac=02:00:00:00:00:05",
            "mac=02:00:00:00:00:05;mtu=1500;x=1",
            "mac=02:00:00:00:00:05;mtu=1500;a=10.0.0.5",
            "mac=02:00:00:00:00:05;mtu=20",
            "mac=01:00:00:00:00:05;mtu=1500",
            "mac=02:00:00:00:00:05;mtu=1000;a=fd00::5/64",
            "mac=02:00:00:00:00:05;mtu=1500;p=fd00::8",
            "mac=02:00:00:00:00:05;mtu=1500;p=192.0.0.8;p=192.0.0.8",
            "mac=02:00:00:00:00:05;mtu=1500;a=192.0.0.8/24;p=192.0.0.8",
        ] {
            assert!(GuestNet::from_cmdline(bad).is_err(), "{bad}");
        }
        let many = format!(
            "mac=02:00:00:00:00:05;mtu=1500{}",
            ";a=10.0.0.5/24".repeat(17)
        );
        assert!(GuestNet::from_cmdline(&many).is_err());
    }
}
