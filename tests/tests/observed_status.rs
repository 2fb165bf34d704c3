//! The status says what the kernel has, not what the spec asked for: a group's addresses
//! are read back from its network namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use eci_tests::scenario::{busybox_agent, group, group_id, wait_phase};
use eci_tests::{text, wait_for};

fn addresses(agent: &eci_tests::Agent, name: &str) -> Vec<String> {
    let g = agent.get_json(name).expect("get");
    g["status"]["ipAddresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `ip` inside the namespace pinned at `netns` (a test tool, not a product path).
fn ip_in(netns: &Path, args: &[&str]) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("ip")
        .args(args)
        .output()
        .expect("nsenter ip");
    assert!(out.status.success(), "ip {args:?}: {}", text(&out));
}

#[test]
fn ip_addresses_are_read_from_the_group_netns() {
    let agent = busybox_agent();
    let name = format!("obs-{}", std::process::id());
    let spec = group(
        &name,
        "Always",
        &[("app", "sleep 3600")],
        "terminationGracePeriodSeconds: 1\n",
    );
    let out = agent.apply(&name, &spec);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, &name, "Running");
    // Only `lo` is there: no address is claimed.
    assert_eq!(addresses(&agent, &name), Vec::<String>::new());

    // Give the namespace an address behind the agent's back; the next start of the
    // group's containers reads it back.
    let netns: PathBuf = agent
        .root()
        .join("run/eci/groups")
        .join(group_id(&agent, &name))
        .join("ns/net");
    ip_in(
        &netns,
        &[
            "link", "add", "obs0", "type", "veth", "peer", "name", "obs1",
        ],
    );
    ip_in(&netns, &["addr", "add", "10.77.9.2/24", "dev", "obs0"]);
    let out = agent.ctl(&["restart", &name]);
    assert!(out.status.success(), "{}", text(&out));
    let seen = wait_for(Duration::from_secs(20), || {
        let a = addresses(&agent, &name);
        a.contains(&"10.77.9.2".to_string()).then_some(a)
    });
    assert!(
        seen.is_some(),
        "the status never showed the namespace's address: {:?}\n{}",
        addresses(&agent, &name),
        text(&agent.ctl(&["describe", &name]))
    );
    let out = agent.ctl(&["delete", &name, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `ecictl events -w --group G` prints the group's events as they happen, and only its
/// own: a Restart of the group shows up while it runs; another group's does not.
#[test]
fn events_follow_shows_new_events_of_one_group() {
    use std::io::BufRead;
    let agent = busybox_agent();
    let spec = |n: &str| {
        group(
            n,
            "Always",
            &[("app", "sleep 3600")],
            "terminationGracePeriodSeconds: 1\n",
        )
    };
    for n in ["evw", "other"] {
        assert!(agent.apply(n, &spec(n)).status.success());
        wait_phase(&agent, n, "Running");
    }
    let mut child = Command::new(eci_tests::bin("ecictl"))
        .arg("--socket")
        .arg(agent.socket())
        .args(["events", "-w", "--group", "evw"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ecictl events -w");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The history first; then restarts of both groups.
    std::thread::sleep(Duration::from_millis(500));
    while rx.try_recv().is_ok() {}
    for n in ["other", "evw"] {
        let out = agent.ctl(&["restart", n]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let mut lines = Vec::new();
    let seen = (0..100).any(|_| match rx.recv_timeout(Duration::from_millis(100)) {
        Ok(l) => {
            let hit = l.contains("evw") && l.contains("Killing");
            lines.push(l);
            hit
        }
        Err(_) => false,
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "no new event of evw was followed: {lines:?}");
    assert!(
        lines.iter().all(|l| !l.contains("other")),
        "another group's event was followed: {lines:?}"
    );
}
