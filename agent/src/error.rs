//! The domain errors of the agent's operations. `api::status` maps them to gRPC codes in
//! one place.

use crate::images::ImageError;
use crate::store::StoreError;
use crate::validate::{SpecError, ValidationErrors};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A refused group spec: invalid, or setting fields whose feature is not built.
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{field}: {message}")]
    BadRequest {
        field: &'static str,
        message: String,
    },
    /// A request field whose name is built at run time (`images[3]`).
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    #[error("group {0:?} not found")]
    NotFound(String),
    #[error("image cache {0:?} not found")]
    CacheNotFound(String),
    #[error("image cache {0:?} already exists")]
    CacheExists(String),
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    #[error("group {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// A part the operation needs does not answer now (a group's stopped shim); the
    /// caller may retry later.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    OutOfRange(String),
    /// A method whose behaviour a later part of the agent builds.
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error("state store")]
    Store(#[source] StoreError),
    #[error(transparent)]
    Image(ImageError),
}

impl From<ValidationErrors> for Error {
    fn from(e: ValidationErrors) -> Self {
        Error::Spec(SpecError::Invalid(e))
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(name) => Error::AlreadyExists(name),
            StoreError::Compacted { asked, oldest } => Error::OutOfRange(format!(
                "fromRevision {asked} is older than the oldest kept change {oldest}; list again and watch from the list's revision"
            )),
            other => Error::Store(other),
        }
    }
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Store(s) => s.into(),
            ImageError::NotFound(name) => Error::ImageNotFound(name),
            other => Error::Image(other),
        }
    }
}

impl Error {
    /// Whether the store could not write (a full or failing disk): trying again later
    /// may succeed.
    pub fn is_store_unwritable(&self) -> bool {
        match self {
            Error::Store(s) => s.is_unwritable(),
            Error::Image(ImageError::Store(s)) => s.is_unwritable(),
            _ => false,
        }
    }
}

/// An error and its sources as one line (`outer: inner: root cause`), for status
/// messages, health conditions and logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
