//! Crash points for tests. With `ECI_CRASH_AT=<name>` in its environment, the agent
//! SIGKILLs itself when it reaches the point of that name, so a test can prove that a
//! crash exactly there converges after a restart (docs/network.md lists the points).
//! Without the variable a point costs one comparison.

use std::sync::OnceLock;

/// Dies here, as `kill -9` would, when `ECI_CRASH_AT` names this point.
pub fn hit(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("ECI_CRASH_AT").ok());
    if at.as_deref() == Some(name) {
        tracing::warn!(point = name, "ECI_CRASH_AT: killing the agent here");
        // SAFETY: kill(2) on our own pid has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
