//! Paths an accepted spec names that do not exist yet: a `workingDir` missing from the
//! image and a `subPath` missing from its volume are created (as Docker and Kubernetes
//! do), inside the container's root or the volume, never through a link the tenant
//! planted; and an image archive that names a blob it does not hold is refused as bad
//! input naming the blob. Needs root.

use eci_tests::scenario::{IMAGE, busybox_agent, wait_log};
use eci_tests::{oci, text};

#[test]
fn missing_working_dirs_and_sub_paths_are_created() {
    let agent = busybox_agent();
    let spec = format!(
        r#"name: paths
restartPolicy: Never
cpu: "1"
memory: 2Gi
volumes:
- name: vol
  emptyDir: {{}}
containers:
- name: user
  image: {IMAGE}
  imagePullPolicy: IfNotPresent
  workingDir: /made/for/user
  securityContext: {{runAsUser: 1000, runAsGroup: 2000}}
  command: ["/bin/sh", "-c"]
  args: ["echo wd:$(pwd):$(stat -c %u:%g .):$(stat -c %u:%g /made); touch mine && echo write-ok; echo done"]
- name: ro
  image: {IMAGE}
  imagePullPolicy: IfNotPresent
  workingDir: /ro/wd
  securityContext: {{readOnlyRootFilesystem: true}}
  command: ["/bin/sh", "-c"]
  args: ["echo wd:$(pwd); touch /x 2>/dev/null || echo ro-ok; echo done"]
- name: sub
  image: {IMAGE}
  imagePullPolicy: IfNotPresent
  volumeMounts:
  - {{name: vol, mountPath: /s, subPath: not/yet}}
  - {{name: vol, mountPath: /vol}}
  workingDir: /vol/wd-in-volume
  command: ["/bin/sh", "-c"]
  args: ["echo hi > /s/f; echo sub:$(cat /vol/not/yet/f); echo wd:$(pwd); ls -d /vol/wd-in-volume; echo done"]
"#
    );
    let out = agent.apply("paths", &spec);
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "paths", "user", "done");
    assert!(l.contains("wd:/made/for/user:1000:2000:1000:2000"), "{l}");
    assert!(l.contains("write-ok"), "{l}");
    let l = wait_log(&agent, "paths", "ro", "done");
    assert!(l.contains("wd:/ro/wd") && l.contains("ro-ok"), "{l}");
    let l = wait_log(&agent, "paths", "sub", "done");
    assert!(
        l.contains("sub:hi") && l.contains("wd:/vol/wd-in-volume"),
        "{l}"
    );
    assert!(
        agent
            .ctl(&["delete", "paths", "--grace-period", "0", "--wait"])
            .status
            .success()
    );
}

/// A link the tenant planted in a volume, pointing at a host directory, on the way to a
/// workingDir or a subPath that does not exist: what it names is made inside the
/// container's root (or the volume), and nothing appears on the host.
#[test]
fn planted_links_do_not_make_working_dirs_or_sub_paths_on_the_host() {
    let agent = busybox_agent();
    let host = tempfile::tempdir().expect("tempdir");
    let hostdir = host.path().display().to_string();
    let spec = format!(
        r#"name: plant
restartPolicy: Never
cpu: "1"
memory: 2Gi
volumes:
- name: vol
  emptyDir: {{}}
initContainers:
- name: plant
  image: {IMAGE}
  imagePullPolicy: IfNotPresent
  volumeMounts: [{{name: vol, mountPath: /vol}}]
  command: ["/bin/sh", "-c"]
  args: ["ln -s {hostdir} /vol/abs; ln -s ../../../../../../../..{hostdir} /vol/up"]
containers:
- name: app
  image: {IMAGE}
  imagePullPolicy: IfNotPresent
  volumeMounts:
  - {{name: vol, mountPath: /vol}}
  - {{name: vol, mountPath: /s1, subPath: abs/sub-made}}
  - {{name: vol, mountPath: /s2, subPath: up/sub-made2}}
  workingDir: /vol/abs/wd-made
  command: ["/bin/sh", "-c"]
  args: ["echo wd:$(pwd); echo x > /s1/f1; echo x > /s2/f2; echo pwned > dropped; find /vol; echo wd-in-root:$(ls {hostdir}); echo done"]
"#
    );
    let out = agent.apply("plant", &spec);
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "plant", "app", "done");
    // The link names a path of the container's own root (as it would for any process
    // there): the working directory is made there, and the process runs in it.
    assert!(l.contains(&format!("wd:{hostdir}/wd-made")), "{l}");
    assert!(l.contains("wd-in-root:wd-made"), "{l}");
    let on_host: Vec<_> = std::fs::read_dir(host.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        on_host.is_empty(),
        "created on the host: {on_host:?}\n{l}\n{}",
        text(&agent.ctl(&["describe", "plant"]))
    );
    // The sub-paths were made inside the volume, where the links lead when the
    // volume is the root: `<vol>/<hostdir>/sub-made`.
    for made in ["sub-made/f1", "sub-made2/f2"] {
        assert!(l.contains(&format!("/vol{hostdir}/{made}")), "{made}: {l}");
    }
    assert!(
        agent
            .ctl(&["delete", "plant", "--grace-period", "0", "--wait"])
            .status
            .success()
    );
}

#[test]
fn an_archive_naming_a_missing_blob_is_invalid_argument() {
    let agent = busybox_agent();
    let missing = "cd".repeat(32);
    let image = oci::Image {
        layers: vec![oci::tar(&[oci::TarEntry::File {
            path: "hello",
            data: b"hi",
            mode: 0o644,
        }])],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    let bytes = oci::archive_edited(&image, Some("missing/blob:1"), |d, v| {
        if d == oci::Doc::Manifest {
            v["layers"][0]["digest"] = format!("sha256:{missing}").into();
        }
    });
    let path = agent.root().join("missing-blob.tar");
    std::fs::write(&path, bytes).expect("archive");
    let out = agent.ctl(&["images", "import", path.to_str().expect("utf-8")]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("InvalidArgument")
            && t.contains(&format!("sha256:{missing}"))
            && t.contains(&format!("blobs/sha256/{missing}")),
        "{t}"
    );
    let root = agent.root().display().to_string();
    assert!(!t.contains(&root), "a host path in {t}");
    assert!(!t.contains("Internal"), "{t}");
}
