//! The state store: one redb file holding groups, events, the change log that Watch
//! resumes from, images, the layers this agent unpacked, and image caches.
//!
//! Every write is one redb transaction committed with immediate durability (fsync) before
//! the caller returns, so an RPC that said "created" survives `kill -9` and power loss.
//! Each committed change gets the next store revision; the change log keeps the last
//! [`CHANGE_LOG_KEEP`] of them for watchers that resume.
//!
//! **Failure.** redb latches an I/O error: after one failed commit (a full filesystem, say)
//! every later transaction of that `Database` fails with `PreviousIo`, and reads that miss
//! its cache fail too. So a write that fails for an I/O reason closes the database and
//! opens the file again at once (redb recovers the last good commit on open, which needs
//! no free space); the failed write changed nothing and answers [`StoreError::Full`]
//! (ENOSPC, EDQUOT) or [`StoreError::Unavailable`], naming the file and the free space.
//! Reads keep working from the reopened database, and the next write succeeds as soon as
//! the filesystem has room again. [`Store::health`] says whether writes and reads work;
//! [`Store::probe`] checks both, and retries a write while writes fail, so the store
//! reports itself writable again without waiting for a client's write.
//!
//! **Order.** Writers are serialized by one lock, and a write's changes are published to
//! live watchers while that lock is still held, so watchers receive changes in commit
//! order. A watcher that falls behind the live channel catches up from the change log
//! ([`Feed`]).

mod caches;
mod disks;
mod feed;
mod network;
mod ranges;
mod tx;

pub use feed::Feed;
pub use network::HeldEni;
pub use tx::WriteTx;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use eci_api::v1::{ContainerGroup, Event, WatchEvent};
use prost::Message;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};
use tokio::sync::{broadcast, watch};

use crate::error::chain;
use crate::images::ImageRecord;
use crate::images::digest::Digest;
use crate::images::layers::UnpackedLayer;

/// Group name → encoded `ContainerGroup`.
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// Revision → encoded `Event`.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Revision → encoded `WatchEvent`.
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
/// Counters (`revision`, `probe`).
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
/// How many changes the live channel holds for a watcher that is busy; one that falls
/// further behind catches up from the change log. Small, because each holds a whole group.
pub const LIVE_CHANNEL: usize = 256;
/// How many bytes of encoded changes one read of the change log holds at most.
pub const PAGE_BYTES: usize = 4 << 20;
/// How often [`Store::probe`] tries a write while writes fail.
const PROBE_WRITE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// How many changes one read of the change log returns: a replay holds at most this many
/// in memory.
pub const PAGE: usize = 256;

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
    /// A write failed because the filesystem of the database is full (ENOSPC, EDQUOT).
    #[error(
        "state database {path}: the filesystem is full ({free}); nothing was changed, writes resume once space is freed"
    )]
    Full {
        path: String,
        free: String,
        #[source]
        source: std::io::Error,
    },
    /// A write failed for another I/O reason, or the database could not be opened again.
    #[error("state database {path} cannot be written ({free}); nothing was changed")]
    Unavailable {
        path: String,
        free: String,
        #[source]
        source: Box<redb::Error>,
    },
    /// The database could not be opened again after a failed write; reads fail too.
    #[error("state database {path} cannot be opened")]
    Down {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("reading the change log: {0}")]
    Task(String),
    /// The live channel skipped revisions the change log does not have either: a bug.
    #[error("the change log has no revisions between {after} and {next}")]
    Gap { after: u64, next: u64 },
}

impl StoreError {
    /// Whether the store could not write (full or failing filesystem), as opposed to a
    /// refused or invalid write: such a write may succeed when retried later.
    pub fn is_unwritable(&self) -> bool {
        match self {
            StoreError::Full { .. } | StoreError::Unavailable { .. } | StoreError::Down { .. } => {
                true
            }
            StoreError::Db(e) => io_cause(e).is_some() || matches!(e, redb::Error::PreviousIo),
            _ => false,
        }
    }

    /// Whether the cause is a full filesystem or quota.
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::Full { .. } => true,
            StoreError::Db(e) => io_cause(e).is_some_and(is_enospc),
            _ => false,
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn decode<M: Message + Default>(key: impl ToString, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

/// Whether one part of the store works, and since when it is in that state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHealth {
    pub ok: bool,
    /// CamelCase reason: `Writable`, `StorageFull`, `StorageUnavailable`, `Readable`,
    /// `ReadFailed`.
    pub reason: &'static str,
    pub message: String,
    /// RFC 3339 time of the last change of `ok`.
    pub since: String,
}

impl PartHealth {
    fn ok(reason: &'static str) -> Self {
        PartHealth {
            ok: true,
            reason,
            message: String::new(),
            since: crate::clock::now(),
        }
    }
}

/// Whether the store can write and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    pub write: PartHealth,
    pub read: PartHealth,
}

