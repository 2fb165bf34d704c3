//! Quoting a tenant's value inside an error message: at most a short prefix, so a refusal
//! of a 6 MB value is a small message any gRPC client can read (their default limit for
//! all response metadata is 8 KiB).

/// Bytes of a value quoted in a message.
pub const QUOTE_BYTES: usize = 64;

/// `"value"`, or `"first 64 bytes"…(N bytes)` for a longer one.
pub fn quote(s: &str) -> String {
    if s.len() <= QUOTE_BYTES {
        return format!("{s:?}");
    }
    let mut end = QUOTE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…({} bytes)", &s[..end], s.len())
}

/// Cuts a finished message to `max` bytes (at a character boundary), saying so.
pub fn clip(mut msg: String, max: usize) -> String {
    if msg.len() <= max {
        return msg;
    }
    let mut end = max;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let total = msg.len();
    msg.truncate(end);
    msg.push_str(&format!("…(message cut, {total} bytes)"));
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_char_boundary() {
        assert_eq!(quote("ab"), "\"ab\"");
        let long = "é".repeat(100);
        let q = quote(&long);
        assert!(q.ends_with("…(200 bytes)"), "{q}");
        assert!(q.len() < 100, "{q}");
        let c = clip("x".repeat(10_000), 100);
        assert!(c.len() < 150 && c.ends_with("10000 bytes)"), "{c}");
    }
}
