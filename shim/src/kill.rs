//! Ending processes, written once for the shim: one process by pid, and everything in
//! a cgroup followed by the cgroup itself (a container's leftovers on Delete, the
//! group's on shutdown). The graceful part (SIGTERM, the grace period) is the agent's:
//! it decides how long a container may take; here, what is left is killed for sure.

use std::time::Duration;

use eci_runtime::cgroup::{self, CgroupError};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long the cgroup removal waits for killed processes to be gone.
const REMOVE_TRIES: u32 = 50;
const REMOVE_PAUSE: Duration = Duration::from_millis(20);

/// SIGKILL to `pid`; a process already gone is not an error worth reporting.
pub fn sigkill(pid: i32) {
    if pid > 0 {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// SIGKILL to every process in `cgroup`, then removes it, retrying while the killed
/// processes are still on their way out. Blocking (sleeps between tries); returns the
/// last removal error when the cgroup could not be removed.
pub fn kill_cgroup_and_remove(cgroup: &str) -> Result<(), CgroupError> {
    if !cgroup::exists(cgroup) {
        return Ok(());
    }
    for p in cgroup::procs(cgroup) {
        sigkill(p as i32);
    }
    let mut last = Ok(());
    for _ in 0..REMOVE_TRIES {
        last = cgroup::destroy(cgroup);
        if last.is_ok() {
            break;
        }
        std::thread::sleep(REMOVE_PAUSE);
    }
    last
}
