//! A container's life as kubelet reports it: postStart before Running, preStop before
//! SIGTERM, the grace period and `Terminating`, `CrashLoopBackOff` with doubling delays
//! and `lastState`, `PodInitializing`, `CreateContainerError`. Needs root (CI is root).

use std::time::{Duration, Instant};

use eci_tests::scenario::{IMAGE, busybox_agent, phase, wait_phase};
use eci_tests::{Agent, text, wait_for};

/// A group of containers given as (name, shell script, extra container YAML indented by
/// two spaces); `init` likewise for init containers.
fn spec(
    name: &str,
    policy: &str,
    group_extra: &str,
    init: &[(&str, &str)],
    containers: &[(&str, &str, &str)],
) -> String {
    let one = |c: &str, script: &str, extra: &str| {
        format!(
            "- name: {c}\n  image: {IMAGE}\n  imagePullPolicy: IfNotPresent\n  command: [\"/bin/sh\", \"-c\"]\n  args: [{}]\n{extra}",
            serde_json::to_string(script).expect("json")
        )
    };
    let mut s =
        format!("name: {name}\nrestartPolicy: {policy}\ncpu: \"1\"\nmemory: 2Gi\n{group_extra}");
    if !init.is_empty() {
        s.push_str("initContainers:\n");
        for (c, script) in init {
            s.push_str(&one(c, script, ""));
        }
    }
    s.push_str("containers:\n");
    for (c, script, extra) in containers {
        s.push_str(&one(c, script, extra));
    }
    s
}

fn status(agent: &Agent, group: &str, container: &str) -> serde_json::Value {
    let g = agent.get_json(group).unwrap_or_default();
    g["status"]["containerStatuses"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == container).cloned())
        .unwrap_or_default()
}

fn events(agent: &Agent, group: &str) -> String {
    text(&agent.ctl(&["events", "--group", group]))
}

fn wait_status(
    agent: &Agent,
    group: &str,
    container: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(Duration::from_secs(20), || {
        let c = status(agent, group, container);
        check(&c).then_some(c)
    })
    .unwrap_or_else(|| {
        panic!(
            "{container}: never {what}: {}\n{}",
            status(agent, group, container),
            text(&agent.ctl(&["describe", group]))
        )
    })
}

#[test]
fn post_start_runs_before_the_container_is_running() {
    let agent = busybox_agent();
    let hook = "  lifecycle:\n    postStart:\n      exec: {command: [sh, -c, \"sleep 2; echo hook-ran > /tmp/hook\"]}\n";
    let s = spec("post", "Always", "", &[], &[("app", "sleep 3600", hook)]);
    let applied = Instant::now();
    assert!(agent.apply("post", &s).status.success());
    wait_status(&agent, "post", "app", "Running", |c| {
        c["state"] == "Running"
    });
    assert!(
        applied.elapsed() >= Duration::from_secs(2),
        "Running after {:?}, before the hook returned",
        applied.elapsed()
    );
    // The hook's work is there the moment the container is Running.
    let out = agent.ctl(&["exec", "post", "-c", "app", "--", "cat", "/tmp/hook"]);
    assert!(text(&out).contains("hook-ran"), "{}", text(&out));
}

#[test]
fn a_failing_post_start_kills_the_container() {
    let agent = busybox_agent();
    let hook =
        "  lifecycle:\n    postStart:\n      exec: {command: [sh, -c, \"echo no-good; exit 3\"]}\n";
    let s = spec(
        "postfail",
        "Never",
        "terminationGracePeriodSeconds: 1\n",
        &[],
        &[("app", "sleep 3600", hook)],
    );
    assert!(agent.apply("postfail", &s).status.success());
    wait_phase(&agent, "postfail", "Failed");
    let ev = events(&agent, "postfail");
    assert!(ev.contains("FailedPostStartHook"), "{ev}");
    assert!(ev.contains("no-good"), "the hook's output is named: {ev}");
}

