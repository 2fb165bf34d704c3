//! Hostile tenant: limits come from the spec and documented defaults, never from the
//! agent's unit. A fork bomb stops at the group's `pids.max`; container processes get
//! the configured `oom_score_adj` (the agent keeps its own) and explicit rlimits; swap is
//! off. Needs root.

use eci_tests::scenario::{busybox_agent, busybox_agent_with, group, group_id, wait_log};
use eci_tests::text;

fn cgroup_file(agent: &eci_tests::Agent, controller: &str, id: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(format!(
        "/sys/fs/cgroup/{controller}/{}/{id}/{file}",
        agent.cgroup_parent()
    ))
    .ok()
    .map(|s| s.trim().to_string())
}

#[test]
fn a_fork_bomb_stops_at_the_groups_pids_limit() {
    let agent = busybox_agent_with("[runtime]\npids_max = 64\noom_score_adj = 777\n");
    // Counted by a glob (no fork: none is left), then all but PID 1 (this shell) killed.
    // The loop runs in a subshell: a shell whose fork fails exits.
    let script = "(i=0; while [ $i -lt 150 ]; do sleep 60 & i=$((i+1)); done) 2>/dev/null; \
                  set -- /proc/[0-9]*; echo procs:$#; kill -9 -1; wait; echo oom:$(cat /proc/self/oom_score_adj); \
                  echo limits:$(ulimit -n):$(ulimit -Hn):$(ulimit -c):$(ulimit -l):$(ulimit -u); echo done; sleep 3600";
    let out = agent.apply("bomb", &group("bomb", "Never", &[("app", script)], ""));
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "bomb", "app", "done");
    let procs: u32 = l
        .lines()
        .find_map(|x| x.strip_prefix("procs:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("procs");
    assert!(
        procs <= 64,
        "{procs} processes: the pids limit did not hold: {l}"
    );
    assert!(
        procs >= 32,
        "the limit is the configured one, not a lower one: {l}"
    );
    let id = group_id(&agent, "bomb");
    if let Some(max) = cgroup_file(&agent, "pids", &id, "pids.max") {
        assert_eq!(max, "64");
    }
    assert!(l.contains("oom:777\n"), "{l}");
    let exec = agent.ctl(&["exec", "bomb", "--", "cat", "/proc/self/oom_score_adj"]);
    assert_eq!(text(&exec).trim(), "777", "exec'd processes too");
    // rlimits: NOFILE as documented (or the most this host lets root set without
    // CAP_SYS_RESOURCE), soft = hard; no core files; 8 MiB locked; NPROC out of the way.
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit")
        .1
        .min(1_048_576);
    let nproc = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC)
        .expect("getrlimit")
        .1
        .min(4_194_304);
    assert!(
        l.contains(&format!("limits:{hard}:{hard}:0:8192:{nproc}\n")),
        "rlimits: {l}"
    );
}

#[test]
fn groups_get_the_default_pids_limit_and_no_swap() {
    let agent = busybox_agent();
    let out = agent.apply(
        "quiet",
        &group("quiet", "Never", &[("app", "echo up; sleep 3600")], ""),
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_log(&agent, "quiet", "app", "up");
    let id = group_id(&agent, "quiet");
    if let Some(max) = cgroup_file(&agent, "pids", &id, "pids.max") {
        assert_eq!(max, "4096");
    }
    if let (Some(mem), Some(memsw)) = (
        cgroup_file(&agent, "memory", &id, "memory.limit_in_bytes"),
        cgroup_file(&agent, "memory", &id, "memory.memsw.limit_in_bytes"),
    ) {
        assert_eq!(mem, memsw, "swap is allowed");
    }
}
