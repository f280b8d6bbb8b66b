//! Replays over JetStream. `trawl replay` copies the payload events of a
//! time range, each tagged with the replay's id, to `{prefix}.replay.{id}`
//! and records the replay in the `{PREFIX}_REPLAYS` bucket. Every node
//! follows the bucket: for each running replay that names one of its
//! groups it pulls from that group's durable consumer of the replay
//! (`replay-{id}-{group}`), shared by the group's members on all nodes,
//! until the consumer has nothing left or the replay is cancelled.
//! Progress is the consumers' own count: what is neither pending nor
//! awaiting an ack is done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::ConsumerInfoErrorKind, kv};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::mpsc;
use trawl_core::{wire, Backoff, OutcomeStatus, PayloadEvent, ResultEvent};

use super::pull::{pump, JetStreamSubscription, PullSize};
use super::{token, unavailable, JetStreamTransport};
use crate::replay::Joined;
use crate::{
    ConsumerOptions, ReplayProgress, ReplayRecord, ReplayRequest, ReplayState, Replays,
    Subscription, TransportError,
};

/// How often a node looks whether a replay it pulls from is finished.
const FINISHED_EVERY: Duration = Duration::from_secs(2);
/// Between tries to follow the replays bucket.
const FOLLOW_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// Events published before their acks are awaited.
const PUBLISH_WINDOW: usize = 256;

fn consumer_name(id: &str, group: &str) -> String {
    format!("replay-{}-{}", token(id), token(group))
}

fn to_nats(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
        t.timestamp_nanos_opt().unwrap_or(i64::MAX),
    ))
    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn from_nats(t: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(t.unix_timestamp_nanos().clamp(0, i64::MAX as i128) as i64)
}

impl JetStreamTransport {
    pub(super) fn replay_subject(&self, id: &str) -> String {
        format!("{}.replay.{}", self.names.prefix, token(id))
    }

    /// The subject of a result: a replay's results have their own, so its
    /// errors can be counted, and a group that scans another group's
    /// matches is not handed them again.
    pub(super) fn result_subject(&self, result: &ResultEvent) -> String {
        let worker = token(&result.worker.name);
        match &result.replay_id {
            None => format!("{}.result.{worker}", self.names.prefix),
            Some(replay) => format!(
                "{}.result.{worker}.{}.{}",
                self.names.prefix,
                token(replay),
                result.outcome.status.as_str()
            ),
        }
    }

    async fn bucket(&self) -> Result<kv::Store, TransportError> {
        let what = format!("bucket {}", self.names.replays);
        self.js
            .get_key_value(&self.names.replays)
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::KeyValueErrorKind::GetBucket => TransportError::Missing(what),
                _ => unavailable(&what, e),
            })
    }

    /// Join `group` on every running replay that names it.
    pub(super) fn follow_replays(
        &self,
        group: &str,
        options: ConsumerOptions,
    ) -> Arc<dyn Subscription> {
        let (tx, rx) = mpsc::channel(2 * options.prefetch);
        tokio::spawn(follow(self.clone(), group.to_owned(), options, tx));
        Arc::new(JetStreamSubscription::fed(
            self.clone(),
            rx,
            format!("replay-{}", token(group)),
            None,
        ))
    }
}

