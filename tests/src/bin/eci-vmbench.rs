//! The VM sandbox against the namespaced one (issue 15), side by side in one run on one
//! agent: time from the Create call to the container's first output, and the host memory
//! one idle group costs (namespaced: its shim and cgroup; vm: its shim and QEMU), in
//! alternating rounds so machine noise hits both alike. It prints the accelerator the
//! agent reports: TCG (emulated) on hosts whose KVM cannot boot a guest, KVM elsewhere.
//!
//! Then, in the same run, the rootfs comparison behind the vm design: `eci-rootfsbench`
//! (erofs against virtiofs, booting the guest directly; needs `virtiofsd`), unless
//! `--no-rootfs`.
//!
//! Run: `eci-vmbench --guest-dir DIR [--rounds N] [--no-rootfs]` (default 5) as root,
//! with the guest image built by `scripts/guest-image.sh DIR`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::*;
use eci_tests::{Agent, oci};
use tonic::transport::Channel;

const IMAGE: &str = "127.0.0.1:5000/bench/busybox:1";

fn args() -> anyhow::Result<(PathBuf, usize, bool)> {
    let mut dir = None;
    let mut rounds = 5;
    let mut rootfs = true;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--guest-dir" => dir = it.next().map(PathBuf::from),
            "--rounds" => {
                let v = it.next().unwrap_or_default();
                rounds = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("rounds: not a number: {v}"))?;
            }
            "--no-rootfs" => rootfs = false,
            _ => anyhow::bail!("usage: eci-vmbench --guest-dir DIR [--rounds N] [--no-rootfs]"),
        }
    }
    let dir = dir.ok_or_else(|| anyhow::anyhow!("--guest-dir DIR is required"))?;
    anyhow::ensure!(rounds > 0, "rounds: at least 1");
    Ok((dir, rounds, rootfs))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn pid_in(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Memory charged to a cgroup (v2 `memory.current`, else v1 `memory.usage_in_bytes`).
fn cgroup_memory_kib(rel: &str) -> Option<u64> {
    let v2 = Path::new("/sys/fs/cgroup").join(rel).join("memory.current");
    let v1 = Path::new("/sys/fs/cgroup/memory")
        .join(rel)
        .join("memory.usage_in_bytes");
    let s = std::fs::read_to_string(v2)
        .or_else(|_| std::fs::read_to_string(v1))
        .ok()?;
    s.trim().parse::<u64>().ok().map(|b| b / 1024)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

struct Sample {
    first_output: Duration,
    memory_kib: u64,
}

/// Create → "go" in the log; then, the group idle, its host memory; then delete.
fn once(
    agent: &Agent,
    groups: &mut ContainerGroupsClient<Channel>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    sandbox: &str,
) -> anyhow::Result<Sample> {
    let spec = GroupSpec {
        name: name.into(),
        sandbox: sandbox.into(),
        restart_policy: "Never".into(),
        termination_grace_period_seconds: Some(0),
        cpu: "1".into(),
        memory: "512Mi".into(),
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
        .block_on(groups.create(CreateGroupRequest { spec: Some(spec) }))?
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
        if t0.elapsed() > Duration::from_secs(240) {
            anyhow::bail!(
                "{sandbox} group {name} did not start: {}",
                eci_tests::text(&agent.ctl(&["describe", name]))
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let first_output = t0.elapsed();
    // Idle for a moment, as a group is most of its life.
    std::thread::sleep(Duration::from_secs(2));
    let run = agent.root().join("run/eci/groups").join(&g.id);
    let shim = pid_in(&run.join("shim.pid")).and_then(rss_kib).unwrap_or(0);
    let memory_kib = if sandbox == "vm" {
        shim + pid_in(&run.join("vm/qemu.pid"))
            .and_then(rss_kib)
            .unwrap_or(0)
    } else {
        let rel = format!("{}/{}", agent.cgroup_parent(), g.id);
        shim + cgroup_memory_kib(&rel).unwrap_or(0)
    };
    let req = DeleteGroupRequest {
        name: name.into(),
        grace_period_seconds: Some(0),
        force: true,
    };
    rt.block_on(groups.delete(req))?;
    let out = agent.ctl(&["wait", name, "--for", "delete", "--timeout", "120s"]);
    anyhow::ensure!(out.status.success(), "{}", eci_tests::text(&out));
    Ok(Sample {
        first_output,
        memory_kib,
    })
}

fn main() -> anyhow::Result<()> {
    let (dir, rounds, rootfs) = args()?;
    anyhow::ensure!(
        dir.join("vmlinux").is_file() && dir.join("initrd.img").is_file(),
        "no guest image in {} (run scripts/guest-image.sh {})",
        dir.display(),
        dir.display()
    );
    let agent = Agent::start(&format!(
        "[vm]\nguest_dir = {:?}\nallow_tcg = true\n",
        dir.display().to_string()
    ))?;
    let image = oci::Image {
        layers: vec![oci::busybox_layer()?],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    let archive = agent.root().join("bench.tar");
    std::fs::write(&archive, oci::archive(&image, Some(IMAGE)))?;
    let out = agent.ctl(&["images", "import", archive.to_str().unwrap_or_default()]);
    anyhow::ensure!(out.status.success(), "{}", eci_tests::text(&out));
    let node = eci_tests::text(&agent.ctl(&["node", "-o", "json"]));
    let node: serde_json::Value = serde_json::from_str(&node).unwrap_or_default();
    println!(
        "node vm: {}",
        serde_json::to_string(&node["vm"]).unwrap_or_default()
    );
    let rt = tokio::runtime::Runtime::new()?;
    let ch = rt.block_on(eci_tests::channel(&agent.socket()))?;
    let mut groups = ContainerGroupsClient::new(ch);
    // One untimed round each: the layer's erofs image is built on first use.
    once(&agent, &mut groups, &rt, "warm-ns", "namespaced")?;
    once(&agent, &mut groups, &rt, "warm-vm", "vm")?;
    let (mut ns_t, mut vm_t, mut ns_m, mut vm_m) = (vec![], vec![], vec![], vec![]);
    for i in 0..rounds {
        let a = once(&agent, &mut groups, &rt, &format!("ns-{i}"), "namespaced")?;
        let b = once(&agent, &mut groups, &rt, &format!("vm-{i}"), "vm")?;
        println!(
            "round {i}: namespaced {:.0} ms {} KiB | vm {:.0} ms {} KiB",
            a.first_output.as_secs_f64() * 1e3,
            a.memory_kib,
            b.first_output.as_secs_f64() * 1e3,
            b.memory_kib
        );
        ns_t.push(a.first_output.as_secs_f64() * 1e3);
        vm_t.push(b.first_output.as_secs_f64() * 1e3);
        ns_m.push(a.memory_kib as f64 / 1024.0);
        vm_m.push(b.memory_kib as f64 / 1024.0);
    }
    let (nt, vt, nm, vmm) = (
        median(&mut ns_t),
        median(&mut vm_t),
        median(&mut ns_m),
        median(&mut vm_m),
    );
    println!("\nmedian over {rounds} rounds      namespaced        vm     vm/namespaced");
    println!(
        "Create → first output    {nt:>10.0} ms {vt:>7.0} ms {:>12.1}×",
        vt / nt
    );
    println!(
        "host memory per group    {nm:>10.1} MiB {vmm:>6.1} MiB {:>11.1}×",
        vmm / nm
    );
    drop(agent);
    if rootfs {
        println!("\nrootfs of the guest: erofs against virtiofs (eci-rootfsbench)\n");
        let status = std::process::Command::new(eci_tests::bin("eci-rootfsbench"))
            .args(["--guest-dir", &dir.display().to_string(), "--rounds"])
            .arg(rounds.to_string())
            .args(["--pair-rounds", "1"])
            .status()?;
        anyhow::ensure!(status.success(), "eci-rootfsbench failed: {status}");
    }
    Ok(())
}
