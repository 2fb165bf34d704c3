//! A real registry for pull tests: the Debian `docker-registry` (distribution 2.8) on a
//! free loopback port with its own storage and config, optionally behind htpasswd basic
//! auth or a bearer-token flow whose token issuer runs here. Clients talk to a small
//! front proxy that counts requests per path and can answer 500 or go slowly on
//! demand. Images are pushed with `skopeo` from OCI layout directories built here
//! (gzip or zstd layers). Everything stops and is removed on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{free_port, wait_for};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// How clients must authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// htpasswd (bcrypt) basic auth.
    Basic {
        user: String,
        password: String,
    },
    /// The token flow: the registry sends clients to the issuer here, which grants a
    /// token to these credentials only.
    Bearer {
        user: String,
        password: String,
    },
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

/// An image to push: uncompressed layer tars with their compression, bottom first.
#[derive(Default)]
pub struct PushImage {
    pub layers: Vec<(Vec<u8>, Option<Compression>)>,
    pub cmd: Vec<String>,
}

impl PushImage {
    /// The stored blob of each layer, as the manifest names it.
    pub fn blobs(&self) -> Vec<(String, Vec<u8>, &'static str)> {
        self.layers
            .iter()
            .map(|(tar, c)| match c {
                Some(Compression::Gzip) => (
                    String::new(),
                    crate::oci::gzip(tar),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                ),
                Some(Compression::Zstd) => (
                    String::new(),
                    zstd::encode_all(&tar[..], 3).expect("zstd"),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
                None => (
                    String::new(),
                    tar.clone(),
                    "application/vnd.oci.image.layer.v1.tar",
                ),
            })
            .map(|(_, b, m)| (sha(&b), b, m))
            .collect()
    }

    /// Writes the image's blobs, config (for `arch`) and manifest into an OCI layout
    /// directory; returns the manifest's digest and size.
    fn write_blobs(&self, dir: &Path, arch: &str) -> Result<(String, usize)> {
        let blobs_dir = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs_dir)?;
        let put = |b: &[u8]| -> Result<String> {
            let d = sha(b);
            std::fs::write(blobs_dir.join(&d["sha256:".len()..]), b)?;
            Ok(d)
        };
        let mut descs = Vec::new();
        for (d, b, m) in self.blobs() {
            put(&b)?;
            descs.push(json!({"mediaType": m, "digest": d, "size": b.len()}));
        }
        let diff_ids: Vec<String> = self.layers.iter().map(|(t, _)| sha(t)).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": { "Cmd": self.cmd },
            "rootfs": { "type": "layers", "diff_ids": diff_ids }
        }))?;
        let cd = put(&config)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": descs
        }))?;
        Ok((put(&manifest)?, manifest.len()))
    }

    /// Writes an OCI layout directory holding the image (for this host).
    pub fn write_layout(&self, dir: &Path) -> Result<()> {
        let (md, size) = self.write_blobs(dir, host_arch())?;
        write_index_json(
            dir,
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": size}),
        )
    }
}

/// This host's OCI architecture name.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

fn write_index_json(dir: &Path, mut desc: serde_json::Value) -> Result<()> {
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
    let index = json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// Writes an OCI layout whose image is an index of `images`, one per architecture.
pub fn write_index_layout(dir: &Path, images: &[(&PushImage, &str)]) -> Result<()> {
    let mut entries = Vec::new();
    for (img, arch) in images {
        let (md, size) = img.write_blobs(dir, arch)?;
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": size,
            "platform": {"os": "linux", "architecture": arch}
        }));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries
    }))?;
    let d = sha(&index);
    std::fs::write(dir.join("blobs/sha256").join(&d["sha256:".len()..]), &index)?;
    write_index_json(
        dir,
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": index.len()}),
    )
}

/// What the front proxy saw and what it is told to do.
#[derive(Default)]
struct ProxyState {
    /// "METHOD path" → count.
    requests: Mutex<HashMap<String, usize>>,
    /// Answer 500 to this many more requests whose path contains the pattern.
    fail: Mutex<Option<(String, usize)>>,
    /// Send blob bodies slowly (about 256 KiB/s).
    slow: AtomicBool,
    /// Close the connection of the next request whose path contains the pattern after
    /// this many response bytes.
    cut: Mutex<Option<(String, usize)>>,
    stop: AtomicBool,
}

