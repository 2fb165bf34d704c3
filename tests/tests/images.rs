//! Images through ecictl: import of OCI archives, list, remove, refused layers.

use eci_tests::oci::{self, TarEntry};
use eci_tests::{Agent, text};

fn write(agent: &Agent, name: &str, bytes: &[u8]) -> String {
    let p = agent.root().join(name);
    std::fs::write(&p, bytes).expect("write archive");
    p.to_str().expect("utf-8").to_string()
}

#[test]
fn import_list_and_remove_a_busybox_image() {
    let agent = Agent::start("").expect("agent");
    let image = oci::Image {
        layers: vec![oci::busybox_layer().expect("busybox-static")],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    let archive = write(&agent, "bb.tar", &oci::archive(&image, None));
    let out = agent.ctl(&[
        "images",
        "import",
        &archive,
        "--reference",
        "127.0.0.1:5000/demo/busybox:1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let ls = text(&agent.ctl(&["images", "ls"]));
    assert!(
        ls.contains("127.0.0.1:5000/demo/busybox:1") && ls.contains("sha256:"),
        "{ls}"
    );
    // Survives a crash like everything else in the store.
    let mut agent = agent;
    agent.kill9_and_restart().expect("restart");
    assert!(text(&agent.ctl(&["images", "ls"])).contains("demo/busybox:1"));
    let out = agent.ctl(&["images", "rm", "127.0.0.1:5000/demo/busybox:1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&agent.ctl(&["images", "ls"])).contains("busybox"));
    let layers: Vec<_> = std::fs::read_dir(agent.root().join("var/lib/eci/layers"))
        .expect("layers dir")
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(layers.is_empty(), "unused layers are collected: {layers:?}");
}

#[test]
fn a_malicious_layer_is_refused_with_the_entry_named() {
    let agent = Agent::start("").expect("agent");
    let evil = oci::Image {
        layers: vec![oci::tar(&[
            TarEntry::Symlink {
                path: "etc",
                target: "/etc",
            },
            TarEntry::File {
                path: "etc/eci-e2e-pwned",
                data: b"x",
                mode: 0o644,
            },
        ])],
        cmd: vec!["true".into()],
        ..Default::default()
    };
    let archive = write(&agent, "evil.tar", &oci::archive(&evil, Some("evil:1")));
    let out = agent.ctl(&["images", "import", &archive]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("InvalidArgument") && t.contains("etc/eci-e2e-pwned"),
        "{t}"
    );
    assert!(!std::path::Path::new("/etc/eci-e2e-pwned").exists());
    assert!(!text(&agent.ctl(&["images", "ls"])).contains("evil"));
}

#[test]
fn a_layer_with_rooted_and_dotted_names_imports_and_runs() {
    use eci_tests::scenario::{busybox_agent, group_on, import, wait_log};
    // What `umoci insert … /` and other tools write: a `/` entry, `/`-prefixed and
    // `./`-prefixed names, doubled slashes. All of it lands inside the layer.
    let agent = busybox_agent();
    let layer = oci::tar(&[
        TarEntry::Raw {
            kind: tar::EntryType::Directory,
            name: "/",
            link: "",
            data: b"",
        },
        TarEntry::Raw {
            kind: tar::EntryType::Regular,
            name: "/etc/rooted",
            link: "",
            data: b"rooted\n",
        },
        TarEntry::Raw {
            kind: tar::EntryType::Regular,
            name: "./usr//share/./dotted",
            link: "",
            data: b"dotted\n",
        },
    ]);
    let image = oci::Image {
        layers: vec![oci::busybox_layer().expect("busybox-static"), layer],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    import(&agent, &image, "127.0.0.1:5000/umoci/rooted:1");
    let spec = group_on(
        "127.0.0.1:5000/umoci/rooted:1",
        "rooted",
        "Never",
        &[("app", "cat /etc/rooted /usr/share/dotted; echo done")],
        "",
    );
    let out = agent.apply("rooted", &spec);
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "rooted", "app", "done");
    assert!(l.contains("rooted\ndotted\n"), "{l}");
    assert!(!std::path::Path::new("/etc/rooted").exists());
}
