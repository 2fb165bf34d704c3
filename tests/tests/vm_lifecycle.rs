//! The lifecycle of `sandbox: vm` groups across crashes (issue 15): the shim and QEMU
//! outlive the agent, a killed shim takes its QEMU along and the restart policy decides
//! what comes next, an orphan QEMU is found and killed (and nothing else), a `kill -9` of
//! the agent at each step of a vm group's start converges to one VM, and restart
//! policies, `ecictl restart` and Update work inside the guest. Never two QEMUs for a
//! group at once.
//!
//! Real QEMU under TCG with the guest image `ECI_TEST_GUEST_DIR` names
//! (`scripts/guest-image.sh`); without it the tests skip, unless `CI` is set.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eci_tests::scenario::{group, group_id, logs, phase};
use eci_tests::vm::{
    VM_WAIT, delete_vm, guest_dir, qemu_of, tail, vm_agent, vm_toml, wait_log_vm, wait_phase_vm,
};
use eci_tests::{Agent, cgroup_dirs, text, wait_for};

fn apply_ok(agent: &Agent, name: &str, spec: &str) {
    let out = agent.apply(name, spec);
    assert!(out.status.success(), "apply {name}: {}", text(&out));
}

/// `<root>/run/eci/groups/<id>`.
fn run_dir(agent: &Agent, id: &str) -> PathBuf {
    agent.root().join("run/eci/groups").join(id)
}

