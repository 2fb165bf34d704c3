//! Paths inside a container or a volume, checked and normalized so that two spellings
//! of one place compare equal and the runtime never meets `..`, `//` or NUL.

use super::limits::MAX_PATH;
use super::quote::quote;

/// What is wrong with a path; the caller adds the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("is required")]
    Empty,
    #[error("{0} is longer than {MAX_PATH} bytes")]
    TooLong(String),
    #[error("{0} must be an absolute path")]
    NotAbsolute(String),
    #[error("{0} must be a relative path")]
    NotRelative(String),
    #[error("{0} must not contain NUL")]
    Nul(String),
    #[error("{0} must not contain an empty, '.' or '..' component")]
    Component(String),
    #[error("{0} cannot be mounted over: the root, /proc and /sys are the runtime's")]
    Reserved(String),
}

/// Splits a path into its components, refusing empty, `.` and `..` ones.
fn parts<'a>(p: &'a str, whole: &str) -> Result<Vec<&'a str>, PathError> {
    let parts: Vec<&str> = p.split('/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(PathError::Component(quote(whole)));
    }
    Ok(parts)
}

fn common(p: &str) -> Result<(), PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.len() > MAX_PATH {
        return Err(PathError::TooLong(quote(p)));
    }
    if p.contains('\0') {
        return Err(PathError::Nul(quote(p)));
    }
    Ok(())
}

/// An absolute path in a container, normalized: one trailing `/` is dropped.
pub fn absolute(p: &str) -> Result<String, PathError> {
    common(p)?;
    let Some(rest) = p.strip_prefix('/') else {
        return Err(PathError::NotAbsolute(quote(p)));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok("/".into());
    }
    Ok(format!("/{}", parts(rest, p)?.join("/")))
}

/// A mount destination: an [`absolute`] path that is not the root or inside the kernel's
/// filesystems the runtime mounts (a volume there would hide /proc's masks).
pub fn mount_path(p: &str) -> Result<String, PathError> {
    let n = absolute(p)?;
    let under = |base: &str| n == base || n.starts_with(&format!("{base}/"));
    if n == "/" || under("/proc") || under("/sys") {
        return Err(PathError::Reserved(quote(p)));
    }
    Ok(n)
}

/// A non-empty relative path that stays inside its base.
pub fn relative(p: &str) -> Result<String, PathError> {
    common(p)?;
    if p.starts_with('/') {
        return Err(PathError::NotRelative(quote(p)));
    }
    Ok(parts(p.strip_suffix('/').unwrap_or(p), p)?.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths() {
        assert_eq!(mount_path("/data/").as_deref(), Ok("/data"));
        assert_eq!(mount_path("/a/b").as_deref(), Ok("/a/b"));
        assert_eq!(mount_path("/dev/shm").as_deref(), Ok("/dev/shm"));
        for bad in [
            "", "data", "/a//b", "/a/./b", "/a/../b", "/a\0b", "/", "//", "/proc", "/proc/x",
            "/sys/fs", "/..",
        ] {
            assert!(mount_path(bad).is_err(), "{bad:?}");
        }
        assert!(mount_path("/processes").is_ok());
        assert!(matches!(
            mount_path(&format!("/{}", "a".repeat(5000))),
            Err(PathError::TooLong(_))
        ));
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative("a/b").as_deref(), Ok("a/b"));
        for bad in ["", "/a", "a/../b", "..", "a//b", "./a", "a\0"] {
            assert!(relative(bad).is_err(), "{bad:?}");
        }
    }
}
