//! NATS JetStream transport: payload events in a stream,
//! payload bytes in an object store keyed by sha256, results in a second
//! stream, one durable pull consumer per worker group and per connector,
//! and a dead-letter stream for what cannot be handled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use trawl_core::{wire, BlobRef, PayloadEvent, ResultEvent};

use crate::{ConsumerOptions, Subscription, Transport, TransportError};

mod batch;
mod blobs;
mod factory;
mod naming;
mod params;
mod provision;
mod pull;
mod replay;

pub(crate) use factory::JetStreamFactory;
pub use params::JetStreamParams;

use crate::fetched::{BlobReads, Fetched};
use crate::token::header_value;
use crate::token::token;
use naming::{Names, HEADER_ROOM};
use pull::JetStreamSubscription;

/// The server's own delivery limit on every consumer: none. The caller
/// counts deliveries and sets a message aside past its `max_deliver`; were
/// the server to stop at the same count, a message whose set-aside failed
/// (the dead-letter stream full or away) would never be offered again.
const UNLIMITED_DELIVERIES: i64 = -1;

#[derive(Clone)]
pub struct JetStreamTransport {
    js: jetstream::Context,
    blobs: blobs::Blobs,
    /// Live results, published several to a message.
    results: batch::Batcher,
    fetched: Arc<Fetched>,
    /// Results by content key, shared by every node (nodes only).
    scanned: Option<async_nats::jetstream::kv::Store>,
    pace: Arc<crate::pace::Pace>,
    names: Arc<Names>,
    inline_limit: usize,
    closed: Arc<AtomicBool>,
    shutdown: Arc<Notify>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Unavailable(format!("{what}: {e}"))
}

impl JetStreamTransport {
    /// The server refuses a message over its limit every time it is sent:
    /// the caller is told so, rather than retrying forever.
    fn fits(&self, size: usize) -> Result<(), TransportError> {
        let limit = self.js.client().server_info().max_payload;
        if limit > 0 && size + HEADER_ROOM > limit {
            return Err(TransportError::TooLarge {
                size,
                limit: limit.saturating_sub(HEADER_ROOM),
            });
        }
        Ok(())
    }

    async fn publish(
        &self,
        subject: String,
        id: &str,
        payload: Bytes,
    ) -> Result<(), TransportError> {
        self.fits(payload.len())?;
        let message = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(id);
        self.publish_stored(subject, message, "publish").await
    }

    /// Publish `message` and wait until its stream has stored it; `what`
    /// names the step in errors.
    async fn publish_stored(
        &self,
        subject: String,
        message: jetstream::message::PublishMessage,
        what: &str,
    ) -> Result<(), TransportError> {
        let ack = self
            .js
            .send_publish(subject, message)
            .await
            .map_err(|e| unavailable(what, e))?;
        ack.await
            .map_err(|e| unavailable(&format!("{what} ack"), e))?;
        Ok(())
    }

    async fn subscribe(
        &self,
        stream: &str,
        durable: String,
        filter: String,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        // Worker groups on the payload stream share fetched bytes.
        let paced = stream == self.names.payloads;
        let batched = stream == self.names.results;
        let stream = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| unavailable(&format!("stream {stream}"), e))?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: filter,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: options.ack_wait,
                max_deliver: UNLIMITED_DELIVERIES,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&format!("consumer {durable}"), e))?;
        let pace = paced.then(|| self.pace.join(&durable));
        Ok(Arc::new(JetStreamSubscription::new(
            self.clone(),
            consumer,
            options.prefetch,
            durable,
            pace,
            batched,
        )))
    }

    /// How stored payload bytes reached this node's worker groups so far.
    pub fn blob_reads(&self) -> BlobReads {
        self.fetched.reads()
    }
}

#[async_trait]
impl Transport for JetStreamTransport {
    async fn status(&self) -> Result<Option<crate::TransportStatus>, TransportError> {
        JetStreamTransport::status(self).await.map(Some)
    }

    async fn publish_payload(
        &self,
        mut event: PayloadEvent,
        data: Bytes,
    ) -> Result<(), TransportError> {
        // Inline bytes leave room in the message for the event's metadata.
        let room = match self.js.client().server_info().max_payload {
            0 => self.inline_limit,
            limit => self.inline_limit.min(limit / 2),
        };
        if data.len() <= room {
            event.blob = BlobRef::Inline(data.to_vec());
        } else {
            let key = event.sha256.clone();
            // Stored once however many sensors see the file.
            if !self.blobs.exists(&key).await? {
                self.blobs.put(&key, &data).await?;
            }
            event.blob = BlobRef::Store(key);
        }
        let subject = format!(
            "{}.payload.{}.{}",
            self.names.prefix,
            event.source.kind.as_str(),
            token(&event.source.sensor)
        );
        let id = event.ingest_key.clone().unwrap_or_else(|| event.id.clone());
        let encoded = Bytes::from(wire::encode(&event)?);
        self.publish(subject, &id, encoded).await
    }

