//! Log throughput benchmark, in one run on one machine: a container runs `seq 1 N`
//! (N lines, ~7 bytes each) and times itself from inside (`/proc/uptime`, 10 ms
//! resolution), so the figure is how long the workload ran while its output was being
//! logged:
//!
//! - through our agent and shim (CRI log file),
//! - under `runc run` with stdout to a file (no logger at all: the floor),
//! - under a private containerd, `ctr run --log-uri file://…` (containerd-shim-runc-v2
//!   copying the pipe to a file).
//!
//! Prints lines/s and MB/s (of the log file written) per way, and ratios of run times.
//! Needs root, busybox-static, runc and containerd. Run:
//! `cargo build --release -p eci-tests -p eci-agent -p eci-shim &&
//!  target/release/eci-logbench [LINES]`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use eci_tests::scenario::{busybox_agent_with, group, group_id};
use eci_tests::{oci, text, wait_for};

const RUNS: usize = 3;

/// The workload: `seq`, timed from inside; the time goes last, on stdout (ctr's
/// `file://` logger here dropped a last stderr line).
fn script(lines: u64) -> String {
    format!(
        "read a x < /proc/uptime; seq 1 {lines}; read b x < /proc/uptime; echo \"ELAPSED $a $b\""
    )
}

/// Seconds between the two uptimes of the last `ELAPSED a b` line in `out`.
fn elapsed(out: &[u8]) -> Option<f64> {
    let s = String::from_utf8_lossy(out);
    let line = s.lines().rev().find(|l| l.contains("ELAPSED "))?;
    let mut it = line.split("ELAPSED ").nth(1)?.split_whitespace();
    let a: f64 = it.next()?.parse().ok()?;
    let b: f64 = it.next()?.parse().ok()?;
    Some((b - a).max(0.01))
}

/// One measured run: seconds, bytes of log written.
type Run = (f64, u64);

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs[runs.len() / 2]
}

/// Through eci-agent and eci-shim.
fn bench_ours(lines: u64) -> Result<Vec<Run>, String> {
    let agent = busybox_agent_with("[runtime]\nlog_max_size = \"4Gi\"\n");
    let mut runs = Vec::new();
    for i in 0..RUNS {
        let name = format!("logbench-{i}");
        let spec = group(&name, "Never", &[("app", &script(lines))], "");
        let out = agent.apply(&name, &spec);
        if !out.status.success() {
            return Err(text(&out));
        }
        wait_for(Duration::from_secs(120), || {
            (eci_tests::scenario::phase(&agent, &name) == "Succeeded").then_some(())
        })
        .ok_or("the group did not succeed in 120 s")?;
        let file = agent
            .root()
            .join("var/log/eci/groups")
            .join(group_id(&agent, &name))
            .join("app/0.log");
        let size = std::fs::metadata(&file).map_err(|e| e.to_string())?.len();
        // The ELAPSED line is near the end; the log is large.
        let secs = elapsed(&file_tail(&file, 4 << 20)?).ok_or("no ELAPSED in the log")?;
        runs.push((secs, size));
        let _ = agent.ctl(&["delete", &name]);
    }
    Ok(runs)
}

/// The last `n` bytes of a file.
fn file_tail(path: &Path, n: u64) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(n)))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// A runc bundle with the busybox rootfs that runs the workload.
fn make_bundle(dir: &Path, lines: u64) -> Result<PathBuf, String> {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
    let layer = oci::busybox_layer().map_err(|e| e.to_string())?;
    tar::Archive::new(&layer[..])
        .unpack(&rootfs)
        .map_err(|e| e.to_string())?;
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .map_err(|e| format!("runc: {e}"))?;
    if !out.status.success() {
        return Err("runc spec failed".into());
    }
    let cfg = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script(lines)]);
    std::fs::write(
        &cfg,
        serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(bundle)
}

