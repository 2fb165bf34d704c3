//! Crash consistency under load: N concurrent creates (50 in CI; `ECI_CHAOS_GROUPS`
//! overrides), the agent SIGKILLed during three bursts, during a restart of every group
//! and during a batch of deletes, and a shim SIGKILLed during a create; after each restart every accepted group converges — `Running`
//! with exactly one shim and one process per container — and after deleting everything
//! no shim, container process, mount, cgroup or run directory of the test is left.
//! Prints its figures. Needs root.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::{
    Container, CreateGroupRequest, DeleteGroupRequest, GetGroupRequest, GroupSpec,
    RestartGroupRequest,
};
use eci_tests::scenario::{IMAGE, import};
use eci_tests::{Agent, cgroup_dirs, channel, oci};

fn spec(name: &str) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        restart_policy: "Always".into(),
        termination_grace_period_seconds: Some(0),
        containers: vec![Container {
            name: "app".into(),
            image: IMAGE.into(),
            image_pull_policy: "IfNotPresent".into(),
            command: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Shim processes of this agent, by group id.
fn shims(agent: &Agent) -> BTreeMap<String, usize> {
    let run = agent.root().join("run/eci");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("eci-shim"))
            || args.get(1).map(String::as_str) != Some("start")
        {
            continue;
        }
        let val = |k: &str| {
            args.iter()
                .position(|a| a == k)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        if val("--run-dir").as_deref() == Some(run.to_str().expect("utf-8"))
            && let Some(id) = val("--id")
        {
            *out.entry(id).or_default() += 1;
        }
    }
    out
}

/// Processes in a container's cgroup (pids hierarchy).
fn container_procs(agent: &Agent, id: &str) -> usize {
    std::fs::read_to_string(format!(
        "/sys/fs/cgroup/pids/{}/{id}/app/cgroup.procs",
        agent.cgroup_parent()
    ))
    .map(|s| s.lines().count())
    .unwrap_or(0)
}

async fn phases(
    client: &mut ContainerGroupsClient<tonic::transport::Channel>,
    names: &[String],
) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for n in names {
        if let Ok(g) = client.get(GetGroupRequest { name: n.clone() }).await {
            let g = g.into_inner();
            let phase = g.status.map(|s| s.phase).unwrap_or_default();
            out.insert(n.clone(), (g.id, phase));
        }
    }
    out
}

