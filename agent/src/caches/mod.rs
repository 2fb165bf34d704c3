//! Image caches (issue 7): named sets of up to [`MAX_IMAGES`] images obtained ahead of
//! time and pinned, so that a group naming a cache (or auto-matching one) starts from
//! them with no registry request; and the image garbage collection that must leave them
//! alone.
//!
//! **Life.** Create stores the record as `Creating` in one durable commit and answers;
//! a task then obtains each image through the [`ImageSource`] it was given and pins it
//! (one commit per image), and ends the cache `Ready` or `Failed` with an event. A
//! delete forgets the record, which unpins its images; a task still filling it stops at
//! its next commit. Expired caches (`retention_days` after creation) are removed by
//! [`ImageCaches::expire`] with an event.
//!
//! **Crashes.** Every step is one redb commit, so after a crash a cache is `Creating`
//! with the images pinned so far, `Ready`, or `Failed`. [`ImageCaches::resume`] restarts
//! the filling of every `Creating` cache, except one created with registry credentials:
//! those are never stored, so that cache fails with a message saying to create it again.
//!
//! **The seam.** How a cache gets an image is one trait object, [`ImageSource`]: the
//! agent gives it [`PulledImages`] (present, else pulled from its registry), tests may
//! give [`PresentImages`] (the image must already be imported).

mod gc;

pub use gc::{ImagesPolicy, holder};

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use eci_api::v1::{CreateImageCacheRequest, ImageCacheSelector, RegistryCredential};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::groups::{Groups, NORMAL, WARNING, event};
use crate::images::digest::Digest;
use crate::images::{ImageError, ImageRecord, Reference};
use crate::quantity::human_memory;
use crate::validate::check_name;

/// The product's limit on images per cache.
pub const MAX_IMAGES: usize = 20;
/// The longest retention a cache may ask for (ten years).
pub const MAX_RETENTION_DAYS: u32 = 3650;

pub const CREATING: &str = "Creating";
pub const READY: &str = "Ready";
pub const FAILED: &str = "Failed";
/// Why a group waits for the cache it names: the cache is still `Creating`. The only
/// refusal of [`select`] that goes away by itself, so the only one retried.
pub const NOT_READY: &str = "ImageCacheNotReady";

/// One image a cache pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedImage {
    /// The normalized reference the cache was asked for.
    pub reference: String,
    /// The manifest digest it resolved to when the cache obtained it.
    pub digest: Digest,
}

/// A cache as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub name: String,
    /// Normalized references, in the order asked.
    pub images: Vec<String>,
    /// The images obtained so far (all of them once `Ready`; none once `Failed`).
    pub pinned: Vec<PinnedImage>,
    /// `Creating`, `Ready` or `Failed`.
    pub status: String,
    pub message: String,
    /// RFC 3339.
    pub created_at: String,
    /// Removed this many days after `created_at`; 0 keeps it.
    pub retention_days: u32,
    pub size_bytes: u64,
    /// Whether the Create carried registry credentials (never stored themselves).
    pub had_credentials: bool,
}

impl CacheRecord {
    /// Whether the cache pins the image `digest`.
    pub fn pins(&self, digest: &Digest) -> bool {
        self.pinned.iter().any(|p| &p.digest == digest)
    }

    /// The digest the cache pins for a normalized reference.
    pub fn pinned(&self, reference: &str) -> Option<&Digest> {
        self.pinned
            .iter()
            .find(|p| p.reference == reference)
            .map(|p| &p.digest)
    }

    /// When the cache expires, `day` being the length of a retention day.
    pub fn expires_at(&self, day: Duration) -> Option<SystemTime> {
        if self.retention_days == 0 {
            return None;
        }
        let created = crate::clock::parse(&self.created_at)?;
        created.checked_add(day.checked_mul(self.retention_days)?)
    }
}

