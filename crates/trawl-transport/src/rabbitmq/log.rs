//! The stream queues: the replay logs that keep every payload event and
//! every result for `max_age`, the replays' records, and (`blobs.rs`) the
//! payloads' bytes. A reader starts at a time or an offset and reads up to
//! "now": a marker it appends once in place, since a stream consumer never
//! reaches an end.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};

use super::link::unavailable;
use super::params::RabbitParams;
use super::RabbitTransport;
use crate::TransportError;

/// The header that marks a reader's "now" in a stream.
const MARKER: &str = "x-trawl-marker";
/// A read that gets nothing for this long has lost its stream.
const READ_STALL: Duration = Duration::from_secs(30);
/// Messages a stream reader takes ahead.
const READ_AHEAD: u16 = 256;

/// Where a reader starts in a stream.
#[derive(Debug, Clone, Copy)]
pub(super) enum Start {
    First,
    /// The first message stored at or after this time (to the second;
    /// callers look at each message's own time).
    Time(DateTime<Utc>),
    /// The message after this offset.
    After(u64),
    /// The message at this offset.
    At(u64),
    /// Only what is appended from now on.
    Next,
}

impl Start {
    pub(super) fn argument(self) -> AMQPValue {
        match self {
            Start::First => AMQPValue::LongString("first".into()),
            Start::Time(t) => AMQPValue::Timestamp(u64::try_from(t.timestamp()).unwrap_or(0)),
            Start::After(offset) => Start::At(offset.saturating_add(1)).argument(),
            Start::At(offset) => AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX)),
            Start::Next => AMQPValue::LongString("next".into()),
        }
    }
}

/// Make stream queue `name` unless it exists. A stream keeps the arguments
/// it was made with for life: one made with another retention is kept as it
/// is. Declared outright rather than looked up first, since the broker
/// answers a lookup of a missing queue by closing the channel, which the
/// client logs as an error on every first start.
pub(super) async fn declare_stream(
    connection: &lapin::Connection,
    name: &str,
    params: &RabbitParams,
) -> Result<(), TransportError> {
    declare_stream_kept(connection, name, params.max_age.get(), params.max_bytes).await
}

/// [`declare_stream`] with a retention of its own: `max_bytes` 0 sets none.
pub(super) async fn declare_stream_kept(
    connection: &lapin::Connection,
    name: &str,
    max_age: Duration,
    max_bytes: u64,
) -> Result<(), TransportError> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(format!("{}s", max_age.as_secs().max(1)).into()),
    );
    if max_bytes > 0 {
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(max_bytes).unwrap_or(i64::MAX)),
        );
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let declared = connection
        .create_channel()
        .await
        .map_err(|e| unavailable("channel", e))?
        .queue_declare(name.into(), options, args)
        .await;
    match declared {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("PRECONDITION_FAILED") => {
            tracing::info!(
                stream = name,
                "stream exists with another retention; kept as it is"
            );
            Ok(())
        }
        Err(e) => Err(unavailable(&format!("stream {name}"), e)),
    }
}

/// The offset a stream gave a delivered message.
pub(super) fn offset(properties: &BasicProperties) -> Option<u64> {
    number(properties, "x-stream-offset")
}

/// A whole-number header of a delivered message, whichever integer type
/// the broker or the publisher gave it.
pub(super) fn number(properties: &BasicProperties, name: &str) -> Option<u64> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// A string header of a delivered message.
pub(super) fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a str> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

impl RabbitTransport {
    /// Append `body` to stream `stream`, with `headers`.
    pub(super) async fn append(
        &self,
        stream: &str,
        body: &[u8],
        headers: Option<FieldTable>,
    ) -> Result<(), TransportError> {
        self.publish("", stream, body, None, headers).await
    }

