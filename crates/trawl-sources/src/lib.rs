//! trawl's sources: they find complete files and publish one payload event each.

mod archive;
mod dir;
mod factory;
mod files;
mod ingest;
mod record;
mod suricata;
mod tail;
#[cfg(test)]
mod test_support;
mod walk;
mod watch;
mod zeek;

use std::sync::Arc;

use async_trait::async_trait;

use trawl_transport::Transport;

pub use archive::{Archive, ArchiveError, Selection};
pub use factory::{SourceFactory, SourceRegistry};
pub use ingest::{
    ingest_error_result, ingest_file, publish_file, read_file, IngestError, Origin, ReadAhead,
    ReadFile, INGEST_WORKER,
};

/// Every source this build carries, by `type`.
pub fn builtin_sources() -> SourceRegistry {
    let mut registry = SourceRegistry::new("source");
    registry.add("archive", Box::new(archive::ArchiveFactory));
    registry.add("dir", Box::new(dir::DirFactory));
    registry.add("files", Box::new(files::FilesFactory));
    registry.add("suricata", Box::new(suricata::SuricataFactory));
    registry.add("zeek", Box::new(zeek::ZeekFactory));
    registry
}
pub use walk::{walk, WalkIssue, Walked};
pub use watch::{SourceStats, WatchParams};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("source {name}: {reason}")]
    Setup { name: String, reason: String },
    #[error("source {name}: transport: {source}")]
    Transport {
        name: String,
        source: trawl_transport::TransportError,
    },
}

/// What a running source needs from its node.
#[derive(Clone)]
pub struct SourceContext {
    pub transport: Arc<dyn Transport>,
    /// The node's name, stamped on ingest error results.
    pub node: String,
    /// Turns true when the source must finish its current file and return.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Shared by the node's sources, read for its reports.
    pub stats: Arc<SourceStats>,
}

/// A source runs until shutdown, publishing each complete file it finds.
#[async_trait]
pub trait Source: Send + Sync {
    fn name(&self) -> &str;

    async fn run(&self, ctx: SourceContext) -> Result<(), SourceError>;
}
