//! Registry credentials: from the group spec, the agent config's `[registries."host"]`,
//! and a docker `config.json` named in the config — the group's own win — and the
//! redaction that keeps every one of them out of messages.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use serde::Deserialize;

use super::PullError;
use super::registry::Registries;
use crate::config::PullConfig;

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// `host[:port]` as image references name it.
    pub server: String,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl From<&eci_api::v1::RegistryCredential> for Credential {
    fn from(c: &eci_api::v1::RegistryCredential) -> Self {
        Credential {
            server: c.server.clone(),
            username: c.username.clone(),
            password: c.password.clone(),
        }
    }
}

/// Names Docker Hub goes by in credentials.
fn same_server(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let s = s.split('/').next().unwrap_or(s);
        match s {
            "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
            s => s.to_string(),
        }
    };
    norm(a) == norm(b)
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// The credentials of one pull, in the order they win.
pub(super) struct Secrets {
    creds: Vec<Credential>,
}

impl Secrets {
    pub(super) fn new(group: &[Credential], cfg: &PullConfig, registries: &Registries) -> Self {
        let mut creds: Vec<Credential> = group.to_vec();
        creds.extend(registries.configured_credentials());
        if !cfg.docker_config.as_os_str().is_empty() {
            match std::fs::read(&cfg.docker_config) {
                Ok(bytes) => match serde_json::from_slice::<DockerConfig>(&bytes) {
                    Ok(dc) => creds.extend(dc.auths.into_iter().filter_map(|(server, a)| {
                        let (username, password) = if !a.auth.is_empty() {
                            let raw = base64::engine::general_purpose::STANDARD
                                .decode(a.auth.trim())
                                .ok()?;
                            let text = String::from_utf8(raw).ok()?;
                            let (u, p) = text.split_once(':')?;
                            (u.to_string(), p.to_string())
                        } else {
                            (a.username, a.password)
                        };
                        Some(Credential {
                            server,
                            username,
                            password,
                        })
                    })),
                    // The file's content is secret: name the file only.
                    Err(_) => {
                        tracing::warn!(path = %cfg.docker_config.display(), "docker config does not parse; ignored")
                    }
                },
                Err(e) => {
                    tracing::warn!(path = %cfg.docker_config.display(), error = %e, "docker config unreadable; ignored")
                }
            }
        }
        Secrets { creds }
    }

    /// The username and password for `host`, if any.
    pub(super) fn for_host(&self, host: &str) -> Option<(&str, &str)> {
        self.creds
            .iter()
            .find(|c| same_server(&c.server, host) && !c.username.is_empty())
            .map(|c| (c.username.as_str(), c.password.as_str()))
    }

    /// `text` with every password (and its base64 forms) replaced.
    pub(super) fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for c in &self.creds {
            if c.password.len() < 3 {
                continue;
            }
            let b64 = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.username, c.password));
            for secret in [&b64, &c.password] {
                out = out.replace(secret.as_str(), "<redacted>");
            }
        }
        out
    }

    pub(super) fn redact_error(&self, e: PullError) -> PullError {
        match e {
            PullError::Registry { image, reason } => PullError::Registry {
                image,
                reason: self.redact(&reason),
            },
            PullError::Invalid { image, reason } => PullError::Invalid {
                image,
                reason: self.redact(&reason),
            },
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_wins_and_passwords_are_redacted() {
        let group = [Credential {
            server: "r.example:5000".into(),
            username: "alice".into(),
            password: "s3cret-pw".into(),
        }];
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:other-pw");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"r.example:5000":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"auth":"{auth}"}}}}}}"#),
        )
        .expect("write");
        let cfg = PullConfig {
            docker_config: path,
            ..Default::default()
        };
        let regs = Registries::new(Default::default(), 1);
        let s = Secrets::new(&group, &cfg, &regs);
        assert_eq!(s.for_host("r.example:5000"), Some(("alice", "s3cret-pw")));
        assert_eq!(s.for_host("docker.io"), Some(("bob", "other-pw")));
        assert_eq!(s.for_host("elsewhere"), None);
        assert_eq!(
            s.redact("401 for s3cret-pw and other-pw"),
            "401 for <redacted> and <redacted>"
        );
        assert!(!format!("{:?}", group[0]).contains("s3cret"));
    }
}
