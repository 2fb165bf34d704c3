//! Named network namespaces made in-process the way `ip netns add` makes them (a thread
//! unshares its network namespace and the namespace is bind-mounted onto
//! `/run/netns/<name>`), with `lo` brought up as the agent's runtime and the CNI
//! `loopback` plugin do. Both sides of the benchmark use this, so namespace creation
//! costs the same for both.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Where named namespaces live.
pub const RUN_NETNS: &str = "/run/netns";

/// Creates `/run/netns/<name>` holding a new network namespace with `lo` up. Unless
/// `dad`, IPv6 duplicate address detection is off for links that later enter it (the
/// agent adds its addresses without DAD; the CNI plugins otherwise wait for it to
/// settle, ~1.7 s for `macvlan` here).
pub fn create(name: &str, dad: bool) -> Result<PathBuf> {
    std::fs::create_dir_all(RUN_NETNS).context(RUN_NETNS)?;
    let path = Path::new(RUN_NETNS).join(name);
    std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
    let target = path.clone();
    let made = std::thread::spawn(move || -> Result<()> {
        // This thread ends right after, so its namespace change affects nothing else.
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        eci_netns::loopback::up().context("lo up")?;
        if !dad {
            // /proc/sys/net is the opening thread's namespace: this one's.
            std::fs::write("/proc/sys/net/ipv6/conf/default/accept_dad", "0")
                .context("net.ipv6.conf.default.accept_dad")?;
        }
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting onto {}", target.display()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Unmounts and removes `/run/netns/<name>`; a missing one is fine.
pub fn delete(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", path.display())),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
