//! Validation of a group spec against every rule of PRODUCT.md.
//!
//! Every problem is reported with the JSON path of the field (`containers[1].resources.cpu`)
//! and the limit it broke, all problems at once, so one round-trip fixes a spec. A spec
//! that passes comes back with its parsed quantities and normalized size, so nothing
//! downstream parses a string again.

mod container;
mod group;
mod names;
mod network;
mod volume;

use std::fmt;

use eci_api::v1::GroupSpec;

use crate::sizes::Size;

pub use group::group_gpus;
pub use names::check_name;

/// Limits from PRODUCT.md.
pub mod limits {
    pub const MAX_CONTAINERS: usize = 20;
    pub const MAX_VOLUMES: usize = 20;
    pub const MAX_LABELS: usize = 20;
    pub const MAX_LABEL_KEY: usize = 63;
    pub const MAX_LABEL_VALUE: usize = 63;
    pub const MAX_NAME: usize = 63;
    pub const MAX_GRACE_SECONDS: i64 = 3600;
    pub const DEFAULT_GRACE_SECONDS: i64 = 30;
    pub const MAX_EPHEMERAL_BYTES: u64 = 2 << 40;
    pub const DEFAULT_EPHEMERAL_BYTES: u64 = 40 << 30;
    pub const DEFAULT_SHM_BYTES: u64 = 64 << 20;
    pub const MAX_CREDENTIALS: usize = 20;
    pub const MAX_NAMESERVERS: usize = 3;
    pub const MAX_SEARCHES: usize = 6;
    pub const MAX_SG_RULES: usize = 100;
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path in the camelCase form a user writes, e.g. `containers[0].image`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "invalid group spec: {}", parts.join("; "))
    }
}

/// A spec that passed, with what admission and the runtime need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSpec {
    /// What was asked for (group values, or the sums of the containers').
    pub requested: Size,
    /// The offered size it runs as.
    pub normalized: Size,
    /// GPUs the group needs: the app containers' sum, or the largest init container's.
    pub gpus: u32,
    pub grace_period_seconds: i64,
    pub shm_bytes: u64,
    pub ephemeral_bytes: u64,
}

/// Collects field errors while walking a spec.
#[derive(Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub(crate) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks a whole spec. Pure: no I/O, no node state (admission is separate).
pub fn validate(spec: &GroupSpec) -> Result<ValidSpec, ValidationErrors> {
    let mut errs = Errors::default();
    let valid = group::check(spec, &mut errs);
    match valid {
        Some(v) if errs.0.is_empty() => Ok(v),
        _ => Err(ValidationErrors(errs.0)),
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
