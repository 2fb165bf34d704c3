//! Layers that arrive as a byte stream (a registry download): each chunk is written to
//! the blob's ingest file, hashed against the blob digest, decompressed, hashed against
//! the diff id and unpacked — one pass, while the download runs. Nothing is marked
//! present until all of it checks out: the blob is renamed into the content store only
//! when its digest and size match, the layer directory is synced and renamed into place
//! only when its diff id matches, and the layer record is written last. A crash at any
//! point leaves an ingest temp file or an `.unpack-` directory, both removed on start
//! or by the next attempt, and no record.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::sync::PoisonError;

use super::digest::{Digest, Hashing};
use super::layers::UnpackedLayer;
use super::{ImageError, ImageRecord, ImageStore, LayerRecord, io_err, unpack};

/// Write buffer of a blob's ingest file.
const BLOB_BUF: usize = 1 << 20;
/// Read buffer between the download and the gzip decoder.
const INPUT_BUF: usize = 256 << 10;

/// Whether the open `file` and the directory `dir` are on one filesystem (one syncfs
/// covers both); false when either cannot be looked at.
fn same_filesystem(file: &File, dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(dir)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// Copies everything read through it into the blob's ingest file and hashes it.
struct Tee<R> {
    src: Hashing<R>,
    file: BufWriter<File>,
    /// The descriptor's size: a blob that grows past it is cut off here, not stored.
    limit: u64,
    seen: u64,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read(buf)?;
        self.seen += n as u64;
        if self.seen > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the blob is longer than its descriptor's {} bytes",
                    self.limit
                ),
            ));
        }
        self.file.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// How a layer ingest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// It was already present and recorded; `data` was not read.
    AlreadyPresent,
    /// It was stored and unpacked from `data`.
    Stored,
}

impl ImageStore {
    /// Whether `layer` is unpacked and recorded and its blob kept: a pull need not fetch
    /// it.
    pub fn layer_present(&self, layer: &LayerRecord) -> bool {
        self.content.has(&layer.digest)
            && self.layer_dir(&layer.diff_id).is_dir()
            && self
                .store
                .get_layer(&layer.diff_id)
                .ok()
                .flatten()
                .is_some()
    }

