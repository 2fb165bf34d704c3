//! OOM kills in the guest, reported to the host as [`Control::Oom`]: a container's
//! cgroup at its limit, or the whole guest out of memory (the kernel counts both in the
//! victim's cgroup and its ancestors' `memory.events`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use eci_shim::guest_proto::Control;

use crate::io::IoPort;

/// How often the group cgroup's OOM counter is read (a few bytes from kernfs).
const POLL: Duration = Duration::from_millis(500);

fn oom_kills(events: &std::path::Path) -> u64 {
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Watches the group cgroup (`/sys/fs/cgroup/<cgroup>`) on a thread of its own and
/// sends one `oom` control message each time its OOM-kill count grows.
pub fn watch(cgroup: &str, io: Arc<IoPort>) -> std::io::Result<()> {
    let events = PathBuf::from("/sys/fs/cgroup")
        .join(cgroup)
        .join("memory.events");
    std::thread::Builder::new()
        .name("oom".into())
        .spawn(move || {
            let mut seen = oom_kills(&events);
            loop {
                std::thread::sleep(POLL);
                let now = oom_kills(&events);
                if now > seen {
                    tracing::warn!(kills = now - seen, "OOM kill in the guest");
                    io.control(&Control::Oom);
                }
                seen = now;
            }
        })
        .map(|_| ())
}
