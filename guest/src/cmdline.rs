//! The guest's kernel command line: what the host shim tells eci-guest at boot.

/// Errors reading the command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("kernel command line: {0} is required")]
    Missing(&'static str),
    #[error("kernel command line: {0} must be an absolute path without '..'")]
    Path(&'static str),
    #[error("reading /proc/cmdline: {0}")]
    Read(#[from] std::io::Error),
}

/// The `eci.*` parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootArgs {
    /// `eci.id`: the group id (cgroup `eci/<id>`).
    pub id: String,
    /// `eci.dir`: the group directory, at its host path.
    pub dir: String,
    /// `eci.host`: the group's hostname.
    pub host: String,
    /// `eci.net`: the guest's network (`eci_netns::vm::GuestNet::to_cmdline`), if any.
    pub net: Option<String>,
    /// `eci.probe=1`: only say that the guest booted, then power off.
    pub probe: bool,
}

impl BootArgs {
    /// Parses a command line (whitespace separated `key=value` words).
    pub fn parse(cmdline: &str) -> Result<Self, CmdlineError> {
        let mut a = BootArgs::default();
        for word in cmdline.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            match k {
                "eci.id" => a.id = v.to_string(),
                "eci.dir" => a.dir = v.to_string(),
                "eci.host" => a.host = v.to_string(),
                "eci.net" if !v.is_empty() => a.net = Some(v.to_string()),
                "eci.probe" => a.probe = v == "1",
                _ => {}
            }
        }
        if a.probe {
            return Ok(a);
        }
        if a.id.is_empty() || a.id.contains('/') {
            return Err(CmdlineError::Missing("eci.id"));
        }
        if a.dir.is_empty() {
            return Err(CmdlineError::Missing("eci.dir"));
        }
        if !crate::options::is_clean_absolute(std::path::Path::new(&a.dir)) {
            return Err(CmdlineError::Path("eci.dir"));
        }
        if a.host.is_empty() {
            a.host = a.id.clone();
        }
        Ok(a)
    }

    /// Reads `/proc/cmdline`.
    pub fn read() -> Result<Self, CmdlineError> {
        Self::parse(&std::fs::read_to_string("/proc/cmdline")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_eci_words() {
        let a = BootArgs::parse(
            "console=ttyS0 quiet eci.id=g1 eci.dir=/run/eci/groups/g1 eci.host=web \
             eci.net=mac=02:00:00:00:00:01;mtu=1500;a=10.0.0.5/24;g=10.0.0.1",
        )
        .expect("parse");
        assert_eq!(a.id, "g1");
        assert_eq!(a.dir, "/run/eci/groups/g1");
        assert_eq!(a.host, "web");
        assert!(a.net.as_deref().is_some_and(|n| n.starts_with("mac=")));
        assert!(!a.probe);
        assert!(BootArgs::parse("eci.probe=1").expect("probe").probe);
        assert!(BootArgs::parse("eci.id=g eci.dir=rel").is_err());
        assert!(BootArgs::parse("eci.id=g eci.dir=/a/../b").is_err());
        assert!(BootArgs::parse("eci.dir=/a").is_err());
    }
}
