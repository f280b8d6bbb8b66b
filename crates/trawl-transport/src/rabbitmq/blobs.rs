//! Payload bytes over the inline limit: appended once to a stream queue of
//! the publishing node's own (`<prefix>.blobs.<node>`), in parts of at most
//! `part_size`, and read by offset by any node that scans them (once per
//! node, shared by its groups). Worker queues and the replay log carry only
//! the reference, so the broker stores a file once rather than once per
//! group, and a file may be larger than the broker's message limit.
//!
//! AMQP confirms carry no offset, so the publisher counts them: it reads
//! where its stream ends (a marker it appends), then appends its parts in
//! order on the one publish channel. Its count is never past the truth
//! (the stream's own entries, or another writer under the same node name,
//! only push its messages further on), and a reader checks each message's
//! id and part, reading on past strangers. A failed append ends the count,
//! and every `RECOUNT_BYTES` it is read again.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use tokio::sync::Mutex;
use trawl_core::BlobRef;

use super::link::unavailable;
use super::log::{declare_stream, delivery, number, offset, Start};
use super::{settle, RabbitTransport};
use crate::pace::Pace;
use crate::token::token;
use crate::TransportError;

/// The header naming a message's part of its payload.
const PART: &str = "x-trawl-part";
/// Headers of a payload event whose bytes are stored: where they start,
/// which places the event for the pace of this node's groups.
const LOG: &str = "x-trawl-log";
const OFFSET: &str = "x-trawl-offset";
/// Parts of at most this size (fewer when the broker takes less).
const MAX_PART: usize = 4 * 1024 * 1024;
/// Parts taken ahead by a reader (never more than the payload has: the
/// broker would send the next payloads' bytes too).
const READ_AHEAD: u32 = 8;
/// Offsets the stream itself may take between appends (a chunk of its own
/// bookkeeping as each segment file begins): a reader looks this far past
/// its offset before it takes the payload for aged out.
const SLACK: u64 = 64;
/// The count of offsets is read again after this many appended bytes, so
/// that the stream's own entries never put it more than a few behind.
const RECOUNT_BYTES: u64 = 64 * 1024 * 1024;
/// Messages of other payloads a reader passes before it gives up.
const MAX_STRANGERS: u32 = 1024;
/// Largest payload read back (4 GiB): a reference claiming more is forged.
const MAX_BLOB: u64 = 4 << 30;

/// The outcome of an append and of every append before it.
type Settled = Shared<BoxFuture<'static, Result<(), String>>>;

pub(super) struct BlobLog {
    /// This node's log name (its stream is `<prefix>.blobs.<log>`).
    log: String,
    part_size: usize,
    writer: Mutex<Writer>,
}

#[derive(Default)]
struct Writer {
    /// The offset the stream gives this node's next message, as far as it
    /// knows; `None` until read from the stream.
    next: Option<u64>,
    /// Bytes appended since `next` was read from the stream.
    counted: u64,
    /// The last append's outcome, which the next one waits for: offsets
    /// counted past a message the broker did not store are wrong.
    last: Option<Settled>,
}

impl BlobLog {
    pub(super) fn new(node: &str, max_message: usize) -> Self {
        BlobLog {
            log: token(node),
            // Room for the message's properties and headers.
            part_size: MAX_PART.min(max_message / 2),
            writer: Mutex::default(),
        }
    }
}

impl RabbitTransport {
    /// Append `data` to this node's blob stream; its reference once the
    /// broker confirmed every part (and every earlier append).
    pub(super) async fn put_blob(&self, key: &str, data: &[u8]) -> Result<BlobRef, TransportError> {
        let blobs = &self.inner.blobs;
        let stream = self.inner.names.blob_log(&blobs.log);
        let parts = u32::try_from(data.len().div_ceil(blobs.part_size)).map_err(|_| {
            TransportError::TooLarge {
                size: data.len(),
                limit: blobs.part_size.saturating_mul(u32::MAX as usize),
            }
        })?;
        let (offset, settled) = {
            let mut writer = blobs.writer.lock().await;
            let first = match writer.next {
                Some(next) if writer.counted < RECOUNT_BYTES => next,
                _ => {
                    let next = self.blob_log_end(&stream).await?;
                    // Counted from the stream: earlier appends' fate no
                    // longer bears on it.
                    writer.counted = 0;
                    writer.last = None;
                    next
                }
            };
            let mut confirms = Vec::with_capacity(parts as usize);
            for (i, part) in data.chunks(blobs.part_size).enumerate() {
                let mut headers = FieldTable::default();
                headers.insert(PART.into(), AMQPValue::LongUInt(i as u32));
                match self.send("", &stream, part, Some(key), Some(headers)).await {
                    Ok(confirm) => confirms.push(confirm),
                    Err(e) => {
                        // Parts already sent may hold offsets: count again.
                        writer.next = None;
                        return Err(e);
                    }
                }
            }
            writer.next = Some(first + u64::from(parts));
            writer.counted += data.len() as u64;
            let earlier = writer.last.take();
            let target = stream.clone();
            let settled: Settled = async move {
                for confirm in confirms {
                    settle(confirm, &target).await.map_err(|e| e.to_string())?;
                }
                match earlier {
                    Some(earlier) => earlier.await,
                    None => Ok(()),
                }
            }
            .boxed()
            .shared();
            writer.last = Some(settled.clone());
            (first, settled)
        };
        match settled.await {
            Ok(()) => Ok(BlobRef::Log {
                log: blobs.log.clone(),
                key: key.to_owned(),
                offset,
                parts,
            }),
            Err(why) => {
                blobs.writer.lock().await.next = None;
                Err(TransportError::Unavailable(format!(
                    "payload bytes not stored in {stream}: {why}"
                )))
            }
        }
    }

