//! API latency and agent memory under load, in one run on one machine (issue 13):
//!
//! - (a) p50/p99 of `Get` and `Create` of small groups with no streams open, and again
//!   with 100 `Exec` and 100 `Logs(follow)` streams open on a running group;
//! - (b) other groups' `Get`/`Create` p50/p99 while a group with 10,000 `env` entries
//!   (the documented maximum) is created, and what a group with 10,001 gets, and how
//!   fast;
//! - (c) the agent's resident memory idle, after 1,000 creates and deletes of small
//!   groups, during and after a `Watch` from revision 1.
//!
//! Prints figures and ratios; no pass/fail. Needs root and busybox-static. Run:
//! `cargo build --release --workspace --bins && sudo target/release/eci-apibench`
//! `[CREATES [CHURN [ENV]]]`: groups created per latency sample (30), creates and
//! deletes before the memory figure (1000), env entries of the big group in (b)
//! (10000, the documented maximum; ENV+1 is tried after it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::containers_client::ContainersClient;
use eci_api::v1::*;
use eci_tests::Agent;
use eci_tests::scenario::{IMAGE, busybox_agent_with};
use futures::StreamExt;
use tonic::transport::Channel;

/// Room for 1,000+ groups of the smallest size on any test machine: admission is not
/// what is measured.
const CONFIG: &str = "[node]\ncpu = \"4000\"\nmemory = \"16000Gi\"\n";
/// The documented maximum of env entries per container (the default for (b)).
const ENV_MAX: usize = 10_000;

type Groups = ContainerGroupsClient<Channel>;

