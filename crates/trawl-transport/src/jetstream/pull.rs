//! Each consumer group's pull loop, its deliveries and their
//! acknowledgements, dead-lettering included.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use async_nats::HeaderMap;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::Mutex;
use trawl_core::Backoff;

use super::{header_value, token, unavailable, JetStreamTransport};
use crate::pace::Held;
use crate::{Acker, Delivery, Subscription, TransportError};

/// How long one pull request stays open at the server. A request the
/// server lost (its consumer leader moved or restarted) is given up, and a
/// new one made, this long (plus the client's 5 s of slack) after it was sent.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Between pulls that failed in a row.
const PULL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

pub(super) struct JetStreamSubscription {
    transport: JetStreamTransport,
    /// Messages pulled for this node's members of the group, by [`pump`].
    messages: Mutex<tokio::sync::mpsc::Receiver<jetstream::Message>>,
    held: Held<jetstream::Message>,
    /// This group's place among the node's paced groups (payload consumers).
    pace: Option<usize>,
    /// Messages may hold several results (see [`super::batch`]).
    batched: bool,
    /// The rest of the last message's results.
    parts: std::sync::Mutex<VecDeque<Delivery>>,
    name: String,
}

impl JetStreamSubscription {
    pub(super) fn new(
        transport: JetStreamTransport,
        consumer: consumer::Consumer<consumer::pull::Config>,
        prefetch: usize,
        name: String,
        pace: Option<usize>,
        batched: bool,
    ) -> Self {
        // Room for two requests' worth: the next is asked for while the
        // members still have the previous one's messages to work on.
        let (tx, rx) = tokio::sync::mpsc::channel(2 * prefetch.max(1));
        tokio::spawn(pump(
            transport.clone(),
            consumer,
            name.clone(),
            prefetch.max(1),
            tx,
        ));
        let mut fed = Self::fed(transport, rx, name, pace);
        fed.batched = batched;
        fed
    }

    /// A subscription to what pumps (one or more) put in `rx`.
    pub(super) fn fed(
        transport: JetStreamTransport,
        rx: tokio::sync::mpsc::Receiver<jetstream::Message>,
        name: String,
        pace: Option<usize>,
    ) -> Self {
        JetStreamSubscription {
            transport,
            messages: Mutex::new(rx),
            held: Held::default(),
            pace,
            batched: false,
            parts: Default::default(),
            name,
        }
    }
}

