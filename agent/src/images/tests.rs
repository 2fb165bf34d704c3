use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Arc;

use eci_tests::oci::{self, TarEntry};
use tar::EntryType;

use super::digest::Digest;
use super::unpack::{UnpackError, unpack};
use super::*;

/// A layer dir inside a scratch dir, with a sibling that must stay untouched.
struct Scratch {
    _dir: tempfile::TempDir,
    layer: PathBuf,
    outside: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = dir.path().join("layer");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&layer).expect("layer");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("victim"), b"original").expect("victim");
    Scratch {
        _dir: dir,
        layer,
        outside,
    }
}

fn refused(entries: &[TarEntry<'_>]) -> (String, Scratch) {
    let s = scratch();
    let err = unpack(&oci::tar(entries)[..], &s.layer).expect_err("must be refused");
    assert!(matches!(err, UnpackError::Refused { .. }), "{err:?}");
    // Nothing outside changed.
    assert_eq!(
        std::fs::read(s.outside.join("victim")).expect("victim"),
        b"original"
    );
    let names: Vec<_> = std::fs::read_dir(&s.outside)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "something was written outside: {names:?}");
    (err.to_string(), s)
}

#[test]
fn unpacks_files_links_and_whiteouts() {
    let s = scratch();
    let entries = [
        TarEntry::Dir { path: "etc" },
        TarEntry::File {
            path: "etc/conf",
            data: b"x=1",
            mode: 0o640,
        },
        TarEntry::File {
            path: "usr/bin/tool",
            data: b"#!",
            mode: 0o4755,
        },
        TarEntry::Symlink {
            path: "bin",
            target: "/usr/bin",
        },
        TarEntry::Link {
            path: "etc/conf2",
            target: "etc/conf",
        },
        TarEntry::File {
            path: "var/.wh.cache",
            data: b"",
            mode: 0o644,
        },
        TarEntry::File {
            path: "opt/.wh..wh..opq",
            data: b"",
            mode: 0o644,
        },
    ];
    unpack(&oci::tar(&entries)[..], &s.layer).expect("unpack");
    let l = &s.layer;
    assert_eq!(std::fs::read(l.join("etc/conf")).expect("conf"), b"x=1");
    assert_eq!(
        std::fs::metadata(l.join("etc/conf")).expect("meta").mode() & 0o7777,
        0o640
    );
    assert_eq!(
        std::fs::metadata(l.join("usr/bin/tool"))
            .expect("meta")
            .mode()
            & 0o7777,
        0o4755
    );
    assert_eq!(
        std::fs::read_link(l.join("bin")).expect("link"),
        Path::new("/usr/bin")
    );
    assert_eq!(
        std::fs::metadata(l.join("etc/conf2")).expect("meta").ino(),
        std::fs::metadata(l.join("etc/conf")).expect("meta").ino()
    );
    let wh = std::fs::symlink_metadata(l.join("var/cache")).expect("whiteout");
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "overlay whiteout"
    );
    assert_eq!(
        xattr::get(l.join("opt"), "trusted.overlay.opaque").expect("xattr"),
        Some(b"y".to_vec())
    );
}

#[test]
fn refuses_parent_dir_escape() {
    let (msg, _) = refused(&[TarEntry::Raw {
        kind: EntryType::Regular,
        name: "../outside/escape",
        link: "",
        data: b"x",
    }]);
    assert!(
        msg.contains("../outside/escape") && msg.contains(".."),
        "{msg}"
    );
}

#[test]
fn absolute_and_dotted_names_land_inside_the_layer() {
    let s = scratch();
    let entries = [
        TarEntry::Raw {
            kind: EntryType::Directory,
            name: "/",
            link: "",
            data: b"",
        },
        TarEntry::Raw {
            kind: EntryType::Regular,
            name: "/etc/evil",
            link: "",
            data: b"x",
        },
        TarEntry::Raw {
            kind: EntryType::Regular,
            name: "./usr//bin/./tool",
            link: "",
            data: b"y",
        },
    ];
    unpack(&oci::tar(&entries)[..], &s.layer).expect("unpack");
    assert_eq!(std::fs::read(s.layer.join("etc/evil")).expect("evil"), b"x");
    assert_eq!(
        std::fs::read(s.layer.join("usr/bin/tool")).expect("tool"),
        b"y"
    );
    assert!(!Path::new("/etc/evil").exists());
    assert_eq!(
        std::fs::read(s.outside.join("victim")).expect("victim"),
        b"original"
    );
}

