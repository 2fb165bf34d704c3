//! Start-latency and shim-footprint benchmark, in one run on one machine:
//!
//! - time from the Create call to the container's first output, for a one-container
//!   group from a local image (agent: admission, shim, namespaces, cgroups, overlay,
//!   seccomp, CRI log), on two agents at once — one with user namespaces on, one with
//!   them off (issue 14) — in alternating rounds so machine noise hits both alike, against
//!   `runc run` and `crun run` of the same rootfs as a bundle;
//! - resident memory of an idle group's eci-shim (both agents) against
//!   containerd-shim-runc-v2.
//!
//! Before timing, it checks from `Node.Info` (`userNamespaces.mode`, `enforced`), each
//! agent's first group's `GroupStatus.userNamespace` and the host uid of that group's
//! container that the "on" agent really runs in mode on and the "off" one in mode off; it
//! prints no on/off ratio when the "on" agent is not in mode on.
//!
//! With `ECI_TEST_DEBIAN_IMAGE=<OCI archive>` (see `scripts/debian-test-image.sh`) it
//! also times that image (more layers and files) on both agents.
//!
//! Prints medians, p90 and ratios. Needs root, busybox-static, and runc / crun / containerd
//! for the peers (a missing peer prints n/a).
//! Run: `eci-bench [--control] [--rounds N]` (default 40; a bare `N` works too).
//! `--control` gives both agents user namespaces on: their ratio is the harness's own
//! noise and bias, against which an on/off difference of a few percent must be read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::node_client::NodeClient;
use eci_api::v1::*;
use eci_tests::{Agent, oci};
use tonic::transport::Channel;

const IMAGE: &str = "127.0.0.1:5000/bench/busybox:1";
const DEBIAN_IMAGE: &str = "127.0.0.1:5000/bench/debian:1";
/// The goal: start with user namespaces on at most 5% slower than off.
const GOAL: f64 = 1.05;

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// The 90th percentile (nearest rank).
fn p90(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let rank = (v.len() * 9).div_ceil(10).max(1);
    v[rank - 1]
}

