//! The node's images: import from OCI archives, the content store, unpacked layers shared
//! between images, and the records groups resolve their images from.
//!
//! Layers are unpacked once per uncompressed digest (diff id) into
//! `<state>/layers/<hex>/`, the form overlayfs stacks as read-only lower directories, so
//! images that share a layer share it on disk whatever its compression.

mod archive;
pub mod content;
pub mod digest;
pub mod process;
pub mod reference;
pub mod unpack;

use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};
use content::{ContentError, ContentStore};
use digest::{Digest, Hashing};
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
    #[error("image {image}: {reason}")]
    Invalid { image: String, reason: String },
    #[error("image {0} is used by group {1:?}")]
    InUse(String, String),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("layer {layer}")]
    Unpack {
        layer: String,
        #[source]
        source: unpack::UnpackError,
    },
    #[error("layer {layer} unpacks to {actual}, the image config says {expected}")]
    DiffId {
        layer: String,
        expected: String,
        actual: String,
    },
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed or not).
    pub digest: String,
    /// Digest of the uncompressed tar; names the unpacked directory.
    pub diff_id: String,
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
    pub digest: String,
    pub config_digest: String,
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
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// The image store of a node.
pub struct ImageStore {
    content: ContentStore,
    layers: PathBuf,
    store: Arc<Store>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn oci_digest(d: &Descriptor) -> Result<Digest, ImageError> {
    d.digest()
        .to_string()
        .parse()
        .map_err(|e: digest::BadDigest| ImageError::Archive(e.to_string()))
}

impl ImageStore {
    /// Opens the store under `state_dir` (`content/`, `layers/`).
    pub fn open(state_dir: &Path, store: Arc<Store>) -> Result<Self, ImageError> {
        let content = ContentStore::open(&state_dir.join("content"))?;
        let layers = state_dir.join("layers");
        std::fs::create_dir_all(&layers).map_err(io_err(&layers))?;
        Ok(ImageStore {
            content,
            layers,
            store,
        })
    }

    /// The unpacked directory of a layer.
    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.layers
            .join(diff_id.strip_prefix("sha256:").unwrap_or(diff_id))
    }

    /// Imports every image of an OCI layout archive. `reference` names the image when the
    /// archive does not (or renames it when it has a single image).
    pub fn import(
        &self,
        archive: impl Read,
        reference: Option<&str>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let wanted = reference
            .filter(|r| !r.is_empty())
            .map(Reference::parse)
            .transpose()?;
        let index = archive::ingest(archive, &self.content)?;
        let manifests = self.manifests(&index)?;
        if manifests.is_empty() {
            return Err(ImageError::Archive(
                "index.json lists no image for this platform".into(),
            ));
        }
        if wanted.is_some() && manifests.len() > 1 {
            return Err(ImageError::Archive(format!(
                "the archive holds {} images; a reference can name only one",
                manifests.len()
            )));
        }
        let mut out = Vec::new();
        for (desc, name) in manifests {
            let reference = match (&wanted, name) {
                (Some(w), _) => w.clone(),
                (None, Some(n)) => Reference::parse(&n)?,
                (None, None) => {
                    return Err(ImageError::Archive(
                        "the archive does not name its image; give a reference".into(),
                    ));
                }
            };
            out.push(self.import_manifest(&desc, &reference)?);
        }
        Ok(out)
    }

    /// The image manifests an index points at for this host, with their names.
    fn manifests(
        &self,
        index: &ImageIndex,
    ) -> Result<Vec<(Descriptor, Option<String>)>, ImageError> {
        let mut out = Vec::new();
        for d in index.manifests() {
            let name = d.annotations().as_ref().and_then(|a| {
                a.get("io.containerd.image.name")
                    .or_else(|| {
                        a.get("org.opencontainers.image.ref.name")
                            .filter(|n| n.contains(['/', ':']))
                    })
                    .cloned()
            });
            match d.media_type() {
                MediaType::ImageIndex => {
                    let nested = ImageIndex::from_reader(self.content.open_blob(&oci_digest(d)?)?)
                        .map_err(|e| {
                            ImageError::Archive(format!("nested index {}: {e}", d.digest()))
                        })?;
                    let pick = nested.manifests().iter().find(|m| {
                        m.platform().as_ref().is_none_or(|p| {
                            p.os().to_string() == "linux"
                                && p.architecture().to_string() == archive::host_arch()
                        })
                    });
                    if let Some(m) = pick {
                        out.push((m.clone(), name));
                    }
                }
                _ => {
                    let for_host = d.platform().as_ref().is_none_or(|p| {
                        p.os().to_string() == "linux"
                            && p.architecture().to_string() == archive::host_arch()
                    });
                    if for_host {
                        out.push((d.clone(), name));
                    }
                }
            }
        }
        Ok(out)
    }