/// A running registry.
pub struct Registry {
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:<port>` of the front proxy: what image references name.
    pub host: String,
    /// The registry itself (pushes go here, uncounted).
    direct: String,
    pub auth: Auth,
    child: Child,
    state: Arc<ProxyState>,
    listeners: Vec<u16>,
}

fn htpasswd(user: &str, password: &str) -> Result<String> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .context("htpasswd (apache2-utils) is needed for basic-auth tests")?;
    if !out.status.success() {
        bail!("htpasswd failed");
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string() + "\n")
}

impl Registry {
    /// Starts a registry with `auth`.
    pub fn start(auth: Auth) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("eci-registry-").tempdir()?;
        let port = free_port();
        let direct = format!("127.0.0.1:{port}");
        let state = Arc::new(ProxyState::default());
        let mut listeners = Vec::new();
        let auth_yaml = match &auth {
            Auth::None => String::new(),
            Auth::Basic { user, password } => {
                std::fs::write(dir.path().join("htpasswd"), htpasswd(user, password)?)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: eci-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                )
            }
            Auth::Bearer { user, password } => {
                let issuer = TokenIssuer::new(user, password)?;
                std::fs::write(dir.path().join("token.crt"), &issuer.cert_pem)?;
                let l = TcpListener::bind("127.0.0.1:0")?;
                let tport = l.local_addr()?.port();
                listeners.push(tport);
                let st = state.clone();
                std::thread::spawn(move || issuer.serve(l, st));
                format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{tport}/token\n    service: eci-test-registry\n    issuer: eci-test-issuer\n    rootcertbundle: {}\n",
                    dir.path().join("token.crt").display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: \"\"\nhttp:\n  addr: {direct}\n{auth_yaml}",
            dir.path().join("data").display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .args(["serve"])
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("docker-registry (Debian package docker-registry) is needed")?;
        let front = TcpListener::bind("127.0.0.1:0")?;
        let host = format!("127.0.0.1:{}", front.local_addr()?.port());
        listeners.push(front.local_addr()?.port());
        let (st, up) = (state.clone(), direct.clone());
        std::thread::spawn(move || proxy(front, up, st));
        let reg = Registry {
            dir,
            host,
            direct,
            auth,
            child,
            state,
            listeners,
        };
        let up = wait_for(Duration::from_secs(20), || {
            TcpStream::connect(&reg.direct).ok().map(|_| ())
        });
        if up.is_none() {
            bail!("the registry did not listen: {}", reg.log());
        }
        Ok(reg)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes `image` as `<host>/<name>` (`demo/app:1`) with skopeo.
    pub fn push(&self, image: &PushImage, name: &str) -> Result<()> {
        let layout = tempfile::tempdir()?;
        image.write_layout(layout.path())?;
        self.push_layout(layout.path(), name)
    }

    /// Pushes `image` converted to Docker's v2 schema 2 media types (skopeo
    /// `--format v2s2`; gzip layers only).
    pub fn push_docker(&self, image: &PushImage, name: &str) -> Result<()> {
        let layout = tempfile::tempdir()?;
        image.write_layout(layout.path())?;
        self.push_with(layout.path(), name, &["--format", "v2s2"])
    }

    /// Pushes an index of `images` (one per architecture) as `<host>/<name>`.
    pub fn push_index(&self, images: &[(&PushImage, &str)], name: &str) -> Result<()> {
        let layout = tempfile::tempdir()?;
        write_index_layout(layout.path(), images)?;
        self.push_layout(layout.path(), name)
    }

    /// Pushes the image of an existing OCI layout directory (`<dir>:latest`) as
    /// `<host>/<name>` (the pull benchmark's prebuilt Debian image).
    pub fn push_oci_dir(&self, layout: &Path, name: &str) -> Result<()> {
        let src = PathBuf::from(format!("{}:latest", layout.display()));
        self.push_with(&src, name, &[])
    }

    /// `127.0.0.1:<port>` of the registry itself, without the counting front proxy:
    /// what benchmarks pull from, so the proxy's copying is not part of the figures.
    pub fn direct_host(&self) -> &str {
        &self.direct
    }

    fn push_layout(&self, layout: &Path, name: &str) -> Result<()> {
        self.push_with(layout, name, &[])
    }

    fn push_with(&self, layout: &Path, name: &str, extra: &[&str]) -> Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "--all",
            "--insecure-policy",
            "--dest-tls-verify=false",
        ]);
        cmd.args(extra);
        match &self.auth {
            Auth::None => {}
            Auth::Basic { user, password } | Auth::Bearer { user, password } => {
                cmd.arg(format!("--dest-creds={user}:{password}"));
            }
        }
        let out = cmd
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{}/{name}", self.direct))
            .output()
            .context("skopeo (Debian package skopeo) is needed")?;
        if !out.status.success() {
            bail!(
                "skopeo copy failed: {}{}\nregistry log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(())
    }

    /// GET requests for the blob `digest` through the front proxy.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let r = self.state.requests.lock().expect("requests");
        r.iter()
            .filter(|(k, _)| k.starts_with("GET ") && k.ends_with(&format!("/blobs/{digest}")))
            .map(|(_, n)| n)
            .sum()
    }

    /// All requests the front proxy saw ("METHOD path" → count).
    pub fn requests(&self) -> HashMap<String, usize> {
        self.state.requests.lock().expect("requests").clone()
    }

    /// Answers 500 to the next `n` requests whose path contains `pattern`.
    pub fn fail_next(&self, pattern: &str, n: usize) {
        *self.state.fail.lock().expect("fail") = Some((pattern.to_string(), n));
    }

    /// Breaks the next response to a request whose path contains `pattern` after
    /// `bytes` bytes (headers included), as a connection reset would.
    pub fn cut_next(&self, pattern: &str, bytes: usize) {
        *self.state.cut.lock().expect("cut") = Some((pattern.to_string(), bytes));
    }

    /// Sends blob bodies slowly (about 256 KiB/s) or at full speed.
    pub fn set_slow(&self, slow: bool) {
        self.state.slow.store(slow, Ordering::SeqCst);
    }

    /// Where the registry stores the blob `digest`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// An agent config table for this registry (plain HTTP).
    pub fn agent_config(&self) -> String {
        format!("[registries.\"{}\"]\nplain_http = true\n", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Wake the accept loops so their threads end.
        for p in &self.listeners {
            let _ = TcpStream::connect(("127.0.0.1", *p));
        }
    }
}

/// Reads an HTTP/1.1 request head; returns its lines.
fn read_head(r: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            return Some(lines);
        }
        lines.push(line);
    }
}

fn proxy(front: TcpListener, upstream: String, state: Arc<ProxyState>) {
    for conn in front.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let (up, st) = (upstream.clone(), state.clone());
        std::thread::spawn(move || {
            let _ = proxy_one(conn, &up, &st);
        });
    }
}

/// One request per connection: the head is read, counted, maybe failed, and forwarded
/// with `Connection: close`, so every request of a client passes through here.
fn proxy_one(conn: TcpStream, upstream: &str, state: &ProxyState) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let Some(head) = read_head(&mut reader) else {
        return Ok(());
    };
    let first = head.first().cloned().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let path_only = path.split('?').next().unwrap_or_default().to_string();
    *state
        .requests
        .lock()
        .expect("requests")
        .entry(format!("{method} {path_only}"))
        .or_default() += 1;
    if head
        .iter()
        .any(|l| l.to_ascii_lowercase().starts_with("range:"))
    {
        *state
            .requests
            .lock()
            .expect("requests")
            .entry(format!("RANGE {path_only}"))
            .or_default() += 1;
    }
    let mut cut_after = None;
    {
        let mut cut = state.cut.lock().expect("cut");
        if let Some((pat, n)) = cut.as_ref()
            && path_only.contains(pat.as_str())
        {
            cut_after = Some(*n);
            *cut = None;
        }
    }
    let mut out = conn;
    {
        let mut fail = state.fail.lock().expect("fail");
        if let Some((pat, n)) = fail.as_mut()
            && *n > 0
            && path_only.contains(pat.as_str())
        {
            *n -= 1;
            out.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 14\r\nConnection: close\r\n\r\ninjected fault",
            )?;
            return out.shutdown(Shutdown::Both);
        }
    }
    let mut up = TcpStream::connect(upstream)?;
    let mut fwd = String::new();
    for l in &head {
        if l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        fwd.push_str(l);
        fwd.push_str("\r\n");
    }
    fwd.push_str("Connection: close\r\n\r\n");
    up.write_all(fwd.as_bytes())?;
    // Request bodies (pushes go direct; nothing here sends one) and the response.
    let mut up_r = up.try_clone()?;
    let slow = state.slow.load(Ordering::SeqCst) && path_only.contains("/blobs/");
    let mut buf = vec![0u8; if slow { 16 << 10 } else { 64 << 10 }];
    let mut sent = 0usize;
    loop {
        let mut n = up_r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(limit) = cut_after {
            n = n.min(limit.saturating_sub(sent));
        }
        if out.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
        if cut_after.is_some_and(|limit| sent >= limit) {
            break;
        }
        if slow {
            std::thread::sleep(Duration::from_millis(60));
        }
    }
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

/// Issues ES256 JWTs the registry trusts (its certificate is the registry's
/// `rootcertbundle`), to the one user it knows.
struct TokenIssuer {
    user: String,
    password: String,
    cert_pem: String,
    cert_der: Vec<u8>,
    key: ring::signature::EcdsaKeyPair,
}

impl TokenIssuer {
    fn new(user: &str, password: &str) -> Result<Self> {
        let ck = rcgen::generate_simple_self_signed(vec!["eci-test-issuer".to_string()])?;
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ck.signing_key.serialize_der(),
            &rng,
        )
        .map_err(|e| anyhow::anyhow!("token key: {e}"))?;
        Ok(TokenIssuer {
            user: user.into(),
            password: password.into(),
            cert_pem: ck.cert.pem(),
            cert_der: ck.cert.der().to_vec(),
            key,
        })
    }

    fn token(&self, scope: &str) -> Result<String> {
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [B64.encode(&self.cert_der)]});
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let access: Vec<serde_json::Value> = scope
            .split(' ')
            .filter_map(|s| {
                let mut p = s.splitn(3, ':');
                let (kind, name, actions) = (p.next()?, p.next()?, p.next()?);
                Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let claims = json!({
            "iss": "eci-test-issuer", "sub": self.user, "aud": "eci-test-registry",
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", rand_id()),
            "access": access
        });
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(serde_json::to_vec(&header)?),
            B64URL.encode(serde_json::to_vec(&claims)?)
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = self
            .key
            .sign(&rng, signing_input.as_bytes())
            .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok(format!("{signing_input}.{}", B64URL.encode(sig.as_ref())))
    }

    fn serve(self, l: TcpListener, state: Arc<ProxyState>) {
        for conn in l.incoming() {
            if state.stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(conn) = conn else { continue };
            let _ = self.answer(conn, &state);
        }
    }

    fn answer(&self, conn: TcpStream, state: &ProxyState) -> Result<()> {
        let mut reader = BufReader::new(conn.try_clone()?);
        let Some(head) = read_head(&mut reader) else {
            return Ok(());
        };
        let path = head
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_default()
            .to_string();
        *state
            .requests
            .lock()
            .expect("requests")
            .entry("GET /token".into())
            .or_default() += 1;
        let authorized = head.iter().any(|l| {
            let lower = l.to_ascii_lowercase();
            lower.starts_with("authorization: basic ")
                && B64
                    .decode(l["authorization: basic ".len()..].trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    == Some(format!("{}:{}", self.user, self.password))
        });
        let scope = path
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.strip_prefix("scope="))
            .map(|s| {
                s.replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",")
                    .replace('+', " ")
            })
            .collect::<Vec<_>>()
            .join(" ");
        let mut out = conn;
        if !authorized {
            let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"credentials required"}]}"#;
            write!(
                out,
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
        let t = self.token(&scope)?;
        let body = json!({"token": t, "access_token": t, "expires_in": 300}).to_string();
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        Ok(())
    }
}

fn rand_id() -> u128 {
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = Instant::now().elapsed().as_nanos();
    t ^ (N.fetch_add(1, Ordering::SeqCst) as u128) ^ (std::process::id() as u128) << 64
}
