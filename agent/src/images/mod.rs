//! The node's images: import from OCI archives, the content store, unpacked layers shared
//! between images, and the records groups resolve their images from.
//!
//! Layers are unpacked once per uncompressed digest (diff id) into
//! `<state>/layers/<hex>/`, the form overlayfs stacks as read-only lower directories, so
//! images that share a layer share it on disk whatever its compression.
//!
//! Image content is hostile input: every digest is parsed into a [`Digest`] where it
//! enters (see [`documents`]), and a layer directory is only used when the store records
//! that this agent unpacked and verified it (see [`layers`]).

pub(crate) mod archive;
pub mod content;
pub mod digest;
pub mod documents;
pub mod erofs;
pub mod gc;
mod import;
pub mod layers;
mod placement;
pub mod process;
pub mod pull;
pub mod reference;
mod stream;
pub mod unpack;

pub use stream::Ingested;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, WriteTx};
use content::{ContentError, ContentStore};
use digest::{Algorithm, Digest};
use layers::LayerLocks;
pub use reference::Reference;

/// The product's limit on layers per image.
pub const MAX_LAYERS: usize = 50;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("invalid image archive: {0}")]
    Archive(String),
    /// The archive's index.json (or an index it points at) was refused.
    #[error("image archive")]
    Index(#[source] documents::DocumentError),
    /// A manifest or config of a named image was refused.
    #[error("image {image}")]
    Document {
        image: String,
        #[source]
        source: documents::DocumentError,
    },
    #[error("image {image}: {reason}")]
    Invalid { image: String, reason: String },
    /// Refused removal: the image is in use. The second field says by what
    /// (`used by group "web"`, `pinned by image cache "warm-1"`).
    #[error("image {0} is {1}")]
    InUse(String, String),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("layer {layer}")]
    Unpack {
        layer: Digest,
        #[source]
        source: unpack::UnpackError,
    },
    #[error("layer {layer} unpacks to {actual}, the image config says {expected}")]
    DiffId {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `mkfs.erofs` could not turn an unpacked layer into an image for vm groups.
    #[error("layer {layer}: building its erofs image: {message}")]
    Erofs { layer: Digest, message: String },
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed or not).
    pub digest: Digest,
    /// Digest of the uncompressed tar; names the unpacked directory.
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
}

/// What a container inherits from its image (Docker semantics in [`process`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// An image on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Manifest digest: the image's identity.
    pub digest: Digest,
    pub config_digest: Digest,
    /// Normalized references that point at this image.
    pub references: Vec<String>,
    /// Bottom layer first, as in the manifest.
    pub layers: Vec<LayerRecord>,
    pub platform: String,
    pub created: String,
    pub imported_at: String,
    pub defaults: ImageDefaults,
}

impl ImageRecord {
    /// A new image as an import or a pull records it: named by `reference`, its
    /// manifest `digest`, the checked `config` and the layers it lists, stamped now.
    pub fn new(
        digest: Digest,
        config_digest: Digest,
        reference: String,
        layers: Vec<LayerRecord>,
        config: documents::Config,
    ) -> Self {
        ImageRecord {
            digest,
            config_digest,
            references: vec![reference],
            layers,
            platform: config.platform,
            created: config.created,
            imported_at: crate::clock::now(),
            defaults: config.defaults,
        }
    }

    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// The image store of a node.
pub struct ImageStore {
    content: ContentStore,
    layers: PathBuf,
    store: Arc<Store>,
    /// Imports and layer preparation share it; garbage collection takes it alone, so it
    /// never deletes a blob or layer an import has written but not yet recorded.
    gc: RwLock<()>,
    /// One unpack per diff id at a time.
    layer_locks: LayerLocks,
    /// Signalled when an image was added (import, pull): the watermark garbage
    /// collection (`caches::ImageCaches::spawn_maintenance`) then runs at once.
    added: tokio::sync::Notify,
    /// Blobs and layers of pulls in progress (see [`ImageStore::hold`]).
    holds: Holds,
}

/// Digests (blobs and diff ids) that garbage collection must keep although no image
/// record names them yet: a pull records its layers one by one and its image last,
/// and in between a collection would otherwise delete what it just stored.
#[derive(Debug, Default, Clone)]
struct Holds(Arc<std::sync::Mutex<std::collections::HashMap<Digest, usize>>>);

/// Keeps its digests from garbage collection until dropped.
#[derive(Debug)]
pub struct Hold {
    holds: Holds,
    digests: Vec<Digest>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut m = self.holds.0.lock().unwrap_or_else(PoisonError::into_inner);
        for d in &self.digests {
            if let Some(n) = m.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    m.remove(d);
                }
            }
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Whether `name` is meant as a digest rather than a reference.
fn names_a_digest(name: &str) -> bool {
    Algorithm::ALL.iter().any(|a| {
        name.strip_prefix(a.name())
            .is_some_and(|r| r.starts_with(':'))
    })
}

fn parse_digest_name(name: &str) -> Result<Digest, ImageError> {
    name.parse().map_err(|_| {
        ImageError::Reference(reference::ReferenceError {
            reference: name.to_string(),
            why: "a digest is sha256:<64 hex digits> or sha512:<128 hex digits>, lowercase",
        })
    })
}

impl ImageStore {
    /// Opens the store under `state_dir` (`content/`, `layers/`).
    pub fn open(state_dir: &Path, store: Arc<Store>) -> Result<Self, ImageError> {
        let content = ContentStore::open(&state_dir.join("content"))?;
        let layers = state_dir.join("layers");
        std::fs::create_dir_all(&layers).map_err(io_err(&layers))?;
        placement::spread_subdirectories(&layers);
        let images = ImageStore {
            content,
            layers,
            store,
            gc: RwLock::new(()),
            layer_locks: LayerLocks::default(),
            holds: Holds::default(),
            added: tokio::sync::Notify::new(),
        };
        // Nothing unpacks yet: any unpack directory is left from a crash.
        images.remove_stale_unpacks()?;
        images.content.remove_stale_ingests();
        Ok(images)
    }

