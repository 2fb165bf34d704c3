//! Network rules: ENI selector, addresses, MTU, DNS, security-group rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use eci_api::v1::NetworkSpec;
use eci_netns::EniSelector;
use ipnet::{Ipv4Net, Ipv6Net};

use super::Errors;
use super::limits::*;
use super::quote::quote;

/// Any string of a selector or a rule: longer is never a valid MAC, link name, address,
/// port range or word, and keeps the parsers' messages short.
const MAX_WORD: usize = 64;

pub(super) fn check(net: &NetworkSpec, errs: &mut Errors) {
    if let Some(eni) = &net.eni {
        if eni.mac_address.len() > MAX_WORD || eni.link_name.len() > MAX_WORD {
            errs.add(
                "network.eni",
                format!("macAddress and linkName are at most {MAX_WORD} bytes"),
            );
        } else if let Err(e) = EniSelector::parse(&eni.mac_address, &eni.link_name) {
            errs.add("network.eni", e.to_string());
        }
    }
    let v4 = (!net.ipv4_address.is_empty()).then(|| net.ipv4_address.parse::<Ipv4Net>());
    match &v4 {
        Some(Err(_)) => errs.add(
            "network.ipv4Address",
            format!(
                "{} is not an IPv4 address with prefix such as 10.0.3.17/24",
                quote(&net.ipv4_address)
            ),
        ),
        None if net.eni.is_some() => {
            errs.add("network.ipv4Address", "is required when an ENI is given")
        }
        _ => {}
    }
    if !net.ipv4_gateway.is_empty() {
        match net.ipv4_gateway.parse::<Ipv4Addr>() {
            Err(_) => errs.add(
                "network.ipv4Gateway",
                format!("{} is not an IPv4 address", quote(&net.ipv4_gateway)),
            ),
            Ok(gw) => {
                if let Some(Ok(addr)) = &v4
                    && !addr.contains(&gw)
                {
                    errs.add(
                        "network.ipv4Gateway",
                        format!("{gw} is not inside the group's subnet {}", addr.trunc()),
                    );
                }
            }
        }
    }
    if !net.ipv6_address.is_empty() && net.ipv6_address.parse::<Ipv6Net>().is_err() {
        errs.add(
            "network.ipv6Address",
            format!(
                "{} is not an IPv6 address with prefix such as fd00::5/64",
                quote(&net.ipv6_address)
            ),
        );
    }
    if !net.ipv6_gateway.is_empty() && net.ipv6_gateway.parse::<Ipv6Addr>().is_err() {
        errs.add(
            "network.ipv6Gateway",
            format!("{} is not an IPv6 address", quote(&net.ipv6_gateway)),
        );
    }
    if net.mtu != 0 && !(68..=9216).contains(&net.mtu) {
        errs.add("network.mtu", format!("{} is outside 68-9216", net.mtu));
    }
    // Addresses belong to an ENI; without one, the agent assigns a dev-bridge address
    // (or, on a fleet host, the group has only loopback).
    if net.eni.is_none() {
        for (set, field) in [
            (!net.ipv4_address.is_empty(), "network.ipv4Address"),
            (!net.ipv4_gateway.is_empty(), "network.ipv4Gateway"),
            (!net.ipv6_address.is_empty(), "network.ipv6Address"),
            (!net.ipv6_gateway.is_empty(), "network.ipv6Gateway"),
            (net.mtu != 0, "network.mtu"),
        ] {
            if set {
                errs.add(
                    field,
                    "is set only with network.eni: without an ENI the agent assigns the group a dev-bridge address",
                );
            }
        }
    }
    if !net.ipv6_gateway.is_empty() && net.ipv6_address.is_empty() {
        errs.add("network.ipv6Gateway", "needs network.ipv6Address");
    }
    if let Some(dns) = &net.dns {
        if dns.nameservers.len() > MAX_NAMESERVERS {
            errs.add(
                "network.dns.nameservers",
                format!(
                    "{} nameservers is over the limit of {MAX_NAMESERVERS}",
                    dns.nameservers.len()
                ),
            );
        }
        for (i, ns) in dns.nameservers.iter().enumerate() {
            if ns.parse::<IpAddr>().is_err() {
                errs.add(
                    format!("network.dns.nameservers[{i}]"),
                    format!("{} is not an IP address", quote(ns)),
                );
            }
        }
        if dns.searches.len() > MAX_SEARCHES {
            errs.add(
                "network.dns.searches",
                format!(
                    "{} search domains is over the limit of {MAX_SEARCHES}",
                    dns.searches.len()
                ),
            );
        }
        if dns.options.len() > MAX_DNS_OPTIONS {
            errs.add(
                "network.dns.options",
                format!(
                    "{} options is over the limit of {MAX_DNS_OPTIONS}",
                    dns.options.len()
                ),
            );
        }
        for (list, items, max) in [
            ("searches", &dns.searches, MAX_SEARCH),
            ("options", &dns.options, MAX_DNS_OPTION),
        ] {
            for (i, s) in items.iter().enumerate() {
                if s.is_empty()
                    || s.len() > max
                    || s.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    errs.add(
                        format!("network.dns.{list}[{i}]"),
                        format!("{} must be one word of at most {max} bytes", quote(s)),
                    );
                }
            }
        }
    }
    if net.security_group_rules.len() > MAX_SG_RULES {
        errs.add(
            "network.securityGroupRules",
            format!(
                "{} rules is over the limit of {MAX_SG_RULES}",
                net.security_group_rules.len()
            ),
        );
    }
    for (i, r) in net.security_group_rules.iter().enumerate() {
        let long = [&r.direction, &r.protocol, &r.port_range, &r.cidr, &r.policy]
            .iter()
            .any(|f| f.len() > MAX_WORD);
        if long {
            errs.add(
                format!("network.securityGroupRules[{i}]"),
                format!("each field is at most {MAX_WORD} bytes"),
            );
        } else if let Err(e) = crate::network::setup::parse_rule(r) {
            // The rule error starts with the sub-field name ("portRange: ...").
            let msg = e.to_string();
            let (sub, rest) = msg.split_once(": ").unwrap_or(("", &msg));
            errs.add(
                format!("network.securityGroupRules[{i}].{sub}"),
                rest.to_string(),
            );
        }
    }
}
