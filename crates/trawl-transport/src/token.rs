//! Names and header values from free text (sensor, worker and connector
//! names; reasons that may quote a crafted message) for the brokers'
//! subjects, routing keys, queue names and message headers.

/// A name token: letters, digits, `-` and `_` kept, anything else (dots,
/// wildcards, spaces) made `_`, so a crafted name cannot reach other
/// subjects or bindings.
pub(crate) fn token(text: &str) -> String {
    let t: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// The prefix of every name a broker transport makes (`trawl`).
pub(crate) fn default_prefix() -> String {
    "trawl".into()
}

/// A `prefix` key: one name token, so the names made from it stay apart.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if prefix.is_empty() || !prefix.chars().all(token) {
        return Err(format!(
            "prefix: {prefix:?} must be letters, digits, '_' or '-'"
        ));
    }
    Ok(())
}

/// Longest reason header kept: the reason also lands in the error result.
pub(crate) const MAX_HEADER_VALUE: usize = 1024;

/// A header value from text that may echo a crafted message (decode errors
/// quote what they read): control characters, CR and LF among them, would
/// break the header block, so they become spaces, and the value is capped.
pub(crate) fn header_value(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    out.truncate(out.floor_char_boundary(MAX_HEADER_VALUE));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_carry_wildcards_or_dots() {
        assert_eq!(token("sensor.1 *>"), "sensor_1___");
        assert_eq!(token("#"), "_");
        assert_eq!(token(""), "_");
    }
}