    /// Consume stream `stream` from `start` on `connection`, `read_ahead`
    /// messages ahead (no end: the caller stops).
    pub(super) async fn stream_consumer(
        &self,
        connection: &lapin::Connection,
        stream: &str,
        start: Start,
        read_ahead: u16,
    ) -> Result<(Channel, lapin::Consumer), TransportError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| unavailable("channel", e))?;
        channel
            .basic_qos(read_ahead, BasicQosOptions::default())
            .await
            .map_err(|e| unavailable("prefetch", e))?;
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), start.argument());
        let consumer = channel
            .basic_consume(
                stream.into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(|e| {
                if e.to_string().contains("NOT_FOUND") {
                    TransportError::Missing(format!("stream {stream}"))
                } else {
                    unavailable(&format!("read {stream}"), e)
                }
            })?;
        Ok((channel, consumer))
    }

    /// Read `stream` from `start` up to now: a marker appended once the
    /// reader is in place tells it where now is.
    pub(super) async fn read_stream(
        &self,
        stream: &str,
        start: Start,
    ) -> Result<Reader, TransportError> {
        // On a connection of its own: a stream consumer ended early can
        // meet a cancel from the broker that lapin takes for a protocol
        // error, which must not close the node's connection.
        let connection = self.inner.link.dedicated().await?;
        let (_channel, consumer) = self
            .stream_consumer(&connection, stream, start, READ_AHEAD)
            .await?;
        let marker = ulid::Ulid::generate().to_string();
        let mut headers = FieldTable::default();
        headers.insert(MARKER.into(), AMQPValue::LongString(marker.as_str().into()));
        // Made first, so that a failed append still closes the connection.
        let reader = Reader {
            stream: stream.to_owned(),
            connection,
            consumer,
            marker,
            end: None,
        };
        self.append(stream, b"", Some(headers)).await?;
        Ok(reader)
    }
}

/// The next message from a stream consumer, acknowledged (for a stream an
/// ack is only credit: it removes nothing).
pub(super) async fn delivery(
    consumer: &mut lapin::Consumer,
    stream: &str,
) -> Result<lapin::message::Delivery, TransportError> {
    let what = || format!("read {stream}");
    let delivery = match tokio::time::timeout(READ_STALL, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => return Err(unavailable(&what(), e)),
        Ok(None) => return Err(unavailable(&what(), "the stream consumer ended")),
        Err(_) => return Err(unavailable(&what(), format!("nothing for {READ_STALL:?}"))),
    };
    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
    Ok(delivery)
}

/// One stored message.
pub(super) struct Stored {
    pub(super) properties: BasicProperties,
    pub(super) data: Vec<u8>,
}

/// A stream read up to the moment it was opened.
pub(super) struct Reader {
    stream: String,
    connection: std::sync::Arc<lapin::Connection>,
    consumer: lapin::Consumer,
    marker: String,
    end: Option<u64>,
}

impl Reader {
    /// The next message, or `None` once now is reached.
    pub(super) async fn next(&mut self) -> Result<Option<Stored>, TransportError> {
        if self.end.is_some() {
            return Ok(None);
        }
        loop {
            let delivery = delivery(&mut self.consumer, &self.stream).await?;
            let at = offset(&delivery.properties).unwrap_or(0);
            match header(&delivery.properties, MARKER) {
                Some(m) if m == self.marker => {
                    self.end = Some(at);
                    return Ok(None);
                }
                Some(_) => {}
                None => {
                    return Ok(Some(Stored {
                        properties: delivery.properties,
                        data: delivery.data,
                    }))
                }
            }
        }
    }

    /// Where now was, once reached: a later read starts after it.
    pub(super) fn end(&self) -> Option<u64> {
        self.end
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let connection = self.connection.clone();
        tokio::spawn(async move {
            let _ = connection.close(200, "read".into()).await;
        });
    }
}

/// Whether a delivered stream message is a reader's marker, not data.
pub(super) fn is_marker(properties: &BasicProperties) -> bool {
    header(properties, MARKER).is_some()
}
