//! Admission of `disk` volumes: each names a host block device that one unfinished
//! group at a time may hold (table in `store/disks.rs`). The device is resolved and
//! checked on the host before the store transaction; the holder check and the hold
//! happen inside it, so two Creates naming one device never both succeed.

use eci_api::phase;
use eci_api::v1::GroupSpec;

use crate::error::{Error, Result};
use crate::sandbox::disk::{self, DiskPolicy};
use crate::store::WriteTx;

/// A disk volume's field path and its resolved device.
pub type Wanted = Vec<(String, String)>;

/// Resolves and checks the device of every disk volume of `spec` (not in use on the
/// host, allowed, a block device); refuses a device named twice.
pub fn resolve(spec: &GroupSpec, policy: &DiskPolicy) -> Result<Wanted> {
    let mut out: Wanted = Vec::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let Some(d) = &v.disk else { continue };
        let field = format!("volumes[{i}].disk.device");
        let dev = disk::resolve(&d.device, policy)
            .map_err(|e| {
                Error::FailedPrecondition(format!("{field}: {}", crate::error::chain(&e)))
            })?
            .display()
            .to_string();
        if let Some((other, _)) = out.iter().find(|(_, o)| *o == dev) {
            return Err(Error::InvalidField {
                message: format!("{dev} is also named by {other}"),
                field,
            });
        }
        out.push((field, dev));
    }
    Ok(out)
}

/// Refuses when another group that is not finished holds one of `wanted`.
pub fn check_free(tx: &WriteTx<'_>, wanted: &Wanted, group: &str) -> Result<()> {
    for (field, dev) in wanted {
        let Some(holder) = tx.disk_holder(dev)? else {
            continue;
        };
        if holder == group {
            continue;
        }
        let busy = tx
            .get_group(&holder)?
            .is_some_and(|g| g.status.as_ref().is_none_or(|s| !phase::is_final(&s.phase)));
        if busy {
            return Err(Error::FailedPrecondition(format!(
                "{field}: {dev} is held by group {holder:?}, which is not finished"
            )));
        }
    }
    Ok(())
}

/// Records `group` as the holder of every device in `wanted`.
pub fn hold(tx: &mut WriteTx<'_>, wanted: &Wanted, group: &str) -> Result<()> {
    for (_, dev) in wanted {
        tx.hold_disk(dev, group)?;
    }
    Ok(())
}