/// A 90% bootstrap interval of median(on) / median(off): rounds (each an on and an off
/// start) resampled with replacement, 2,000 times, from a fixed seed so a run's output
/// depends on its timings only. On a shared 2-core machine one run's ratio moves by
/// several percent; this says whether the 5% goal is decided or within that noise.
fn ratio_interval(on: &[Duration], off: &[Duration]) -> (f64, f64) {
    let n = on.len().min(off.len());
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*: enough for resampling indices.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut ratios: Vec<f64> = (0..2000)
        .map(|_| {
            let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for _ in 0..n {
                // The modulo bias is negligible for n far below 2^64.
                let i = (next() % n as u64) as usize;
                a.push(on[i]);
                b.push(off[i]);
            }
            median(&a).as_secs_f64() / median(&b).as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    (
        ratios[ratios.len() / 20],
        ratios[ratios.len() * 19 / 20 - 1],
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// An image timed on both agents.
struct BenchImage {
    /// Short name for the rows.
    label: &'static str,
    reference: &'static str,
}

/// One of the two agents: user namespaces on or off in its config.
struct Side {
    /// Its name in the output: `on` or `off` (`on-B` for the second agent of a control
    /// run).
    wanted: &'static str,
    /// `[user_namespaces] enabled` in its config.
    enabled: bool,
    agent: Agent,
    groups: ContainerGroupsClient<Channel>,
    /// `Node.Info.userNamespaces` as the agent reported it at start.
    info: NodeUserNamespaces,
}

/// What the first (untimed) group of a side showed, checked before any timing.
struct Observed {
    /// `GroupStatus.userNamespace`.
    range: Option<GroupUserNamespace>,
    /// Real uid on the host of the container's process, and its first `uid_map` line.
    host_uid: Option<(u32, String)>,
    shim_rss_kib: Option<u64>,
}

impl Side {
    fn start(
        wanted: &'static str,
        enabled: bool,
        rt: &tokio::runtime::Runtime,
        archives: &[(PathBuf, &str)],
    ) -> anyhow::Result<Side> {
        let agent = Agent::start(&format!("[user_namespaces]\nenabled = {enabled}\n"))?;
        for (archive, reference) in archives {
            let out = agent.ctl(&[
                "images",
                "import",
                archive.to_str().unwrap_or_default(),
                "--reference",
                reference,
            ]);
            anyhow::ensure!(
                out.status.success(),
                "import {} into the userns-{wanted} agent: {}",
                archive.display(),
                eci_tests::text(&out)
            );
        }
        let ch = rt.block_on(eci_tests::channel(&agent.socket()))?;
        let info = rt
            .block_on(NodeClient::new(ch.clone()).info(NodeInfoRequest {}))?
            .into_inner()
            .user_namespaces
            .unwrap_or_default();
        Ok(Side {
            wanted,
            enabled,
            agent,
            groups: ContainerGroupsClient::new(ch),
            info,
        })
    }

    /// Create → the container's "go" line in its log; with `observe`, also what the
    /// group shows (after the clock stopped), then the group is deleted.
    fn start_once(
        &mut self,
        rt: &tokio::runtime::Runtime,
        image: &str,
        name: &str,
        observe: bool,
    ) -> anyhow::Result<(Duration, Option<Observed>)> {
        let spec = GroupSpec {
            name: name.into(),
            restart_policy: "Never".into(),
            termination_grace_period_seconds: Some(0),
            containers: vec![Container {
                name: "c".into(),
                image: image.into(),
                image_pull_policy: "IfNotPresent".into(),
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo go; exec sleep 3600".into(),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let t0 = Instant::now();
        let g = rt
            .block_on(self.groups.create(CreateGroupRequest { spec: Some(spec) }))?
            .into_inner();
        let log = self
            .agent
            .root()
            .join("var/log/eci/groups")
            .join(&g.id)
            .join("c/0.log");
        loop {
            if std::fs::read_to_string(&log).is_ok_and(|s| s.contains(" go")) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                anyhow::bail!(
                    "group {name} (userns {}) did not start: {}",
                    self.wanted,
                    eci_tests::text(&self.agent.ctl(&["describe", name]))
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let elapsed = t0.elapsed();
        let observed = if observe {
            // An idle group's shim: the container sleeps.
            std::thread::sleep(Duration::from_millis(300));
            let run = self.agent.root().join("run/eci/groups").join(&g.id);
            let shim_rss_kib = std::fs::read_to_string(run.join("shim.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .and_then(rss_kib);
            let status = rt
                .block_on(self.groups.get(GetGroupRequest { name: name.into() }))?
                .into_inner()
                .status
                .unwrap_or_default();
            Some(Observed {
                range: status.user_namespace,
                host_uid: container_host_uid(&self.agent, &g.id),
                shim_rss_kib,
            })
        } else {
            None
        };
        let req = DeleteGroupRequest {
            name: name.into(),
            grace_period_seconds: Some(0),
            force: true,
        };
        rt.block_on(self.groups.delete(req))?;
        let out = self
            .agent
            .ctl(&["wait", name, "--for", "delete", "--timeout", "30s"]);
        anyhow::ensure!(out.status.success(), "{}", eci_tests::text(&out));
        Ok((elapsed, observed))
    }
}

/// The host's view of the group's container `c`: the real uid of its first process and
/// the first line of that process's `uid_map` (`0 0 4294967295` in the initial userns).
fn container_host_uid(agent: &Agent, id: &str) -> Option<(u32, String)> {
    let parent = agent.cgroup_parent();
    let procs = [
        format!("/sys/fs/cgroup/pids/{parent}/{id}/c/cgroup.procs"),
        format!("/sys/fs/cgroup/{parent}/{id}/c/cgroup.procs"),
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok())?;
    let pid: u32 = procs.lines().next()?.trim().parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).ok()?;
    let map = map
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    Some((uid, map))
}

/// `<runtime> run` of the same rootfs: start → "go" on its stdout.
fn bench_oci(runtime: &str, bundle: &Path, n: usize) -> Result<Vec<Duration>, String> {
    let mut times = Vec::new();
    for i in 0..n {
        let id = format!("eci-bench-{runtime}-{}-{i}", std::process::id());
        let t0 = Instant::now();
        let mut child = Command::new(runtime)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{runtime}: {e}"))?;
        let mut out = child.stdout.take().ok_or("no stdout")?;
        let mut buf = [0u8; 16];
        let n_read = out.read(&mut buf).unwrap_or(0);
        let elapsed = t0.elapsed();
        let status = child.wait().map_err(|e| e.to_string())?;
        let _ = Command::new(runtime).args(["delete", "-f", &id]).output();
        if n_read == 0 || !String::from_utf8_lossy(&buf[..n_read]).contains("go") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!(
                "{runtime} run failed ({status}): {}",
                err.lines().next().unwrap_or("")
            ));
        }
        times.push(elapsed);
    }
    Ok(times)
}

/// A runc bundle with the busybox rootfs that prints "go".
fn make_bundle(dir: &Path) -> anyhow::Result<PathBuf> {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    tar::Archive::new(&oci::busybox_layer()?[..]).unpack(&rootfs)?;
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .output();
    let mut spec: serde_json::Value = match out {
        Ok(o) if o.status.success() => {
            serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?
        }
        _ => anyhow::bail!("runc spec failed: is runc installed?"),
    };
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/echo", "go"]);
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )?;
    Ok(bundle)
}

/// containerd-shim-runc-v2 of an idle container started by a private containerd.
fn containerd_shim_rss(dir: &Path, archive: &Path) -> Result<u64, String> {
    let containerd = eci_tests::peers::PrivateContainerd::start(dir)?;
    let ctr = |args: &[&str]| containerd.ctr(args);
    let result = (|| {
        let out = ctr(&[
            "images",
            "import",
            "--no-unpack",
            archive.to_str().unwrap_or_default(),
        ])
        .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "ctr images import: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let out = ctr(&["run", "-d", IMAGE, "eci-bench-idle", "/bin/sleep", "3600"])
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "ctr run: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
        let ps = Command::new("pgrep")
            .args(["-f", "containerd-shim-runc-v2.*eci-bench-idle"])
            .output()
            .map_err(|e| e.to_string())?;
        let pid: u32 = String::from_utf8_lossy(&ps.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or("no shim process found")?;
        rss_kib(pid).ok_or_else(|| "no VmRSS".to_string())
    })();
    let _ = ctr(&["tasks", "kill", "-s", "SIGKILL", "eci-bench-idle"]);
    std::thread::sleep(Duration::from_millis(200));
    let _ = ctr(&["tasks", "delete", "eci-bench-idle"]);
    let _ = ctr(&["containers", "delete", "eci-bench-idle"]);
    result
}

/// `[--control] [--rounds N | N]`: the rounds, 40 by default (about 30 s here; fewer
/// leave the on/off ratio within machine noise of a few percent), and whether this is a
/// control run: both agents with user namespaces on, so their ratio shows the noise and
/// any bias of the harness itself (it should be 1.0 within its interval).
fn args() -> anyhow::Result<(usize, bool)> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let control = args.first().is_some_and(|a| a == "--control");
    if control {
        args.remove(0);
    }
    let value = match args.as_slice() {
        [] => return Ok((40, control)),
        [flag, n] if flag == "--rounds" => n,
        [n] if !n.starts_with('-') => n,
        _ => anyhow::bail!("usage: eci-bench [--control] [--rounds N]"),
    };
    let n: usize = value
        .parse()
        .map_err(|_| anyhow::anyhow!("rounds: not a number: {value}"))?;
    anyhow::ensure!(n > 0, "rounds: at least 1");
    Ok((n, control))
}

/// Whether the two agents are what their configs ask for, from what they report and what
/// the host sees; `Err` says why the on/off ratio would mean nothing. Prints the evidence.
/// `off` is the second agent, with user namespaces on in a control run.
fn check_modes(on: &Side, off: &Side, seen: &[(&str, Observed, Observed)]) -> Result<(), String> {
    for side in [on, off] {
        let u = &side.info;
        let mut line = format!(
            "agent \"userns {}\": Node.Info userNamespaces.mode = {}",
            side.wanted,
            if u.mode.is_empty() {
                "(unset)"
            } else {
                &u.mode
            }
        );
        if !u.reason.is_empty() {
            line.push_str(&format!(" ({})", u.reason));
        }
        if u.mode == "on" {
            line.push_str(&format!(", enforced = {}", u.enforced));
            if !u.enforced_reason.is_empty() {
                line.push_str(&format!(" ({})", u.enforced_reason));
            }
        }
        println!("{line}");
    }
    for (label, o_on, o_off) in seen {
        for (wanted, o) in [(on.wanted, o_on), (off.wanted, o_off)] {
            let range = match &o.range {
                Some(r) => format!(
                    "host ids {}-{}",
                    r.host_id_base,
                    u64::from(r.host_id_base) + u64::from(r.size).saturating_sub(1)
                ),
                None => "unset".into(),
            };
            let uid = match &o.host_uid {
                Some((uid, map)) => format!("host uid {uid} (uid_map \"{map}\")"),
                None => "host uid n/a".into(),
            };
            println!(
                "  {label}, userns {wanted}: GroupStatus.userNamespace {range}; container runs as {uid}"
            );
        }
    }
    for side in [on, off] {
        let want = if side.enabled { "on" } else { "off" };
        if side.info.mode != want {
            return Err(format!(
                "the userns-{} agent is in mode {:?}, not {want}",
                side.wanted, side.info.mode
            ));
        }
    }
    for (label, o_on, o_off) in seen {
        for (side, o) in [(on, o_on), (off, o_off)] {
            let who = format!("{label}: the userns-{} agent's group", side.wanted);
            let r = match (&o.range, side.enabled) {
                (Some(r), true) => r,
                (None, false) => continue,
                (None, true) => return Err(format!("{who} has no id range")),
                (Some(_), false) => return Err(format!("{who} has an id range")),
            };
            if side.info.enforced {
                let base = u64::from(r.host_id_base);
                match o.host_uid {
                    Some((uid, _))
                        if (base..base + u64::from(r.size)).contains(&u64::from(uid)) => {}
                    Some((uid, _)) => {
                        return Err(format!(
                            "{who}: the agent says enforced, but the container runs as host uid {uid}, outside its range"
                        ));
                    }
                    None => return Err(format!("{who}: the container's host uid is unknown")),
                }
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let (n, control) = args()?;
    let dir = tempfile::Builder::new().prefix("eci-bench-").tempdir()?;
    let archive = dir.path().join("busybox.tar");
    let image = oci::Image {
        layers: vec![oci::busybox_layer()?],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    std::fs::write(&archive, oci::archive(&image, Some(IMAGE)))?;
    let mut images = vec![BenchImage {
        label: "busybox",
        reference: IMAGE,
    }];
    let mut archives = vec![(archive.clone(), IMAGE)];
    if let Some(debian) = std::env::var_os("ECI_TEST_DEBIAN_IMAGE") {
        archives.push((PathBuf::from(debian), DEBIAN_IMAGE));
        images.push(BenchImage {
            label: "debian",
            reference: DEBIAN_IMAGE,
        });
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut on = Side::start("on", true, &rt, &archives)?;
    let mut off = if control {
        Side::start("on-B", true, &rt, &archives)?
    } else {
        Side::start("off", false, &rt, &archives)?
    };
    println!(
        "eci-bench: {n} rounds; each round starts one group per image on both agents, \
         user namespaces on and {}, in alternating order\n",
        if control {
            "on again (control run)"
        } else {
            "off"
        }
    );

    // One untimed round per image and agent: warms caches, and shows what each agent
    // really does before anything is timed.
    let mut seen = Vec::new();
    for img in &images {
        let (_, o_on) = on.start_once(&rt, img.reference, &format!("warm-{}", img.label), true)?;
        let (_, o_off) =
            off.start_once(&rt, img.reference, &format!("warm-{}", img.label), true)?;
        if let (Some(a), Some(b)) = (o_on, o_off) {
            seen.push((img.label, a, b));
        }
    }
    let verdict = check_modes(&on, &off, &seen);
    println!();

    // times[image][0 = on, 1 = off]
    let mut times = vec![[Vec::new(), Vec::new()]; images.len()];
    for round in 0..n {
        for (k, img) in images.iter().enumerate() {
            let name = format!("bench-{}-{round}", img.label);
            let on_first = round % 2 == 1;
            for first in [on_first, !on_first] {
                let (side, slot) = if first { (&mut on, 0) } else { (&mut off, 1) };
                let (t, _) = side.start_once(&rt, img.reference, &name, false)?;
                times[k][slot].push(t);
            }
        }
    }

    let bundle = make_bundle(dir.path());
    let peers: Vec<(&str, Result<Duration, String>)> = ["runc", "crun"]
        .into_iter()
        .map(|rt| {
            let r = match &bundle {
                Ok(b) => bench_oci(rt, b, n).map(|t| median(&t)),
                Err(e) => Err(e.to_string()),
            };
            (rt, r)
        })
        .collect();

    let off_bb = median(&times[0][1]);
    let on_bb = median(&times[0][0]);
    println!(
        "{:<46} {:>9} {:>9} {:>10} {:>10}",
        "start: Create call -> first output",
        "median",
        "p90",
        format!("x / {}", off.wanted),
        "x / on"
    );
    for (k, img) in images.iter().enumerate() {
        for (slot, wanted) in [(1, off.wanted), (0, on.wanted)] {
            let m = median(&times[k][slot]);
            println!(
                "{:<46} {:>9} {:>9} {:>10.2} {:>10.2}",
                format!("eci-agent {}, user namespaces {wanted}", img.label),
                ms(m),
                ms(p90(&times[k][slot])),
                m.as_secs_f64() / off_bb.as_secs_f64(),
                m.as_secs_f64() / on_bb.as_secs_f64()
            );
        }
    }
    for (name, r) in &peers {
        match r {
            Ok(d) => println!(
                "{:<46} {:>9} {:>9} {:>10.2} {:>10.2}",
                format!("{name} run (busybox bundle only)"),
                ms(*d),
                "",
                d.as_secs_f64() / off_bb.as_secs_f64(),
                d.as_secs_f64() / on_bb.as_secs_f64()
            ),
            Err(e) => println!("{:<46} {:>9} {}", format!("{name} run"), "n/a", e),
        }
    }
    println!("(eci-agent rows: the whole group, shim, namespaces, cgroups, overlay, logs)\n");

    match &verdict {
        Err(why) => println!("user namespaces on / {}: no ratio: {why}", off.wanted),
        Ok(()) => {
            for (k, img) in images.iter().enumerate() {
                let [t_on, t_off] = &times[k];
                let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
                let med = ratio(median(t_on), median(t_off));
                let p = ratio(p90(t_on), p90(t_off));
                let mut paired: Vec<f64> =
                    t_on.iter().zip(t_off).map(|(a, b)| ratio(*a, *b)).collect();
                paired.sort_by(f64::total_cmp);
                let paired = paired[paired.len() / 2];
                // The same per round in milliseconds: what user namespaces add to a start.
                let mut extra: Vec<f64> = t_on
                    .iter()
                    .zip(t_off)
                    .map(|(a, b)| (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
                    .collect();
                extra.sort_by(f64::total_cmp);
                let extra = extra[extra.len() / 2];
                println!(
                    "user namespaces on / {o}, {}: median {med:.3}, p90 {p:.3}, median of per-round ratios {paired:.3} (on - {o}: {extra:+.1} ms)",
                    img.label,
                    o = off.wanted
                );
                let (lo, hi) = ratio_interval(t_on, t_off);
                let goal = if control {
                    "n/a (control run: both agents on; the ratio should be 1.0 within the interval)"
                } else if hi <= GOAL {
                    "met"
                } else if lo > GOAL {
                    "NOT met"
                } else if med <= GOAL {
                    "met by the median, but within this run's noise"
                } else {
                    "NOT met by the median, but within this run's noise"
                };
                println!(
                    "  90% interval of the median ratio (rounds resampled): {lo:.3}-{hi:.3}; \
                     goal (on at most 5% slower): {goal}"
                );
            }
            if !on.info.enforced {
                println!(
                    "  caveat: containers do not run in user namespaces yet (Node.Info enforced = false); \
                     the ratio covers the agent's id-range bookkeeping only"
                );
            }
        }
    }
    println!();

    let theirs = containerd_shim_rss(dir.path(), &archive);
    println!(
        "{:<46} {:>10} {:>22}",
        "idle shim resident memory",
        "VmRSS",
        format!("ratio (x / eci {})", off.wanted)
    );
    let rss_on = seen.first().and_then(|(_, a, _)| a.shim_rss_kib);
    let base = seen.first().and_then(|(_, _, b)| b.shim_rss_kib);
    for (wanted, rss) in [(off.wanted, base), (on.wanted, rss_on)] {
        match (rss, base) {
            (Some(kib), Some(b)) => println!(
                "{:<46} {:>6} KiB {:>22.2}",
                format!("eci-shim (one group), user namespaces {wanted}"),
                kib,
                kib as f64 / b as f64
            ),
            _ => println!("{:<46} {:>10}", format!("eci-shim, userns {wanted}"), "n/a"),
        }
    }
    match (theirs, base) {
        (Ok(t), Some(o)) => println!(
            "{:<46} {:>6} KiB {:>22.2}",
            "containerd-shim-runc-v2 (one container)",
            t,
            t as f64 / o as f64
        ),
        (Ok(t), None) => println!(
            "{:<46} {:>6} KiB",
            "containerd-shim-runc-v2 (one container)", t
        ),
        (Err(e), _) => println!("{:<46} {:>10} {:>22}", "containerd-shim-runc-v2", "n/a", e),
    }
    Ok(())
}
