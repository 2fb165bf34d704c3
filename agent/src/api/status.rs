//! The one place where domain errors become gRPC status codes.

use tonic::{Code, Status};

use crate::error::Error;

pub(crate) fn to_status(e: Error) -> Status {
    let code = match &e {
        Error::Invalid(_) | Error::BadRequest { .. } => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::Unimplemented(_) => Code::Unimplemented,
        Error::Store(_) => Code::Internal,
    };
    if code == Code::Internal {
        tracing::error!(error = ?e, "internal error");
        // The chain says which record or file; the operator needs it.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        return Status::new(code, msg);
    }
    Status::new(code, e.to_string())
}
