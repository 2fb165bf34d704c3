//! The files every container of a group sees at /etc/hosts, /etc/hostname and
//! /etc/resolv.conf, written by the agent into the group's run directory.

use std::path::Path;

use eci_api::v1::GroupSpec;

/// Writes `hosts`, `hostname` and `resolv.conf` into `dir`, owned by `owner` (the host
/// id of root in the group's user namespace, when it has one), so container root may
/// edit its own `/etc/hosts`, as in Kubernetes. `ips` are the group's addresses (its
/// ENI's, or its dev-bridge ones), each listed with the group's name.
pub fn write(
    dir: &Path,
    spec: &GroupSpec,
    owner: Option<u32>,
    ips: &[std::net::IpAddr],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let net = spec.network.clone().unwrap_or_default();
    let mut hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string();
    if ips.is_empty() {
        hosts.push_str(&format!("127.0.1.1\t{}\n", spec.name));
    }
    for ip in ips {
        hosts.push_str(&format!("{ip}\t{}\n", spec.name));
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    std::fs::write(dir.join("hostname"), format!("{}\n", spec.name))?;
    let resolv = match net.dns.filter(|d| !d.nameservers.is_empty()) {
        Some(d) => {
            let mut s: String = d
                .nameservers
                .iter()
                .map(|n| format!("nameserver {n}\n"))
                .collect();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        // Without DNS in the spec, the host's resolver configuration (Kubernetes "Default").
        None => host_resolv_conf(),
    };
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    if let Some(id) = owner {
        for f in ["hosts", "hostname", "resolv.conf"] {
            std::os::unix::fs::lchown(dir.join(f), Some(id), Some(id))?;
        }
    }
    Ok(())
}

/// The host's resolver configuration as a group can use it: a loopback stub resolver
/// (systemd-resolved's 127.0.0.53) is unreachable from the group's netns, so then the
/// upstream servers systemd-resolved lists are used instead.
fn host_resolv_conf() -> String {
    let main = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let loopback_only = main
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(str::trim)
        .all(|n| n.starts_with("127.") || n == "::1");
    if loopback_only
        && let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf")
    {
        return upstream;
    }
    main
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lists_every_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = GroupSpec {
            name: "web".into(),
            ..Default::default()
        };
        let ips = [
            "10.0.3.17".parse().expect("ip"),
            "fd00::5".parse().expect("ip"),
        ];
        write(dir.path(), &spec, None, &ips).expect("write");
        let hosts = std::fs::read_to_string(dir.path().join("hosts")).expect("read");
        assert!(hosts.contains("10.0.3.17\tweb\n"), "{hosts}");
        assert!(hosts.contains("fd00::5\tweb\n"), "{hosts}");
        assert!(!hosts.contains("127.0.1.1"), "{hosts}");
    }
}
