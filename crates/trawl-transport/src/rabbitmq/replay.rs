//! Replays over RabbitMQ. Every payload event (its bytes inline, or where
//! they are in a blob stream) is kept in the stream `{prefix}.log.payloads` and every result in
//! `{prefix}.log.results`, for `max_age`. `trawl replay` reads the range
//! from the payload log by time, tags each event with the replay's id and
//! what each group found in it before (from the result log), and puts it
//! up on the fanout exchange `{prefix}.replay.{id}`, one quorum queue per
//! group. The replay's record goes to the stream `{prefix}.log.replays`;
//! every node follows that stream and consumes the queue of each running
//! replay that names one of its groups, shared by the group's members on
//! all nodes. Progress is read from the result log: each replay result is
//! tagged with its replay's id.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use tokio::sync::mpsc;
use trawl_core::{wire, Backoff, OutcomeStatus, PayloadEvent, ResultEvent};

use super::consume::{declare_queue, pump, QueueSpec, RabbitSubscription};
use super::link::unavailable;
use super::log::{header, is_marker, Start};
use super::names::Names;
use super::RabbitTransport;
use crate::replay::Joined;
use crate::token::token;
use crate::{
    ConsumerOptions, ReplayProgress, ReplayRecord, ReplayRequest, ReplayState, Replays,
    Subscription, TransportError,
};

/// The header that names a replay result's replay.
const REPLAY: &str = "x-trawl-replay";
/// Payload events a replay puts up before it waits for the broker's confirms.
const PUT_UP_WINDOW: usize = 256;
/// Between tries to follow the replays stream.
const FOLLOW_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// Headers that tag a message with replay `id`.
pub(super) fn tagged(id: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(REPLAY.into(), AMQPValue::LongString(id.into()));
    headers
}

fn replay_queue(names: &Names, id: &str, group: &str) -> String {
    Names::queue(
        &names.replay_exchange(id),
        &format!("worker-{}", token(group)),
    )
}

impl RabbitTransport {
    /// Join `group` on every running replay that names it.
    pub(super) fn follow_replays(
        &self,
        group: &str,
        options: ConsumerOptions,
    ) -> Arc<dyn Subscription> {
        let (tx, rx) = mpsc::channel(options.prefetch.max(1));
        tokio::spawn(follow(self.clone(), group.to_owned(), options, tx));
        let paced = format!("replay-{}", token(group));
        Arc::new(RabbitSubscription::fed(self.clone(), rx, Some(paced)))
    }
}

