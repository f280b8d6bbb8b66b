//! RabbitMQ transport (AMQP 0-9-1 through lapin): payload events on a
//! fanout exchange, results on a topic exchange, a quorum queue per worker
//! group and per connector shared by every node that runs it, a
//! dead-letter exchange and queue, publisher confirms on every publish.
//!
//! Small payloads travel inside their event; larger ones are stored once,
//! in parts, in a stream of the publishing node's (`blobs.rs`), and the
//! event carries where.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use tokio::sync::Notify;
use trawl_core::{wire, BlobRef, PayloadEvent, ResultEvent};

use crate::fetched::{BlobReads, Fetched};
use crate::token::token;
use crate::{ConsumerOptions, Subscription, Transport, TransportError};

mod blobs;
mod consume;
mod factory;
mod link;
mod log;
mod names;
mod params;
mod replay;
mod status;
mod tls;

pub(crate) use factory::RabbitFactory;
pub use params::RabbitParams;

use blobs::{BlobLog, Paces};
use consume::{QueueSpec, RabbitSubscription};
use link::{unavailable, Link};
use names::Names;

#[derive(Clone)]
pub struct RabbitTransport {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    names: Names,
    params: RabbitParams,
    blobs: BlobLog,
    fetched: Fetched,
    paces: Paces,
    closed: AtomicBool,
    shutdown: Notify,
}

impl RabbitTransport {
    /// Connect (waiting while no broker answers) and declare the exchanges
    /// and dead-letter queue; a broker that refuses the credentials is an
    /// error at once.
    pub async fn connect(params: &RabbitParams, node: &str) -> Result<Self, TransportError> {
        let t = Self::new(params, node, true)?;
        t.inner.link.connect_patiently().await?;
        Ok(t)
    }

    /// Reach what nodes declared, declaring nothing (for `trawl status`).
    pub async fn attach(params: &RabbitParams, node: &str) -> Result<Self, TransportError> {
        let t = Self::new(params, node, false)?;
        t.inner.link.connection().await?;
        Ok(t)
    }

    fn new(params: &RabbitParams, node: &str, provision: bool) -> Result<Self, TransportError> {
        params.validate().map_err(TransportError::Refused)?;
        let names = Names::new(&params.prefix);
        Ok(RabbitTransport {
            inner: Arc::new(Inner {
                link: Link::new(params.clone(), names.clone(), node, provision),
                names,
                params: params.clone(),
                blobs: BlobLog::new(node, params.max_message),
                fetched: Fetched::new(params.blob_cache),
                paces: Paces::new(params.group_lead),
                closed: AtomicBool::new(false),
                shutdown: Notify::new(),
            }),
        })
    }

    /// How stored payload bytes reached this node's worker groups so far.
    pub fn blob_reads(&self) -> BlobReads {
        self.inner.fetched.reads()
    }

    /// Publish and wait for the broker's confirm.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        id: Option<&str>,
        headers: Option<FieldTable>,
    ) -> Result<(), TransportError> {
        let confirm = self.send(exchange, routing_key, body, id, headers).await?;
        let target = if exchange.is_empty() {
            routing_key
        } else {
            exchange
        };
        settle(confirm, target).await
    }

    /// Hand a message to the broker, persistent and `mandatory` (a message
    /// no queue takes comes back, and is an error rather than a silent
    /// drop); the confirm is the caller's to await.
    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        id: Option<&str>,
        headers: Option<FieldTable>,
    ) -> Result<PublisherConfirm, TransportError> {
        let limit = self.inner.params.max_message;
        if body.len() > limit {
            return Err(TransportError::TooLarge {
                size: body.len(),
                limit,
            });
        }
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(now)
            .with_content_type("application/msgpack".into());
        if let Some(id) = id {
            properties = properties.with_message_id(id.into());
        }
        if let Some(headers) = headers {
            properties = properties.with_headers(headers);
        }
        let channel = self.inner.link.publisher().await?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await
            .map_err(|e| unavailable(&format!("publish to {exchange}"), e))
    }

    async fn subscribe(
        &self,
        exchange: &str,
        consumer: String,
        binding: String,
        options: ConsumerOptions,
        paced: bool,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        let paced = paced.then(|| consumer.clone());
        let spec = QueueSpec {
            queue: Names::queue(exchange, &consumer).into(),
            source: Some((exchange.to_owned(), binding)),
            delivery_limit: delivery_limit(&options),
            prefetch: read_ahead(&options),
        };
        Ok(Arc::new(
            RabbitSubscription::start(self.clone(), spec, paced).await?,
        ))
    }
}

/// The broker's `x-delivery-limit` for a consumer's queue: one past
/// `max_deliver`, so the delivery past the limit reaches the caller, which
/// records it and sets the message aside with its reason; the broker's own
/// dead-lettering is for a message whose last delivery was lost too.
pub(super) fn delivery_limit(options: &ConsumerOptions) -> u32 {
    options.max_deliver.saturating_add(1)
}

