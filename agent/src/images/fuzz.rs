//! Property tests with hostile input: random layer tars fed to the unpacker, and random
//! changes to an image's index, manifest and config fed to the import. Whatever the
//! input, nothing panics and nothing is written outside the directory it was meant for.
//!
//! The case count is bounded so the whole module runs in seconds; a failure is shrunk
//! by proptest to a minimal input and printed.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use eci_tests::oci::{self, Doc};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use tar::EntryType;

use super::unpack::unpack;
use super::{ImageStore, Store};

/// A file name no legitimate entry uses; it must never appear outside a layer.
const ESCAPE: &str = "eci-fuzz-escape";

/// Path components an attacker would try, and enough ordinary ones that many layers get
/// past the first refusal and exercise links, whiteouts and replacements.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(vec!["..", ".wh.", ".wh..", "/"]).prop_map(str::to_string),
        16 => select(vec![
            ".",
            "",
            "a",
            "b",
            "outside",
            "victim",
            ESCAPE,
            ".wh.a",
            ".wh.b",
            ".wh..wh..opq",
            "dev",
        ])
        .prop_map(str::to_string),
        // Long enough to need a GNU long-name entry, and too long for the kernel.
        1 => Just("l".repeat(120)),
        1 => Just("n".repeat(300)),
        2 => "[a-z.]{1,8}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (proptest::bool::weighted(0.05), vec(component(), 1..4)).prop_map(|(absolute, parts)| {
        format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"))
    })
}

fn link_target() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "/",
            "..",
            "../..",
            "../outside",
            "../outside/victim",
            "/etc",
            "/tmp",
            "a",
            "a/b"
        ])
        .prop_map(str::to_string),
        path(),
    ]
}

/// One entry of a random layer.
#[derive(Debug, Clone)]
enum Entry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    HardLink {
        path: String,
        target: String,
    },
    Device {
        path: String,
        block: bool,
        major: u32,
        minor: u32,
    },
    Fifo {
        path: String,
    },
    /// A PAX header whose records apply to the next entry.
    Pax {
        records: Vec<(String, Vec<u8>)>,
    },
}

fn entry() -> impl Strategy<Value = Entry> {
    let mode = prop_oneof![
        Just(0o644u32),
        Just(0o755),
        Just(0o4755),
        Just(0),
        0u32..0o10000
    ];
    prop_oneof![
        3 => (path(), vec(any::<u8>(), 0..64), mode.clone())
            .prop_map(|(path, data, mode)| Entry::File { path, data, mode }),
        2 => (path(), mode).prop_map(|(path, mode)| Entry::Dir { path, mode }),
        3 => (path(), link_target()).prop_map(|(path, target)| Entry::Symlink { path, target }),
        2 => (path(), link_target()).prop_map(|(path, target)| Entry::HardLink { path, target }),
        1 => (path(), any::<bool>(), 0u32..300, 0u32..300)
            .prop_map(|(path, block, major, minor)| Entry::Device { path, block, major, minor }),
        1 => path().prop_map(|path| Entry::Fifo { path }),
        1 => vec(
            (
                select(vec![
                    "path",
                    "linkpath",
                    "SCHILY.xattr.user.fuzz",
                    "SCHILY.xattr.trusted.overlay.opaque",
                    "size",
                ])
                .prop_map(str::to_string),
                prop_oneof![
                    path().prop_map(String::into_bytes),
                    vec(any::<u8>(), 0..8),
                ],
            ),
            1..3,
        )
        .prop_map(|records| Entry::Pax { records }),
    ]
}

/// One PAX record: `<len> <key>=<value>\n`, where the length counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len += 1;
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let none = (0, 0);
    for e in entries {
        match e {
            Entry::File { path, data, mode } => {
                oci::append_raw(&mut b, EntryType::Regular, path, "", data, *mode, none)
            }
            Entry::Dir { path, mode } => {
                oci::append_raw(&mut b, EntryType::Directory, path, "", &[], *mode, none)
            }
            Entry::Symlink { path, target } => {
                oci::append_raw(&mut b, EntryType::Symlink, path, target, &[], 0o777, none)
            }
            Entry::HardLink { path, target } => {
                oci::append_raw(&mut b, EntryType::Link, path, target, &[], 0o644, none)
            }
            Entry::Fifo { path } => {
                oci::append_raw(&mut b, EntryType::Fifo, path, "", &[], 0o600, none)
            }
            Entry::Pax { records } => {
                let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
                oci::append_raw(
                    &mut b,
                    EntryType::XHeader,
                    "PaxHeaders/x",
                    "",
                    &data,
                    0o644,
                    none,
                )
            }
            Entry::Device {
                path,
                block,
                major,
                minor,
            } => {
                let kind = if *block {
                    EntryType::Block
                } else {
                    EntryType::Char
                };
                oci::append_raw(&mut b, kind, path, "", &[], 0o666, (*major, *minor))
            }
        }
    }
    b.into_inner().expect("tar")
}

/// A scratch directory with `layer/` (or `state/`) next to `outside/victim`.
struct Scratch {
    dir: tempfile::TempDir,
    inner: PathBuf,
}

