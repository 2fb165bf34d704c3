//! A full state filesystem degrades the agent, never wedges it: writes fail with
//! RESOURCE_EXHAUSTED naming the database and the free space and change nothing; reads,
//! Watch and a running group's logs keep working; health says which part is degraded;
//! and writes work again once space is freed, without restarting the agent.
//!
//! The agent's state directory (`<root>/var/lib/eci`: the database, images, writable
//! layers) is a small tmpfs; its logs stay on the normal disk (`<root>/var/log/eci`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::metrics_client::MetricsClient;
use eci_api::v1::node_client::NodeClient;
use eci_api::v1::*;
use eci_tests::scenario::{self, IMAGE};
use eci_tests::{Agent, channel, oci, text};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A tmpfs mounted at `at`; unmounted (and the test's root removed) on drop, also when
/// the test fails.
struct Tmpfs {
    at: PathBuf,
    root: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, root: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0700").as_str()),
        )
        .expect("mounting a tmpfs");
        Tmpfs {
            at: at.to_path_buf(),
            root: root.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.at, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Writes `path` until the filesystem has no room left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    for chunk in [1 << 20, 4096, 512] {
        let buf = vec![0x5a; chunk];
        while f.write_all(&buf).and_then(|()| f.sync_data()).is_ok() {}
    }
}

/// A group too large for the node: recorded, never run.
fn parked(name: &str) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        cpu: "8".into(),
        memory: "16Gi".into(),
        containers: vec![Container {
            name: "app".into(),
            image: IMAGE.into(),
            env: pad(2),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn create(c: &mut ContainerGroupsClient<Channel>, name: &str) -> Result<(), tonic::Status> {
    c.create(CreateGroupRequest {
        spec: Some(parked(name)),
    })
    .await
    .map(|_| ())
}

/// Creates groups until one is refused: redb reuses pages it freed inside its file, so a
/// few writes may still fit on a full filesystem. Returns the names that fitted, then the
/// refused name and its error.
async fn exhaust(
    groups: &mut ContainerGroupsClient<Channel>,
    prefix: &str,
) -> (Vec<String>, String, tonic::Status) {
    let mut fitted = Vec::new();
    for i in 0..500 {
        let name = format!("{prefix}-{i}");
        match create(groups, &name).await {
            Ok(()) => fitted.push(name),
            Err(e) => {
                eprintln!("{i} creates fitted, then: {e}");
                return (fitted, name, e);
            }
        }
    }
    panic!("500 creates fitted on a full filesystem");
}

async fn condition(ch: &Channel, kind: &str) -> NodeCondition {
    let info = NodeClient::new(ch.clone())
        .info(NodeInfoRequest {})
        .await
        .expect("node info")
        .into_inner();
    info.conditions
        .into_iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind} condition"))
}

/// Waits up to 10 s for the health service to say `want` for `service`.
async fn wait_health(ch: &Channel, service: &str, want: ServingStatus) {
    let mut got = None;
    for _ in 0..100 {
        let r = HealthClient::new(ch.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner();
        got = Some(r.status);
        if r.status == want as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health of {service:?} is {got:?}, not {want:?}");
}

/// The highest `tick N` in the log.
fn last_tick(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_filesystem_degrades_and_recovers_without_restart() {
    let dir = tempfile::Builder::new()
        .prefix("eci-e2e-")
        .tempdir()
        .expect("tempdir");
    let root = dir.path().to_path_buf();
    let state = root.join("var/lib/eci");
    // Declared before the agent: dropped after it, so the agent is gone first.
    let tmpfs = Tmpfs::mount(&state, &root, "48m");
    let mut agent =
        Agent::start_on(dir, "[node]\ncpu = \"2\"\nmemory = \"4Gi\"\n", &[]).expect("agent");
    let image = oci::Image {
        layers: vec![oci::busybox_layer().expect("busybox-static")],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    scenario::import(&agent, &image, IMAGE);
    let ticker = scenario::group(
        "ticker",
        "Always",
        &[(
            "c",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
        )],
        "",
    );
    let out = agent.apply("ticker", &ticker);
    assert!(out.status.success(), "{}", text(&out));
    scenario::wait_phase(&agent, "ticker", "Running");
    scenario::wait_log(&agent, "ticker", "c", "tick 3");

    let ch = channel(&agent.socket()).await.expect("channel");
    let mut groups = ContainerGroupsClient::new(ch.clone());
    let db = state.join("state.redb");
    let filler = tmpfs.at.join("filler");
    fill(&filler);

    let (mut fitted, name, err) = exhaust(&mut groups, "full").await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    let msg = err.message();
    assert!(msg.contains(&db.display().to_string()), "{msg}");
    assert!(msg.contains("free of"), "{msg}");
    assert!(msg.contains("nothing was changed"), "{msg}");

    // Nothing changed, and every later write says the same (not a latched INTERNAL).
    let get = groups
        .get(GetGroupRequest { name: name.clone() })
        .await
        .expect_err("the refused group does not exist");
    assert_eq!(get.code(), Code::NotFound, "{get}");
    let again = create(&mut groups, &name).await.expect_err("still full");
    assert_eq!(again.code(), Code::ResourceExhausted, "{again}");

    // Reads work: Get, List, Watch, Exec, metrics, the running group's logs.
    let g = groups
        .get(GetGroupRequest {
            name: "ticker".into(),
        })
        .await
        .expect("get while full")
        .into_inner();
    assert_eq!(g.status.expect("status").phase, "Running");
    let list = groups
        .list(ListGroupsRequest::default())
        .await
        .expect("list while full")
        .into_inner();
    assert_eq!(list.groups.len(), 1 + fitted.len());
    let mut watch = groups
        .watch(WatchRequest::default())
        .await
        .expect("watch while full")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("watch answers")
        .expect("open")
        .expect("ok");
    assert_eq!(first.r#type, "ADDED");
    let exec = agent.ctl(&["exec", "ticker", "--", "echo", "exec-works"]);
    assert!(text(&exec).contains("exec-works"), "{}", text(&exec));
    MetricsClient::new(ch.clone())
        .get_metrics(GetMetricsRequest {
            group: "ticker".into(),
        })
        .await
        .expect("metrics while full");
    let seen = last_tick(&scenario::logs(&agent, "ticker", "c"));
    scenario::wait_log(&agent, "ticker", "c", &format!("tick {}", seen + 3));

    // Health says the store cannot write, and why; the agent is otherwise alive.
    let w = condition(&ch, "StoreWritable").await;
    assert_eq!(
        (w.status.as_str(), w.reason.as_str()),
        ("False", "StorageFull")
    );
    assert!(w.message.contains(&db.display().to_string()), "{w:?}");
    for kind in ["StoreReadable", "ApiLoop", "SupervisorLoop"] {
        assert_eq!(condition(&ch, kind).await.status, "True", "{kind}");
    }
    let node = text(&agent.ctl(&["node"]));
    assert!(
        node.contains("StoreWritable") && node.contains("StorageFull"),
        "{node}"
    );
    wait_health(&ch, "eci.v1.ContainerGroups", ServingStatus::NotServing).await;
    wait_health(&ch, "", ServingStatus::Serving).await;
    wait_health(&ch, "eci.v1.Node", ServingStatus::Serving).await;

    // The agent also starts on the full filesystem (a crash or an upgrade meanwhile):
    // it opens the store without writing, re-adopts the running group, and serves reads.
    agent.kill9_and_restart().expect("restart while full");
    let ch = channel(&agent.socket()).await.expect("channel");
    let mut groups = ContainerGroupsClient::new(ch.clone());
    let g = groups
        .get(GetGroupRequest {
            name: "ticker".into(),
        })
        .await
        .expect("get after a restart while full")
        .into_inner();
    assert_eq!(g.status.expect("status").phase, "Running");
    // Reopening lets redb reuse pages freed before the crash: a few creates may fit.
    let (more, _, again) = exhaust(&mut groups, "after-restart").await;
    fitted.extend(more);
    assert_eq!(again.code(), Code::ResourceExhausted, "{again}");

    // The ticker's container dies while the store cannot record it: the supervisor
    // keeps the change and retries (it does not crash, drop it, or spin).
    let id = scenario::group_id(&agent, "ticker");
    let parent = agent.cgroup_parent();
    let procs = [
        format!("/sys/fs/cgroup/pids/{parent}/{id}/c/cgroup.procs"),
        format!("/sys/fs/cgroup/{parent}/{id}/c/cgroup.procs"),
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok())
    .expect("the container's cgroup");
    for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Either the write does not fit (the supervisor says it retries), or it fits in
    // pages redb freed before the crash (then the exit is recorded at once); never
    // dropped either way.
    let retrying = eci_tests::wait_for(Duration::from_secs(10), || {
        let log = agent.log();
        let recorded = agent.get_json("ticker").ok().is_some_and(|g| {
            g["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        });
        (log.contains("the store cannot record the group's status; retrying") || recorded)
            .then_some(())
    });
    assert!(retrying.is_some(), "{}", agent.log());

    // Space comes back: writes work again, without a restart.
    std::fs::remove_file(&filler).expect("free space");
    create(&mut groups, "after")
        .await
        .expect("create after space is freed");
    groups
        .get(GetGroupRequest {
            name: "after".into(),
        })
        .await
        .expect("get after");
    assert_eq!(condition(&ch, "StoreWritable").await.status, "True");
    // The recorded exit was not lost: the container was restarted and runs again.
    let restarted = eci_tests::wait_for(Duration::from_secs(40), || {
        let g = agent.get_json("ticker").ok()?;
        let c = &g["status"]["containerStatuses"][0];
        (g["status"]["phase"] == "Running"
            && c["state"] == "Running"
            && c["restartCount"].as_u64().unwrap_or(0) >= 1)
            .then_some(())
    });
    assert!(
        restarted.is_some(),
        "{}",
        text(&agent.ctl(&["describe", "ticker"]))
    );
    wait_health(&ch, "eci.v1.ContainerGroups", ServingStatus::Serving).await;
    assert!(
        !agent.log().contains("panicked"),
        "the agent did not panic: {}",
        agent.log()
    );
    for name in fitted.iter().map(String::as_str).chain(["after", "ticker"]) {
        let _ = groups
            .delete(DeleteGroupRequest {
                name: name.into(),
                force: true,
                ..Default::default()
            })
            .await;
    }
    drop(agent);
    drop(tmpfs);
}

/// `kib` KiB of environment, 1 KiB per variable.
fn pad(kib: usize) -> Vec<EnvVar> {
    (0..kib)
        .map(|i| EnvVar {
            name: format!("PAD_{i}"),
            value: "p".repeat(1024),
        })
        .collect()
}
