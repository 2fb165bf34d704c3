//! Timestamps as the API writes them: RFC 3339, UTC, nanoseconds.

use std::time::SystemTime;

pub fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// Parses a timestamp written by [`now`].
pub fn parse(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}