/// trawl's own pull loop. Each request asks for `batch` messages once there
/// is room for them in the group's queue, and every message is moved there
/// as it arrives: the request's accounting is trivial (used up, expired or
/// failed, then the next one), unlike the client's continuous pull, whose
/// count of messages still owed can end too high when replies overtake its
/// bookkeeping, after which it never asks again; and no message waits
/// inside a request whose client-side timer may end it and drop what it held.
pub(super) async fn pump(
    transport: JetStreamTransport,
    consumer: consumer::Consumer<consumer::pull::Config>,
    name: String,
    batch: usize,
    tx: tokio::sync::mpsc::Sender<jetstream::Message>,
) {
    let mut failures = 0u32;
    loop {
        let permits = tokio::select! {
            _ = transport.shutdown.notified() => return,
            permits = tx.reserve_many(batch) => match permits {
                Ok(permits) => permits,
                // The subscription is gone.
                Err(_) => return,
            },
        };
        if transport.closed.load(Ordering::SeqCst) {
            return;
        }
        let pulled = consumer
            .batch()
            .max_messages(batch)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let failure = match pulled {
            Ok(mut batch) => {
                let mut permits = permits;
                let mut failure = None;
                loop {
                    let next = tokio::select! {
                        _ = transport.shutdown.notified() => return,
                        next = batch.next() => next,
                    };
                    match next {
                        Some(Ok(message)) => {
                            failures = 0;
                            match permits.next() {
                                Some(permit) => permit.send(message),
                                // Never more than asked for; kept safe regardless.
                                None => break,
                            }
                        }
                        Some(Err(e)) => {
                            failure = Some(e.to_string());
                            break;
                        }
                        None => break,
                    }
                }
                failure
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failure {
            failures += 1;
            let delay = PULL_BACKOFF.delay(failures);
            tracing::warn!(consumer = %name, error = %e, ?delay, "pull interrupted; starting a new one");
            tokio::select! {
                _ = transport.shutdown.notified() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[async_trait]
impl Subscription for JetStreamSubscription {
    async fn next(&self) -> Result<Option<Delivery>, TransportError> {
        if let Some(part) = self.parts.lock().expect("parts lock").pop_front() {
            return Ok(Some(part));
        }
        let shutdown = self.transport.shutdown.notified();
        if self.transport.closed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let message = match self.held.take() {
            Some(m) => Some(m),
            None => tokio::select! {
                _ = shutdown => return Ok(None),
                message = async { self.messages.lock().await.recv().await } => message,
            },
        };
        // The pump stopped: the transport is closing.
        let Some(message) = message else {
            return Ok(None);
        };
        let (attempt, seq) = message
            .info()
            .map(|i| (i.delivered.max(1) as u32, i.stream_sequence))
            .unwrap_or((1, 0));
        let message = match self.pace {
            Some(me) => {
                // Dropped unacknowledged on shutdown: delivered again later.
                let shutdown = self.transport.shutdown.notified();
                let admitted = async {
                    tokio::select! {
                        _ = shutdown => false,
                        _ = self.transport.pace.admit(me, seq) => true,
                    }
                };
                match self.held.through(message, admitted).await {
                    Some(m) => m,
                    None => return Ok(None),
                }
            }
            None => message,
        };
        if self.batched {
            if let Some(results) = super::batch::split(&message.payload).filter(|r| r.len() > 1) {
                let mut parts = super::batch::deliveries(
                    &self.transport,
                    &self.name,
                    message,
                    results,
                    attempt,
                );
                let first = parts.pop_front();
                // Members take from the queue at once: another's parts may be there.
                self.parts.lock().expect("parts lock").extend(parts);
                return Ok(first);
            }
        }
        Ok(Some(Delivery::new(
            message.payload.clone(),
            attempt,
            Box::new(JetStreamAcker {
                consumer: self.name.clone(),
                message,
                transport: self.transport.clone(),
            }),
        )))
    }
}

struct JetStreamAcker {
    message: jetstream::Message,
    transport: JetStreamTransport,
    consumer: String,
}

#[async_trait]
impl Acker for JetStreamAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.message.ack().await.map_err(|e| unavailable("ack", e))
    }

    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), TransportError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| unavailable("nak", e))
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| unavailable("progress", e))
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), TransportError> {
        set_aside(
            &self.transport,
            &self.consumer,
            &self.message.subject,
            self.message.payload.clone(),
            reason,
        )
        .await?;
        self.message.ack().await.map_err(|e| unavailable("ack", e))
    }
}

/// Put `payload`, delivered on `subject` to `consumer`, on the dead-letter
/// stream with why.
pub(super) async fn set_aside(
    t: &JetStreamTransport,
    consumer: &str,
    subject: &str,
    payload: bytes::Bytes,
    reason: &str,
) -> Result<(), TransportError> {
    let mut headers = HeaderMap::new();
    headers.insert("Trawl-Reason", header_value(reason).as_str());
    headers.insert("Trawl-Subject", subject);
    headers.insert("Trawl-Consumer", consumer);
    let dlq = format!("{}.dlq.{}", t.names.prefix, token(consumer));
    let ack =
        t.js.send_publish(
            dlq,
            jetstream::message::PublishMessage::build()
                .payload(payload)
                .headers(headers),
        )
        .await
        .map_err(|e| unavailable("dead-letter publish", e))?;
    ack.await.map_err(|e| unavailable("dead-letter ack", e))?;
    tracing::error!(consumer, reason, "message moved to the dead-letter stream");
    Ok(())
}
