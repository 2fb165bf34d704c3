//! The benchmark's security group: a typical small rule set, as the agent's typed rules
//! (for our side) and as the equivalent nftables text (for the CNI side, loaded with
//! `nft -f`): one `inet` table, ingress denied by default except established/related,
//! loopback, ICMP errors and neighbour discovery, egress allowed; rules in priority order
//! with a counter each.

use eci_netns::security_group::{Direction, Policy, Rule};

/// Ingress TCP 8080 from the VPC, ICMP from anywhere, SSH dropped, egress to the VPC.
pub fn rules() -> Vec<Rule> {
    [
        ("ingress", "tcp", "8080/8080", "10.0.0.0/8", "accept", 1),
        ("ingress", "icmp", "", "0.0.0.0/0", "accept", 2),
        ("ingress", "tcp", "22/22", "0.0.0.0/0", "drop", 3),
        ("ingress", "tcp", "9000/9100", "fd00::/8", "accept", 4),
        ("egress", "all", "", "10.0.0.0/8", "accept", 1),
    ]
    .into_iter()
    .map(|(d, p, ports, cidr, policy, prio)| {
        // The literals above are valid rules; a failure is a bug in this table.
        Rule::parse(d, p, ports, cidr, policy, prio).expect("benchmark rule")
    })
    .collect()
}

fn rule_line(r: &Rule) -> String {
    let mut s = String::new();
    let peer = match r.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    let family = if r.cidr.addr().is_ipv4() { "ip" } else { "ip6" };
    s.push_str(&format!("{family} {peer} {} ", r.cidr));
    // By the variant's name (the spec's word), so a protocol added to the enum (icmpv6)
    // needs no change here.
    let proto = format!("{:?}", r.protocol).to_ascii_lowercase();
    match proto.as_str() {
        "tcp" | "udp" => {
            s.push_str(&format!("meta l4proto {proto} "));
            if let Some(pr) = r.ports {
                s.push_str(&format!("th dport {}-{} ", pr.from, pr.to));
            }
        }
        "icmp" => s.push_str("meta l4proto icmp "),
        "icmpv6" => s.push_str("meta l4proto ipv6-icmp "),
        _ => {}
    }
    s.push_str("counter ");
    s.push_str(match r.policy {
        Policy::Accept => "accept",
        Policy::Drop => "drop",
    });
    s
}

/// The nftables text of `rules` (see the module comment).
pub fn nft_text(rules: &[Rule]) -> String {
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by_key(|r| r.priority);
    let lines = |d: Direction| -> String {
        sorted
            .iter()
            .filter(|r| r.direction == d)
            .map(|r| format!("    {}\n", rule_line(r)))
            .collect()
    };
    format!(
        "table inet eci_sg {{\n  chain ingress {{\n    type filter hook input priority 0; policy drop;\n    \
         ct state established,related accept\n    iif \"lo\" accept\n    \
         icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} accept\n    \
         icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem, \
         nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert }} accept\n{}  }}\n  \
         chain egress {{\n    type filter hook output priority 0; policy accept;\n{}  }}\n}}\n",
        lines(Direction::Ingress),
        lines(Direction::Egress)
    )
}