/// Waits until every group in `names` is Running with one shim and one container
/// process; panics naming the stuck ones.
async fn settle(agent: &Agent, names: &[String], what: &str) -> Duration {
    let t0 = Instant::now();
    let mut client = ContainerGroupsClient::new(channel(&agent.socket()).await.expect("channel"));
    loop {
        let p = phases(&mut client, names).await;
        let sh = shims(agent);
        let stuck: Vec<String> = names
            .iter()
            .filter_map(|n| {
                let (id, phase) = p.get(n)?;
                let ok =
                    phase == "Running" && sh.get(id) == Some(&1) && container_procs(agent, id) == 1;
                (!ok).then(|| {
                    format!(
                        "{n} ({phase}, shims {}, procs {})",
                        sh.get(id).copied().unwrap_or(0),
                        container_procs(agent, id)
                    )
                })
            })
            .collect();
        let missing: Vec<&String> = names.iter().filter(|n| !p.contains_key(*n)).collect();
        assert!(
            missing.is_empty(),
            "{what}: accepted groups lost: {missing:?}"
        );
        if stuck.is_empty() {
            return t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(180) {
            panic!("{what}: stuck after 180 s: {stuck:?}\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_and_deletes_converge_through_agent_and_shim_crashes() {
    let n: usize = std::env::var("ECI_CHAOS_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    // Room for every group on this 2-core machine: admission is not what is tested.
    let mut agent = Agent::start("[node]\ncpu = \"256\"\nmemory = \"1024Gi\"\n").expect("agent");
    let image = oci::Image {
        layers: vec![oci::busybox_layer().expect("busybox-static")],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    import(&agent, &image, IMAGE);
    let t0 = Instant::now();
    let mut kills = 0;

    // 1. Bursts of creates, the agent killed in the middle of each at a different point
    //    (while requests are admitted, shims launched, containers started).
    let mut accepted = Vec::new();
    let mut all = Vec::new();
    let rounds = [120u64, 300, 700];
    for (r, delay) in rounds.iter().enumerate() {
        let ch = channel(&agent.socket()).await.expect("channel");
        let batch: Vec<String> = (0..n)
            .filter(|i| i % rounds.len() == r)
            .map(|i| format!("chaos-{i}"))
            .collect();
        all.extend(batch.iter().cloned());
        let creates: Vec<_> = batch
            .into_iter()
            .map(|name| {
                let mut c = ContainerGroupsClient::new(ch.clone());
                tokio::spawn(async move {
                    c.create(CreateGroupRequest {
                        spec: Some(spec(&name)),
                    })
                    .await
                    .ok()
                    .map(|_| name)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        agent.kill9().expect("kill -9 during a burst");
        kills += 1;
        for c in creates {
            if let Ok(Some(name)) = c.await {
                accepted.push(name);
            }
        }
        agent.restart().expect("restart");
    }
    // Creates answered before a kill must have survived; others may or may not have.
    let mut client = ContainerGroupsClient::new(channel(&agent.socket()).await.expect("channel"));
    let stored = phases(&mut client, &all).await;
    for a in &accepted {
        assert!(stored.contains_key(a), "{a} was accepted, then lost");
    }
    let names: Vec<String> = stored.keys().cloned().collect();
    let settle1 = settle(&agent, &names, "after the bursts").await;

    // 2. A shim killed during a create (as soon as it serves, before its container is
    //    known to run): the group comes back, once.
    let mut names = names;
    let victim = "chaos-shim".to_string();
    let mut c = ContainerGroupsClient::new(channel(&agent.socket()).await.expect("channel"));
    let g = c
        .create(CreateGroupRequest {
            spec: Some(spec(&victim)),
        })
        .await
        .expect("create")
        .into_inner();
    let pid_file = agent
        .root()
        .join(format!("run/eci/groups/{}/shim.pid", g.id));
    let pid: i32 = eci_tests::wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
    })
    .expect("the shim started");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill shim");
    kills += 1;
    names.push(victim);
    let settle2 = settle(&agent, &names, "after a shim was killed").await;

    // 3. Every group restarted (containers recreated on their sandboxes), the agent
    //    killed in the middle of it.
    let ch = channel(&agent.socket()).await.expect("channel");
    let restarts: Vec<_> = names
        .iter()
        .map(|name| {
            let mut c = ContainerGroupsClient::new(ch.clone());
            let name = name.clone();
            tokio::spawn(async move {
                let _ = c.restart(RestartGroupRequest { name }).await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(250)).await;
    agent.kill9().expect("kill -9 during the restarts");
    kills += 1;
    for r in restarts {
        let _ = r.await;
    }
    agent.restart().expect("restart");
    let settle3 = settle(&agent, &names, "after the restarts").await;

    // 4. Deletes, with the agent killed in the middle of them.
    let mut client = ContainerGroupsClient::new(channel(&agent.socket()).await.expect("channel"));
    let deletes: Vec<_> = names
        .iter()
        .map(|name| {
            let mut c = client.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let _ = c
                    .delete(DeleteGroupRequest {
                        name,
                        grace_period_seconds: Some(0),
                        force: true,
                    })
                    .await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.kill9().expect("kill -9 during the deletes");
    kills += 1;
    for d in deletes {
        let _ = d.await;
    }
    agent.restart().expect("restart");
    client = ContainerGroupsClient::new(channel(&agent.socket()).await.expect("channel"));
    // Whatever the deletes did not reach is deleted now.
    for name in &names {
        let _ = client
            .delete(DeleteGroupRequest {
                name: name.clone(),
                grace_period_seconds: Some(0),
                force: true,
            })
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = phases(&mut client, &names).await;
        let sh = shims(&agent);
        let cgs: Vec<_> = cgroup_dirs(&agent.cgroup_parent())
            .into_iter()
            .filter(|d| {
                d.file_name()
                    .is_some_and(|f| f != std::ffi::OsStr::new(&agent.cgroup_parent()))
            })
            .collect();
        let run_dirs: Vec<_> = std::fs::read_dir(agent.root().join("run/eci/groups"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter(|l| {
                l.contains(agent.root().to_str().expect("utf-8"))
                    && !l.contains("run/eci/bin/eci-shim")
            })
            .map(String::from)
            .collect();
        if left.is_empty()
            && sh.is_empty()
            && cgs.is_empty()
            && run_dirs.is_empty()
            && mounts.is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after deleting everything: groups {left:?}, shims {sh:?}, cgroups {cgs:?}, run dirs {run_dirs:?}, mounts {mounts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "chaos: {n} creates, {} accepted before a kill, {} stored, {kills} kills (agent x5, shim x1); \
         settled in {:.1} s after the bursts, {:.1} s after the shim kill, {:.1} s after the restarts; everything gone after {:.1} s in all",
        accepted.len(),
        names.len(),
        settle1.as_secs_f64(),
        settle2.as_secs_f64(),
        settle3.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