/// Opens the database file (a hook so tests can put a failing backend under it).
type Opener = Box<dyn Fn(&Path) -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// The open database and how many times it was opened, so that threads which saw the
/// same failure reopen it once.
struct Slot {
    db: Option<Database>,
    opened: u64,
}

/// The agent's durable state.
pub struct Store {
    path: PathBuf,
    opener: Opener,
    /// Readers hold the read side for a whole read; reopening takes the write side, so the
    /// old database (and its file lock) is gone before the file is opened again.
    slot: RwLock<Slot>,
    /// Serializes writers, and with them the publication of their changes.
    writer: Mutex<()>,
    changes: broadcast::Sender<WatchEvent>,
    health: watch::Sender<StoreHealth>,
    /// When [`Store::probe`] last tried a write (each failed write reopens the file).
    probed: Mutex<Option<std::time::Instant>>,
}

/// A read snapshot; holds the slot's read side so the database is not reopened under it.
struct Snapshot<'a> {
    tx: ReadTransaction,
    _slot: std::sync::RwLockReadGuard<'a, Slot>,
}

/// redb's page cache. Its default (1 GiB) would let the agent's memory grow with the
/// file after a burst of large specs and stay there; the hot set (groups, the recent
/// change log) is far smaller.
const CACHE_BYTES: usize = 64 << 20;

