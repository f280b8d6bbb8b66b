//! One connector: pulls results in batches (by size or interval), writes them,
//! and acknowledges only after the datastore confirmed. A store that is down
//! is retried with backoff while the results wait in the transport.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{watch, Mutex};
use trawl_core::{wire, Connector, ResultEvent};
use trawl_transport::{ConsumerOptions, Delivery, Subscription, Transport};

use crate::metrics::{ConnectorSeries, Metrics};
use crate::ConnectorSpec;

/// Results are acknowledged after their batch is written; while a write or a
/// retry is under way they are kept in progress every [`HEARTBEAT`]. Short,
/// so that the batch of a node that died is redelivered soon.
const RESULT_ACK_WAIT: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Run `work`, telling the transport every [`HEARTBEAT`] that `deliveries`
/// are still being handled.
async fn in_progress<T>(deliveries: &[Delivery], work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = beat.tick() => {
                for d in deliveries {
                    let _ = d.in_progress().await;
                }
            }
        }
    }
}

#[derive(Clone)]
pub(crate) struct SinkArgs {
    name: String,
    // Shared so that a restarted actor keeps the open store.
    connector: Arc<Mutex<Box<dyn Connector>>>,
    batch_size: usize,
    flush_interval: Duration,
    transport: Arc<dyn Transport>,
    series: ConnectorSeries,
    stop: watch::Receiver<bool>,
    intake_over: watch::Receiver<bool>,
}

impl SinkArgs {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub fn new(
        spec: ConnectorSpec,
        transport: Arc<dyn Transport>,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
        intake_over: watch::Receiver<bool>,
    ) -> Self {
        SinkArgs {
            series: ConnectorSeries::new(metrics, spec.connector.name()),
            name: spec.connector.name().to_owned(),
            connector: Arc::new(Mutex::new(spec.connector)),
            batch_size: spec.batch_size.max(1),
            flush_interval: spec.flush_interval,
            transport,
            stop,
            intake_over,
        }
    }
}

pub(crate) struct SinkActor;

pub(crate) struct SinkState {
    args: SinkArgs,
    subscription: Arc<dyn Subscription>,
}

/// A sink's one message: gather the next batch of results and store it.
pub(crate) struct NextBatch;

impl Actor for SinkActor {
    type Msg = NextBatch;
    type State = SinkState;
    type Arguments = SinkArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<NextBatch>,
        args: SinkArgs,
    ) -> Result<SinkState, ActorProcessingErr> {
        let subscription = args
            .transport
            .results(
                &args.name,
                // Results are retried until stored: they are never given up.
                ConsumerOptions::new(u32::MAX, RESULT_ACK_WAIT, args.batch_size),
            )
            .await?;
        Ok(SinkState { args, subscription })
    }

    async fn post_start(
        &self,
        myself: ActorRef<NextBatch>,
        _state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        myself.cast(NextBatch)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<NextBatch>,
        _message: NextBatch,
        state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        let mut stop = state.args.stop.clone();
        let first = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => Ok(Ok(None)),
            next = tokio::time::timeout(IDLE_CHECK, state.subscription.next()) => next,
        };
        let first = match first {
            Ok(next) => next?,
            // No results for a while: is the store still there?
            Err(_) => {
                reach(&state.args).await;
                myself.cast(NextBatch)?;
                return Ok(());
            }
        };
        let Some(first) = first else {
            myself.stop(None);
            return Ok(());
        };
        let mut deliveries = vec![first];
        let deadline = Instant::now() + state.args.flush_interval;
        while deliveries.len() < state.args.batch_size {
            let mut left = deadline.saturating_duration_since(Instant::now());
            // With no more files coming in, a pause means the run is ending:
            // its last results are written now, not after the interval.
            if *state.args.intake_over.borrow() {
                left = left.min(LINGER);
            }
            match state.subscription.next_timeout(left).await? {
                Some(d) => deliveries.push(d),
                None => break,
            }
        }
        flush(&state.args, deliveries).await;
        myself.cast(NextBatch)?;
        Ok(())
    }
}

/// How long a sink waits for another result once the node's sources have
/// all ended (a `trawl scan`, an archive replay) before it writes a partial
/// batch.
const LINGER: Duration = Duration::from_millis(5);

/// How long a sink waits for results before it asks its store whether it
/// answers, so that `/healthz` knows of a store gone while the node is idle.
const IDLE_CHECK: Duration = Duration::from_secs(10);
/// A store that takes longer to answer that is away.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

