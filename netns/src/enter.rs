//! Running work inside a group's network namespace without ever putting a caller's
//! thread there: the work runs on a thread of its own that enters the namespace and ends
//! with the work. A socket keeps the namespace it was created in, so what the work
//! returns (a stream, a netlink socket's answers) is usable anywhere.

use std::fs::File;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// Errors getting a thread into a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("opening network namespace {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path}")]
    Enter {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("starting the namespace thread")]
    Spawn(#[source] std::io::Error),
    #[error("the namespace thread panicked")]
    Thread,
}

/// Runs `work` on a new thread (named `name`) that entered the network namespace pinned
/// at `netns`; blocks until it is done.
pub fn run_in<T, E>(
    netns: &Path,
    name: &str,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<EnterError> + Send + 'static,
{
    let path = netns.display().to_string();
    let file = File::open(netns).map_err(|source| EnterError::Open {
        path: path.clone(),
        source,
    })?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|source| EnterError::Enter { path, source })?;
            work()
        })
        .map_err(EnterError::Spawn)?
        .join()
        .map_err(|_| EnterError::Thread)?
}