/// Follow the replays stream for `group`, consuming each running replay
/// that names it, until the transport closes.
async fn follow(
    t: RabbitTransport,
    group: String,
    options: ConsumerOptions,
    tx: mpsc::Sender<super::consume::Fed>,
) {
    let mut joined = Joined::new(&group);
    let mut failures = 0u32;
    loop {
        let records = async {
            let connection = t.inner.link.connection().await?;
            t.stream_consumer(&connection, &t.inner.names.replays, Start::First, 256)
                .await
        };
        let failure = match records.await {
            Ok((_channel, mut records)) => loop {
                let next = tokio::select! {
                    _ = t.inner.shutdown.notified() => return,
                    _ = tx.closed() => return,
                    next = records.next() => next,
                };
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => break e.to_string(),
                    None => break "the replays stream consumer ended".to_owned(),
                };
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                failures = 0;
                if is_marker(&delivery.properties) {
                    continue;
                }
                let Ok(record) = serde_json::from_slice::<ReplayRecord>(&delivery.data) else {
                    continue;
                };
                // A replay no longer running keeps its consumer until its
                // queue is removed, which ends it: stopping it here as well
                // races the broker's cancel, which lapin takes for a
                // protocol error that closes the whole connection.
                let _ = joined.update(&record.id, Some(&record), || {
                    let spec = QueueSpec {
                        queue: replay_queue(&t.inner.names, &record.id, &group).into(),
                        source: None,
                        delivery_limit: super::delivery_limit(&options),
                        prefetch: super::read_ahead(&options),
                    };
                    tokio::spawn(pump(t.clone(), spec, None, tx.clone()))
                });
            },
            Err(e) => e.to_string(),
        };
        failures += 1;
        let delay = FOLLOW_BACKOFF.delay(failures);
        tracing::warn!(%group, error = %failure, ?delay, "cannot follow replays; retrying");
        tokio::select! {
            _ = t.inner.shutdown.notified() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// What the result log says of one replay so far.
#[derive(Default)]
struct Tally {
    /// Where the last read stopped.
    next: Option<u64>,
    /// (payload, group) scanned.
    scanned: HashSet<(String, String)>,
    errors: HashSet<(String, String)>,
    /// Payloads whose replay result names rules the original did not.
    gained: HashSet<String>,
}

/// Replays seen from the command line.
pub(crate) struct RabbitReplays {
    t: RabbitTransport,
    tallies: std::sync::Mutex<HashMap<String, Tally>>,
}

impl RabbitReplays {
    pub(super) fn new(t: RabbitTransport) -> Self {
        RabbitReplays {
            t,
            tallies: Default::default(),
        }
    }

    /// Every replay, each as last recorded.
    async fn records(&self) -> Result<BTreeMap<String, ReplayRecord>, TransportError> {
        let mut reader = self
            .t
            .read_stream(&self.t.inner.names.replays, Start::First)
            .await?;
        let mut out = BTreeMap::new();
        while let Some(m) = reader.next().await? {
            if let Ok(r) = serde_json::from_slice::<ReplayRecord>(&m.data) {
                out.insert(r.id.clone(), r);
            }
        }
        Ok(out)
    }

    async fn record(&self, id: &str) -> Result<ReplayRecord, TransportError> {
        self.records()
            .await?
            .remove(id)
            .ok_or_else(|| TransportError::Refused(format!("no replay {id}")))
    }

    async fn put(&self, record: &ReplayRecord) -> Result<(), TransportError> {
        let value = serde_json::to_vec(record).expect("a replay record serialises");
        self.t
            .append(&self.t.inner.names.replays, &value, None)
            .await
    }

    /// The exchange of replay `id` with a queue per group, or their removal.
    async fn queues(&self, record: &ReplayRecord, make: bool) -> Result<(), TransportError> {
        let names = &self.t.inner.names;
        let exchange = names.replay_exchange(&record.id);
        let channel = self.t.inner.link.channel().await?;
        let fail = |e: lapin::Error| unavailable(&format!("replay {}", record.id), e);
        if make {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Fanout,
                    durable,
                    FieldTable::default(),
                )
                .await
                .map_err(fail)?;
        }
        for group in &record.groups {
            let queue = replay_queue(names, &record.id, group);
            if make {
                declare_queue(&channel, &queue, Some(&names.dead), None).await?;
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(fail)?;
            } else {
                channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .map_err(fail)?;
            }
        }
        if !make {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(fail)?;
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    /// The rules of each earlier (not replayed) ok result of `groups` since
    /// `since`, by payload and group.
    async fn earlier_rules(
        &self,
        groups: &[String],
        since: chrono::DateTime<Utc>,
    ) -> Result<BTreeMap<(String, String), BTreeSet<String>>, TransportError> {
        let mut reader = self
            .t
            .read_stream(&self.t.inner.names.result_log, Start::Time(since))
            .await?;
        let mut out = BTreeMap::new();
        while let Some(m) = reader.next().await? {
            if header(&m.properties, REPLAY).is_some() {
                continue;
            }
            let Ok(r) = wire::decode::<ResultEvent>(&m.data) else {
                continue;
            };
            if r.outcome.status == OutcomeStatus::Ok && groups.contains(&r.worker.name) {
                let rules = r.matches.into_iter().map(|m| m.rule).collect();
                out.insert((r.payload.id, r.worker.name), rules);
            }
        }
        Ok(out)
    }

    /// Put the payload events the request names up for `record`'s groups,
    /// each with what the group found in it before; returns how many.
    async fn put_up(
        &self,
        record: &ReplayRecord,
        request: &ReplayRequest,
    ) -> Result<u64, TransportError> {
        let t = &self.t;
        self.queues(record, true).await?;
        let before = self.earlier_rules(&record.groups, request.since).await?;
        let exchange = t.inner.names.replay_exchange(&record.id);
        let (since, until) = (request.since.timestamp(), request.until.timestamp());
        let mut reader = t
            .read_stream(&t.inner.names.payload_log, Start::Time(request.since))
            .await?;
        let mut total = 0;
        let mut seen = HashSet::new();
        let mut confirms = std::collections::VecDeque::new();
        while let Some(m) = reader.next().await? {
            let stored = m.properties.timestamp().map_or(0, |s| s as i64);
            if stored < since || stored > until {
                continue;
            }
            let Ok(mut event) = wire::decode::<PayloadEvent>(&m.data) else {
                continue;
            };
            // A payload logged twice (a publish retried) is put up once.
            if !request.wants(&event) || !seen.insert(event.id.clone()) {
                continue;
            }
            event.replay_id = Some(record.id.clone());
            for group in &record.groups {
                if let Some(rules) = before.get(&(event.id.clone(), group.clone())) {
                    event
                        .replay_previous
                        .insert(group.clone(), rules.iter().cloned().collect());
                }
            }
            let body = wire::encode(&event)?;
            let id = format!("{}.{}", record.id, event.id);
            let placement = super::blobs::placement(&event.blob);
            // Confirms are awaited a window at a time, not one by one.
            if confirms.len() >= PUT_UP_WINDOW {
                let confirm = confirms.pop_front().expect("a full window");
                super::settle(confirm, &exchange).await?;
            }
            confirms.push_back(t.send(&exchange, "", &body, Some(&id), placement).await?);
            total += 1;
        }
        for confirm in confirms {
            super::settle(confirm, &exchange).await?;
        }
        Ok(total)
    }

    /// `record`'s progress, read on from where the last look stopped; a
    /// replay found complete is recorded done and its queues removed.
    async fn progress_of(
        &self,
        mut record: ReplayRecord,
    ) -> Result<ReplayProgress, TransportError> {
        let scans = record.total * record.groups.len() as u64;
        if record.state == ReplayState::Starting {
            return Ok(ReplayProgress {
                record,
                done: 0,
                errors: 0,
            });
        }
        let (scanned, errors, _) = self.tally(&record).await?;
        let done = if record.state == ReplayState::Done {
            scans
        } else {
            scanned.min(scans)
        };
        if record.state == ReplayState::Running && done >= scans {
            record.state = ReplayState::Done;
            self.put(&record).await?;
            self.queues(&record, false).await?;
        }
        Ok(ReplayProgress {
            record,
            done,
            errors,
        })
    }

    /// (scans done, scans with errors, payloads that gained matches).
    async fn tally(&self, record: &ReplayRecord) -> Result<(u64, u64, u64), TransportError> {
        let id = &record.id;
        let mut tally = self
            .tallies
            .lock()
            .expect("tallies lock")
            .remove(id)
            .unwrap_or_default();
        let start = tally
            .next
            .map_or(Start::Time(record.created_at), Start::After);
        let mut reader = self
            .t
            .read_stream(&self.t.inner.names.result_log, start)
            .await?;
        while let Some(m) = reader.next().await? {
            if header(&m.properties, REPLAY) != Some(id.as_str()) {
                continue;
            }
            let Ok(r) = wire::decode::<ResultEvent>(&m.data) else {
                continue;
            };
            let key = (r.payload.id.clone(), r.worker.name.clone());
            match r.outcome.status {
                OutcomeStatus::Error | OutcomeStatus::Timeout => {
                    tally.errors.insert(key.clone());
                }
                OutcomeStatus::Ok => {
                    let gained = match &r.new_matches {
                        Some(new) => !new.is_empty(),
                        None => !r.matches.is_empty(),
                    };
                    if gained {
                        tally.gained.insert(r.payload.id.clone());
                    }
                }
                _ => {}
            }
            tally.scanned.insert(key);
        }
        tally.next = reader.end().or(tally.next);
        let counts = (
            tally.scanned.len() as u64,
            tally.errors.len() as u64,
            tally.gained.len() as u64,
        );
        self.tallies
            .lock()
            .expect("tallies lock")
            .insert(id.clone(), tally);
        Ok(counts)
    }
}

#[async_trait]
impl Replays for RabbitReplays {
    async fn groups(&self) -> Result<Vec<String>, TransportError> {
        let prefix = format!("{}.worker-", self.t.inner.names.payloads);
        let mut groups: Vec<String> = self
            .t
            .management()?
            .queues()
            .await?
            .into_iter()
            .filter_map(|q| q.name.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        groups.sort();
        Ok(groups)
    }

    async fn start(&self, request: &ReplayRequest) -> Result<ReplayRecord, TransportError> {
        let mut record = request.starting(&self.groups().await?)?;
        self.put(&record).await?;
        record.total = self.put_up(&record, request).await?;
        record.state = if record.total == 0 {
            ReplayState::Done
        } else {
            ReplayState::Running
        };
        self.put(&record).await?;
        if record.total == 0 {
            self.queues(&record, false).await?;
        }
        Ok(record)
    }

    async fn progress(&self, id: &str) -> Result<ReplayProgress, TransportError> {
        let record = self.record(id).await?;
        self.progress_of(record).await
    }

    async fn list(&self) -> Result<Vec<ReplayProgress>, TransportError> {
        let mut out = Vec::new();
        // ULIDs sort by time.
        for record in self.records().await?.into_values() {
            out.push(self.progress_of(record).await?);
        }
        Ok(out)
    }

    async fn cancel(&self, id: &str) -> Result<ReplayProgress, TransportError> {
        let record = self.record(id).await?;
        if matches!(record.state, ReplayState::Done | ReplayState::Cancelled) {
            return Err(TransportError::Refused(format!(
                "replay {id} is {} already",
                record.state.as_str()
            )));
        }
        let mut progress = self.progress_of(record).await?;
        progress.record.state = ReplayState::Cancelled;
        self.put(&progress.record).await?;
        self.queues(&progress.record, false).await?;
        Ok(progress)
    }

    async fn new_matches(&self, id: &str) -> Result<u64, TransportError> {
        let record = self.record(id).await?;
        Ok(self.tally(&record).await?.2)
    }
}
