//! The peer: the Debian `containernetworking-plugins`, invoked exactly as a CNI runtime
//! invokes them (the plugin binary with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_PATH` in its environment and the network configuration on stdin),
//! plus the security-group table loaded into the namespace the way a CNI-based stack
//! would without a netlink library: `nft -f` run inside it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Where Debian installs the plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// One CNI network configuration.
#[derive(Debug, Clone)]
pub struct CniNet {
    /// The main plugin: `bridge` or `macvlan`.
    pub plugin: &'static str,
    pub config: Value,
}

/// `host-local` IPAM over IPv4 `10.<v4>.0.0/16` and IPv6 `fdeb:<v4>::/64`, with default
/// routes (the agent sets both defaults too), leases kept in `data_dir`.
fn ipam(v4: u32, data_dir: &Path) -> Value {
    json!({
        "type": "host-local",
        "ranges": [
            [{"subnet": format!("10.{v4}.0.0/16")}],
            [{"subnet": format!("fdeb:{v4:x}::/64")}]
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        "dataDir": data_dir,
    })
}

impl CniNet {
    /// `bridge` + `host-local`: a veth per group on bridge `bridge` (the plugin makes it),
    /// the bridge as gateway.
    pub fn bridge(name: &str, bridge: &str, v4: u32, data_dir: &Path) -> Self {
        CniNet {
            plugin: "bridge",
            config: json!({
                "cniVersion": "1.0.0",
                "name": name,
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": ipam(v4, data_dir),
            }),
        }
    }

    /// `macvlan` (bridge mode) on `master` + `host-local`.
    pub fn macvlan(name: &str, master: &str, v4: u32, data_dir: &Path) -> Self {
        CniNet {
            plugin: "macvlan",
            config: json!({
                "cniVersion": "1.0.0",
                "name": name,
                "type": "macvlan",
                "master": master,
                "mode": "bridge",
                "ipam": ipam(v4, data_dir),
            }),
        }
    }

    fn invoke(&self, command: &str, id: &str, netns: &Path) -> Result<Vec<u8>> {
        let plugin = PathBuf::from(CNI_PATH).join(self.plugin);
        let mut child = Command::new(&plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", plugin.display()))?;
        child
            .stdin
            .take()
            .context("plugin stdin")?
            .write_all(&serde_json::to_vec(&self.config)?)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{} {command} {id}: {}{}",
                self.plugin,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// `ADD`; checks the result names an IPv4 and an IPv6 address.
    pub fn add(&self, id: &str, netns: &Path) -> Result<()> {
        let out = self.invoke("ADD", id, netns)?;
        let v: Value = serde_json::from_slice(&out).context("ADD result")?;
        let ips = v["ips"].as_array().map(Vec::len).unwrap_or_default();
        if ips < 2 {
            bail!("{} ADD {id}: expected 2 addresses in {v}", self.plugin);
        }
        Ok(())
    }

    /// `DEL` (frees the lease, removes the link).
    pub fn del(&self, id: &str, netns: &Path) -> Result<()> {
        self.invoke("DEL", id, netns).map(|_| ())
    }
}

/// Loads `ruleset` (nft syntax) inside the namespace at `netns`: `nsenter --net` + `nft -f`.
pub fn load_nft(netns: &Path, ruleset: &str) -> Result<()> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nsenter nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(ruleset.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
