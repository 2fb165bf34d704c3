//! Image references: `[registry[:port]/]repository[:tag][@digest]`, normalized the way
//! Docker does (`busybox` is `docker.io/library/busybox:latest`), so that the same image
//! named two ways is one record.

use std::fmt;

use super::digest::Digest;

/// Errors parsing a reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reference:?} is not an image reference: {why}")]
pub struct ReferenceError {
    pub reference: String,
    pub why: &'static str,
}

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    /// `latest` when neither tag nor digest is given.
    pub tag: Option<String>,
    /// Parsed like every other digest: a reference cannot smuggle a path through it.
    pub digest: Option<Digest>,
}

const DEFAULT_REGISTRY: &str = "docker.io";

impl Reference {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let bad = |why| ReferenceError {
            reference: s.to_string(),
            why,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("whitespace, control characters or over 512 characters"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let digest = digest.map(str::parse::<Digest>).transpose().map_err(|_| {
            bad("the digest must be sha256:<64 hex digits> or sha512:<128 hex digits>, lowercase")
        })?;
        // A ':' after the last '/' starts the tag; one before it is a registry port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad(
                    "the tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                ));
            }
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let has_registry =
            parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost");
        let registry = if has_registry {
            parts.remove(0).to_string()
        } else {
            DEFAULT_REGISTRY.to_string()
        };
        for p in &parts {
            let ok = !p.is_empty()
                && p.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && p.starts_with(|c: char| c.is_ascii_alphanumeric())
                && p.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !ok {
                return Err(bad(
                    "repository path components are lowercase letters, digits and separators",
                ));
            }
        }
        if registry == DEFAULT_REGISTRY && parts.len() == 1 {
            parts.insert(0, "library");
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(Reference {
            registry,
            repository: parts.join("/"),
            tag,
            digest,
        })
    }

    /// Kubernetes default pull policy: `Always` for `latest` or no tag, else `IfNotPresent`.
    pub fn default_pull_policy(&self) -> &'static str {
        match (&self.tag, &self.digest) {
            (_, Some(_)) => "IfNotPresent",
            (Some(t), None) if t != "latest" => "IfNotPresent",
            _ => "Always",
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).expect(s).to_string()
    }

    #[test]
    fn normalizes() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(
            norm("127.0.0.1:5000/demo/busybox:1"),
            "127.0.0.1:5000/demo/busybox:1"
        );
        assert_eq!(norm("localhost/a/b"), "localhost/a/b:latest");
        let d = format!("r.example.com/team/app@sha256:{}", "0".repeat(64));
        assert_eq!(norm(&d), d);
        let d = format!("r.example.com/team/app@sha512:{}", "a".repeat(128));
        assert_eq!(norm(&d), d);
        assert_eq!(
            Reference::parse("busybox")
                .expect("ok")
                .default_pull_policy(),
            "Always"
        );
        assert_eq!(
            Reference::parse("busybox:1")
                .expect("ok")
                .default_pull_policy(),
            "IfNotPresent"
        );
    }

    #[test]
    fn refuses() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "a b",
            "demo/busybox:-x",
            "x@sha256:12",
            "x@sha256:../../etc",
            "x@md5:d41d8cd98f00b204e9800998ecf8427e",
            "a//b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
