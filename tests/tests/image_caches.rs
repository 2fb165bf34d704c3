//! Image caches and image garbage collection (issue 7, items 6 and 7), through ecictl,
//! on imported images (registry pulls are not wired into caches here).

use std::time::Duration;

use eci_tests::scenario::{IMAGE, busybox_agent_with, group, import, phase, wait_phase};
use eci_tests::{Agent, oci, text, wait_for};

/// Garbage collection off, so that only the GC test removes images.
const NO_GC: &str = "[images]\ngc_high_percent = 100\ngc_low_percent = 100\n";

/// A variant of the busybox test image (same layer, another config: another digest).
fn variant(agent: &Agent, reference: &str, marker: &str) {
    let image = oci::Image {
        layers: vec![oci::busybox_layer().expect("busybox-static")],
        cmd: vec!["sh".into()],
        env: vec![format!("VARIANT={marker}")],
        ..Default::default()
    };
    import(agent, &image, reference);
}

fn cache_json(agent: &Agent, name: &str) -> Option<serde_json::Value> {
    let out = agent.ctl(&["cache", "get", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("cache json"))
}

/// Waits up to 20 s for the cache's status; returns its JSON.
fn wait_cache(agent: &Agent, name: &str, want: &str) -> serde_json::Value {
    wait_for(Duration::from_secs(20), || {
        cache_json(agent, name).filter(|c| c["status"] == want)
    })
    .unwrap_or_else(|| panic!("cache {name} never {want}: {:?}", cache_json(agent, name)))
}

fn events(agent: &Agent, group: Option<&str>) -> String {
    match group {
        Some(g) => text(&agent.ctl(&["events", "--group", g])),
        None => text(&agent.ctl(&["events"])),
    }
}

fn image_list(agent: &Agent) -> String {
    text(&agent.ctl(&["images", "ls"]))
}

#[test]
fn groups_start_from_named_and_auto_matched_caches_which_pin_their_images() {
    // Room for three 1-vCPU groups on a small machine.
    let agent = busybox_agent_with(&format!("{NO_GC}[node]\ncpu = \"8\"\n"));
    let out = agent.ctl(&["cache", "create", "warm-1", "--image", IMAGE]);
    assert!(out.status.success(), "{}", text(&out));
    let c = wait_cache(&agent, "warm-1", "Ready");
    assert_eq!(c["images"][0], IMAGE, "{c}");
    // uint64 is a string in the JSON mapping.
    let size: u64 = c["sizeBytes"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(size > 0, "{c}");
    let ls = text(&agent.ctl(&["cache", "ls"]));
    assert!(ls.contains("warm-1") && ls.contains("Ready"), "{ls}");
    assert!(events(&agent, None).contains("image cache warm-1 is ready"));

    // autoMatch: the newest Ready cache holding every image of the group.
    let spec = group(
        "auto",
        "Always",
        &[("c", "sleep 3600")],
        "imageCache:\n  autoMatch: true\n",
    );
    let out = agent.apply("auto", &spec);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "auto", "Running");
    let ev = events(&agent, Some("auto"));
    assert!(ev.contains("hit image cache warm-1"), "{ev}");

    // By name.
    let spec = group(
        "named",
        "Always",
        &[("c", "sleep 3600")],
        "imageCache:\n  name: warm-1\n",
    );
    let out = agent.apply("named", &spec);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "named", "Running");
    assert!(events(&agent, Some("named")).contains("hit image cache warm-1"));

    // A named cache that does not exist: the group waits, saying so.
    let spec = group(
        "missing",
        "Always",
        &[("c", "sleep 3600")],
        "imageCache:\n  name: nope-1\n",
    );
    assert!(agent.apply("missing", &spec).status.success());
    let why = wait_for(Duration::from_secs(20), || {
        let g = agent.get_json("missing").ok()?;
        let r = g["status"]["reason"].as_str()?.to_string();
        (r == "ImageCacheNotFound").then(|| g["status"]["message"].to_string())
    })
    .unwrap_or_else(|| panic!("{}", text(&agent.ctl(&["describe", "missing"]))));
    assert!(why.contains("nope-1"), "{why}");
    assert_eq!(phase(&agent, "missing"), "Pending");

    // A bad cache name in a spec is refused naming the field.
    let bad = group(
        "bad",
        "Always",
        &[("c", "true")],
        "imageCache:\n  name: Not_A_Name\n",
    );
    let out = agent.apply("bad", &bad);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("InvalidArgument") && t.contains("imageCache.name"),
        "{t}"
    );

    // The cached image cannot be removed: the error names the cache.
    let out = agent.ctl(&["images", "rm", IMAGE]);
    let t = text(&out);
    assert!(
        !out.status.success()
            && t.contains("FailedPrecondition")
            && t.contains("pinned by image cache \"warm-1\""),
        "{t}"
    );
    // Deleting the cache unpins it; the groups using the image still hold it.
    let out = agent.ctl(&["cache", "rm", "warm-1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(cache_json(&agent, "warm-1").is_none());
    let t = text(&agent.ctl(&["images", "rm", IMAGE]));
    assert!(t.contains("used by group \""), "{t}");
    for g in ["auto", "named", "missing"] {
        let out = agent.ctl(&["delete", g, "--force"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    wait_for(Duration::from_secs(30), || {
        ["auto", "named", "missing"]
            .iter()
            .all(|g| agent.get_json(g).is_err())
            .then_some(())
    })
    .expect("groups deleted");
    let out = agent.ctl(&["images", "rm", IMAGE]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn cache_requests_are_checked_and_absent_images_fail_the_cache() {
    let agent = busybox_agent_with(NO_GC);
    let out = agent.ctl(&["cache", "create", "Bad_Name", "--image", IMAGE]);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("InvalidArgument") && t.contains("name:"),
        "{t}"
    );
    let mut args = vec!["cache", "create", "many"];
    let many: Vec<String> = (0..21).map(|i| format!("demo/img:{i}")).collect();
    for m in &many {
        args.extend(["--image", m.as_str()]);
    }
    let t = text(&agent.ctl(&args));
    assert!(
        t.contains("InvalidArgument") && t.contains("limit of 20"),
        "{t}"
    );

    let out = agent.ctl(&[
        "cache",
        "create",
        "cold",
        "--image",
        IMAGE,
        "--image",
        "127.0.0.1:5000/demo/absent:1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let c = wait_cache(&agent, "cold", "Failed");
    let msg = c["message"].as_str().unwrap_or_default();
    assert!(
        // Absent, so pulled: no registry answers there.
        msg.contains("images[1] 127.0.0.1:5000/demo/absent:1") && msg.contains("pulling"),
        "{c}"
    );
    assert!(events(&agent, None).contains("image cache cold failed"));
    let out = agent.ctl(&["cache", "create", "cold", "--image", IMAGE]);
    assert!(text(&out).contains("AlreadyExists"), "{}", text(&out));
    // A failed cache pins nothing.
    let out = agent.ctl(&["images", "rm", IMAGE]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn expired_caches_are_removed_with_an_event() {
    let agent = busybox_agent_with(&format!(
        "{NO_GC}gc_interval = \"1s\"\nretention_day = \"2s\"\n"
    ));
    for (name, days) in [("short", "1"), ("kept", "0")] {
        let out = agent.ctl(&[
            "cache",
            "create",
            name,
            "--image",
            IMAGE,
            "--retention-days",
            days,
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    wait_cache(&agent, "kept", "Ready");
    let gone = wait_for(Duration::from_secs(20), || {
        cache_json(&agent, "short").is_none().then_some(())
    });
    assert!(gone.is_some(), "{:?}", cache_json(&agent, "short"));
    let ev = events(&agent, None);
    assert!(
        ev.contains("ImageCacheExpired") && ev.contains("image cache short expired"),
        "{ev}"
    );
    assert!(cache_json(&agent, "kept").is_some(), "no retention: kept");
}

#[test]
fn gc_with_a_tiny_watermark_removes_unused_images_and_keeps_used_and_cached_ones() {
    let mut agent = busybox_agent_with(NO_GC);
    let (cached, unused) = (
        "127.0.0.1:5000/demo/cached:1",
        "127.0.0.1:5000/demo/unused:1",
    );
    variant(&agent, cached, "cached");
    variant(&agent, unused, "unused");
    let out = agent.ctl(&["cache", "create", "keep-1", "--image", cached]);
    assert!(out.status.success(), "{}", text(&out));
    wait_cache(&agent, "keep-1", "Ready");
    let spec = group("user", "Always", &[("c", "sleep 3600")], "");
    assert!(agent.apply("user", &spec).status.success());
    wait_phase(&agent, "user", "Running");

    // Any use of the filesystem is now above the watermark.
    let cfg = std::fs::read_to_string(&agent.config).expect("config");
    let cfg = cfg
        .replace("gc_high_percent = 100", "gc_high_percent = 0")
        .replace(
            "gc_low_percent = 100",
            "gc_low_percent = 0\ngc_min_age = \"0s\"",
        );
    std::fs::write(&agent.config, cfg).expect("config");
    agent.kill9_and_restart().expect("restart");
    let ls = wait_for(Duration::from_secs(20), || {
        let ls = image_list(&agent);
        (!ls.contains("demo/unused")).then_some(ls)
    })
    .unwrap_or_else(|| panic!("unused image kept: {}", image_list(&agent)));
    assert!(ls.contains("demo/cached:1"), "cached image kept: {ls}");
    assert!(ls.contains("demo/busybox:1"), "used image kept: {ls}");
    let ev = events(&agent, None);
    assert!(
        ev.contains("ImageGarbageCollected") && ev.contains("demo/unused:1"),
        "{ev}"
    );
    assert_eq!(phase(&agent, "user"), "Running");
}
