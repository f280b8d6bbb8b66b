//! trawl's shared vocabulary: the events that cross the transport, their wire
//! codec, and the plugin traits that scanners and connectors implement.

mod check;
mod connector;
mod model;
mod scanner;
pub mod wire;

pub use check::Invalid;
pub use connector::{Connector, ConnectorError};
pub use model::{
    result_id, BlobRef, Flow, Lineage, Outcome, OutcomeStatus, PayloadEvent, PayloadMeta,
    PayloadSummary, ResultEvent, SourceInfo, SourceKind, TreeBudget, WorkerInfo, WIRE_VERSION,
};
pub use scanner::{ChildPayload, RuleMatch, ScanError, ScanInput, ScanOutput, Scanner};

/// Hex-encoded SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Wait before retry number `attempt` (1-based) of an operation on a service
/// that is away: 200 ms, doubling, at most 30 s.
pub fn retry_delay(attempt: u32) -> std::time::Duration {
    (std::time::Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(9)))
        .min(std::time::Duration::from_secs(30))
}
