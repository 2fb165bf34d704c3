//! Unit tests of image caches and garbage collection, on a real store and image store in
//! a temp dir (no root needed).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use eci_api::v1::{Container, CreateImageCacheRequest, GroupSpec, ImageCacheSelector};
use eci_runtime::HostFacts;
use eci_tests::oci::{self, TarEntry};

use super::*;
use crate::images::ImageStore;
use crate::images::gc::GcPolicy;
use crate::node::Node;
use crate::sizes::Size;
use crate::store::Store;

fn groups(dir: &Path) -> Arc<Groups> {
    let store = Arc::new(Store::open(&dir.join("state.redb")).expect("store"));
    let images = ImageStore::open(dir, store.clone()).expect("images");
    let size = Size {
        cpu_millis: 8000,
        memory_bytes: 16 << 30,
    };
    let node = Node {
        hostname: "test".into(),
        gpus: 0,
        capacity: size,
        allocatable: size,
        facts: HostFacts::probe(Path::new("/sys/fs/cgroup")).expect("facts"),
    };
    Arc::new(Groups::new(store, node, images))
}

/// Imports a one-layer image whose file says `tag`, as `reference`.
fn import(g: &Groups, reference: &str, tag: &str) -> ImageRecord {
    let image = oci::Image {
        layers: vec![oci::tar(&[TarEntry::File {
            path: "etc/which",
            data: tag.as_bytes(),
            mode: 0o644,
        }])],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    let archive = oci::archive(&image, Some(reference));
    g.images()
        .import(&archive[..], None)
        .expect("import")
        .remove(0)
}

fn policy(high: u8, low: u8) -> ImagesPolicy {
    ImagesPolicy {
        gc: GcPolicy {
            high_percent: high,
            low_percent: low,
            min_age: Duration::ZERO,
        },
        interval: Duration::from_secs(3600),
        retention_day: Duration::from_millis(200),
    }
}

fn request(name: &str, images: &[&str]) -> CreateImageCacheRequest {
    CreateImageCacheRequest {
        name: name.into(),
        images: images.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn wait_status(c: &ImageCaches, name: &str, want: &str) -> CacheRecord {
    for _ in 0..200 {
        let r = c.get(name).await.expect("get");
        if r.status == want {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never became {want}: {:?}", c.get(name).await);
}

#[test]
fn create_requests_are_checked_naming_the_field() {
    let many: Vec<String> = (0..21).map(|i| format!("img{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for (req, field) in [
        (request("Warm_1", &["busybox"]), "name"),
        (request("warm-1", &[]), "images"),
        (request("warm-1", &many), "images"),
        (
            request("warm-1", &["busybox", "docker.io/library/busybox:latest"]),
            "images[1]",
        ),
        (request("warm-1", &["UPPER/case"]), "images[0]"),
    ] {
        let err = check_request(&req).expect_err(field).to_string();
        assert!(err.starts_with(&format!("{field}: ")), "{field}: {err}");
    }
    let mut r = request("warm-1", &["busybox"]);
    r.retention_days = MAX_RETENTION_DAYS + 1;
    assert!(
        check_request(&r)
            .expect_err("days")
            .to_string()
            .starts_with("retentionDays: ")
    );
    assert_eq!(
        check_request(&request("warm-1", &["busybox"])).expect("ok"),
        ["docker.io/library/busybox:latest"]
    );
}

fn cache(name: &str, status: &str, created: &str, refs: &[&str]) -> CacheRecord {
    let digest: Digest = format!("sha256:{}", "a".repeat(64))
        .parse()
        .expect("digest");
    CacheRecord {
        name: name.into(),
        images: refs.iter().map(|s| s.to_string()).collect(),
        pinned: refs
            .iter()
            .map(|r| PinnedImage {
                reference: r.to_string(),
                digest: digest.clone(),
            })
            .collect(),
        status: status.into(),
        message: String::new(),
        created_at: created.into(),
        retention_days: 0,
        size_bytes: 0,
        had_credentials: false,
    }
}

#[test]
fn select_names_or_auto_matches_the_newest_ready_cache() {
    let caches = vec![
        cache("old", READY, "2026-01-01T00:00:00.000000000Z", &["a", "b"]),
        cache(
            "new",
            READY,
            "2026-02-01T00:00:00.000000000Z",
            &["a", "b", "c"],
        ),
        cache(
            "newest",
            CREATING,
            "2026-03-01T00:00:00.000000000Z",
            &["a", "b"],
        ),
        cache("only-a", READY, "2026-04-01T00:00:00.000000000Z", &["a"]),
        cache("broken", FAILED, "2026-05-01T00:00:00.000000000Z", &["a"]),
    ];
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let auto = ImageCacheSelector {
        auto_match: true,
        ..Default::default()
    };
    let named = |n: &str| ImageCacheSelector {
        name: n.into(),
        auto_match: false,
    };
    let pick = |sel: &ImageCacheSelector, w: &[&str]| {
        select(Some(sel), &caches, &want(w)).map(|c| c.map(|c| c.name.clone()))
    };
    assert_eq!(pick(&auto, &["a", "b"]), Ok(Some("new".into())));
    assert_eq!(pick(&auto, &["a"]), Ok(Some("only-a".into())));
    assert_eq!(pick(&auto, &["z"]), Ok(None), "no match is no error");
    assert_eq!(pick(&named("old"), &["a"]), Ok(Some("old".into())));
    type Picked = std::result::Result<Option<String>, (&'static str, String)>;
    let err = |r: Picked| r.expect_err("refused");
    let (reason, msg) = err(pick(&named("gone"), &["a"]));
    assert_eq!(reason, "ImageCacheNotFound");
    assert!(msg.contains("\"gone\""), "{msg}");
    let (reason, msg) = err(pick(&named("newest"), &["a"]));
    assert_eq!(reason, "ImageCacheNotReady");
    assert!(msg.contains("Creating"), "{msg}");
    assert_eq!(reason, NOT_READY, "a cache being created is waited for");
    let (reason, msg) = err(pick(&named("broken"), &["a"]));
    assert_eq!(
        reason, "ImageCacheFailed",
        "a failed cache is not waited for"
    );
    assert!(msg.contains("is Failed"), "{msg}");
    assert_eq!(
        pick(&auto, &["a"]),
        Ok(Some("only-a".into())),
        "auto-match skips it"
    );
    let (reason, msg) = err(pick(&named("old"), &["a", "c"]));
    assert_eq!(reason, "ImageCacheMismatch");
    assert!(msg.contains("does not hold c"), "{msg}");
    assert_eq!(select(None, &caches, &want(&["a"])), Ok(None));
}

fn group_spec(name: &str, image: &str) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        cpu: "1".into(),
        memory: "2Gi".into(),
        containers: vec![Container {
            name: "c".into(),
            image: image.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_pin_their_images_until_deleted_and_gc_spares_what_is_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = groups(dir.path());
    let cached = import(&g, "demo/cached:1", "cached");
    let used = import(&g, "demo/used:1", "used");
    let unused = import(&g, "demo/unused:1", "unused");
    let caches = ImageCaches::new(
        g.clone(),
        Arc::new(PresentImages::new(g.clone())),
        policy(0, 0),
    );

    let c = caches
        .create(request("warm-1", &["demo/cached:1"]))
        .await
        .expect("create");
    assert_eq!(c.status, CREATING);
    let c = wait_status(&caches, "warm-1", READY).await;
    assert_eq!(c.pinned[0].digest, cached.digest);
    assert_eq!(c.size_bytes, cached.size());
    let again = caches.create(request("warm-1", &["demo/cached:1"])).await;
    assert!(matches!(again, Err(Error::CacheExists(_))), "{again:?}");

    // An image that is not on the node fails the cache, saying why.
    caches
        .create(request("cold", &["demo/cached:1", "demo/absent:1"]))
        .await
        .expect("create");
    let f = wait_status(&caches, "cold", FAILED).await;
    assert!(
        f.message.contains("images[1] docker.io/demo/absent:1")
            && f.message.contains("pulling is not wired here yet"),
        "{}",
        f.message
    );
    assert!(f.pinned.is_empty(), "a failed cache pins nothing");

    // A cached image cannot be removed; the error names the cache.
    let err = g
        .images()
        .remove("demo/cached:1", holder)
        .expect_err("pinned");
    assert!(
        err.to_string().contains("pinned by image cache \"warm-1\""),
        "{err}"
    );
    // Nor one an unfinished group uses; the error names the group.
    g.create(group_spec("web", "demo/used:1")).expect("group");
    let err = g.images().remove("demo/used:1", holder).expect_err("used");
    assert!(err.to_string().contains("used by group \"web\""), "{err}");

    // GC with a zero watermark removes only what nothing holds.
    let removed = caches.collect_images().await.expect("gc");
    assert_eq!(
        removed.iter().map(|i| &i.digest).collect::<Vec<_>>(),
        [&unused.digest]
    );
    let left: Vec<_> = g
        .images()
        .list()
        .expect("list")
        .into_iter()
        .map(|i| i.digest)
        .collect();
    assert!(
        left.contains(&cached.digest) && left.contains(&used.digest),
        "{left:?}"
    );
    let events = g.store().events(Some("")).expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.reason == "ImageGarbageCollected" && e.message.contains("demo/unused:1")),
        "{events:?}"
    );

    // Deleting the cache unpins: the image can go now.
    caches.delete("warm-1").await.expect("delete");
    assert!(matches!(
        caches.delete("warm-1").await,
        Err(Error::CacheNotFound(_))
    ));
    g.images()
        .remove("demo/cached:1", holder)
        .expect("unpinned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_everything_below_the_high_watermark_and_recent_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = groups(dir.path());
    import(&g, "demo/unused:1", "unused");
    let source = Arc::new(PresentImages::new(g.clone()));
    let caches = ImageCaches::new(g.clone(), source.clone(), policy(100, 0));
    assert!(caches.collect_images().await.expect("gc").is_empty());
    let mut young = policy(0, 0);
    young.gc.min_age = Duration::from_secs(3600);
    let caches = ImageCaches::new(g.clone(), source, young);
    assert!(caches.collect_images().await.expect("gc").is_empty());
    assert_eq!(g.images().list().expect("list").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_left_creating_by_a_crash_resumes_or_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = groups(dir.path());
    let image = import(&g, "demo/a:1", "a");
    let mut left = cache("left", CREATING, &crate::clock::now(), &[]);
    left.images = vec!["docker.io/demo/a:1".into()];
    let mut secret = left.clone();
    secret.name = "secret".into();
    secret.had_credentials = true;
    g.store()
        .write(|tx| {
            tx.put_cache(&left)?;
            tx.put_cache(&secret)
        })
        .expect("store");
    let caches = ImageCaches::new(
        g.clone(),
        Arc::new(PresentImages::new(g.clone())),
        policy(100, 100),
    );
    assert_eq!(caches.resume().await.expect("resume"), ["left"]);
    let r = wait_status(&caches, "left", READY).await;
    assert_eq!(r.pinned[0].digest, image.digest);
    let s = caches.get("secret").await.expect("get");
    assert_eq!(s.status, FAILED);
    assert!(
        s.message.contains("credentials are never stored"),
        "{}",
        s.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_caches_are_removed_with_an_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = groups(dir.path());
    import(&g, "demo/a:1", "a");
    let caches = ImageCaches::new(
        g.clone(),
        Arc::new(PresentImages::new(g.clone())),
        policy(100, 100),
    );
    let mut r = request("short", &["demo/a:1"]);
    r.retention_days = 1;
    caches.create(r).await.expect("short");
    caches
        .create(request("kept", &["demo/a:1"]))
        .await
        .expect("kept");
    wait_status(&caches, "short", READY).await;
    assert!(caches.expire().await.expect("expire").is_empty(), "not yet");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(caches.expire().await.expect("expire"), ["short"]);
    assert!(caches.get("kept").await.is_ok());
    let events = g.store().events(Some("")).expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.reason == "ImageCacheExpired" && e.message.contains("short")),
        "{events:?}"
    );
}

#[test]
fn a_group_holds_the_image_it_runs_after_its_reference_moved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = groups(dir.path());
    let old = import(&g, "demo/app:1", "old");
    g.create(group_spec("web", "demo/app:1")).expect("group");
    // The group started from `old` (as the supervisor records it) ...
    g.store()
        .write(|tx| {
            let mut group = tx.get_group("web")?.expect("web");
            let st = group.status.as_mut().expect("status");
            st.container_statuses[0].image_id = old.digest.to_string();
            tx.update_group(&mut group)
        })
        .expect("status");
    // ... then the reference moved to another image.
    let new = import(&g, "demo/app:1", "new");
    assert_ne!(old.digest, new.digest);
    let by = g
        .store()
        .write(|tx| holder(tx, &g.images().get(old.digest.as_str()).expect("old")))
        .expect("holder");
    assert_eq!(by.as_deref(), Some("used by group \"web\""));
    let by = g.store().write(|tx| holder(tx, &new)).expect("holder");
    assert_eq!(by.as_deref(), Some("used by group \"web\""), "by reference");
}

/// A source that waits for the test before answering from the store: a slow pull.
struct Gated {
    inner: PresentImages,
    open: tokio::sync::Semaphore,
}

impl ImageSource for Gated {
    fn obtain<'a>(
        &'a self,
        reference: &'a str,
        credentials: &'a [RegistryCredential],
    ) -> BoxFuture<'a, Result<ImageRecord, SourceError>> {
        Box::pin(async move {
            let _pass = self
                .open
                .acquire()
                .await
                .map_err(|e| Box::new(e) as SourceError)?;
            self.inner.obtain(reference, credentials).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_deleted_and_created_again_while_filling_ends_ready_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = groups(dir.path());
    import(&g, "demo/a:1", "a");
    let gated = Arc::new(Gated {
        inner: PresentImages::new(g.clone()),
        open: tokio::sync::Semaphore::new(0),
    });
    let caches = ImageCaches::new(g.clone(), gated.clone(), policy(100, 100));
    caches
        .create(request("x", &["demo/a:1"]))
        .await
        .expect("first");
    caches.delete("x").await.expect("delete");
    // Distinct creation times.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = caches
        .create(request("x", &["demo/a:1"]))
        .await
        .expect("second");
    assert_eq!(caches.get("x").await.expect("get").status, CREATING);
    gated.open.add_permits(10);
    let r = wait_status(&caches, "x", READY).await;
    assert_eq!(r.created_at, second.created_at);
    assert_eq!(r.pinned.len(), 1, "pinned once: {r:?}");
    let readies = g
        .store()
        .events(Some(""))
        .expect("events")
        .into_iter()
        .filter(|e| e.reason == "ImageCacheReady")
        .count();
    assert_eq!(readies, 1);
}