#[test]
fn refuses_writing_through_a_symlink_that_leads_outside() {
    let s = scratch();
    let outside = s.outside.to_str().expect("utf-8").to_string();
    drop(s);
    let (msg, _) = refused(&[
        TarEntry::Symlink {
            path: "evil",
            target: &outside,
        },
        TarEntry::File {
            path: "evil/victim",
            data: b"pwned",
            mode: 0o644,
        },
    ]);
    assert!(
        msg.contains("evil/victim") && msg.contains("symlink"),
        "{msg}"
    );
    let (msg, _) = refused(&[
        TarEntry::Symlink {
            path: "rel",
            target: "../outside",
        },
        TarEntry::File {
            path: "rel/new",
            data: b"pwned",
            mode: 0o644,
        },
    ]);
    assert!(msg.contains("rel/new"), "{msg}");
}

#[test]
fn refuses_hardlinks_to_host_files() {
    let (msg, _) = refused(&[TarEntry::Raw {
        kind: EntryType::Link,
        name: "passwd",
        link: "/etc/passwd",
        data: b"",
    }]);
    assert!(msg.contains("passwd") && msg.contains("hard link"), "{msg}");
    let (msg, _) = refused(&[TarEntry::Raw {
        kind: EntryType::Link,
        name: "v",
        link: "../outside/victim",
        data: b"",
    }]);
    assert!(msg.contains("\"v\""), "{msg}");
    let (msg, _) = refused(&[TarEntry::Link {
        path: "v",
        target: "etc/shadow",
    }]);
    assert!(msg.contains("earlier in the same layer"), "{msg}");
}

fn image_store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(&dir.path().join("state.redb")).expect("store"));
    let images = ImageStore::open(dir.path(), store).expect("images");
    (dir, images)
}

fn hello_image() -> oci::Image {
    oci::Image {
        layers: vec![
            oci::tar(&[TarEntry::File {
                path: "bin/hello",
                data: b"v1",
                mode: 0o755,
            }]),
            oci::tar(&[TarEntry::File {
                path: "etc/motd",
                data: b"hi",
                mode: 0o644,
            }]),
        ],
        entrypoint: vec!["/bin/hello".into()],
        env: vec!["A=1".into()],
        ..Default::default()
    }
}

#[test]
fn imports_lists_and_removes_with_shared_layers() {
    let (_dir, images) = image_store();
    let a = images
        .import(
            &oci::archive(&hello_image(), Some("demo/hello:1"))[..],
            None,
        )
        .expect("import");
    assert_eq!(a[0].references, ["docker.io/demo/hello:1"]);
    assert_eq!(a[0].defaults.entrypoint, ["/bin/hello"]);
    assert_eq!(a[0].layers.len(), 2);
    let bottom = images.layer_dir(&a[0].layers[0].diff_id);
    assert_eq!(
        std::fs::read(bottom.join("bin/hello")).expect("file"),
        b"v1"
    );

    // A second image sharing the bottom layer, named by the caller.
    let mut other = hello_image();
    other.layers.truncate(1);
    other.cmd = vec!["x".into()];
    let b = images
        .import(
            &oci::archive(&other, None)[..],
            Some("127.0.0.1:5000/other:2"),
        )
        .expect("import b");
    assert_eq!(b[0].layers[0].diff_id, a[0].layers[0].diff_id);
    assert_eq!(images.list().expect("list").len(), 2);
    assert_eq!(
        images.get("127.0.0.1:5000/other:2").expect("get").digest,
        b[0].digest
    );
    assert_eq!(
        images.get(a[0].digest.as_str()).expect("by digest").digest,
        a[0].digest
    );

    let err = images
        .remove("demo/hello:1", |_, _| {
            Ok(Some("used by group \"web\"".into()))
        })
        .expect_err("in use");
    assert!(matches!(err, ImageError::InUse(..)), "{err}");
    assert!(err.to_string().contains("used by group \"web\""), "{err}");
    images
        .remove("demo/hello:1", |_, _| Ok(None))
        .expect("remove a");
    assert!(matches!(
        images.get("demo/hello:1"),
        Err(ImageError::NotFound(_))
    ));
    assert!(bottom.is_dir(), "shared layer kept for b");
    assert!(
        !images.layer_dir(&a[0].layers[1].diff_id).exists(),
        "a's own layer collected"
    );
    images
        .remove(b[0].digest.as_str(), |_, _| Ok(None))
        .expect("remove b");
    assert!(!bottom.exists());
}