    /// Whether the blob `d` is in the content store.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.content.has(d)
    }

    /// Stores a small verified document (manifest, config) under its digest.
    pub fn put_document(&self, bytes: &[u8], digest: &Digest) -> Result<(), ImageError> {
        self.content
            .ingest(bytes, digest, Some(bytes.len() as u64))?;
        Ok(())
    }

    /// Reads a stored document (manifest, config).
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, ImageError> {
        Ok(self.content.read(d)?)
    }

    /// Stores, verifies and unpacks one layer from `data`, a stream of its blob, in one
    /// pass (see the module comment). A layer another caller finished meanwhile is not
    /// read again. Blocking: run it on a blocking thread.
    pub fn ingest_layer(
        &self,
        layer: &LayerRecord,
        data: impl Read,
    ) -> Result<Ingested, ImageError> {
        let _shared = self.gc.read().unwrap_or_else(PoisonError::into_inner);
        let _busy = self.layer_locks.lock(&layer.diff_id);
        if self.layer_present(layer) {
            return Ok(Ingested::AlreadyPresent);
        }
        let dest = self.layer_dir(&layer.diff_id);
        let recorded = self.store.get_layer(&layer.diff_id)?.is_some();
        if recorded && dest.is_dir() {
            // The same content arrived before in another compression: it is unpacked
            // (and may be in use); only this blob is missing. Keep it, verified.
            self.content.ingest(data, &layer.digest, Some(layer.size))?;
            return Ok(Ingested::Stored);
        }
        if std::fs::symlink_metadata(&dest).is_ok() {
            tracing::warn!(layer = %layer.diff_id, "replacing an unrecorded layer directory");
            super::layers::remove_path(&dest)?;
        }
        let (blob_tmp, unpack_tmp) = (self.content.ingest_file()?, self.unpack_dir()?);
        let file = blob_tmp.reopen().map_err(io_err(blob_tmp.path()))?;
        let mut tee = Tee {
            src: Hashing::new(data, layer.digest.algorithm()),
            file: BufWriter::with_capacity(BLOB_BUF, file),
            limit: layer.size,
            seen: 0,
        };
        let actual_diff = {
            let stream: Box<dyn Read + '_> = if layer.media_type.ends_with("gzip") {
                // Reads of the download in big steps (`read::GzDecoder` takes 32 KiB).
                let input = io::BufReader::with_capacity(INPUT_BUF, &mut tee);
                Box::new(flate2::bufread::GzDecoder::new(input))
            } else if layer.media_type.ends_with("zstd") {
                Box::new(
                    zstd::stream::read::Decoder::new(&mut tee)
                        .map_err(io_err(unpack_tmp.path()))?,
                )
            } else {
                Box::new(&mut tee)
            };
            let mut hashing = Hashing::new(stream, layer.diff_id.algorithm());
            unpack::unpack(&mut hashing, unpack_tmp.path()).map_err(|source| {
                ImageError::Unpack {
                    layer: layer.digest.clone(),
                    source,
                }
            })?;
            // Tar padding after the end-of-archive blocks still counts for the diff id.
            io::copy(&mut hashing, &mut io::sink()).map_err(|e| ImageError::Unpack {
                layer: layer.digest.clone(),
                source: unpack::UnpackError::Read(e),
            })?;
            hashing.finish().0
        };
        // The rest of the compressed stream (a gzip trailer) is part of the blob.
        io::copy(&mut tee, &mut io::sink()).map_err(|e| ImageError::Unpack {
            layer: layer.digest.clone(),
            source: unpack::UnpackError::Read(e),
        })?;
        let Tee { src, file, .. } = tee;
        let (actual, n, _) = src.finish();
        if actual != layer.digest {
            return Err(super::ContentError::Mismatch {
                expected: layer.digest.clone(),
                actual,
            }
            .into());
        }
        if n != layer.size {
            return Err(super::ContentError::Size {
                digest: layer.digest.clone(),
                expected: layer.size,
                actual: n,
            }
            .into());
        }
        if actual_diff != layer.diff_id {
            return Err(ImageError::DiffId {
                layer: layer.digest.clone(),
                expected: layer.diff_id.clone(),
                actual: actual_diff,
            });
        }
        let file = file
            .into_inner()
            .map_err(|e| io_err(blob_tmp.path())(e.into_error()))?;
        // One syncfs writes back the blob and the whole unpacked tree when they share a
        // filesystem (the usual layout); a blob elsewhere gets its own fsync. Either way
        // both are on disk before either is renamed into place and the layer recorded.
        if !same_filesystem(&file, unpack_tmp.path()) {
            file.sync_all().map_err(io_err(blob_tmp.path()))?;
        }
        self.sync_unpack(&unpack_tmp)?;
        self.content.commit(blob_tmp, &layer.digest)?;
        self.rename_unpack(unpack_tmp, &dest)?;
        let record = UnpackedLayer {
            blob: layer.digest.clone(),
            unpacked_at: crate::clock::now(),
        };
        self.store
            .write(|tx| tx.put_layer(&layer.diff_id, &record))?;
        Ok(Ingested::Stored)
    }

    /// Records a pulled image whose documents and layers are all present.
    pub fn record_pulled(
        &self,
        record: ImageRecord,
        image: &str,
    ) -> Result<ImageRecord, ImageError> {
        let _shared = self.gc.read().unwrap_or_else(PoisonError::into_inner);
        for l in &record.layers {
            if !self.layer_present(l) {
                return Err(ImageError::Invalid {
                    image: image.to_string(),
                    reason: format!("layer {} vanished before the image was recorded", l.digest),
                });
            }
        }
        let recorded = self.record_image(record, image)?;
        // The store grew: garbage collection looks at the watermark now.
        self.image_added();
        Ok(recorded)
    }
}
