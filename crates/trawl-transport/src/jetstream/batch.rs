//! Live results travel several to a message. Each message costs the server
//! a store, an ack and a delivery to every connector, whatever its size:
//! for small payloads those, not the bytes, are the pipeline's cost.
//!
//! Publishing is a group commit: results that arrive while earlier ones
//! wait for the server's ack are sent together, one message per subject,
//! so nothing waits for a batch to fill. A message is either one result
//! event (a MessagePack map, as every earlier node wrote) or an array of
//! encoded result events, each a MessagePack `bin` (see [`split`]).
//! Replay results stay one to a message: replay progress is counted in
//! messages per subject.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Context};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::naming::HEADER_ROOM;
use super::{unavailable, JetStreamTransport};
use crate::{Acker, Delivery, TransportError};

/// MessagePack array with a 32-bit length.
const ARRAY32: u8 = 0xdd;
/// MessagePack binary with a 32-bit length.
const BIN32: u8 = 0xc6;
/// An item's `bin` header.
const ITEM_HEADER: usize = 5;
/// Publish rounds awaiting the server's acks at once; while both wait,
/// the next round gathers.
const ROUNDS_IN_FLIGHT: usize = 2;
/// Results waiting to be published, across the node's groups.
const QUEUED: usize = 1024;

struct Queued {
    subject: String,
    id: String,
    encoded: Bytes,
    done: oneshot::Sender<Result<(), TransportError>>,
}

/// The node's result publisher.
#[derive(Clone)]
pub(super) struct Batcher {
    tx: mpsc::Sender<Queued>,
}

impl Batcher {
    /// Must be called inside a Tokio runtime; the publisher stops when the
    /// last clone is dropped.
    pub(super) fn start(js: Context) -> Self {
        let (tx, rx) = mpsc::channel(QUEUED);
        tokio::spawn(publish_rounds(js, rx));
        Batcher { tx }
    }

    /// Publish one encoded result on `subject` and wait until the server
    /// has stored it.
    pub(super) async fn publish(
        &self,
        subject: String,
        id: String,
        encoded: Bytes,
    ) -> Result<(), TransportError> {
        let (done, stored) = oneshot::channel();
        let queued = Queued {
            subject,
            id,
            encoded,
            done,
        };
        let gone = || TransportError::Unavailable("the result publisher stopped".into());
        self.tx.send(queued).await.map_err(|_| gone())?;
        stored.await.map_err(|_| gone())?
    }
}

async fn publish_rounds(js: Context, mut rx: mpsc::Receiver<Queued>) {
    let in_flight = Arc::new(Semaphore::new(ROUNDS_IN_FLIGHT));
    let mut carried: Option<Queued> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        // Every message of the round fits the server's limit.
        let budget = match js.client().server_info().max_payload {
            0 => usize::MAX,
            limit => limit.saturating_sub(HEADER_ROOM + ITEM_HEADER),
        };
        let mut used = first.encoded.len() + ITEM_HEADER;
        let mut round = vec![first];
        while let Ok(q) = rx.try_recv() {
            used += q.encoded.len() + ITEM_HEADER;
            if used > budget {
                carried = Some(q);
                break;
            }
            round.push(q);
        }
        let mut pending = Vec::new();
        for (subject, items) in by_subject(round) {
            let (id, body) = match items.as_slice() {
                [one] => (one.id.clone(), one.encoded.clone()),
                many => (batch_id(many), join(many)),
            };
            let sent = js
                .send_publish(
                    subject,
                    jetstream::message::PublishMessage::build()
                        .payload(body)
                        .message_id(id),
                )
                .await;
            let dones = items.into_iter().map(|q| q.done);
            match sent {
                Ok(ack) => pending.push((ack, dones.collect::<Vec<_>>())),
                Err(e) => {
                    for done in dones {
                        let _ = done.send(Err(unavailable("publish", &e)));
                    }
                }
            }
        }
        tokio::spawn(async move {
            for (ack, dones) in pending {
                let stored = ack.await;
                for done in dones {
                    let _ = done.send(match &stored {
                        Ok(_) => Ok(()),
                        Err(e) => Err(unavailable("publish ack", e)),
                    });
                }
            }
            drop(permit);
        });
    }
}

/// The round's results by subject, each subject's in the order they came.
fn by_subject(round: Vec<Queued>) -> Vec<(String, Vec<Queued>)> {
    let mut out: Vec<(String, Vec<Queued>)> = Vec::new();
    for q in round {
        match out.iter_mut().find(|(s, _)| *s == q.subject) {
            Some((_, items)) => items.push(q),
            None => out.push((q.subject.clone(), vec![q])),
        }
    }
    out
}

/// A batch published twice (its ack was lost) is dropped as a duplicate.
fn batch_id(items: &[Queued]) -> String {
    let ids: Vec<&str> = items.iter().map(|q| q.id.as_str()).collect();
    trawl_core::sha256_hex(ids.join("\n").as_bytes())
}