#[test]
fn pre_stop_runs_before_sigterm_and_the_term_handler_sees_its_marker() {
    let agent = busybox_agent();
    let hook = "  lifecycle:\n    preStop:\n      exec: {command: [sh, -c, \"echo from-prestop > /tmp/marker\"]}\n";
    let script = "trap 'echo \"term handler saw: $(cat /tmp/marker)\"; exit 0' TERM; echo up; \
                  while true; do sleep 0.2; done";
    let s = spec("pre", "Always", "", &[], &[("app", script, hook)]);
    assert!(agent.apply("pre", &s).status.success());
    wait_phase(&agent, "pre", "Running");
    let restart = agent.ctl(&["restart", "pre"]);
    assert!(restart.status.success(), "{}", text(&restart));
    wait_status(&agent, "pre", "app", "restarted", |c| {
        c["state"] == "Running" && c["restartCount"].as_u64().unwrap_or(0) >= 1
    });
    let prev = wait_for(Duration::from_secs(10), || {
        let l = text(&agent.ctl(&["logs", "pre", "-c", "app", "--previous"]));
        l.contains("term handler saw").then_some(l)
    })
    .unwrap_or_else(|| text(&agent.ctl(&["logs", "pre", "-c", "app", "--previous"])));
    assert!(
        prev.contains("term handler saw: from-prestop"),
        "the marker preStop wrote, printed by the TERM handler: {prev}"
    );
}

#[test]
fn a_container_ignoring_sigterm_dies_at_the_end_of_the_grace_period() {
    let agent = busybox_agent();
    // sh as PID 1 of its namespace ignores SIGTERM (no handler).
    let s = spec(
        "stubborn",
        "Always",
        "terminationGracePeriodSeconds: 3\n",
        &[],
        &[("app", "while true; do sleep 0.2; done", "")],
    );
    assert!(agent.apply("stubborn", &s).status.success());
    wait_phase(&agent, "stubborn", "Running");
    let t0 = Instant::now();
    let out = agent.ctl(&["delete", "stubborn"]);
    assert!(out.status.success(), "{}", text(&out));
    // Terminating for the grace period...
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(phase(&agent, "stubborn"), "Terminating");
    // ...then gone, SIGKILLed at its end.
    let gone = wait_for(Duration::from_secs(15), || {
        (!agent.ctl(&["get", "stubborn"]).status.success()).then(|| t0.elapsed())
    })
    .expect("the group is gone after the grace period");
    assert!(
        gone >= Duration::from_millis(2800),
        "gone after {gone:?}: SIGKILL came before the grace period ended"
    );
    assert!(
        gone < Duration::from_secs(10),
        "gone after {gone:?}: long after the grace period"
    );
}

#[test]
fn exit_1_under_always_shows_crash_loop_back_off_with_doubling_delays() {
    // The harness sets restart_backoff = 200ms, restart_backoff_max = 1s.
    let agent = busybox_agent();
    let s = spec(
        "crash",
        "Always",
        "",
        &[],
        &[("app", "echo run; exit 1", "")],
    );
    assert!(agent.apply("crash", &s).status.success());
    let c = wait_status(&agent, "crash", "app", "in CrashLoopBackOff", |c| {
        c["state"] == "Waiting" && c["reason"] == "CrashLoopBackOff"
    });
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("back-off"),
        "{c}"
    );
    wait_status(&agent, "crash", "app", "restarted 4 times", |c| {
        c["restartCount"].as_u64().unwrap_or(0) >= 4
    });
    let c = wait_status(&agent, "crash", "app", "with a lastState", |c| {
        c["lastState"].is_object()
    });
    assert_eq!(c["lastState"]["exitCode"], 1, "{c}");
    assert_eq!(c["lastState"]["reason"], "Error", "{c}");
    assert!(
        c["lastState"]["finishedAt"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{c}"
    );
    let ev = events(&agent, "crash");
    for d in ["200ms", "400ms", "800ms", "1s"] {
        assert!(
            ev.contains(&format!("Back-off {d} restarting failed container app")),
            "no back-off of {d}: {ev}"
        );
    }
    let d = text(&agent.ctl(&["describe", "crash"]));
    assert!(
        d.contains("Last state:") && d.contains("Exit code:    1"),
        "{d}"
    );
}

