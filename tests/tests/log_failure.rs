//! A log write failure never hurts the container: with the agent's log directory on a
//! small tmpfs that the test fills, a container that writes continuously keeps running
//! (not killed by SIGPIPE, not blocked: its counter keeps growing), the dropped bytes
//! show as a `LogWriteFailed` event and in the Metrics API, and once space is freed new
//! lines are logged again after a record saying how much was dropped. Needs root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use eci_tests::scenario::{busybox_agent_with, group, wait_phase};
use eci_tests::{Agent, text, wait_for};

/// A tmpfs mounted for the test; unmounted when dropped, however the test ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mounting a tmpfs");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Writes `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// The container's progress counter, read through exec. Retried: the shell rewrites
/// the file in place, so a read may find it empty.
fn counter(agent: &Agent, name: &str) -> u64 {
    let mut last = String::new();
    for _ in 0..10 {
        let out = agent.ctl(&["exec", name, "-c", "app", "--", "cat", "/tmp/count"]);
        assert!(out.status.success(), "exec: {}", text(&out));
        if let Ok(n) = String::from_utf8_lossy(&out.stdout).trim().parse() {
            return n;
        }
        last = text(&out);
        eprintln!("reading the counter: {last}");
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no counter: {last}");
}

fn dropped_metric(agent: &Agent, name: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let m = rt.block_on(async {
        let ch = eci_tests::channel(&agent.socket()).await.expect("channel");
        eci_api::v1::metrics_client::MetricsClient::new(ch)
            .get_metrics(eci_api::v1::GetMetricsRequest { group: name.into() })
            .await
            .expect("metrics")
            .into_inner()
    });
    m.containers
        .iter()
        .find(|c| c.name == "app")
        .map_or(0, |c| c.log_dropped_bytes)
}

#[test]
fn a_full_log_filesystem_never_stops_the_container() {
    // Rotation keeps the logs themselves under 2 × 256 KiB of the 4 MiB.
    let agent = busybox_agent_with("[runtime]\nlog_max_size = \"256Ki\"\n");
    let logs = Tmpfs::mount(&agent.root().join("var/log/eci"), "4m");
    let name = format!("logfail-{}", std::process::id());
    let pad = "x".repeat(100);
    let script = format!(
        "i=0; while true; do i=$((i+1)); echo \"line $i {pad}\"; echo $i > /tmp/count; usleep 2000; done"
    );
    let out = agent.apply(&name, &group(&name, "Never", &[("app", &script)], ""));
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, &name, "Running");
    eci_tests::scenario::wait_log(&agent, &name, "app", "line 10 ");

    // Full.
    let filler = logs.0.join("filler");
    fill(&filler);
    let shown = wait_for(Duration::from_secs(20), || {
        let ev = text(&agent.ctl(&["events", "--group", &name]));
        ev.contains("LogWriteFailed").then_some(ev)
    });
    assert!(
        shown.is_some(),
        "no LogWriteFailed event: {}",
        text(&agent.ctl(&["describe", &name]))
    );
    let dropped = dropped_metric(&agent, &name);
    assert!(dropped > 0, "log_dropped_bytes is {dropped}");
    // Still running, and not blocked: the counter moves while the log is full.
    let before = counter(&agent, &name);
    std::thread::sleep(Duration::from_secs(2));
    let after = counter(&agent, &name);
    assert!(
        after > before,
        "the container is blocked: {before} → {after}"
    );
    let g = agent.get_json(&name).expect("get");
    assert_eq!(g["status"]["phase"], "Running", "{g}");
    assert_eq!(
        g["status"]["containerStatuses"][0]["state"], "Running",
        "{g}"
    );
    assert!(
        dropped_metric(&agent, &name) > dropped,
        "the drop count grows"
    );

    // Space again: logging resumes, after a record of what was dropped.
    std::fs::remove_file(&filler).expect("freeing space");
    let log =
        eci_tests::scenario::wait_log(&agent, &name, "app", "bytes of output were dropped here");
    let marker = log
        .lines()
        .position(|l| l.contains("bytes of output were dropped here"))
        .expect("marker");
    let resumed = wait_for(Duration::from_secs(20), || {
        let log = eci_tests::scenario::logs(&agent, &name, "app");
        let at = log
            .lines()
            .position(|l| l.contains("bytes of output were dropped here"))?;
        log.lines()
            .skip(at + 1)
            .any(|l| l.starts_with("line "))
            .then_some(())
    });
    assert!(
        resumed.is_some(),
        "no new lines after the marker (at line {marker})"
    );
    let ev = wait_for(Duration::from_secs(20), || {
        let ev = text(&agent.ctl(&["events", "--group", &name]));
        ev.contains("LogWriteResumed").then_some(ev)
    });
    assert!(ev.is_some(), "no LogWriteResumed event");
    let g = agent.get_json(&name).expect("get");
    let restarts = g["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(restarts, 0, "{g}");

    let out = agent.ctl(&["delete", &name, "--force", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
    drop(logs);
}

/// Whether SIGPIPE is ignored in a `/proc/<pid>/status` text.
fn sigpipe_ignored(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc_sigpipe() - 1)) != 0)
}

fn libc_sigpipe() -> u32 {
    nix::sys::signal::Signal::SIGPIPE as u32
}

#[test]
fn containers_and_execs_get_the_default_sigpipe() {
    // As under runc: a container is not shielded from SIGPIPE by its runtime; what
    // protects it from its log is that the shim never closes the pipe's read end.
    let agent = busybox_agent_with("");
    let name = format!("sigpipe-{}", std::process::id());
    let out = agent.apply(
        &name,
        &group(&name, "Never", &[("app", "exec sleep 3600")], ""),
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, &name, "Running");
    for who in ["/proc/1/status", "/proc/self/status"] {
        let out = agent.ctl(&["exec", &name, "-c", "app", "--", "cat", who]);
        assert!(out.status.success(), "{}", text(&out));
        let status = String::from_utf8_lossy(&out.stdout);
        assert!(
            !sigpipe_ignored(&status),
            "{who}: SIGPIPE is ignored:\n{status}"
        );
    }
    let out = agent.ctl(&["delete", &name, "--force", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
}
