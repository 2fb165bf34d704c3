//! The one place where domain errors become gRPC status codes.

use tonic::{Code, Status};

use crate::error::Error;
use crate::images::ImageError;
use crate::images::content::ContentError;
use crate::images::unpack::UnpackError;
use crate::validate::SpecError;
use crate::validate::quote::clip;

/// The longest status message sent, as encoded in `grpc-message` (non-ASCII bytes take
/// three): clients refuse response metadata over 8 KiB in all (grpcio, grpc-go,
/// tonic), and a refusal must reach them as itself, not as `RESOURCE_EXHAUSTED`.
pub(crate) const MAX_STATUS_MESSAGE: usize = 4096;

/// A failed pull as a status: the registry's refusal is `UNAVAILABLE` (it may pass on a
/// retry), an unacceptable image `FAILED_PRECONDITION`, a bad name `INVALID_ARGUMENT`.
pub(crate) fn pull_status(e: crate::images::pull::PullError) -> Status {
    use crate::images::pull::PullError as P;
    let msg = clip(crate::error::chain(&e), MAX_STATUS_MESSAGE);
    match e {
        P::Reference(_) => Status::invalid_argument(msg),
        P::NeverPull(_) | P::Invalid { .. } => Status::failed_precondition(msg),
        P::Registry { .. } => Status::unavailable(msg),
        P::Timeout { .. } => Status::deadline_exceeded(msg),
        P::NoSpace { .. } => Status::resource_exhausted(msg),
        P::Store { source, .. } => to_status(Error::Image(source)),
    }
}

pub(crate) fn to_status(e: Error) -> Status {
    let code = match &e {
        Error::Spec(SpecError::Invalid(_))
        | Error::BadRequest { .. }
        | Error::InvalidField { .. } => Code::InvalidArgument,
        Error::Spec(SpecError::Unimplemented(_)) => Code::Unimplemented,
        Error::NotFound(_) | Error::ImageNotFound(_) | Error::CacheNotFound(_) => Code::NotFound,
        Error::Image(i) => match i {
            ImageError::Reference(_)
            | ImageError::Archive(_)
            | ImageError::Index(_)
            | ImageError::Document { .. }
            | ImageError::Invalid { .. }
            | ImageError::Unpack {
                source: UnpackError::Refused { .. },
                ..
            }
            | ImageError::DiffId { .. }
            | ImageError::Content(ContentError::Mismatch { .. } | ContentError::Size { .. }) => {
                Code::InvalidArgument
            }
            ImageError::InUse(..) => Code::FailedPrecondition,
            _ => Code::Internal,
        },
        Error::AlreadyExists(_) | Error::CacheExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Unavailable(_) => Code::Unavailable,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::Unimplemented(_) => Code::Unimplemented,
        // A full disk or a failing one: the write changed nothing and may be retried.
        Error::Store(s) if s.is_full() => Code::ResourceExhausted,
        Error::Store(s) if s.is_unwritable() => Code::Unavailable,
        Error::Store(_) => Code::Internal,
    };
    // The chain says which entry, record or file; the caller needs it.
    let msg = crate::error::chain(&e);
    if code == Code::Internal {
        // A bug on the agent's side: the chain names host paths and internals, which
        // the caller has no use for and should not see. The log has it under an id.
        let id = crate::groups::new_id();
        tracing::error!(error = %msg, error_id = %id, "internal error");
        return Status::internal(format!(
            "internal error {id} in the agent (details in its log)"
        ));
    }
    Status::new(code, clip(msg, MAX_STATUS_MESSAGE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use crate::validate::{FieldError, ValidationErrors};

    #[test]
    fn internal_errors_carry_no_host_path() {
        let e = Error::Store(StoreError::Durability(
            "/var/lib/eci/state.redb: EIO".into(),
        ));
        let s = to_status(e);
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("/var/lib"), "{}", s.message());
        assert!(
            s.message().starts_with("internal error "),
            "{}",
            s.message()
        );
    }

    #[test]
    fn spec_refusals_keep_their_code_and_stay_short() {
        let many = (0..10_000)
            .map(|i| FieldError {
                field: format!("containers[0].env[{i}].name"),
                message: "x".repeat(100),
            })
            .collect();
        let s = to_status(Error::Spec(SpecError::Invalid(ValidationErrors(many))));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().len() <= MAX_STATUS_MESSAGE + 64,
            "{}",
            s.message().len()
        );
        assert!(s.message().ends_with("and 9980 more"), "{}", s.message());
        let s = to_status(Error::Spec(SpecError::Unimplemented(ValidationErrors(
            vec![FieldError {
                field: "containers[0].tty".into(),
                message: "not built".into(),
            }],
        ))));
        assert_eq!(s.code(), Code::Unimplemented);
        assert!(s.message().contains("containers[0].tty"));
        // Any other message is cut too.
        let s = to_status(Error::FailedPrecondition("y".repeat(1 << 20)));
        assert!(
            s.message().len() <= MAX_STATUS_MESSAGE + 64,
            "{}",
            s.message().len()
        );
    }
}