#[test]
fn refuses_bad_archives() {
    let (_dir, images) = image_store();
    let err = images
        .import(&oci::archive(&hello_image(), None)[..], None)
        .expect_err("unnamed");
    assert!(err.to_string().contains("give a reference"), "{err}");

    let mut evil = hello_image();
    evil.layers.push(oci::tar(&[TarEntry::Raw {
        kind: EntryType::Regular,
        name: "../x",
        link: "",
        data: b"",
    }]));
    let err = images
        .import(&oci::archive(&evil, Some("evil:1"))[..], None)
        .expect_err("evil layer");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(chain.contains("../x"), "{chain}");
    assert!(images.list().expect("list").is_empty(), "nothing recorded");

    let mut big = hello_image();
    big.layers = (0..51)
        .map(|i| {
            oci::tar(&[TarEntry::File {
                path: &format!("f{i}"),
                data: b"",
                mode: 0o644,
            }])
        })
        .collect();
    let err = images
        .import(&oci::archive(&big, Some("big:1"))[..], None)
        .expect_err("too many layers");
    assert!(err.to_string().contains("over the limit of 50"), "{err}");

    // A blob whose content does not match its name (in a store that has not seen it).
    let (_dir, images) = image_store();
    let mut bytes = oci::archive(&hello_image(), Some("x:1"));
    let gz_magic = bytes
        .windows(2)
        .position(|w| w == [0x1f, 0x8b])
        .expect("gzip blob");
    bytes[gz_magic + 20] ^= 0xff;
    let err = images.import(&bytes[..], None).expect_err("corrupt blob");
    assert!(
        err.to_string().contains("does not match its content"),
        "{err}"
    );
}

#[test]
fn device_nodes_are_skipped_and_fifos_kept() {
    let s = scratch();
    let entries = [
        TarEntry::Dir { path: "dev" },
        TarEntry::Device {
            path: "dev/null",
            kind: EntryType::Char,
            major: 1,
            minor: 3,
        },
        TarEntry::Device {
            path: "dev/sda",
            kind: EntryType::Block,
            major: 8,
            minor: 0,
        },
        TarEntry::Device {
            path: "dev/mem",
            kind: EntryType::Char,
            major: 1,
            minor: 1,
        },
        TarEntry::Device {
            path: "run/initctl",
            kind: EntryType::Fifo,
            major: 0,
            minor: 0,
        },
        TarEntry::File {
            path: "etc/.wh.gone",
            data: b"",
            mode: 0o644,
        },
    ];
    unpack(&oci::tar(&entries)[..], &s.layer).expect("an image with /dev nodes unpacks");
    for dev in ["dev/null", "dev/sda", "dev/mem"] {
        assert!(
            std::fs::symlink_metadata(s.layer.join(dev)).is_err(),
            "{dev} must not be created"
        );
    }
    assert!(s.layer.join("dev").is_dir());
    let fifo = std::fs::symlink_metadata(s.layer.join("run/initctl")).expect("fifo");
    assert!(fifo.file_type().is_fifo());
    // The whiteout conversion still makes its 0/0 device.
    let wh = std::fs::symlink_metadata(s.layer.join("etc/gone")).expect("whiteout");
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);

    // And such an image imports.
    let (_dir, images) = image_store();
    let image = oci::Image {
        layers: vec![oci::tar(&entries[..2])],
        cmd: vec!["x".into()],
        ..Default::default()
    };
    let r = images
        .import(&oci::archive(&image, Some("devs:1"))[..], None)
        .expect("import");
    let dir = images.layer_dir(&r[0].layers[0].diff_id);
    assert!(dir.join("dev").is_dir() && !dir.join("dev/null").exists());
}

