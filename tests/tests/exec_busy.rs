//! Exec into a container that forks all the time: the exec helper reports its child's
//! pid after its fork returns, and the child reports "ready" once set up; under load the
//! child is often first. Every exec must succeed whatever the order (it failed about one
//! time in three with "container init exited before reporting" when the shim expected
//! the pid first). Needs root.

use eci_tests::scenario::{busybox_agent, group, wait_phase};
use eci_tests::text;

#[test]
fn every_exec_into_a_busy_container_starts() {
    let agent = busybox_agent();
    let name = format!("busy-exec-{}", std::process::id());
    let script = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; usleep 2000; done";
    let out = agent.apply(&name, &group(&name, "Never", &[("app", script)], ""));
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, &name, "Running");
    let mut failed = Vec::new();
    for _ in 0..30 {
        let out = agent.ctl(&["exec", &name, "-c", "app", "--", "true"]);
        if !out.status.success() {
            failed.push(text(&out));
        }
    }
    let out = agent.ctl(&["delete", &name, "--force", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        failed.is_empty(),
        "{} of 30 execs failed: {failed:#?}",
        failed.len()
    );
}