/// Why obtaining an image failed, as the source words it.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// How a cache gets one image onto the node: the single step the registry puller plugs
/// into. It returns the image's record once it is present (blobs, layers and record
/// committed); the cache then pins that record's digest.
pub trait ImageSource: Send + Sync {
    fn obtain<'a>(
        &'a self,
        reference: &'a str,
        credentials: &'a [RegistryCredential],
    ) -> BoxFuture<'a, Result<ImageRecord, SourceError>>;
}

/// The source before registry pulls are wired in: the image must be in the store
/// already (imported), else a clear error.
pub struct PresentImages {
    groups: Arc<Groups>,
}

impl PresentImages {
    pub fn new(groups: Arc<Groups>) -> Self {
        PresentImages { groups }
    }
}

/// An image a cache needs is absent and this source cannot fetch it.
#[derive(Debug, thiserror::Error)]
#[error(
    "image {0} is not present on this node and pulling is not wired here yet; import it with `ecictl images import` first"
)]
pub struct NotPresent(pub String);

impl ImageSource for PresentImages {
    fn obtain<'a>(
        &'a self,
        reference: &'a str,
        _credentials: &'a [RegistryCredential],
    ) -> BoxFuture<'a, Result<ImageRecord, SourceError>> {
        let groups = self.groups.clone();
        let reference = reference.to_string();
        Box::pin(async move {
            let r = reference.clone();
            let found = tokio::task::spawn_blocking(move || groups.images().get(&r))
                .await
                .map_err(|e| Box::new(e) as SourceError)?;
            match found {
                Ok(rec) => Ok(rec),
                Err(ImageError::NotFound(_)) => Err(Box::new(NotPresent(reference)) as SourceError),
                Err(e) => Err(Box::new(e) as SourceError),
            }
        })
    }
}

/// Obtains a cache's images from the registry puller: present ones (policy
/// `IfNotPresent`) are used as they are, absent ones are pulled with the cache's
/// credentials.
pub struct PulledImages {
    groups: Arc<Groups>,
}

impl PulledImages {
    pub fn new(groups: Arc<Groups>) -> Self {
        PulledImages { groups }
    }
}

impl ImageSource for PulledImages {
    fn obtain<'a>(
        &'a self,
        reference: &'a str,
        credentials: &'a [RegistryCredential],
    ) -> BoxFuture<'a, Result<ImageRecord, SourceError>> {
        let puller = self.groups.puller().clone();
        let creds: Vec<crate::images::pull::Credential> = credentials
            .iter()
            .map(crate::images::pull::Credential::from)
            .collect();
        Box::pin(async move {
            puller
                .ensure(
                    reference,
                    crate::images::pull::PullPolicy::IfNotPresent,
                    &creds,
                    None,
                )
                .await
                .map(|p| p.image)
                .map_err(|e| Box::new(e) as SourceError)
        })
    }
}

/// The image caches of this node, and the image garbage collection.
pub struct ImageCaches {
    groups: Arc<Groups>,
    source: Arc<dyn ImageSource>,
    policy: ImagesPolicy,
    /// Caches a task is filling now (name, creation time), so a resume never starts a
    /// second one. The time tells a cache from one deleted and created again under the
    /// same name while the first task still runs: each task works only on its own.
    filling: Mutex<HashSet<(String, String)>>,
    /// Set while a garbage collection runs; a request meanwhile is folded into it.
    collecting: std::sync::atomic::AtomicBool,
}

/// Runs store work off the async workers (redb commits fsync).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("store task failed: {e}")))?
}