impl Store {
    /// Opens (or creates) the database file and its tables.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(
            path,
            Box::new(|p| redb::Builder::new().set_cache_size(CACHE_BYTES).create(p)),
        )
    }

    fn open_with(path: &Path, opener: Opener) -> Result<Self> {
        let db = opener(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        create_tables(&db)?;
        let (changes, _) = broadcast::channel(LIVE_CHANNEL);
        let (health, _) = watch::channel(StoreHealth {
            write: PartHealth::ok("Writable"),
            read: PartHealth::ok("Readable"),
        });
        Ok(Store {
            path: path.to_path_buf(),
            opener,
            slot: RwLock::new(Slot {
                db: Some(db),
                opened: 1,
            }),
            writer: Mutex::new(()),
            changes,
            health,
            probed: Mutex::new(None),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Live changes after the moment of subscription. A receiver that lags loses changes:
    /// use [`Feed`], which catches up from the change log.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.changes.subscribe()
    }

    /// Whether writes and reads work now; changes are announced on the receiver.
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.health.subscribe()
    }

    fn set_health(&self, write: Option<PartHealth>, read: Option<PartHealth>) {
        self.health.send_if_modified(|h| {
            let mut changed = false;
            for (now, new) in [(&mut h.write, write), (&mut h.read, read)] {
                let Some(mut new) = new else { continue };
                if now.ok == new.ok && now.reason == new.reason && now.message == new.message {
                    continue;
                }
                if now.ok == new.ok {
                    new.since = now.since.clone();
                }
                *now = new;
                changed = true;
            }
            changed
        });
    }

    fn read_slot(&self) -> std::sync::RwLockReadGuard<'_, Slot> {
        self.slot.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the database and opens the file again, unless another thread did so since
    /// the caller saw generation `seen`. redb recovers the last good commit on open.
    fn reopen(&self, seen: u64) -> Result<()> {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        if slot.opened != seen && slot.db.is_some() {
            return Ok(());
        }
        // Dropping closes the file and releases its lock before it is opened again.
        slot.db = None;
        slot.opened += 1;
        match (self.opener)(&self.path) {
            Ok(db) => {
                tracing::info!(path = %self.path.display(), "state database reopened");
                slot.db = Some(db);
                Ok(())
            }
            Err(source) => {
                tracing::error!(path = %self.path.display(), error = %source, "state database cannot be reopened");
                Err(StoreError::Down {
                    path: self.path.display().to_string(),
                    source,
                })
            }
        }
    }

    /// A read snapshot, reopening the database when an earlier failure closed it.
    fn snapshot(&self) -> Result<Snapshot<'_>> {
        loop {
            let slot = self.read_slot();
            if let Some(db) = &slot.db {
                let tx = db.begin_read().map_err(db_err)?;
                return Ok(Snapshot { tx, _slot: slot });
            }
            let seen = slot.opened;
            drop(slot);
            self.reopen(seen)?;
        }
    }

    /// Runs one read; an I/O failure reopens the database for the next one.
    fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T>) -> Result<T> {
        let seen = self.read_slot().opened;
        let out = self.snapshot().and_then(|s| f(&s.tx));
        if let Err(e) = &out
            && e.is_unwritable()
        {
            self.set_health(
                None,
                Some(PartHealth {
                    ok: false,
                    reason: "ReadFailed",
                    message: chain(e),
                    since: crate::clock::now(),
                }),
            );
            let _ = self.reopen(seen);
        }
        out
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
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let slot = self.read_slot();
        let seen = slot.opened;
        let Some(db) = &slot.db else {
            drop(slot);
            if let Err(e) = self.reopen(seen) {
                return Err(self.write_failed(e).into());
            }
            drop(_writer);
            return self.write_with(durability, f);
        };
        let begun = db.begin_write().map_err(db_err).and_then(|mut tx| {
            tx.set_durability(durability)
                .map_err(|e| StoreError::Durability(e.to_string()))?;
            let revision = {
                let meta = tx.open_table(META).map_err(db_err)?;
                meta.get("revision")
                    .map_err(db_err)?
                    .map_or(0, |v| v.value())
            };
            Ok((tx, revision))
        });
        let (tx, revision) = match begun {
            Ok(b) => b,
            Err(e) => {
                drop(slot);
                return Err(self.after_failure(e, seen).into());
            }
        };
        let mut w = WriteTx {
            tx,
            revision,
            changes: Vec::new(),
            _store: std::marker::PhantomData,
        };
        let out = match f(&mut w) {
            Ok(out) => out,
            Err(e) => {
                drop(w);
                // The error may be redb's (surfaced through `f`): when the database latched
                // it, reopen so reads and later writes work.
                if db.begin_write().is_err() {
                    drop(slot);
                    let _ = self.reopen(seen);
                }
                return Err(e);
            }
        };
        let WriteTx {
            tx,
            revision,
            changes,
            ..
        } = w;
        if let Err(e) = finish(tx, revision) {
            drop(slot);
            return Err(self.after_failure(e, seen).into());
        }
        drop(slot);
        self.writes_work();
        // Still holding the writer lock: watchers get changes in commit order.
        for c in changes {
            // No receiver is fine: nobody is watching.
            let _ = self.changes.send(c);
        }
        Ok(out)
    }

    /// A write failed: an I/O failure reopens the database (redb latches it) and is
    /// answered as [`StoreError::Full`] or [`StoreError::Unavailable`].
    fn after_failure(&self, e: StoreError, seen: u64) -> StoreError {
        if !e.is_unwritable() {
            return e;
        }
        let e = self.write_failed(e);
        if let Err(down) = self.reopen(seen) {
            self.set_health(
                None,
                Some(PartHealth {
                    ok: false,
                    reason: "ReadFailed",
                    message: chain(&down),
                    since: crate::clock::now(),
                }),
            );
        }
        e
    }

    /// Names the file and its free space in a write error, and records the store as not
    /// writable.
    fn write_failed(&self, e: StoreError) -> StoreError {
        let path = self.path.display().to_string();
        let free = free_space(&self.path);
        let e = match e {
            StoreError::Db(redb::Error::Io(source)) if is_enospc(&source) => {
                StoreError::Full { path, free, source }
            }
            StoreError::Db(source) => StoreError::Unavailable {
                path,
                free,
                source: Box::new(source),
            },
            other => other,
        };
        let full = e.is_full();
        tracing::warn!(error = %chain(&e), "state store write failed");
        self.set_health(
            Some(PartHealth {
                ok: false,
                reason: if full {
                    "StorageFull"
                } else {
                    "StorageUnavailable"
                },
                message: chain(&e),
                since: crate::clock::now(),
            }),
            None,
        );
        e
    }

    /// A write went through. After a full disk, that alone says little: a small write
    /// fits in pages redb freed inside its file while a Create still fails, and the
    /// condition would flap. `StorageFull` is cleared once the filesystem has
    /// [`FULL_HEADROOM`] free again (or its free space cannot be read).
    fn writes_work(&self) {
        let full = {
            let h = self.health.borrow();
            !h.write.ok && h.write.reason == "StorageFull"
        };
        if full && free_bytes(&self.path).is_some_and(|b| b < FULL_HEADROOM) {
            return;
        }
        self.set_health(Some(PartHealth::ok("Writable")), None);
    }

    /// Checks that the store can be read and, while writes fail, whether they work again
    /// (a durable write of a counter no watcher sees). Updates [`Store::health`].
    pub fn probe(&self) -> Result<()> {
        match self.revision() {
            Ok(_) => self.set_health(None, Some(PartHealth::ok("Readable"))),
            Err(e) => {
                self.set_health(
                    None,
                    Some(PartHealth {
                        ok: false,
                        reason: "ReadFailed",
                        message: chain(&e),
                        since: crate::clock::now(),
                    }),
                );
                return Err(e);
            }
        }
        let writable = self.health.borrow().write.ok;
        if !writable {
            let due = {
                let mut last = self.probed.lock().unwrap_or_else(|p| p.into_inner());
                let due = last.is_none_or(|t| t.elapsed() >= PROBE_WRITE_EVERY);
                if due {
                    *last = Some(std::time::Instant::now());
                }
                due
            };
            if due {
                self.write(|tx| tx.touch())?;
            }
        }
        Ok(())
    }

    /// The revision of the last committed change.
    pub fn revision(&self) -> Result<u64> {
        self.read(read_revision)
    }

    pub fn get_group(&self, name: &str) -> Result<Option<ContainerGroup>> {
        self.read(|tx| {
            let t = tx.open_table(GROUPS).map_err(db_err)?;
            let v = t.get(name).map_err(db_err)?;
            v.map(|v| decode(name, v.value())).transpose()
        })
    }

    /// All groups (by name) and the revision they were read at, from one snapshot.
    pub fn list_groups(&self) -> Result<(Vec<ContainerGroup>, u64)> {
        self.read(|tx| {
            let t = tx.open_table(GROUPS).map_err(db_err)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                out.push(decode(k.value(), v.value())?);
            }
            Ok((out, read_revision(tx)?))
        })
    }

    /// Every image whose record parses. One that does not (say, recorded by an older
    /// agent that took a hostile digest) is left out with a warning rather than making
    /// every listing fail.
    pub fn list_images(&self) -> Result<Vec<ImageRecord>> {
        self.read(|tx| {
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
        })
    }

    pub fn get_image(&self, digest: &Digest) -> Result<Option<ImageRecord>> {
        self.read(|tx| {
            let t = tx.open_table(IMAGES).map_err(db_err)?;
            let v = t.get(digest.as_str()).map_err(db_err)?;
            v.map(|v| parse_json(digest.as_str(), v.value()))
                .transpose()
        })
    }

    /// The record of a layer this agent unpacked and verified, if any.
    pub fn get_layer(&self, diff_id: &Digest) -> Result<Option<UnpackedLayer>> {
        self.read(|tx| {
            let t = tx.open_table(LAYERS).map_err(db_err)?;
            let v = t.get(diff_id.as_str()).map_err(db_err)?;
            v.map(|v| parse_json(diff_id.as_str(), v.value()))
                .transpose()
        })
    }

    pub fn image_by_ref(&self, reference: &str) -> Result<Option<ImageRecord>> {
        self.read(|tx| {
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
        })
    }

    /// Recorded events, oldest first, optionally of one group.
    pub fn events(&self, group: Option<&str>) -> Result<Vec<Event>> {
        Ok(self.events_at(group)?.0)
    }

    /// As [`Store::events`], with the revision they were read at (to follow from).
    pub fn events_at(&self, group: Option<&str>) -> Result<(Vec<Event>, u64)> {
        self.read(|tx| {
            let t = tx.open_table(EVENTS).map_err(db_err)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let e: Event = decode(k.value(), v.value())?;
                if group.is_none_or(|g| g == e.group) {
                    out.push(e);
                }
            }
            Ok((out, read_revision(tx)?))
        })
    }

    /// At most `limit` changes after `after`, oldest first, and whether more follow. A
    /// page also stops once it holds [`PAGE_BYTES`] (but has at least one change), so a
    /// replay of huge groups stays small. Compacted when the log no longer reaches back to
    /// `after + 1`.
    pub fn changes_page(&self, after: u64, limit: usize) -> Result<(Vec<WatchEvent>, bool)> {
        self.read(|tx| {
            let t = tx.open_table(CHANGES).map_err(db_err)?;
            let oldest = t.first().map_err(db_err)?.map(|(k, _)| k.value());
            let rev = read_revision(tx)?;
            if after < rev && oldest.is_none_or(|o| o > after + 1) {
                return Err(StoreError::Compacted {
                    asked: after,
                    oldest: oldest.unwrap_or(rev),
                });
            }
            let mut out = Vec::new();
            let mut bytes = 0;
            for item in t.range(after + 1..).map_err(db_err)? {
                if out.len() >= limit || bytes >= PAGE_BYTES {
                    return Ok((out, true));
                }
                let (k, v) = item.map_err(db_err)?;
                bytes += v.value().len();
                out.push(decode(k.value(), v.value())?);
            }
            Ok((out, false))
        })
    }
}

