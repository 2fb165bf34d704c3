//! Hostile image metadata through the real agent and ecictl: digests that would name a
//! host path (`sha256:/`, `sha256:../../x`) are refused at import with the field named;
//! no image is listed and nothing is unpacked or written outside the state directory.

use eci_tests::oci::{self, Doc};
use eci_tests::{Agent, text};
use serde_json::Value;

/// Writes the archive of `oci::two_layer_image()` with `edit` applied and imports it.
fn import(agent: &Agent, name: &str, edit: impl FnMut(Doc, &mut Value)) -> (bool, String) {
    let bytes = oci::archive_edited(&oci::two_layer_image(), Some("hostile/app:1"), edit);
    let path = agent.root().join(name);
    std::fs::write(&path, bytes).expect("write archive");
    let out = agent.ctl(&["images", "import", path.to_str().expect("utf-8")]);
    (out.status.success(), text(&out))
}

/// Unpacked layer directories (temp files and spools start with a dot).
fn layer_dirs(agent: &Agent) -> Vec<String> {
    std::fs::read_dir(agent.root().join("var/lib/eci/layers"))
        .expect("layers dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

#[test]
fn hostile_digests_are_refused_with_the_field_named() {
    let agent = Agent::start("").expect("agent");
    type Edit = Box<dyn Fn(Doc, &mut Value)>;
    let on = |want: Doc, f: fn(&mut Value)| -> Edit {
        Box::new(move |doc, v| {
            if doc == want {
                f(v)
            }
        })
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "root.tar",
            on(Doc::Config, |v| {
                v["rootfs"]["diff_ids"][0] = "sha256:/".into()
            }),
            r#"image docker.io/hostile/app:1: config rootfs.diff_ids[0]: "sha256:/" is not a valid digest"#,
        ),
        (
            "etc.tar",
            on(Doc::Config, |v| {
                v["rootfs"]["diff_ids"][1] = "sha256:/etc".into()
            }),
            r#"config rootfs.diff_ids[1]: "sha256:/etc" is not a valid digest"#,
        ),
        (
            "dotdot.tar",
            on(Doc::Config, |v| {
                v["rootfs"]["diff_ids"][1] = "sha256:../../x".into()
            }),
            r#"config rootfs.diff_ids[1]: "sha256:../../x" is not a valid digest"#,
        ),
        (
            "layer.tar",
            on(Doc::Manifest, |v| {
                v["layers"][0]["digest"] = "sha256:../x".into()
            }),
            r#"manifest layers[0].digest: "sha256:../x" is not a valid digest"#,
        ),
        (
            "index.tar",
            on(Doc::Index, |v| {
                v["manifests"][0]["digest"] = "sha256:../../etc".into()
            }),
            r#"image archive: index.json manifests[0].digest: "sha256:../../etc" is not a valid digest"#,
        ),
    ];
    for (name, edit, field) in cases {
        let (ok, out) = import(&agent, name, edit);
        assert!(!ok, "{name} was imported: {out}");
        assert!(
            out.contains("InvalidArgument") && out.contains(field),
            "{name}: the error names the field: {out}"
        );
        let ls = text(&agent.ctl(&["images", "ls"]));
        assert!(!ls.contains("hostile"), "{name}: listed: {ls}");
        assert!(layer_dirs(&agent).is_empty(), "{name}: unpacked something");
    }
    // Where `sha256:../../x` would have led from the layers directory.
    assert!(!agent.root().join("var/lib/x").exists());

    // The same archive untouched imports: the refusals were the digests' doing.
    let (ok, out) = import(&agent, "clean.tar", |_, _| {});
    assert!(ok, "{out}");
    let ls = text(&agent.ctl(&["images", "ls"]));
    assert!(ls.contains("docker.io/hostile/app:1"), "{ls}");
    assert_eq!(layer_dirs(&agent).len(), 2);
}
