//! Capability sets of container processes.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};

/// Errors applying capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
    #[error("setting the {set} capability set")]
    Set {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
}

/// Docker's default set: what a root process in a container holds.
pub const DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The default set with `add` and `drop` applied (names with or without `CAP_`, `ALL`).
pub fn compute(add: &[String], drop: &[String]) -> Result<Vec<String>, CapsError> {
    let norm = |n: &String| {
        let up = n.to_ascii_uppercase();
        if up == "ALL" || up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{up}")
        }
    };
    let mut set: HashSet<String> = DEFAULT.iter().map(|s| s.to_string()).collect();
    for d in drop.iter().map(norm) {
        if d == "ALL" {
            set.clear();
        } else {
            parse(&d)?;
            set.remove(&d);
        }
    }
    for a in add.iter().map(norm) {
        parse(&a)?;
        set.insert(a);
    }
    let mut v: Vec<String> = set.into_iter().collect();
    v.sort();
    Ok(v)
}

fn parse(name: &str) -> Result<Capability, CapsError> {
    Capability::from_str(name).map_err(|_| CapsError::Unknown(name.to_string()))
}

fn to_set(names: &[String]) -> Result<CapsHashSet, CapsError> {
    names.iter().map(|n| parse(n)).collect()
}

/// Shrinks the bounding set to `bounding`. Runs while still privileged.
pub fn limit_bounding(bounding: &[String]) -> Result<(), CapsError> {
    let keep = to_set(bounding)?;
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|source| CapsError::Set {
                set: "bounding",
                source,
            })?;
        }
    }
    Ok(())
}

/// Makes the effective set the whole permitted set (a uid change away from root clears
/// the effective set even when `keepcaps` keeps the permitted one).
pub fn raise_effective() -> Result<(), CapsError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(|source| CapsError::Set {
        set: "permitted (reading)",
        source,
    })?;
    caps::set(None, CapSet::Effective, &permitted).map_err(|source| CapsError::Set {
        set: "effective",
        source,
    })
}

/// Sets the effective, permitted, inheritable and ambient sets after the uid change.
pub fn apply(
    effective: &[String],
    permitted: &[String],
    inheritable: &[String],
    ambient: &[String],
) -> Result<(), CapsError> {
    // Effective must stay a subset of permitted at every step: shrink it first.
    let steps: [(CapSet, &'static str, &[String]); 4] = [
        (CapSet::Effective, "effective", effective),
        (CapSet::Permitted, "permitted", permitted),
        (CapSet::Inheritable, "inheritable", inheritable),
        (CapSet::Ambient, "ambient", ambient),
    ];
    for (set, name, caps) in steps {
        caps::set(None, set, &to_set(caps)?)
            .map_err(|source| CapsError::Set { set: name, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_drop() {
        let s = compute(&["NET_ADMIN".into()], &["CAP_MKNOD".into(), "kill".into()]).expect("ok");
        assert!(s.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!s.contains(&"CAP_MKNOD".to_string()) && !s.contains(&"CAP_KILL".to_string()));
        assert_eq!(
            compute(&[], &["ALL".into()]).expect("ok"),
            Vec::<String>::new()
        );
        assert!(compute(&["BOGUS".into()], &[]).is_err());
        assert_eq!(compute(&[], &[]).expect("ok").len(), DEFAULT.len());
    }
}
