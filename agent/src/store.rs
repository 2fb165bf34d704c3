//! The state store: one redb file holding groups, events, the change log that Watch
//! resumes from, images and the layers this agent unpacked.
//!
//! Every write is one redb transaction committed with immediate durability (fsync) before
//! the caller returns, so an RPC that said "created" survives `kill -9` and power loss.
//! Each committed change gets the next store revision; the change log keeps the last
//! [`CHANGE_LOG_KEEP`] of them for watchers that resume, and live watchers are told through
//! a broadcast channel after the commit.

use std::path::Path;

use eci_api::v1::{ContainerGroup, Event, WatchEvent};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::broadcast;

use crate::images::ImageRecord;
use crate::images::digest::Digest;
use crate::images::layers::UnpackedLayer;

/// Group name → encoded `ContainerGroup`.
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// Revision → encoded `Event`.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Revision → encoded `WatchEvent`.
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
/// Counters (`revision`).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Manifest digest → JSON `ImageRecord`.
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Normalized image reference → manifest digest.
const REFS: TableDefinition<&str, &str> = TableDefinition::new("image_refs");
/// Diff id → JSON `UnpackedLayer`: layer directories this agent unpacked and verified.
/// A directory without a row here is never mounted.
const LAYERS: TableDefinition<&str, &[u8]> = TableDefinition::new("layers");

