//! The transport contract every node talks through, and its implementations:
//! `memory` (in one process, the embedded mode), `jetstream` and `rabbitmq`.
//!
//! Semantics follow JetStream (docs/ARCHITECTURE.md, "Transport contract")
//! so that code written against one transport behaves the same on the
//! others: events fan out to every consumer, each consumer shares its
//! messages between its members, a message is gone only once acknowledged,
//! and one dropped without an ack is delivered again.

mod bounded;
mod dedup;
mod factory;
mod fetched;
mod jetstream;
mod memory;
mod pace;
mod rabbitmq;
mod replay;
mod token;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use trawl_core::{BlobRef, PayloadEvent, ResultEvent};

pub use dedup::{cache_key, ResultCache};
pub use factory::{TransportFactory, TransportRegistry};
pub use fetched::BlobReads;
pub use jetstream::{JetStreamParams, JetStreamTransport};
pub use memory::{MemoryParams, MemoryTransport};
pub use rabbitmq::{RabbitParams, RabbitTransport};
pub use replay::{ReplayProgress, ReplayRecord, ReplayRequest, ReplayState, Replays};

/// Every transport this build carries, by `type`.
pub fn builtin_transports() -> TransportRegistry {
    let mut registry = TransportRegistry::new("transport");
    registry.add("memory", Box::new(memory::MemoryFactory));
    registry.add("jetstream", Box::new(jetstream::JetStreamFactory));
    registry.add("rabbitmq", Box::new(rabbitmq::RabbitFactory));
    registry
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("transport is shut down")]
    Closed,
    #[error("payload bytes {0} are not in the blob store (aged out past the store's max_age, or removed)")]
    BlobMissing(String),
    /// The stored bytes are not what their sha256 names: reading them again
    /// will not help.
    #[error("payload bytes {key} in the blob store are corrupt: {why}")]
    BlobCorrupt { key: String, why: String },
    #[error("cannot encode event: {0}")]
    Wire(#[from] trawl_core::wire::WireError),
    #[error("transport unavailable: {0}")]
    Unavailable(String),
    /// A stream or store that only a node creates is not on the server.
    #[error("{0} does not exist on the server yet: a node creates it when it starts")]
    Missing(String),
    /// A request the transport will not carry out, and why.
    #[error("{0}")]
    Refused(String),
    /// The event is larger than the transport carries, now and always.
    #[error("event of {size} bytes is over the transport's {limit}-byte message limit")]
    TooLarge { size: usize, limit: usize },
}

/// The answer of a transport asked for bytes another kind of transport
/// stored (a node on a broker it was not configured for).
fn stored_elsewhere(blob: &BlobRef) -> TransportError {
    let place = match blob {
        BlobRef::Inline(_) => "the event",
        BlobRef::Store(_) => "a JetStream object store",
        BlobRef::Log { .. } => "a RabbitMQ stream",
    };
    TransportError::Refused(format!(
        "payload bytes in {place}, which this node's transport does not read: give every node the same [transport]"
    ))
}

/// Publish `result`; one too large for the transport goes as its trimmed
/// error record instead (same id, no findings), so it is never retried forever.
pub async fn publish_result_fitting(
    transport: &dyn Transport,
    result: &ResultEvent,
) -> Result<(), TransportError> {
    match transport.publish_result(result).await {
        Err(e @ TransportError::TooLarge { .. }) => {
            tracing::warn!(result = %result.id, worker = %result.worker.name, error = %e, "result too large; publishing its error record instead");
            let trimmed = result.refused(&format!("{e}; findings dropped"));
            transport.publish_result(&trimmed).await
        }
        other => other,
    }
}

/// What `trawl status` shows of a transport.
#[derive(Debug, Clone)]
pub struct TransportStatus {
    pub streams: Vec<StreamStatus>,
    /// Each node's worker groups, as they last announced themselves.
    pub groups: Vec<GroupState>,
    /// Each node's counters, as it last announced them.
    pub nodes: Vec<NodeState>,
}

/// What one node has done since it started, announced by the node.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeState {
    pub node: String,
    /// The counters its progress log and `/metrics` show, by name.
    pub counters: std::collections::BTreeMap<String, u64>,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// What one node's worker group runs, announced by the node.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupState {
    pub node: String,
    pub group: String,
    pub version: String,
    /// The ruleset in use.
    #[serde(default)]
    pub ruleset: Option<String>,
    /// Why the last change to the rules was not loaded, until one is.
    #[serde(default)]
    pub rules_error: Option<String>,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// One stream's (or queue's) numbers, for `trawl status`.
#[derive(Debug, Clone)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub first: Option<String>,
    pub last: Option<String>,
    pub consumers: Vec<ConsumerStatus>,
}

/// One consumer group's numbers on a stream.
#[derive(Debug, Clone)]
pub struct ConsumerStatus {
    pub name: String,
    /// Messages not yet delivered to the group.
    pub pending: u64,
    /// Delivered and not yet acknowledged.
    pub ack_pending: usize,
    pub redelivered: usize,
    /// Consumers reading it, where the transport tells.
    pub members: Option<u64>,
}

