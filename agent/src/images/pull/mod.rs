//! Pulling images from registries into the image store.
//!
//! [`Puller::ensure`] is the one entry point (supervisor, `Images.Pull`, image caches):
//! it applies the pull policy, coalesces identical concurrent pulls, resolves the
//! reference on the registry (mirrors first), picks this host's platform from an index,
//! and fetches the config and the layers — several at once, each layer fetched at most
//! once however many images or pulls want it — streaming every layer through
//! [`ImageStore::ingest_layer`], which verifies and unpacks it while it downloads.
//! The image is recorded only when everything it names is present.
//!
//! Credentials never leave this module in a message: every error text is built from
//! the registry's answer and passed through [`Secrets::redact`] before it is returned.

mod auth;
mod registry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::digest::Digest;
use super::documents;
use super::{ImageError, ImageRecord, ImageStore, Ingested, LayerRecord, MAX_LAYERS, Reference};
use crate::config::{PullConfig, RegistryConfig};
pub use auth::Credential;
use auth::Secrets;
use registry::{Attempt, Endpoint, Registries};

/// When to contact the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the reference every time; layers already present are reused.
    Always,
    /// Pull only when no image by that reference is on the node.
    IfNotPresent,
    /// Never pull: an absent image is an error.
    Never,
}

impl PullPolicy {
    /// The policy a container asks for; empty picks the Kubernetes default for the
    /// reference (`Always` for `latest` or no tag, else `IfNotPresent`).
    pub fn of(policy: &str, image: &str) -> PullPolicy {
        match policy {
            "Always" => PullPolicy::Always,
            "Never" => PullPolicy::Never,
            "IfNotPresent" => PullPolicy::IfNotPresent,
            _ => match Reference::parse(image).map(|r| r.default_pull_policy()) {
                Ok("Always") => PullPolicy::Always,
                _ => PullPolicy::IfNotPresent,
            },
        }
    }
}

/// One step of a layer's transfer, for progress displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress {
    pub layer: Digest,
    /// `Waiting`, `Downloading`, `Done`, `AlreadyExists`.
    pub state: &'static str,
    pub downloaded: u64,
    pub total: u64,
}

/// Where progress goes; `None` for nobody.
pub type ProgressSink = Option<mpsc::UnboundedSender<LayerProgress>>;

/// What [`Puller::ensure`] did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: ImageRecord,
    /// False when the image was present and the policy let it be used as is.
    pub pulled: bool,
    /// Bytes downloaded (layers already present cost nothing).
    pub downloaded: u64,
    pub elapsed: Duration,
}

/// Why a pull failed. Messages name the registry's reason and never a credential.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] super::reference::ReferenceError),
    #[error("container image {0:?} is not present with pull policy of Never")]
    NeverPull(String),
    /// The registry refused or failed (its answer, redacted).
    #[error("pulling {image}: {reason}")]
    Registry { image: String, reason: String },
    /// The image is not acceptable (platform, schema, layer count, digests).
    #[error("pulling {image}: {reason}")]
    Invalid { image: String, reason: String },
    /// The image store's filesystem is full; the same pull succeeds once there is room.
    #[error("pulling {image}: no space left for the image: {reason}")]
    NoSpace { image: String, reason: String },
    #[error("pulling {image}: timed out after {after:?}")]
    Timeout { image: String, after: Duration },
    #[error("pulling {image}: storing it")]
    Store {
        image: String,
        #[source]
        source: ImageError,
    },
}

/// Pulls images; one per agent, shared by everything that needs images.
pub struct Puller {
    images: Arc<ImageStore>,
    cfg: PullConfig,
    registries: Registries,
    /// One pull per normalized reference at a time; later callers wait and reuse.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One download per blob at a time, across images.
    blobs: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock_of<K: std::hash::Hash + Eq + Clone>(
    map: &Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
    key: &K,
) -> Arc<tokio::sync::Mutex<()>> {
    let mut m = map.lock().unwrap_or_else(PoisonError::into_inner);
    // Forget locks nobody holds or waits for, so the map stays small.
    m.retain(|_, l| Arc::strong_count(l) > 1);
    m.entry(key.clone()).or_default().clone()
}

impl Puller {
    pub fn new(
        images: Arc<ImageStore>,
        cfg: PullConfig,
        registries: std::collections::BTreeMap<String, RegistryConfig>,
    ) -> Self {
        Puller {
            images,
            registries: Registries::new(registries, cfg.attempts),
            cfg,
            pulls: Mutex::default(),
            blobs: Mutex::default(),
        }
    }

    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    fn timeout(&self) -> Duration {
        humantime::parse_duration(&self.cfg.timeout).unwrap_or(Duration::from_secs(30 * 60))
    }

