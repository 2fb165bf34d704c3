//! Talking to registries, on `oci-client`: one client per registry host and set of
//! credentials (so each keeps its own bearer tokens until they expire), manifests
//! resolved with the OCI and Docker media types in `Accept`, indexes narrowed to this
//! host's platform, retries with backoff on 5xx answers and transport failures.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::auth::{Credential, Secrets};
use crate::config::RegistryConfig;
use crate::images::digest::Digest;
use crate::images::documents::{self, MAX_DOCUMENT};
use crate::images::{LayerRecord, Reference};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Sent in `Accept`: the Debian registry answers 404 to an OCI manifest without them.
/// Schema 1 is listed so that such an image is refused by name rather than as missing.
const ACCEPT: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_LIST,
    DOCKER_V1_SIGNED,
    DOCKER_V1,
];

/// How one request to a registry failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Attempt {
    #[error("registry {registry} answered 401 Unauthorized{detail}")]
    Unauthorized { registry: String, detail: String },
    #[error("registry {registry} answered {code}: {message}")]
    Status {
        registry: String,
        code: u16,
        message: String,
    },
    #[error("registry {registry}: {message}")]
    Refused { registry: String, message: String },
    #[error("transfer failed: {0}")]
    Transport(String),
    /// Not the registry's transient failure: the content is unacceptable.
    #[error("{0}")]
    Invalid(String),
}

impl Attempt {
    /// Whether trying again may help.
    pub(super) fn retryable(&self) -> bool {
        match self {
            Attempt::Status { code, .. } => *code >= 500 || *code == 429 || *code == 408,
            Attempt::Transport(_) => true,
            _ => false,
        }
    }