/// How a consumer group reads.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Deliveries of one message that may end without its result. The caller
    /// turns the delivery past this limit into an error result and sets the
    /// message aside; a message whose set-aside failed is offered again
    /// until set aside (JetStream, in-process), or is dead-lettered by the
    /// broker (RabbitMQ), never dropped.
    pub max_deliver: u32,
    /// How long a delivered message may go without an ack before it is redelivered.
    pub ack_wait: Duration,
    /// Messages fetched ahead for this node's members of the group.
    pub prefetch: usize,
}

impl ConsumerOptions {
    pub fn new(max_deliver: u32, ack_wait: Duration, prefetch: usize) -> Self {
        ConsumerOptions {
            max_deliver,
            ack_wait,
            prefetch: prefetch.max(1),
        }
    }
}

#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Store the payload's bytes (once per sha256) and publish its event.
    /// The transport decides `event.blob`: inline for small payloads, else a store key.
    async fn publish_payload(&self, event: PayloadEvent, data: Bytes)
        -> Result<(), TransportError>;

    async fn fetch_blob(&self, blob: &BlobRef) -> Result<Bytes, TransportError>;

    async fn publish_result(&self, result: &ResultEvent) -> Result<(), TransportError>;

    /// Join worker group `group` on the payload events.
    async fn payloads(
        &self,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError>;

    /// Join worker group `group` on the replays that name it (see
    /// [`Replays`]); `None` where the transport keeps no payloads to replay.
    async fn replays(
        &self,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Option<Arc<dyn Subscription>>, TransportError> {
        let _ = (group, options);
        Ok(None)
    }

    /// Join worker group `group` on the result events of worker group
    /// `worker` (for a group that scans what another group matched).
    async fn results_of(
        &self,
        group: &str,
        worker: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError>;

    /// Join connector `name` on the result events.
    async fn results(
        &self,
        name: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError>;

    /// Wait up to `timeout` for messages that live only in this process to be
    /// handled, and return how many are left. Durable transports keep
    /// unhandled messages for the next run and return 0 at once.
    async fn drain(&self, timeout: Duration) -> usize {
        let _ = timeout;
        0
    }

    /// Wait until every message of the tree rooted at payload `root_id` (the
    /// payload in every group, what was unpacked from it, and every result)
    /// is handled, so the file it came from may be forgotten. Durable
    /// transports keep what they accepted across a crash of this process and
    /// return at once.
    async fn handled(&self, root_id: &str) -> Result<(), TransportError> {
        let _ = root_id;
        Ok(())
    }

    /// Earlier results by content (see [`ResultCache`]), shared by every
    /// node of this transport; `None`: every payload is scanned.
    fn result_cache(&self) -> Option<Arc<dyn ResultCache>> {
        None
    }

    /// Tell whoever runs `trawl status` what a worker group of this node
    /// runs (its ruleset, and a ruleset that failed to load).
    async fn announce(&self, state: &GroupState) -> Result<(), TransportError> {
        let _ = state;
        Ok(())
    }

    /// Tell whoever runs `trawl status` what this node has done so far.
    async fn announce_node(&self, state: &NodeState) -> Result<(), TransportError> {
        let _ = state;
        Ok(())
    }

    /// The streams (or queues) and their consumer groups, read over this
    /// node's own connection; `None`: the transport has none to report.
    async fn status(&self) -> Result<Option<TransportStatus>, TransportError> {
        Ok(None)
    }

    /// Stop delivering; pending `next()` calls return `None`.
    fn close(&self) {}
}

/// A consumer group membership. Shared by every puller of the group on this node.
#[async_trait]
pub trait Subscription: Send + Sync {
    /// The next message, or `None` once the transport is shut down.
    async fn next(&self) -> Result<Option<Delivery>, TransportError>;

    /// Like `next`, but gives up after `wait` (for batching consumers).
    async fn next_timeout(&self, wait: Duration) -> Result<Option<Delivery>, TransportError> {
        match tokio::time::timeout(wait, self.next()).await {
            Ok(r) => r,
            Err(_) => Ok(None),
        }
    }
}

/// Acknowledgement handle of one delivered message.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), TransportError>;
    /// Tell the transport a long scan is still working on this message.
    async fn in_progress(&self) -> Result<(), TransportError>;
    /// Set the message aside with the reason (a dead-letter stream where the
    /// transport has one), then acknowledge it.
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), TransportError>;
}

/// One delivered message. Dropping it without `ack` or `nak` lets the
/// transport deliver it again, as an expired ack deadline does on JetStream.
pub struct Delivery {
    pub data: Bytes,
    /// 1 on first delivery.
    pub attempt: u32,
    acker: Box<dyn Acker>,
}

impl Delivery {
    pub fn new(data: Bytes, attempt: u32, acker: Box<dyn Acker>) -> Self {
        Delivery {
            data,
            attempt,
            acker,
        }
    }

    pub async fn ack(self) -> Result<(), TransportError> {
        self.acker.ack().await
    }

    pub async fn nak(self, delay: Duration) -> Result<(), TransportError> {
        self.acker.nak(delay).await
    }

    pub async fn in_progress(&self) -> Result<(), TransportError> {
        self.acker.in_progress().await
    }

    pub async fn dead_letter(self, reason: &str) -> Result<(), TransportError> {
        self.acker.dead_letter(reason).await
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("len", &self.data.len())
            .field("attempt", &self.attempt)
            .finish()
    }
}
