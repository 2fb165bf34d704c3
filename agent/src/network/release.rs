//! Giving back what a group held of the host's network, before its netns is released.

use std::path::Path;

use super::setup::record_of;
use super::{DevNet, NetworkError};
use crate::store::{HeldEni, Store};

/// What a release gave back.
#[derive(Debug, Default)]
pub struct Released {
    /// The ENI returned to the host, and whether it was found (false: it was nowhere,
    /// which only a netns destroyed behind the agent's back can cause).
    pub eni: Option<(HeldEni, bool)>,
}

/// Returns group `id`'s ENI to the host under its original name (down, no addresses)
/// and removes its dev veth, then that veth's port guard. Blocking; idempotent. The ENI record is removed only once
/// the ENI is back, so a failure here is retried by the next cleanup.
pub fn release(store: &Store, id: &str, netns: &Path) -> Result<Released, NetworkError> {
    let mut out = Released::default();
    let port = DevNet::host_end(id);
    eci_netns::bridge::detach_veth(&port)
        .map_err(|e| NetworkError::Veth(crate::error::chain(&e)))?;
    // Only once the port is gone: it never exists without its guard.
    eci_netns::nft::remove_port_guard(&port)
        .map_err(|e| NetworkError::Veth(format!("port guard: {}", crate::error::chain(&e))))?;
    let held = store
        .held_eni(id)
        .map_err(|e| NetworkError::Store(crate::error::chain(&e)))?;
    if let Some(h) = held {
        let ns = netns.exists().then_some(netns);
        let found =
            eci_netns::eni::detach(&record_of(&h)?, ns).map_err(|e| NetworkError::Attach {
                link: h.original_name.clone(),
                mac: h.mac.clone(),
                message: format!("giving it back: {}", crate::error::chain(&e)),
            })?;
        crate::failpoint::hit("eni-detached");
        store
            .write(|tx| tx.release_eni(id))
            .map_err(|e| NetworkError::Store(crate::error::chain(&e)))?;
        out.eni = Some((h, found));
    }
    Ok(out)
}
