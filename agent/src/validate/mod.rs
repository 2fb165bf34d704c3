//! Admission of a group spec: every rule of PRODUCT.md, the limits of every list and
//! string, what this node's kernel can run, and the fields whose feature is not built.
//!
//! Every problem is reported with the JSON path of the field (`containers[1].resources.cpu`)
//! and the limit it broke, all problems at once, so one round-trip fixes a spec. A spec
//! that passes comes back with its parsed quantities and normalized size, so nothing
//! downstream parses a string again.
//!
//! The rule when a spec has both kinds of problem: if anything is invalid the answer is
//! `INVALID_ARGUMENT` listing every invalid field; only a spec that is otherwise valid gets
//! `UNIMPLEMENTED`, listing every unbuilt field it sets. So a client never fixes an
//! unbuilt field only to learn that the spec was wrong anyway.

mod container;
pub mod domain;
mod group;
pub mod limits;
mod names;
mod network;
pub mod paths;
pub mod quote;
mod sysctl;
mod unbuilt;
mod volume;

use std::fmt;

use eci_api::v1::GroupSpec;
use prost::Message;

use crate::sizes::Size;

pub use domain::{Bytes, Capability, ContainerSpec, CpuMillis, Mount};
pub use group::group_gpus;
pub use names::{NameError, check_name};

/// How many problems a refusal lists; the rest are counted.
pub const MAX_LISTED: usize = 20;

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

/// Every problem found in a spec. Displayed as the first [`MAX_LISTED`] and a count of
/// the rest, so the message stays small whatever the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().take(MAX_LISTED).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        if self.0.len() > MAX_LISTED {
            write!(f, "; and {} more", self.0.len() - MAX_LISTED)?;
        }
        Ok(())
    }
}

/// Why a spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// It breaks rules (`INVALID_ARGUMENT`).
    #[error("invalid group spec: {0}")]
    Invalid(ValidationErrors),
    /// It is valid, but sets fields whose feature is not built (`UNIMPLEMENTED`).
    #[error("group spec sets fields this agent does not implement yet: {0}")]
    Unimplemented(ValidationErrors),
}

impl SpecError {
    pub fn errors(&self) -> &[FieldError] {
        match self {
            SpecError::Invalid(e) | SpecError::Unimplemented(e) => &e.0,
        }
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
    /// Init containers, then app containers, checked.
    pub containers: Vec<ContainerSpec>,
}

impl TryFrom<&GroupSpec> for ValidSpec {
    type Error = ValidationErrors;

    /// [`validate`]: the rules and limits, without this node's kernel or the unbuilt
    /// fields ([`admit`] adds those for a client's request).
    fn try_from(spec: &GroupSpec) -> Result<Self, Self::Error> {
        validate(spec)
    }
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

/// Checks a whole spec against the rules and limits. Pure: no I/O, no node state. The
/// supervisor runs it again on stored specs to get their sizes back.
pub fn validate(spec: &GroupSpec) -> Result<ValidSpec, ValidationErrors> {
    let mut errs = Errors::default();
    let valid = group::check(spec, &mut errs);
    match valid {
        Some(v) if errs.0.is_empty() => Ok(v),
        _ => Err(ValidationErrors(errs.0)),
    }
}

/// Reads back a spec this agent (or an earlier version of it) already admitted, for the
/// supervisor. A rule or limit added since then must not orphan a group that is running:
/// the violations are returned beside the spec for the caller to log, and only a spec that
/// cannot be read at all (a quantity that does not parse) is an error.
pub fn stored(spec: &GroupSpec) -> Result<(ValidSpec, Vec<FieldError>), ValidationErrors> {
    let mut errs = Errors::default();
    let Some(v) = group::check(spec, &mut errs) else {
        return Err(ValidationErrors(errs.0));
    };
    // Running with a part left out (a mount, a limit) would be worse than not running.
    let wire = spec.init_containers.iter().chain(&spec.containers);
    let complete = v.containers.len() == spec.init_containers.len() + spec.containers.len()
        && v.containers.iter().zip(wire).all(|(c, w)| {
            let r = w.resources.clone().unwrap_or_default();
            c.mounts.len() == w.volume_mounts.len()
                && c.cpu.is_some() != r.cpu.is_empty()
                && c.memory.is_some() != r.memory.is_empty()
        });
    if complete {
        Ok((v, errs.0))
    } else {
        Err(ValidationErrors(errs.0))
    }
}

/// Admits a spec sent by a client (Create, Update): its encoded size first (cheap, and
/// nothing else runs on an oversized spec), then [`validate`], then what this node's
/// kernel takes (each sysctl set in a throwaway network and IPC namespace), then the
/// unbuilt fields. See the module doc for the order.
pub fn admit(spec: &GroupSpec) -> Result<ValidSpec, SpecError> {
    let size = spec.encoded_len();
    if size > limits::MAX_SPEC_BYTES {
        return Err(SpecError::Invalid(ValidationErrors(vec![FieldError {
            field: "spec".into(),
            message: format!(
                "{size} bytes encoded is over the limit of {} bytes (1.5 MiB)",
                limits::MAX_SPEC_BYTES
            ),
        }])));
    }
    let mut errs = Errors::default();
    let valid = group::check(spec, &mut errs);
    // Only names and values that passed the rules go to the kernel.
    let sysctls: Vec<(usize, &str, &str)> = spec
        .security_context
        .iter()
        .flat_map(|s| s.sysctls.iter().enumerate())
        .filter(|(_, s)| {
            sysctl::allowed(&s.name)
                && !s.value.is_empty()
                && s.value.len() <= limits::MAX_SYSCTL_VALUE
                && !s.value.contains(['\n', '\0'])
        })
        .map(|(i, s)| (i, s.name.as_str(), s.value.as_str()))
        .collect();
    sysctl::check_on_kernel(&sysctls, &mut errs);
    match valid {
        Some(v) if errs.0.is_empty() => {
            unbuilt::check(spec, &mut errs);
            if errs.0.is_empty() {
                Ok(v)
            } else {
                Err(SpecError::Unimplemented(ValidationErrors(errs.0)))
            }
        }
        _ => Err(SpecError::Invalid(ValidationErrors(errs.0))),
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod matrix;
#[cfg(test)]
mod tests;
