//! Pulls from a real registry (Debian `docker-registry` on loopback, see
//! `tests/src/registry.rs`): multi-layer images with a zstd layer, shared layers fetched
//! once, basic and bearer auth, a corrupted blob, concurrent pulls, injected 500s, and a
//! crash mid-pull.

use std::time::Duration;

use eci_tests::oci::{self, TarEntry};
use eci_tests::registry::{Auth, Compression, PushImage, Registry};
use eci_tests::scenario::{group_on, wait_log, wait_phase};
use eci_tests::{Agent, text, wait_for};

fn file_layer(path: &str, data: &[u8]) -> Vec<u8> {
    oci::tar(&[TarEntry::File {
        path,
        data,
        mode: 0o644,
    }])
}

/// busybox (gzip) + a zstd layer with `/etc/<name>` saying `hello from <name>`.
fn app_image(name: &str) -> PushImage {
    PushImage {
        layers: vec![
            (
                oci::busybox_layer().expect("busybox-static"),
                Some(Compression::Gzip),
            ),
            (
                file_layer(
                    &format!("etc/{name}"),
                    format!("hello from {name}\n").as_bytes(),
                ),
                Some(Compression::Zstd),
            ),
        ],
        cmd: vec!["sh".into()],
    }
}

/// An agent that knows the registry (plain HTTP) and has room for ten small groups.
fn agent_for(reg: &Registry, extra: &str) -> Agent {
    Agent::start(&format!(
        "{}{extra}[node]\ncpu = \"16\"\nmemory = \"64Gi\"\n",
        reg.agent_config()
    ))
    .expect("agent")
}

fn events(agent: &Agent, group: &str) -> String {
    text(&agent.ctl(&["events", "--group", group]))
}

/// The container's waiting reason and message once it has one.
fn wait_waiting(agent: &Agent, group: &str, reason_in: &[&str]) -> (String, String) {
    wait_for(Duration::from_secs(30), || {
        let g = agent.get_json(group).ok()?;
        let s = &g["status"]["containerStatuses"][0];
        let reason = s["waiting"]["reason"]
            .as_str()
            .or_else(|| s["reason"].as_str())
            .unwrap_or_default()
            .to_string();
        reason_in
            .contains(&reason.as_str())
            .then(|| (reason, serde_json::to_string(&g).unwrap_or_default()))
    })
    .unwrap_or_else(|| {
        panic!(
            "group {group} never waited with {reason_in:?}: {}",
            text(&agent.ctl(&["describe", group]))
        )
    })
}

#[test]
fn multi_layer_image_pulls_and_runs_and_a_shared_layer_is_fetched_once() {
    let reg = Registry::start(Auth::None).expect("registry");
    let a = app_image("a");
    let b = app_image("b");
    reg.push(&a, "demo/app-a:1").expect("push a");
    reg.push(&b, "demo/app-b:1").expect("push b");
    let agent = agent_for(&reg, "");
    let image_a = format!("{}/demo/app-a:1", reg.host);
    run_on(&agent, &image_a, "pa", "cat /etc/a; sleep 30");
    wait_log(&agent, "pa", "c", "hello from a");
    let ev = events(&agent, "pa");
    assert!(ev.contains(&format!("Pulling image \"{image_a}\"")), "{ev}");
    assert!(
        ev.contains(&format!("Successfully pulled image \"{image_a}\" in ")) && ev.contains(" MB)"),
        "{ev}"
    );

    let image_b = format!("{}/demo/app-b:1", reg.host);
    run_on(&agent, &image_b, "pb", "cat /etc/b; sleep 30");
    wait_log(&agent, "pb", "c", "hello from b");
    let blobs_a = a.blobs();
    let blobs_b = b.blobs();
    assert_eq!(blobs_a[0].0, blobs_b[0].0, "the base layer is shared");
    let reqs = reg.requests();
    assert_eq!(
        reg.blob_gets(&blobs_a[0].0),
        1,
        "the shared base layer is fetched once: {reqs:?}"
    );
    assert_eq!(reg.blob_gets(&blobs_a[1].0), 1, "{reqs:?}");
    assert_eq!(reg.blob_gets(&blobs_b[1].0), 1, "{reqs:?}");

    // Present now: a third group on image a makes no registry request at all.
    let before = reg.requests().values().sum::<usize>();
    run_on(&agent, &image_a, "pc", "cat /etc/a; sleep 30");
    wait_log(&agent, "pc", "c", "hello from a");
    assert_eq!(reg.requests().values().sum::<usize>(), before);
    assert!(
        events(&agent, "pc").contains(&format!(
            "Container image \"{image_a}\" already present on machine"
        )),
        "{}",
        events(&agent, "pc")
    );
    for g in ["pa", "pb", "pc"] {
        agent.ctl(&["delete", g]);
    }
}