#[test]
fn app_containers_wait_in_pod_initializing_while_init_containers_run() {
    let agent = busybox_agent();
    let s = spec(
        "init",
        "Always",
        "",
        &[("setup", "sleep 3")],
        &[("app", "sleep 3600", "")],
    );
    assert!(agent.apply("init", &s).status.success());
    wait_status(&agent, "init", "app", "PodInitializing", |c| {
        c["state"] == "Waiting" && c["reason"] == "PodInitializing"
    });
    wait_phase(&agent, "init", "Running");
}

#[test]
fn a_container_that_cannot_be_created_waits_in_create_container_error() {
    let agent = busybox_agent();
    let s = format!(
        "name: nocmd\nrestartPolicy: Always\ncpu: \"1\"\nmemory: 2Gi\ncontainers:\n\
         - name: app\n  image: {IMAGE}\n  imagePullPolicy: IfNotPresent\n  command: [/no/such/binary]\n"
    );
    assert!(agent.apply("nocmd", &s).status.success());
    let c = wait_status(&agent, "nocmd", "app", "CreateContainerError", |c| {
        c["state"] == "Waiting" && c["reason"] == "CreateContainerError"
    });
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("/no/such/binary"),
        "the cause is named: {c}"
    );
}

#[test]
fn a_run_longer_than_twice_the_longest_back_off_starts_the_back_off_over() {
    // restart_backoff_max = 1s in the harness: a run of 2.5 s resets the back-off.
    let agent = busybox_agent();
    let s = spec(
        "steady",
        "Always",
        "",
        &[],
        &[("app", "sleep 2.5; exit 1", "")],
    );
    assert!(agent.apply("steady", &s).status.success());
    let c = wait_for(Duration::from_secs(30), || {
        let c = status(&agent, "steady", "app");
        (c["restartCount"].as_u64().unwrap_or(0) >= 3).then_some(c)
    })
    .expect("three restarts");
    assert_eq!(c["lastState"]["exitCode"], 1, "{c}");
    let ev = events(&agent, "steady");
    assert!(
        ev.contains("Back-off 200ms restarting failed container app"),
        "{ev}"
    );
    assert!(!ev.contains("Back-off 400ms"), "the back-off grew: {ev}");
}

/// A plain HTTP server on the host that answers 200 and records each request line.
fn recording_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            let _ = BufReader::new(&s).read_line(&mut line);
            s2.lock().expect("lock").push(line.trim_end().to_string());
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, seen)
}

#[test]
fn http_hooks_run_at_start_and_before_stop() {
    let dev = eci_tests::vpc::DevNet::new();
    let agent = eci_tests::scenario::busybox_agent_with(&dev.config());
    let (port, seen) = recording_server();
    let hooks = format!(
        "  lifecycle:\n    postStart:\n      httpGet: {{host: \"{gw}\", port: {port}, path: /started}}\n    preStop:\n      httpGet: {{host: \"{gw}\", port: {port}, path: /stopping}}\n",
        gw = dev.gateway
    );
    let s = spec(
        "hooks",
        "Always",
        "terminationGracePeriodSeconds: 2\n",
        &[],
        &[("app", "sleep 3600", &hooks)],
    );
    assert!(agent.apply("hooks", &s).status.success());
    wait_phase(&agent, "hooks", "Running");
    assert_eq!(
        seen.lock().expect("lock").as_slice(),
        ["GET /started HTTP/1.1"],
        "postStart ran before Running"
    );
    assert!(agent.ctl(&["delete", "hooks"]).status.success());
    let stopped = wait_for(Duration::from_secs(10), || {
        seen.lock()
            .expect("lock")
            .iter()
            .any(|l| l == "GET /stopping HTTP/1.1")
            .then_some(())
    });
    assert!(stopped.is_some(), "{:?}", seen.lock().expect("lock"));
}