    async fn fetch_blob(&self, blob: &BlobRef) -> Result<Bytes, TransportError> {
        match blob {
            BlobRef::Inline(data) => Ok(Bytes::copy_from_slice(data)),
            BlobRef::Store(key) => self.fetched.get(key, || self.blobs.get(key)).await,
            other => Err(crate::stored_elsewhere(other)),
        }
    }

    async fn publish_result(&self, result: &ResultEvent) -> Result<(), TransportError> {
        let subject = self.result_subject(result);
        let encoded = Bytes::from(wire::encode(result)?);
        // A re-publish of the same result is dropped as a duplicate; a new
        // outcome (the verdict after an error that asked for a retry) is not.
        let id = format!("{}.{}", result.id, result.outcome.status.as_str());
        if result.replay_id.is_some() {
            return self.publish(subject, &id, encoded).await;
        }
        self.fits(encoded.len())?;
        self.results.publish(subject, id, encoded).await
    }

    async fn payloads(
        &self,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        let filter = format!("{}.payload.>", self.names.prefix);
        self.subscribe(
            &self.names.payloads,
            format!("worker-{}", token(group)),
            filter,
            options,
        )
        .await
    }

    async fn replays(
        &self,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Option<Arc<dyn Subscription>>, TransportError> {
        Ok(Some(self.follow_replays(group, options)))
    }

    async fn results_of(
        &self,
        group: &str,
        worker: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        let filter = format!("{}.result.{}", self.names.prefix, token(worker));
        self.subscribe(
            &self.names.results,
            format!("worker-{}", token(group)),
            filter,
            options,
        )
        .await
    }

    async fn results(
        &self,
        name: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        let filter = format!("{}.result.>", self.names.prefix);
        self.subscribe(
            &self.names.results,
            format!("connector-{}", token(name)),
            filter,
            options,
        )
        .await
    }

    async fn announce(&self, state: &crate::GroupState) -> Result<(), TransportError> {
        let key = format!("{}.{}", token(&state.node), token(&state.group));
        self.put_node_entry(key, state).await
    }

    async fn announce_node(&self, state: &crate::NodeState) -> Result<(), TransportError> {
        self.put_node_entry(token(&state.node), state).await
    }

    fn result_cache(&self) -> Option<Arc<dyn crate::ResultCache>> {
        let kv = self.scanned.clone()?;
        Some(Arc::new(ScannedBucket(kv)))
    }

    fn close(&self) {
        self.fetched.report();
        self.closed.store(true, Ordering::SeqCst);
        self.shutdown.notify_waiters();
    }
}

impl JetStreamTransport {
    /// One entry of the nodes bucket: `NODE` for a node's counters,
    /// `NODE.GROUP` for a group's state (tokens never hold dots).
    async fn put_node_entry(
        &self,
        key: String,
        value: &impl serde::Serialize,
    ) -> Result<(), TransportError> {
        let bucket = self
            .js
            .get_key_value(&self.names.nodes)
            .await
            .map_err(|e| unavailable("nodes bucket", e))?;
        let value = serde_json::to_vec(value).expect("a node entry serialises");
        bucket
            .put(key, Bytes::from(value))
            .await
            .map_err(|e| unavailable("nodes bucket", e))?;
        Ok(())
    }
}

/// The smallest payload looked up in [`ScannedBucket`].
const SHARED_LOOKUP_FROM: u64 = 64 * 1024;

/// Results by content key in a bucket every node shares.
struct ScannedBucket(async_nats::jetstream::kv::Store);

#[async_trait]
impl crate::ResultCache for ScannedBucket {
    /// A lookup and a store are two round trips to the server: about 110 µs
    /// of CPU between client and server (`trawl bench --jetstream`, with and
    /// without), what the hash worker spends on 48 KiB, so smaller payloads
    /// are simply scanned.
    fn worth_from(&self) -> u64 {
        SHARED_LOOKUP_FROM
    }

    async fn get(&self, key: &str) -> Result<Option<ResultEvent>, TransportError> {
        let value = self
            .0
            .get(key)
            .await
            .map_err(|e| unavailable("results bucket", e))?;
        // Anything unreadable is a miss: the payload is scanned.
        Ok(value.and_then(|v| wire::decode(&v).ok()))
    }

    async fn put(&self, key: &str, result: &ResultEvent) -> Result<(), TransportError> {
        let encoded = Bytes::from(wire::encode(result)?);
        self.0
            .put(key, encoded)
            .await
            .map_err(|e| unavailable("results bucket", e))?;
        Ok(())
    }
}