#[test]
fn ecictl_images_pull_shows_layers_and_records_the_image() {
    let reg = Registry::start(Auth::None).expect("registry");
    let a = app_image("cli");
    reg.push(&a, "demo/cli:2").expect("push");
    let agent = agent_for(&reg, "");
    let image = format!("{}/demo/cli:2", reg.host);
    let out = agent.ctl(&["images", "pull", &image]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&format!("pulled {image} (sha256:")), "{t}");
    for (d, _, _) in a.blobs() {
        let short = &d["sha256:".len().."sha256:".len() + 12];
        assert!(t.contains(short), "layer {short} has progress: {t}");
    }
    assert!(text(&agent.ctl(&["images", "ls"])).contains("demo/cli:2"));
    // A tag that is not there: the registry's answer, as a failure.
    let out = agent.ctl(&["images", "pull", &format!("{}/demo/cli:nope", reg.host)]);
    assert!(!out.status.success());
    assert!(text(&out).contains("MANIFEST_UNKNOWN"), "{}", text(&out));
}

#[test]
fn basic_auth_right_and_wrong_credentials_and_the_password_stays_secret() {
    let password = "pw-Zx81-secret-basic";
    let reg = Registry::start(Auth::Basic {
        user: "alice".into(),
        password: password.into(),
    })
    .expect("registry");
    reg.push(&app_image("basic"), "demo/basic:1").expect("push");
    let agent = agent_for(&reg, "");
    let image = format!("{}/demo/basic:1", reg.host);
    let creds = |pw: &str| {
        format!(
            "imageRegistryCredentials:\n- server: \"{}\"\n  username: alice\n  password: \"{pw}\"\n",
            reg.host
        )
    };
    let wrong = "pw-wrong-Qq77-guess";
    run_with(&agent, &image, "bad", "sleep 30", &creds(wrong));
    let (_, json) = wait_waiting(&agent, "bad", &["ErrImagePull", "ImagePullBackOff"]);
    assert!(json.contains("401"), "the registry's 401 is named: {json}");
    assert_eq!(eci_tests::scenario::phase(&agent, "bad"), "Pending");
    // Anonymous: refused too.
    run_on(&agent, &image, "anon", "sleep 30");
    let (_, json) = wait_waiting(&agent, "anon", &["ErrImagePull", "ImagePullBackOff"]);
    assert!(json.contains("401"), "{json}");

    run_with(
        &agent,
        &image,
        "good",
        "cat /etc/basic; sleep 30",
        &creds(password),
    );
    wait_log(&agent, "good", "c", "hello from basic");
    let mut seen = String::new();
    for g in ["bad", "good", "anon"] {
        seen.push_str(&text(&agent.ctl(&["get", g, "-o", "yaml"])));
        seen.push_str(&text(&agent.ctl(&["describe", g])));
        seen.push_str(&events(&agent, g));
    }
    seen.push_str(&agent.log());
    for secret in [password, wrong] {
        assert!(
            !seen.contains(secret),
            "a password leaked into get/describe/events/log"
        );
    }
    // ecictl with --password-stdin.
    let mut child = std::process::Command::new(eci_tests::bin("ecictl"))
        .args(["--socket", agent.socket().to_str().expect("utf-8")])
        .args(["images", "pull", &format!("{}/demo/basic:1", reg.host)])
        .args(["--username", "alice", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ecictl");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("password");
    let out = child.wait_with_output().expect("ecictl");
    assert!(out.status.success(), "{}", text(&out));
    for g in ["bad", "good", "anon"] {
        agent.ctl(&["delete", g]);
    }
}

#[test]
fn bearer_token_flow_with_and_without_credentials() {
    let password = "pw-bearer-Kk31";
    let reg = Registry::start(Auth::Bearer {
        user: "bob".into(),
        password: password.into(),
    })
    .expect("registry");
    reg.push(&app_image("bearer"), "demo/bearer:1")
        .expect("push");
    let agent = agent_for(&reg, "");
    let image = format!("{}/demo/bearer:1", reg.host);
    run_on(&agent, &image, "anon", "sleep 30");
    let (_, json) = wait_waiting(&agent, "anon", &["ErrImagePull", "ImagePullBackOff"]);
    assert!(json.contains("401"), "{json}");
    run_with(
        &agent,
        &image,
        "tok",
        "cat /etc/bearer; sleep 30",
        &format!(
            "imageRegistryCredentials:\n- server: \"{}\"\n  username: bob\n  password: \"{password}\"\n",
            reg.host
        ),
    );
    wait_log(&agent, "tok", "c", "hello from bearer");
    assert!(reg.requests().get("GET /token").copied().unwrap_or(0) >= 1);
    assert!(!agent.log().contains(password));
    for g in ["anon", "tok"] {
        agent.ctl(&["delete", g]);
    }
}

/// Layer directories and blobs the agent has, without temp entries.
fn store_entries(agent: &Agent) -> (Vec<String>, Vec<String>) {
    let list = |p: &str| -> Vec<String> {
        std::fs::read_dir(agent.root().join(p))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    (
        list("var/lib/eci/layers"),
        list("var/lib/eci/content/sha256"),
    )
}

#[test]
fn an_altered_blob_is_refused_and_nothing_is_present() {
    let reg = Registry::start(Auth::None).expect("registry");
    let img = app_image("evil");
    reg.push(&img, "demo/evil:1").expect("push");
    // Same length, different bytes: only the digest can tell.
    let (digest, mut bytes, _) = img.blobs().remove(1);
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(reg.blob_file(&digest), &bytes).expect("alter the blob");
    let agent = agent_for(&reg, "");
    let image = format!("{}/demo/evil:1", reg.host);
    let out = agent.ctl(&["images", "pull", &image]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains(&digest), "the bad blob is named: {t}");
    assert!(!text(&agent.ctl(&["images", "ls"])).contains("demo/evil"));
    let (layers, blobs) = store_entries(&agent);
    let hex = &digest["sha256:".len()..];
    assert!(!blobs.iter().any(|b| b == hex), "{blobs:?}");
    // The good base layer may stay (it verified); the altered one never appears.
    assert!(layers.len() <= 1, "{layers:?}");

    // A truncated blob likewise.
    std::fs::write(reg.blob_file(&digest), &bytes[..n / 2]).expect("truncate");
    let out = agent.ctl(&["images", "pull", &image]);
    assert!(!out.status.success(), "{}", text(&out));
    let (_, blobs) = store_entries(&agent);
    assert!(!blobs.iter().any(|b| b == hex), "{blobs:?}");
}

#[test]
fn ten_groups_at_once_download_each_layer_once() {
    let reg = Registry::start(Auth::None).expect("registry");
    let img = app_image("many");
    reg.push(&img, "demo/many:1").expect("push");
    let agent = agent_for(&reg, "");
    let image = format!("{}/demo/many:1", reg.host);
    let names: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let threads: Vec<_> = names
        .iter()
        .map(|n| {
            let spec = group_on(&image, n, "Never", &[("c", "cat /etc/many; sleep 30")], "");
            let (n, sock) = (n.clone(), agent.socket());
            std::thread::spawn(move || {
                let path =
                    std::env::temp_dir().join(format!("eci-many-{}-{n}.yaml", std::process::id()));
                std::fs::write(&path, spec).expect("spec");
                let out = std::process::Command::new(eci_tests::bin("ecictl"))
                    .args(["--socket", sock.to_str().expect("utf-8")])
                    .args(["apply", "-f", path.to_str().expect("utf-8")])
                    .output()
                    .expect("ecictl");
                let _ = std::fs::remove_file(&path);
                out
            })
        })
        .collect();
    for t in threads {
        let out = t.join().expect("apply");
        assert!(out.status.success(), "{}", text(&out));
    }
    for n in &names {
        wait_log(&agent, n, "c", "hello from many");
    }
    for (d, _, _) in img.blobs() {
        assert_eq!(reg.blob_gets(&d), 1, "{d}: {:?}", reg.requests());
    }
    for n in &names {
        agent.ctl(&["delete", n]);
    }
}

#[test]
fn a_registry_failing_twice_with_500_then_answering_is_pulled() {
    let reg = Registry::start(Auth::None).expect("registry");
    let img = app_image("flaky");
    reg.push(&img, "demo/flaky:1").expect("push");
    let agent = agent_for(&reg, "");
    reg.fail_next("/manifests/", 2);
    let image = format!("{}/demo/flaky:1", reg.host);
    let out = agent.ctl(&["images", "pull", &image]);
    assert!(out.status.success(), "{}", text(&out));
    let reqs = reg.requests();
    assert_eq!(
        reqs.get("GET /v2/demo/flaky/manifests/1").copied(),
        Some(3),
        "{reqs:?}"
    );
    // Blobs too.
    let img2 = app_image("flaky2");
    reg.push(&img2, "demo/flaky2:1").expect("push");
    reg.fail_next("/blobs/", 2);
    let out = agent.ctl(&["images", "pull", &format!("{}/demo/flaky2:1", reg.host)]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn an_agent_killed_mid_pull_starts_the_group_after_restart() {
    let reg = Registry::start(Auth::None).expect("registry");
    // A layer big enough to take a few seconds at the slowed rate.
    // Incompressible: xorshift bytes.
    let noise = noise(3_000_000, 0x9e37_79b9_7f4a_7c15);
    let mut img = app_image("crash");
    img.layers
        .push((file_layer("big.bin", &noise), Some(Compression::Gzip)));
    reg.push(&img, "demo/crash:1").expect("push");
    let mut agent = agent_for(&reg, "");
    reg.set_slow(true);
    let image = format!("{}/demo/crash:1", reg.host);
    run_on(&agent, &image, "cr", "cat /etc/crash; sleep 30");
    // Wait until the big blob is being fetched, then kill the agent.
    let big = img.blobs()[2].0.clone();
    wait_for(Duration::from_secs(30), || {
        (reg.blob_gets(&big) > 0).then_some(())
    })
    .expect("the big layer starts downloading");
    std::thread::sleep(Duration::from_millis(1500));
    agent.kill9().expect("kill");
    // Nothing of the big layer is recorded or in place.
    let (_, blobs) = store_entries(&agent);
    assert!(
        !blobs.iter().any(|b| *b == big["sha256:".len()..]),
        "{blobs:?}"
    );
    reg.set_slow(false);
    agent.restart().expect("restart");
    wait_log(&agent, "cr", "c", "hello from crash");
    wait_phase(&agent, "cr", "Running");
    // The interrupted attempt left nothing behind.
    let mut temps: Vec<_> = std::fs::read_dir(agent.root().join("var/lib/eci/layers"))
        .expect("layers")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".unpack-"))
        .collect();
    temps.extend(
        std::fs::read_dir(agent.root().join("var/lib/eci/content/ingest"))
            .expect("ingest")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned()),
    );
    assert!(temps.is_empty(), "{temps:?}");
    agent.ctl(&["delete", "cr"]);
}

#[test]
fn a_mirror_is_tried_first_and_serves_the_image() {
    let origin = Registry::start(Auth::None).expect("origin");
    let mirror = Registry::start(Auth::None).expect("mirror");
    let img = app_image("mirrored");
    mirror.push(&img, "demo/mirrored:1").expect("push");
    let agent = Agent::start(&format!(
        "[registries.\"{}\"]\nplain_http = true\nmirrors = [\"{}\"]\n{}",
        origin.host,
        mirror.host,
        mirror.agent_config()
    ))
    .expect("agent");
    let image = format!("{}/demo/mirrored:1", origin.host);
    let out = agent.ctl(&["images", "pull", &image]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&agent.ctl(&["images", "ls"])).contains(&image));
    for (d, _, _) in img.blobs() {
        assert_eq!(mirror.blob_gets(&d), 1);
    }
    assert!(
        origin.requests().is_empty(),
        "the origin was not needed: {:?}",
        origin.requests()
    );
    // A tag only the origin has: the mirror's 404, then the origin.
    let other = app_image("origin-only");
    origin.push(&other, "demo/only:1").expect("push");
    let out = agent.ctl(&["images", "pull", &format!("{}/demo/only:1", origin.host)]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn credentials_from_a_docker_config_named_in_the_agent_config() {
    let password = "pw-dockercfg-Mm42";
    let reg = Registry::start(Auth::Basic {
        user: "carol".into(),
        password: password.into(),
    })
    .expect("registry");
    reg.push(&app_image("cfg"), "demo/cfg:1").expect("push");
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("config.json");
    let auth = base64_encode(format!("carol:{password}").as_bytes());
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host),
    )
    .expect("config.json");
    let agent = agent_for(
        &reg,
        &format!("[pull]\ndocker_config = \"{}\"\n", cfg.display()),
    );
    let out = agent.ctl(&["images", "pull", &format!("{}/demo/cfg:1", reg.host)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!agent.log().contains(password));
}

fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn more_than_fifty_layers_is_refused_and_nothing_is_present() {
    let reg = Registry::start(Auth::None).expect("registry");
    let img = PushImage {
        layers: (0..51)
            .map(|i| {
                (
                    file_layer(&format!("l{i}"), format!("{i}").as_bytes()),
                    Some(Compression::Gzip),
                )
            })
            .collect(),
        cmd: vec!["sh".into()],
    };
    reg.push(&img, "demo/tall:1").expect("push");
    let agent = agent_for(&reg, "");
    let out = agent.ctl(&["images", "pull", &format!("{}/demo/tall:1", reg.host)]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("51 layers is over the limit of 50"),
        "{}",
        text(&out)
    );
    let (layers, blobs) = store_entries(&agent);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );
    for (d, _, _) in img.blobs() {
        assert_eq!(reg.blob_gets(&d), 0);
    }
}

#[test]
fn always_resolves_the_tag_again_and_reuses_present_layers() {
    let reg = Registry::start(Auth::None).expect("registry");
    let v1 = app_image("v1");
    reg.push(&v1, "demo/moving:1").expect("push");
    let agent = agent_for(&reg, "");
    let image = format!("{}/demo/moving:1", reg.host);
    let first = text(&agent.ctl(&["images", "pull", &image]));
    let v2 = app_image("v2");
    reg.push(&v2, "demo/moving:1").expect("push again");
    let spec = format!(
        "name: mv\nrestartPolicy: Never\ncpu: \"1\"\nmemory: 2Gi\ncontainers:\n- name: c\n  image: {image}\n  imagePullPolicy: Always\n  command: [\"/bin/sh\", \"-c\"]\n  args: [\"cat /etc/v2; sleep 30\"]\n"
    );
    let out = agent.apply("mv", &spec);
    assert!(out.status.success(), "{}", text(&out));
    wait_log(&agent, "mv", "c", "hello from v2");
    assert!(first.contains("pulled"), "{first}");
    // The base layer came once, for v1; v2 fetched only its own layer.
    assert_eq!(reg.blob_gets(&v1.blobs()[0].0), 1, "{:?}", reg.requests());
    assert_eq!(reg.blob_gets(&v2.blobs()[1].0), 1);
    agent.ctl(&["delete", "mv"]);
}

#[test]
fn the_overall_pull_timeout_ends_a_slow_pull() {
    let reg = Registry::start(Auth::None).expect("registry");
    let noise = noise(2_000_000, 0x2545_f491_4f6c_dd1d);
    let img = PushImage {
        layers: vec![(file_layer("big", &noise), Some(Compression::Gzip))],
        cmd: vec!["sh".into()],
    };
    reg.push(&img, "demo/slow:1").expect("push");
    let agent = agent_for(&reg, "[pull]\ntimeout = \"2s\"\n");
    reg.set_slow(true);
    let out = agent.ctl(&["images", "pull", &format!("{}/demo/slow:1", reg.host)]);
    assert!(!out.status.success());
    assert!(text(&out).contains("timed out after 2s"), "{}", text(&out));
    let (layers, blobs) = store_entries(&agent);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );
}

