//! Image caches (issue 7) and when each image was last used, for garbage collection.
//!
//! Two tables. `image_caches` holds each cache's record (JSON [`CacheRecord`]): the
//! images it pins are written there, one durable commit each, as soon as they are on the
//! node, so a crash never leaves an obtained image unpinned for longer than that commit.
//! `image_used` maps a manifest digest to the Unix second a group last started from it;
//! a deleted image loses its row in the same transaction.

use redb::{ReadableTable, TableDefinition};

use super::{Result, Store, StoreError, WriteTx, db_err, parse_json};
use crate::caches::CacheRecord;
use crate::images::digest::Digest;

/// Cache name → JSON `CacheRecord`.
pub(super) const CACHES: TableDefinition<&str, &[u8]> = TableDefinition::new("image_caches");
/// Manifest digest → Unix seconds of the last group start from that image.
pub(super) const IMAGE_USED: TableDefinition<&str, u64> = TableDefinition::new("image_used");

fn to_json(cache: &CacheRecord) -> Result<Vec<u8>> {
    serde_json::to_vec(cache).map_err(|source| StoreError::Json {
        key: cache.name.clone(),
        source,
    })
}

/// Every cache whose record parses, by name; one that does not is skipped with a warning.
fn collect(t: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Vec<CacheRecord>> {
    let mut out = Vec::new();
    for item in t.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        match parse_json(k.value(), v.value()) {
            Ok(c) => out.push(c),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an image cache record that does not parse")
            }
        }
    }
    Ok(out)
}

impl WriteTx<'_> {
    pub fn get_cache(&self, name: &str) -> Result<Option<CacheRecord>> {
        let t = self.tx.open_table(CACHES).map_err(db_err)?;
        let v = t.get(name).map_err(db_err)?;
        v.map(|v| parse_json(name, v.value())).transpose()
    }

    pub fn list_caches(&self) -> Result<Vec<CacheRecord>> {
        let t = self.tx.open_table(CACHES).map_err(db_err)?;
        collect(&t)
    }

    /// Stores (or replaces) a cache record.
    pub fn put_cache(&mut self, cache: &CacheRecord) -> Result<()> {
        let json = to_json(cache)?;
        let mut t = self.tx.open_table(CACHES).map_err(db_err)?;
        t.insert(cache.name.as_str(), json.as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// Forgets a cache; returns its last record.
    pub fn delete_cache(&mut self, name: &str) -> Result<Option<CacheRecord>> {
        let mut t = self.tx.open_table(CACHES).map_err(db_err)?;
        let v = t.remove(name).map_err(db_err)?;
        v.map(|v| parse_json(name, v.value())).transpose()
    }

    /// Records that a group started from `digest` at `unix_seconds`.
    pub fn touch_image(&mut self, digest: &Digest, unix_seconds: u64) -> Result<()> {
        let mut t = self.tx.open_table(IMAGE_USED).map_err(db_err)?;
        t.insert(digest.as_str(), unix_seconds).map_err(db_err)?;
        Ok(())
    }

    /// Forgets when `digest` was last used (its image is gone).
    pub(super) fn forget_image_use(&mut self, digest: &Digest) -> Result<()> {
        let mut t = self.tx.open_table(IMAGE_USED).map_err(db_err)?;
        t.remove(digest.as_str()).map_err(db_err)?;
        Ok(())
    }
}

impl Store {
    pub fn get_cache(&self, name: &str) -> Result<Option<CacheRecord>> {
        self.read(|tx| {
            let t = tx.open_table(CACHES).map_err(db_err)?;
            let v = t.get(name).map_err(db_err)?;
            v.map(|v| parse_json(name, v.value())).transpose()
        })
    }

    /// Every cache, by name.
    pub fn list_caches(&self) -> Result<Vec<CacheRecord>> {
        self.read(|tx| {
            let t = tx.open_table(CACHES).map_err(db_err)?;
            collect(&t)
        })
    }

    /// When each image was last used (manifest digest → Unix seconds), as stored.
    pub fn image_use(&self) -> Result<std::collections::HashMap<String, u64>> {
        self.read(|tx| {
            let t = tx.open_table(IMAGE_USED).map_err(db_err)?;
            let mut out = std::collections::HashMap::new();
            for item in t.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                out.insert(k.value().to_string(), v.value());
            }
            Ok(out)
        })
    }
}
