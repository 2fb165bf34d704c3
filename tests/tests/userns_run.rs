//! Containers run in their group's user namespace (issue 14), seen from the host:
//! every process of a container has a host uid inside its group's range (never 0),
//! root inside is `base` outside, files a container writes to its volumes are owned by
//! mapped ids, image files show the owners the image gave them, exec joins the same
//! namespace, and all of it holds after `kill -9` of the agent. With the config switch
//! off, the agent says so and containers run as before.

use std::os::unix::fs::MetadataExt;

use eci_tests::host::{HostProcess, find_file, group_processes, userns_base};
use eci_tests::scenario::{
    busybox_agent, busybox_agent_with, group, group_id, wait_log, wait_phase,
};
use eci_tests::text;

const RANGE: u32 = 65_536;

fn assert_all_in_range(id: &str, base: u32, at_least: usize) {
    let procs = group_processes(id);
    assert!(
        procs.len() >= at_least,
        "expected {at_least}+ processes of group {id}: {procs:?}"
    );
    for HostProcess {
        pid,
        uid,
        gid,
        uid_map: map,
        ..
    } in &procs
    {
        assert!(
            *uid >= base && *uid < base + RANGE && *gid >= base && *gid < base + RANGE,
            "process {pid} runs as host uid {uid} gid {gid}, outside {base}..{}",
            base + RANGE
        );
        let fields: Vec<&str> = map.split_whitespace().collect();
        assert_eq!(
            fields,
            ["0", &base.to_string(), &RANGE.to_string()],
            "uid_map of {pid}"
        );
    }
}

fn spec(name: &str) -> String {
    let volumes = "volumes:\n- name: scratch\n  emptyDir: {}\n- name: fast\n  emptyDir: {medium: Memory, sizeLimit: 16Mi}\n\
                   - name: conf\n  configFile:\n    files:\n    - {path: app.conf, content: \"k=v\"}\n";
    let mut s = group(
        name,
        "Always",
        &[
            (
                "root",
                "echo root-file > /data/by-root; echo > /mem/by-root; \
                 echo ids=$(id -u):$(id -g) map=$(cat /proc/self/uid_map | tr -s ' ' _); \
                 echo owners=$(stat -c %u:%g / /bin/sh /data /mem /conf/app.conf /etc/hosts /dev /dev/shm | tr '\\n' ,); \
                 echo host-entry >> /etc/hosts && echo hosts-ok; \
                 echo pts=$(stat -c %g /dev/pts/ptmx); \
                 echo ready; exec sleep 3600",
            ),
            (
                "user",
                "sleep 0.5; echo user-file > /data/by-user; echo uid=$(id -u); \
                 touch /etc/hosts 2>/dev/null || echo hosts-refused; exec sleep 3600",
            ),
        ],
        volumes,
    );
    s = s.replacen(
        "  args: [\"echo root-file",
        "  volumeMounts: [{name: scratch, mountPath: /data}, {name: fast, mountPath: /mem}, {name: conf, mountPath: /conf}]\n  args: [\"echo root-file",
        1,
    );
    s.replacen(
        "  args: [\"sleep 0.5;",
        "  securityContext: {runAsUser: 1000, runAsGroup: 1000}\n  volumeMounts: [{name: scratch, mountPath: /data}]\n  args: [\"sleep 0.5;",
        1,
    )
}

