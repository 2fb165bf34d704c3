//! Hostile tenant: `/proc` and `/sys`. containerd's masked and read-only paths; `/sys`
//! read-only; `/proc/sysrq-trigger` cannot be written; kcore, keys, timer_list and
//! /sys/firmware read as empty. Needs root.

use eci_tests::scenario::{busybox_agent, group, wait_log};
use eci_tests::text;

#[test]
fn kernel_interfaces_are_masked_or_read_only() {
    let agent = busybox_agent();
    // Harmless probes: sysrq 'h' only prints help; the sysctl gets its own value back.
    let script = "echo h > /proc/sysrq-trigger 2>/dev/null && echo SYSRQ-WRITTEN || echo sysrq-refused; \
                  echo sizes:$(cat /proc/kcore | wc -c):$(cat /proc/keys | wc -c):$(cat /proc/timer_list | wc -c):$(ls -A /sys/firmware | wc -l); \
                  touch /sys/kernel/x 2>/dev/null && echo SYS-WRITABLE || echo sys-refused; \
                  cat /proc/sys/kernel/printk_ratelimit > /tmp/v; cat /tmp/v > /proc/sys/kernel/printk_ratelimit 2>/dev/null && echo PROCSYS-WRITTEN || echo procsys-refused; \
                  grep ' /sys ' /proc/self/mountinfo | grep -q ' ro,' && echo sys-ro; echo done; sleep 3600";
    let out = agent.apply("procs", &group("procs", "Never", &[("app", script)], ""));
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "procs", "app", "done");
    for want in [
        "sysrq-refused",
        "sizes:0:0:0:0\n",
        "sys-refused",
        "procsys-refused",
        "sys-ro",
    ] {
        assert!(l.contains(want), "{want}: {l}");
    }
}