/// `security.capability` as the kernel stores it: magic, permitted/inheritable pairs and,
/// for revision 3, the root uid.
fn caps_xattr(magic: u32, words: &[u32]) -> Vec<u8> {
    std::iter::once(magic)
        .chain(words.iter().copied())
        .flat_map(u32::to_le_bytes)
        .collect()
}

/// A layer whose file carries a revision-3 capability with a host root uid (as a tool that
/// kept namespaced capabilities would write it) lands with revision 2 on disk, read back
/// with getxattr(2) as host root: the kernel would hand back the 24-byte revision 3 had it
/// been stored (its root uid is not ours), so the size proves the conversion.
#[test]
fn file_capabilities_are_stored_as_revision_2() {
    const NET_RAW: u32 = 1 << 13;
    let v3 = caps_xattr(0x0300_0001, &[NET_RAW, 0, 0, 0, 1_048_576]);
    let v2 = caps_xattr(0x0200_0001, &[NET_RAW, 0, 0, 0]);
    let entries = [
        TarEntry::Pax {
            records: &[("SCHILY.xattr.security.capability", &v3)],
        },
        TarEntry::File {
            path: "usr/bin/ping",
            data: b"\x7fELF",
            mode: 0o755,
        },
        TarEntry::Pax {
            records: &[("SCHILY.xattr.security.capability", &v2)],
        },
        TarEntry::File {
            path: "usr/bin/arping",
            data: b"\x7fELF",
            mode: 0o755,
        },
    ];
    let (_dir, images) = image_store();
    let image = oci::Image {
        layers: vec![oci::tar(&entries)],
        cmd: vec!["ping".into()],
        ..Default::default()
    };
    let r = images
        .import(&oci::archive(&image, Some("caps:1"))[..], None)
        .expect("import");
    let dir = images.layer_dir(&r[0].layers[0].diff_id);
    for file in ["usr/bin/ping", "usr/bin/arping"] {
        let got = xattr::get(dir.join(file), "security.capability").expect("getxattr");
        assert_eq!(got.as_deref(), Some(&v2[..]), "{file}");
    }
}

#[test]
fn malformed_file_capabilities_are_refused_naming_the_entry() {
    let bad = caps_xattr(0x0300_0001, &[1 << 13, 0, 0, 0]);
    let (msg, _scratch) = refused(&[
        TarEntry::Pax {
            records: &[("SCHILY.xattr.security.capability", &bad)],
        },
        TarEntry::File {
            path: "bin/ping",
            data: b"x",
            mode: 0o755,
        },
    ]);
    assert!(
        msg.contains("bin/ping") && msg.contains("security.capability has the wrong size"),
        "{msg}"
    );
}

/// A state directory with a sibling that hostile imports must not touch.
struct Node {
    dir: tempfile::TempDir,
    state: PathBuf,
    images: ImageStore,
}

fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&state).expect("state");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("victim"), b"original").expect("victim");
    let store = Arc::new(Store::open(&state.join("state.redb")).expect("store"));
    let images = ImageStore::open(&state, store).expect("images");
    Node { dir, state, images }
}

