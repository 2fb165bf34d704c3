//! Attaching to a container's first process (Containers.Attach): the shim owns its
//! stdio and fans its output out; the agent only checks the request and connects.

use super::Supervisor;
use crate::error::{Error, Result};
use crate::sandbox::attach::{self, AttachError, Attached};

impl Supervisor {
    /// Attaches to `container` of `group`. With `stdin`, the caller will send input:
    /// refused when the container was not created with `stdin: true`.
    pub async fn attach(&self, group: &str, container: &str, stdin: bool) -> Result<Attached> {
        let g = self.groups.get(group)?;
        let ctx = self.ctx(&g);
        let Some(c) = ctx
            .spec
            .init_containers
            .iter()
            .chain(&ctx.spec.containers)
            .find(|c| c.name == container)
        else {
            return Err(Error::InvalidField {
                field: "container".into(),
                message: format!("container {container:?} is not in group {group:?}"),
            });
        };
        if stdin && !c.stdin {
            return Err(no_stdin(container));
        }
        match attach::connect(&ctx.dir.attach_socket(), container, stdin).await {
            Ok(a) => Ok(a),
            Err(AttachError::Refused(why)) => Err(Error::FailedPrecondition(format!(
                "attaching to container {container:?} of group {group:?}: {why}"
            ))),
            Err(e @ (AttachError::Connect { .. } | AttachError::Timeout(_))) => {
                let src = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                Err(Error::Unavailable(format!(
                    "group {group:?}: {e}{src} (a shim started before attach was built \
                     has no attach socket: restart the group)"
                )))
            }
            Err(e) => Err(Error::FailedPrecondition(format!(
                "attaching to container {container:?} of group {group:?}: {e}"
            ))),
        }
    }
}

/// The refusal of input to a container without `stdin`.
pub fn no_stdin(container: &str) -> Error {
    Error::FailedPrecondition(format!(
        "container {container:?} was not created with stdin: true: attach is output-only \
         (attach without -i, or set stdin: true in its spec)"
    ))
}