/// Checks a Create request; returns the normalized references.
fn check_request(req: &CreateImageCacheRequest) -> Result<Vec<String>> {
    let bad = |field: String, message: String| Error::InvalidField { field, message };
    check_name(&req.name).map_err(|e| bad("name".into(), e.to_string()))?;
    if req.images.is_empty() {
        return Err(bad(
            "images".into(),
            "at least one image is required".into(),
        ));
    }
    if req.images.len() > MAX_IMAGES {
        return Err(bad(
            "images".into(),
            format!(
                "{} images is over the limit of {MAX_IMAGES}",
                req.images.len()
            ),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, image) in req.images.iter().enumerate() {
        let r = Reference::parse(image)
            .map_err(|e| bad(format!("images[{i}]"), e.to_string()))?
            .to_string();
        if let Some(j) = out.iter().position(|o| o == &r) {
            return Err(bad(
                format!("images[{i}]"),
                format!("{r} is already images[{j}]"),
            ));
        }
        out.push(r);
    }
    if req.retention_days > MAX_RETENTION_DAYS {
        return Err(bad(
            "retentionDays".into(),
            format!(
                "{} is over the limit of {MAX_RETENTION_DAYS}",
                req.retention_days
            ),
        ));
    }
    for (i, c) in req.credentials.iter().enumerate() {
        if c.server.is_empty() {
            return Err(bad(
                format!("credentials[{i}].server"),
                "is required".into(),
            ));
        }
    }
    Ok(out)
}

impl ImageCaches {
    pub fn new(
        groups: Arc<Groups>,
        source: Arc<dyn ImageSource>,
        policy: ImagesPolicy,
    ) -> Arc<Self> {
        Arc::new(ImageCaches {
            groups,
            source,
            policy,
            filling: Mutex::new(HashSet::new()),
            collecting: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn policy(&self) -> &ImagesPolicy {
        &self.policy
    }

    /// Stores a new cache as `Creating` and starts obtaining its images.
    pub async fn create(self: &Arc<Self>, req: CreateImageCacheRequest) -> Result<CacheRecord> {
        let images = check_request(&req)?;
        let record = CacheRecord {
            name: req.name.clone(),
            images,
            pinned: Vec::new(),
            status: CREATING.into(),
            message: "obtaining images".into(),
            created_at: crate::clock::now(),
            retention_days: req.retention_days,
            size_bytes: 0,
            had_credentials: !req.credentials.is_empty(),
        };
        let store = self.groups.store().clone();
        let r = record.clone();
        blocking(move || {
            store.write(|tx| {
                if tx.get_cache(&r.name)?.is_some() {
                    return Err(Error::CacheExists(r.name.clone()));
                }
                tx.put_cache(&r)?;
                tx.event(event(
                    "",
                    NORMAL,
                    "ImageCacheCreating",
                    format!(
                        "image cache {} is obtaining {} image(s)",
                        r.name,
                        r.images.len()
                    ),
                ))?;
                Ok(())
            })
        })
        .await?;
        tracing::info!(cache = %record.name, images = record.images.len(), "image cache created");
        self.spawn_fill(&record, req.credentials);
        Ok(record)
    }

    pub async fn get(&self, name: &str) -> Result<CacheRecord> {
        let store = self.groups.store().clone();
        let n = name.to_string();
        blocking(move || store.get_cache(&n)?.ok_or(Error::CacheNotFound(n))).await
    }

    pub async fn list(&self) -> Result<Vec<CacheRecord>> {
        let store = self.groups.store().clone();
        blocking(move || Ok(store.list_caches()?)).await
    }

    /// Forgets a cache, which unpins its images (they stay until garbage collection or
    /// `images rm` removes them).
    pub async fn delete(&self, name: &str) -> Result<()> {
        let store = self.groups.store().clone();
        let n = name.to_string();
        blocking(move || {
            store.write(|tx| {
                tx.delete_cache(&n)?
                    .ok_or_else(|| Error::CacheNotFound(n.clone()))?;
                tx.event(event(
                    "",
                    NORMAL,
                    "ImageCacheDeleted",
                    format!("image cache {n} deleted; its images are no longer pinned"),
                ))?;
                Ok(())
            })
        })
        .await
    }

    /// After a start: continues filling every cache a crash left `Creating` (or fails
    /// it when it needed credentials). Returns the caches resumed.
    pub async fn resume(self: &Arc<Self>) -> Result<Vec<String>> {
        let store = self.groups.store().clone();
        let caches = blocking(move || Ok(store.list_caches()?)).await?;
        let mut resumed = Vec::new();
        for c in caches.into_iter().filter(|c| c.status == CREATING) {
            if c.had_credentials {
                self.finish(
                    &c.name,
                    &c.created_at,
                    Err("the agent restarted while creating this cache, and registry credentials are never stored; delete it and create it again".into()),
                )
                .await;
                continue;
            }
            tracing::info!(cache = %c.name, pinned = c.pinned.len(), "resuming image cache creation");
            self.spawn_fill(&c, Vec::new());
            resumed.push(c.name);
        }
        Ok(resumed)
    }

    fn spawn_fill(self: &Arc<Self>, cache: &CacheRecord, credentials: Vec<RegistryCredential>) {
        let key = (cache.name.clone(), cache.created_at.clone());
        {
            let mut f = self.filling.lock().unwrap_or_else(PoisonError::into_inner);
            if !f.insert(key.clone()) {
                return;
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let (name, created) = (&key.0, &key.1);
            let outcome = me.fill(name, created, &credentials).await;
            if let Some(outcome) = outcome {
                me.finish(name, created, outcome).await;
            }
            me.filling
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        });
    }

    /// Obtains and pins each image not pinned yet. None when the cache (created at
    /// `created`) was deleted meanwhile; else Ok or the failure message.
    async fn fill(
        &self,
        name: &str,
        created: &str,
        credentials: &[RegistryCredential],
    ) -> Option<Result<(), String>> {
        let store = self.groups.store().clone();
        let n = name.to_string();
        let record = match blocking(move || Ok(store.get_cache(&n)?)).await {
            Ok(Some(r)) if r.created_at == created => r,
            Ok(_) => return None,
            Err(e) => return Some(Err(crate::error::chain(&e))),
        };
        for (i, reference) in record.images.iter().enumerate() {
            if record.pinned(reference).is_some() {
                continue;
            }
            let image = match self.source.obtain(reference, credentials).await {
                Ok(image) => image,
                Err(e) => {
                    return Some(Err(format!(
                        "images[{i}] {reference}: {}",
                        crate::error::chain(e.as_ref())
                    )));
                }
            };
            let store = self.groups.store().clone();
            let (n, r, created) = (name.to_string(), reference.clone(), created.to_string());
            let pinned = blocking(move || {
                store.write(|tx| {
                    let Some(mut c) = tx.get_cache(&n)?.filter(|c| c.created_at == created) else {
                        return Ok(false);
                    };
                    // The image may have gone between obtaining and pinning it.
                    if tx.get_image(&image.digest)?.is_none() {
                        return Err(Error::ImageNotFound(r.clone()));
                    }
                    c.pinned.push(PinnedImage {
                        reference: r,
                        digest: image.digest.clone(),
                    });
                    c.size_bytes += image.size();
                    tx.put_cache(&c)?;
                    Ok(true)
                })
            })
            .await;
            match pinned {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    return Some(Err(format!(
                        "images[{i}] {reference}: {}",
                        crate::error::chain(&e)
                    )));
                }
            }
        }
        Some(Ok(()))
    }

    /// Ends a `Creating` cache (created at `created`) as `Ready` or `Failed` (unpinning
    /// what it held), with an event. A cache deleted meanwhile stays deleted.
    async fn finish(&self, name: &str, created: &str, outcome: Result<(), String>) {
        let store = self.groups.store().clone();
        let (n, created) = (name.to_string(), created.to_string());
        let done = blocking(move || {
            store.write(|tx| {
                let Some(mut c) = tx
                    .get_cache(&n)?
                    .filter(|c| c.created_at == created && c.status == CREATING)
                else {
                    return Ok(());
                };
                let e = match &outcome {
                    Ok(()) => {
                        c.status = READY.into();
                        c.message = String::new();
                        event(
                            "",
                            NORMAL,
                            "ImageCacheReady",
                            format!(
                                "image cache {n} is ready: {} image(s), {}",
                                c.pinned.len(),
                                human_memory(c.size_bytes)
                            ),
                        )
                    }
                    Err(why) => {
                        c.status = FAILED.into();
                        c.message = why.clone();
                        c.pinned.clear();
                        c.size_bytes = 0;
                        event(
                            "",
                            WARNING,
                            "ImageCacheFailed",
                            format!("image cache {n} failed: {why}"),
                        )
                    }
                };
                tx.put_cache(&c)?;
                tx.event(e)?;
                Ok(())
            })
        })
        .await;
        if let Err(e) = done {
            // The cache stays Creating; the next start resumes it.
            tracing::warn!(cache = %name, error = %crate::error::chain(&e), "recording the end of an image cache creation");
        }
    }

    /// Removes every cache past its retention, with an event each. Returns their names.
    pub async fn expire(&self) -> Result<Vec<String>> {
        let store = self.groups.store().clone();
        let day = self.policy.retention_day;
        blocking(move || {
            let now = SystemTime::now();
            let mut removed = Vec::new();
            for c in store.list_caches()? {
                if c.expires_at(day).is_none_or(|at| at > now) {
                    continue;
                }
                let gone = store.write(|tx| {
                    if tx.delete_cache(&c.name)?.is_none() {
                        return Ok::<_, Error>(false);
                    }
                    tx.event(event(
                        "",
                        NORMAL,
                        "ImageCacheExpired",
                        format!(
                            "image cache {} expired after its retention of {} day(s) and was removed",
                            c.name, c.retention_days
                        ),
                    ))?;
                    Ok(true)
                })?;
                if gone {
                    tracing::info!(cache = %c.name, "image cache expired");
                    removed.push(c.name);
                }
            }
            Ok(removed)
        })
        .await
    }
}

/// The cache a group starts from, if any: the named one (which must be `Ready` and hold
/// every image in `wanted`, else the error says why, as `(reason, message)`), or with
/// `autoMatch` the newest `Ready` cache holding them all (none is not an error).
pub fn select<'a>(
    selector: Option<&ImageCacheSelector>,
    caches: &'a [CacheRecord],
    wanted: &[String],
) -> std::result::Result<Option<&'a CacheRecord>, (&'static str, String)> {
    let Some(sel) = selector else {
        return Ok(None);
    };
    let holds_all = |c: &CacheRecord| wanted.iter().all(|w| c.pinned(w).is_some());
    if !sel.name.is_empty() {
        let Some(c) = caches.iter().find(|c| c.name == sel.name) else {
            return Err((
                "ImageCacheNotFound",
                format!("imageCache.name: image cache {:?} does not exist", sel.name),
            ));
        };
        if c.status != READY {
            let why = if c.message.is_empty() {
                String::new()
            } else {
                format!(": {}", c.message)
            };
            // Creating: the caller waits and looks again; Failed: it stays so.
            let reason = if c.status == CREATING {
                NOT_READY
            } else {
                "ImageCacheFailed"
            };
            return Err((
                reason,
                format!(
                    "imageCache.name: image cache {:?} is {}{why}",
                    c.name, c.status
                ),
            ));
        }
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|w| c.pinned(w).is_none())
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err((
                "ImageCacheMismatch",
                format!(
                    "imageCache.name: image cache {:?} does not hold {}",
                    c.name,
                    missing.join(", ")
                ),
            ));
        }
        return Ok(Some(c));
    }
    if !sel.auto_match {
        return Ok(None);
    }
    // RFC 3339 UTC with nanoseconds, as `clock::now` writes it, sorts as text.
    Ok(caches
        .iter()
        .filter(|c| c.status == READY && holds_all(c))
        .max_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.name.cmp(&b.name))
        }))
}

#[cfg(test)]
mod tests;
