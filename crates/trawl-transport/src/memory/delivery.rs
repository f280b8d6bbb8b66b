//! A consumer group's deliveries: the next message of the group's lanes,
//! and its acknowledgement (a message dropped unacknowledged goes back to
//! the urgent lane).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{ConsumerGroup, MemoryTransport, Message};
use crate::{Acker, Delivery, Subscription, TransportError};

pub(super) struct MemorySubscription {
    pub(super) transport: MemoryTransport,
    pub(super) group: Arc<ConsumerGroup>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&self) -> Result<Option<Delivery>, TransportError> {
        let inner = &self.transport.inner;
        let shutdown = inner.shutdown.notified();
        if inner.closed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        // No limit of its own: the caller counts deliveries and sets a
        // message aside past max_deliver; one whose set-aside failed
        // comes back until it is set aside, as on JetStream.
        let mut message = tokio::select! {
            biased;
            _ = shutdown => return Ok(None),
            Ok(m) = self.group.urgent_rx.recv() => m,
            Ok(m) = self.group.queue_rx.recv() => m,
        };
        message.attempt += 1;
        let data = message.data.clone();
        let attempt = message.attempt;
        Ok(Some(Delivery::new(
            data,
            attempt,
            Box::new(MemoryAcker {
                transport: self.transport.clone(),
                group: self.group.clone(),
                message: Some(message),
            }),
        )))
    }
}

struct MemoryAcker {
    transport: MemoryTransport,
    group: Arc<ConsumerGroup>,
    message: Option<Message>,
}

impl MemoryAcker {
    fn requeue(group: &ConsumerGroup, message: Message) {
        // The urgent lane is unbounded, so this cannot fail while the group exists.
        let _ = group.urgent_tx.try_send(message);
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        if let Some(message) = self.message.take() {
            self.transport.release(&message);
        }
        Ok(())
    }

    async fn nak(mut self: Box<Self>, delay: Duration) -> Result<(), TransportError> {
        if let Some(message) = self.message.take() {
            let group = self.group.clone();
            if delay.is_zero() {
                Self::requeue(&group, message);
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    Self::requeue(&group, message);
                });
            }
        }
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), TransportError> {
        // Nothing outlives this process here: the log is the dead-letter record.
        tracing::error!(
            reason,
            len = self.message.as_ref().map_or(0, |m| m.data.len()),
            "message set aside"
        );
        self.ack().await
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            Self::requeue(&self.group, message);
        }
    }
}
