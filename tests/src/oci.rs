//! Builds OCI image layout archives in memory, for tests that import images without a
//! registry: tar layers (including deliberately malicious entries), image config,
//! manifest, index.

use std::io::Write;

use serde_json::json;
use sha2::{Digest, Sha256};

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One entry of a layer tar.
pub enum TarEntry<'a> {
    File {
        path: &'a str,
        data: &'a [u8],
        mode: u32,
    },
    Dir {
        path: &'a str,
    },
    Symlink {
        path: &'a str,
        target: &'a str,
    },
    Link {
        path: &'a str,
        target: &'a str,
    },
    /// A character or block device (or FIFO) with its numbers.
    Device {
        path: &'a str,
        kind: tar::EntryType,
        major: u32,
        minor: u32,
    },
    /// A PAX extended header (`key`, raw value) for the entry that follows, as GNU tar
    /// writes `--xattrs` (`SCHILY.xattr.<name>`).
    Pax {
        records: &'a [(&'a str, &'a [u8])],
    },
    /// Written byte for byte, bypassing the tar crate's own path checks.
    Raw {
        kind: tar::EntryType,
        name: &'a str,
        link: &'a str,
        data: &'a [u8],
    },
}

/// Appends one entry with its name and link byte for byte (the tar crate's builder
/// would refuse the hostile ones); names over 100 bytes go into a GNU long-name (or
/// long-link) entry first, as GNU tar writes them. `device` is (major, minor).
pub fn append_raw(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &str,
    link: &str,
    data: &[u8],
    mode: u32,
    device: (u32, u32),
) {
    for (long, kind) in [
        (link, tar::EntryType::GNULongLink),
        (name, tar::EntryType::GNULongName),
    ] {
        if long.len() > 100 {
            let mut bytes = long.as_bytes().to_vec();
            bytes.push(0);
            append_raw(b, kind, "././@LongLink", "", &bytes, 0o644, (0, 0));
        }
    }
    let mut h = tar::Header::new_gnu();
    h.set_device_major(device.0).expect("gnu header");
    h.set_device_minor(device.1).expect("gnu header");
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    let old = h.as_old_mut();
    let (name, link) = (truncate(name), truncate(link));
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname = [0; 100];
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    b.append(&h, data).expect("append");
}

/// The first 100 bytes of `s` (a tar header's name field), at a char boundary.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(100);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The body of a PAX extended header: `<len> <key>=<value>\n` records, where `<len>`
/// counts the whole record including its own digits.
pub fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// A tar stream of `entries`.
pub fn tar(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let pax;
        let (kind, name, link, data, mode) = match e {
            TarEntry::Pax { records } => {
                pax = pax_records(records);
                (
                    tar::EntryType::XHeader,
                    "PaxHeaders/entry",
                    "",
                    &pax[..],
                    0o644,
                )
            }
            TarEntry::File { path, data, mode } => {
                (tar::EntryType::Regular, *path, "", *data, *mode)
            }
            TarEntry::Dir { path } => (tar::EntryType::Directory, *path, "", &[][..], 0o755),
            TarEntry::Symlink { path, target } => {
                (tar::EntryType::Symlink, *path, *target, &[][..], 0o777)
            }
            TarEntry::Link { path, target } => {
                (tar::EntryType::Link, *path, *target, &[][..], 0o644)
            }
            TarEntry::Device { path, kind, .. } => (*kind, *path, "", &[][..], 0o666),
            TarEntry::Raw {
                kind,
                name,
                link,
                data,
            } => (*kind, *name, *link, *data, 0o644),
        };
        let device = match e {
            TarEntry::Device { major, minor, .. } => (*major, *minor),
            _ => (0, 0),
        };
        append_raw(&mut b, kind, name, link, data, mode, device);
    }
    b.into_inner().expect("tar")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// What goes into an image.
#[derive(Default)]
pub struct Image {
    /// Uncompressed layer tars, bottom first; stored gzip-compressed.
    pub layers: Vec<Vec<u8>>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// The JSON document an [`archive_edited`] callback is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doc {
    Config,
    Manifest,
    Index,
}

/// An OCI image layout archive holding `image`, named `reference` when given.
pub fn archive(image: &Image, reference: Option<&str>) -> Vec<u8> {
    archive_edited(image, reference, |_, _| {})
}