    /// Says that an image was added, so the watermark garbage collection runs soon. A
    /// puller calls it after it records an image; imports do.
    pub fn image_added(&self) {
        self.added.notify_one();
    }

    /// Woken after [`ImageStore::image_added`].
    pub fn added(&self) -> &tokio::sync::Notify {
        &self.added
    }

    /// A temp file on the same filesystem as the store, deleted when dropped, for
    /// archives that arrive over the network.
    pub fn spool_file(&self) -> Result<tempfile::NamedTempFile, ImageError> {
        tempfile::Builder::new()
            .prefix(".spool-")
            .tempfile_in(&self.layers)
            .map_err(io_err(&self.layers))
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.store.list_images()?)
    }

    /// Finds an image by reference or manifest digest.
    pub fn get(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let found = if names_a_digest(name) {
            self.store.get_image(&parse_digest_name(name)?)?
        } else {
            self.store
                .image_by_ref(&Reference::parse(name)?.to_string())?
        };
        found.ok_or_else(|| ImageError::NotFound(name.to_string()))
    }

    /// Removes a reference (or, given a digest, the whole image). Layers and blobs no
    /// image uses any more are deleted. `holder` says what holds the image (a group, a
    /// cache), if anything; it runs in the transaction that removes the record, so
    /// nothing can start using the image between the check and the removal.
    pub fn remove(
        &self,
        name: &str,
        holder: impl Fn(&WriteTx<'_>, &ImageRecord) -> Result<Option<String>, StoreError>,
    ) -> Result<(), ImageError> {
        let image = self.get(name)?;
        let untag = match names_a_digest(name) || image.references.len() <= 1 {
            true => None,
            false => Some(Reference::parse(name)?.to_string()),
        };
        self.store.write(|tx| {
            let Some(current) = tx.get_image(&image.digest)? else {
                return Err(ImageError::NotFound(name.to_string()));
            };
            if let Some(by) = holder(tx, &current)? {
                return Err(ImageError::InUse(name.to_string(), by));
            }
            match &untag {
                None => tx.delete_image(&image.digest)?,
                Some(r) => tx.untag_image(&image.digest, r)?,
            }
            Ok(())
        })?;
        self.collect_garbage()
    }

    /// Keeps `digests` (blobs, diff ids) from garbage collection while the returned
    /// guard lives: a pull holds its image's layers, config and manifest from before
    /// it stores the first of them until its image record is written.
    pub fn hold(&self, digests: impl IntoIterator<Item = Digest>) -> Hold {
        let digests: Vec<Digest> = digests.into_iter().collect();
        let mut m = self.holds.0.lock().unwrap_or_else(PoisonError::into_inner);
        for d in &digests {
            *m.entry(d.clone()).or_default() += 1;
        }
        Hold {
            holds: self.holds.clone(),
            digests,
        }
    }

    /// Deletes unpacked layers (and their records) and blobs that no image references
    /// and no pull in progress holds.
    pub fn collect_garbage(&self) -> Result<(), ImageError> {
        let _alone = self.gc.write().unwrap_or_else(PoisonError::into_inner);
        let images = self.store.list_images()?;
        let held: Vec<Digest> = {
            let m = self.holds.0.lock().unwrap_or_else(PoisonError::into_inner);
            m.keys().cloned().collect()
        };
        let mut blobs: HashSet<Digest> = held.iter().cloned().collect();
        let mut diff_ids: HashSet<Digest> = held.into_iter().collect();
        for i in &images {
            blobs.insert(i.digest.clone());
            blobs.insert(i.config_digest.clone());
            for l in &i.layers {
                blobs.insert(l.digest.clone());
                diff_ids.insert(l.diff_id.clone());
            }
        }
        self.collect_layers(&diff_ids)?;
        for algorithm in Algorithm::ALL {
            let dir = self.content.dir(algorithm);
            for e in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                let name = e.file_name();
                let used = name
                    .to_str()
                    .and_then(|hex| Digest::from_parts(algorithm.name(), hex).ok())
                    .is_some_and(|d| blobs.contains(&d));
                if !used {
                    std::fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
