//! Importing the images of an OCI layout archive: blobs into the content store, then for
//! each image for this host its manifest, config and layers, parsed and checked before
//! anything is unpacked or recorded.

use std::io::Read;
use std::sync::PoisonError;

use super::documents::{self, Descriptor, DocumentError};
use super::unpack::UnpackError;
use super::{ImageError, ImageRecord, ImageStore, LayerRecord, MAX_LAYERS, Reference, archive};

/// The annotations that name an image in an index.
fn image_name(d: &Descriptor) -> Option<String> {
    d.annotations
        .get("io.containerd.image.name")
        .or_else(|| {
            d.annotations
                .get("org.opencontainers.image.ref.name")
                .filter(|n| n.contains(['/', ':']))
        })
        .cloned()
}

impl ImageStore {
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
        let _shared = self.gc.read().unwrap_or_else(PoisonError::into_inner);
        let index = archive::ingest(archive, &self.content)?;
        let index = documents::index(&index, "index.json").map_err(ImageError::Index)?;
        let manifests = self.manifests(index)?;
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
        self.image_added();
        Ok(out)
    }

    /// Reads a metadata blob the archive must hold, bounded in size.
    fn document(&self, d: &Descriptor, what: &str) -> Result<Vec<u8>, DocumentError> {
        let document = format!(
            "{what} {} (archive entry {})",
            d.digest,
            archive::entry_name(&d.digest)
        );
        if !self.content.has(&d.digest) {
            return Err(DocumentError::Missing { document });
        }
        let blob = self
            .content
            .open_blob(&d.digest)
            .map_err(|e| DocumentError::Read {
                document: document.clone(),
                source: std::io::Error::other(e),
            })?;
        documents::read(blob, &document)
    }

    /// The image manifests an index points at for this host, with their names.
    fn manifests(
        &self,
        index: documents::Index,
    ) -> Result<Vec<(Descriptor, Option<String>)>, ImageError> {
        let arch = archive::host_arch();
        let mut out = Vec::new();
        for d in index.manifests {
            let name = image_name(&d);
            if d.is_index() {
                let document = format!("index {}", d.digest);
                let nested = self
                    .document(&d, "index")
                    .and_then(|bytes| documents::index(&bytes, &document))
                    .map_err(ImageError::Index)?;
                if let Some(m) = nested
                    .manifests
                    .into_iter()
                    .find(|m| m.is_for("linux", arch))
                {
                    out.push((m, name));
                }
            } else if d.is_for("linux", arch) {
                out.push((d, name));
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
        let refused = |source| ImageError::Document {
            image: image.clone(),
            source,
        };
        let manifest = self
            .document(desc, "manifest")
            .and_then(|b| documents::manifest(&b))
            .map_err(refused)?;
        if manifest.layers.len() > MAX_LAYERS {
            return Err(invalid(format!(
                "{} layers is over the limit of {MAX_LAYERS}",
                manifest.layers.len()
            )));
        }
        let mut config = self
            .document(&manifest.config, "config")
            .and_then(|b| documents::config(&b))
            .map_err(refused)?;
        if config.diff_ids.len() != manifest.layers.len() {
            return Err(invalid(format!(
                "the config lists {} layers, the manifest {}",
                config.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        self.check_size(desc, "the index's manifest")
            .and_then(|()| self.check_size(&manifest.config, "manifest config"))
            .map_err(invalid)?;
        let mut layers = Vec::new();
        for (i, (l, diff_id)) in manifest
            .layers
            .iter()
            .zip(std::mem::take(&mut config.diff_ids))
            .enumerate()
        {
            if !self.content.has(&l.digest) {
                return Err(invalid(format!(
                    "manifest layers[{i}]: layer {} is not in the archive (no entry {})",
                    l.digest,
                    archive::entry_name(&l.digest)
                )));
            }
            self.check_size(l, &format!("manifest layers[{i}]"))
                .map_err(invalid)?;
            layers.push(LayerRecord {
                digest: l.digest.clone(),
                diff_id,
                media_type: l.media_type.clone(),
                size: l.size,
            });
        }
        // Everything is parsed and present: now unpack.
        for (i, l) in layers.iter().enumerate() {
            self.ensure_layer(l).map_err(|e| match e {
                // The blob is the archive's: one that does not decode (a corrupt or
                // mislabelled stream) is bad input, named by field and entry.
                ImageError::Unpack {
                    source: UnpackError::Read(why),
                    ..
                } => invalid(format!(
                    "manifest layers[{i}]: layer {} (archive entry {}) does not decode as {}: {why}",
                    l.digest,
                    archive::entry_name(&l.digest),
                    l.media_type
                )),
                other => other,
            })?;
        }
        let record = ImageRecord::new(
            desc.digest.clone(),
            manifest.config.digest.clone(),
            image.clone(),
            layers,
            config,
        );
        let record = self.record_image(record, &image)?;
        tracing::info!(image = %image, digest = %record.digest, layers = record.layers.len(), "image imported");
        Ok(record)
    }

    /// Writes the record of an image whose blobs and layers are all present, moving
    /// `image` (a normalized reference) to it and keeping the names it already had.
    pub(super) fn record_image(
        &self,
        mut record: ImageRecord,
        image: &str,
    ) -> Result<ImageRecord, ImageError> {
        self.store.write(|tx| {
            // A reference moves to the new image; the old one keeps its other names.
            if let Some(old) = tx.image_by_ref(image)?
                && old.digest != record.digest
            {
                tx.untag_image(&old.digest, image)?;
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
        Ok(record)
    }

    /// The blob a descriptor points at has the size it claims (the digest was verified
    /// when the blob was stored), so the sizes the agent reports are true.
    fn check_size(&self, d: &Descriptor, what: &str) -> Result<(), String> {
        let actual = self.content.size(&d.digest).map_err(|e| e.to_string())?;
        if actual == d.size {
            return Ok(());
        }
        Err(format!(
            "{what}.size is {}, blob {} is {actual} bytes",
            d.size, d.digest
        ))
    }
}
