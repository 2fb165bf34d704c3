//! Write transactions: what one [`Store::write`](super::Store::write) may change.

use eci_api::v1::{ContainerGroup, Event, WatchEvent};
use prost::Message;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    CHANGES, EVENTS, GROUPS, IMAGES, LAYERS, META, REFS, Result, StoreError, db_err, decode,
    parse_json,
};
use crate::images::ImageRecord;
use crate::images::digest::Digest;
use crate::images::layers::UnpackedLayer;

/// One write transaction; each change it records gets the next revision.
pub struct WriteTx<'a> {
    pub(super) tx: redb::WriteTransaction,
    pub(super) revision: u64,
    pub(super) changes: Vec<WatchEvent>,
    pub(super) _store: std::marker::PhantomData<&'a ()>,
}

/// Keeps the newest `keep` rows of a revision-keyed table.
pub(super) fn trim(
    tx: &redb::WriteTransaction,
    def: TableDefinition<u64, &[u8]>,
    keep: u64,
) -> Result<()> {
    let mut t = tx.open_table(def).map_err(db_err)?;
    let len = t.len().map_err(db_err)?;
    for _ in keep..len {
        t.pop_first().map_err(db_err)?;
    }
    Ok(())
}

impl WriteTx<'_> {
    /// Bumps the `probe` counter: a durable write that records no change, to find out
    /// whether the store can write again.
    pub(super) fn touch(&mut self) -> Result<()> {
        let mut meta = self.tx.open_table(META).map_err(db_err)?;
        let n = meta.get("probe").map_err(db_err)?.map_or(0, |v| v.value());
        meta.insert("probe", n.wrapping_add(1)).map_err(db_err)?;
        Ok(())
    }

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

    /// Forgets a group and gives back its id range (see [`super::ranges`]), dev
    /// address (see [`super::network`]) and disks (see [`super::disks`]); returns its
    /// last state.
    pub fn delete_group(&mut self, name: &str) -> Result<Option<ContainerGroup>> {
        self.free_range_of(name)?;
        self.free_dev_address_of(name)?;
        self.release_disks_of(name)?;
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
        drop((t, refs));
        self.forget_image_use(digest)
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
