//! The files every container of a group sees at /etc/hosts, /etc/hostname and
//! /etc/resolv.conf, written by the agent into the group's run directory.

use std::path::Path;

use eci_api::v1::GroupSpec;

/// Writes `hosts`, `hostname` and `resolv.conf` into `dir`, owned by `owner` (the host
/// id of root in the group's user namespace, when it has one), so container root may
/// edit its own `/etc/hosts`, as in Kubernetes.
pub fn write(dir: &Path, spec: &GroupSpec, owner: Option<u32>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let net = spec.network.clone().unwrap_or_default();
    let ip = net
        .ipv4_address
        .split('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("127.0.1.1")
        .to_string();
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{}\n",
        spec.name
    );
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
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    if let Some(id) = owner {
        for f in ["hosts", "hostname", "resolv.conf"] {
            std::os::unix::fs::lchown(dir.join(f), Some(id), Some(id))?;
        }
    }
    Ok(())
}
