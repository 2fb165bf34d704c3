//! Why a group or a container could not be started. The message (with its sources, see
//! [`crate::error::chain`]) becomes the group's or container's status message and a
//! Warning event, so each variant names the step and the part of the spec involved.

use std::path::PathBuf;

use crate::images::ImageError;
use crate::images::process::NoCommand;
use crate::sandbox::ShimError;
use crate::sandbox::spec::BuildError;
use crate::sandbox::volumes::VolumeError;
use crate::validate::ValidationErrors;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("the stored spec does not read back: {0}")]
    Spec(ValidationErrors),
    #[error("{step} {}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A disk or nfs volume could not be mounted: the group fails with `FailedMount`.
    #[error(transparent)]
    Mount(VolumeError),
    /// The shim's own words (its RPC status message, or why it could not be reached).
    #[error("{0}")]
    Shim(String),
    #[error(transparent)]
    Command(#[from] NoCommand),
    #[error("building the container's runtime spec")]
    Build(#[from] BuildError),
    #[error("encoding config.json")]
    Encode(#[source] serde_json::Error),
    #[error("preparing the image layers")]
    Layers(#[source] ImageError),
    #[error("{0}: a blocking task failed")]
    Join(&'static str, #[source] tokio::task::JoinError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// The node cannot run this vm group (its sandbox went away since admission).
    #[error("sandbox: \"vm\": {0}")]
    Vm(String),
}

impl From<ShimError> for StartError {
    fn from(e: ShimError) -> Self {
        StartError::Shim(e.message())
    }
}

impl StartError {
    /// One line for a status message.
    pub(crate) fn message(&self) -> String {
        crate::error::chain(self)
    }
}