    fn import_manifest(
        &self,
        desc: &Descriptor,
        reference: &Reference,
    ) -> Result<ImageRecord, ImageError> {
        let image = reference.to_string();
        let invalid = |reason: String| ImageError::Invalid {
            image: image.clone(),
            reason,
        };
        let mdigest = oci_digest(desc)?;
        let manifest = ImageManifest::from_reader(self.content.open_blob(&mdigest)?)
            .map_err(|e| invalid(format!("manifest {mdigest}: {e}")))?;
        if manifest.layers().len() > MAX_LAYERS {
            return Err(invalid(format!(
                "{} layers is over the limit of {MAX_LAYERS}",
                manifest.layers().len()
            )));
        }
        let cdigest = oci_digest(manifest.config())?;
        let config = ImageConfiguration::from_reader(self.content.open_blob(&cdigest)?)
            .map_err(|e| invalid(format!("config {cdigest}: {e}")))?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(invalid(format!(
                "the config lists {} layers, the manifest {}",
                diff_ids.len(),
                manifest.layers().len()
            )));
        }
        let mut layers = Vec::new();
        for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let ldigest = oci_digest(l)?;
            if !self.content.has(&ldigest) {
                return Err(invalid(format!("layer {ldigest} is not in the archive")));
            }
            let media_type = l.media_type().to_string();
            self.unpack_layer(&ldigest, &media_type, diff_id)?;
            layers.push(LayerRecord {
                digest: ldigest.to_string(),
                diff_id: diff_id.clone(),
                media_type,
                size: l.size(),
            });
        }
        let c = config.config().clone().unwrap_or_default();
        let defaults = ImageDefaults {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
        };
        let mut record = ImageRecord {
            digest: mdigest.to_string(),
            config_digest: cdigest.to_string(),
            references: vec![image.clone()],
            layers,
            platform: format!("{}/{}", config.os(), config.architecture()),
            created: config.created().clone().unwrap_or_default(),
            imported_at: crate::clock::now(),
            defaults,
        };
        self.store.write(|tx| {
            // A reference moves to the new image; the old one keeps its other names.
            if let Some(old) = tx.image_by_ref(&image)?
                && old.digest != record.digest
            {
                tx.untag_image(&old.digest, &image)?;
            }
            if let Some(existing) = tx.get_image(&record.digest)? {
                for r in existing.references {
                    if !record.references.contains(&r) {
                        record.references.push(r);
                    }
                }
            }
            tx.put_image(&record)
        })?;
        tracing::info!(image = %image, digest = %record.digest, layers = record.layers.len(), "image imported");
        Ok(record)
    }

    /// Unpacks a layer blob into its diff-id directory unless it is already there.
    fn unpack_layer(
        &self,
        blob: &Digest,
        media_type: &str,
        diff_id: &str,
    ) -> Result<(), ImageError> {
        let dest = self.layer_dir(diff_id);
        if dest.is_dir() {
            return Ok(());
        }
        let layer_err = |source| ImageError::Unpack {
            layer: blob.to_string(),
            source,
        };
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&self.layers)
            .map_err(io_err(&self.layers))?;
        let file = BufReader::new(self.content.open_blob(blob)?);
        let stream: Box<dyn Read> = if media_type.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else if media_type.ends_with("zstd") {
            Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io_err(&self.layers))?)
        } else {
            Box::new(file)
        };
        let mut hashing = Hashing::new(stream);
        unpack::unpack(&mut hashing, tmp.path()).map_err(layer_err)?;
        let (actual, _, _) = hashing.finish();
        if actual.to_string() != diff_id {
            return Err(ImageError::DiffId {
                layer: blob.to_string(),
                expected: diff_id.into(),
                actual: actual.to_string(),
            });
        }
        let tmp = tmp.keep();
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(()),
            // Another import unpacked the same layer meanwhile.
            Err(_) if dest.is_dir() => std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp)),
            Err(e) => Err(io_err(&dest)(e)),
        }
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
        let found = if name.starts_with("sha256:") {
            self.store.get_image(name)?
        } else {
            self.store
                .image_by_ref(&Reference::parse(name)?.to_string())?
        };
        found.ok_or_else(|| ImageError::NotFound(name.to_string()))
    }

    /// Removes a reference (or, given a digest, the whole image). Layers and blobs no
    /// image uses any more are deleted. `user_of` names a group using the image, if any.
    pub fn remove(
        &self,
        name: &str,
        user_of: impl Fn(&ImageRecord) -> Option<String>,
    ) -> Result<(), ImageError> {
        let image = self.get(name)?;
        if let Some(group) = user_of(&image) {
            return Err(ImageError::InUse(name.to_string(), group));
        }
        let untag = match name.starts_with("sha256:") || image.references.len() <= 1 {
            true => None,
            false => Some(Reference::parse(name)?.to_string()),
        };
        self.store.write(|tx| match &untag {
            None => tx.delete_image(&image.digest),
            Some(r) => tx.untag_image(&image.digest, r),
        })?;
        self.collect_garbage()
    }

    /// Deletes unpacked layers and blobs that no image references.
    pub fn collect_garbage(&self) -> Result<(), ImageError> {
        let images = self.store.list_images()?;
        let mut blobs = HashSet::new();
        let mut diff_ids = HashSet::new();
        for i in &images {
            blobs.insert(i.digest.clone());
            blobs.insert(i.config_digest.clone());
            for l in &i.layers {
                blobs.insert(l.digest.clone());
                diff_ids.insert(
                    l.diff_id
                        .strip_prefix("sha256:")
                        .unwrap_or(&l.diff_id)
                        .to_string(),
                );
            }
        }
        let dir = self.layers.clone();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !diff_ids.contains(&name) {
                std::fs::remove_dir_all(e.path()).map_err(io_err(&e.path()))?;
            }
        }
        let sha = self
            .content
            .path(&Digest::of(b""))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for e in std::fs::read_dir(&sha).map_err(io_err(&sha))?.flatten() {
            let digest = format!("sha256:{}", e.file_name().to_string_lossy());
            if !blobs.contains(&digest) {
                std::fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