fn small(name: &str, script: &str, env: usize) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        restart_policy: "Never".into(),
        termination_grace_period_seconds: Some(0),
        containers: vec![Container {
            name: "c".into(),
            image: IMAGE.into(),
            image_pull_policy: "IfNotPresent".into(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            // Short entries: 100,000 of them still fit the 4 MiB message limit.
            env: (0..env)
                .map(|i| EnvVar {
                    name: format!("ENV_{i}"),
                    value: format!("value-{i}"),
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Latencies of one kind of call.
#[derive(Default, Clone)]
struct Lat(Vec<Duration>);

impl Lat {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v.sort();
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    fn p50(&self) -> Duration {
        self.pct(0.50)
    }
    fn p99(&self) -> Duration {
        self.pct(0.99)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "n/a".into();
    }
    format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
}

/// One line of a side-by-side table: the call, then p50 and p99 before / after.
fn row(what: &str, base: &Lat, load: &Lat) {
    println!(
        "{what:<28} {:>10} {:>10} | {:>10} {:>10} | p50 x{:<6} p99 x{}",
        ms(base.p50()),
        ms(base.p99()),
        ms(load.p50()),
        ms(load.p99()),
        ratio(load.p50(), base.p50()),
        ratio(load.p99(), base.p99()),
    );
}

/// Creates `n` small groups named `<prefix>-<i>` one after the other, with four `Get`s
/// of `anchor` after each; then deletes them (forced) and waits until they are gone.
async fn sample(c: &mut Groups, prefix: &str, n: usize, anchor: &str) -> (Lat, Lat) {
    let (mut gets, mut creates) = (Lat::default(), Lat::default());
    for i in 0..n {
        let spec = small(&format!("{prefix}-{i}"), "exec sleep 3600", 0);
        let t = Instant::now();
        if let Err(e) = c.create(CreateGroupRequest { spec: Some(spec) }).await {
            eprintln!("create {prefix}-{i}: {e}");
        }
        creates.0.push(t.elapsed());
        for _ in 0..4 {
            let t = Instant::now();
            let _ = c
                .get(GetGroupRequest {
                    name: anchor.into(),
                })
                .await;
            gets.0.push(t.elapsed());
        }
    }
    delete_all(c, prefix, n).await;
    (gets, creates)
}

async fn delete_all(c: &mut Groups, prefix: &str, n: usize) {
    for i in 0..n {
        let _ = c
            .delete(DeleteGroupRequest {
                name: format!("{prefix}-{i}"),
                grace_period_seconds: Some(0),
                force: true,
            })
            .await;
    }
    for i in 0..n {
        wait_gone(c, &format!("{prefix}-{i}")).await;
    }
}

async fn wait_gone(c: &mut Groups, name: &str) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        match c.get(GetGroupRequest { name: name.into() }).await {
            Err(s) if s.code() == tonic::Code::NotFound => return,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    eprintln!("group {name} still there after 120 s");
}

/// Waits until the group runs, or its first container ended or failed to start; returns
/// how long that took and what the group said.
async fn wait_settled(c: &mut Groups, name: &str, limit: Duration) -> (Duration, String) {
    let t = Instant::now();
    let mut last = String::from("(no status)");
    while t.elapsed() < limit {
        if let Ok(g) = c.get(GetGroupRequest { name: name.into() }).await
            && let Some(st) = g.into_inner().status
        {
            let first = st.container_statuses.first().cloned().unwrap_or_default();
            last = format!(
                "{} ({})",
                st.phase,
                first.message.chars().take(120).collect::<String>()
            );
            if st.phase == "Running" {
                return (t.elapsed(), "Running".into());
            }
            if first.state == "Terminated" || st.phase == "Failed" || !first.message.is_empty() {
                return (t.elapsed(), last);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (
        t.elapsed(),
        format!("still {last} after {} s", limit.as_secs()),
    )
}

async fn wait_running(c: &mut Groups, name: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(g) = c.get(GetGroupRequest { name: name.into() }).await
            && g.into_inner().status.is_some_and(|s| s.phase == "Running")
        {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The agent's pid: the eci-agent process whose command line names this agent's root.
fn agent_pid(agent: &Agent) -> Option<u32> {
    let root = agent.root().display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.contains("eci-agent") && cmd.contains(&root)).then_some(pid)
    })
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Opens `n` Logs(follow) and `n` Exec streams on group `name`; returns their tasks
/// and how many of each have delivered output so far.
async fn open_streams(
    ch: &Channel,
    name: &str,
    n: usize,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<[AtomicUsize; 2]>) {
    let live: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut logs = ContainersClient::new(ch.clone());
        let group = name.to_string();
        let counted = live.clone();
        tasks.push(tokio::spawn(async move {
            let req = LogsRequest {
                group,
                follow: true,
                tail_lines: 10,
                ..Default::default()
            };
            if let Ok(s) = logs.logs(req).await {
                let mut s = s.into_inner();
                if let Ok(Some(_)) = s.message().await {
                    counted[0].fetch_add(1, Ordering::Relaxed);
                }
                while let Ok(Some(_)) = s.message().await {}
            }
        }));
        let mut exec = ContainersClient::new(ch.clone());
        let group = name.to_string();
        let counted = live.clone();
        tasks.push(tokio::spawn(async move {
            let start = ExecRequest {
                start: Some(ExecStart {
                    group,
                    command: vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        "while true; do echo exec; sleep 1; done".into(),
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            };
            // The request stream stays open (no more input) while the process runs.
            let input =
                futures::stream::once(async move { start }).chain(futures::stream::pending());
            match exec.exec(input).await {
                Ok(s) => {
                    let mut s = s.into_inner();
                    if let Ok(Some(_)) = s.message().await {
                        counted[1].fetch_add(1, Ordering::Relaxed);
                    }
                    while let Ok(Some(_)) = s.message().await {}
                }
                Err(e) => eprintln!("exec: {}", e.message()),
            }
        }));
        // Exec helpers are processes: start them at a pace the shim can follow.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (tasks, live)
}

/// Reads a Watch from revision 1 to its end (nothing more for 3 s); returns the number
/// of changes and the highest RSS seen meanwhile.
async fn watch_from_start(c: &mut Groups, pid: u32) -> (usize, f64) {
    let req = WatchRequest {
        from_revision: 1,
        events: true,
        ..Default::default()
    };
    let mut peak = rss_mib(pid);
    let mut n = 0;
    match c.watch(req).await {
        Ok(s) => {
            let mut s = s.into_inner();
            loop {
                match tokio::time::timeout(Duration::from_secs(3), s.message()).await {
                    Ok(Ok(Some(_))) => {
                        n += 1;
                        if n % 500 == 0 {
                            peak = peak.max(rss_mib(pid));
                        }
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        eprintln!("watch: {e}");
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        Err(e) => eprintln!("watch: {}", e.message()),
    }
    (n, peak.max(rss_mib(pid)))
}

fn main() -> anyhow::Result<()> {
    let creates: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let churn: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let env_max: usize = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(ENV_MAX);
    let agent = busybox_agent_with(CONFIG);
    let pid = agent_pid(&agent).ok_or_else(|| anyhow::anyhow!("agent pid not found"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(&agent, pid, creates, churn, env_max))
}

async fn run(
    agent: &Agent,
    pid: u32,
    creates: usize,
    churn: usize,
    env_max: usize,
) -> anyhow::Result<()> {
    let ch = eci_tests::channel(&agent.socket()).await?;
    let streams_ch = eci_tests::channel(&agent.socket()).await?;
    let mut c = ContainerGroupsClient::new(ch.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mib(pid);

    // A running group: the anchor of the Gets and the target of the streams.
    let anchor = "bench-anchor";
    c.create(CreateGroupRequest {
        spec: Some(small(
            anchor,
            "while true; do echo tick; sleep 0.1; done",
            0,
        )),
    })
    .await?;
    anyhow::ensure!(
        wait_running(&mut c, anchor, Duration::from_secs(30))
            .await
            .is_some(),
        "the anchor group did not start"
    );

    println!("eci-apibench: {creates} creates (x4 gets) per sample\n");
    // (a) no streams vs. 100 Exec + 100 Logs(follow).
    let (get0, create0) = sample(&mut c, "quiet", creates, anchor).await;
    let (streams, live) = open_streams(&streams_ch, anchor, 100).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let open = [0, 1].map(|i| live[i].load(Ordering::Relaxed));
    let (get1, create1) = sample(&mut c, "streams", creates, anchor).await;
    for t in &streams {
        t.abort();
    }
    println!(
        "(a) API latency: no streams vs. 100 Exec + 100 Logs(follow) streams \
         ({} Logs and {} Exec delivering output)",
        open[0], open[1]
    );
    println!(
        "{:<28} {:>10} {:>10} | {:>10} {:>10} | ratio (streams / none)",
        "call", "p50", "p99", "p50", "p99"
    );
    row("Get (other group)", &get0, &get1);
    row("Create (small group)", &create0, &create1);
    println!();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // (b) other groups while a group at the env limit is created.
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let mut c = c.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut out = (Lat::default(), Lat::default());
            let mut i = 0;
            // Until the big group runs (or could not be started).
            while !stop.load(Ordering::Relaxed) {
                let (g, cr) = sample_once(&mut c, i, anchor).await;
                out.0.0.push(g);
                out.1.0.push(cr);
                i += 1;
                // Paced: a few hundred groups, not thousands, however long it takes.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            delete_all(&mut c, "during", i).await;
            out
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let big = c
        .create(CreateGroupRequest {
            spec: Some(small("bench-env-max", "exec sleep 3600", env_max)),
        })
        .await;
    let big_create = t.elapsed();
    let big_settled = match &big {
        Ok(_) => Some(wait_settled(&mut c, "bench-env-max", Duration::from_secs(30)).await),
        Err(_) => None,
    };
    stop.store(true, Ordering::Relaxed);
    let (get2, create2) = bg.await?;
    println!("(b) other groups while a group with {env_max} env entries is created");
    println!(
        "{:<28} {:>10} {:>10} | {:>10} {:>10} | ratio (during / quiet)",
        "call", "p50", "p99", "p50", "p99"
    );
    row("Get (other group)", &get0, &get2);
    row("Create (small group)", &create0, &create2);
    match &big {
        Ok(_) => {
            let (d, what) = big_settled.unwrap_or_default();
            println!(
                "{env_max} entries: Create answered in {}; {what} {} after the call",
                ms(big_create),
                ms(big_create + d)
            )
        }
        Err(e) => println!(
            "{env_max} entries: {:?} in {}: {}",
            e.code(),
            ms(big_create),
            e.message().chars().take(160).collect::<String>()
        ),
    }
    let t = Instant::now();
    let over = c
        .create(CreateGroupRequest {
            spec: Some(small("bench-env-over", "exec sleep 3600", env_max + 1)),
        })
        .await;
    let over_t = t.elapsed();
    match over {
        Ok(_) => {
            println!(
                "{} entries: accepted in {} (no limit enforced on this build)",
                env_max + 1,
                ms(over_t)
            );
            let _ = c
                .delete(DeleteGroupRequest {
                    name: "bench-env-over".into(),
                    grace_period_seconds: Some(0),
                    force: true,
                })
                .await;
            wait_gone(&mut c, "bench-env-over").await;
        }
        Err(e) => println!(
            "{} entries: {:?} in {}: {}",
            env_max + 1,
            e.code(),
            ms(over_t),
            e.message().chars().take(160).collect::<String>()
        ),
    }
    for name in ["bench-env-max", anchor] {
        let _ = c
            .delete(DeleteGroupRequest {
                name: name.into(),
                grace_period_seconds: Some(0),
                force: true,
            })
            .await;
        wait_gone(&mut c, name).await;
    }
    println!();

    // (c) memory.
    let t = Instant::now();
    let batch = 10;
    for b in 0..churn.div_ceil(batch) {
        let prefix = format!("churn{b}");
        let n = batch.min(churn - b * batch);
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut c = c.clone();
            let name = format!("{prefix}-{i}");
            tasks.push(tokio::spawn(async move {
                let _ = c
                    .create(CreateGroupRequest {
                        spec: Some(small(&name, "exec sleep 3600", 0)),
                    })
                    .await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        delete_all(&mut c, &prefix, n).await;
    }
    let churn_time = t.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_churn = rss_mib(pid);
    let (changes, peak) = watch_from_start(&mut c, pid).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_watch = rss_mib(pid);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after_watch_35 = rss_mib(pid);
    let db = std::fs::metadata(agent.root().join("var/lib/eci/state.redb"))
        .map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64);
    println!("(c) agent resident memory (VmRSS)");
    println!("{:<52} {:>9.1} MiB", "idle, after start", idle);
    println!(
        "{:<52} {:>9.1} MiB  (x{:.2} idle; churn took {:.0} s)",
        format!("after {churn} creates and deletes (+5 s)"),
        after_churn,
        after_churn / idle,
        churn_time.as_secs_f64()
    );
    println!(
        "{:<52} {:>9.1} MiB  (x{:.2} idle; {changes} changes read)",
        "peak during a Watch from revision 1",
        peak,
        peak / idle
    );
    println!(
        "{:<52} {:>9.1} MiB  (x{:.2} idle)",
        "after that Watch ended (+5 s)",
        after_watch,
        after_watch / idle
    );
    println!(
        "{:<52} {:>9.1} MiB  (x{:.2} idle)",
        "after that Watch ended (+35 s)",
        after_watch_35,
        after_watch_35 / idle
    );
    println!("{:<52} {:>9.1} MiB", "state database file (state.redb)", db);
    Ok(())
}

/// One small create and one Get of `anchor`, timed.
async fn sample_once(c: &mut Groups, i: usize, anchor: &str) -> (Duration, Duration) {
    let t = Instant::now();
    let _ = c
        .get(GetGroupRequest {
            name: anchor.into(),
        })
        .await;
    let get = t.elapsed();
    let t = Instant::now();
    let _ = c
        .create(CreateGroupRequest {
            spec: Some(small(&format!("during-{i}"), "exec sleep 3600", 0)),
        })
        .await;
    (get, t.elapsed())
}