/// `runc run` with stdout and stderr to a file.
fn bench_runc(dir: &Path, bundle: &Path) -> Result<Vec<Run>, String> {
    let mut runs = Vec::new();
    for i in 0..RUNS {
        let out_path = dir.join(format!("runc-{i}.out"));
        let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let id = format!("eci-logbench-{}-{i}", std::process::id());
        let status = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(|e| format!("runc: {e}"))?;
        let _ = Command::new("runc").args(["delete", "-f", &id]).output();
        let bytes = std::fs::read(&out_path).map_err(|e| e.to_string())?;
        let secs = elapsed(&bytes).ok_or_else(|| format!("runc run ({status}): no ELAPSED"))?;
        runs.push((secs, bytes.len() as u64));
        let _ = std::fs::remove_file(&out_path);
    }
    Ok(runs)
}

/// A private containerd; `ctr run --rootfs … --log-uri file://…`.
fn bench_containerd(dir: &Path, rootfs: &Path, lines: u64) -> Result<Vec<Run>, String> {
    let containerd = eci_tests::peers::PrivateContainerd::start(dir)?;
    let ctr = |args: &[&str]| containerd.ctr(args);
    (|| {
        let mut runs = Vec::new();
        for i in 0..RUNS {
            let id = format!("eci-logbench-{i}");
            let log = dir.join(format!("ctr-{i}.log"));
            let uri = format!("file://{}", log.display());
            let rootfs = rootfs.to_str().unwrap_or_default();
            let out = ctr(&[
                "run",
                "--log-uri",
                &uri,
                // A flag without a value in ctr: the first argument is then the rootfs.
                "--rootfs",
                rootfs,
                &id,
                "/bin/sh",
                "-c",
                &script(lines),
            ])
            .map_err(|e| e.to_string())?;
            // The shim's copy may still be writing when `ctr run` returns.
            wait_for(Duration::from_secs(10), || {
                std::fs::read(&log)
                    .ok()
                    .and_then(|b| elapsed(&b).map(|_| ()))
            });
            let _ = ctr(&["containers", "delete", &id]);
            let bytes = std::fs::read(&log).map_err(|e| {
                format!(
                    "{}: {e}; ctr run: {}",
                    log.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })?;
            let secs = elapsed(&bytes).ok_or_else(|| {
                let end =
                    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(200)..]).into_owned();
                format!("ctr run: no ELAPSED at the end of its log: {end:?}")
            })?;
            runs.push((secs, bytes.len() as u64));
            let _ = std::fs::remove_file(&log);
        }
        Ok(runs)
    })()
}

fn main() -> anyhow::Result<()> {
    let lines: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let dir = tempfile::Builder::new().prefix("eci-logbench-").tempdir()?;
    println!("workload: sh -c 'seq 1 {lines}' in a busybox container; median of {RUNS} runs");
    println!("run time measured inside the container (/proc/uptime, 10 ms resolution)\n");
    let ours = bench_ours(lines);
    let bundle = make_bundle(dir.path(), lines);
    let runc = bundle
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|b| bench_runc(dir.path(), b));
    let ctr = bundle
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|b| bench_containerd(dir.path(), &b.join("rootfs"), lines));
    let ways = [
        ("eci-shim (CRI log file)", ours),
        ("runc run, stdout to a file", runc),
        ("containerd, ctr run --log-uri file://", ctr),
    ];
    println!(
        "{:<40} {:>9} {:>14} {:>12}",
        "way", "run time", "lines/s", "log MB/s"
    );
    let mut medians = Vec::new();
    for (name, r) in &ways {
        match r {
            Ok(runs) => {
                let (secs, bytes) = median(runs.clone());
                println!(
                    "{:<40} {:>8.2}s {:>14.0} {:>12.1}",
                    name,
                    secs,
                    lines as f64 / secs,
                    bytes as f64 / secs / 1e6
                );
                medians.push(Some(secs));
            }
            Err(e) => {
                println!("{name:<40} n/a: {e}");
                medians.push(None);
            }
        }
    }
    println!();
    if let (Some(ours), Some(runc)) = (medians[0], medians[1]) {
        println!("run time, eci-shim / runc-to-file:  {:.2}x", ours / runc);
    }
    if let (Some(ours), Some(ctr)) = (medians[0], medians[2]) {
        println!("run time, eci-shim / containerd:    {:.2}x", ours / ctr);
    }
    Ok(())
}
