//! The guest's network: the net helper's `eci_netns::vm::plug` bridges the group
//! netns' eth0 with a tap and hands the guest eth0's MAC and addresses.

use std::path::Path;

use super::vmm::NetPlug;

/// Errors plugging the guest's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("plugging the guest network in {path}")]
    Plug {
        path: String,
        #[source]
        source: eci_netns::vm::VmNetError,
    },
}

/// Bridges eth0 of the netns at `netns` to a tap for the guest; None when the group
/// has no network (no eth0). Blocking.
pub fn plug(netns: &Path) -> Result<Option<NetPlug>, NetError> {
    let plugged = eci_netns::vm::plug(netns).map_err(|source| NetError::Plug {
        path: netns.display().to_string(),
        source,
    })?;
    Ok(plugged.map(|p| NetPlug {
        tap: p.tap,
        mac: p.guest.mac.to_string(),
        cmdline: p.guest.to_cmdline(),
    }))
}

/// Undoes [`plug`]; safe to run twice and after a crash. Blocking.
pub fn unplug(netns: &Path) {
    if let Err(e) = eci_netns::vm::unplug(netns) {
        tracing::warn!(netns = %netns.display(), error = %e, "unplugging the guest network");
    }
}