    fn from_oci(registry: &str, e: OciDistributionError) -> Self {
        let registry = registry.to_string();
        match e {
            OciDistributionError::UnauthorizedError { .. } => Attempt::Unauthorized {
                registry,
                detail: String::new(),
            },
            OciDistributionError::AuthenticationFailure(reason) => Attempt::Unauthorized {
                registry,
                detail: format!(" (token service: {})", reason.trim()),
            },
            OciDistributionError::ServerError { code, message, .. } => Attempt::Status {
                registry,
                code,
                message: message.trim().chars().take(300).collect(),
            },
            OciDistributionError::RegistryError { envelope, .. } => Attempt::Refused {
                registry,
                message: envelope
                    .errors
                    .iter()
                    .map(|e| {
                        // The protocol's own code name (MANIFEST_UNKNOWN, DENIED, ...).
                        let code = serde_json::to_value(&e.code)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_else(|| format!("{:?}", e.code));
                        format!("{code}: {}", e.message)
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            OciDistributionError::RequestError(e) => Attempt::Transport(super::chain(&e)),
            OciDistributionError::IoError(e) => Attempt::Transport(e.to_string()),
            OciDistributionError::DigestError(e) => Attempt::Invalid(e.to_string()),
            e => Attempt::Refused {
                registry,
                message: e.to_string(),
            },
        }
    }
}

/// The pause before attempt `n + 1`: 250 ms doubling, at most 8 s.
pub(super) fn backoff(n: u32) -> Duration {
    Duration::from_millis(250u64 << n.min(5).saturating_sub(1)).min(Duration::from_secs(8))
}

/// A manifest resolved for this host.
pub(super) struct Resolved {
    pub manifest: Vec<u8>,
    pub digest: Digest,
}

/// The registry settings and the clients made from them.
pub(super) struct Registries {
    cfg: BTreeMap<String, RegistryConfig>,
    attempts: u32,
    /// By host and a hash of the credentials.
    clients: Mutex<HashMap<(String, String), oci_client::Client>>,
}

/// One registry host (the origin or a mirror) with the credentials for it.
pub(super) struct Endpoint {
    pub host: String,
    client: oci_client::Client,
    auth: RegistryAuth,
    attempts: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sniff {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

impl Registries {
    pub(super) fn new(cfg: BTreeMap<String, RegistryConfig>, attempts: u32) -> Self {
        // reqwest is built without a crypto provider of its own: use ring, as tonic does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registries {
            cfg,
            attempts: attempts.max(1),
            clients: Mutex::default(),
        }
    }

    /// The credentials written in the config, per registry.
    pub(super) fn configured_credentials(&self) -> Vec<Credential> {
        self.cfg
            .iter()
            .filter(|(_, c)| !c.username.is_empty())
            .map(|(server, c)| Credential {
                server: server.clone(),
                username: c.username.clone(),
                password: c.password.clone(),
            })
            .collect()
    }

    /// The mirrors of `registry` in order, then `registry` itself.
    pub(super) fn endpoints(&self, registry: &str, secrets: &Secrets) -> Vec<Endpoint> {
        let mirrors = self
            .cfg
            .get(registry)
            .map(|c| c.mirrors.clone())
            .unwrap_or_default();
        mirrors
            .iter()
            .map(String::as_str)
            .chain([registry])
            .map(|host| {
                let auth = match secrets.for_host(host) {
                    Some((u, p)) => RegistryAuth::Basic(u.into(), p.into()),
                    None => RegistryAuth::Anonymous,
                };
                Endpoint {
                    host: host.to_string(),
                    client: self.client(host, &auth),
                    auth,
                    attempts: self.attempts,
                }
            })
            .collect()
    }

    fn client(&self, host: &str, auth: &RegistryAuth) -> oci_client::Client {
        let id = match auth {
            RegistryAuth::Basic(u, p) => hex::encode(Sha256::digest(format!("{u}\0{p}"))),
            RegistryAuth::Bearer(t) => hex::encode(Sha256::digest(t)),
            RegistryAuth::Anonymous => String::new(),
        };
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients
            .entry((host.to_string(), id))
            .or_insert_with(|| self.new_client(host))
            .clone()
    }

    fn new_client(&self, host: &str) -> oci_client::Client {
        let rc = self.cfg.get(host).cloned().unwrap_or_default();
        let mut extra = Vec::new();
        if !rc.ca_file.as_os_str().is_empty() {
            match std::fs::read(&rc.ca_file) {
                Ok(data) => extra.push(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                }),
                Err(e) => {
                    tracing::warn!(registry = host, path = %rc.ca_file.display(), error = %e, "registry CA file unreadable")
                }
            }
        }
        let config = ClientConfig {
            protocol: if rc.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: rc.skip_verify,
            extra_root_certificates: extra,
            read_timeout: Some(Duration::from_secs(60)),
            connect_timeout: Some(Duration::from_secs(15)),
            ..Default::default()
        };
        oci_client::Client::try_from(config).unwrap_or_else(|e| {
            tracing::warn!(registry = host, error = %e, "registry client settings refused; using defaults");
            oci_client::Client::default()
        })
    }
}

impl Endpoint {
    fn oci_ref(&self, r: &Reference, digest: Option<&Digest>) -> oci_client::Reference {
        match digest.or(r.digest.as_ref()) {
            Some(d) => oci_client::Reference::with_digest(
                self.host.clone(),
                r.repository.clone(),
                d.to_string(),
            ),
            None => oci_client::Reference::with_tag(
                self.host.clone(),
                r.repository.clone(),
                r.tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }

    /// Runs `f` until it succeeds, fails for good, or runs out of attempts.
    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, Attempt>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut n = 0;
        loop {
            n += 1;
            match f().await.map_err(|e| Attempt::from_oci(&self.host, e)) {
                Err(e) if e.retryable() && n < self.attempts => {
                    tracing::info!(registry = %self.host, what, attempt = n, error = %e, "retrying");
                    tokio::time::sleep(backoff(n)).await;
                }
                other => return other,
            }
        }
    }

    async fn manifest_raw(&self, r: &oci_client::Reference) -> Result<Vec<u8>, Attempt> {
        let (body, _) = self
            .retry("manifest", || {
                self.client.pull_manifest_raw(r, &self.auth, ACCEPT)
            })
            .await?;
        if body.len() as u64 > MAX_DOCUMENT {
            return Err(Attempt::Invalid(format!(
                "the manifest is larger than {MAX_DOCUMENT} bytes"
            )));
        }
        Ok(body.to_vec())
    }

    /// Resolves `r` to one image manifest for this host.
    pub(super) async fn resolve(&self, r: &Reference) -> Result<Resolved, Attempt> {
        let body = self.manifest_raw(&self.oci_ref(r, None)).await?;
        let digest = match &r.digest {
            Some(d) => {
                let actual = Digest::of_with(d.algorithm(), &body);
                if actual != *d {
                    return Err(Attempt::Invalid(format!(
                        "the registry's manifest hashes to {actual}, the reference names {d}"
                    )));
                }
                actual
            }
            None => Digest::of(&body),
        };
        match sniff(&body)? {
            Kind::Manifest => Ok(Resolved {
                manifest: body,
                digest,
            }),
            Kind::Index => {
                let index = documents::index(&body, "index")
                    .map_err(|e| Attempt::Invalid(super::chain(&e)))?;
                let arch = crate::images::archive::host_arch();
                let Some(m) = index
                    .manifests
                    .iter()
                    .find(|m| !m.is_index() && m.platform.is_some() && m.is_for("linux", arch))
                else {
                    let offered: Vec<String> = index
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect();
                    return Err(Attempt::Invalid(format!(
                        "no image for linux/{arch} in the index; it offers {}",
                        if offered.is_empty() {
                            "no platforms".to_string()
                        } else {
                            offered.join(", ")
                        }
                    )));
                };
                let body = self.manifest_raw(&self.oci_ref(r, Some(&m.digest))).await?;
                let actual = Digest::of_with(m.digest.algorithm(), &body);
                if actual != m.digest {
                    return Err(Attempt::Invalid(format!(
                        "manifest {} hashes to {actual}",
                        m.digest
                    )));
                }
                match sniff(&body)? {
                    Kind::Manifest => Ok(Resolved {
                        manifest: body,
                        digest: actual,
                    }),
                    Kind::Index => Err(Attempt::Invalid(format!(
                        "index entry {} is another index",
                        m.digest
                    ))),
                }
            }
        }
    }

    /// A small blob (the config), verified against `digest`.
    pub(super) async fn document(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, Attempt> {
        if size > MAX_DOCUMENT {
            return Err(Attempt::Invalid(format!(
                "blob {digest} of {size} bytes is too large for a config"
            )));
        }
        let oref = self.oci_ref(r, None);
        let bytes = self
            .retry("config", || async {
                let mut out = Vec::new();
                self.client
                    .pull_blob(&oref, digest.as_str(), &mut out)
                    .await
                    .map(|()| out)
            })
            .await?;
        let actual = Digest::of_with(digest.algorithm(), &bytes);
        if actual != *digest {
            return Err(Attempt::Invalid(format!(
                "blob {digest} hashes to {actual}"
            )));
        }
        Ok(bytes)
    }

    /// The byte stream of a layer's blob (verified by the store as it arrives).
    pub(super) async fn blob(
        &self,
        r: &Reference,
        layer: &LayerRecord,
    ) -> Result<oci_client::client::SizedStream, Attempt> {
        let oref = self.oci_ref(r, None);
        let desc = OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.to_string(),
            size: layer.size as i64,
            ..Default::default()
        };
        self.retry("blob", || self.client.pull_blob_stream(&oref, &desc))
            .await
    }
}

impl Endpoint {
    /// The rest of a layer's blob from byte `offset` (a `Range` request). A registry
    /// that ignores the range sends the whole blob: its first `offset` bytes are skipped
    /// here, so the caller always gets the bytes from `offset` on.
    pub(super) async fn blob_from(
        &self,
        r: &Reference,
        layer: &LayerRecord,
        offset: u64,
    ) -> Result<futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>, Attempt> {
        use futures::StreamExt;
        let oref = self.oci_ref(r, None);
        let desc = OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.to_string(),
            size: layer.size as i64,
            ..Default::default()
        };
        let answer = self
            .client
            .pull_blob_stream_partial(&oref, &desc, offset, None)
            .await
            .map_err(|e| Attempt::from_oci(&self.host, e))?;
        Ok(match answer {
            oci_client::client::BlobResponse::Partial(s) => s.stream,
            oci_client::client::BlobResponse::Full(s) => {
                tracing::info!(registry = %self.host, layer = %layer.digest, "the registry ignored Range; skipping what was already received");
                let mut skip = offset;
                s.stream
                    .filter_map(move |chunk| {
                        let out = match chunk {
                            Ok(mut b) if skip > 0 => {
                                let n = skip.min(b.len() as u64);
                                skip -= n;
                                let rest = b.split_off(n as usize);
                                (!rest.is_empty()).then_some(Ok(rest))
                            }
                            other => Some(other),
                        };
                        futures::future::ready(out)
                    })
                    .boxed()
            }
        })
    }
}

enum Kind {
    Manifest,
    Index,
}

fn sniff(body: &[u8]) -> Result<Kind, Attempt> {
    let s: Sniff = serde_json::from_slice(body)
        .map_err(|e| Attempt::Invalid(format!("the manifest does not parse: {e}")))?;
    if s.schema_version == 1 || s.media_type == DOCKER_V1 || s.media_type == DOCKER_V1_SIGNED {
        return Err(Attempt::Invalid(
            "it is a Docker schema 1 manifest, which this agent does not pull (deprecated since 2017); push it again with a current client".into(),
        ));
    }
    match s.media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => Ok(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Kind::Manifest),
        "" if s.manifests.is_some() => Ok(Kind::Index),
        "" => Ok(Kind::Manifest),
        other => Err(Attempt::Invalid(format!(
            "manifest media type {other:?} is not an image manifest or index"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_and_refuses_schema_1() {
        assert!(matches!(
            sniff(br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#),
            Err(Attempt::Invalid(m)) if m.contains("schema 1")
        ));
        assert!(matches!(
            sniff(
                format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[]}}"#)
                    .as_bytes()
            ),
            Ok(Kind::Index)
        ));
        assert!(matches!(
            sniff(br#"{"schemaVersion":2,"config":{}}"#),
            Ok(Kind::Manifest)
        ));
        assert!(backoff(1) < backoff(3));
        assert!(backoff(30) <= Duration::from_secs(8));
    }
}
