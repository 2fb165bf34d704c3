//! Hostile tenant: the runtime is not reachable from inside (runc CVE-2019-5736,
//! CVE-2024-21626, CVE-2016-9962 class). A container allowed to ptrace watches its PID
//! namespace for the exec helper, tries to take it over and to write the runtime binary
//! through `/proc/<pid>/exe`; exec'd processes get no descriptor but their stdio; a
//! planted `/dev/ptmx` link is never followed. Needs root (CI is root).

use std::time::Duration;

use eci_tests::scenario::{attack_agent_with, group, group_id, wait_log, wait_phase};
use eci_tests::{Agent, text, wait_for};

/// Finds `name` below `dir` (volume directories live under the agent's state dir).
fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if e.file_name() == name {
            return Some(p);
        }
        if e.file_type().is_ok_and(|t| t.is_dir())
            && let Some(found) = find(&p, name)
        {
            return Some(found);
        }
    }
    None
}

fn report(agent: &Agent) -> String {
    find(agent.root(), "attack-report")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

#[test]
fn a_ptracing_tenant_finds_exec_helpers_confined_and_the_runtime_binary_read_only() {
    ptracing_tenant("");
}

/// The same attack without user namespaces: the tenant can open a helper's
/// `/proc/<pid>/exe`, so only the read-only binary stands in the way.
#[test]
fn without_user_namespaces_the_runtime_binary_is_still_read_only() {
    ptracing_tenant("[user_namespaces]\nenabled = false\n");
}

fn ptracing_tenant(config: &str) {
    // A private copy of the shim: the only process executing this inode is this
    // agent's shim, so once it is killed only the mount can refuse a write.
    let scratch = tempfile::tempdir().expect("tempdir");
    let shim = scratch.path().join("eci-shim");
    std::fs::copy(eci_tests::bin("eci-shim"), &shim).expect("copy shim");
    let before = std::fs::read(&shim).expect("read shim");
    let mut agent = attack_agent_with(&format!(
        "{config}[runtime]\nshim = \"{}\"\n",
        shim.display()
    ));
    let spec = group(
        "watcher",
        "Never",
        &[("app", "/eci-attack watch /out/attack-report 40; sleep 3600")],
        "volumes:\n- name: out\n  emptyDir: {}\n",
    )
    .replace(
        "  command:",
        "  securityContext: {capabilities: {add: [SYS_PTRACE]}}\n  volumeMounts: [{name: out, mountPath: /out}]\n  command:",
    );
    let out = agent.apply("watcher", &spec);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "watcher", "Running");
    assert!(
        wait_for(Duration::from_secs(10), || report(&agent)
            .contains("watching")
            .then_some(()))
        .is_some(),
        "the watcher never started: {}",
        report(&agent)
    );
    // Exec until the watcher has caught the helper between fork and exec a few times.
    // The helper is the shim binary re-executed through /proc/self/exe: named "exe".
    let helper = |l: &&str| l.contains("name=exe ") || l.contains("name=eci-shim ");
    let caught = |r: &str| r.lines().filter(helper).count();
    for _ in 0..80 {
        let out = agent.ctl(&["exec", "watcher", "--", "true"]);
        assert!(out.status.success(), "{}", text(&out));
        if caught(&report(&agent)) >= 3 {
            break;
        }
    }
    let r = report(&agent);
    assert!(
        caught(&r) >= 1,
        "the watcher never saw an exec helper before its exec:\n{r}"
    );
    let container_caps = r
        .lines()
        .find(|l| l.contains("name=sleep") || l.contains("name=sh"))
        .and_then(|l| l.split("capeff=").nth(1))
        .and_then(|c| c.split_whitespace().next())
        .map(str::to_string);
    // no_new_privs as the container has it (unset allowPrivilegeEscalation in a user
    // namespace: off, as in Kubernetes), never less.
    let container_nnp = r
        .lines()
        .find(|l| l.contains("name=sleep") || l.contains("name=sh"))
        .and_then(|l| l.split("nnp=").nth(1))
        .and_then(|c| c.split_whitespace().next())
        .unwrap_or("1")
        .to_string();
    for l in r.lines().filter(helper) {
        assert!(
            l.contains("seccomp=2") && l.contains(&format!("nnp={container_nnp}")),
            "an exec helper was visible before its seccomp filter and no_new_privs (the container's: {container_nnp}): {l}"
        );
        assert!(
            !l.contains("capeff=000001ffffffffff") && !l.contains("capeff=0000003fffffffff"),
            "an exec helper was visible with full capabilities: {l}"
        );
        if let Some(c) = &container_caps {
            assert!(l.contains(&format!("capeff={c}")), "{l} vs {c}");
        }
        // Already under the container's device rules: a helper outside them could be
        // made to open a host disk node the tenant created.
        assert!(
            l.contains(&format!("cgroup=/{}/", agent.cgroup_parent())) && l.ends_with("/app"),
            "an exec helper was visible outside the container's cgroup: {l}"
        );
    }
    // In a user namespace a helper's memory still belongs to the initial one, where
    // the tenant has no CAP_SYS_PTRACE: it cannot even open the helper's binary.
    let helper_pids: Vec<&str> = r
        .lines()
        .filter(helper)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let opened = |pid: &str| {
        r.lines()
            .any(|l| l.starts_with(&format!("exe-open {pid} ok ")))
    };
    // A helper is non-dumpable until it execs the container's program: an open that
    // comes after that exec reaches the container's own binary. The runtime's binary
    // is told by its size.
    let runtime_size = std::fs::metadata(eci_tests::bin("eci-shim"))
        .map(|m| m.len())
        .expect("eci-shim");
    let opened_runtime = |pid: &str| {
        r.lines()
            .any(|l| l == format!("exe-open {pid} ok size={runtime_size}"))
    };
    let in_userns = agent.get_json("watcher").expect("get")["status"]["userNamespace"].is_object();
    if in_userns {
        assert!(
            helper_pids.iter().all(|p| !opened_runtime(p)),
            "a tenant in a user namespace opened an exec helper's binary:\n{r}"
        );
        assert!(!r.contains("fd-dir"), "a directory descriptor leaked:\n{r}");
        return;
    }
    assert!(
        helper_pids.iter().any(|p| opened(p)),
        "without a user namespace the tenant should reach a helper's binary:\n{r}"
    );
    // The shim dies; nothing executes the binary any more; the tenant tries again.
    let id = group_id(&agent, "watcher");
    let pid: i32 =
        std::fs::read_to_string(agent.root().join(format!("run/eci/groups/{id}/shim.pid")))
            .expect("shim.pid")
            .trim()
            .parse()
            .expect("pid");
    agent.kill9().expect("stop the agent");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill shim");
    let r = wait_for(Duration::from_secs(10), || {
        let r = report(&agent);
        r.contains(" EROFS").then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "the tenant never tried the binary without ETXTBSY in the way:\n{}",
            report(&agent)
        )
    });
    assert!(
        !r.contains("EXE-WRITABLE"),
        "the runtime binary was writable:\n{r}"
    );
    assert!(r.contains("exe-open"), "{r}");
    assert!(!r.contains("fd-dir"), "a directory descriptor leaked:\n{r}");
    assert_eq!(std::fs::read(&shim).expect("read shim"), before);
    agent.restart().expect("restart");
}

