//! Each consumer group's pull loop, its deliveries and their
//! acknowledgements, dead-lettering included.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, AckKind};
use async_nats::{HeaderMap, StatusCode};
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

/// How long past its expiry a request's end is waited for before it counts
/// as lost (the client's own slack).
const PULL_SLACK: Duration = Duration::from_secs(5);

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
        // Payload events are many and small: their pulls grow with the
        // members' pace (see [`PullSize`]).
        let size = match pace {
            Some(_) => PullSize::growing(prefetch),
            None => PullSize::fixed(prefetch),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(size.queue());
        tokio::spawn(pump(transport.clone(), consumer, name.clone(), size, tx));
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

/// How many messages one pull request asks for.
///
/// The server's work per request (and the client's) is the same for one
/// message as for many, so requests for payload events grow while the
/// members take them quickly: what they take in [`QUEUED_WORK`] at their
/// pace over the last [`PACE_WINDOW`], or twice the last request when they
/// had emptied the queue of a full one before the next was asked for.
/// A message waits in the node's queue behind two requests' worth at most,
/// and that wait counts against the consumer's `ack_wait` (a minute or
/// more): a queue of a fraction of a second of recent work expires only if
/// scans suddenly become hundreds of times slower. A node that scans
/// slowly asks for few, leaving the group's backlog to the others.
#[derive(Debug, Clone, Copy)]
pub(super) struct PullSize {
    least: usize,
    most: usize,
    now: usize,
    /// When the current pace window began, and how many messages the
    /// members had taken by then.
    window: Option<(Instant, u64)>,
}

/// The members' work one pull request may hold, at their recent pace.
const QUEUED_WORK: Duration = Duration::from_millis(200);

/// How long the members' pace is measured over: shorter windows count
/// too few messages to tell a pace.
const PACE_WINDOW: Duration = Duration::from_millis(50);

/// How far a growing pull request may grow past the members' count.
const PULL_GROWTH: usize = 16;

impl PullSize {
    /// Always `n` (at least one).
    pub(super) fn fixed(n: usize) -> Self {
        let n = n.max(1);
        PullSize {
            least: n,
            most: n,
            now: n,
            window: None,
        }
    }

    /// From `n` (the members' count) up to [`PULL_GROWTH`] times that.
    fn growing(n: usize) -> Self {
        PullSize {
            most: n.max(1) * PULL_GROWTH,
            ..Self::fixed(n)
        }
    }

    /// The group's queue: room for two of the largest requests, so that
    /// the next is asked for while the members work on the previous one.
    pub(super) fn queue(&self) -> usize {
        2 * self.most
    }

    /// The next request's size, at `at`, once the members have `taken`
    /// messages in all, `queued` are still waiting for them, and the last
    /// request was `filled` (the server had that many to give).
    fn next(&mut self, at: Instant, taken: u64, queued: usize, filled: bool) -> usize {
        if self.least == self.most {
            return self.now;
        }
        let doubled = self.now.saturating_mul(2).min(self.most);
        match self.window {
            Some(_) if filled && queued == 0 => {
                // The members were waiting for the pulls.
                self.now = doubled;
                self.window = Some((at, taken));
            }
            Some((since, before)) if at.duration_since(since) >= PACE_WINDOW => {
                let per_second =
                    taken.saturating_sub(before) as f64 / at.duration_since(since).as_secs_f64();
                let fits = (per_second * QUEUED_WORK.as_secs_f64()) as usize;
                self.now = fits.clamp(self.least, self.most);
                self.window = Some((at, taken));
            }
            Some(_) => {}
            None => self.window = Some((at, taken)),
        }
        self.now
    }
}

/// trawl's own pull loop. Each request asks for `size` messages once there
/// is room for them in the group's queue, and every message is moved there
/// as it arrives: the request's accounting is trivial (used up, expired or
/// failed, then the next one), unlike the client's continuous pull, whose
/// count of messages still owed can end too high when replies overtake its
/// bookkeeping, after which it never asks again; and no message waits
/// inside a request whose client-side timer may end it and drop what it held.
/// Replies come to one inbox for the pump's life: a subscription per
/// request (as the client's own batch makes) cost the server a subscribe and
/// an unsubscribe for every few messages.
pub(super) async fn pump(
    transport: JetStreamTransport,
    consumer: consumer::Consumer<consumer::pull::Config>,
    name: String,
    mut size: PullSize,
    tx: tokio::sync::mpsc::Sender<jetstream::Message>,
) {
    let client = transport.js.client();
    let inbox = client.new_inbox();
    let mut replies = None;
    let mut failures = 0u32;
    let mut sent = 0u64;
    let mut filled = false;
    loop {
        let queued = tx.max_capacity() - tx.capacity();
        let taken = sent.saturating_sub(queued as u64);
        let batch = size.next(Instant::now(), taken, queued, filled);
        // Room for the request once no more than one request's worth is
        // queued (the queue holds two of the largest).
        let room = tx.max_capacity().saturating_sub(batch).max(batch);
        let permits = tokio::select! {
            _ = transport.shutdown.notified() => return,
            permits = tx.reserve_many(room) => match permits {
                Ok(permits) => permits,
                // The subscription is gone.
                Err(_) => return,
            },
        };
        if transport.closed.load(Ordering::SeqCst) {
            return;
        }
        let failure = match pull(&client, &consumer, &inbox, &mut replies, batch).await {
            Ok(()) => {
                let replies = replies.as_mut().expect("subscribed before pulling");
                let mut permits = permits;
                let deadline = tokio::time::sleep(PULL_EXPIRES + PULL_SLACK);
                tokio::pin!(deadline);
                let mut delivered = 0;
                filled = false;
                loop {
                    let next = tokio::select! {
                        _ = transport.shutdown.notified() => return,
                        // The server lost the request.
                        _ = &mut deadline => break None,
                        next = replies.next() => next,
                    };
                    let Some(message) = next else {
                        break Some("the reply subscription ended".to_owned());
                    };
                    match message.status {
                        None | Some(StatusCode::OK) => {}
                        // Nothing more within the request's time.
                        Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => break None,
                        Some(StatusCode::IDLE_HEARTBEAT) => continue,
                        Some(status) => {
                            break Some(format!(
                                "the server ended the pull: {status} {}",
                                message.description.as_deref().unwrap_or("")
                            ))
                        }
                    }
                    failures = 0;
                    let message = jetstream::Message {
                        message,
                        context: transport.js.clone(),
                    };
                    match permits.next() {
                        Some(permit) => permit.send(message),
                        // A late reply to a request given up on: room is
                        // waited for, so it is not dropped.
                        None => {
                            if tx.send(message).await.is_err() {
                                return;
                            }
                        }
                    }
                    sent += 1;
                    delivered += 1;
                    if delivered == batch {
                        filled = true;
                        break None;
                    }
                }
            }
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            replies = None;
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

/// Ask for `batch` messages, replies to `inbox` (subscribed to first if
/// `replies` is not).
async fn pull(
    client: &async_nats::Client,
    consumer: &consumer::Consumer<consumer::pull::Config>,
    inbox: &str,
    replies: &mut Option<async_nats::Subscriber>,
    batch: usize,
) -> Result<(), String> {
    if replies.is_none() {
        *replies = Some(
            client
                .subscribe(inbox.to_owned())
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let request = consumer::pull::BatchConfig {
        batch,
        expires: Some(PULL_EXPIRES),
        ..Default::default()
    };
    consumer
        .request_batch(request, inbox.into())
        .await
        .map_err(|e| e.to_string())
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
    let message = jetstream::message::PublishMessage::build()
        .payload(payload)
        .headers(headers);
    t.publish_stored(dlq, message, "dead-letter publish")
        .await?;
    tracing::error!(consumer, reason, "message moved to the dead-letter stream");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests in turn while members take `per_second` messages, each
    /// request filled and `queued` left at each check; the sizes asked for.
    fn sizes(mut size: PullSize, per_second: f64, queued: usize, requests: usize) -> Vec<usize> {
        let start = Instant::now();
        let step = Duration::from_millis(20);
        (0..requests)
            .map(|i| {
                let elapsed = step * i as u32;
                let taken = (per_second * elapsed.as_secs_f64()) as u64;
                size.next(start + elapsed, taken, queued, true)
            })
            .collect()
    }

    #[test]
    fn requests_grow_while_the_members_keep_emptying_the_queue() {
        let asked = sizes(PullSize::growing(4), 10_000.0, 0, 8);
        assert_eq!(asked, [4, 8, 16, 32, 64, 64, 64, 64]);
    }

    #[test]
    fn requests_hold_what_the_members_take_in_a_fraction_of_a_second() {
        // 100 a second: 20 in QUEUED_WORK, once a window has passed.
        let asked = sizes(PullSize::growing(4), 100.0, 10, 10);
        assert_eq!(asked, [4, 4, 4, 20, 20, 20, 20, 20, 20, 20]);
    }

    #[test]
    fn slow_members_ask_for_no_more_than_their_count() {
        let asked = sizes(PullSize::growing(4), 2.0, 3, 10);
        assert!(asked.iter().all(|&n| n == 4), "{asked:?}");
    }

    #[test]
    fn requests_shrink_back_as_soon_as_scans_slow_down() {
        let mut size = PullSize::growing(4);
        let start = Instant::now();
        let mut at = start;
        let mut taken = 0;
        for _ in 0..10 {
            at += Duration::from_millis(20);
            taken += 200;
            size.next(at, taken, 0, true);
        }
        assert_eq!(size.now, 64);
        // Then a window in which the members took one message.
        at += PACE_WINDOW;
        assert_eq!(size.next(at, taken + 1, 60, true), 4);
    }

    #[test]
    fn an_idle_stream_does_not_grow_the_requests() {
        // Requests that expire unfilled leave an empty queue.
        let mut size = PullSize::growing(4);
        let start = Instant::now();
        for i in 0..10 {
            let asked = size.next(start + Duration::from_secs(5) * i, 0, 0, false);
            assert_eq!(asked, 4);
        }
    }

    #[test]
    fn a_fixed_size_never_changes() {
        let asked = sizes(PullSize::fixed(7), 10_000.0, 0, 5);
        assert_eq!(asked, [7; 5]);
        assert_eq!(PullSize::fixed(7).queue(), 14);
    }
}
