//! Kubernetes-style resource quantities: CPU in cores or millicores, memory in bytes with
//! binary (Ki, Mi, Gi, Ti) or decimal (k, M, G, T) suffixes.

use crate::validate::quote::quote;

/// Errors from parsing a quantity; the caller adds the field path. Each holds the value
/// quoted short ([`quote`]): a refused value can be megabytes long.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error("{0} is not a CPU quantity such as \"2\", \"0.5\" or \"500m\"")]
    Cpu(String),
    #[error("{0} is not a memory quantity such as \"512Mi\", \"2Gi\" or \"1G\"")]
    Memory(String),
    #[error("{0} is too large")]
    TooLarge(String),
}

/// Parses a CPU quantity into millicores. "1" = 1000, "0.5" = 500, "250m" = 250.
/// Fractions finer than a millicore are refused, as Kubernetes does.
pub fn parse_cpu_millis(s: &str) -> Result<u64, QuantityError> {
    let bad = || QuantityError::Cpu(quote(s));
    let s_trim = s.trim();
    if let Some(m) = s_trim.strip_suffix('m') {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        return m
            .parse::<u64>()
            .map_err(|_| QuantityError::TooLarge(quote(s)));
    }
    let (units, millis) = decimal_parts(s_trim, 3).ok_or_else(bad)?;
    units
        .checked_mul(1000)
        .and_then(|u| u.checked_add(millis))
        .ok_or_else(|| QuantityError::TooLarge(quote(s)))
}

/// Parses a memory quantity into bytes. "0.5Gi" is allowed when it is a whole byte count.
pub fn parse_memory_bytes(s: &str) -> Result<u64, QuantityError> {
    let bad = || QuantityError::Memory(quote(s));
    let s_trim = s.trim();
    let suffixes: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (num, mult) = suffixes
        .iter()
        .find_map(|(suf, mult)| s_trim.strip_suffix(suf).map(|n| (n, *mult)))
        .unwrap_or((s_trim, 1));
    // Up to 9 fractional digits is plenty for any multiplier above.
    let (units, nanos) = decimal_parts(num, 9).ok_or_else(bad)?;
    let whole = units.checked_mul(mult);
    let frac = u128::from(nanos) * u128::from(mult);
    if frac % 1_000_000_000 != 0 {
        return Err(bad());
    }
    let frac = u64::try_from(frac / 1_000_000_000).map_err(|_| bad())?;
    whole
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| QuantityError::TooLarge(quote(s)))
}

/// Splits "12.345" into (12, 345 scaled to `digits` places). None when not a plain
/// non-negative decimal or when it has more fractional digits than `digits`.
fn decimal_parts(s: &str, digits: u32) -> Option<(u64, u64)> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !all_digits(frac) || frac.len() > digits as usize {
        return None;
    }
    let int = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_val = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().ok()? * 10u64.pow(digits - frac.len() as u32)
    };
    Some((int, frac_val))
}

/// Formats millicores the way a person writes them: "8", "0.5" stays "500m".
pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Formats bytes with the largest binary suffix that divides them exactly.
pub fn format_memory(bytes: u64) -> String {
    for (suf, mult) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{suf}", bytes / mult);
        }
    }
    bytes.to_string()
}

/// Memory for messages: exact binary units when they divide, else one decimal ("19.5Gi").
pub fn human_memory(bytes: u64) -> String {
    for (suf, mult) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= mult {
            if bytes.is_multiple_of(mult) {
                return format!("{}{suf}", bytes / mult);
            }
            return format!("{:.1}{suf}", bytes as f64 / mult as f64);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis(".25"), Ok(250));
        assert!(parse_cpu_millis("0.0005").is_err());
        assert!(parse_cpu_millis("-1").is_err());
        assert!(parse_cpu_millis("1 core").is_err());
        assert!(parse_cpu_millis("").is_err());
        assert!(parse_cpu_millis("m").is_err());
        assert_eq!(format_cpu(8000), "8");
        assert_eq!(format_cpu(500), "500m");
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_memory_bytes("0.5Gi"), Ok(512 << 20));
        assert_eq!(parse_memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory_bytes("1024"), Ok(1024));
        assert!(parse_memory_bytes("2GB").is_err());
        assert!(parse_memory_bytes("lots").is_err());
        assert!(parse_memory_bytes("0.3").is_err());
        assert_eq!(
            parse_memory_bytes("99999999999999Ti"),
            Err(QuantityError::TooLarge("\"99999999999999Ti\"".into()))
        );
        assert_eq!(format_memory(16 << 30), "16Gi");
        assert_eq!(format_memory(1536 << 20), "1536Mi");
    }
}