/// The pid the shim recorded for the group's QEMU.
fn qemu_pid_file(agent: &Agent, id: &str) -> Option<u32> {
    std::fs::read_to_string(run_dir(agent, id).join("vm/qemu.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Waits for exactly one QEMU of the group, the one its pid file names; returns it.
fn one_qemu(agent: &Agent, id: &str) -> u32 {
    wait_for(VM_WAIT, || {
        let q = qemu_of(id);
        (q.len() == 1 && qemu_pid_file(agent, id) == Some(q[0])).then(|| q[0])
    })
    .unwrap_or_else(|| {
        panic!(
            "not exactly one QEMU for {id} matching its pid file: {:?} vs {:?}\n{}",
            qemu_of(id),
            qemu_pid_file(agent, id),
            tail(&agent.log(), 40)
        )
    })
}

/// Watches, until dropped, that the group never has two QEMUs at once.
struct NeverTwo {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::thread::JoinHandle<Vec<Vec<u32>>>,
}

impl NeverTwo {
    fn watch(id: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, id) = (stop.clone(), id.to_string());
        let seen = std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let q = qemu_of(&id);
                if q.len() > 1 {
                    bad.push(q);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            bad
        });
        NeverTwo { stop, seen }
    }

    fn check(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let bad = self.seen.join().expect("watcher");
        assert!(bad.is_empty(), "two QEMUs of one group at once: {bad:?}");
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for this purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn shim_pid(agent: &Agent, id: &str) -> u32 {
    std::fs::read_to_string(run_dir(agent, id).join("shim.pid"))
        .expect("shim.pid")
        .trim()
        .parse()
        .expect("shim pid")
}

fn container_status(agent: &Agent, name: &str, c: &str) -> serde_json::Value {
    let g = agent.get_json(name).expect("get");
    g["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == c).cloned())
        .unwrap_or_default()
}

fn restart_count(agent: &Agent, name: &str, c: &str) -> u64 {
    container_status(agent, name, c)["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

fn ticker(name: &str) -> String {
    group(
        name,
        "Always",
        &[(
            "tick",
            "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done",
        )],
        "sandbox: vm\n",
    )
}

#[test]
fn a_vm_group_survives_an_agent_kill_with_the_same_qemu() {
    let Some(dir) = guest_dir() else { return };
    let mut agent = vm_agent(&dir, "");
    apply_ok(&agent, "vmsurv", &ticker("vmsurv"));
    wait_phase_vm(&agent, "vmsurv", "Running");
    let id = group_id(&agent, "vmsurv");
    wait_log_vm(&agent, "vmsurv", "tick", "tick-2");
    let qemu = one_qemu(&agent, &id);
    let watch = NeverTwo::watch(&id);

    agent.kill9_and_restart().expect("restart");
    assert!(alive(qemu), "QEMU died with the agent");
    wait_phase_vm(&agent, "vmsurv", "Running");
    // Logs continue past what was written before: a few more ticks.
    let before = logs(&agent, "vmsurv", "tick").matches("tick-").count();
    wait_for(VM_WAIT, || {
        (logs(&agent, "vmsurv", "tick").matches("tick-").count() >= before + 3).then_some(())
    })
    .expect("the log grows after the restart");
    let out = agent.ctl(&[
        "exec",
        "vmsurv",
        "-c",
        "tick",
        "--",
        "sh",
        "-c",
        "echo in-$((6*7))",
    ]);
    assert!(out.status.success(), "exec: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "in-42");
    assert_eq!(one_qemu(&agent, &id), qemu, "the same VM after the restart");
    assert_eq!(
        restart_count(&agent, "vmsurv", "tick"),
        0,
        "the container was not restarted"
    );
    // Once more, with the agent down for a while.
    agent
        .kill9_and_restart_after(Duration::from_secs(2))
        .expect("restart");
    wait_phase_vm(&agent, "vmsurv", "Running");
    assert_eq!(one_qemu(&agent, &id), qemu);
    watch.check();
    delete_vm(&agent, "vmsurv");
}

#[test]
fn a_killed_shim_takes_its_qemu_and_the_restart_policy_decides() {
    let Some(dir) = guest_dir() else { return };
    let agent = vm_agent(&dir, "");
    // Always: a new VM (one QEMU, not the old one).
    apply_ok(&agent, "vmalways", &ticker("vmalways"));
    wait_phase_vm(&agent, "vmalways", "Running");
    let id = group_id(&agent, "vmalways");
    wait_log_vm(&agent, "vmalways", "tick", "tick-1");
    let old = one_qemu(&agent, &id);
    let watch = NeverTwo::watch(&id);
    let shim = shim_pid(&agent, &id);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill shim");
    let died = wait_for(Duration::from_secs(20), || (!alive(old)).then_some(()));
    assert!(died.is_some(), "QEMU {old} outlived its shim");
    let new = wait_for(VM_WAIT, || {
        let q = qemu_of(&id);
        (q.len() == 1 && q[0] != old && phase(&agent, "vmalways") == "Running").then(|| q[0])
    })
    .unwrap_or_else(|| {
        panic!(
            "no new VM: {:?} {}\n{}",
            qemu_of(&id),
            text(&agent.ctl(&["describe", "vmalways"])),
            tail(&agent.log(), 40)
        )
    });
    assert_eq!(one_qemu(&agent, &id), new);
    assert_ne!(shim_pid(&agent, &id), shim, "a new shim");
    let st = container_status(&agent, "vmalways", "tick");
    assert!(
        st["restartCount"].as_u64().unwrap_or(0) >= 1,
        "the lost container counts a restart: {st}"
    );
    let out = agent.ctl(&[
        "exec",
        "vmalways",
        "-c",
        "tick",
        "--",
        "sh",
        "-c",
        "echo again",
    ]);
    assert!(out.status.success(), "exec in the new VM: {}", text(&out));
    watch.check();
    delete_vm(&agent, "vmalways");

    // Never: the group fails, saying why, and its VM is gone.
    let spec = group(
        "vmnever",
        "Never",
        &[("tick", "while true; do echo alive; sleep 1; done")],
        "sandbox: vm\n",
    );
    apply_ok(&agent, "vmnever", &spec);
    wait_phase_vm(&agent, "vmnever", "Running");
    let id = group_id(&agent, "vmnever");
    wait_log_vm(&agent, "vmnever", "tick", "alive");
    let old = one_qemu(&agent, &id);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid(&agent, &id) as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill shim");
    wait_phase_vm(&agent, "vmnever", "Failed");
    let g = agent.get_json("vmnever").expect("get");
    assert_eq!(g["status"]["reason"], "SandboxLost", "{g}");
    assert!(
        g["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("shim died")),
        "{g}"
    );
    assert!(!alive(old), "QEMU outlived its shim");
    assert!(
        wait_for(Duration::from_secs(30), || qemu_of(&id)
            .is_empty()
            .then_some(()))
        .is_some(),
        "a Failed group has no VM: {:?}",
        qemu_of(&id)
    );
    let out = agent.ctl(&["delete", "vmnever", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A process that looks like a QEMU of group `id` under `run` to `/proc` (argv[0]
/// `qemu-system-x86_64`, `-name eci-<id>`, a socket path under `<run>/groups/<id>/vm/`):
/// bash waiting on a pipe the test holds.
struct FakeQemu {
    child: std::process::Child,
}

impl FakeQemu {
    fn start(run: &Path, id: &str) -> Self {
        let sock = run.join("groups").join(id).join("vm/ctl.sock");
        let child = Command::new("/bin/bash")
            .arg0("qemu-system-x86_64")
            .args(["-c", "read -t 600 x", "stand-in", "-name"])
            .arg(format!("eci-{id}"))
            .arg(format!("socket,id=ctl,path={}", sock.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("fake qemu");
        FakeQemu { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs (reaps it when it does not).
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for FakeQemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_janitor_kills_an_orphan_qemu_of_this_agent_and_nothing_else() {
    let Some(dir) = guest_dir() else { return };
    let mut agent = vm_agent(&dir, "");
    let run = agent.root().join("run/eci");
    // A group id this agent's store does not have, under its run dir.
    let orphan_id = "0a1b2c3d4e5f6a7b8c9d";
    let mut orphan = FakeQemu::start(&run, orphan_id);
    // The same name under another agent's run dir, and one of a live group's name under
    // another run dir: neither is this agent's.
    let other_root = tempfile::tempdir().expect("tmp");
    let mut foreign = FakeQemu::start(&other_root.path().join("run/eci"), orphan_id);
    // A real vm group: its QEMU is live and stays.
    apply_ok(&agent, "vmlive", &ticker("vmlive"));
    wait_phase_vm(&agent, "vmlive", "Running");
    let id = group_id(&agent, "vmlive");
    let qemu = one_qemu(&agent, &id);
    let mut foreign_live = FakeQemu::start(&other_root.path().join("run/eci"), &id);

    agent.kill9_and_restart().expect("restart");
    let killed = wait_for(Duration::from_secs(60), || {
        (!orphan.running()).then_some(())
    });
    assert!(
        killed.is_some(),
        "the orphan QEMU {} of {orphan_id} was not killed:\n{}",
        orphan.pid(),
        tail(&agent.log(), 40)
    );
    // Give the janitor time to do wrong: a couple of its rounds.
    std::thread::sleep(Duration::from_secs(5));
    assert!(foreign.running(), "another agent's QEMU was killed");
    assert!(foreign_live.running(), "another agent's QEMU was killed");
    assert!(alive(qemu), "the live group's QEMU was killed");
    // (It carries the live group's name: `qemu_of` would count it.)
    drop(foreign_live);
    wait_phase_vm(&agent, "vmlive", "Running");
    assert_eq!(one_qemu(&agent, &id), qemu);
    delete_vm(&agent, "vmlive");
    assert!(foreign.running(), "another agent's QEMU was killed");
}

/// `kill -9` of the agent at `point` during a vm group's start, then a restart: the
/// group runs in one VM, and its delete leaves nothing.
fn crash_during_start_converges(dir: &Path, point: &str) {
    let mut agent =
        Agent::start_with_env(&vm_toml(dir), &[("ECI_CRASH_AT", point)]).expect("agent");
    let image = eci_tests::oci::Image {
        layers: vec![eci_tests::oci::busybox_layer().expect("busybox-static")],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    eci_tests::scenario::import(&agent, &image, eci_tests::scenario::IMAGE);
    eci_tests::vm::wait_vm_usable(&agent);
    let name = "vmcrash";
    // The crash may come before apply has its answer.
    let _ = wait_for(VM_WAIT, || {
        let out = agent.apply(name, &ticker(name));
        (!text(&out).contains("still being probed")).then_some(())
    });
    let t = Instant::now();
    assert!(
        agent.wait_exit(VM_WAIT),
        "the agent did not reach {point}:\n{}",
        tail(&agent.log(), 40)
    );
    eprintln!("{point}: crashed after {:?}", t.elapsed());
    agent.set_env(&[]);
    agent.restart().expect("restart");
    wait_phase_vm(&agent, name, "Running");
    let id = group_id(&agent, name);
    let watch = NeverTwo::watch(&id);
    let q = one_qemu(&agent, &id);
    wait_log_vm(&agent, name, "tick", "tick-2");
    let out = agent.ctl(&["exec", name, "-c", "tick", "--", "true"]);
    assert!(out.status.success(), "{point}: exec: {}", text(&out));
    assert_eq!(one_qemu(&agent, &id), q, "{point}: the VM stays");
    watch.check();
    delete_vm(&agent, name);
    let erofs = std::fs::read_dir(agent.root().join("var/lib/eci/layers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".unpack-erofs-")
        })
        .map(|e| e.path())
        .collect::<Vec<_>>();
    assert!(
        erofs.is_empty(),
        "{point}: half-written erofs images left: {erofs:?}"
    );
}

#[test]
fn an_agent_crash_at_each_step_of_a_vm_start_converges_to_one_vm() {
    let Some(dir) = guest_dir() else { return };
    for point in [
        "vm-layers-built",
        "vm-config-written",
        "vm-shim-launched",
        "vm-container-started",
    ] {
        crash_during_start_converges(&dir, point);
    }
}

#[test]
fn restart_policy_restart_and_update_work_inside_the_guest() {
    let Some(dir) = guest_dir() else { return };
    let agent = vm_agent(&dir, "");
    let spec = |greeting: &str| {
        format!(
            "{}  env:\n  - name: GREETING\n    value: {greeting}\n",
            group(
                "vmpol",
                "OnFailure",
                &[
                    ("flaky", "echo run-$(cat /proc/uptime); sleep 2; exit 1"),
                    ("steady", "echo greeting=$GREETING; sleep 3600"),
                ],
                "sandbox: vm\n",
            )
        )
    };
    apply_ok(&agent, "vmpol", &spec("one"));
    wait_phase_vm(&agent, "vmpol", "Running");
    let id = group_id(&agent, "vmpol");
    let qemu = one_qemu(&agent, &id);
    wait_log_vm(&agent, "vmpol", "steady", "greeting=one");
    // OnFailure: the failing container runs again, in the same VM.
    let grown = wait_for(VM_WAIT, || {
        (restart_count(&agent, "vmpol", "flaky") >= 2).then_some(())
    });
    assert!(
        grown.is_some(),
        "flaky never restarted: {}",
        container_status(&agent, "vmpol", "flaky")
    );
    let st = container_status(&agent, "vmpol", "flaky");
    assert_eq!(st["lastState"]["exitCode"], 1, "{st}");
    let prev = text(&agent.ctl(&["logs", "vmpol", "-c", "flaky", "--previous"]));
    assert!(prev.contains("run-"), "--previous: {prev}");
    assert_eq!(
        one_qemu(&agent, &id),
        qemu,
        "a container restart keeps the VM"
    );
    assert_eq!(restart_count(&agent, "vmpol", "steady"), 0);

    // ecictl restart: every container again, same VM. (The phase flips between
    // Running and Restarting while flaky crash-loops: steady's own state is watched.)
    let started = |agent: &Agent| container_status(agent, "vmpol", "steady")["startedAt"].clone();
    let first = started(&agent);
    let out = agent.ctl(&["restart", "vmpol"]);
    assert!(out.status.success(), "restart: {}", text(&out));
    let restarted = wait_for(VM_WAIT, || {
        let st = container_status(&agent, "vmpol", "steady");
        (st["state"] == "Running" && st["startedAt"] != first && st["restartCount"] == 1)
            .then_some(())
    });
    assert!(
        restarted.is_some(),
        "steady was not restarted: {}",
        container_status(&agent, "vmpol", "steady")
    );
    wait_log_vm(&agent, "vmpol", "steady", "greeting=one");
    let prev = text(&agent.ctl(&["logs", "vmpol", "-c", "steady", "--previous"]));
    assert!(prev.contains("greeting=one"), "--previous: {prev}");
    assert_eq!(one_qemu(&agent, &id), qemu, "a group restart keeps the VM");

    // Update of an env var only: the containers are recreated with it, in the same VM.
    let second = started(&agent);
    apply_ok(&agent, "vmpol", &spec("two"));
    wait_for(VM_WAIT, || {
        let st = container_status(&agent, "vmpol", "steady");
        (st["state"] == "Running" && st["startedAt"] != second).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "steady not recreated by the update: {}\n{}\n{}",
            container_status(&agent, "vmpol", "steady"),
            text(&agent.ctl(&["describe", "vmpol"])),
            tail(&agent.log(), 40)
        )
    });
    wait_log_vm(&agent, "vmpol", "steady", "greeting=two");
    assert_eq!(one_qemu(&agent, &id), qemu, "an env update keeps the VM");
    let g = agent.get_json("vmpol").expect("get");
    assert_eq!(g["generation"], "2", "{g}");
    // An update that resizes the VM is refused, saying why.
    let bigger = spec("three").replace("memory: 2Gi", "memory: 3Gi");
    let out = agent.apply("vmpol", &bigger);
    assert!(!out.status.success(), "a resize of a vm group is refused");
    assert!(text(&out).contains("resize"), "{}", text(&out));
    delete_vm(&agent, "vmpol");
}

/// `kill -9` of the agent at `point` while it deletes a running vm group, then a
/// restart: the delete finishes and nothing of the VM is left.
fn crash_during_delete_converges(dir: &Path, point: &str) {
    let mut agent = vm_agent(dir, "");
    let name = "vmdel";
    apply_ok(&agent, name, &ticker(name));
    wait_phase_vm(&agent, name, "Running");
    let id = group_id(&agent, name);
    let qemu = one_qemu(&agent, &id);
    wait_log_vm(&agent, name, "tick", "tick-1");
    agent.kill9().expect("kill");
    agent.set_env(&[("ECI_CRASH_AT", point)]);
    agent.restart().expect("restart");
    // The crash may come before the delete has its answer.
    let _ = agent.ctl(&["delete", name]);
    assert!(
        agent.wait_exit(VM_WAIT),
        "the agent did not reach {point}:\n{}",
        tail(&agent.log(), 40)
    );
    agent.set_env(&[]);
    agent.restart().expect("restart");
    let gone = wait_for(VM_WAIT, || agent.get_json(name).is_err().then_some(()));
    assert!(
        gone.is_some(),
        "{point}: the delete did not finish: {}",
        text(&agent.ctl(&["describe", name]))
    );
    assert!(!alive(qemu), "{point}: QEMU outlived the delete");
    assert!(qemu_of(&id).is_empty(), "{point}: {:?}", qemu_of(&id));
    let left: Vec<_> = cgroup_dirs(&agent.cgroup_parent())
        .into_iter()
        .filter(|d| d.display().to_string().contains(&id))
        .collect();
    assert!(left.is_empty(), "{point}: cgroups left: {left:?}");
    let run = run_dir(&agent, &id);
    assert!(
        !run.exists(),
        "{point}: run directory left: {}",
        run.display()
    );
}

#[test]
fn an_agent_crash_while_deleting_a_vm_group_converges_to_nothing_left() {
    let Some(dir) = guest_dir() else { return };
    for point in ["teardown-containers-stopped", "teardown-shim-shut-down"] {
        crash_during_delete_converges(&dir, point);
    }
}