#[test]
fn an_index_gives_the_host_platform_or_names_the_ones_it_offers() {
    use eci_tests::registry::host_arch;
    let reg = Registry::start(Auth::None).expect("registry");
    let ours = app_image("multi");
    let theirs = app_image("foreign");
    let other = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    reg.push_index(&[(&theirs, other), (&ours, host_arch())], "demo/multi:1")
        .expect("push index");
    reg.push_index(&[(&theirs, other), (&theirs, "s390x")], "demo/foreign:1")
        .expect("push foreign index");
    let agent = agent_for(&reg, "");
    run_on(
        &agent,
        &format!("{}/demo/multi:1", reg.host),
        "mp",
        "cat /etc/multi; sleep 30",
    );
    wait_log(&agent, "mp", "c", "hello from multi");
    assert_eq!(
        reg.blob_gets(&theirs.blobs()[1].0),
        0,
        "only this host's layers"
    );
    let out = agent.ctl(&["images", "pull", &format!("{}/demo/foreign:1", reg.host)]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains(&format!("no image for linux/{}", host_arch()))
            && t.contains(&format!("linux/{other}, linux/s390x")),
        "{t}"
    );
    agent.ctl(&["delete", "mp"]);
}

#[test]
fn a_docker_schema_2_image_pulls_and_runs() {
    let reg = Registry::start(Auth::None).expect("registry");
    let img = PushImage {
        layers: vec![
            (
                oci::busybox_layer().expect("busybox-static"),
                Some(Compression::Gzip),
            ),
            (
                file_layer("etc/docker", b"hello from docker\n"),
                Some(Compression::Gzip),
            ),
        ],
        cmd: vec!["sh".into()],
    };
    reg.push_docker(&img, "demo/docker:1").expect("push v2s2");
    let agent = agent_for(&reg, "");
    run_on(
        &agent,
        &format!("{}/demo/docker:1", reg.host),
        "dk",
        "cat /etc/docker; sleep 30",
    );
    wait_log(&agent, "dk", "c", "hello from docker");
    agent.ctl(&["delete", "dk"]);
}

