//! A stopped shim (SIGSTOP) affects only its own group: an Exec into it fails within a
//! bounded time naming the group, creates/gets/deletes of other groups go on meanwhile,
//! its status shows `ShimResponsive=False` and a Warning event, it recovers on SIGCONT,
//! and a forced delete of a group whose shim is stopped completes and leaves nothing.
//! Needs root (CI is root).

use std::time::{Duration, Instant};

use eci_tests::scenario::{busybox_agent_with, group, group_id, wait_phase};
use eci_tests::{Agent, cgroup_dirs, text, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The pid of a group's shim.
fn shim_pid(agent: &Agent, name: &str) -> Pid {
    let path = agent
        .root()
        .join("run/eci/groups")
        .join(group_id(agent, name))
        .join("shim.pid");
    let pid = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse::<i32>()
        .expect("shim.pid holds a pid");
    Pid::from_raw(pid)
}

/// Continues a stopped shim when the test ends, however it ends, so cleanup works.
struct Continue(Vec<Pid>);

impl Drop for Continue {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = kill(*p, Signal::SIGCONT);
        }
    }
}

/// The status of condition `kind` of a group ("" when absent).
fn condition(agent: &Agent, name: &str, kind: &str) -> String {
    let Ok(g) = agent.get_json(name) else {
        return String::new();
    };
    g["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Waits up to `secs` for the group's `ShimResponsive` condition to be `want`.
fn wait_shim_responsive(agent: &Agent, name: &str, want: &str, secs: u64) {
    let got = wait_for(Duration::from_secs(secs), || {
        (condition(agent, name, "ShimResponsive") == want).then_some(())
    });
    assert!(
        got.is_some(),
        "ShimResponsive never became {want}: {}",
        text(&agent.ctl(&["describe", name]))
    );
}

fn spec(name: &str) -> String {
    group(
        name,
        "Always",
        &[("app", "exec sleep 3600")],
        "terminationGracePeriodSeconds: 0\n",
    )
}

#[test]
fn a_stopped_shim_affects_only_its_own_group() {
    // Room for three groups on a small host.
    let agent = busybox_agent_with("[node]\ncpu = \"16\"\nmemory = \"64Gi\"\n");
    let tag = std::process::id();
    let (stuck, other, third) = (
        format!("stuck-{tag}"),
        format!("other-{tag}"),
        format!("third-{tag}"),
    );
    for n in [&stuck, &other] {
        let out = agent.apply(n, &spec(n));
        assert!(out.status.success(), "{}", text(&out));
    }
    wait_phase(&agent, &stuck, "Running");
    wait_phase(&agent, &other, "Running");
    let pid = shim_pid(&agent, &stuck);
    let mut guard = Continue(vec![pid]);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP the shim");

    // An exec into the stuck group fails, soon, naming it — while another group is
    // created, read and deleted.
    let exec = std::thread::scope(|s| {
        let exec = s.spawn(|| {
            let t0 = Instant::now();
            let out = agent.ctl(&["exec", &stuck, "-c", "app", "--", "echo", "hi"]);
            (t0.elapsed(), out)
        });
        let t0 = Instant::now();
        let out = agent.apply(&third, &spec(&third));
        assert!(out.status.success(), "create meanwhile: {}", text(&out));
        wait_phase(&agent, &third, "Running");
        assert!(agent.get_json(&other).is_ok(), "get meanwhile");
        let out = agent.ctl(&["get"]);
        assert!(out.status.success(), "list meanwhile: {}", text(&out));
        let out = agent.ctl(&["delete", &third, "--wait", "--timeout", "60s"]);
        assert!(out.status.success(), "delete meanwhile: {}", text(&out));
        eprintln!(
            "create+get+list+delete of another group: {:?}",
            t0.elapsed()
        );
        exec.join().expect("exec thread")
    });
    let (took, out) = exec;
    eprintln!("exec into the stuck group: {took:?}: {}", text(&out));
    assert!(!out.status.success(), "exec into a stopped shim succeeded");
    assert!(
        took < Duration::from_secs(15),
        "exec took {took:?}: {}",
        text(&out)
    );
    let msg = text(&out);
    assert!(msg.contains(&stuck), "the error names the group: {msg}");
    assert!(
        msg.contains("Unavailable") || msg.contains("UNAVAILABLE") || msg.contains("unavailable"),
        "UNAVAILABLE: {msg}"
    );

    // The condition, and the event.
    wait_shim_responsive(&agent, &stuck, "False", 20);
    let g = agent.get_json(&stuck).expect("get");
    let c = &g["status"]["containerStatuses"][0];
    assert_eq!(c["reason"], "ShimUnresponsive", "{c}");
    assert_ne!(
        c["ready"], true,
        "a silent shim's container is not shown ready: {c}"
    );
    let described = text(&agent.ctl(&["describe", &stuck]));
    assert!(
        described.contains("ShimResponsive") && described.contains("ShimUnresponsive"),
        "{described}"
    );
    let events = text(&agent.ctl(&["events", "--group", &stuck]));
    assert!(events.contains("ShimUnresponsive"), "{events}");

    // SIGCONT: the group recovers and exec works again.
    kill(pid, Signal::SIGCONT).expect("SIGCONT the shim");
    wait_shim_responsive(&agent, &stuck, "True", 20);
    wait_phase(&agent, &stuck, "Running");
    let out = agent.ctl(&["exec", &stuck, "-c", "app", "--", "echo", "back"]);
    assert!(out.status.success(), "exec after SIGCONT: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("back"));
    let g = agent.get_json(&stuck).expect("get");
    let restarts = g["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(restarts, 0, "the container was never restarted: {g}");

    // A forced delete of a group whose shim is stopped completes and leaves nothing.
    let id = group_id(&agent, &other);
    let pid = shim_pid(&agent, &other);
    guard.0.push(pid);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP the other shim");
    let t0 = Instant::now();
    let out = agent.ctl(&["delete", &other, "--force", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "forced delete: {}", text(&out));
    eprintln!("forced delete of a stopped-shim group: {:?}", t0.elapsed());
    // Gone, or a zombie its (non-agent) parent has yet to reap.
    let dead = wait_for(Duration::from_secs(5), || {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => Some(()),
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
                .then_some(()),
        }
    });
    assert!(dead.is_some(), "the stopped shim {pid} is still there");
    let left: Vec<_> = cgroup_dirs(&agent.cgroup_parent())
        .into_iter()
        .filter(|d| d.to_string_lossy().contains(&id))
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.lines().any(|l| l.contains(&id)),
        "mounts left: {}",
        mounts
            .lines()
            .filter(|l| l.contains(&id))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !agent.root().join("run/eci/groups").join(&id).exists(),
        "run directory left"
    );
    let out = agent.ctl(&["delete", &stuck, "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
    drop(guard);
}

#[test]
fn an_agent_restart_waits_for_a_stopped_shim_instead_of_replacing_it() {
    let mut agent = busybox_agent_with("[node]\ncpu = \"16\"\nmemory = \"64Gi\"\n");
    let name = format!("paused-{}", std::process::id());
    let out = agent.apply(&name, &spec(&name));
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, &name, "Running");
    let pid = shim_pid(&agent, &name);
    let guard = Continue(vec![pid]);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP the shim");
    agent.kill9_and_restart().expect("agent restart");
    wait_shim_responsive(&agent, &name, "False", 30);
    // Not mistaken for a dead shim: the same shim, and no second one.
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(shim_pid(&agent, &name), pid, "the shim was replaced");
    kill(pid, Signal::SIGCONT).expect("SIGCONT the shim");
    wait_shim_responsive(&agent, &name, "True", 30);
    wait_phase(&agent, &name, "Running");
    let out = agent.ctl(&["exec", &name, "-c", "app", "--", "echo", "adopted"]);
    assert!(out.status.success(), "exec after SIGCONT: {}", text(&out));
    assert_eq!(shim_pid(&agent, &name), pid, "the shim was replaced");
    let out = agent.ctl(&["delete", &name, "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
    drop(guard);
}