/// How many changes Watch can resume across.
pub const CHANGE_LOG_KEEP: u64 = 10_000;
/// How many events are kept for `describe` and `events`.
pub const EVENTS_KEEP: u64 = 10_000;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("state database")]
    Db(#[from] redb::Error),
    #[error("state database record {key} does not decode")]
    Corrupt {
        key: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("group {0:?} already exists")]
    Exists(String),
    #[error("setting write durability: {0}")]
    Durability(String),
    #[error("state database record {key} does not parse")]
    Json {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("revision {asked} is older than the oldest kept change {oldest}")]
    Compacted { asked: u64, oldest: u64 },
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn decode<M: Message + Default>(key: impl ToString, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

/// The agent's durable state.
pub struct Store {
    db: Database,
    changes: broadcast::Sender<WatchEvent>,
}

/// One write transaction; each change it records gets the next revision.
pub struct WriteTx<'a> {
    tx: redb::WriteTransaction,
    revision: u64,
    changes: Vec<WatchEvent>,
    _store: &'a Store,
}

impl Store {
    /// Opens (or creates) the database file and its tables.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(GROUPS).map_err(db_err)?;
        tx.open_table(EVENTS).map_err(db_err)?;
        tx.open_table(CHANGES).map_err(db_err)?;
        tx.open_table(META).map_err(db_err)?;
        tx.open_table(IMAGES).map_err(db_err)?;
        tx.open_table(REFS).map_err(db_err)?;
        tx.open_table(LAYERS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        let (changes, _) = broadcast::channel(1024);
        Ok(Store { db, changes })
    }

    /// Live changes after the moment of subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.changes.subscribe()
    }

    /// Runs `f` in one write transaction, commits durably, then tells live watchers.
    /// When `f` fails nothing is written.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.write_with(redb::Durability::Immediate, f)
    }

    /// As [`Store::write`], but not fsynced: it becomes durable with the next durable
    /// write. For records whose loss in a crash changes nothing (informational events).
    pub fn write_lazy<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.write_with(redb::Durability::None, f)
    }

    fn write_with<T, E: From<StoreError>>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(durability)
            .map_err(|e| StoreError::Durability(e.to_string()))?;
        let revision = {
            let meta = tx.open_table(META).map_err(db_err)?;
            meta.get("revision")
                .map_err(db_err)?
                .map_or(0, |v| v.value())
        };
        let mut w = WriteTx {
            tx,
            revision,
            changes: Vec::new(),
            _store: self,
        };
        let out = f(&mut w)?;
        let WriteTx {
            tx,
            revision,
            changes,
            ..
        } = w;
        Self::finish(tx, revision)?;
        for c in changes {
            // No receiver is fine: nobody is watching.
            let _ = self.changes.send(c);
        }
        Ok(out)
    }

    fn finish(tx: redb::WriteTransaction, revision: u64) -> Result<()> {
        {
            let mut meta = tx.open_table(META).map_err(db_err)?;
            meta.insert("revision", revision).map_err(db_err)?;
            trim(&tx, CHANGES, CHANGE_LOG_KEEP)?;
            trim(&tx, EVENTS, EVENTS_KEEP)?;
        }
        tx.commit().map_err(db_err)
    }

    /// The revision of the last committed change.
    pub fn revision(&self) -> Result<u64> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let meta = tx.open_table(META).map_err(db_err)?;
        Ok(meta
            .get("revision")
            .map_err(db_err)?
            .map_or(0, |v| v.value()))
    }

    pub fn get_group(&self, name: &str) -> Result<Option<ContainerGroup>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(GROUPS).map_err(db_err)?;
        let v = t.get(name).map_err(db_err)?;
        v.map(|v| decode(name, v.value())).transpose()
    }

    /// All groups (by name) and the revision they were read at, from one snapshot.
    pub fn list_groups(&self) -> Result<(Vec<ContainerGroup>, u64)> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(GROUPS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        let meta = tx.open_table(META).map_err(db_err)?;
        let rev = meta
            .get("revision")
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        Ok((out, rev))
    }

    /// Every image whose record parses. One that does not (say, recorded by an older
    /// agent that took a hostile digest) is left out with a warning rather than making
    /// every listing fail.
    pub fn list_images(&self) -> Result<Vec<ImageRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(IMAGES).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            match parse_json(k.value(), v.value()) {
                Ok(image) => out.push(image),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an image record that does not parse")
                }
            }
        }
        Ok(out)
    }

    pub fn get_image(&self, digest: &Digest) -> Result<Option<ImageRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(IMAGES).map_err(db_err)?;
        let v = t.get(digest.as_str()).map_err(db_err)?;
        v.map(|v| parse_json(digest.as_str(), v.value()))
            .transpose()
    }

    /// The record of a layer this agent unpacked and verified, if any.
    pub fn get_layer(&self, diff_id: &Digest) -> Result<Option<UnpackedLayer>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(LAYERS).map_err(db_err)?;
        let v = t.get(diff_id.as_str()).map_err(db_err)?;
        v.map(|v| parse_json(diff_id.as_str(), v.value()))
            .transpose()
    }

    pub fn image_by_ref(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let refs = tx.open_table(REFS).map_err(db_err)?;
        let Some(d) = refs
            .get(reference)
            .map_err(db_err)?
            .map(|v| v.value().to_string())
        else {
            return Ok(None);
        };
        drop(refs);
        let t = tx.open_table(IMAGES).map_err(db_err)?;
        let v = t.get(d.as_str()).map_err(db_err)?;
        v.map(|v| parse_json(&d, v.value())).transpose()
    }

    /// Recorded events, oldest first, optionally of one group.
    pub fn events(&self, group: Option<&str>) -> Result<Vec<Event>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(EVENTS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let e: Event = decode(k.value(), v.value())?;
            if group.is_none_or(|g| g == e.group) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Changes after `after`, oldest first. Compacted when the log no longer reaches back.
    pub fn changes_since(&self, after: u64) -> Result<Vec<WatchEvent>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(CHANGES).map_err(db_err)?;
        let oldest = t.first().map_err(db_err)?.map(|(k, _)| k.value());
        let meta = tx.open_table(META).map_err(db_err)?;
        let rev = meta
            .get("revision")
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        if after < rev && oldest.is_none_or(|o| o > after + 1) {
            return Err(StoreError::Compacted {
                asked: after,
                oldest: oldest.unwrap_or(rev),
            });
        }
        let mut out = Vec::new();
        for item in t.range(after + 1..).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Json {
        key: key.to_string(),
        source,
    })
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

/// Keeps the newest `keep` rows of a revision-keyed table.
fn trim(tx: &redb::WriteTransaction, def: TableDefinition<u64, &[u8]>, keep: u64) -> Result<()> {
    let mut t = tx.open_table(def).map_err(db_err)?;
    let len = t.len().map_err(db_err)?;
    for _ in keep..len {
        t.pop_first().map_err(db_err)?;
    }
    Ok(())
}