#[test]
fn exec_d_processes_and_container_init_hold_only_their_stdio() {
    let agent = attack_agent_with("");
    let out = agent.apply(
        "fds",
        &group("fds", "Never", &[("app", "echo up; sleep 3600")], ""),
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_log(&agent, "fds", "app", "up");
    let out = agent.ctl(&[
        "exec",
        "fds",
        "--",
        "sh",
        "-c",
        // The tool lists its own descriptors; a shell would show its own pipes.
        "/eci-attack fds; echo init:$(ls /proc/1/fd | tr '\\n' ' ')",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("fds: 0 1 2\n"), "{t}");
    assert!(t.lines().any(|l| l.trim_end() == "init:0 1 2"), "{t}");
    // What tenants wrote (layers, writable layers, volumes; setuid files included) is
    // out of reach of the host's other users.
    use std::os::unix::fs::PermissionsExt;
    for dir in ["var/lib/eci", "run/eci/groups"] {
        let mode = std::fs::metadata(agent.root().join(dir))
            .expect(dir)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{dir}");
    }
}

#[test]
fn exec_with_a_terminal_never_follows_a_planted_ptmx_link() {
    let agent = attack_agent_with("");
    // A host file the link names; opening it from the host would be the escape.
    let host = tempfile::tempdir().expect("tempdir");
    let bait = host.path().join("bait");
    std::fs::write(&bait, b"host").expect("bait");
    let inotify = nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::IN_NONBLOCK)
        .expect("inotify");
    inotify
        .add_watch(&bait, nix::sys::inotify::AddWatchFlags::IN_OPEN)
        .expect("watch");
    let script = format!(
        "rm -f /dev/ptmx; ln -s {} /dev/ptmx; echo planted; sleep 3600",
        bait.display()
    );
    let out = agent.apply("pty", &group("pty", "Never", &[("app", &script)], ""));
    assert!(out.status.success(), "{}", text(&out));
    wait_log(&agent, "pty", "app", "planted");
    // The log line can come before the agent records the container as running.
    wait_phase(&agent, "pty", "Running");
    let ctl = format!(
        "{} --socket {}",
        eci_tests::bin("ecictl").display(),
        agent.socket().display()
    );
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{ctl} exec -it pty -- sh -c 'tty; exit 3'"),
            "/dev/null",
        ])
        .output()
        .expect("script");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(t.contains("/dev/pts/"), "{t}");
    let events = inotify.read_events().unwrap_or_default();
    assert!(
        events.is_empty(),
        "the host file behind the planted link was opened: {events:?}"
    );
    assert_eq!(std::fs::read(&bait).expect("bait"), b"host");
}
