//! Why a group's network could not be set up or given back.

/// Each variant names the step and the link; the message becomes the group's status
/// message and a Warning event.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The message names `network.eni` already.
    #[error("{0}")]
    EniNotFound(String),
    #[error("network.eni: {link} ({mac}) is held by group {holder:?}")]
    EniHeld {
        link: String,
        mac: String,
        holder: String,
    },
    #[error("network.eni: {0} has no MAC address; an ENI must be an Ethernet link")]
    EniNoMac(String),
    #[error("attaching ENI {link} ({mac}): {message}")]
    Attach {
        link: String,
        mac: String,
        message: String,
    },
    #[error("dev bridge: {0}")]
    Bridge(String),
    #[error("dev bridge: no free address left in {0}")]
    DevPoolFull(String),
    #[error("connecting the group to the dev bridge: {0}")]
    Veth(String),
    #[error("security-group rules: {0}")]
    SecurityGroup(String),
    #[error("recording the group's network: {0}")]
    Store(String),
    #[error("{0}: a blocking task failed")]
    Join(&'static str),
}
