//! Name rules shared by groups, containers and volumes.

use super::limits::MAX_NAME;

/// Lowercase letters, digits and '-', starting and ending with a letter or digit, at
/// most 63 characters: a DNS label, so the name can be a hostname.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "{} characters is over the limit of {MAX_NAME}",
            name.len()
        ));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = !name.starts_with('-') && !name.ends_with('-');
    if !ok_chars || !ends_ok {
        return Err(format!(
            "{name:?} must consist of lowercase letters, digits and '-', and start and end \
             with a letter or digit"
        ));
    }
    Ok(())
}
