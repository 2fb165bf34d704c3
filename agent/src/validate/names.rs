//! Name rules shared by groups, containers and volumes.

use super::limits::MAX_NAME;
use super::quote::quote;

/// What is wrong with a name; the caller adds the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is required")]
    Empty,
    #[error("{0} bytes is over the limit of {MAX_NAME}")]
    TooLong(usize),
    #[error(
        "{0} must consist of lowercase letters, digits and '-', and start and end with a letter or digit"
    )]
    Chars(String),
}

/// Lowercase letters, digits and '-', starting and ending with a letter or digit, at
/// most 63 characters: a DNS label, so the name can be a hostname.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong(name.len()));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = !name.starts_with('-') && !name.ends_with('-');
    if !ok_chars || !ends_ok {
        return Err(NameError::Chars(quote(name)));
    }
    Ok(())
}