fn join(items: &[Queued]) -> Bytes {
    let size = 5 + items
        .iter()
        .map(|q| q.encoded.len() + ITEM_HEADER)
        .sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(ARRAY32);
    out.put_u32(items.len() as u32);
    for q in items {
        out.put_u8(BIN32);
        out.put_u32(q.encoded.len() as u32);
        out.put_slice(&q.encoded);
    }
    out.freeze()
}

/// The encoded results in a message: the message itself when it is not a
/// batch, `None` when it claims to be one and is not well formed (it is
/// then handled whole, as an undecodable result).
pub(super) fn split(message: &Bytes) -> Option<Vec<Bytes>> {
    if message.first() != Some(&ARRAY32) {
        return Some(vec![message.clone()]);
    }
    let count = u32::from_be_bytes(message.get(1..5)?.try_into().ok()?) as usize;
    let mut at = 5;
    // Each item takes at least its header: a forged count allocates nothing.
    let mut parts = Vec::with_capacity(count.min(message.len() / ITEM_HEADER));
    for _ in 0..count {
        if message.get(at) != Some(&BIN32) {
            return None;
        }
        let len = u32::from_be_bytes(message.get(at + 1..at + 5)?.try_into().ok()?) as usize;
        let start = at + ITEM_HEADER;
        let end = start.checked_add(len).filter(|&e| e <= message.len())?;
        parts.push(message.slice(start..end));
        at = end;
    }
    (at == message.len() && count > 0).then_some(parts)
}

/// The deliveries of one message's results. The message is acknowledged
/// once every one of them is; if any was handed back, the whole message
/// is, once all are settled (results are upserted by id, so those already
/// stored are stored again harmlessly).
pub(super) fn deliveries(
    transport: &JetStreamTransport,
    consumer: &str,
    message: jetstream::Message,
    parts: Vec<Bytes>,
    attempt: u32,
) -> VecDeque<Delivery> {
    let shared = Arc::new(Parts {
        left: AtomicUsize::new(parts.len()),
        handed_back: std::sync::Mutex::new(None),
        message,
        transport: transport.clone(),
        consumer: consumer.to_owned(),
    });
    parts
        .into_iter()
        .map(|data| {
            let acker = PartAcker {
                parts: shared.clone(),
                data: data.clone(),
            };
            Delivery::new(data, attempt, Box::new(acker))
        })
        .collect()
}

struct Parts {
    message: jetstream::Message,
    left: AtomicUsize,
    /// The longest delay any part asked for when handed back.
    handed_back: std::sync::Mutex<Option<Duration>>,
    transport: JetStreamTransport,
    consumer: String,
}

impl Parts {
    async fn settle(&self, nak: Option<Duration>) -> Result<(), TransportError> {
        if let Some(delay) = nak {
            let mut back = self.handed_back.lock().expect("handed-back lock");
            *back = Some(back.map_or(delay, |d| d.max(delay)));
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return Ok(());
        }
        let back = *self.handed_back.lock().expect("handed-back lock");
        match back {
            None => self.message.ack().await.map_err(|e| unavailable("ack", e)),
            Some(delay) => self
                .message
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(|e| unavailable("nak", e)),
        }
    }
}

struct PartAcker {
    parts: Arc<Parts>,
    data: Bytes,
}

#[async_trait]
impl Acker for PartAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.parts.settle(None).await
    }

    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), TransportError> {
        self.parts.settle(Some(delay)).await
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        self.parts
            .message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| unavailable("progress", e))
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), TransportError> {
        let p = &self.parts;
        super::pull::set_aside(
            &p.transport,
            &p.consumer,
            &p.message.subject,
            self.data.clone(),
            reason,
        )
        .await?;
        p.settle(None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(id: &str, encoded: &[u8]) -> Queued {
        Queued {
            subject: "s".into(),
            id: id.into(),
            encoded: Bytes::copy_from_slice(encoded),
            done: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_splits_into_its_results() {
        let items = [
            queued("a", &[0x81, 1]),
            queued("b", b""),
            queued("c", &[7; 300]),
        ];
        let parts = split(&join(&items)).unwrap();
        let want: Vec<&[u8]> = vec![&[0x81, 1], b"", &[7; 300]];
        assert_eq!(parts.iter().map(|p| &p[..]).collect::<Vec<_>>(), want);
    }

    #[test]
    fn a_single_result_is_its_own_part() {
        let one = Bytes::from_static(&[0x82, 0xa1, b'v', 1]);
        assert_eq!(split(&one).unwrap(), vec![one]);
    }

    #[test]
    fn a_malformed_batch_is_not_split() {
        let items = [queued("a", b"xy"), queued("b", b"z")];
        let whole = join(&items);
        // Cut short, a length past the end, trailing bytes, a forged count.
        assert!(split(&whole.slice(..whole.len() - 1)).is_none());
        let mut long = whole.to_vec();
        long[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(split(&Bytes::from(long)).is_none());
        let mut trailing = whole.to_vec();
        trailing.push(0);
        assert!(split(&Bytes::from(trailing)).is_none());
        let mut forged = whole.to_vec();
        forged[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(split(&Bytes::from(forged)).is_none());
        assert!(split(&Bytes::from_static(&[ARRAY32, 0, 0, 0, 0])).is_none());
    }
}
