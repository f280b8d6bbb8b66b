use crate::ResultEvent;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    /// Worth retrying later: the store is unreachable, busy, or full for now.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    /// The store refused the data; retrying the same batch will not help.
    #[error("datastore rejected the write: {0}")]
    Rejected(String),
    #[error("cannot open datastore {target}: {reason}")]
    Open { target: String, reason: String },
}

impl ConnectorError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectorError::Unavailable(_))
    }
}

/// Persists results. `write` returns only once the store has confirmed the batch:
/// the caller acknowledges the results to the transport after that, never before.
#[async_trait::async_trait]
pub trait Connector: Send + 'static {
    fn name(&self) -> &str;

    /// Upsert by result id: writing the same result twice leaves one record.
    async fn write(&mut self, batch: &[ResultEvent]) -> Result<(), ConnectorError>;

    /// Whether the store answers now; asked while no results come, for the
    /// node's health. A store in a local file always does.
    async fn reachable(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}
