//! Reading an OCI image layout archive (`oci-layout`, `index.json`, `blobs/sha256/*` in a
//! tar, as `skopeo copy … oci-archive:` or `umoci` write it): every blob goes to the
//! content store, verified against the digest its name claims.

use std::io::Read;
use std::path::Component;

use oci_spec::image::ImageIndex;

use super::ImageError;
use super::content::ContentStore;
use super::digest::Digest;

/// Copies the archive's blobs into `content` and returns its top-level index.
pub fn ingest(archive: impl Read, content: &ContentStore) -> Result<ImageIndex, ImageError> {
    let bad = |reason: String| ImageError::Archive(reason);
    let mut tar = tar::Archive::new(archive);
    let mut index = None;
    let mut layout = None;
    for entry in tar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?
    {
        let entry = entry.map_err(|e| bad(format!("reading the archive: {e}")))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| bad(format!("entry name: {e}")))?
            .into_owned();
        let parts: Vec<String> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        match parts
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["index.json"] => index = Some(read_small(entry, "index.json")?),
            ["oci-layout"] => layout = Some(read_small(entry, "oci-layout")?),
            ["blobs", "sha256", hex] => {
                let digest: Digest = format!("sha256:{hex}").parse().map_err(|_| {
                    bad(format!(
                        "blob name {} is not a sha256 digest",
                        path.display()
                    ))
                })?;
                let size = entry.header().size().ok();
                content.ingest(entry, &digest, size)?;
            }
            _ => {}
        }
    }
    let layout = layout.ok_or_else(|| bad("no oci-layout file: not an OCI image layout".into()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&layout).map_err(|e| bad(format!("oci-layout: {e}")))?;
    if v["imageLayoutVersion"] != "1.0.0" {
        return Err(bad(format!(
            "oci-layout: unsupported imageLayoutVersion {}",
            v["imageLayoutVersion"]
        )));
    }
    let index = index.ok_or_else(|| bad("no index.json".into()))?;
    serde_json::from_slice(&index).map_err(|e| bad(format!("index.json: {e}")))
}

/// Reads a metadata file, refusing one too large to be metadata.
fn read_small(entry: impl Read, name: &str) -> Result<Vec<u8>, ImageError> {
    const MAX: u64 = 4 << 20;
    let mut buf = Vec::new();
    entry
        .take(MAX + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ImageError::Archive(format!("reading {name}: {e}")))?;
    if buf.len() as u64 > MAX {
        return Err(ImageError::Archive(format!("{name} is larger than 4 MiB")));
    }
    Ok(buf)
}

/// The OCI platform name of this host's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}
