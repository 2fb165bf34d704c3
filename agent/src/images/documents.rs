//! The OCI JSON documents an import reads — index, image manifest, image config — parsed
//! at the boundary into types whose digests are [`Digest`]s.
//!
//! Every digest arrives as a plain string and is parsed here, where the JSON path of its
//! field is still known, so a hostile image is refused with the field named
//! (`config rootfs.diff_ids[2]: "sha256:/" is not a valid digest`) and nothing after this
//! point ever handles an unparsed digest. Fields the agent does not use are ignored.

use std::collections::HashMap;
use std::io::Read;

use serde::Deserialize;

use super::ImageDefaults;
use super::digest::{BadDigest, Digest};

/// The largest index, manifest or config read; real ones are a few KiB.
pub const MAX_DOCUMENT: u64 = 4 << 20;

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("{document} {field}")]
    Digest {
        document: String,
        field: String,
        #[source]
        source: BadDigest,
    },
    #[error("{document} does not parse")]
    Json {
        document: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{document} has schemaVersion {version}, not 2")]
    Schema { document: String, version: u32 },
    #[error("{document} is larger than {MAX_DOCUMENT} bytes")]
    TooLarge { document: String },
    #[error("{document} is not in the archive")]
    Missing { document: String },
    #[error("reading {document}")]
    Read {
        document: String,
        #[source]
        source: std::io::Error,
    },
}

/// The platform a descriptor is for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// A descriptor whose digest has been parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<Platform>,
    pub annotations: HashMap<String, String>,
}

impl Descriptor {
    /// Whether it points at an index (OCI or Docker manifest list) rather than a manifest.
    pub fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            "application/vnd.oci.image.index.v1+json"
                | "application/vnd.docker.distribution.manifest.list.v2+json"
        )
    }

    /// Whether it has no platform or the given one.
    pub fn is_for(&self, os: &str, architecture: &str) -> bool {
        self.platform
            .as_ref()
            .is_none_or(|p| p.os == os && p.architecture == architecture)
    }
}

