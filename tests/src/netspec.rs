//! Group specs for the network tests (issue 8): the `network:` block (ENI, addresses,
//! gateways, security-group rules) as YAML for [`crate::scenario::group`]'s `extra`, and
//! container scripts that serve or reach TCP ports with the image's busybox `nc`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::vpc::Eni;
use crate::{Agent, wait_for};

/// One security-group rule as the spec writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgRule {
    /// `ingress` or `egress`.
    pub direction: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or `all`.
    pub protocol: String,
    /// `80/80`, `1000/2000`, `-1/-1`; empty for protocols without ports.
    pub port_range: String,
    pub cidr: String,
    /// `accept` or `drop`.
    pub policy: String,
    pub priority: u32,
}

impl SgRule {
    /// Ingress TCP to `port` from `cidr`, accepted, priority 1.
    pub fn allow_tcp_in(port: u16, cidr: &str) -> Self {
        SgRule {
            direction: "ingress".into(),
            protocol: "tcp".into(),
            port_range: format!("{port}/{port}"),
            cidr: cidr.into(),
            policy: "accept".into(),
            priority: 1,
        }
    }

    /// Ingress of `protocol` (`icmp`, `icmpv6`, `all`…) from `cidr`, accepted.
    pub fn allow_in(protocol: &str, cidr: &str) -> Self {
        SgRule {
            direction: "ingress".into(),
            protocol: protocol.into(),
            port_range: String::new(),
            cidr: cidr.into(),
            policy: "accept".into(),
            priority: 1,
        }
    }

    fn json(&self) -> Value {
        let mut v = json!({
            "direction": self.direction,
            "protocol": self.protocol,
            "cidr": self.cidr,
            "policy": self.policy,
            "priority": self.priority,
        });
        if !self.port_range.is_empty() {
            v["portRange"] = json!(self.port_range);
        }
        v
    }
}

/// A group's `network` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Net {
    pub mac_address: String,
    pub link_name: String,
    pub ipv4_address: String,
    pub ipv4_gateway: String,
    pub ipv6_address: String,
    pub ipv6_gateway: String,
    pub mtu: u32,
    pub rules: Vec<SgRule>,
}

impl Net {
    /// The ENI by MAC with its IPv4 and IPv6 addresses and gateways.
    pub fn eni(eni: &Eni) -> Self {
        Net {
            mac_address: eni.mac.clone(),
            ipv4_address: eni.ipv4.clone(),
            ipv4_gateway: eni.gateway_v4.clone(),
            ipv6_address: eni.ipv6.clone(),
            ipv6_gateway: eni.gateway_v6.clone(),
            ..Default::default()
        }
    }

    /// Adds security-group rules.
    pub fn rules(mut self, rules: &[SgRule]) -> Self {
        self.rules.extend_from_slice(rules);
        self
    }

    /// The block as one YAML line (`network: {…}` in JSON flow style) plus a newline.
    pub fn yaml(&self) -> String {
        let mut v = json!({});
        if !self.mac_address.is_empty() || !self.link_name.is_empty() {
            let mut eni = json!({});
            if !self.mac_address.is_empty() {
                eni["macAddress"] = json!(self.mac_address);
            }
            if !self.link_name.is_empty() {
                eni["linkName"] = json!(self.link_name);
            }
            v["eni"] = eni;
        }
        for (k, val) in [
            ("ipv4Address", &self.ipv4_address),
            ("ipv4Gateway", &self.ipv4_gateway),
            ("ipv6Address", &self.ipv6_address),
            ("ipv6Gateway", &self.ipv6_gateway),
        ] {
            if !val.is_empty() {
                v[k] = json!(val);
            }
        }
        if self.mtu != 0 {
            v["mtu"] = json!(self.mtu);
        }
        if !self.rules.is_empty() {
            v["securityGroupRules"] = Value::Array(self.rules.iter().map(SgRule::json).collect());
        }
        format!("network: {v}\n")
    }
}

/// A container script serving `(port, banner)` pairs for ever: each connection gets the
/// banner line (busybox `nc -ll -e`, which forks per client), then the shell waits.
pub fn serve_script(ports: &[(u16, &str)]) -> String {
    let mut s = String::new();
    for (port, banner) in ports {
        s.push_str(&format!("nc -ll -p {port} -e echo {banner} & "));
    }
    s.push_str("echo serving; wait");
    s
}

/// A script fragment that polls `addr:port` with busybox `nc` until it answers with
/// `banner`, then prints `reached <banner>` (to wait for in the container's log).
pub fn reach_script(addr: &str, port: u16, banner: &str) -> String {
    format!(
        "until nc -w 2 {addr} {port} </dev/null | grep -q {banner}; do sleep 0.2; done; echo reached {banner}"
    )
}

/// The group's `status.ipAddresses`, each without a prefix length.
pub fn ip_addresses(agent: &Agent, name: &str) -> Vec<String> {
    agent
        .get_json(name)
        .ok()
        .and_then(|g| g["status"]["ipAddresses"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.as_str())
        .map(|a| a.split('/').next().unwrap_or_default().to_string())
        .collect()
}

/// Waits up to 20 s for the group to report addresses; returns them (maybe empty).
pub fn wait_ip_addresses(agent: &Agent, name: &str) -> Vec<String> {
    wait_for(Duration::from_secs(20), || {
        let a = ip_addresses(agent, name);
        (!a.is_empty()).then_some(a)
    })
    .unwrap_or_default()
}

/// The group's network namespace as the agent pins it: `<root>/run/eci/groups/<id>/ns/net`.
pub fn group_netns(agent: &Agent, group_id: &str) -> std::path::PathBuf {
    agent
        .root()
        .join("run/eci/groups")
        .join(group_id)
        .join("ns/net")
}
