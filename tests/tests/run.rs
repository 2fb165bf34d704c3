//! Groups that really run: the shim, namespaces, cgroups, overlay rootfs, logs, restart
//! policy, agent crashes and teardown. Needs root (CI is root).

use std::time::Duration;

use eci_tests::scenario::{busybox_agent, group, logs, phase, wait_log, wait_phase};
use eci_tests::{Agent, cgroup_dirs, text, wait_for};

fn agent() -> Agent {
    busybox_agent()
}

#[test]
fn two_containers_share_the_group_network_and_log_what_they_did() {
    let agent = agent();
    let spec = group(
        "pair",
        "Always",
        &[
            (
                "server",
                "echo server listening; echo hello-from-server | nc -l -p 8080; echo served; sleep 3600",
            ),
            (
                "client",
                "sleep 1; echo \"client got: $(nc 127.0.0.1 8080)\"; sleep 3600",
            ),
        ],
        "",
    );
    let out = agent.apply("pair", &spec);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "pair", "Running");
    wait_log(&agent, "pair", "client", "client got: hello-from-server");
    wait_log(&agent, "pair", "server", "served");
    let ts = text(&agent.ctl(&[
        "logs",
        "pair",
        "-c",
        "server",
        "--timestamps",
        "--tail",
        "1",
    ]));
    assert_eq!(ts.lines().count(), 1, "{ts}");
    assert!(ts.starts_with("20") && ts.contains("served"), "{ts}");
    let g = agent.get_json("pair").expect("get");
    for c in g["status"]["containerStatuses"]
        .as_array()
        .expect("statuses")
    {
        assert_eq!(c["state"], "Running", "{c}");
    }
}

