//! Store tests: revisions, failures and recovery, exact change feeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

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
    let (changes, more) = s.changes_page(1, PAGE).expect("changes");
    assert!(!more);
    assert_eq!(
        changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
        [2, 3]
    );
    s.write(|tx| tx.delete_group("a")).expect("delete");
    assert!(s.get_group("a").expect("get").is_none());
}

/// A file backend on a filesystem that fills up: while `limit` is set, writes past it
/// fail with ENOSPC. Below it the blocks exist already and overwriting them needs no
/// space; growing the file (sparse, as redb does) needs none either.
#[derive(Debug)]
struct Filling {
    file: redb::backends::FileBackend,
    limit: Arc<AtomicU64>,
    /// The errno of a refused write.
    errno: Arc<AtomicI32>,
}

impl redb::StorageBackend for Filling {
    fn len(&self) -> std::result::Result<u64, std::io::Error> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), std::io::Error> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::result::Result<(), std::io::Error> {
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
        if offset + data.len() as u64 > self.limit.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(
                self.errno.load(Ordering::SeqCst),
            ));
        }
        self.file.write(offset, data)
    }
    fn close(&self) -> std::result::Result<(), std::io::Error> {
        self.file.close()
    }
}

fn filling_store(path: &Path, errno: i32) -> (Store, Arc<AtomicU64>) {
    let limit = Arc::new(AtomicU64::new(u64::MAX));
    let l = limit.clone();
    let errno = Arc::new(AtomicI32::new(errno));
    let store = Store::open_with(
        path,
        Box::new(move |p| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)?;
            redb::Builder::new().create_with_backend(Filling {
                file: redb::backends::FileBackend::new(file)?,
                limit: l.clone(),
                errno: errno.clone(),
            })
        }),
    )
    .expect("open");
    (store, limit)
}

/// A group too big for the room left in the file.
fn big(name: &str) -> ContainerGroup {
    ContainerGroup {
        id: "x".repeat(4 << 20),
        ..group(name)
    }
}

#[test]
fn a_full_disk_fails_writes_keeps_reads_and_recovers_without_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let (s, limit) = filling_store(&path, nix::libc::ENOSPC);
    for i in 0..20 {
        s.write(|tx| tx.insert_group(&mut group(&format!("g{i}"))))
            .expect("insert");
    }
    let rev = s.revision().expect("rev");
    limit.store(
        std::fs::metadata(&path).expect("len").len(),
        Ordering::SeqCst,
    );
    for attempt in 0..3 {
        let err = s
            .write(|tx| tx.insert_group(&mut big("new")))
            .expect_err("full");
        // Every attempt says why, not a latched PreviousIo.
        assert!(matches!(err, StoreError::Full { .. }), "{attempt}: {err:?}");
        let msg = chain(&err);
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("free of"), "{msg}");
        assert!(err.is_full() && err.is_unwritable());
        let h = s.health().borrow().clone();
        assert!(!h.write.ok && h.write.reason == "StorageFull", "{h:?}");
        // Reads work meanwhile, and nothing changed.
        assert_eq!(s.list_groups().expect("list").0.len(), 20);
        assert!(s.get_group("g3").expect("get").is_some());
        assert!(s.get_group("new").expect("get").is_none());
        assert_eq!(s.revision().expect("rev"), rev);
        assert_eq!(s.changes_page(rev, PAGE).expect("changes").0.len(), 0);
    }
    // Space comes back: the probe sees it, and the write goes through.
    limit.store(u64::MAX, Ordering::SeqCst);
    *s.probed.lock().expect("lock") = None;
    s.probe().expect("probe");
    assert!(s.health().borrow().write.ok);
    s.write(|tx| tx.insert_group(&mut big("new")))
        .expect("writes resume");
    assert_eq!(s.revision().expect("rev"), rev + 1);
    drop(s);
    let s = Store::open(&path).expect("reopen");
    assert_eq!(s.list_groups().expect("list").0.len(), 21);
}

#[test]
fn another_io_failure_is_unavailable_and_recovers_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let (s, limit) = filling_store(&path, nix::libc::EIO);
    s.write(|tx| tx.insert_group(&mut group("a")))
        .expect("insert");
    limit.store(
        std::fs::metadata(&path).expect("len").len(),
        Ordering::SeqCst,
    );
    for _ in 0..2 {
        let err = s
            .write(|tx| tx.insert_group(&mut big("b")))
            .expect_err("EIO");
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert!(err.is_unwritable() && !err.is_full());
        assert!(chain(&err).contains(&path.display().to_string()));
        assert_eq!(s.health().borrow().write.reason, "StorageUnavailable");
        assert!(s.get_group("a").expect("read").is_some());
    }
    limit.store(u64::MAX, Ordering::SeqCst);
    s.write(|tx| tx.insert_group(&mut big("b")))
        .expect("recovers");
    assert!(s.health().borrow().write.ok);
}

