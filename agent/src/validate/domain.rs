//! The domain types a wire spec converts into. Each holds a value its constructor has
//! checked, so the code after admission (the OCI spec builder) uses them without parsing
//! or checking a string again.

use eci_api::v1::Container;

use super::{Errors, ValidationErrors, container};

/// CPU in millicores (`"500m"`, `"0.5"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CpuMillis(pub(super) u64);

impl CpuMillis {
    pub fn get(self) -> u64 {
        self.0
    }

    /// The CFS quota over a 100 ms period (at least the kernel's 1 ms for a container).
    pub fn cfs_quota_us(self) -> i64 {
        i64::try_from(self.0.saturating_mul(100)).unwrap_or(i64::MAX)
    }

    /// cgroup v1 shares, as Kubernetes derives them (1024 per CPU, at least 2).
    pub fn shares(self) -> u64 {
        (self.0.saturating_mul(1024) / 1000).max(2)
    }
}

/// Memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub(super) u64);

impl Bytes {
    pub fn get(self) -> u64 {
        self.0
    }

    /// As the OCI spec's signed field wants it.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

/// A Linux capability a container may name, in the kernel's form (`CAP_NET_RAW`), or
/// `ALL` (only in `drop`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Capability(pub(super) String);

impl Capability {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub volume: String,
    /// Absolute, normalized (no `//`, `.`, `..`, trailing `/`), not `/`, /proc or /sys.
    pub destination: String,
    /// Relative, normalized, inside the volume.
    pub sub_path: Option<String>,
    pub read_only: bool,
}

/// What the runtime needs of a container, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub cpu: Option<CpuMillis>,
    pub memory: Option<Bytes>,
    pub mounts: Vec<Mount>,
    pub add: Vec<Capability>,
    pub drop: Vec<Capability>,
    pub read_only_root: bool,
    /// `allowPrivilegeEscalation` as given; the default depends on the group's user
    /// namespace (see [`ContainerSpec::no_new_privileges`]).
    pub allow_privilege_escalation: Option<bool>,
}

impl ContainerSpec {
    /// Whether the container's processes get `no_new_privs`: unless escalation is
    /// allowed, which by default it is only inside a user namespace, where a setuid
    /// binary or a file capability gains nothing outside the group's own ids.
    pub fn no_new_privileges(&self, in_user_namespace: bool) -> bool {
        !self.allow_privilege_escalation.unwrap_or(in_user_namespace)
    }
}

/// A container on its own: every rule that does not need the rest of the group (that
/// its volumes exist, that its ports are free, are the group's rules).
impl TryFrom<&Container> for ContainerSpec {
    type Error = ValidationErrors;

    fn try_from(c: &Container) -> Result<Self, Self::Error> {
        let mut errs = Errors::default();
        match container::check("container", c, false, &mut errs) {
            Some(spec) if errs.0.is_empty() => Ok(spec),
            _ => Err(ValidationErrors(errs.0)),
        }
    }
}
