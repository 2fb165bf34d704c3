//! Which host link is a group's ENI.

use std::fmt;
use std::str::FromStr;

pub use crate::attach::{AttachError, EniConfig, EniRecord, attach, detach};

/// Errors from parsing an ENI selector.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EniError {
    #[error("invalid MAC address {0:?}: expected six hex pairs separated by ':'")]
    BadMac(String),
    #[error("invalid link name {0:?}: 1-15 characters, no '/', whitespace or ':'")]
    BadLinkName(String),
    #[error("set exactly one of macAddress and linkName")]
    NotExactlyOne,
}

/// A link-layer address, the stable name of an ENI across hosts and reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl FromStr for MacAddress {
    type Err = EniError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || EniError::BadMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddress(out))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl serde::Serialize for MacAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How the spec names the ENI: MAC is preferred on real fleets (link names are assigned
/// by the host in discovery order); a name is handy for tests and development.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EniSelector {
    Mac(MacAddress),
    LinkName(String),
}

impl EniSelector {
    /// Parses the two optional spec fields; exactly one must be set.
    pub fn parse(mac: &str, link_name: &str) -> Result<Self, EniError> {
        match (mac.is_empty(), link_name.is_empty()) {
            (false, true) => Ok(EniSelector::Mac(mac.parse()?)),
            (true, false) => {
                // IFNAMSIZ is 16 including the terminating NUL.
                let ok = link_name.len() <= 15
                    && !link_name.contains(['/', ':'])
                    && !link_name.chars().any(char::is_whitespace)
                    && link_name != "."
                    && link_name != "..";
                if ok {
                    Ok(EniSelector::LinkName(link_name.to_string()))
                } else {
                    Err(EniError::BadLinkName(link_name.to_string()))
                }
            }
            _ => Err(EniError::NotExactlyOne),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mac_and_name() {
        let sel = EniSelector::parse("02:AB:00:00:00:01", "").expect("valid mac");
        assert_eq!(sel, EniSelector::Mac(MacAddress([2, 0xab, 0, 0, 0, 1])));
        assert_eq!(
            EniSelector::parse("", "eth1").expect("valid name"),
            EniSelector::LinkName("eth1".into())
        );
        assert!(EniSelector::parse("02:ab:00:00:00", "").is_err());
        assert!(EniSelector::parse("", "a-very-long-link-name").is_err());
        assert_eq!(EniSelector::parse("", ""), Err(EniError::NotExactlyOne));
    }
}
