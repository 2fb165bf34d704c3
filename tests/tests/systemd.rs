//! The shipped systemd files are valid for the systemd on this host.

use std::process::Command;

use eci_tests::{bin, repo_root};

#[test]
fn unit_verifies_without_warnings() {
    let unit =
        std::fs::read_to_string(repo_root().join("systemd/eci-agent.service")).expect("unit");
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "Delegate=yes",
        "KillMode=process",
        "Restart=always",
        "OOMScoreAdjust=",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    // verify checks that ExecStart exists: point it at the binary just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("eci-agent.service");
    let exec = bin("eci-agent");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/eci-agent", exec.to_str().expect("utf-8")),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // It exits 0 on unknown keys: any output at all is a finding.
    assert!(
        stderr.trim().is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn tmpfiles_entry_creates_the_layout() {
    let root = tempfile::tempdir().expect("tempdir");
    let conf = repo_root().join("systemd/eci-agent.tmpfiles.conf");
    let out = Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(&conf)
        .output()
        .expect("systemd-tmpfiles");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for d in [
        "var/lib/eci/content",
        "run/eci/groups",
        "var/log/eci/groups",
        "etc/eci",
    ] {
        assert!(root.path().join(d).is_dir(), "{d} not created");
    }
}

#[test]
fn agent_notifies_ready_and_pings_the_watchdog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let notify = sock_path.to_str().expect("utf-8").to_string();
    let agent = eci_tests::Agent::start_with_env(
        "",
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "200000")],
    )
    .expect("agent");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !(got.iter().any(|m: &String| m.contains("READY=1"))
        && got.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification ({e}); got {got:?}"));
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // READY comes only once the API answers: the socket exists by then.
    assert!(agent.socket().exists());
}