/// An index: the images (or nested indexes) of an archive.
#[derive(Debug, Clone)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config the agent uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// `os/architecture`.
    pub platform: String,
    pub created: String,
    pub defaults: ImageDefaults,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<Digest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIndex {
    schema_version: u32,
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: u32,
    config: RawDescriptor,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
struct RawConfig {
    architecture: String,
    os: String,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: Option<RawExec>,
    rootfs: RawRootfs,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawExec {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    diff_ids: Vec<String>,
}

/// Parses one digest field, naming it when it is refused.
fn digest(document: &str, field: String, value: &str) -> Result<Digest, DocumentError> {
    value.parse().map_err(|source| DocumentError::Digest {
        document: document.to_string(),
        field,
        source,
    })
}

impl RawDescriptor {
    fn parse(self, document: &str, field: &str) -> Result<Descriptor, DocumentError> {
        Ok(Descriptor {
            digest: digest(document, format!("{field}.digest"), &self.digest)?,
            media_type: self.media_type,
            size: self.size,
            platform: self.platform,
            annotations: self.annotations.unwrap_or_default(),
        })
    }
}

fn json<'a, T: Deserialize<'a>>(document: &str, bytes: &'a [u8]) -> Result<T, DocumentError> {
    serde_json::from_slice(bytes).map_err(|source| DocumentError::Json {
        document: document.to_string(),
        source,
    })
}

fn schema(document: &str, version: u32) -> Result<(), DocumentError> {
    match version {
        2 => Ok(()),
        version => Err(DocumentError::Schema {
            document: document.to_string(),
            version,
        }),
    }
}

/// Reads a document of at most [`MAX_DOCUMENT`] bytes: a blob that claims to be metadata
/// must not make the agent hold gigabytes in memory.
pub fn read(r: impl Read, document: &str) -> Result<Vec<u8>, DocumentError> {
    let mut buf = Vec::new();
    r.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut buf)
        .map_err(|source| DocumentError::Read {
            document: document.to_string(),
            source,
        })?;
    if buf.len() as u64 > MAX_DOCUMENT {
        return Err(DocumentError::TooLarge {
            document: document.to_string(),
        });
    }
    Ok(buf)
}

/// Parses an index; `document` names it in errors (`index.json`, `index sha256:…`).
pub fn index(bytes: &[u8], document: &str) -> Result<Index, DocumentError> {
    let raw: RawIndex = json(document, bytes)?;
    schema(document, raw.schema_version)?;
    let manifests = raw
        .manifests
        .into_iter()
        .enumerate()
        .map(|(i, d)| d.parse(document, &format!("manifests[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Index { manifests })
}

/// Parses an image manifest.
pub fn manifest(bytes: &[u8]) -> Result<Manifest, DocumentError> {
    const DOC: &str = "manifest";
    let raw: RawManifest = json(DOC, bytes)?;
    schema(DOC, raw.schema_version)?;
    Ok(Manifest {
        config: raw.config.parse(DOC, "config")?,
        layers: raw
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, d)| d.parse(DOC, &format!("layers[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}

/// Parses an image config.
pub fn config(bytes: &[u8]) -> Result<Config, DocumentError> {
    const DOC: &str = "config";
    let raw: RawConfig = json(DOC, bytes)?;
    let diff_ids = raw
        .rootfs
        .diff_ids
        .iter()
        .enumerate()
        .map(|(i, d)| digest(DOC, format!("rootfs.diff_ids[{i}]"), d))
        .collect::<Result<_, _>>()?;
    let c = raw.config.unwrap_or_default();
    Ok(Config {
        platform: format!("{}/{}", raw.os, raw.architecture),
        created: raw.created.unwrap_or_default(),
        defaults: ImageDefaults {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
        },
        diff_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::images::tests::chain;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn names_the_field_of_a_bad_digest() {
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{D}","{D}","sha256:/"]}}}}"#
        );
        let err = config(cfg.as_bytes()).expect_err("bad diff id");
        assert_eq!(
            chain(&err),
            r#"config rootfs.diff_ids[2]: "sha256:/" is not a valid digest"#
        );

        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{D}","size":1}},"layers":[{{"digest":"sha256:../x","size":1}}]}}"#
        );
        let err = manifest(m.as_bytes()).expect_err("bad layer");
        assert_eq!(
            chain(&err),
            r#"manifest layers[0].digest: "sha256:../x" is not a valid digest"#
        );

        let i = r#"{"schemaVersion":2,"manifests":[{"digest":"md5:00","size":1}]}"#;
        let err = index(i.as_bytes(), "index.json").expect_err("bad index");
        assert_eq!(
            chain(&err),
            r#"index.json manifests[0].digest: "md5:00" is not a valid digest"#
        );
    }

    #[test]
    fn reads_docker_style_nulls_and_refuses_other_schemas() {
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":null,"Env":["A=1"]}},"rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#
        );
        let c = config(cfg.as_bytes()).expect("config");
        assert_eq!(c.platform, "linux/amd64");
        assert_eq!(c.defaults.env, ["A=1"]);
        assert_eq!(c.diff_ids[0].as_str(), D);

        let m = format!(r#"{{"schemaVersion":1,"config":{{"digest":"{D}","size":1}}}}"#);
        assert!(matches!(
            manifest(m.as_bytes()),
            Err(DocumentError::Schema { version: 1, .. })
        ));
        let err = manifest(br#"{"schemaVersion":2,"config":{"digest":"x","size":-1}}"#)
            .expect_err("negative size");
        assert!(matches!(err, DocumentError::Json { .. }), "{err:?}");
        let big = vec![b' '; MAX_DOCUMENT as usize + 1];
        assert!(matches!(
            read(&big[..], "manifest"),
            Err(DocumentError::TooLarge { .. })
        ));
    }
}