async fn reach(args: &SinkArgs) {
    let mut connector = args.connector.lock().await;
    let away = match tokio::time::timeout(REACH_TIMEOUT, connector.reachable()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {REACH_TIMEOUT:?}")),
    };
    args.series.reached(away);
}

async fn flush(args: &SinkArgs, deliveries: Vec<Delivery>) {
    let mut results = Vec::with_capacity(deliveries.len());
    let mut keep = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        match wire::decode::<ResultEvent>(&d.data) {
            Ok(mut r) => {
                // Carried for worker groups that scan matched payloads; stores keep findings.
                r.payload_event = None;
                results.push(r);
                keep.push(d);
            }
            Err(e) => {
                let reason = format!("undecodable result event: {e}");
                args.series.set_aside();
                if let Err(e) = d.dead_letter(&reason).await {
                    tracing::error!(connector = %args.name, error = %e, "cannot set an undecodable result aside");
                }
            }
        }
    }
    if results.is_empty() {
        return;
    }
    let mut connector = args.connector.lock().await;
    // A batch the store refuses is split until each refused result stands
    // alone; that one is stored as a trimmed error record, and set aside
    // with its reason only if the store refuses even that.
    let mut refused: Vec<Option<String>> = vec![None; results.len()];
    let mut stored = 0usize;
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    ranges.push(0..results.len());
    while let Some(range) = ranges.pop() {
        let why = match write(args, connector.as_mut(), &results[range.clone()], &keep).await {
            Written::Stored => {
                stored += range.len();
                continue;
            }
            Written::Stopping => return give_back(keep).await,
            Written::Refused(why) => why,
        };
        if range.len() > 1 {
            let mid = range.start + range.len() / 2;
            ranges.push(mid..range.end);
            ranges.push(range.start..mid);
            continue;
        }
        let r = &results[range.start];
        tracing::warn!(connector = %args.name, result = %r.id, worker = %r.worker.name, reason = %why, "datastore refused a result; storing an error record instead");
        let trimmed = r.refused(&format!("refused by the datastore: {why}"));
        match write(
            args,
            connector.as_mut(),
            std::slice::from_ref(&trimmed),
            &keep,
        )
        .await
        {
            Written::Stored => stored += 1,
            Written::Stopping => return give_back(keep).await,
            Written::Refused(again) => {
                args.series.set_aside();
                refused[range.start] = Some(format!(
                    "refused by datastore {}: {why}; its error record too: {again}",
                    args.name
                ));
            }
        }
    }
    let bytes: u64 = results.iter().map(|r| r.payload.size).sum();
    args.series.stored(stored as u64, bytes);
    for (d, refused) in keep.into_iter().zip(refused) {
        let done = match refused {
            Some(reason) => {
                tracing::error!(connector = %args.name, %reason, "result set aside");
                d.dead_letter(&reason).await
            }
            None => d.ack().await,
        };
        if let Err(e) = done {
            tracing::warn!(connector = %args.name, error = %e, "ack failed; the result will be redelivered and upserted");
        }
    }
}

/// What became of one write.
enum Written {
    Stored,
    /// The store will not take this batch as it is.
    Refused(String),
    /// The node is stopping while the store is away.
    Stopping,
}

/// Write `batch`, waiting out a store that is away (with backoff) until it
/// answers or the node stops.
async fn write(
    args: &SinkArgs,
    connector: &mut dyn Connector,
    batch: &[ResultEvent],
    keep: &[Delivery],
) -> Written {
    let mut attempt = 0u32;
    loop {
        let began = Instant::now();
        let wrote = in_progress(keep, connector.write(batch)).await;
        let away = match &wrote {
            Err(e) if e.is_retryable() => Some(e.to_string()),
            _ => None,
        };
        args.series.wrote(began.elapsed(), away);
        match wrote {
            Ok(()) => return Written::Stored,
            Err(e) if e.is_retryable() => {
                attempt += 1;
                let delay = trawl_core::Backoff::SERVICE.delay(attempt);
                tracing::warn!(connector = %args.name, error = %e, attempt, ?delay, "datastore unavailable; retrying");
                let mut stop = args.stop.clone();
                let stopping = in_progress(keep, async {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => false,
                        _ = stop.wait_for(|s| *s) => true,
                    }
                })
                .await;
                if stopping {
                    return Written::Stopping;
                }
            }
            Err(e) => return Written::Refused(e.to_string()),
        }
    }
}

/// Give results back; the transport keeps them for the next run.
async fn give_back(keep: Vec<Delivery>) {
    for d in keep {
        let _ = d.nak(Duration::ZERO).await;
    }
}
