//! The one place where domain errors become gRPC status codes.

use tonic::{Code, Status};

use crate::error::Error;
use crate::images::ImageError;
use crate::images::content::ContentError;
use crate::images::unpack::UnpackError;

pub(crate) fn to_status(e: Error) -> Status {
    let code = match &e {
        Error::Invalid(_) | Error::BadRequest { .. } => Code::InvalidArgument,
        Error::NotFound(_) | Error::ImageNotFound(_) => Code::NotFound,
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
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Unavailable(_) => Code::Unavailable,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::Unimplemented(_) => Code::Unimplemented,
        Error::Store(_) => Code::Internal,
    };
    if code == Code::Internal {
        tracing::error!(error = ?e, "internal error");
    }
    // The chain says which entry, record or file; the caller needs it.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Status::new(code, msg)
}