impl WriteTx<'_> {
    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn record(&mut self, change: WatchEvent) -> Result<()> {
        let mut t = self.tx.open_table(CHANGES).map_err(db_err)?;
        t.insert(change.revision, change.encode_to_vec().as_slice())
            .map_err(db_err)?;
        drop(t);
        self.changes.push(change);
        Ok(())
    }

    pub fn get_group(&self, name: &str) -> Result<Option<ContainerGroup>> {
        let t = self.tx.open_table(GROUPS).map_err(db_err)?;
        let v = t.get(name).map_err(db_err)?;
        v.map(|v| decode(name, v.value())).transpose()
    }

    pub fn list_groups(&self) -> Result<Vec<ContainerGroup>> {
        let t = self.tx.open_table(GROUPS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Stores a new group; fails when the name is taken. Sets its revision.
    pub fn insert_group(&mut self, group: &mut ContainerGroup) -> Result<()> {
        let name = group
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        if self.get_group(&name)?.is_some() {
            return Err(StoreError::Exists(name));
        }
        self.save(group, "ADDED")
    }

    /// Replaces a stored group. Sets its revision.
    pub fn update_group(&mut self, group: &mut ContainerGroup) -> Result<()> {
        self.save(group, "MODIFIED")
    }

    fn save(&mut self, group: &mut ContainerGroup, kind: &str) -> Result<()> {
        let name = group
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        group.revision = self.next_revision();
        {
            let mut t = self.tx.open_table(GROUPS).map_err(db_err)?;
            t.insert(name.as_str(), group.encode_to_vec().as_slice())
                .map_err(db_err)?;
        }
        self.record(WatchEvent {
            r#type: kind.into(),
            revision: group.revision,
            group: Some(group.clone()),
            event: None,
        })
    }

    /// Forgets a group; returns its last state.
    pub fn delete_group(&mut self, name: &str) -> Result<Option<ContainerGroup>> {
        let removed = {
            let mut t = self.tx.open_table(GROUPS).map_err(db_err)?;
            let v = t.remove(name).map_err(db_err)?;
            v.map(|v| decode::<ContainerGroup>(name, v.value()))
                .transpose()?
        };
        if let Some(mut g) = removed.clone() {
            g.revision = self.next_revision();
            self.record(WatchEvent {
                r#type: "DELETED".into(),
                revision: g.revision,
                group: Some(g),
                event: None,
            })?;
        }
        Ok(removed)
    }

    pub fn get_image(&self, digest: &Digest) -> Result<Option<ImageRecord>> {
        self.image_at(digest.as_str())
    }

    fn image_at(&self, key: &str) -> Result<Option<ImageRecord>> {
        let t = self.tx.open_table(IMAGES).map_err(db_err)?;
        let v = t.get(key).map_err(db_err)?;
        v.map(|v| parse_json(key, v.value())).transpose()
    }

    pub fn image_by_ref(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let d = {
            let refs = self.tx.open_table(REFS).map_err(db_err)?;
            let v = refs.get(reference).map_err(db_err)?;
            v.map(|v| v.value().to_string())
        };
        match d {
            Some(d) => self.image_at(&d),
            None => Ok(None),
        }
    }

    /// Stores an image and points each of its references at it.
    pub fn put_image(&mut self, image: &ImageRecord) -> Result<()> {
        let json = serde_json::to_vec(image).map_err(|source| StoreError::Json {
            key: image.digest.to_string(),
            source,
        })?;
        let mut t = self.tx.open_table(IMAGES).map_err(db_err)?;
        t.insert(image.digest.as_str(), json.as_slice())
            .map_err(db_err)?;
        let mut refs = self.tx.open_table(REFS).map_err(db_err)?;
        for r in &image.references {
            refs.insert(r.as_str(), image.digest.as_str())
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Removes one reference from an image (the image stays).
    pub fn untag_image(&mut self, digest: &Digest, reference: &str) -> Result<()> {
        if let Some(mut image) = self.get_image(digest)? {
            image.references.retain(|r| r != reference);
            self.put_image(&image)?;
        }
        let mut refs = self.tx.open_table(REFS).map_err(db_err)?;
        refs.remove(reference).map_err(db_err)?;
        Ok(())
    }

    /// Removes an image and all its references.
    pub fn delete_image(&mut self, digest: &Digest) -> Result<()> {
        let Some(image) = self.get_image(digest)? else {
            return Ok(());
        };
        let mut refs = self.tx.open_table(REFS).map_err(db_err)?;
        for r in &image.references {
            refs.remove(r.as_str()).map_err(db_err)?;
        }
        let mut t = self.tx.open_table(IMAGES).map_err(db_err)?;
        t.remove(digest.as_str()).map_err(db_err)?;
        Ok(())
    }

    /// Records that this agent unpacked and verified the layer `diff_id`.
    pub fn put_layer(&mut self, diff_id: &Digest, layer: &UnpackedLayer) -> Result<()> {
        let json = serde_json::to_vec(layer).map_err(|source| StoreError::Json {
            key: diff_id.to_string(),
            source,
        })?;
        let mut t = self.tx.open_table(LAYERS).map_err(db_err)?;
        t.insert(diff_id.as_str(), json.as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// The diff ids of all recorded layers, as stored (for garbage collection, which
    /// deletes records; nothing builds a path from them).
    pub fn layer_ids(&self) -> Result<Vec<String>> {
        let t = self.tx.open_table(LAYERS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            out.push(k.value().to_string());
        }
        Ok(out)
    }

    /// Forgets a layer record; absent is fine.
    pub fn delete_layer(&mut self, diff_id: &str) -> Result<()> {
        let mut t = self.tx.open_table(LAYERS).map_err(db_err)?;
        t.remove(diff_id).map_err(db_err)?;
        Ok(())
    }

    /// Records an event. When it repeats the newest event (same group, container, reason
    /// and message) that one's count goes up instead, as Kubernetes does.
    pub fn event(&mut self, mut e: Event) -> Result<()> {
        let rev = self.next_revision();
        let mut t = self.tx.open_table(EVENTS).map_err(db_err)?;
        let last = t
            .last()
            .map_err(db_err)?
            .map(|(k, v)| (k.value(), v.value().to_vec()));
        if let Some((key, bytes)) = last {
            let prev: Event = decode(key, &bytes)?;
            let same = prev.group == e.group
                && prev.container == e.container
                && prev.reason == e.reason
                && prev.message == e.message;
            if same {
                t.remove(key).map_err(db_err)?;
                e.count = prev.count + 1;
                e.first_timestamp = prev.first_timestamp;
            }
        }
        e.revision = rev;
        e.count = e.count.max(1);
        t.insert(rev, e.encode_to_vec().as_slice())
            .map_err(db_err)?;
        drop(t);
        self.record(WatchEvent {
            r#type: "EVENT".into(),
            revision: rev,
            group: None,
            event: Some(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use eci_api::v1::GroupSpec;

    use super::*;

    fn group(name: &str) -> ContainerGroup {
        ContainerGroup {
            spec: Some(GroupSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn survives_reopen_and_counts_revisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let s = Store::open(&path).expect("open");
            s.write(|tx| tx.insert_group(&mut group("a")))
                .expect("insert");
            let err = s
                .write(|tx| tx.insert_group(&mut group("a")))
                .expect_err("dup");
            assert!(matches!(err, StoreError::Exists(_)));
            s.write(|tx| {
                tx.event(Event {
                    group: "a".into(),
                    reason: "X".into(),
                    ..Default::default()
                })?;
                tx.event(Event {
                    group: "a".into(),
                    reason: "X".into(),
                    ..Default::default()
                })
            })
            .expect("events");
        }
        let s = Store::open(&path).expect("reopen");
        assert_eq!(s.get_group("a").expect("get").expect("present").revision, 1);
        assert_eq!(s.revision().expect("rev"), 3);
        let events = s.events(Some("a")).expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].count, 2);
        let changes = s.changes_since(1).expect("changes");
        assert_eq!(
            changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
            [2, 3]
        );
        s.write(|tx| tx.delete_group("a")).expect("delete");
        assert!(s.get_group("a").expect("get").is_none());
    }
}
