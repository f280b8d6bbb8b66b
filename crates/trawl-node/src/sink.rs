//! One connector: pulls results in batches (by size or interval), writes them,
//! and acknowledges only after the datastore confirmed. A store that is down
//! is retried with backoff while the results wait in the transport.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{watch, Mutex};
use trawl_core::{wire, Connector, ResultEvent};
use trawl_transport::{ConsumerOptions, Delivery, Subscription, Transport};

use crate::metrics::Metrics;
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
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

impl SinkArgs {
    pub fn new(
        spec: ConnectorSpec,
        transport: Arc<dyn Transport>,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        SinkArgs {
            name: spec.connector.name().to_owned(),
            connector: Arc::new(Mutex::new(spec.connector)),
            batch_size: spec.batch_size.max(1),
            flush_interval: spec.flush_interval,
            transport,
            metrics,
            stop,
        }
    }
}

pub(crate) struct SinkActor;

pub(crate) struct SinkState {
    args: SinkArgs,
    subscription: Arc<dyn Subscription>,
}

pub(crate) struct Pull;

impl Actor for SinkActor {
    type Msg = Pull;
    type State = SinkState;
    type Arguments = SinkArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Pull>,
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
        myself: ActorRef<Pull>,
        _state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        myself.cast(Pull)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Pull>,
        _message: Pull,
        state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        let mut stop = state.args.stop.clone();
        let first = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => None,
            next = state.subscription.next() => next?,
        };
        let Some(first) = first else {
            myself.stop(None);
            return Ok(());
        };
        let mut deliveries = vec![first];
        let deadline = Instant::now() + state.args.flush_interval;
        while deliveries.len() < state.args.batch_size {
            let left = deadline.saturating_duration_since(Instant::now());
            match state.subscription.next_timeout(left).await? {
                Some(d) => deliveries.push(d),
                None => break,
            }
        }
        flush(&state.args, deliveries).await;
        myself.cast(Pull)?;
        Ok(())
    }
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
    let mut attempt = 0u32;
    let stored = loop {
        match in_progress(&keep, connector.write(&results)).await {
            Ok(()) => break true,
            Err(e) if e.is_retryable() => {
                attempt += 1;
                Metrics::add(&args.metrics.store_retries, 1);
                let delay = trawl_core::retry_delay(attempt);
                tracing::warn!(connector = %args.name, error = %e, attempt, ?delay, "datastore unavailable; retrying");
                let mut stop = args.stop.clone();
                let stopping = in_progress(&keep, async {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => false,
                        _ = stop.wait_for(|s| *s) => true,
                    }
                })
                .await;
                if stopping {
                    // Give the results back; the transport keeps them for the next run.
                    for d in keep {
                        let _ = d.nak(Duration::ZERO).await;
                    }
                    return;
                }
            }
            Err(e) => {
                tracing::error!(connector = %args.name, error = %e, count = results.len(), ids = ?results.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), "datastore rejected results");
                break false;
            }
        }
    };
    if stored {
        let bytes: u64 = results.iter().map(|r| r.payload.size).sum();
        Metrics::add(&args.metrics.stored, results.len() as u64);
        Metrics::add(&args.metrics.stored_bytes, bytes);
    }
    for d in keep {
        if let Err(e) = d.ack().await {
            tracing::warn!(connector = %args.name, error = %e, "ack failed; the result will be redelivered and upserted");
        }
    }
}