/// Deliveries held for this node's members of a group: twice the members,
/// so the next one is already here when a member acks (the broker sends
/// more only after an ack).
pub(super) fn read_ahead(options: &ConsumerOptions) -> u16 {
    u16::try_from(options.prefetch.saturating_mul(2)).unwrap_or(u16::MAX)
}

/// Await the broker's word on a message sent to `exchange` (or, through
/// the default exchange, to the queue it names).
async fn settle(confirm: PublisherConfirm, exchange: &str) -> Result<(), TransportError> {
    let confirm = confirm
        .await
        .map_err(|e| unavailable(&format!("publish to {exchange}"), e))?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(TransportError::Unavailable(format!(
            "no queue is bound to exchange {exchange} yet: start the nodes that consume it (a worker group's or connector's queue, once made, keeps messages while its nodes are down)"
        ))),
        Confirmation::Nack(_) => Err(TransportError::Unavailable(format!(
            "the broker did not store a message for {exchange} (nack)"
        ))),
        Confirmation::NotRequested => Err(TransportError::Unavailable(
            "publisher confirms are off on the publish channel".into(),
        )),
    }
}

#[async_trait]
impl Transport for RabbitTransport {
    async fn status(&self) -> Result<Option<crate::TransportStatus>, TransportError> {
        RabbitTransport::status(self).await.map(Some)
    }

    async fn announce(&self, state: &crate::GroupState) -> Result<(), TransportError> {
        RabbitTransport::announce(self, state).await
    }

    async fn announce_node(&self, state: &crate::NodeState) -> Result<(), TransportError> {
        RabbitTransport::announce(self, state).await
    }

    async fn publish_payload(
        &self,
        mut event: PayloadEvent,
        data: Bytes,
    ) -> Result<(), TransportError> {
        event.blob = if data.len() <= self.inner.params.inline_limit {
            BlobRef::Inline(data.to_vec())
        } else {
            self.put_blob(&event.sha256, &data).await?
        };
        let placement = blobs::placement(&event.blob);
        let body = wire::encode(&event)?;
        let id = event.ingest_key.as_deref().unwrap_or(&event.id);
        let key = format!(
            "{}.{}",
            event.source.kind.as_str(),
            token(&event.source.sensor)
        );
        let names = &self.inner.names;
        // Both confirms are awaited together; a retry after a failure of
        // either may log the event twice, which a replay reads once.
        tokio::try_join!(
            self.publish(&names.payloads, &key, &body, Some(id), placement),
            self.append(&names.payload_log, &body, None),
        )
        .map(drop)
    }

    async fn fetch_blob(&self, blob: &BlobRef) -> Result<Bytes, TransportError> {
        match blob {
            BlobRef::Inline(data) => Ok(Bytes::copy_from_slice(data)),
            BlobRef::Log {
                log,
                key,
                offset,
                parts,
            } => {
                let fetch = || self.fetch_log(log, key, *offset, *parts);
                self.inner.fetched.get(key, fetch).await
            }
            other => Err(crate::stored_elsewhere(other)),
        }
    }

    async fn publish_result(&self, result: &ResultEvent) -> Result<(), TransportError> {
        let body = wire::encode(result)?;
        let mut key = format!(
            "{}.{}",
            token(&result.worker.name),
            result.outcome.status.as_str()
        );
        let names = &self.inner.names;
        let tag = result.replay_id.as_deref().map(|id| {
            // A group that scans another's matches binds `<worker>.*`,
            // so it is not handed a replay's results again.
            key.push_str(".replay");
            replay::tagged(id)
        });
        tokio::try_join!(
            self.publish(&names.results, &key, &body, Some(&result.id), tag.clone()),
            self.append(&names.result_log, &body, tag),
        )
        .map(drop)
    }

    async fn replays(
        &self,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Option<Arc<dyn Subscription>>, TransportError> {
        Ok(Some(self.follow_replays(group, options)))
    }

    async fn payloads(
        &self,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        self.subscribe(
            &self.inner.names.payloads,
            format!("worker-{}", token(group)),
            String::new(),
            options,
            true,
        )
        .await
    }

    async fn results_of(
        &self,
        group: &str,
        worker: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        self.subscribe(
            &self.inner.names.results,
            format!("worker-{}", token(group)),
            format!("{}.*", token(worker)),
            options,
            false,
        )
        .await
    }

    async fn results(
        &self,
        name: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        self.subscribe(
            &self.inner.names.results,
            format!("connector-{}", token(name)),
            "#".into(),
            options,
            false,
        )
        .await
    }

    fn close(&self) {
        self.inner.fetched.report();
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.shutdown.notify_waiters();
    }
}