fn scratch(inner: &str) -> Scratch {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = dir.path().join(inner);
    std::fs::create_dir(&inner).expect("inner");
    std::fs::create_dir(dir.path().join("outside")).expect("outside");
    std::fs::write(dir.path().join("outside/victim"), b"original").expect("victim");
    Scratch { dir, inner }
}

impl Scratch {
    /// Nothing was created, removed or changed beside the inner directory, nor at the
    /// places an escape from it would reach.
    fn check_outside(&self) -> Result<(), TestCaseError> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let inner = self
            .inner
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let mut want = vec!["outside".to_string(), inner.unwrap_or_default()];
        want.sort();
        prop_assert_eq!(names, want, "written beside the directory");
        let outside: Vec<_> = std::fs::read_dir(self.dir.path().join("outside"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        prop_assert_eq!(outside.len(), 1, "{:?}", outside);
        let victim = self.dir.path().join("outside/victim");
        let meta = std::fs::symlink_metadata(&victim).expect("victim");
        prop_assert!(
            meta.is_file() && meta.nlink() == 1,
            "victim replaced or linked"
        );
        prop_assert_eq!(
            std::fs::read(&victim).expect("victim"),
            b"original".to_vec()
        );
        for escaped in [
            Path::new("/").join(ESCAPE),
            std::env::temp_dir().join(ESCAPE),
        ] {
            prop_assert!(!escaped.exists(), "{} exists", escaped.display());
        }
        Ok(())
    }
}

/// No device node in the tree but 0/0 overlay whiteouts.
fn check_no_devices(dir: &Path) -> Result<(), TestCaseError> {
    for e in std::fs::read_dir(dir).expect("ls").flatten() {
        let meta = std::fs::symlink_metadata(e.path()).expect("meta");
        let ft = meta.file_type();
        prop_assert!(!ft.is_block_device(), "block device {}", e.path().display());
        if ft.is_char_device() {
            prop_assert_eq!(meta.rdev(), 0, "device {}", e.path().display());
        }
        if ft.is_dir() {
            check_no_devices(&e.path())?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any layer tar: refused or unpacked, never a panic, never a write outside the
    /// layer, never a device node.
    #[test]
    fn hostile_layers_stay_inside(entries in vec(entry(), 1..12)) {
        let s = scratch("layer");
        let tar = layer_tar(&entries);
        // Refused or unpacked are both fine; what follows must hold either way.
        let _ = unpack(&tar[..], &s.inner);
        s.check_outside()?;
        check_no_devices(&s.inner)?;
    }
}

/// One change to one document of an otherwise valid image.
#[derive(Debug, Clone)]
enum Mutation {
    /// Sets the digest of the `slot`th descriptor of a manifest or index.
    Digest {
        doc: Doc,
        slot: usize,
        value: String,
    },
    /// Points one descriptor at the blob of another (a config as a layer, say).
    Swap {
        doc: Doc,
        slot: usize,
        with: usize,
    },
    MediaType {
        doc: Doc,
        slot: usize,
        value: String,
    },
    Size {
        doc: Doc,
        slot: usize,
        value: Value,
    },
    DiffId {
        slot: usize,
        value: String,
    },
    DropDiffId,
    /// Replaces or removes a top-level field.
    Field {
        doc: Doc,
        key: String,
        value: Option<Value>,
    },
    ImageName {
        value: String,
    },
}

fn doc() -> impl Strategy<Value = Doc> {
    select(vec![Doc::Config, Doc::Manifest, Doc::Index])
}

fn digest_value() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "sha256:/",
            "sha256:/etc",
            "sha256:../../x",
            "sha256:..",
            "",
            "sha256:"
        ])
        .prop_map(str::to_string),
        "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
        "[0-9a-f]{128}".prop_map(|h| format!("sha512:{h}")),
        "[0-9a-fA-F./]{60,68}".prop_map(|h| format!("sha256:{h}")),
        "[a-z0-9]{1,8}:[0-9a-f./]{0,70}",
        ".{0,40}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        ".{0,20}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        vec(".{0,8}", 0..3).prop_map(|v| json!(v)),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let key = select(vec![
        "schemaVersion",
        "mediaType",
        "config",
        "layers",
        "manifests",
        "rootfs",
        "os",
        "architecture",
        "created",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        3 => (doc(), 0usize..3, digest_value())
            .prop_map(|(doc, slot, value)| Mutation::Digest { doc, slot, value }),
        1 => (doc(), 0usize..3, 0usize..3)
            .prop_map(|(doc, slot, with)| Mutation::Swap { doc, slot, with }),
        2 => (doc(), 0usize..3, prop_oneof![
                select(vec![
                    "application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.oci.image.layer.v1.tar",
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                ]).prop_map(str::to_string),
                ".{0,30}",
            ])
            .prop_map(|(doc, slot, value)| Mutation::MediaType { doc, slot, value }),
        2 => (doc(), 0usize..3, json_value())
            .prop_map(|(doc, slot, value)| Mutation::Size { doc, slot, value }),
        3 => (0usize..3, digest_value()).prop_map(|(slot, value)| Mutation::DiffId { slot, value }),
        1 => Just(Mutation::DropDiffId),
        2 => (doc(), key, proptest::option::of(json_value()))
            .prop_map(|(doc, key, value)| Mutation::Field { doc, key, value }),
        1 => ".{0,40}".prop_map(|value| Mutation::ImageName { value }),
    ]
}

/// The descriptors of a document: config then layers of a manifest, the manifests of
/// an index.
fn descriptors(doc: Doc, v: &mut Value) -> Vec<&mut Value> {
    match doc {
        Doc::Manifest => {
            let Some(obj) = v.as_object_mut() else {
                return Vec::new();
            };
            let mut out = Vec::new();
            let mut layers = None;
            for (k, val) in obj.iter_mut() {
                match k.as_str() {
                    "config" => out.insert(0, val),
                    "layers" => layers = Some(val),
                    _ => {}
                }
            }
            if let Some(Value::Array(ls)) = layers {
                out.extend(ls.iter_mut());
            }
            out
        }
        Doc::Index => match v.get_mut("manifests") {
            Some(Value::Array(ms)) => ms.iter_mut().collect(),
            _ => Vec::new(),
        },
        Doc::Config => Vec::new(),
    }
}

/// Sets `key` of a descriptor, when an earlier mutation left it an object (a `Field`
/// mutation can make a descriptor list hold anything; indexing a non-object panics).
fn set(desc: &mut Value, key: &str, value: Value) {
    if let Some(obj) = desc.as_object_mut() {
        obj.insert(key.to_string(), value);
    }
}

fn apply(m: &Mutation, doc: Doc, v: &mut Value) {
    match m {
        Mutation::Digest {
            doc: d,
            slot,
            value,
        } if *d == doc => {
            if let Some(desc) = descriptors(doc, v).into_iter().nth(*slot) {
                set(desc, "digest", value.as_str().into());
            }
        }
        Mutation::Swap { doc: d, slot, with } if *d == doc => {
            let mut ds = descriptors(doc, v);
            let other = ds.get(*with).and_then(|d| d.get("digest")).cloned();
            if let (Some(other), Some(desc)) = (other, ds.get_mut(*slot)) {
                set(desc, "digest", other);
            }
        }
        Mutation::MediaType {
            doc: d,
            slot,
            value,
        } if *d == doc => {
            if let Some(desc) = descriptors(doc, v).into_iter().nth(*slot) {
                set(desc, "mediaType", value.as_str().into());
            }
        }
        Mutation::Size {
            doc: d,
            slot,
            value,
        } if *d == doc => {
            if let Some(desc) = descriptors(doc, v).into_iter().nth(*slot) {
                set(desc, "size", value.clone());
            }
        }
        Mutation::DiffId { slot, value } if doc == Doc::Config => {
            if let Some(Value::Array(ids)) = v.pointer_mut("/rootfs/diff_ids")
                && let Some(id) = ids.get_mut(*slot)
            {
                *id = value.as_str().into();
            }
        }
        Mutation::DropDiffId if doc == Doc::Config => {
            if let Some(Value::Array(ids)) = v.pointer_mut("/rootfs/diff_ids") {
                ids.pop();
            }
        }
        Mutation::Field { doc: d, key, value } if *d == doc => {
            if let Some(obj) = v.as_object_mut() {
                match value {
                    Some(value) => obj.insert(key.clone(), value.clone()),
                    None => obj.remove(key),
                };
            }
        }
        Mutation::ImageName { value } if doc == Doc::Index => {
            if let Some(desc) = descriptors(doc, v).into_iter().next() {
                set(
                    desc,
                    "annotations",
                    json!({ "io.containerd.image.name": value }),
                );
            }
        }
        _ => {}
    }
}

/// Any changes to the documents of an image: imported or refused, never a panic,
/// never a write outside the state directory; what is imported is recorded and
/// unpacked below the layers directory. One node serves every case (opening a store
/// per case would dominate the run time), so cases also meet each other's records.
#[test]
fn hostile_documents_stay_inside() {
    let s = scratch("state");
    let store = Arc::new(Store::open(&s.inner.join("state.redb")).expect("store"));
    let images = ImageStore::open(&s.inner, store.clone()).expect("images");
    let layers = s.inner.join("layers");
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&vec(mutation(), 1..4), |mutations| {
        let archive = oci::archive_edited(&oci::two_layer_image(), Some("fuzz/app:1"), |doc, v| {
            for m in &mutations {
                apply(m, doc, v);
            }
        });
        if let Ok(imported) = images.import(&archive[..], None) {
            for image in &imported {
                for l in &image.layers {
                    let dir = images.layer_dir(&l.diff_id);
                    prop_assert_eq!(dir.parent(), Some(layers.as_path()));
                    prop_assert!(store.get_layer(&l.diff_id).expect("get").is_some());
                }
            }
        }
        s.check_outside()?;
        check_no_devices(&layers)?;
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