/// Follow the replays bucket for `group`, pulling from each running replay
/// that names it, until the transport closes.
async fn follow(
    t: JetStreamTransport,
    group: String,
    options: ConsumerOptions,
    tx: mpsc::Sender<jetstream::Message>,
) {
    let mut joined = Joined::new(&group);
    let mut failures = 0u32;
    loop {
        let watched = async {
            let bucket = t.bucket().await?;
            bucket
                .watch_with_history(">")
                .await
                .map_err(|e| unavailable("replays bucket", e))
        };
        let failure = match watched.await {
            Ok(mut watch) => loop {
                let entry = tokio::select! {
                    _ = t.shutdown.notified() => return,
                    _ = tx.closed() => return,
                    entry = watch.next() => entry,
                };
                let entry = match entry {
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) => break e.to_string(),
                    None => break "watch ended".to_owned(),
                };
                failures = 0;
                let record = match entry.operation {
                    kv::Operation::Put => serde_json::from_slice::<ReplayRecord>(&entry.value).ok(),
                    _ => None,
                };
                let stopped = joined.update(&entry.key, record.as_ref(), || {
                    tokio::spawn(pull_replay(
                        t.clone(),
                        entry.key.clone(),
                        group.clone(),
                        options.clone(),
                        tx.clone(),
                    ))
                });
                // Cancelled, finished or removed: its pull stops.
                if let Some(task) = stopped {
                    task.abort();
                }
            },
            Err(e) => e.to_string(),
        };
        failures += 1;
        let delay = FOLLOW_BACKOFF.delay(failures);
        tracing::warn!(%group, error = %failure, ?delay, "cannot follow replays; retrying");
        tokio::select! {
            _ = t.shutdown.notified() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Pull replay `id` for `group` until its consumer has nothing left.
async fn pull_replay(
    t: JetStreamTransport,
    id: String,
    group: String,
    options: ConsumerOptions,
    tx: mpsc::Sender<jetstream::Message>,
) {
    let name = consumer_name(&id, &group);
    let mut failures = 0u32;
    let consumer = loop {
        let made = async {
            let stream =
                t.js.get_stream(&t.names.replay)
                    .await
                    .map_err(|e| unavailable("replay stream", e))?;
            stream
                .get_or_create_consumer(
                    &name,
                    consumer::pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: t.replay_subject(&id),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: options.ack_wait,
                        max_deliver: super::UNLIMITED_DELIVERIES,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| unavailable(&format!("consumer {name}"), e))
        };
        match made.await {
            Ok(c) => break c,
            Err(e) => {
                failures += 1;
                let delay = FOLLOW_BACKOFF.delay(failures);
                tracing::warn!(replay = %id, %group, error = %e, ?delay, "cannot join the replay; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    };
    tracing::info!(replay = %id, %group, "taking part in a replay");
    let mut check = consumer.clone();
    let size = PullSize::fixed(options.prefetch);
    let pulling = tokio::spawn(pump(t.clone(), consumer, name, size, tx));
    // Aborted with this task (the replay was cancelled): the pull stops too.
    let _stop = AbortOnDrop(pulling);
    loop {
        tokio::time::sleep(FINISHED_EVERY).await;
        let Ok(info) = check.info().await else {
            continue;
        };
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
    }
    tracing::info!(replay = %id, %group, "replay finished for this group");
    // The last group to finish marks the replay done.
    let replays = JetStreamReplays { t };
    if let Ok((record, _)) = replays.record(&id).await {
        let scans = record.total * record.groups.len() as u64;
        let finished = replays.done(&record).await.is_ok_and(|done| done >= scans);
        if record.state == ReplayState::Running && finished {
            let _ = replays.set_state(&id, ReplayState::Done).await;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Replays seen from the command line.
pub(crate) struct JetStreamReplays {
    pub(super) t: JetStreamTransport,
}

impl JetStreamReplays {
    async fn record(&self, id: &str) -> Result<(ReplayRecord, u64), TransportError> {
        let bucket = self.t.bucket().await?;
        let entry = bucket
            .entry(token(id))
            .await
            .map_err(|e| unavailable("replays bucket", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(TransportError::Refused(format!("no replay {id}")));
        };
        let record = serde_json::from_slice(&entry.value)
            .map_err(|e| unavailable(&format!("replay {id}"), e))?;
        Ok((record, entry.revision))
    }

    async fn put(&self, record: &ReplayRecord) -> Result<(), TransportError> {
        let value = serde_json::to_vec(record).expect("a replay record serialises");
        self.t
            .bucket()
            .await?
            .put(token(&record.id), Bytes::from(value))
            .await
            .map_err(|e| unavailable("replays bucket", e))?;
        Ok(())
    }

    /// Move `id` to `state` unless another writer changed it first.
    async fn set_state(
        &self,
        id: &str,
        state: ReplayState,
    ) -> Result<ReplayRecord, TransportError> {
        let (mut record, revision) = self.record(id).await?;
        record.state = state;
        let value = serde_json::to_vec(&record).expect("a replay record serialises");
        self.t
            .bucket()
            .await?
            .update(token(id), Bytes::from(value), revision)
            .await
            .map_err(|e| unavailable("replays bucket", e))?;
        Ok(record)
    }

    /// Copy the payload events the request names to the replay's subject,
    /// each with what `groups` found in it before; returns how many.
    async fn put_up(
        &self,
        id: &str,
        request: &ReplayRequest,
        groups: &[String],
    ) -> Result<u64, TransportError> {
        let t = &self.t;
        let before = self.earlier_rules(groups, request.since).await?;
        let mut stream =
            t.js.get_stream(&t.names.payloads)
                .await
                .map_err(|e| unavailable("payload stream", e))?;
        let state = stream
            .info()
            .await
            .map_err(|e| unavailable("payload stream", e))?
            .state
            .clone();
        if state.messages == 0 || from_nats(state.last_timestamp) < request.since {
            return Ok(0);
        }
        let last = state.last_sequence;
        let mut messages = read_from(
            &stream,
            format!("{}.payload.>", t.names.prefix),
            request.since,
        )
        .await?;
        let subject = t.replay_subject(id);
        let mut acks = Vec::with_capacity(PUBLISH_WINDOW);
        let mut total = 0u64;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| unavailable("payload stream reader", e))?;
            let (seq, published, pending) = {
                let info = message
                    .info()
                    .map_err(|e| unavailable("payload stream reader", e))?;
                (
                    info.stream_sequence,
                    from_nats(info.published),
                    info.pending,
                )
            };
            if published > request.until || seq > last {
                break;
            }
            // Events a node could not decode went to the dead-letter stream once already.
            if let Ok(mut event) = wire::decode::<PayloadEvent>(&message.payload) {
                if request.wants(&event) {
                    event.replay_id = Some(id.to_owned());
                    for group in groups {
                        if let Some(rules) = before.get(&(event.id.clone(), group.clone())) {
                            event
                                .replay_previous
                                .insert(group.clone(), rules.iter().cloned().collect());
                        }
                    }
                    let body = Bytes::from(wire::encode(&event)?);
                    let ack =
                        t.js.send_publish(
                            subject.clone(),
                            jetstream::message::PublishMessage::build()
                                .payload(body)
                                .message_id(format!("{id}.{seq}")),
                        )
                        .await
                        .map_err(|e| unavailable("replay publish", e))?;
                    acks.push(ack);
                    total += 1;
                    if acks.len() >= PUBLISH_WINDOW {
                        for ack in acks.drain(..) {
                            ack.await
                                .map_err(|e| unavailable("replay publish ack", e))?;
                        }
                    }
                }
            }
            if seq >= last || pending == 0 {
                break;
            }
        }
        for ack in acks {
            ack.await
                .map_err(|e| unavailable("replay publish ack", e))?;
        }
        Ok(total)
    }

    /// Scans finished for `record`, over its groups.
    async fn done(&self, record: &ReplayRecord) -> Result<u64, TransportError> {
        let stream = self
            .t
            .js
            .get_stream(&self.t.names.replay)
            .await
            .map_err(|e| unavailable("replay stream", e))?;
        let mut done = 0;
        for group in &record.groups {
            match stream.consumer_info(consumer_name(&record.id, group)).await {
                Ok(info) => {
                    let open = info.num_pending + info.num_ack_pending as u64;
                    done += record.total.saturating_sub(open);
                }
                // No node of the group has joined yet.
                Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {}
                Err(e) => return Err(unavailable("replay consumer", e)),
            }
        }
        Ok(done)
    }

    /// Replay results on `filter`, by subject.
    async fn result_counts(&self, filter: &str) -> Result<u64, TransportError> {
        let stream = self
            .t
            .js
            .get_stream(&self.t.names.results)
            .await
            .map_err(|e| unavailable("result stream", e))?;
        let mut subjects = stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| unavailable("result stream", e))?;
        let mut n = 0;
        while let Some(s) = subjects.next().await {
            n += s.map_err(|e| unavailable("result stream", e))?.1 as u64;
        }
        Ok(n)
    }

    /// Hand `visit` each result on `subject` from `since` up to stream
    /// sequence `until_seq`.
    async fn each_result(
        &self,
        subject: String,
        since: DateTime<Utc>,
        until_seq: u64,
        mut visit: impl FnMut(ResultEvent),
    ) -> Result<(), TransportError> {
        let stream = self
            .t
            .js
            .get_stream(&self.t.names.results)
            .await
            .map_err(|e| unavailable("result stream", e))?;
        let mut messages = read_from(&stream, subject, since).await?;
        loop {
            // An empty selection delivers nothing at all.
            let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
            let Ok(Some(message)) = next else { break };
            let message = message.map_err(|e| unavailable("stream reader", e))?;
            let (seq, pending) = message
                .info()
                .map(|i| (i.stream_sequence, i.pending))
                .map_err(|e| unavailable("stream reader", e))?;
            if seq > until_seq {
                break;
            }
            for part in super::batch::split(&message.payload).unwrap_or_default() {
                if let Ok(r) = wire::decode::<ResultEvent>(&part) {
                    visit(r);
                }
            }
            if pending == 0 || seq >= until_seq {
                break;
            }
        }
        Ok(())
    }
}

/// The messages on `filter` in `stream` from time `since` on, in order.
async fn read_from(
    stream: &jetstream::stream::Stream,
    filter: String,
    since: DateTime<Utc>,
) -> Result<consumer::pull::Ordered, TransportError> {
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::ByStartTime {
                start_time: to_nats(since),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("stream reader", e))?;
    reader
        .messages()
        .await
        .map_err(|e| unavailable("stream reader", e))
}

#[async_trait]
impl Replays for JetStreamReplays {
    async fn groups(&self) -> Result<Vec<String>, TransportError> {
        let stream = self
            .t
            .js
            .get_stream(&self.t.names.payloads)
            .await
            .map_err(|e| unavailable("payload stream", e))?;
        let mut names = stream.consumer_names();
        let mut groups = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| unavailable("payload stream consumers", e))?;
            if let Some(group) = name.strip_prefix("worker-") {
                groups.push(group.to_owned());
            }
        }
        groups.sort();
        Ok(groups)
    }

    async fn start(&self, request: &ReplayRequest) -> Result<ReplayRecord, TransportError> {
        let mut record = request.starting(&self.groups().await?)?;
        self.put(&record).await?;
        record.total = self.put_up(&record.id, request, &record.groups).await?;
        record.state = if record.total == 0 {
            ReplayState::Done
        } else {
            ReplayState::Running
        };
        self.put(&record).await?;
        Ok(record)
    }

    async fn progress(&self, id: &str) -> Result<ReplayProgress, TransportError> {
        let (record, _) = self.record(id).await?;
        let done = match record.state {
            ReplayState::Done => record.total * record.groups.len() as u64,
            ReplayState::Starting => 0,
            _ => self.done(&record).await?,
        };
        let mut errors = 0;
        for status in [OutcomeStatus::Error, OutcomeStatus::Timeout] {
            let filter = format!(
                "{}.result.*.{}.{}",
                self.t.names.prefix,
                token(id),
                status.as_str()
            );
            errors += self.result_counts(&filter).await?;
        }
        Ok(ReplayProgress {
            record,
            done,
            errors,
        })
    }

    async fn list(&self) -> Result<Vec<ReplayProgress>, TransportError> {
        let bucket = self.t.bucket().await?;
        let mut keys = bucket
            .keys()
            .await
            .map_err(|e| unavailable("replays bucket", e))?;
        let mut ids = Vec::new();
        while let Some(key) = keys.next().await {
            ids.push(key.map_err(|e| unavailable("replays bucket", e))?);
        }
        // ULIDs sort by time.
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.progress(&id).await?);
        }
        Ok(out)
    }

    async fn cancel(&self, id: &str) -> Result<ReplayProgress, TransportError> {
        let (record, _) = self.record(id).await?;
        if matches!(record.state, ReplayState::Done | ReplayState::Cancelled) {
            return Err(TransportError::Refused(format!(
                "replay {id} is {} already",
                record.state.as_str()
            )));
        }
        let mut progress = self.progress(id).await?;
        self.set_state(id, ReplayState::Cancelled).await?;
        progress.record.state = ReplayState::Cancelled;
        let stream = self
            .t
            .js
            .get_stream(&self.t.names.replay)
            .await
            .map_err(|e| unavailable("replay stream", e))?;
        stream
            .purge()
            .filter(self.t.replay_subject(id))
            .await
            .map_err(|e| unavailable("replay stream", e))?;
        Ok(progress)
    }

    async fn new_matches(&self, id: &str) -> Result<u64, TransportError> {
        self.count_new_matches(id).await
    }
}

impl JetStreamReplays {
    /// The rules of each earlier (not replayed) result of `groups` since
    /// `since`, by payload and group.
    async fn earlier_rules(
        &self,
        groups: &[String],
        since: DateTime<Utc>,
    ) -> Result<BTreeMap<(String, String), BTreeSet<String>>, TransportError> {
        let last = self.results_last().await?;
        let mut out = BTreeMap::new();
        for group in groups {
            let subject = format!("{}.result.{}", self.t.names.prefix, token(group));
            self.each_result(subject, since, last, |r| {
                if r.outcome.status == OutcomeStatus::Ok {
                    let rules = r.matches.into_iter().map(|m| m.rule).collect();
                    out.insert((r.payload.id, r.worker.name), rules);
                }
            })
            .await?;
        }
        Ok(out)
    }

    async fn results_last(&self) -> Result<u64, TransportError> {
        let mut results = self
            .t
            .js
            .get_stream(&self.t.names.results)
            .await
            .map_err(|e| unavailable("result stream", e))?;
        Ok(results
            .info()
            .await
            .map_err(|e| unavailable("result stream", e))?
            .state
            .last_sequence)
    }

    /// Payloads whose replay result names rules its original did not
    /// list: every rule counts where no original was found. The originals
    /// were read once, when the replay was put up.
    async fn count_new_matches(&self, id: &str) -> Result<u64, TransportError> {
        let (record, _) = self.record(id).await?;
        let last = self.results_last().await?;
        let mut gained = BTreeSet::new();
        for group in &record.groups {
            let subject = format!(
                "{}.result.{}.{}.ok",
                self.t.names.prefix,
                token(group),
                token(id)
            );
            self.each_result(subject, record.created_at, last, |r| {
                let new = match &r.new_matches {
                    Some(new) => !new.is_empty(),
                    None => !r.matches.is_empty(),
                };
                if new {
                    gained.insert(r.payload.id);
                }
            })
            .await?;
        }
        Ok(gained.len() as u64)
    }
}