#[test]
fn a_container_is_isolated_from_the_host() {
    let agent = agent();
    let script = "echo pid:$$; echo procs:$(ls /proc | grep -c '^[0-9]'); echo kcore:$(cat /proc/kcore | wc -c); \
                  mount -t tmpfs none /mnt 2>&1 && echo mount:ok || echo mount:refused; echo host:$(hostname); \
                  grep -E '^(CapEff|Seccomp):' /proc/self/status; echo done; sleep 3600";
    assert!(
        agent
            .apply("iso", &group("iso", "Never", &[("probe", script)], ""))
            .status
            .success()
    );
    let l = wait_log(&agent, "iso", "probe", "done");
    assert!(
        l.contains("pid:1\n"),
        "PID 1 is the container's process: {l}"
    );
    let procs: u32 = l
        .lines()
        .find_map(|x| x.strip_prefix("procs:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("procs");
    assert!(procs <= 4, "host processes are visible: {l}");
    assert!(l.contains("kcore:0\n"), "{l}");
    assert!(
        l.contains("mount:refused") && !l.contains("mount:ok"),
        "{l}"
    );
    assert!(l.contains("host:iso\n"), "{l}");
    assert!(
        l.contains("CapEff:\t00000000a80425fb"),
        "Docker's default capability set: {l}"
    );
    assert!(l.contains("Seccomp:\t2"), "{l}");
}

#[test]
fn exit_codes_and_oom_kills_are_reported() {
    let agent = agent();
    assert!(
        agent
            .apply(
                "three",
                &group("three", "Never", &[("main", "echo bye; exit 3")], "")
            )
            .status
            .success()
    );
    wait_phase(&agent, "three", "Failed");
    let c = &agent.get_json("three").expect("get")["status"]["containerStatuses"][0];
    assert_eq!(
        (
            c["state"].as_str(),
            c["exitCode"].as_i64(),
            c["reason"].as_str()
        ),
        (Some("Terminated"), Some(3), Some("Error")),
        "{c}"
    );
    assert!(logs(&agent, "three", "main").contains("bye"));

    let oom = format!(
        "{}  resources: {{memory: 32Mi}}\n",
        group(
            "hog",
            "Never",
            &[("eat", "exec dd if=/dev/zero of=/dev/null bs=256M count=1")],
            ""
        )
    );
    assert!(agent.apply("hog", &oom).status.success(), "{oom}");
    wait_phase(&agent, "hog", "Failed");
    let c = &agent.get_json("hog").expect("get")["status"]["containerStatuses"][0];
    assert_eq!(c["reason"], "OOMKilled", "{c}");
    assert!(text(&agent.ctl(&["describe", "hog"])).contains("OOMKilling"));
}

#[test]
fn containers_restart_per_policy() {
    let agent = agent();
    assert!(
        agent
            .apply(
                "flaky",
                &group(
                    "flaky",
                    "OnFailure",
                    &[("main", "echo run; sleep 0.2; exit 1")],
                    ""
                )
            )
            .status
            .success()
    );
    let restarted = wait_for(Duration::from_secs(20), || {
        let g = agent.get_json("flaky").ok()?;
        (g["status"]["containerStatuses"][0]["restartCount"].as_u64()? >= 2).then_some(())
    });
    assert!(
        restarted.is_some(),
        "{}",
        text(&agent.ctl(&["describe", "flaky"]))
    );
    assert!(text(&agent.ctl(&["describe", "flaky"])).contains("BackOff"));
    assert!(text(&agent.ctl(&["logs", "flaky", "--previous"])).contains("run"));
}

#[test]
fn groups_survive_an_agent_crash_and_exits_meanwhile_are_seen() {
    let mut agent = agent();
    let spec = group(
        "steady",
        "Never",
        &[
            (
                "ticker",
                "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done",
            ),
            ("short", "sleep 2; exit 7"),
        ],
        "",
    );
    assert!(agent.apply("steady", &spec).status.success());
    wait_phase(&agent, "steady", "Running");
    let g = agent.get_json("steady").expect("get");
    let id = g["id"].as_str().expect("id").to_string();
    let procs = |agent: &Agent| -> Vec<String> {
        let parent = agent.cgroup_parent();
        let f = format!("/sys/fs/cgroup/pids/{parent}/{id}/ticker/cgroup.procs");
        let mut v: Vec<String> = std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let before = procs(&agent);
    assert!(!before.is_empty(), "ticker has processes");
    let lines_before = logs(&agent, "steady", "ticker").lines().count();
    agent
        .kill9_and_restart_after(Duration::from_secs(3))
        .expect("restart");
    wait_phase(&agent, "steady", "Running");
    let lines_after = logs(&agent, "steady", "ticker").lines().count();
    assert!(
        lines_after >= lines_before + 10,
        "logging went on while the agent was down: {lines_before} -> {lines_after}"
    );
    let g = agent.get_json("steady").expect("get");
    let short = g["status"]["containerStatuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .find(|c| c["name"] == "short")
        .cloned()
        .expect("short");
    assert_eq!(
        (short["state"].as_str(), short["exitCode"].as_i64()),
        (Some("Terminated"), Some(7)),
        "{short}"
    );
    let after = procs(&agent);
    assert!(
        after.iter().any(|p| before.contains(p)),
        "the same container process runs: {before:?} vs {after:?}"
    );
}

#[test]
fn delete_leaves_nothing_behind() {
    let agent = agent();
    assert!(
        agent
            .apply(
                "gone",
                &group(
                    "gone",
                    "Always",
                    &[
                        ("a", "sleep 3600"),
                        ("b", "trap 'exit 0' TERM; sleep 3600 & wait")
                    ],
                    "terminationGracePeriodSeconds: 2\n"
                )
            )
            .status
            .success()
    );
    wait_phase(&agent, "gone", "Running");
    let id = agent.get_json("gone").expect("get")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let out = agent.ctl(&["delete", "gone", "--wait", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", text(&out));
    let root = agent.root().display().to_string();
    // The agent's own read-only bind of the shim binary is not the group's.
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| !l.contains("run/eci/bin/eci-shim"))
        .map(String::from)
        .collect();
    assert!(
        !mounts.iter().any(|l| l.contains(&root) || l.contains(&id)),
        "mounts left: {mounts:?}"
    );
    let cgs: Vec<_> = cgroup_dirs(&agent.cgroup_parent())
        .into_iter()
        .filter(|d| d.display().to_string().contains(&id))
        .collect();
    assert!(cgs.is_empty(), "cgroups left: {cgs:?}");
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.lines().any(|l| l.contains(&id)), "shim left: {ps}");
    assert!(!agent.root().join("run/eci/groups").join(&id).exists());
    assert!(text(&agent.ctl(&["events", "--group", "gone"])).contains("Killing"));
}

#[test]
fn pull_policy_never_fails_clearly_without_the_image() {
    let agent = agent();
    let spec = "name: nope\ncontainers:\n- name: c\n  image: 127.0.0.1:5000/absent:1\n  imagePullPolicy: Never\n";
    assert!(agent.apply("nope", spec).status.success());
    let reason = wait_for(Duration::from_secs(10), || {
        let g = agent.get_json("nope").ok()?;
        let r = g["status"]["containerStatuses"][0]["reason"]
            .as_str()?
            .to_string();
        (r == "ErrImageNeverPull").then_some(r)
    });
    assert!(
        reason.is_some(),
        "{}",
        text(&agent.ctl(&["describe", "nope"]))
    );
    assert_eq!(phase(&agent, "nope"), "Pending");
}

#[test]
fn a_shim_that_died_while_the_agent_was_down_is_reported_and_cleaned() {
    let mut agent = agent();
    assert!(
        agent
            .apply("lost", &group("lost", "Never", &[("c", "sleep 3600")], ""))
            .status
            .success()
    );
    wait_phase(&agent, "lost", "Running");
    let id = agent.get_json("lost").expect("get")["id"]
        .as_str()
        .expect("id")
        .to_string();
    agent.kill9().expect("kill agent");
    let dir = agent.root().join("run/eci/groups").join(&id);
    let shim: i32 = std::fs::read_to_string(dir.join("shim.pid"))
        .expect("shim pid")
        .trim()
        .parse()
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill shim");
    std::thread::sleep(Duration::from_millis(200));
    agent.restart().expect("restart");
    wait_phase(&agent, "lost", "Failed");
    let g = agent.get_json("lost").expect("get");
    assert_eq!(g["status"]["reason"], "SandboxLost", "{g}");
    assert_eq!(g["status"]["containerStatuses"][0]["state"], "Terminated");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&id), "namespace mounts left: {mounts}");
    let cgs: Vec<_> = cgroup_dirs(&agent.cgroup_parent())
        .into_iter()
        .filter(|d| d.display().to_string().contains(&id))
        .collect();
    assert!(
        cgs.is_empty(),
        "cgroups (and their processes) left: {cgs:?}"
    );
}

#[test]
fn exec_runs_in_the_container_with_its_stdio_and_exit_code() {
    let agent = agent();
    assert!(
        agent
            .apply(
                "ex",
                &group("ex", "Always", &[("app", "echo ready; sleep 3600")], "")
            )
            .status
            .success()
    );
    wait_phase(&agent, "ex", "Running");
    let out = agent.ctl(&[
        "exec",
        "ex",
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; echo pid1=$(cat /proc/1/comm); exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("to-out") && stdout.contains("pid1=sleep"),
        "joined the container's PID namespace: {stdout}"
    );
    assert!(stderr.contains("to-err"), "{stderr}");
    let mut child = std::process::Command::new(eci_tests::bin("ecictl"))
        .arg("--socket")
        .arg(agent.socket())
        .args(["exec", "-i", "ex", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ecictl exec -i");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"through stdin\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("through stdin"),
        "{out:?}"
    );
    let out = agent.ctl(&["exec", "ex", "--", "/no/such/binary"]);
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn restart_and_update_recreate_containers() {
    let agent = agent();
    let spec = group(
        "upd",
        "Always",
        &[("app", "echo generation-one; sleep 3600")],
        "terminationGracePeriodSeconds: 1\n",
    );
    assert!(agent.apply("upd", &spec).status.success());
    wait_phase(&agent, "upd", "Running");
    wait_log(&agent, "upd", "app", "generation-one");
    let out = agent.ctl(&["restart", "upd"]);
    assert!(out.status.success(), "{}", text(&out));
    let restarted = wait_for(Duration::from_secs(20), || {
        let g = agent.get_json("upd").ok()?;
        (g["status"]["phase"] == "Running"
            && g["status"]["containerStatuses"][0]["restartCount"] == 1)
            .then_some(())
    });
    assert!(
        restarted.is_some(),
        "{}",
        text(&agent.ctl(&["describe", "upd"]))
    );
    assert!(text(&agent.ctl(&["logs", "upd", "--previous"])).contains("generation-one"));

    let updated = spec.replace("generation-one", "generation-two");
    let out = agent.apply("upd", &updated);
    assert!(
        out.status.success() && text(&out).contains("configured"),
        "{}",
        text(&out)
    );
    wait_log(&agent, "upd", "app", "generation-two");
    wait_phase(&agent, "upd", "Running");
    let g = agent.get_json("upd").expect("get");
    assert_eq!(g["generation"], "2");
    assert!(text(&agent.ctl(&["describe", "upd"])).contains("Updating"));
}

#[test]
fn a_shim_that_dies_under_a_running_agent_is_replaced_per_policy() {
    let agent = agent();
    assert!(
        agent
            .apply(
                "phoenix",
                &group("phoenix", "Always", &[("c", "echo up; sleep 3600")], "")
            )
            .status
            .success()
    );
    wait_phase(&agent, "phoenix", "Running");
    let id = agent.get_json("phoenix").expect("get")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let pid_file = agent
        .root()
        .join("run/eci/groups")
        .join(&id)
        .join("shim.pid");
    let old: i32 = std::fs::read_to_string(&pid_file)
        .expect("shim pid")
        .trim()
        .parse()
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill shim");
    let replaced = wait_for(Duration::from_secs(30), || {
        let new: i32 = std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (new != old && phase(&agent, "phoenix") == "Running").then_some(new)
    });
    assert!(
        replaced.is_some(),
        "{}",
        text(&agent.ctl(&["describe", "phoenix"]))
    );
    assert!(text(&agent.ctl(&["describe", "phoenix"])).contains("SandboxLost"));
    let g = agent.get_json("phoenix").expect("get");
    assert_eq!(
        g["status"]["containerStatuses"][0]["restartCount"], 1,
        "{g}"
    );
}

#[test]
fn metrics_report_cpu_memory_network_and_disk() {
    let agent = agent();
    let spec = format!(
        "{}  resources: {{cpu: 500m, memory: 256Mi}}\n",
        group("busy", "Always", &[("spin", "while true; do :; done")], "")
    );
    assert!(agent.apply("busy", &spec).status.success(), "{spec}");
    wait_phase(&agent, "busy", "Running");
    std::thread::sleep(Duration::from_millis(500));
    let out = agent.ctl(&["top", "busy"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("spin"), "{}", text(&out));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let m = rt.block_on(async {
        let ch = eci_tests::channel(&agent.socket()).await.expect("channel");
        eci_api::v1::metrics_client::MetricsClient::new(ch)
            .get_metrics(eci_api::v1::GetMetricsRequest {
                group: "busy".into(),
            })
            .await
            .expect("metrics")
            .into_inner()
    });
    let c = &m.containers[0];
    let cpu = c.cpu.expect("cpu");
    assert_eq!(cpu.limit, 500, "cores x 1000");
    // A spinning shell under a 0.5-core quota: busy, never above the quota (a loaded CI
    // machine may give it less).
    assert!(
        cpu.usage_nano_cores > 0 && cpu.usage_nano_cores < 750_000_000,
        "{cpu:?}"
    );
    assert!(cpu.usage_core_nano_seconds > 0);
    let mem = c.memory.expect("memory");
    assert!(
        mem.usage_bytes > 0 && mem.available_bytes <= 256 << 20,
        "{mem:?}"
    );
    assert!(m.network.iter().any(|n| n.name == "lo"), "{:?}", m.network);
    assert!(!m.disk.is_empty() && m.disk[0].total_bytes > 0);
}

#[test]
fn exec_with_a_terminal_gets_its_size_and_exit_code() {
    let agent = agent();
    assert!(
        agent
            .apply(
                "term",
                &group("term", "Always", &[("app", "sleep 3600")], "")
            )
            .status
            .success()
    );
    wait_phase(&agent, "term", "Running");
    // `script` gives ecictl a terminal of its own, as an operator's shell would.
    let ctl = format!(
        "{} --socket {}",
        eci_tests::bin("ecictl").display(),
        agent.socket().display()
    );
    let cmd = format!(
        "stty cols 91 rows 21; {ctl} exec -it term -- sh -c 'tty; stty size; test -t 1 && echo on-a-tty; exit 6'"
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(6), "{t}");
    assert!(t.contains("21 91") && t.contains("on-a-tty"), "{t}");
    assert!(
        t.contains("/dev/pts/"),
        "the terminal is in the container's devpts: {t}"
    );
}

#[test]
fn volumes_are_shared_between_containers() {
    let agent = agent();
    let volumes = "volumes:\n- name: scratch\n  emptyDir: {}\n- name: fast\n  emptyDir: {medium: Memory, sizeLimit: 16Mi}\n\
                   - name: conf\n  configFile:\n    files:\n    - {path: app.conf, content: \"greeting=hello\"}\n    - {path: sub/b64.txt, contentBase64: aGk=}\n";
    let mut spec = group(
        "vols",
        "Always",
        &[
            (
                "writer",
                "echo shared > /data/file; echo fast > /mem/file; sleep 3600",
            ),
            (
                "reader",
                "sleep 1; echo got:$(cat /data/file):$(cat /mem/file):$(cat /conf/app.conf):$(cat /b64); touch /conf/x 2>&1 || echo ro-ok; sleep 3600",
            ),
        ],
        volumes,
    );
    spec = spec.replacen(
        "  args: [\"echo shared",
        "  volumeMounts: [{name: scratch, mountPath: /data}, {name: fast, mountPath: /mem}]\n  args: [\"echo shared",
        1,
    );
    spec = spec.replacen(
        "  args: [\"sleep 1;",
        "  volumeMounts: [{name: scratch, mountPath: /data}, {name: fast, mountPath: /mem}, {name: conf, mountPath: /conf, readOnly: true}, {name: conf, mountPath: /b64, subPath: sub/b64.txt}]\n  args: [\"sleep 1;",
        1,
    );
    let out = agent.apply("vols", &spec);
    assert!(out.status.success(), "{}\n{spec}", text(&out));
    wait_phase(&agent, "vols", "Running");
    let l = wait_log(&agent, "vols", "reader", "got:");
    assert!(l.contains("got:shared:fast:greeting=hello:hi"), "{l}");
    assert!(l.contains("ro-ok"), "read-only mount: {l}");
    let id = agent.get_json("vols").expect("get")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(
        agent
            .ctl(&["delete", "vols", "--grace-period", "0", "--wait"])
            .status
            .success()
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&id), "volume mounts left: {mounts}");
}