/// As [`archive`], but `edit` may change each document after the digests of what it
/// points at are filled in and before its own digest is taken: a config that lies about
/// its diff ids, a manifest about its layers, an index about its manifest. Blobs are
/// still stored under their true digests, so the archive itself is well formed.
pub fn archive_edited(
    image: &Image,
    reference: Option<&str>,
    mut edit: impl FnMut(Doc, &mut serde_json::Value),
) -> Vec<u8> {
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in &image.layers {
        let gz = gzip(l);
        diff_ids.push(sha(l));
        layer_descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha(&gz), "size": gz.len()
        }));
        blobs.push(gz);
    }
    let mut config = json!({
        "architecture": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {
            "Entrypoint": image.entrypoint, "Cmd": image.cmd, "Env": image.env,
            "WorkingDir": image.working_dir, "User": image.user
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids }
    });
    edit(Doc::Config, &mut config);
    let config = serde_json::to_vec(&config).expect("config");
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len() },
        "layers": layer_descs
    });
    edit(Doc::Manifest, &mut manifest);
    let manifest = serde_json::to_vec(&manifest).expect("manifest");
    let mut desc = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha(&manifest), "size": manifest.len()
    });
    if let Some(r) = reference {
        desc["annotations"] =
            json!({ "io.containerd.image.name": r, "org.opencontainers.image.ref.name": r });
    }
    let mut index = json!({ "schemaVersion": 2, "manifests": [desc] });
    edit(Doc::Index, &mut index);
    let index = serde_json::to_vec(&index).expect("index");
    blobs.push(config);
    blobs.push(manifest);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).expect("append");
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for blob in &blobs {
        add(
            &format!("blobs/sha256/{}", &sha(blob)["sha256:".len()..]),
            blob,
        );
    }
    b.into_inner().expect("archive")
}

/// Applets linked to busybox in test images.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "nc", "ls", "ps", "mount", "hostname", "id", "dd", "head",
    "true", "false", "wget", "grep", "env", "kill", "pwd", "touch", "rm", "mkdir", "test", "[",
    "wc", "tr", "seq", "date", "expr", "tty", "stty",
];

/// A layer with the host's static busybox as /bin/busybox plus applet links.
pub fn busybox_layer() -> std::io::Result<Vec<u8>> {
    let bin = std::fs::read("/bin/busybox")?;
    let mut entries = vec![
        TarEntry::Dir { path: "bin" },
        TarEntry::Dir { path: "etc" },
        TarEntry::Dir { path: "tmp" },
        TarEntry::File {
            path: "bin/busybox",
            data: &bin,
            mode: 0o755,
        },
        TarEntry::File {
            path: "etc/passwd",
            data: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            mode: 0o644,
        },
        TarEntry::File {
            path: "etc/group",
            data: b"root:x:0:\nnogroup:x:65534:\n",
            mode: 0o644,
        },
    ];
    let links: Vec<String> = BUSYBOX_APPLETS.iter().map(|a| format!("bin/{a}")).collect();
    for l in &links {
        entries.push(TarEntry::Symlink {
            path: l,
            target: "busybox",
        });
    }
    Ok(tar(&entries))
}

/// A layer holding the host binary `src` at `dest` with the shared libraries it loads
/// (from `ldd`) at their host paths, so a dynamically linked test tool runs in a busybox
/// image.
pub fn host_binary_layer(src: &std::path::Path, dest: &str) -> std::io::Result<Vec<u8>> {
    let out = std::process::Command::new("ldd").arg(src).output()?;
    let mut files: Vec<(String, Vec<u8>)> = vec![(dest.to_string(), std::fs::read(src)?)];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux… (0x…)"
        let path = line
            .split("=>")
            .last()
            .and_then(|p| p.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            files.push((p.trim_start_matches('/').to_string(), std::fs::read(p)?));
        }
    }
    let entries: Vec<TarEntry<'_>> = files
        .iter()
        .map(|(path, data)| TarEntry::File {
            path,
            data,
            mode: 0o755,
        })
        .collect();
    Ok(tar(&entries))
}

/// A small two-layer image (`/bin/app`, `/etc/motd`) for tests that edit or attack an
/// image's documents rather than run it.
pub fn two_layer_image() -> Image {
    Image {
        layers: vec![
            tar(&[TarEntry::File {
                path: "bin/app",
                data: b"app",
                mode: 0o755,
            }]),
            tar(&[TarEntry::File {
                path: "etc/motd",
                data: b"hi",
                mode: 0o644,
            }]),
        ],
        cmd: vec!["/bin/app".into()],
        ..Default::default()
    }
}
