//! trawl's shared vocabulary: the events that cross the transport, their wire
//! codec, and the plugin traits that scanners and connectors implement.

mod backoff;
mod check;
mod connector;
mod model;
mod scanner;
pub mod wire;

pub use backoff::Backoff;
pub use check::Invalid;
pub use connector::{Connector, ConnectorError};
pub use model::{
    result_id, BlobRef, Flow, Lineage, Outcome, OutcomeStatus, PayloadEvent, PayloadMeta,
    PayloadSummary, ResultEvent, SourceInfo, SourceKind, TreeBudget, WorkerInfo, WIRE_VERSION,
};
pub use scanner::{
    problems_in_brief, ChildPayload, Reload, RuleMatch, ScanError, ScanInput, ScanOutput, Scanner,
};

/// Hex-encoded SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