    /// The offset `stream` gives the next message: one past a marker
    /// appended now (made first if missing).
    async fn blob_log_end(&self, stream: &str) -> Result<u64, TransportError> {
        let connection = self.inner.link.connection().await?;
        declare_stream(&connection, stream, &self.inner.params).await?;
        let mut reader = self.read_stream(stream, Start::Next).await?;
        // Anything before the marker is another writer's.
        while reader.next().await?.is_some() {}
        let marker = reader
            .end()
            .ok_or_else(|| unavailable(stream, "the marker came without its offset"))?;
        Ok(marker + 1)
    }

    /// Read a payload's bytes from the blob stream `log` names.
    pub(super) async fn fetch_log(
        &self,
        log: &str,
        key: &str,
        at: u64,
        parts: u32,
    ) -> Result<Bytes, TransportError> {
        if token(log) != log {
            return Err(TransportError::BlobMissing(format!(
                "{key} (no blob stream is named {log:?})"
            )));
        }
        let stream = self.inner.names.blob_log(log);
        let read_ahead = parts.min(READ_AHEAD) as u16;
        let connection = self.inner.link.reads().await?;
        let (channel, mut consumer) = self
            .stream_consumer(&connection, &stream, Start::At(at), read_ahead)
            .await
            .map_err(|e| match e {
                TransportError::Missing(_) => {
                    TransportError::BlobMissing(format!("{key} (stream {stream} is gone)"))
                }
                e => e,
            })?;
        let read = async {
            let mut data = BytesMut::new();
            let mut next_part = 0u32;
            let mut strangers = 0u32;
            let mut first = true;
            while next_part < parts {
                let delivery = delivery(&mut consumer, &stream).await?;
                let found = offset(&delivery.properties).unwrap_or(at);
                if std::mem::take(&mut first) && found > at + SLACK {
                    // The stream starts past it: retention removed it.
                    return Err(TransportError::BlobMissing(format!(
                        "{key} (aged out of {stream})"
                    )));
                }
                match part_of(&delivery.properties, key) {
                    Some(0) => {
                        // A first part (again, if a copy was cut short).
                        data.clear();
                        data.extend_from_slice(&delivery.data);
                        next_part = 1;
                    }
                    Some(n) if n == next_part => {
                        data.extend_from_slice(&delivery.data);
                        next_part += 1;
                    }
                    _ => {
                        strangers += 1;
                        if strangers > MAX_STRANGERS {
                            return Err(TransportError::BlobMissing(format!(
                                "{key} (not at offset {at} of {stream})"
                            )));
                        }
                    }
                }
                if data.len() as u64 > MAX_BLOB {
                    return Err(TransportError::BlobCorrupt {
                        key: key.to_owned(),
                        why: format!("more than {MAX_BLOB} bytes"),
                    });
                }
            }
            Ok(data.freeze())
        };
        let read = read.await;
        let _ = channel.close(200, "read".into()).await;
        read
    }
}

/// The headers that place an event whose bytes are in a blob stream.
pub(super) fn placement(blob: &BlobRef) -> Option<FieldTable> {
    let BlobRef::Log { log, offset, .. } = blob else {
        return None;
    };
    let mut headers = FieldTable::default();
    headers.insert(LOG.into(), AMQPValue::LongString(log.as_str().into()));
    headers.insert(
        OFFSET.into(),
        AMQPValue::LongLongInt(i64::try_from(*offset).unwrap_or(i64::MAX)),
    );
    Some(headers)
}

/// Where a delivered event's bytes start, if they are stored.
pub(super) fn placed(properties: &BasicProperties) -> Option<(String, u64)> {
    let log = super::log::header(properties, LOG)?;
    Some((log.to_owned(), number(properties, OFFSET)?))
}

/// This node's worker groups move through each blob stream together (see
/// `crate::pace`), so that the bytes one group read are still in the
/// node's cache when the others ask.
pub(super) struct Paces {
    lead: u64,
    logs: std::sync::Mutex<HashMap<String, Arc<Pace>>>,
}

impl Paces {
    pub(super) fn new(lead: u64) -> Self {
        Paces {
            lead,
            logs: Default::default(),
        }
    }

    fn of(&self, log: &str) -> Arc<Pace> {
        self.logs
            .lock()
            .expect("paces lock")
            .entry(log.to_owned())
            .or_insert_with(|| Arc::new(Pace::new(self.lead)))
            .clone()
    }
}

/// A subscription's places in the paces of the blob streams it meets.
pub(super) struct Seats {
    group: String,
    seats: std::sync::Mutex<HashMap<String, usize>>,
}

impl Seats {
    pub(super) fn new(group: String) -> Self {
        Seats {
            group,
            seats: Default::default(),
        }
    }

    /// Return once an event stored at `place` is no more than `group_lead`
    /// offsets ahead of this node's other moving groups.
    pub(super) async fn admit(&self, paces: &Paces, place: Option<(String, u64)>) {
        let Some((log, offset)) = place else { return };
        let pace = paces.of(&log);
        let me = *self
            .seats
            .lock()
            .expect("seats lock")
            .entry(log)
            .or_insert_with(|| pace.join(&self.group));
        // Positions start at one.
        pace.admit(me, offset.saturating_add(1)).await
    }
}

/// Which part of payload `key` a delivered message is, if it is one.
fn part_of(properties: &BasicProperties, key: &str) -> Option<u32> {
    if properties.message_id().as_ref()?.as_str() != key {
        return None;
    }
    u32::try_from(number(properties, PART)?).ok()
}