#[test]
fn containers_run_in_their_groups_id_range() {
    let mut agent = busybox_agent();
    let node: serde_json::Value =
        serde_json::from_slice(&agent.ctl(&["node", "-o", "json"]).stdout).expect("node json");
    assert_eq!(node["userNamespaces"]["mode"], "on", "{node}");
    assert_eq!(node["userNamespaces"]["enforced"], true, "{node}");

    let out = agent.apply("uns-run", &spec("uns-run"));
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "uns-run", "Running");
    let l = wait_log(&agent, "uns-run", "root", "ready");
    let b = userns_base(&agent, "uns-run");
    let id = group_id(&agent, "uns-run");
    assert!(
        l.contains(&format!("ids=0:0 map=_0_{b}_{RANGE}")),
        "root inside, mapped to the range: {l}"
    );
    // Image files keep the image's owners (root) inside; the writable root, volumes,
    // configFile and /etc/hosts belong to container root; /dev and /dev/shm too.
    assert!(
        l.contains("owners=0:0,0:0,0:0,0:0,0:0,0:0,0:0,0:0,"),
        "owners inside: {l}"
    );
    assert!(l.contains("hosts-ok"), "root edits its /etc/hosts: {l}");
    let u = wait_log(&agent, "uns-run", "user", "uid=");
    assert!(u.contains("uid=1000"), "{u}");
    assert!(u.contains("hosts-refused"), "{u}");

    assert_all_in_range(&id, b, 2);
    // Files written to the emptyDir are owned on the host by mapped ids.
    let data = agent
        .root()
        .join("var/lib/eci/groups")
        .join(&id)
        .join(".volumes/scratch");
    let owner = |f: &str| {
        let m = std::fs::metadata(data.join(f)).expect(f);
        (m.uid(), m.gid())
    };
    assert_eq!(owner("by-root"), (b, b));
    assert_eq!(owner("by-user"), (b + 1000, b + 1000));
    // The image's layers on disk are untouched (shared by every group): still root's.
    let layers = agent.root().join("var/lib/eci/layers");
    let sh = find_file(&layers, "bin/busybox").expect("busybox in a layer");
    assert_eq!(std::fs::metadata(&sh).expect("layer file").uid(), 0);

    // exec joins the user namespace: root inside, `base` outside.
    let out = agent.ctl(&[
        "exec",
        "uns-run",
        "-c",
        "root",
        "--",
        "sh",
        "-c",
        "echo exec=$(id -u) $(cat /proc/self/uid_map | tr -s ' ' _); cat /proc/$$/status | grep ^Uid",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(o.contains(&format!("exec=0 _0_{b}_{RANGE}")), "{o}");
    let out = agent.ctl(&["exec", "-t", "uns-run", "-c", "root", "--", "id", "-u"]);
    assert!(out.status.success(), "exec with a terminal: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains('0'),
        "{}",
        text(&out)
    );

    // Survives an agent crash: the same range, the same processes.
    agent.kill9_and_restart().expect("restart");
    wait_phase(&agent, "uns-run", "Running");
    assert_eq!(userns_base(&agent, "uns-run"), b);
    assert_all_in_range(&id, b, 2);
    let out = agent.ctl(&["exec", "uns-run", "-c", "user", "--", "id", "-u"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).trim() == "1000",
        "{}",
        text(&out)
    );
    let out = agent.ctl(&["delete", "uns-run", "--force", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(group_processes(&id).is_empty());
    let ns = agent
        .root()
        .join("run/eci/groups")
        .join(&id)
        .join("ns/user");
    assert!(!ns.exists(), "user namespace pin left: {}", ns.display());
}

#[test]
fn the_switch_off_is_reported_and_containers_run_as_before() {
    let agent = busybox_agent_with("[user_namespaces]\nenabled = false\n");
    let node: serde_json::Value =
        serde_json::from_slice(&agent.ctl(&["node", "-o", "json"]).stdout).expect("node json");
    let u = &node["userNamespaces"];
    assert_eq!(u["mode"], "off", "{node}");
    assert_eq!(u["enforced"], false, "{node}");
    assert!(
        u["reason"]
            .as_str()
            .is_some_and(|r| r.contains("enabled = false")),
        "{node}"
    );
    let out = agent.apply(
        "uns-off",
        &group(
            "uns-off",
            "Always",
            &[("app", "echo ready; exec sleep 3600")],
            "",
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "uns-off", "Running");
    wait_log(&agent, "uns-off", "app", "ready");
    let g = agent.get_json("uns-off").expect("get");
    assert!(g["status"]["userNamespace"].is_null(), "{g}");
    let id = group_id(&agent, "uns-off");
    let procs = group_processes(&id);
    assert!(!procs.is_empty());
    assert!(procs.iter().all(|p| p.uid == 0), "{procs:?}");
    let _ = agent.ctl(&["delete", "uns-off", "--force", "--wait", "--timeout", "60s"]);
}