#[test]
fn a_broken_blob_transfer_resumes_with_a_range_request() {
    let reg = Registry::start(Auth::None).expect("registry");
    let noise = noise(2_000_000, 0x1234_5678_9abc_def1);
    let mut img = app_image("resume");
    img.layers
        .push((file_layer("big.bin", &noise), Some(Compression::Gzip)));
    reg.push(&img, "demo/resume:1").expect("push");
    let agent = agent_for(&reg, "");
    let big = img.blobs()[2].0.clone();
    reg.cut_next(&format!("/blobs/{big}"), 700_000);
    let out = agent.ctl(&["images", "pull", &format!("{}/demo/resume:1", reg.host)]);
    assert!(out.status.success(), "{}", text(&out));
    let reqs = reg.requests();
    assert_eq!(
        reqs.get(&format!("RANGE /v2/demo/resume/blobs/{big}"))
            .copied(),
        Some(1),
        "{reqs:?}"
    );
    assert_eq!(reg.blob_gets(&big), 2, "{reqs:?}");
}

/// A tmpfs at `.0` inside the test's root `.1`: unmounted, and the root removed, on
/// drop (after the agent's own cleanup, which cannot remove a mount point).
struct Tmpfs(std::path::PathBuf, std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[test]
fn a_full_disk_fails_the_pull_cleanly_and_the_next_pull_succeeds() {
    let reg = Registry::start(Auth::None).expect("registry");
    let noise = noise(6_000_000, 0x0bad_cafe_f00d_1234);
    let mut img = app_image("full");
    img.layers
        .push((file_layer("big.bin", &noise), Some(Compression::Gzip)));
    reg.push(&img, "demo/full:1").expect("push");
    // The state directory (database, content, layers) on a small tmpfs.
    let root = tempfile::Builder::new()
        .prefix("eci-e2e-")
        .tempdir()
        .expect("root");
    let state = root.path().join("var/lib/eci");
    std::fs::create_dir_all(&state).expect("state dir");
    nix::mount::mount(
        Some("tmpfs"),
        &state,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("size=24m,mode=0700"),
    )
    .expect("tmpfs");
    let _unmount = Tmpfs(state.clone(), root.path().to_path_buf());
    let agent = Agent::start_on(
        root,
        &format!(
            "{}[node]\ncpu = \"16\"\nmemory = \"64Gi\"\n",
            reg.agent_config()
        ),
        &[],
    )
    .expect("agent");
    // Leave about 8 MiB: the 6 MB layer needs its blob and its unpacked copy.
    let filler = state.join("filler");
    let fs = nix::sys::statvfs::statvfs(&state).expect("statvfs");
    let free = fs.blocks_available() * fs.fragment_size();
    std::fs::write(&filler, vec![0u8; (free - (8 << 20)) as usize]).expect("filler");
    let image = format!("{}/demo/full:1", reg.host);
    let out = agent.ctl(&["images", "pull", &image]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("no space left"), "{t}");
    assert!(!text(&agent.ctl(&["images", "ls"])).contains("demo/full"));
    let big = img.blobs()[2].0.clone();
    let (_, blobs) = store_entries(&agent);
    assert!(
        !blobs.iter().any(|b| *b == big["sha256:".len()..]),
        "{blobs:?}"
    );
    std::fs::remove_file(&filler).expect("free space");
    let out = agent.ctl(&["images", "pull", &image]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `len` incompressible bytes (xorshift from `seed`): a layer that stays big gzipped.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Applies a one-container group `name` on `image` (restart policy `Never`) running
/// `script`; panics when the agent refuses it.
fn run_on(agent: &Agent, image: &str, name: &str, script: &str) {
    run_with(agent, image, name, script, "");
}

/// [`run_on`] with `extra` spec lines (credentials).
fn run_with(agent: &Agent, image: &str, name: &str, script: &str, extra: &str) {
    let out = agent.apply(
        name,
        &group_on(image, name, "Never", &[("c", script)], extra),
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_group_naming_a_cache_still_being_created_waits_and_starts_from_it() {
    let reg = Registry::start(Auth::None).expect("registry");
    // About 4 s at the slowed rate: the group is applied while the cache pulls.
    let noise = noise(1_000_000, 0x5eed_0fca_11ab_1e00);
    let mut img = app_image("warm");
    img.layers
        .push((file_layer("big.bin", &noise), Some(Compression::Gzip)));
    reg.push(&img, "demo/warm:1").expect("push");
    // The harness's back-off (200 ms doubling to 1 s) keeps the wait short.
    let agent = agent_for(&reg, "");
    let image = format!("{}/demo/warm:1", reg.host);
    reg.set_slow(true);
    let out = agent.ctl(&["cache", "create", "warm-2", "--image", &image]);
    assert!(out.status.success(), "{}", text(&out));
    run_with(
        &agent,
        &image,
        "cw",
        "cat /etc/warm; sleep 30",
        "imageCache:\n  name: warm-2\n",
    );
    let (reason, json) = wait_waiting(&agent, "cw", &["ImageCacheNotReady"]);
    assert!(json.contains("is Creating"), "{reason}: {json}");
    reg.set_slow(false);
    wait_log(&agent, "cw", "c", "hello from warm");
    let ev = events(&agent, "cw");
    assert!(ev.contains("hit image cache warm-2"), "{ev}");
    // The cache's pull was the only one.
    assert_eq!(reg.blob_gets(&img.blobs()[2].0), 1, "{:?}", reg.requests());

    // A cache that failed is not waited for: the group says so and stays Pending.
    let out = agent.ctl(&[
        "cache",
        "create",
        "cold-1",
        "--image",
        &format!("{}/demo/absent:1", reg.host),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(Duration::from_secs(30), || {
        let c = agent.ctl(&["cache", "get", "cold-1", "-o", "json"]);
        text(&c).contains("\"Failed\"").then_some(())
    })
    .expect("the cache fails");
    run_with(
        &agent,
        &image,
        "cf",
        "sleep 30",
        "imageCache:\n  name: cold-1\n",
    );
    let (_, json) = wait_waiting(&agent, "cf", &["ImageCacheFailed"]);
    assert!(json.contains("is Failed"), "{json}");
    for g in ["cw", "cf"] {
        agent.ctl(&["delete", g]);
    }
}
