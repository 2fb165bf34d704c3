//! The content store: blobs by digest under `<state>/content/<algorithm>/<hex>`, written
//! through a temp file, verified, fsynced and renamed into place, so a blob that exists is
//! whole and correct.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::digest::{Algorithm, Digest, Hashing};

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("blob {expected} does not match its content (it hashes to {actual})")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("blob {digest} is {actual} bytes, the descriptor says {expected}")]
    Size {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("content store {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Blobs by digest.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl ContentStore {
    pub fn open(root: &Path) -> Result<Self, ContentError> {
        let dirs = Algorithm::ALL.map(|a| root.join(a.name()));
        for d in dirs.iter().chain([&root.join("ingest")]) {
            std::fs::create_dir_all(d).map_err(io_at(d))?;
        }
        Ok(ContentStore {
            root: root.to_path_buf(),
        })
    }

    /// The directory of one algorithm's blobs.
    pub fn dir(&self, algorithm: Algorithm) -> PathBuf {
        self.root.join(algorithm.name())
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir(d.algorithm()).join(d.hex())
    }

    /// The stored size of a blob.
    pub fn size(&self, d: &Digest) -> Result<u64, ContentError> {
        let p = self.path(d);
        Ok(std::fs::metadata(&p).map_err(io_at(&p))?.len())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File, ContentError> {
        let p = self.path(d);
        File::open(&p).map_err(io_at(&p))
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, ContentError> {
        let p = self.path(d);
        std::fs::read(&p).map_err(io_at(&p))
    }

    /// Stores `data` as `expected`, verifying digest (and size when given). A blob
    /// already present is not written again, but `data` is still read to its end.
    pub fn ingest(
        &self,
        mut data: impl Read,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<u64, ContentError> {
        let final_path = self.path(expected);
        if final_path.is_file() {
            return io::copy(&mut data, &mut io::sink()).map_err(io_at(&final_path));
        }
        let tmp =
            tempfile::NamedTempFile::new_in(self.root.join("ingest")).map_err(io_at(&self.root))?;
        let mut w = Hashing::new(io::BufWriter::new(tmp), expected.algorithm());
        io::copy(&mut data, &mut w).map_err(io_at(&final_path))?;
        let (actual, n, buf) = w.finish();
        if actual != *expected {
            return Err(ContentError::Mismatch {
                expected: expected.clone(),
                actual,
            });
        }
        if let Some(s) = size
            && s != n
        {
            return Err(ContentError::Size {
                digest: expected.clone(),
                expected: s,
                actual: n,
            });
        }
        let mut tmp = buf.into_inner().map_err(|e| ContentError::Io {
            path: final_path.display().to_string(),
            source: e.into_error(),
        })?;
        tmp.flush().map_err(io_at(&final_path))?;
        tmp.as_file().sync_all().map_err(io_at(&final_path))?;
        tmp.persist(&final_path).map_err(|e| ContentError::Io {
            path: final_path.display().to_string(),
            source: e.error,
        })?;
        Ok(n)
    }

    /// A temp file in the ingest directory for a blob being received; deleted if dropped.
    pub fn ingest_file(&self) -> Result<tempfile::NamedTempFile, ContentError> {
        let dir = self.root.join("ingest");
        tempfile::NamedTempFile::new_in(&dir).map_err(io_at(&dir))
    }

    /// Moves an ingest file whose content the caller verified against `d` and synced
    /// into place.
    pub fn commit(&self, tmp: tempfile::NamedTempFile, d: &Digest) -> Result<(), ContentError> {
        let final_path = self.path(d);
        tmp.persist(&final_path).map_err(|e| ContentError::Io {
            path: final_path.display().to_string(),
            source: e.error,
        })?;
        let dir = self.dir(d.algorithm());
        File::open(&dir)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&dir))
    }

    /// Removes ingest files a crash left behind (nothing ingests while the store opens).
    pub fn remove_stale_ingests(&self) {
        let dir = self.root.join("ingest");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }

    /// Deletes a blob; absent is fine.
    pub fn remove(&self, d: &Digest) -> Result<(), ContentError> {
        let p = self.path(d);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(&p)(e)),
            _ => Ok(()),
        }
    }
}
