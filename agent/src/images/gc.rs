//! Garbage collection by watermark (issue 7): when the filesystem holding the image store
//! is fuller than the high watermark, whole images nothing holds are removed, least
//! recently used first, each with the layers and blobs only it used, until the
//! filesystem is down to the low watermark or nothing more may go.
//!
//! "Used" is the last time a group started from the image (the store's `image_used`
//! table), or when it was imported or pulled if that is later. An image younger than
//! [`GcPolicy::min_age`] stays, so an image imported for a group that is about to be
//! created is not taken from under it. Whether something holds an image (an unfinished
//! group, a cache) is decided by the caller's `holder`, inside the transaction that
//! removes the record: a group stored before that transaction keeps its image, and one
//! stored after it finds the image gone and says so.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{ImageError, ImageRecord, ImageStore, io_err};
use crate::store::{StoreError, WriteTx};

/// When and how far garbage collection removes images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Collection starts when more than this percent of the filesystem is used.
    pub high_percent: u8,
    /// ... and stops once at most this percent is used.
    pub low_percent: u8,
    /// Images used, imported or pulled more recently than this are kept.
    pub min_age: Duration,
}

/// Percent of the filesystem holding `path` that is used, as `df` counts it: used over
/// used plus what an unprivileged writer may still use.
pub fn used_percent(path: &Path) -> Result<f64, ImageError> {
    let s = nix::sys::statvfs::statvfs(path)
        .map_err(|e| io_err(path)(std::io::Error::from_raw_os_error(e as i32)))?;
    let used = s.blocks().saturating_sub(s.blocks_free()) as f64;
    let avail = s.blocks_available() as f64;
    if used + avail <= 0.0 {
        return Ok(0.0);
    }
    Ok(used * 100.0 / (used + avail))
}

/// Unix seconds of an RFC 3339 time; 0 when it does not parse.
fn unix_seconds(t: &str) -> u64 {
    crate::clock::parse(t)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

impl ImageStore {
    /// Percent of the image store's filesystem in use.
    pub fn used_percent(&self) -> Result<f64, ImageError> {
        used_percent(&self.layers)
    }

    /// Removes unheld images, least recently used first, while the filesystem is above
    /// the policy's watermarks (see the module doc). Returns the images removed.
    pub fn collect_to_watermark(
        &self,
        policy: &GcPolicy,
        holder: impl Fn(&WriteTx<'_>, &ImageRecord) -> Result<Option<String>, StoreError>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        if self.used_percent()? <= f64::from(policy.high_percent) {
            return Ok(Vec::new());
        }
        let used = self.store.image_use()?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut candidates: Vec<(u64, ImageRecord)> = self
            .list()?
            .into_iter()
            .map(|i| {
                let last = used
                    .get(i.digest.as_str())
                    .copied()
                    .unwrap_or(0)
                    .max(unix_seconds(&i.imported_at));
                (last, i)
            })
            .filter(|(last, _)| now.saturating_sub(*last) >= policy.min_age.as_secs())
            .collect();
        candidates.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.digest.cmp(&b.1.digest)));
        let mut removed = Vec::new();
        for (_, image) in candidates {
            if self.used_percent()? <= f64::from(policy.low_percent) {
                break;
            }
            let gone = self.store.write(|tx| {
                let Some(current) = tx.get_image(&image.digest)? else {
                    return Ok::<_, StoreError>(false);
                };
                if holder(tx, &current)?.is_some() {
                    return Ok(false);
                }
                tx.delete_image(&image.digest)?;
                Ok(true)
            })?;
            if gone {
                self.collect_garbage()?;
                tracing::info!(image = %image.digest, references = ?image.references, "image garbage-collected");
                removed.push(image);
            }
        }
        Ok(removed)
    }
}
