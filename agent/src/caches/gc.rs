//! What holds an image (unfinished groups, caches), and garbage collection by watermark
//! on top of [`ImageStore::collect_to_watermark`](crate::images::ImageStore).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use eci_api::phase;
use eci_api::v1::ContainerGroup;

use super::{ImageCaches, blocking};
use crate::error::Result;
use crate::groups::{NORMAL, event};
use crate::images::gc::GcPolicy;
use crate::images::{ImageRecord, Reference};
use crate::quantity::human_memory;
use crate::store::{StoreError, WriteTx};

/// The `[images]` settings, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagesPolicy {
    pub gc: GcPolicy,
    /// How often caches are checked for expiry and the watermark for collection.
    pub interval: Duration,
    /// The length of one retention day (24 h; tests shorten it).
    pub retention_day: Duration,
}

/// Whether `group` (unfinished) names `image` in any container, by a reference the
/// image has or by its digest, or runs it (`imageId`, set when the group starts: the
/// image stays even when its reference has moved to another image since).
fn group_uses(group: &ContainerGroup, image: &ImageRecord) -> bool {
    let phase = group.status.as_ref().map_or("", |s| s.phase.as_str());
    if phase::is_final(phase) {
        return false;
    }
    let runs = group
        .status
        .iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .chain(&s.container_statuses)
        })
        .any(|s| s.image_id == image.digest.as_str());
    runs || group
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().chain(&s.init_containers))
        .any(|c| match Reference::parse(&c.image) {
            Ok(r) => {
                r.digest.as_ref() == Some(&image.digest)
                    || image.references.contains(&r.to_string())
            }
            Err(_) => false,
        })
}

/// What holds `image` so that it may not be removed, in words for an error message
/// (`pinned by image cache "warm-1"`, `used by group "web"`); None when nothing does.
/// Caches pin by digest (whatever their state); unfinished groups use images by
/// reference or digest.
pub fn holder(tx: &WriteTx<'_>, image: &ImageRecord) -> Result<Option<String>, StoreError> {
    if let Some(c) = tx
        .list_caches()?
        .into_iter()
        .find(|c| c.pins(&image.digest))
    {
        return Ok(Some(format!("pinned by image cache {:?}", c.name)));
    }
    Ok(tx
        .list_groups()?
        .iter()
        .find(|g| group_uses(g, image))
        .map(|g| {
            let name = g.spec.as_ref().map_or("", |s| s.name.as_str());
            format!("used by group {name:?}")
        }))
}

impl ImageCaches {
    /// Removes unheld images down to the low watermark when the store is above the
    /// high one, with an event per image. Returns the images removed.
    pub async fn collect_images(&self) -> Result<Vec<ImageRecord>> {
        if self.collecting.swap(true, Ordering::AcqRel) {
            return Ok(Vec::new());
        }
        let groups = self.groups.clone();
        let policy = self.policy.gc;
        let out = blocking(move || {
            let removed = groups.images().collect_to_watermark(&policy, holder)?;
            if !removed.is_empty() {
                let now = groups.images().used_percent().unwrap_or(0.0);
                groups.store().write_lazy(|tx| {
                    for i in &removed {
                        let name = i
                            .references
                            .first()
                            .cloned()
                            .unwrap_or_else(|| i.digest.to_string());
                        tx.event(event(
                            "",
                            NORMAL,
                            "ImageGarbageCollected",
                            format!(
                                "removed unused image {name} ({}, {}): the image filesystem was above {}% used (now {now:.1}%)",
                                i.digest,
                                human_memory(i.size()),
                                policy.high_percent
                            ),
                        ))?;
                    }
                    Ok::<_, StoreError>(())
                })?;
            }
            Ok(removed)
        })
        .await;
        self.collecting.store(false, Ordering::Release);
        out
    }

    /// The periodic task: expires caches, then collects images, every
    /// [`ImagesPolicy::interval`] (the first round at once); and collects images as soon
    /// as one was added (`ImageStore::image_added`: imports, pulls).
    pub fn spawn_maintenance(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.policy.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let periodic = tokio::select! {
                    _ = tick.tick() => true,
                    () = me.groups.images().added().notified() => false,
                };
                if periodic && let Err(e) = me.expire().await {
                    tracing::warn!(error = %crate::error::chain(&e), "expiring image caches");
                }
                if let Err(e) = me.collect_images().await {
                    tracing::warn!(error = %crate::error::chain(&e), "image garbage collection");
                }
            }
        });
    }
}