    /// Makes `reference` present according to `policy`, pulling it if needed with the
    /// group's `credentials` (which win over the agent config's). Progress per layer
    /// goes to `progress`.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
        credentials: &[Credential],
        progress: ProgressSink,
    ) -> Result<Pulled, PullError> {
        let started = Instant::now();
        let present = |images: &ImageStore| images.get(reference).ok();
        let r = Reference::parse(reference)?;
        let key = r.to_string();
        let already = |image| Pulled {
            image,
            pulled: false,
            downloaded: 0,
            elapsed: started.elapsed(),
        };
        match (policy, present(&self.images)) {
            (PullPolicy::Never, Some(i)) | (PullPolicy::IfNotPresent, Some(i)) => {
                return Ok(already(i));
            }
            (PullPolicy::Never, None) => return Err(PullError::NeverPull(reference.into())),
            _ => {}
        }
        let lock = lock_of(&self.pulls, &key);
        let _one = match lock.try_lock() {
            Ok(g) => g,
            Err(_) => {
                // Someone pulls it right now: wait, and take their result if it is there.
                let g = lock.lock().await;
                if let Some(i) = present(&self.images) {
                    return Ok(Pulled {
                        pulled: true,
                        ..already(i)
                    });
                }
                g
            }
        };
        let secrets = Secrets::new(credentials, &self.cfg, &self.registries);
        let after = self.timeout();
        let outcome = tokio::time::timeout(after, self.pull(&r, &secrets, &progress)).await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(_) => Err(PullError::Timeout { image: key, after }),
        };
        match outcome {
            Ok((image, downloaded)) => Ok(Pulled {
                image,
                pulled: true,
                downloaded,
                elapsed: started.elapsed(),
            }),
            Err(e) => Err(secrets.redact_error(e)),
        }
    }

    /// Resolves and fetches one image; returns it and the bytes downloaded.
    async fn pull(
        &self,
        r: &Reference,
        secrets: &Secrets,
        progress: &ProgressSink,
    ) -> Result<(ImageRecord, u64), PullError> {
        let image = r.to_string();
        let invalid = |reason: String| PullError::Invalid {
            image: image.clone(),
            reason,
        };
        let mut last = None;
        for ep in self.registries.endpoints(&r.registry, secrets) {
            match ep.resolve(r).await {
                Ok(resolved) => return self.fetch(r, &ep, resolved, progress).await,
                Err(Attempt::Invalid(reason)) => return Err(invalid(reason)),
                Err(e) => {
                    tracing::info!(image = %image, endpoint = %ep.host, error = %secrets.redact(&e.to_string()), "registry endpoint failed");
                    last = Some(e);
                }
            }
        }
        Err(PullError::Registry {
            image: image.clone(),
            reason: last.map_or("no registry endpoint".into(), |e| e.to_string()),
        })
    }

    async fn fetch(
        &self,
        r: &Reference,
        ep: &Endpoint,
        resolved: registry::Resolved,
        progress: &ProgressSink,
    ) -> Result<(ImageRecord, u64), PullError> {
        let image = r.to_string();
        let invalid = |reason: String| PullError::Invalid {
            image: image.clone(),
            reason,
        };
        let failed = |e: Attempt| match e {
            Attempt::Invalid(reason) => invalid(reason),
            e => PullError::Registry {
                image: image.clone(),
                reason: e.to_string(),
            },
        };
        let manifest = documents::manifest(&resolved.manifest).map_err(|e| invalid(chain(&e)))?;
        if manifest.layers.len() > MAX_LAYERS {
            return Err(invalid(format!(
                "{} layers is over the limit of {MAX_LAYERS}",
                manifest.layers.len()
            )));
        }
        // Kept in memory and stored with the manifest at the end: a pull that fails
        // leaves no document of its image behind.
        let config_bytes = if self.images.has_blob(&manifest.config.digest) {
            self.images
                .read_blob(&manifest.config.digest)
                .map_err(|e| self.store_err(&image, e))?
        } else {
            ep.document(r, &manifest.config.digest, manifest.config.size)
                .await
                .map_err(failed)?
        };
        let config = documents::config(&config_bytes).map_err(|e| invalid(chain(&e)))?;
        if config.diff_ids.len() != manifest.layers.len() {
            return Err(invalid(format!(
                "the config lists {} layers, the manifest {}",
                config.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let layers: Vec<LayerRecord> = manifest
            .layers
            .iter()
            .zip(&config.diff_ids)
            .map(|(l, diff_id)| LayerRecord {
                digest: l.digest.clone(),
                diff_id: diff_id.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
            })
            .collect();
        // From here until the image is recorded, a garbage collection keeps what this
        // pull stores (its layers are recorded one by one, the image last).
        let _hold = self.images.hold(
            layers
                .iter()
                .flat_map(|l| [l.digest.clone(), l.diff_id.clone()])
                .chain([manifest.config.digest.clone(), resolved.digest.clone()]),
        );
        for l in &layers {
            send(progress, l, "Waiting", 0);
        }
        // Boxed as `Send`: the borrowing closure otherwise defeats the compiler's proof
        // that the supervisor's task future is `Send`.
        let all: std::pin::Pin<Box<dyn Future<Output = Result<u64, LayerFailure>> + Send + '_>> =
            Box::pin(
                futures::stream::iter(layers.iter())
                    .map(|l| self.layer(r, ep, l, progress))
                    .buffer_unordered(self.cfg.parallel_layers.max(1) as usize)
                    .try_fold(0u64, |acc, n| async move { Ok(acc + n) }),
            );
        let downloaded: u64 = all.await.map_err(|e| match e {
            LayerFailure::Store(e) => self.store_err(&image, e),
            LayerFailure::Fetch(e) => failed(e),
        })?;
        let record = ImageRecord::new(
            resolved.digest.clone(),
            manifest.config.digest.clone(),
            image.clone(),
            layers,
            config,
        );
        let images = self.images.clone();
        let (name, manifest_bytes, digest) = (image.clone(), resolved.manifest, resolved.digest);
        let config_digest = manifest.config.digest.clone();
        let record = tokio::task::spawn_blocking(move || {
            images.put_document(&config_bytes, &config_digest)?;
            images.put_document(&manifest_bytes, &digest)?;
            images.record_pulled(record, &name)
        })
        .await
        .map_err(|e| invalid(format!("recording the image: {e}")))?
        .map_err(|e| self.store_err(&image, e))?;
        tracing::info!(image = %image, digest = %record.digest, layers = record.layers.len(), downloaded, "image pulled");
        Ok((record, downloaded))
    }

    fn store_err(&self, image: &str, source: ImageError) -> PullError {
        if no_space(&source) {
            return PullError::NoSpace {
                image: image.into(),
                reason: chain(&source),
            };
        }
        match source {
            // A blob that is not what its descriptor says is the registry's fault.
            ImageError::Content(e) => PullError::Invalid {
                image: image.into(),
                reason: e.to_string(),
            },
            e @ (ImageError::DiffId { .. } | ImageError::Unpack { .. }) => PullError::Invalid {
                image: image.into(),
                reason: chain(&e),
            },
            source => PullError::Store {
                image: image.into(),
                source,
            },
        }
    }

    /// Fetches one layer unless present; returns the bytes downloaded.
    async fn layer(
        &self,
        r: &Reference,
        ep: &Endpoint,
        layer: &LayerRecord,
        progress: &ProgressSink,
    ) -> Result<u64, LayerFailure> {
        let lock = lock_of(&self.blobs, &layer.digest);
        let _one = lock.lock().await;
        if self.images.layer_present(layer) {
            send(progress, layer, "AlreadyExists", layer.size);
            return Ok(0);
        }
        let mut tries = 0;
        loop {
            tries += 1;
            match self.layer_once(r, ep, layer, progress).await {
                Ok(n) => {
                    send(progress, layer, "Done", layer.size);
                    return Ok(n);
                }
                Err(LayerFailure::Fetch(e)) if e.retryable() && tries < self.cfg.attempts => {
                    tracing::info!(layer = %layer.digest, attempt = tries, error = %e, "retrying a layer");
                    tokio::time::sleep(registry::backoff(tries)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn layer_once(
        &self,
        r: &Reference,
        ep: &Endpoint,
        layer: &LayerRecord,
        progress: &ProgressSink,
    ) -> Result<u64, LayerFailure> {
        let (tx, rx) = mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
        let (images, l) = (self.images.clone(), layer.clone());
        let unpack =
            tokio::task::spawn_blocking(move || images.ingest_layer(&l, ChannelReader::new(rx)));
        let download = async {
            let mut stream = ep.blob(r, layer).await?.stream;
            let (mut n, mut reported, mut resumes) = (0u64, 0u64, 0u32);
            loop {
                let Some(chunk) = stream.next().await else {
                    break;
                };
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        // The client's own digest check fails the stream at its end: the
                        // content is wrong, and fetching it again will not fix it.
                        let wrong = e
                            .get_ref()
                            .is_some_and(|r| r.is::<oci_client::errors::DigestError>());
                        if !wrong && n < layer.size && resumes + 1 < self.cfg.attempts {
                            // A broken transfer: ask for the rest with a Range request; the
                            // unpack goes on with the bytes as if nothing happened (the
                            // store verifies the whole blob at its end).
                            resumes += 1;
                            tracing::info!(layer = %layer.digest, offset = n, attempt = resumes, error = %e, "resuming a layer");
                            tokio::time::sleep(registry::backoff(resumes)).await;
                            match ep.blob_from(r, layer, n).await {
                                Ok(rest) => {
                                    stream = rest;
                                    continue;
                                }
                                // The whole layer is tried again (or not) by the caller.
                                Err(again) => {
                                    let _ = tx
                                        .send(Err(std::io::Error::other(again.to_string())))
                                        .await;
                                    return Err(again);
                                }
                            }
                        }
                        let failure = if wrong {
                            Attempt::Invalid(format!("blob {}: {e}", layer.digest))
                        } else {
                            Attempt::Transport(e.to_string())
                        };
                        let _ = tx.send(Err(e)).await;
                        return Err(failure);
                    }
                };
                n += chunk.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    // The unpack side stopped (it failed, or the layer was there).
                    break;
                }
                if n - reported >= 1 << 20 {
                    reported = n;
                    send(progress, layer, "Downloading", n);
                }
            }
            Ok(n)
        };
        let downloaded = download.await;
        drop(tx);
        let unpacked = unpack.await.map_err(|e| {
            LayerFailure::Fetch(Attempt::Invalid(format!("unpacking the layer: {e}")))
        })?;
        // A transfer failure is the cause of whatever the unpack side saw after it.
        let n = downloaded.map_err(LayerFailure::Fetch)?;
        match unpacked {
            Ok(Ingested::Stored) => Ok(n),
            Ok(Ingested::AlreadyPresent) => Ok(0),
            Err(e) => Err(LayerFailure::Store(e)),
        }
    }
}

enum LayerFailure {
    Fetch(Attempt),
    Store(ImageError),
}

fn send(progress: &ProgressSink, l: &LayerRecord, state: &'static str, downloaded: u64) {
    if let Some(p) = progress {
        let _ = p.send(LayerProgress {
            layer: l.digest.clone(),
            state,
            downloaded,
            total: l.size,
        });
    }
}

/// Whether an error comes from a full filesystem (or quota).
fn no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(io) = x.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
                || matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
        {
            return true;
        }
        cur = x.source();
    }
    false
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// The blocking side of a download: reads the chunks the async side receives.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    cur: bytes::Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<std::io::Result<bytes::Bytes>>) -> Self {
        ChannelReader {
            rx,
            cur: bytes::Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