impl Node {
    /// Nothing was written next to the state directory, and no layer was unpacked.
    fn untouched(&self) {
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["outside", "state"], "written outside the state dir");
        let outside: Vec<_> = std::fs::read_dir(self.dir.path().join("outside"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(outside.len(), 1, "{outside:?}");
        assert_eq!(
            std::fs::read(self.dir.path().join("outside/victim")).expect("victim"),
            b"original"
        );
        let layers: Vec<_> = std::fs::read_dir(self.state.join("layers"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(layers.is_empty(), "nothing unpacked: {layers:?}");
        assert!(self.images.list().expect("list").is_empty());
    }
}

pub(crate) use crate::error::chain;

/// Imports `hello_image()` as `evil:1` after `edit`, expecting a refusal.
fn import_edited(n: &Node, edit: impl FnMut(oci::Doc, &mut serde_json::Value)) -> String {
    let bytes = oci::archive_edited(&hello_image(), Some("evil:1"), edit);
    let err = n.images.import(&bytes[..], None).expect_err("refused");
    chain(&err)
}

#[test]
fn hostile_diff_ids_are_refused_naming_the_field() {
    for bad in ["sha256:/", "sha256:/etc", "sha256:../../x", "sha256:..", ""] {
        let n = node();
        let msg = import_edited(&n, |doc, v| {
            if doc == oci::Doc::Config {
                v["rootfs"]["diff_ids"][1] = bad.into();
            }
        });
        assert_eq!(
            msg,
            format!(
                "image docker.io/library/evil:1: config rootfs.diff_ids[1]: {bad:?} is not a valid digest"
            )
        );
        n.untouched();
    }
    // The whole host root as the only layer.
    let n = node();
    let msg = import_edited(&n, |doc, v| match doc {
        oci::Doc::Config => v["rootfs"]["diff_ids"] = serde_json::json!(["sha256:/"]),
        oci::Doc::Manifest => {
            let first = v["layers"][0].clone();
            v["layers"] = serde_json::json!([first]);
        }
        oci::Doc::Index => {}
    });
    assert!(
        msg.contains(r#"config rootfs.diff_ids[0]: "sha256:/" is not a valid digest"#),
        "{msg}"
    );
    n.untouched();
}

#[test]
fn hostile_manifest_and_index_digests_are_refused_naming_the_field() {
    let n = node();
    let msg = import_edited(&n, |doc, v| {
        if doc == oci::Doc::Manifest {
            v["layers"][0]["digest"] = "sha256:../x".into();
        }
    });
    assert_eq!(
        msg,
        r#"image docker.io/library/evil:1: manifest layers[0].digest: "sha256:../x" is not a valid digest"#
    );
    n.untouched();

    let msg = import_edited(&n, |doc, v| {
        if doc == oci::Doc::Manifest {
            v["config"]["digest"] = "sha256:/etc/passwd".into();
        }
    });
    assert!(
        msg.ends_with(r#"manifest config.digest: "sha256:/etc/passwd" is not a valid digest"#),
        "{msg}"
    );
    n.untouched();

    let msg = import_edited(&n, |doc, v| {
        if doc == oci::Doc::Index {
            v["manifests"][0]["digest"] = "sha256:../../etc".into();
        }
    });
    assert_eq!(
        msg,
        r#"image archive: index.json manifests[0].digest: "sha256:../../etc" is not a valid digest"#
    );
    n.untouched();

    // A sha256-looking digest of the wrong algorithm length, and an unknown algorithm.
    let msg = import_edited(&n, |doc, v| {
        if doc == oci::Doc::Index {
            v["manifests"][0]["digest"] = format!("md5:{}", "0".repeat(32)).into();
        }
    });
    assert!(msg.contains("manifests[0].digest: \"md5:"), "{msg}");
    n.untouched();

    // A size that lies is refused too.
    let msg = import_edited(&n, |doc, v| {
        if doc == oci::Doc::Manifest {
            v["layers"][1]["size"] = 1.into();
        }
    });
    assert!(msg.contains("manifest layers[1].size is 1"), "{msg}");
    n.untouched();

    // Names given to the API are parsed the same way.
    let err = n.images.get("sha256:../../etc").expect_err("bad name");
    assert!(matches!(err, ImageError::Reference(_)), "{err:?}");
}

#[test]
fn a_planted_layer_directory_is_not_used() {
    let n = node();
    let image = hello_image();
    let diff_id = Digest::of(&image.layers[0]);
    let planted = n.images.layer_dir(&diff_id);
    std::fs::create_dir_all(planted.join("bin")).expect("plant");
    std::fs::write(planted.join("sentinel"), b"planted").expect("sentinel");
    std::fs::write(planted.join("bin/hello"), b"planted").expect("hello");
    assert!(n.images.store.get_layer(&diff_id).expect("get").is_none());

    let r = n
        .images
        .import(&oci::archive(&image, Some("hello:1"))[..], None)
        .expect("import");
    assert_eq!(r[0].layers[0].diff_id, diff_id);
    assert!(
        !planted.join("sentinel").exists(),
        "the planted dir was used"
    );
    assert_eq!(
        std::fs::read(planted.join("bin/hello")).expect("hello"),
        b"v1"
    );
    let rec = n
        .images
        .store
        .get_layer(&diff_id)
        .expect("get")
        .expect("recorded");
    assert_eq!(rec.blob, r[0].layers[0].digest);

    // Recorded and present: used as is (a file added now stays).
    std::fs::write(planted.join("marker"), b"").expect("marker");
    let lower = n.images.lower_dirs(&r[0]).expect("lower");
    assert_eq!(lower[0], planted);
    assert!(planted.join("marker").exists());

    // Recorded but gone: unpacked again from the blob when a container needs it.
    std::fs::remove_dir_all(&planted).expect("rm");
    let lower = n.images.lower_dirs(&r[0]).expect("lower");
    assert_eq!(
        std::fs::read(lower[0].join("bin/hello")).expect("hello"),
        b"v1"
    );

    // A symlink planted in place of a recorded directory is not followed.
    std::fs::remove_dir_all(&planted).expect("rm");
    std::os::unix::fs::symlink(n.dir.path().join("outside"), &planted).expect("symlink");
    let lower = n.images.lower_dirs(&r[0]).expect("lower");
    assert!(std::fs::symlink_metadata(&lower[0]).expect("meta").is_dir());
    assert_eq!(
        std::fs::read(n.dir.path().join("outside/victim")).expect("victim"),
        b"original"
    );

    // Garbage collection drops the records with the directories.
    n.images.remove("hello:1", |_, _| Ok(None)).expect("remove");
    assert!(!planted.exists());
    for l in &r[0].layers {
        assert!(n.images.store.get_layer(&l.diff_id).expect("get").is_none());
    }
}

#[test]
fn crash_leftovers_are_cleaned_on_open() {
    let n = node();
    let left = n.state.join("layers/.unpack-crashed");
    std::fs::create_dir_all(left.join("etc")).expect("leftover");
    let store = n.images.store.clone();
    let _again = ImageStore::open(&n.state, store).expect("reopen");
    assert!(!left.exists());
}

/// An archive that names a blob it does not hold, holds one cut short, or holds a layer
/// that does not decode is bad input: refused as the API's INVALID_ARGUMENT kinds, naming
/// the digest and the archive entry, never a host path; nothing is recorded.
#[test]
fn missing_truncated_or_undecodable_blobs_are_refused_naming_the_entry() {
    let missing = format!("sha256:{}", "ab".repeat(32));
    let entry = format!("blobs/sha256/{}", "ab".repeat(32));
    type Edit = fn(oci::Doc, &mut serde_json::Value, &str);
    let cases: [(&str, Edit); 3] = [
        ("manifest", |d, v, m| {
            if d == oci::Doc::Index {
                v["manifests"][0]["digest"] = m.into();
            }
        }),
        ("config", |d, v, m| {
            if d == oci::Doc::Manifest {
                v["config"]["digest"] = m.into();
            }
        }),
        ("layers[1]", |d, v, m| {
            if d == oci::Doc::Manifest {
                v["layers"][1]["digest"] = m.into();
            }
        }),
    ];
    for (what, edit) in cases {
        let n = node();
        let bytes =
            oci::archive_edited(&hello_image(), Some("evil:1"), |d, v| edit(d, v, &missing));
        let err = n.images.import(&bytes[..], None).expect_err("refused");
        assert!(
            matches!(
                err,
                ImageError::Document { .. } | ImageError::Invalid { .. }
            ),
            "{what}: {err:?}"
        );
        let msg = chain(&err);
        assert!(
            msg.contains(what) && msg.contains(&missing) && msg.contains(&entry),
            "{what}: {msg}"
        );
        let root = n.dir.path().display().to_string();
        assert!(!msg.contains(&root), "{what}: a host path in {msg}");
        n.untouched();
    }

    // A blob entry the archive ends inside.
    let n = node();
    let bytes = oci::archive(&hello_image(), Some("evil:1"));
    let config_at = bytes
        .windows(13)
        .position(|w| w == b"\"architecture")
        .expect("config blob");
    let err = n
        .images
        .import(&bytes[..config_at + 10], None)
        .expect_err("cut short");
    assert!(
        matches!(
            err,
            ImageError::Archive(_)
                | ImageError::Content(
                    content::ContentError::Mismatch { .. } | content::ContentError::Size { .. }
                )
        ),
        "{err:?}"
    );
    let msg = chain(&err);
    assert!(!msg.contains(&n.dir.path().display().to_string()), "{msg}");
    n.untouched();

    // A layer labelled gzip that is a plain tar.
    let n = node();
    let bytes = oci::archive_edited(&hello_image(), Some("evil:1"), |d, v| {
        if d == oci::Doc::Manifest {
            v["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd".into();
        }
    });
    let err = n.images.import(&bytes[..], None).expect_err("undecodable");
    assert!(matches!(err, ImageError::Invalid { .. }), "{err:?}");
    let msg = chain(&err);
    assert!(
        msg.contains("manifest layers[0]") && msg.contains("does not decode as"),
        "{msg}"
    );
    n.untouched();
}

/// A layer record for `tar` stored as `compressed` under `media_type`.
fn streamed_layer(tar: &[u8], compressed: &[u8], media_type: &str) -> LayerRecord {
    LayerRecord {
        digest: Digest::of(compressed),
        diff_id: Digest::of(tar),
        media_type: media_type.into(),
        size: compressed.len() as u64,
    }
}

/// Neither the blob nor the layer of `l` is present or recorded, and no temp is left.
fn nothing_of(images: &ImageStore, dir: &std::path::Path, l: &LayerRecord) {
    assert!(!images.layer_present(l));
    assert!(!images.has_blob(&l.digest));
    assert!(!images.layer_dir(&l.diff_id).exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("layers"))
        .expect("layers")
        .chain(std::fs::read_dir(dir.join("content/ingest")).expect("ingest"))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_streamed_layer_is_verified_and_unpacked_in_one_pass() {
    let (dir, images) = image_store();
    let tar = oci::tar(&[TarEntry::File {
        path: "etc/motd",
        data: b"streamed",
        mode: 0o644,
    }]);
    for (compressed, mt) in [
        (
            zstd::encode_all(&tar[..], 3).expect("zstd"),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        (
            oci::gzip(&tar),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
    ] {
        let l = streamed_layer(&tar, &compressed, mt);
        // Chunked reads, as a download arrives.
        let chunks = std::io::Read::chain(&compressed[..7], &compressed[7..]);
        let got = images.ingest_layer(&l, chunks).expect("ingest");
        assert!(
            got == Ingested::Stored || got == Ingested::AlreadyPresent,
            "{got:?}"
        );
        assert!(images.layer_present(&l));
        assert_eq!(
            std::fs::read(images.layer_dir(&l.diff_id).join("etc/motd")).expect("motd"),
            b"streamed"
        );
        assert_eq!(images.read_blob(&l.digest).expect("blob"), compressed);
        // A second ingest does not read its input.
        assert_eq!(
            images.ingest_layer(&l, std::io::empty()).expect("again"),
            Ingested::AlreadyPresent
        );
    }
    drop(dir);
}

#[test]
fn a_wrong_or_truncated_streamed_layer_leaves_nothing() {
    let (dir, images) = image_store();
    let tar = oci::tar(&[TarEntry::File {
        path: "x",
        data: &[7u8; 5000],
        mode: 0o644,
    }]);
    let gz = oci::gzip(&tar);
    let mt = "application/vnd.oci.image.layer.v1.tar+gzip";
    let l = streamed_layer(&tar, &gz, mt);
    // Altered bytes: the digest catches them (or gzip does first).
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 5] ^= 0xff;
    assert!(images.ingest_layer(&l, &bad[..]).is_err());
    nothing_of(&images, dir.path(), &l);
    // Truncated.
    let err = images
        .ingest_layer(&l, &gz[..n / 2])
        .expect_err("truncated");
    assert!(!format!("{err}").is_empty());
    nothing_of(&images, dir.path(), &l);
    // Longer than the descriptor says.
    let mut long = gz.clone();
    long.extend_from_slice(&[0u8; 64]);
    assert!(images.ingest_layer(&l, &long[..]).is_err());
    nothing_of(&images, dir.path(), &l);
    // A config that lies about the diff id.
    let mut lying = l.clone();
    lying.diff_id = Digest::of(b"other");
    let err = images.ingest_layer(&lying, &gz[..]).expect_err("diff id");
    assert!(matches!(err, ImageError::DiffId { .. }), "{err:?}");
    nothing_of(&images, dir.path(), &lying);
}

#[test]
fn held_layers_and_blobs_survive_garbage_collection_until_released() {
    // A pull stores its layers before it records its image: what it holds stays.
    let (_dir, images) = image_store();
    let rec = images
        .import(
            &oci::archive(&hello_image(), Some("demo/hello:1"))[..],
            None,
        )
        .expect("import")
        .remove(0);
    let digests: Vec<Digest> = rec
        .layers
        .iter()
        .flat_map(|l| [l.digest.clone(), l.diff_id.clone()])
        .collect();
    let hold = images.hold(digests.clone());
    let second = images.hold(digests);
    images
        .store
        .write(|tx| tx.delete_image(&rec.digest))
        .expect("forget the image");
    images.collect_garbage().expect("gc");
    for l in &rec.layers {
        assert!(images.layer_dir(&l.diff_id).is_dir(), "held layer removed");
        assert!(images.has_blob(&l.digest), "held blob removed");
    }
    drop(hold);
    images.collect_garbage().expect("gc");
    assert!(
        images.layer_dir(&rec.layers[0].diff_id).is_dir(),
        "still held once"
    );
    drop(second);
    images.collect_garbage().expect("gc");
    for l in &rec.layers {
        assert!(
            !images.layer_dir(&l.diff_id).exists(),
            "released layer kept"
        );
        assert!(!images.has_blob(&l.digest), "released blob kept");
    }
}

#[test]
fn erofs_images_are_built_once_shared_and_collected_with_their_layer() {
    let (dir, images) = image_store();
    let a = images
        .import(
            &oci::archive(&hello_image(), Some("demo/hello:1"))[..],
            None,
        )
        .expect("import");
    let mut other = hello_image();
    other.layers.truncate(1);
    other.cmd = vec!["x".into()];
    let b = images
        .import(&oci::archive(&other, Some("demo/other:1"))[..], None)
        .expect("import b");
    let layers = images.erofs_layers(&a[0]).expect("erofs");
    assert_eq!(layers.len(), 2);
    for (l, rec) in layers.iter().zip(&a[0].layers) {
        assert_eq!(l.dir, images.layer_dir(&rec.diff_id));
        assert_eq!(l.image, images.erofs_path(&rec.diff_id));
        assert!(l.image.is_file(), "{}", l.image.display());
    }
    // Built once: the shared bottom image is the same file for b.
    let ino = |p: &std::path::Path| {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("stat"))
    };
    let bottom = layers[0].image.clone();
    let before = ino(&bottom);
    let again = images.erofs_layers(&b[0]).expect("erofs b");
    assert_eq!(again[0].image, bottom);
    assert_eq!(ino(&bottom), before, "not rebuilt");
    // No temp files are left beside them.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("layers"))
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Removing a keeps the shared image, drops a's own.
    images
        .remove("demo/hello:1", |_, _| Ok(None))
        .expect("remove a");
    assert!(bottom.is_file(), "shared layer image kept for b");
    assert!(!layers[1].image.exists(), "a's own layer image collected");
    images
        .remove("demo/other:1", |_, _| Ok(None))
        .expect("remove b");
    assert!(!bottom.exists());
}
