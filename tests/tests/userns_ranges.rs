//! Id ranges for user namespaces (issue 14), agent side, through the real agent: each
//! admitted group holds a disjoint range of 65536 host ids, shown in its status; the
//! ranges survive a graceful restart and `kill -9`; a delete gives the range back; a full
//! pool refuses a Create. Containers run in their ranges: see `userns_run.rs`.

use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::*;
use eci_tests::scenario::{busybox_agent, group, wait_phase};
use eci_tests::{Agent, channel, text};
use tonic::Code;

const RANGE: u64 = 65_536;
const FIRST: u64 = 1_048_576;

fn node_json(agent: &Agent) -> serde_json::Value {
    let out = agent.ctl(&["node", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("node json")
}

fn ranges_free(agent: &Agent) -> u64 {
    node_json(agent)["userNamespaces"]["rangesFree"]
        .as_u64()
        .expect("rangesFree")
}

/// The group's host id base from its status; panics when it has none.
fn base(agent: &Agent, name: &str) -> u64 {
    let g = agent.get_json(name).expect("get");
    let u = &g["status"]["userNamespace"];
    assert_eq!(u["size"].as_u64(), Some(RANGE), "{g}");
    u["hostIdBase"].as_u64().expect("hostIdBase")
}

fn sleeper(name: &str) -> String {
    // Stops at once on SIGTERM, so a restart does not wait out the grace period.
    group(
        name,
        "Always",
        &[("app", "trap 'exit 0' TERM; while :; do sleep 0.2; done")],
        "",
    )
}

fn delete(agent: &Agent, name: &str) {
    let out = agent.ctl(&["delete", name, "--force", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn groups_hold_disjoint_ranges_across_restarts_until_deleted() {
    let mut agent = busybox_agent();
    let n = node_json(&agent);
    let u = &n["userNamespaces"];
    assert_eq!(u["mode"], "on", "{n}\n{}", agent.log());
    assert_eq!(u["enforced"], true, "{n}");
    assert_eq!(u["rangesTotal"].as_u64(), Some(1024), "{n}");
    assert_eq!(u["firstHostId"].as_u64(), Some(FIRST), "{n}");
    assert_eq!(ranges_free(&agent), 1024);

    for name in ["userns-a", "userns-b"] {
        let out = agent.apply(name, &sleeper(name));
        assert!(out.status.success(), "{}", text(&out));
    }
    wait_phase(&agent, "userns-a", "Running");
    wait_phase(&agent, "userns-b", "Running");
    let (a, b) = (base(&agent, "userns-a"), base(&agent, "userns-b"));
    for x in [a, b] {
        assert!(x >= FIRST && x % RANGE == 0, "{x}");
    }
    assert!(a.abs_diff(b) >= RANGE, "ranges overlap: {a} and {b}");
    assert_eq!(ranges_free(&agent), 1022);
    let described = text(&agent.ctl(&["describe", "userns-a"]));
    assert!(
        described.contains(&format!("Host id range:   {a}-{}", a + RANGE - 1)),
        "{described}"
    );
    let shown = text(&agent.ctl(&["node"]));
    assert!(
        shown.contains("User namespaces: on (1022 of 1024 id ranges free")
            && !shown.contains("not enforced"),
        "{shown}"
    );

    // A graceful restart, then a crash: the ranges stay with their groups.
    agent.terminate().expect("SIGTERM");
    agent.restart().expect("restart");
    assert_eq!((base(&agent, "userns-a"), base(&agent, "userns-b")), (a, b));
    assert_eq!(ranges_free(&agent), 1022);
    agent.kill9_and_restart().expect("kill -9 and restart");
    assert_eq!((base(&agent, "userns-a"), base(&agent, "userns-b")), (a, b));
    assert_eq!(ranges_free(&agent), 1022);

    // Restart and Update keep the range.
    let out = agent.ctl(&["restart", "userns-b"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "userns-b", "Running");
    assert_eq!(base(&agent, "userns-b"), b, "restart keeps the range");
    let updated = sleeper("userns-b").replace("sleep 0.2", "sleep 0.3");
    let out = agent.apply("userns-b", &updated);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(agent.get_json("userns-b").expect("get")["generation"], "2");
    assert_eq!(base(&agent, "userns-b"), b, "update keeps the range");

    // A delete gives the range back, and only then may another group take it.
    delete(&agent, "userns-a");
    assert_eq!(ranges_free(&agent), 1023);
    assert_eq!(
        base(&agent, "userns-b"),
        b,
        "the other group keeps its range"
    );
    let out = agent.apply("userns-c", &sleeper("userns-c"));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(base(&agent, "userns-c"), a.min(b), "lowest free range");
    delete(&agent, "userns-b");
    delete(&agent, "userns-c");
    assert_eq!(ranges_free(&agent), 1024);
}

#[tokio::test]
async fn a_full_pool_refuses_a_create_and_stores_nothing() {
    let agent = Agent::start("[user_namespaces]\nranges = 1\n").expect("agent");
    let ch = channel(&agent.socket()).await.expect("channel");
    let mut client = ContainerGroupsClient::new(ch);
    let spec = |name: &str| GroupSpec {
        name: name.into(),
        containers: vec![Container {
            name: "app".into(),
            image: "busybox:1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let first = client
        .create(CreateGroupRequest {
            spec: Some(spec("pool-one")),
        })
        .await
        .expect("first create")
        .into_inner();
    let u = first
        .status
        .and_then(|s| s.user_namespace)
        .expect("a range in the status");
    assert_eq!(
        (u64::from(u.host_id_base), u64::from(u.size)),
        (FIRST, RANGE)
    );

    let err = client
        .create(CreateGroupRequest {
            spec: Some(spec("pool-two")),
        })
        .await
        .expect_err("the pool of 1 is full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("user_namespaces.ranges = 1"),
        "{}",
        err.message()
    );
    let gone = client
        .get(GetGroupRequest {
            name: "pool-two".into(),
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    let events = text(&agent.ctl(&["events"]));
    assert!(!events.contains("pool-two"), "{events}");
    assert_eq!(ranges_free(&agent), 0);

    // Once the holder is gone the pool has room again.
    delete(&agent, "pool-one");
    assert_eq!(ranges_free(&agent), 1);
    client
        .create(CreateGroupRequest {
            spec: Some(spec("pool-two")),
        })
        .await
        .expect("create after the delete");
    delete(&agent, "pool-two");
}