#[test]
fn pages_of_the_change_log_are_bounded_in_count_and_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&dir.path().join("state.redb")).expect("open");
    for i in 0..6 {
        // About 1 MiB each: four fill a page's byte budget.
        let mut g = ContainerGroup {
            id: "x".repeat(1 << 20),
            ..group(&format!("g{i}"))
        };
        s.write(|tx| tx.insert_group(&mut g)).expect("insert");
    }
    let (page, more) = s.changes_page(0, PAGE).expect("page");
    assert!(more && page.len() == 4, "{} {more}", page.len());
    let (page, more) = s.changes_page(4, PAGE).expect("page");
    assert!(!more && page.len() == 2, "{} {more}", page.len());
    let (page, more) = s.changes_page(0, 3).expect("page");
    assert!(more && page.len() == 3);
}

#[test]
fn a_write_refused_by_its_closure_does_not_count_as_a_store_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&dir.path().join("state.redb")).expect("open");
    s.write(|tx| tx.insert_group(&mut group("a")))
        .expect("insert");
    let err = s
        .write(|tx| tx.insert_group(&mut group("a")))
        .expect_err("dup");
    assert!(!err.is_unwritable());
    assert!(s.health().borrow().write.ok);
}

/// Writers on several threads, one feed that reads slowly enough to overflow the live
/// channel, one that keeps up: both get every revision once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_are_exact_under_concurrent_writers_and_lag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Arc::new(Store::open(&dir.path().join("state.redb")).expect("open"));
    s.write(|tx| tx.insert_group(&mut group("before")))
        .expect("insert");
    let mut fast = Feed::new(s.clone(), 0);
    let mut slow = Feed::new(s.clone(), 0);
    let per = 150;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    s.write_lazy(|tx| {
                        tx.event(Event {
                            group: format!("w{w}"),
                            reason: format!("R{i}"),
                            ..Default::default()
                        })
                    })
                    .expect("event");
                }
            })
        })
        .collect();
    let total = 1 + 4 * per as u64;
    let fast_task = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < total as usize {
            got.push(fast.next().await.expect("next").expect("open").revision);
        }
        got
    });
    // The slow one reads nothing until the writers are done: far behind the live channel.
    for w in writers {
        w.join().expect("writer");
    }
    let mut got = Vec::new();
    while got.len() < total as usize {
        got.push(slow.next().await.expect("next").expect("open").revision);
        if got.len() % 100 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let want: Vec<u64> = (1..=total).collect();
    assert_eq!(got, want, "slow feed");
    assert_eq!(fast_task.await.expect("fast"), want, "fast feed");
}

#[tokio::test]
async fn a_feed_past_the_change_log_is_compacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Arc::new(Store::open(&dir.path().join("state.redb")).expect("open"));
    s.write_lazy(|tx| {
        for i in 0..CHANGE_LOG_KEEP + 5 {
            tx.event(Event {
                group: "g".into(),
                reason: format!("R{i}"),
                ..Default::default()
            })?;
        }
        Ok::<_, StoreError>(())
    })
    .expect("events");
    let mut feed = Feed::new(s.clone(), 2);
    assert!(matches!(
        feed.fill().await,
        Err(StoreError::Compacted { asked: 2, .. })
    ));
    // From the oldest kept change it replays all of them, a page at a time.
    let mut feed = Feed::new(s, 5);
    let mut n = 0;
    let mut last = 5;
    while last < CHANGE_LOG_KEEP + 5 {
        let ev = feed.next().await.expect("next").expect("open");
        assert_eq!(ev.revision, last + 1);
        last = ev.revision;
        n += 1;
    }
    assert_eq!(n, CHANGE_LOG_KEEP);
}

#[test]
fn id_ranges_take_the_lowest_free_slot_and_a_full_pool_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&dir.path().join("state.redb")).expect("open");
    let take = |name: &str, pool: u32| {
        s.write(|tx| {
            let slot = tx.allocate_range(name, pool)?;
            if slot.is_some() {
                tx.insert_group(&mut group(name))?;
            }
            Ok::<_, StoreError>(slot)
        })
        .expect("write")
    };
    assert_eq!(take("a", 3), Some(0));
    assert_eq!(take("b", 3), Some(1));
    assert_eq!(take("c", 3), Some(2));
    let rev = s.revision().expect("rev");
    assert_eq!(take("d", 3), None, "pool of 3 is full");
    assert_eq!(s.revision().expect("rev"), rev, "nothing written");
    assert_eq!(s.ranges().expect("ranges").len(), 3);
    // A group that holds a slot keeps it.
    assert_eq!(
        s.write(|tx| tx.allocate_range("b", 3)).expect("again"),
        Some(1)
    );
    // Removing the group record gives the slot back; the lowest free one is reused.
    s.write(|tx| tx.delete_group("b")).expect("delete");
    assert_eq!(
        s.ranges().expect("ranges"),
        [(0, "a".to_string()), (2, "c".to_string())]
    );
    assert_eq!(take("d", 3), Some(1));
    assert_eq!(take("e", 3), None);
}

#[test]
fn an_aborted_write_takes_no_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&dir.path().join("state.redb")).expect("open");
    s.write(|tx| {
        tx.allocate_range("a", 4)?;
        tx.insert_group(&mut group("a"))
    })
    .expect("a");
    // The name is taken: the whole transaction, the slot included, is dropped.
    let err = s
        .write(|tx| {
            tx.allocate_range("x", 4)?;
            tx.insert_group(&mut group("a"))
        })
        .expect_err("dup");
    assert!(matches!(err, StoreError::Exists(_)), "{err}");
    assert_eq!(s.ranges().expect("ranges"), [(0, "a".to_string())]);
}
