//! A consumer group's queue: declared (quorum, delivery limit, dead
//! letters), consumed with a prefetch, consumed again on a new channel
//! whenever the old one is lost; and the acknowledgement of each delivery.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Consumer};
use tokio::sync::{mpsc, Mutex};
use trawl_core::Backoff;

use super::blobs::{placed, Seats};
use super::link::unavailable;
use super::log::number;
use super::RabbitTransport;
use crate::pace::Held;
use crate::token::header_value;
use crate::{Acker, Delivery, Subscription, TransportError};

/// Between tries to consume again after the channel was lost.
const CONSUME_BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));

/// Declare quorum queue `name`: durable, replicated where the broker is
/// a cluster, dead-lettering to `dead` what it gives up on (after
/// `delivery_limit` returns, where there is one).
pub(super) async fn declare_queue(
    channel: &Channel,
    name: &str,
    dead: Option<&str>,
    delivery_limit: Option<u32>,
) -> Result<(), TransportError> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(dead) = dead {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dead.into()),
        );
    }
    if let Some(limit) = delivery_limit {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(limit).unwrap_or(i32::MAX)),
        );
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), options, args)
        .await
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("PRECONDITION_FAILED") {
                // Made earlier with other settings (another max_deliver):
                // the broker keeps a queue's arguments for its life.
                TransportError::Refused(format!(
                    "queue {name} exists with other settings ({text}); give every node of the group the same max_deliver, or delete the queue once it is empty"
                ))
            } else {
                unavailable(&format!("queue {name}"), e)
            }
        })?;
    Ok(())
}

/// One consumer group's queue, and where it gets its messages from.
#[derive(Debug, Clone)]
pub(super) struct QueueSpec {
    pub(super) queue: Arc<str>,
    /// The exchange and binding key the queue is made on; `None`: a queue
    /// someone else made (a replay's), whose consumer ends with it.
    pub(super) source: Option<(String, String)>,
    pub(super) delivery_limit: u32,
    pub(super) prefetch: u16,
}

/// A delivery and the queue it came from.
pub(super) type Fed = (Arc<str>, lapin::message::Delivery);

pub(super) struct RabbitSubscription {
    transport: RabbitTransport,
    deliveries: Mutex<mpsc::Receiver<Fed>>,
    /// Payload subscriptions: this group's places in the node's paces.
    seats: Option<Seats>,
    held: Held<Fed>,
}

impl RabbitSubscription {
    /// Consume `spec`'s queue; the first try's failure (a queue made with
    /// other settings, no permission) is the caller's. `paced`: the group
    /// name under which payloads keep pace with this node's other groups.
    pub(super) async fn start(
        transport: RabbitTransport,
        spec: QueueSpec,
        paced: Option<String>,
    ) -> Result<Self, TransportError> {
        let consumer = consume(&transport, &spec).await?;
        let (tx, rx) = mpsc::channel(usize::from(spec.prefetch.max(1)));
        tokio::spawn(pump(transport.clone(), spec, Some(consumer), tx));
        Ok(Self::fed(transport, rx, paced))
    }

    /// A subscription to what pumps (one or more) put in `rx`.
    pub(super) fn fed(
        transport: RabbitTransport,
        rx: mpsc::Receiver<Fed>,
        paced: Option<String>,
    ) -> Self {
        RabbitSubscription {
            transport,
            deliveries: Mutex::new(rx),
            seats: paced.map(Seats::new),
            held: Held::default(),
        }
    }
}

async fn consume(t: &RabbitTransport, spec: &QueueSpec) -> Result<Consumer, TransportError> {
    let channel = t.inner.link.channel().await?;
    if let Some((exchange, binding)) = &spec.source {
        let dead = t.inner.names.dead.as_str();
        declare_queue(&channel, &spec.queue, Some(dead), Some(spec.delivery_limit)).await?;
        channel
            .queue_bind(
                spec.queue.as_ref().into(),
                exchange.as_str().into(),
                binding.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&format!("bind {}", spec.queue), e))?;
    }
    channel
        .basic_qos(spec.prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(|e| unavailable("prefetch", e))?;
    channel
        .basic_consume(
            spec.queue.as_ref().into(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| unavailable(&format!("consume {}", spec.queue), e))
}

/// Move deliveries to the subscription (consuming first where `consumer`
/// is `None`); consume again when the channel is lost (what it held
/// unacknowledged the broker gives out again). Ends with the transport,
/// the subscription, or, for a queue someone else made, the queue.
pub(super) async fn pump(
    t: RabbitTransport,
    spec: QueueSpec,
    consumer: Option<Consumer>,
    tx: mpsc::Sender<Fed>,
) {
    let mut failures = 0u32;
    let mut consumer = match consumer {
        Some(c) => c,
        None => match reconsume(&t, &spec, &mut failures).await {
            Some(c) => c,
            None => return,
        },
    };
    loop {
        loop {
            if t.inner.closed.load(Ordering::SeqCst) {
                return;
            }
            let next = tokio::select! {
                _ = t.inner.shutdown.notified() => return,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    failures = 0;
                    tokio::select! {
                        _ = t.inner.shutdown.notified() => return,
                        sent = tx.send((spec.queue.clone(), delivery)) => if sent.is_err() { return },
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %spec.queue, error = %e, "consumer interrupted; consuming again");
                    break;
                }
                None => {
                    tracing::debug!(queue = %spec.queue, "consumer ended; consuming again");
                    break;
                }
            }
        }
        match reconsume(&t, &spec, &mut failures).await {
            Some(c) => consumer = c,
            None => return,
        }
    }
}

