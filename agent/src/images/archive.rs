//! Reading an OCI image layout archive (`oci-layout`, `index.json`, `blobs/<alg>/*` in a
//! tar, as `skopeo copy … oci-archive:` or `umoci` write it): every blob goes to the
//! content store, verified against the digest its name claims.

use std::io::Read;
use std::path::Component;

use super::ImageError;
use super::content::ContentStore;
use super::digest::Digest;
use super::documents;

/// Copies the archive's blobs into `content` and returns its top-level index, unparsed.
pub fn ingest(archive: impl Read, content: &ContentStore) -> Result<Vec<u8>, ImageError> {
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
            ["blobs", algorithm @ ("sha256" | "sha512"), hex] => {
                let digest = Digest::from_parts(algorithm, hex)
                    .map_err(|_| bad(format!("blob name {} is not a digest", path.display())))?;
                let size = entry.header().size().ok();
                let name = entry_name(&digest);
                let mut entry = TrackedRead {
                    inner: entry,
                    failed: None,
                };
                match content.ingest(&mut entry, &digest, size) {
                    Ok(_) => {}
                    // The archive (tenant input) ended or broke inside the blob: say
                    // which entry, never the content store path it was being copied to.
                    Err(_) if entry.failed.is_some() => {
                        let why = entry.failed.take().unwrap_or_default();
                        return Err(bad(format!("entry {name}: reading the blob: {why}")));
                    }
                    Err(e) => return Err(e.into()),
                }
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
    index.ok_or_else(|| bad("no index.json".into()))
}

/// The archive entry that holds a blob: `blobs/<algorithm>/<hex>`.
pub fn entry_name(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().name(), d.hex())
}

/// A reader that remembers its own failure, so a failed copy can be blamed on the
/// archive (bad input) rather than on the disk it was written to (a host fault).
struct TrackedRead<R> {
    inner: R,
    failed: Option<String>,
}

impl<R: Read> Read for TrackedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.failed.get_or_insert_with(|| e.to_string());
        })
    }
}

/// Reads a metadata file, refusing one too large to be metadata.
fn read_small(entry: impl Read, name: &str) -> Result<Vec<u8>, ImageError> {
    documents::read(entry, name).map_err(ImageError::Index)
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
