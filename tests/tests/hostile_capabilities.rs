//! Hostile tenant: capabilities. The default set is containerd's 14; `add` accepts only
//! the documented allowlist (docs/security.md). Powers that reach the host, another
//! group, or the group's own firewall and address are refused, naming the field and
//! the capability, and nothing is created. Needs root.

use eci_tests::scenario::{busybox_agent, group, wait_log};
use eci_tests::text;

fn with_caps(name: &str, add: &str, drop: &str) -> String {
    group(
        name,
        "Never",
        &[(
            "app",
            "grep CapEff /proc/self/status; echo done; sleep 3600",
        )],
        "",
    )
    .replace(
        "  command:",
        &format!(
            "  securityContext: {{capabilities: {{add: [{add}], drop: [{drop}]}}}}\n  command:"
        ),
    )
}

#[test]
fn powers_beyond_the_group_are_refused_by_name() {
    let agent = busybox_agent();
    let refused = [
        "SYS_ADMIN",
        "NET_ADMIN",
        "SYS_MODULE",
        "SYS_RAWIO",
        "DAC_READ_SEARCH",
        "BPF",
        "PERFMON",
        "SYS_BOOT",
        "MAC_ADMIN",
        "SYSLOG",
        "SYS_TIME",
        "CAP_SYS_ADMIN",
    ];
    let out = agent.apply("greedy", &with_caps("greedy", &refused.join(", "), ""));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    for (i, cap) in refused.iter().enumerate() {
        assert!(
            t.contains(&format!(
                "containers[0].securityContext.capabilities.add[{i}]"
            )) && t.contains(cap),
            "{cap} not named: {t}"
        );
    }
    assert!(
        !agent.ctl(&["get", "greedy"]).status.success(),
        "the group was created"
    );
}

#[test]
fn the_default_set_and_the_allowlist_apply() {
    let agent = busybox_agent();
    for (name, add, drop, want) in [
        // containerd's default 14.
        ("plain", "", "", "00000000a80425fb"),
        // + SYS_PTRACE (bit 19) and IPC_LOCK (bit 14).
        ("debug", "SYS_PTRACE, IPC_LOCK", "", "00000000a80c65fb"),
        ("none", "", "ALL", "0000000000000000"),
    ] {
        let out = agent.apply(name, &with_caps(name, add, drop));
        assert!(out.status.success(), "{name}: {}", text(&out));
        let l = wait_log(&agent, name, "app", "done");
        assert!(l.contains(&format!("CapEff:\t{want}")), "{name}: {l}");
        // The node has room for one group at a time.
        let out = agent.ctl(&["delete", name, "--grace-period", "0", "--wait"]);
        assert!(out.status.success(), "{}", text(&out));
    }
}