/// Consume `spec`'s queue again, waiting before each try (none the first
/// time); `None` once the transport closes or a queue someone else made is gone.
async fn reconsume(t: &RabbitTransport, spec: &QueueSpec, failures: &mut u32) -> Option<Consumer> {
    loop {
        if *failures > 0 {
            let delay = CONSUME_BACKOFF.delay(*failures);
            tokio::select! {
                _ = t.inner.shutdown.notified() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        *failures += 1;
        if t.inner.closed.load(Ordering::SeqCst) {
            return None;
        }
        match consume(t, spec).await {
            Ok(c) => {
                tracing::info!(queue = %spec.queue, "consuming");
                return Some(c);
            }
            Err(e) if spec.source.is_none() && e.to_string().contains("NOT_FOUND") => {
                tracing::debug!(queue = %spec.queue, "queue gone; its consumer ends");
                return None;
            }
            Err(e) => tracing::warn!(queue = %spec.queue, error = %e, "cannot consume yet"),
        }
    }
}

/// Deliveries before this one: quorum queues count every return
/// (a nack, a lost channel) in `x-delivery-count`.
fn earlier_deliveries(properties: &BasicProperties, redelivered: bool) -> u32 {
    number(properties, "x-delivery-count")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(u32::from(redelivered))
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next(&self) -> Result<Option<Delivery>, TransportError> {
        let inner = &self.transport.inner;
        let shutdown = inner.shutdown.notified();
        if inner.closed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let delivery = match self.held.take() {
            Some(fed) => Some(fed),
            None => tokio::select! {
                _ = shutdown => return Ok(None),
                d = async { self.deliveries.lock().await.recv().await } => d,
            },
        };
        let Some(fed) = delivery else {
            return Ok(None);
        };
        let (queue, d) = match &self.seats {
            Some(seats) => {
                let place = placed(&fed.1.properties);
                // Dropped unacknowledged on shutdown: delivered again later.
                let shutdown = inner.shutdown.notified();
                let admitted = async {
                    tokio::select! {
                        _ = shutdown => false,
                        _ = seats.admit(&inner.paces, place) => true,
                    }
                };
                match self.held.through(fed, admitted).await {
                    Some(fed) => fed,
                    None => return Ok(None),
                }
            }
            None => fed,
        };
        let attempt = earlier_deliveries(&d.properties, d.redelivered).saturating_add(1);
        let data = Bytes::from(d.data);
        Ok(Some(Delivery::new(
            data.clone(),
            attempt,
            Box::new(RabbitAcker {
                acker: d.acker,
                transport: self.transport.clone(),
                queue,
                routing_key: d.routing_key.to_string(),
                data,
            }),
        )))
    }
}

struct RabbitAcker {
    acker: lapin::Acker,
    transport: RabbitTransport,
    queue: Arc<str>,
    routing_key: String,
    data: Bytes,
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(|e| unavailable("ack", e))
    }

    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), TransportError> {
        // The broker redelivers a nacked message at once: the wait is
        // kept here, the message held (and counted against the prefetch).
        let acker = self.acker;
        let requeue = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        if delay.is_zero() {
            return acker
                .nack(requeue)
                .await
                .map(drop)
                .map_err(|e| unavailable("nack", e));
        }
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = acker.nack(requeue).await {
                tracing::debug!(error = %e, "nack after the delay failed; the broker gives the message out again when the channel goes");
            }
        });
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        // A delivery stays with its consumer until acked or its channel
        // goes: there is no deadline to push back.
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), TransportError> {
        let reason = header_value(reason);
        let mut headers = FieldTable::default();
        headers.insert(
            "x-trawl-reason".into(),
            AMQPValue::LongString(reason.as_str().into()),
        );
        headers.insert(
            "x-trawl-queue".into(),
            AMQPValue::LongString(self.queue.as_ref().into()),
        );
        headers.insert(
            "x-trawl-routing-key".into(),
            AMQPValue::LongString(self.routing_key.as_str().into()),
        );
        let t = &self.transport;
        t.publish(
            &t.inner.names.dead,
            &self.queue,
            &self.data,
            None,
            Some(headers),
        )
        .await?;
        tracing::error!(queue = %self.queue, reason, "message moved to the dead-letter queue");
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(|e| unavailable("ack", e))
    }
}
