//! Names on the server: streams and subjects from the prefix.

/// Names derived from the prefix.
#[derive(Debug, Clone)]
pub(super) struct Names {
    pub(super) prefix: String,
    pub(super) payloads: String,
    pub(super) results: String,
    pub(super) dlq: String,
    pub(super) blobs: String,
    /// Payload events put up again for a replay.
    pub(super) replay: String,
    /// The replays, a key-value bucket.
    pub(super) replays: String,
    /// Results by content key, a key-value bucket.
    pub(super) scanned: String,
    /// What each node's worker groups run, a key-value bucket.
    pub(super) nodes: String,
}

impl Names {
    pub(super) fn new(prefix: &str) -> Self {
        let upper = prefix.to_ascii_uppercase().replace('-', "_");
        Names {
            prefix: prefix.to_owned(),
            payloads: format!("{upper}_PAYLOADS"),
            results: format!("{upper}_RESULTS"),
            dlq: format!("{upper}_DLQ"),
            blobs: format!("{upper}_BLOBS"),
            replay: format!("{upper}_REPLAY"),
            replays: format!("{upper}_REPLAYS"),
            scanned: format!("{upper}_SCANNED"),
            nodes: format!("{upper}_NODES"),
        }
    }
}

/// What a published message's headers (its id) may take of the server's
/// message size limit.
pub(super) const HEADER_ROOM: usize = 1024;

#[cfg(test)]
mod tests {
    use async_nats::HeaderMap;

    use super::*;
    use crate::token::{header_value, MAX_HEADER_VALUE};

    #[test]
    fn a_reason_echoing_crlf_makes_a_valid_header() {
        let reason = format!(
            "unknown variant `x\r\nTrawl-Forged: 1\r\n`{}",
            "é".repeat(800)
        );
        let v = header_value(&reason);
        assert!(!v.contains(['\r', '\n']));
        assert!(v.len() <= MAX_HEADER_VALUE);
        let mut headers = HeaderMap::new();
        headers.insert("Trawl-Reason", v.as_str());
        assert_eq!(headers.get("Trawl-Reason").unwrap().as_str(), v);
    }

    #[test]
    fn stream_names_come_from_the_prefix() {
        assert_eq!(Names::new("trawl-test").payloads, "TRAWL_TEST_PAYLOADS");
    }
}
