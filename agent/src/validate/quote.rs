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

/// Bytes a message takes in the `grpc-message` header: printable ASCII but `%` as is,
/// every other byte percent-encoded (three bytes).
fn encoded_len(b: u8) -> usize {
    if (0x20..=0x7e).contains(&b) && b != b'%' {
        1
    } else {
        3
    }
}

/// Cuts a finished message so that its encoded form (see [`encoded_len`]) takes at most
/// about `max` bytes, at a character boundary, saying so.
pub fn clip(mut msg: String, max: usize) -> String {
    let mut total = 0;
    let mut end = msg.len();
    for (i, b) in msg.bytes().enumerate() {
        total += encoded_len(b);
        if total > max {
            end = i;
            break;
        }
    }
    if end == msg.len() {
        return msg;
    }
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = msg.len();
    msg.truncate(end);
    msg.push_str(&format!("…(message cut, {bytes} bytes)"));
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
        // Non-ASCII is percent-encoded on the wire: counted three times.
        let c = clip("é".repeat(10_000), 600);
        assert!(c.len() < 260, "{}", c.len());
        assert_eq!(clip("short".into(), 100), "short");
    }
}