/// Creates the tables that do not exist yet. A database that has them all is not written
/// to, so the agent starts on a full filesystem.
fn create_tables(db: &Database) -> Result<()> {
    let names: Vec<String> = {
        let tx = db.begin_read().map_err(db_err)?;
        tx.list_tables()
            .map_err(db_err)?
            .map(|t| t.name().to_string())
            .collect()
    };
    let wanted = [
        GROUPS.name(),
        EVENTS.name(),
        CHANGES.name(),
        IMAGES.name(),
        LAYERS.name(),
        REFS.name(),
        ranges::ID_RANGES.name(),
        network::ENIS.name(),
        network::DEV_ADDRESSES.name(),
        disks::DISKS.name(),
        caches::CACHES.name(),
        caches::IMAGE_USED.name(),
    ];
    if wanted.iter().all(|w| names.iter().any(|n| n == w)) && names.iter().any(|n| n == "meta") {
        return Ok(());
    }
    let tx = db.begin_write().map_err(db_err)?;
    tx.open_table(GROUPS).map_err(db_err)?;
    tx.open_table(EVENTS).map_err(db_err)?;
    tx.open_table(CHANGES).map_err(db_err)?;
    tx.open_table(META).map_err(db_err)?;
    tx.open_table(IMAGES).map_err(db_err)?;
    tx.open_table(REFS).map_err(db_err)?;
    tx.open_table(LAYERS).map_err(db_err)?;
    tx.open_table(ranges::ID_RANGES).map_err(db_err)?;
    tx.open_table(network::ENIS).map_err(db_err)?;
    tx.open_table(network::DEV_ADDRESSES).map_err(db_err)?;
    tx.open_table(disks::DISKS).map_err(db_err)?;
    tx.open_table(caches::CACHES).map_err(db_err)?;
    tx.open_table(caches::IMAGE_USED).map_err(db_err)?;
    tx.commit().map_err(db_err)
}

