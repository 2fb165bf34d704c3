//! Start-latency and shim-footprint benchmark, in one run on one machine:
//!
//! - time from the Create call to the container's first output, for a one-container
//!   group from a local image (agent: admission, shim, namespaces, cgroups, overlay,
//!   seccomp, CRI log), against `runc run` and `crun run` of the same rootfs as a bundle;
//! - resident memory of an idle group's eci-shim against containerd-shim-runc-v2.
//!
//! Prints medians and ratios. Needs root, busybox-static, and runc / crun / containerd
//! for the peers (a missing peer prints n/a). Run: `cargo run -p eci-tests --bin eci-bench`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::*;
use eci_tests::{Agent, oci};

const IMAGE: &str = "127.0.0.1:5000/bench/busybox:1";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
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

/// Our agent: Create → the container's "go" line in its log.
fn bench_agent(
    agent: &Agent,
    rt: &tokio::runtime::Runtime,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Option<u64>)> {
    let ch = rt.block_on(eci_tests::channel(&agent.socket()))?;
    let mut client = ContainerGroupsClient::new(ch);
    let mut times = Vec::new();
    let mut shim_rss = None;
    for i in 0..n {
        let spec = GroupSpec {
            name: format!("bench-{i}"),
            restart_policy: "Never".into(),
            termination_grace_period_seconds: Some(0),
            containers: vec![Container {
                name: "c".into(),
                image: IMAGE.into(),
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
            .block_on(client.create(CreateGroupRequest { spec: Some(spec) }))?
            .into_inner();
        let log = agent
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
                    "group bench-{i} did not start: {}",
                    eci_tests::text(&agent.ctl(&["describe", &format!("bench-{i}")]))
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        times.push(t0.elapsed());
        if i == 0 {
            // An idle group's shim: the container sleeps.
            std::thread::sleep(Duration::from_millis(300));
            let pid = std::fs::read_to_string(
                agent
                    .root()
                    .join("run/eci/groups")
                    .join(&g.id)
                    .join("shim.pid"),
            )?;
            shim_rss = rss_kib(pid.trim().parse()?);
        }
        let req = DeleteGroupRequest {
            name: format!("bench-{i}"),
            grace_period_seconds: Some(0),
            force: true,
        };
        rt.block_on(client.delete(req))?;
        let out = agent.ctl(&[
            "wait",
            &format!("bench-{i}"),
            "--for",
            "delete",
            "--timeout",
            "30s",
        ]);
        anyhow::ensure!(out.status.success(), "{}", eci_tests::text(&out));
    }
    Ok((times, shim_rss))
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

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::Builder::new().prefix("eci-bench-").tempdir()?;
    let archive = dir.path().join("busybox.tar");
    let image = oci::Image {
        layers: vec![oci::busybox_layer()?],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    std::fs::write(&archive, oci::archive(&image, Some(IMAGE)))?;

    let agent = Agent::start("")?;
    let out = agent.ctl(&["images", "import", archive.to_str().unwrap_or_default()]);
    anyhow::ensure!(out.status.success(), "import: {}", eci_tests::text(&out));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("eci-bench: {n} iterations each, medians\n");
    let (ours, shim_rss) = bench_agent(&agent, &rt, n)?;
    let ours_m = median(ours);

    let bundle = make_bundle(dir.path());
    let peers: Vec<(&str, Result<Duration, String>)> = ["runc", "crun"]
        .into_iter()
        .map(|rt| {
            let r = match &bundle {
                Ok(b) => bench_oci(rt, b, n).map(median),
                Err(e) => Err(e.to_string()),
            };
            (rt, r)
        })
        .collect();
    println!(
        "{:<44} {:>10} {:>22}",
        "start: Create call -> first output", "median", "ratio (peer / eci)"
    );
    println!(
        "{:<44} {:>10} {:>22}",
        "eci-agent group (shim, ns, cgroups, overlay, logs)",
        ms(ours_m),
        "1.00"
    );
    for (name, r) in &peers {
        match r {
            Ok(d) => println!(
                "{:<44} {:>10} {:>22.2}",
                format!("{name} run (bundle only)"),
                ms(*d),
                d.as_secs_f64() / ours_m.as_secs_f64()
            ),
            Err(e) => println!("{:<44} {:>10} {:>22}", format!("{name} run"), "n/a", e),
        }
    }
    println!();
    let theirs = containerd_shim_rss(dir.path(), &archive);
    println!(
        "{:<44} {:>10} {:>22}",
        "idle shim resident memory", "VmRSS", "ratio (peer / eci)"
    );
    match shim_rss {
        Some(kib) => println!(
            "{:<44} {:>7} KiB {:>22}",
            "eci-shim (one group)", kib, "1.00"
        ),
        None => println!("{:<44} {:>10}", "eci-shim", "n/a"),
    }
    match (theirs, shim_rss) {
        (Ok(t), Some(o)) => println!(
            "{:<44} {:>7} KiB {:>22.2}",
            "containerd-shim-runc-v2 (one container)",
            t,
            t as f64 / o as f64
        ),
        (Err(e), _) => println!("{:<44} {:>10} {:>22}", "containerd-shim-runc-v2", "n/a", e),
        _ => {}
    }
    Ok(())
}
