//! Building blocks of end-to-end scenarios: an agent with the busybox test image, group
//! specs with shell-script containers, and waits on phases and logs.

use std::time::Duration;

use crate::{Agent, oci, text, wait_for};

/// The reference the busybox test image is imported as.
pub const IMAGE: &str = "127.0.0.1:5000/demo/busybox:1";

/// An agent (extra TOML `config`) with the busybox test image imported as [`IMAGE`].
pub fn busybox_agent_with(config: &str) -> Agent {
    let agent = Agent::start(config).expect("agent");
    let image = oci::Image {
        layers: vec![oci::busybox_layer().expect("busybox-static")],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    import(&agent, &image, IMAGE);
    agent
}

/// An agent (extra TOML `config`) whose [`IMAGE`] also holds `/eci-attack`, the hostile
/// tenant's tool (see `src/bin/eci-attack.rs`), with the libraries it loads.
pub fn attack_agent_with(config: &str) -> Agent {
    let agent = Agent::start(config).expect("agent");
    let tool = crate::bin("eci-attack");
    let image = oci::Image {
        layers: vec![
            oci::busybox_layer().expect("busybox-static"),
            oci::host_binary_layer(&tool, "eci-attack").expect("eci-attack layer"),
        ],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    import(&agent, &image, IMAGE);
    agent
}

/// An agent on its defaults with the busybox test image imported.
pub fn busybox_agent() -> Agent {
    busybox_agent_with("")
}

/// Imports `image` as `reference` through `ecictl images import`; panics on failure.
pub fn import(agent: &Agent, image: &oci::Image, reference: &str) {
    let out = try_import(agent, image, reference);
    assert!(out.status.success(), "{}", text(&out));
}

/// Imports `image` as `reference`; returns ecictl's output.
pub fn try_import(agent: &Agent, image: &oci::Image, reference: &str) -> std::process::Output {
    let path = agent.root().join(format!(
        "image-{}.tar",
        reference.replace(['/', ':', '@'], "_")
    ));
    std::fs::write(&path, oci::archive(image, Some(reference))).expect("archive");
    agent.ctl(&["images", "import", path.to_str().expect("utf-8")])
}

/// A group spec with one container per (name, shell script), all on [`IMAGE`]; `extra`
/// is YAML inserted at group level.
pub fn group(name: &str, policy: &str, containers: &[(&str, &str)], extra: &str) -> String {
    group_on(IMAGE, name, policy, containers, extra)
}

/// As [`group`], on another image.
pub fn group_on(
    image: &str,
    name: &str,
    policy: &str,
    containers: &[(&str, &str)],
    extra: &str,
) -> String {
    let mut s = format!(
        "name: {name}\nrestartPolicy: {policy}\ncpu: \"1\"\nmemory: 2Gi\n{extra}containers:\n"
    );
    for (c, script) in containers {
        s.push_str(&format!(
            "- name: {c}\n  image: {image}\n  imagePullPolicy: IfNotPresent\n  command: [\"/bin/sh\", \"-c\"]\n  args: [{}]\n",
            serde_json::to_string(script).expect("json")
        ));
    }
    s
}

/// The group's phase, or "" when it cannot be read.
pub fn phase(agent: &Agent, name: &str) -> String {
    agent
        .get_json(name)
        .map(|g| {
            g["status"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

/// Waits up to 20 s for the group to reach `want`; panics with its description if not.
pub fn wait_phase(agent: &Agent, name: &str, want: &str) {
    let got = wait_for(Duration::from_secs(20), || {
        (phase(agent, name) == want).then_some(())
    });
    assert!(
        got.is_some(),
        "group {name} never reached {want}: {}\n{}",
        phase(agent, name),
        text(&agent.ctl(&["describe", name]))
    );
}

/// A container's log through `ecictl logs`.
pub fn logs(agent: &Agent, name: &str, container: &str) -> String {
    text(&agent.ctl(&["logs", name, "-c", container]))
}

/// Waits up to 20 s for `needle` in a container's log; returns the log.
pub fn wait_log(agent: &Agent, name: &str, container: &str, needle: &str) -> String {
    wait_for(Duration::from_secs(20), || {
        let l = logs(agent, name, container);
        l.contains(needle).then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "{container} never logged {needle:?}: {}\n{}",
            logs(agent, name, container),
            text(&agent.ctl(&["describe", name]))
        )
    })
}

/// The group's id (its run and state directories are named by it).
pub fn group_id(agent: &Agent, name: &str) -> String {
    agent.get_json(name).expect("get")["id"]
        .as_str()
        .expect("id")
        .to_string()
}