fn read_revision(tx: &ReadTransaction) -> Result<u64> {
    let meta = tx.open_table(META).map_err(db_err)?;
    Ok(meta
        .get("revision")
        .map_err(db_err)?
        .map_or(0, |v| v.value()))
}

/// Records the revision counter, trims the logs, commits.
fn finish(tx: redb::WriteTransaction, revision: u64) -> Result<()> {
    {
        let mut meta = tx.open_table(META).map_err(db_err)?;
        meta.insert("revision", revision).map_err(db_err)?;
        tx::trim(&tx, CHANGES, CHANGE_LOG_KEEP)?;
        tx::trim(&tx, EVENTS, EVENTS_KEEP)?;
    }
    tx.commit().map_err(db_err)
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

/// The I/O error under a redb error, if any.
fn io_cause(e: &redb::Error) -> Option<&std::io::Error> {
    match e {
        redb::Error::Io(io) => Some(io),
        _ => None,
    }
}

fn is_enospc(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ENOSPC) | Some(nix::libc::EDQUOT)
    )
}

/// Free space a filesystem needs before a store that ran out is called writable again:
/// room for a few groups at the largest spec (1.5 MiB, stored twice with its change).
const FULL_HEADROOM: u64 = 16 << 20;

/// (available, total) bytes of the filesystem holding `path`, from statvfs: what an
/// unprivileged writer may use.
fn space(path: &Path) -> nix::Result<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path.parent().unwrap_or(path))?;
    let unit = s.fragment_size();
    Ok((
        s.blocks_available().saturating_mul(unit),
        s.blocks().saturating_mul(unit),
    ))
}

fn free_bytes(path: &Path) -> Option<u64> {
    space(path).ok().map(|(free, _)| free)
}

/// "N free of M on DIR", for error messages.
fn free_space(path: &Path) -> String {
    let dir = path.parent().unwrap_or(path).display();
    match space(path) {
        Ok((free, total)) => format!(
            "{} free of {} on {dir}",
            crate::quantity::human_memory(free),
            crate::quantity::human_memory(total),
        ),
        Err(e) => format!("free space of {dir} unknown: {e}"),
    }
}

#[cfg(test)]
mod tests;
