//! Watch is exact: every committed change reaches every watcher once, in commit order,
//! with its revision — for a watcher that keeps up and for one so slow that it falls
//! behind the live channel (it is caught up from the change log).

use std::time::Duration;

use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::*;
use eci_tests::{Agent, channel};
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

/// Groups too large for the node: each is recorded (ScheduleFailed, with an event) and
/// never run, so changes are cheap.
fn spec(name: &str, i: usize) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        cpu: "2".into(),
        memory: "2Gi".into(),
        labels: [("i".to_string(), i.to_string())].into(),
        // Large enough that the slow watcher's HTTP/2 window fills long before the
        // writers are done, so the agent's live channel overflows for it.
        containers: vec![Container {
            name: "app".into(),
            image: "busybox:1".into(),
            env: pad(16),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Creates and deletes groups until this writer made about `changes` changes.
async fn writer(ch: Channel, w: usize, changes: usize) {
    let mut c = ContainerGroupsClient::new(ch);
    let mut made = 0;
    let mut i = 0;
    while made < changes {
        let name = format!("w{w}-{i}");
        c.create(CreateGroupRequest {
            spec: Some(spec(&name, i)),
        })
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
        // ADDED and its FailedScheduling event.
        made += 2;
        if i % 2 == 1 {
            c.delete(DeleteGroupRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
            // Terminating, Killing, DELETED, Deleted.
            made += 4;
        }
        i += 1;
    }
}

/// Reads revisions from a watch until the revision `until` says (0: not known yet),
/// sleeping `pause` between reads.
async fn collect(
    who: &'static str,
    mut s: Streaming<WatchEvent>,
    mut until: tokio::sync::watch::Receiver<u64>,
    pause: Duration,
) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let target = *until.borrow();
        if target > 0 && got.last().is_some_and(|r| *r >= target) {
            return got;
        }
        let ev = tokio::select! {
            ev = tokio::time::timeout(Duration::from_secs(60), s.next()) => ev,
            _ = until.changed(), if target == 0 => continue,
        };
        let ev = ev
            .unwrap_or_else(|_| panic!("{who}: no change after {:?} within 60s", got.last()))
            .expect("stream open")
            .unwrap_or_else(|e| panic!("{who}: watch ended after {:?}: {e}", got.last()));
        got.push(ev.revision);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_reach_a_fast_and_a_slow_watcher_exactly() {
    let agent = Agent::start("[node]\ncpu = \"1\"\nmemory = \"1Gi\"\n").expect("agent");
    let ch = channel(&agent.socket()).await.expect("channel");
    let mut c = ContainerGroupsClient::new(ch.clone());
    // Revision 0 would mean "from now": start from a real revision.
    c.create(CreateGroupRequest {
        spec: Some(spec("before", 0)),
    })
    .await
    .expect("create");
    let start = c
        .list(ListGroupsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .revision;
    let watch = |from| WatchRequest {
        from_revision: from,
        events: true,
        ..Default::default()
    };
    let (end_tx, end_rx) = tokio::sync::watch::channel(0u64);
    let fast = c.watch(watch(start)).await.expect("watch").into_inner();
    let fast = tokio::spawn(collect("fast", fast, end_rx.clone(), Duration::ZERO));
    // Its own connection, so its full flow-control window does not stall the others.
    let slow_ch = channel(&agent.socket()).await.expect("channel");
    let slow = ContainerGroupsClient::new(slow_ch)
        .watch(watch(start))
        .await
        .expect("watch")
        .into_inner();

    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(ch.clone(), w, 250)))
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    // Deletes finish in the background: wait until no group is Terminating.
    let mut end = 0;
    for _ in 0..600 {
        let list = c
            .list(ListGroupsRequest::default())
            .await
            .expect("list")
            .into_inner();
        let terminating = list
            .groups
            .iter()
            .any(|g| g.status.as_ref().is_some_and(|s| s.phase == "Terminating"));
        if !terminating {
            end = list.revision;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(end > 0, "deletes did not finish");
    assert!(end - start >= 1000, "{} changes", end - start);
    let want: Vec<u64> = (start + 1..=end).collect();
    end_tx.send(end).expect("collectors");
    // The slow watcher read nothing while 1,000 changes were made: far more than the live
    // channel holds. It reads slowly, too.
    let slow = collect("slow", slow, end_rx.clone(), Duration::from_millis(1)).await;
    assert_eq!(slow.len(), want.len(), "slow watcher: count");
    assert_eq!(slow, want, "slow watcher: every revision once, in order");
    let fast = fast.await.expect("fast");
    assert_eq!(fast, want, "fast watcher: every revision once, in order");
    assert!(
        agent.log().contains("catching up from the change log"),
        "the slow watcher fell behind the live channel"
    );

    // A watch from the start replays the same history from the store.
    let replay_ch = channel(&agent.socket()).await.expect("channel");
    let replay = ContainerGroupsClient::new(replay_ch)
        .watch(watch(start))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        collect("replay", replay, end_rx, Duration::ZERO).await,
        want,
        "replay"
    );
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
