//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and readers/writers that compute them
//! on the way.
//!
//! A [`Digest`] only exists parsed: an algorithm this agent can verify and exactly the
//! number of lowercase hex digits that algorithm produces. Digests name files and
//! directories (`content/<algorithm>/<hex>`, `layers/<hex>`), so anything looser — a
//! `/`, a `..`, an empty hex — would let an image's metadata choose a host path.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256, Sha512};

/// The hash functions this agent verifies content with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// Every supported algorithm, e.g. for walking the content store.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// The name before the `:`, also the content store's directory name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// How many hex digits a digest of this algorithm has.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A parsed content digest: a supported algorithm and its lowercase hex value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    /// The whole `algorithm:hex` text, kept to hand out as `&str`.
    text: String,
}

/// A string that is not `sha256:` + 64 or `sha512:` + 128 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid digest")]
pub struct BadDigest(pub String);

impl Digest {
    /// Parses `algorithm:hex` from its parts (e.g. a content directory and a file name).
    pub fn from_parts(algorithm: &str, hex: &str) -> Result<Self, BadDigest> {
        format!("{algorithm}:{hex}").parse()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex digits alone; safe as a file name (only `[0-9a-f]`, never empty).
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.name().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::of_with(Algorithm::Sha256, bytes)
    }

    /// The digest of `bytes` with `algorithm`.
    pub fn of_with(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }
}

impl FromStr for Digest {
    type Err = BadDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = s.split_once(':').and_then(|(name, hex)| {
            let algorithm = Algorithm::from_name(name)?;
            let ok = hex.len() == algorithm.hex_len()
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            ok.then(|| Digest {
                algorithm,
                text: s.to_string(),
            })
        });
        parsed.ok_or_else(|| BadDigest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Stored records and documents are parsed as strictly as anything else: a record that
/// names a bad digest does not load.
impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One running hash of either algorithm.
#[derive(Clone)]
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest {
            algorithm,
            text: format!("{}:{hex}", algorithm.name()),
        }
    }
}

/// Passes bytes through while hashing them with the algorithm of the digest they are
/// meant to match, so a sha512-named blob is verified with sha512.
pub struct Hashing<T> {
    inner: T,
    hasher: Hasher,
    count: u64,
}

impl<T> Hashing<T> {
    pub fn new(inner: T, algorithm: Algorithm) -> Self {
        Hashing {
            inner,
            hasher: Hasher::new(algorithm),
            count: 0,
        }
    }

    /// The digest and length of everything that passed.
    pub fn finish(self) -> (Digest, u64, T) {
        (self.hasher.finish(), self.count, self.inner)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hashes_and_parses() {
        let d = Digest::of(b"");
        assert_eq!(d.hex(), EMPTY256);
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d.clone()));
        let mut h = Hashing::new(&b"abc"[..], Algorithm::Sha256);
        io::copy(&mut h, &mut io::sink()).expect("copy");
        assert_eq!(h.finish().0, Digest::of(b"abc"));
    }

    #[test]
    fn sha512_parses_and_verifies_with_sha512() {
        let d = Digest::of_with(Algorithm::Sha512, b"abc");
        assert_eq!(d.hex().len(), 128);
        assert!(d.as_str().starts_with("sha512:ddaf35a193617aba"), "{d}");
        assert_eq!(d.as_str().parse::<Digest>(), Ok(d.clone()));
        let mut h = Hashing::new(&b"abc"[..], d.algorithm());
        io::copy(&mut h, &mut io::sink()).expect("copy");
        assert_eq!(h.finish().0, d);
        // The same bytes under sha256 are a different digest.
        assert_ne!(Digest::of(b"abc").as_str(), d.as_str());
    }

    #[test]
    fn refuses_anything_that_could_name_a_path() {
        let hex63 = &EMPTY256[..63];
        let upper = EMPTY256.to_uppercase();
        for bad in [
            "sha256:/".to_string(),
            "sha256:/etc".into(),
            "sha256:../../x".into(),
            "sha256:".into(),
            "sha256".into(),
            "".into(),
            format!("sha256:{hex63}"),
            format!("sha256:{EMPTY256}0"),
            format!("sha256:{upper}"),
            format!("SHA256:{EMPTY256}"),
            format!("md5:{}", &EMPTY256[..32]),
            format!("sha384:{}", &EMPTY256[..48]),
            format!("sha512:{EMPTY256}"),
            format!("sha256:{}/..", &EMPTY256[..61]),
            format!(" sha256:{EMPTY256}"),
            format!("sha256:{EMPTY256}\n"),
        ] {
            let err = bad.parse::<Digest>().expect_err(&bad);
            assert_eq!(err, BadDigest(bad.clone()));
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "the error names the value: {err}"
            );
        }
        assert!(Digest::from_parts("sha256", "..").is_err());
        assert!(Digest::from_parts("sha256", EMPTY256).is_ok());
    }

    #[test]
    fn serde_is_a_validated_string() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).expect("serialize");
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).expect("parse"), d);
        let err = serde_json::from_str::<Digest>("\"sha256:/\"").expect_err("bad");
        assert!(err.to_string().contains("\"sha256:/\""), "{err}");
        assert!(serde_json::from_str::<Digest>("42").is_err());
    }
}
