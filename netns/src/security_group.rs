//! Security-group rules as the spec states them, parsed into typed values.

use ipnet::IpNet;

/// Errors from parsing one rule; the agent prefixes the field path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("direction: {0:?} is not one of ingress, egress")]
    Direction(String),
    #[error("protocol: {0:?} is not one of tcp, udp, icmp, icmpv6, all")]
    Protocol(String),
    #[error("protocol: {protocol} matches {family} only, but cidr {cidr} is not {family}")]
    ProtocolFamily {
        protocol: &'static str,
        family: &'static str,
        cidr: String,
    },
    #[error("portRange: {0:?} is not FROM/TO with 1 <= FROM <= TO <= 65535, or -1/-1")]
    PortRange(String),
    #[error("portRange: required for tcp and udp rules")]
    PortRangeRequired,
    #[error("portRange: {0:?} is for tcp and udp rules only; use -1/-1 or leave it empty")]
    PortRangeNotApplicable(String),
    #[error("cidr: {0:?} is not an IPv4 or IPv6 network such as 10.0.0.0/8")]
    Cidr(String),
    #[error("policy: {0:?} is not one of accept, drop")]
    Policy(String),
    #[error("priority: {0} is outside 1-100")]
    Priority(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP for IPv4 (the rule's cidr must be IPv4).
    Icmp,
    /// ICMPv6 (the rule's cidr must be IPv6).
    Icmpv6,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

/// An inclusive port range; `None` in a rule means every port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

/// One checked security-group rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub direction: Direction,
    pub protocol: Protocol,
    pub ports: Option<PortRange>,
    pub cidr: IpNet,
    pub policy: Policy,
    /// 1 is evaluated first.
    pub priority: u32,
}

impl Rule {
    /// Parses the string fields of a spec rule. Empty `policy` means accept and a zero
    /// `priority` means 1, as in the modelled products' consoles.
    pub fn parse(
        direction: &str,
        protocol: &str,
        port_range: &str,
        cidr: &str,
        policy: &str,
        priority: u32,
    ) -> Result<Self, RuleError> {
        let direction = match direction.to_ascii_lowercase().as_str() {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return Err(RuleError::Direction(direction.into())),
        };
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            "icmpv6" => Protocol::Icmpv6,
            "all" => Protocol::All,
            _ => return Err(RuleError::Protocol(protocol.into())),
        };
        let ports = parse_port_range(port_range)?;
        if ports.is_none()
            && matches!(protocol, Protocol::Tcp | Protocol::Udp)
            && port_range.is_empty()
        {
            return Err(RuleError::PortRangeRequired);
        }
        if ports.is_some() && !matches!(protocol, Protocol::Tcp | Protocol::Udp) {
            return Err(RuleError::PortRangeNotApplicable(port_range.into()));
        }
        let cidr = cidr
            .parse::<IpNet>()
            .map_err(|_| RuleError::Cidr(cidr.into()))?;
        match (protocol, cidr) {
            (Protocol::Icmp, IpNet::V6(_)) => {
                return Err(RuleError::ProtocolFamily {
                    protocol: "icmp",
                    family: "IPv4",
                    cidr: cidr.to_string(),
                });
            }
            (Protocol::Icmpv6, IpNet::V4(_)) => {
                return Err(RuleError::ProtocolFamily {
                    protocol: "icmpv6",
                    family: "IPv6",
                    cidr: cidr.to_string(),
                });
            }
            _ => {}
        }
        let policy = match policy.to_ascii_lowercase().as_str() {
            "" | "accept" => Policy::Accept,
            "drop" => Policy::Drop,
            _ => return Err(RuleError::Policy(policy.into())),
        };
        let priority = match priority {
            0 => 1,
            1..=100 => priority,
            _ => return Err(RuleError::Priority(priority)),
        };
        Ok(Rule {
            direction,
            protocol,
            ports,
            cidr,
            policy,
            priority,
        })
    }
}

/// "80/80", "1000/2000"; "-1/-1" and "" mean all ports.
fn parse_port_range(s: &str) -> Result<Option<PortRange>, RuleError> {
    if s.is_empty() || s == "-1/-1" {
        return Ok(None);
    }
    let bad = || RuleError::PortRange(s.into());
    let (from, to) = s.split_once('/').ok_or_else(bad)?;
    let from: u16 = from.parse().map_err(|_| bad())?;
    let to: u16 = to.parse().map_err(|_| bad())?;
    if from == 0 || from > to {
        return Err(bad());
    }
    Ok(Some(PortRange { from, to }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        let r = Rule::parse("ingress", "tcp", "80/443", "10.0.0.0/8", "", 0).expect("valid");
        assert_eq!(r.ports, Some(PortRange { from: 80, to: 443 }));
        assert_eq!(r.priority, 1);
        assert_eq!(r.policy, Policy::Accept);
        assert!(Rule::parse("egress", "all", "-1/-1", "::/0", "drop", 100).is_ok());
        assert_eq!(
            Rule::parse("ingress", "tcp", "", "0.0.0.0/0", "", 1),
            Err(RuleError::PortRangeRequired)
        );
        assert!(Rule::parse("ingress", "tcp", "443/80", "0.0.0.0/0", "", 1).is_err());
        assert!(Rule::parse("sideways", "tcp", "1/2", "0.0.0.0/0", "", 1).is_err());
        assert!(Rule::parse("ingress", "tcp", "1/2", "10.0.0.300/8", "", 1).is_err());
        let r = Rule::parse("ingress", "ICMPv6", "-1/-1", "fd00::/8", "", 5).expect("icmpv6");
        assert_eq!(r.protocol, Protocol::Icmpv6);
        assert!(matches!(
            Rule::parse("ingress", "icmpv6", "", "10.0.0.0/8", "", 1),
            Err(RuleError::ProtocolFamily { .. })
        ));
        assert!(matches!(
            Rule::parse("ingress", "icmp", "", "::/0", "", 1),
            Err(RuleError::ProtocolFamily { .. })
        ));
        assert_eq!(
            Rule::parse("ingress", "all", "80/80", "0.0.0.0/0", "", 1),
            Err(RuleError::PortRangeNotApplicable("80/80".into()))
        );
        assert_eq!(
            Rule::parse("ingress", "udp", "1/2", "0.0.0.0/0", "", 101),
            Err(RuleError::Priority(101))
        );
    }
}
