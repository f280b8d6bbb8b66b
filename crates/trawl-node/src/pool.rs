//! A worker group on this node: a pool actor supervising `concurrency` slot
//! actors that share the group's subscription. Each slot scans one payload at
//! a time off the async threads, publishes the result, then acknowledges.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;
use trawl_core::{wire, Backoff, OutcomeStatus, PayloadEvent, ResultEvent, ScanOutput, Scanner};
use trawl_transport::{
    publish_result_fitting, ConsumerOptions, Delivery, Subscription, Transport, TransportError,
};

use crate::metrics::Metrics;
use crate::scan::{scan, Scanned, PROGRESS_EVERY};
use crate::WorkerSpec;

/// Extra time past the scanner's own timeout before the slot stops waiting for it.
pub(crate) const HARD_TIMEOUT_MARGIN: Duration = Duration::from_secs(2);
/// Ack deadline past the hard scan limit, for publishing the result and acking.
const ACK_WAIT_MARGIN: Duration = Duration::from_secs(10);
/// Between pulls that failed in a row.
const PULL_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// What every slot of a group shares.
pub(crate) struct Group {
    pub(crate) scanner: Arc<dyn Scanner>,
    pub(crate) timeout: Duration,
    max_deliver: u32,
    dispatch: crate::Dispatch,
    transport: Arc<dyn Transport>,
    node: String,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub(crate) struct PoolArgs {
    group: Arc<Group>,
    concurrency: usize,
    stop: watch::Receiver<bool>,
}

impl PoolArgs {
    pub fn new(
        spec: WorkerSpec,
        node: &str,
        transport: Arc<dyn Transport>,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        PoolArgs {
            group: Arc::new(Group {
                scanner: spec.scanner,
                timeout: spec.timeout,
                max_deliver: spec.max_deliver,
                dispatch: spec.dispatch,
                transport,
                node: node.to_owned(),
                metrics,
            }),
            concurrency: spec.concurrency.max(1),
            stop,
        }
    }
}

pub(crate) struct PoolActor;

pub(crate) struct PoolState {
    slot: SlotArgs,
    slots: HashSet<ActorId>,
}

impl PoolState {
    async fn spawn_slot(&mut self, myself: &ActorRef<()>) -> Result<(), ActorProcessingErr> {
        let (slot, _) =
            Actor::spawn_linked(None, SlotActor, self.slot.clone(), myself.get_cell()).await?;
        self.slots.insert(slot.get_id());
        Ok(())
    }
}

impl Actor for PoolActor {
    type Msg = ();
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let g = &args.group;
        let name = g.scanner.info().name.clone();
        let options = ConsumerOptions::new(
            g.max_deliver,
            g.timeout + HARD_TIMEOUT_MARGIN + ACK_WAIT_MARGIN,
            args.concurrency,
        );
        let subscription = match g.dispatch.after_matches_of() {
            Some(worker) => g.transport.results_of(&name, worker, options).await?,
            None => g.transport.payloads(&name, options).await?,
        };
        let mut state = PoolState {
            slot: SlotArgs {
                group: args.group.clone(),
                subscription,
                stop: args.stop.clone(),
            },
            slots: HashSet::new(),
        };
        for _ in 0..args.concurrency {
            state.spawn_slot(&myself).await?;
        }
        tracing::info!(worker = %name, concurrency = args.concurrency, "worker group started");
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match &event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.clone().unwrap_or_default())
            }
            _ => return Ok(()),
        };
        if !state.slots.remove(&cell.get_id()) || *state.slot.stop.borrow() {
            return Ok(());
        }
        if why.is_empty() {
            // A slot stops cleanly only when the transport closed: nothing to restart.
            return Ok(());
        }
        // A slot's failure belongs to one payload, already recorded: restart at once.
        tracing::warn!(worker = %state.slot.group.scanner.info().name, reason = %why, "scan slot stopped; restarting it");
        Metrics::add(&state.slot.group.metrics.restarts, 1);
        state.spawn_slot(&myself).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<()>,
        _state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        myself.stop_children_and_wait(None, None).await;
        Ok(())
    }
}

#[derive(Clone)]
pub(crate) struct SlotArgs {
    group: Arc<Group>,
    subscription: Arc<dyn Subscription>,
    stop: watch::Receiver<bool>,
}

pub(crate) struct SlotActor;

pub(crate) struct SlotState {
    args: SlotArgs,
    /// Pulls that failed in a row.
    pull_failures: u32,
}

/// A slot's one message: take the next payload and scan it.
pub(crate) struct NextPayload;

impl Actor for SlotActor {
    type Msg = NextPayload;
    type State = SlotState;
    type Arguments = SlotArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<NextPayload>,
        args: SlotArgs,
    ) -> Result<SlotState, ActorProcessingErr> {
        Ok(SlotState {
            args,
            pull_failures: 0,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<NextPayload>,
        _state: &mut SlotState,
    ) -> Result<(), ActorProcessingErr> {
        myself.cast(NextPayload)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<NextPayload>,
        _message: NextPayload,
        slot: &mut SlotState,
    ) -> Result<(), ActorProcessingErr> {
        let state = &slot.args;
        let mut stop = state.stop.clone();
        let next = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => {
                myself.stop(None);
                return Ok(());
            }
            next = state.subscription.next() => next,
        };
        match next {
            Ok(Some(delivery)) => {
                slot.pull_failures = 0;
                if let Some(panic) = process(&state.group, delivery, &state.stop).await {
                    // The payload has its error result; fail so the pool restarts a clean slot.
                    return Err(panic.into());
                }
            }
            Ok(None) => {
                myself.stop(None);
                return Ok(());
            }
            Err(e) => {
                slot.pull_failures += 1;
                let delay = PULL_BACKOFF.delay(slot.pull_failures);
                tracing::warn!(worker = %state.group.scanner.info().name, error = %e, ?delay, "cannot pull payloads; retrying");
                tokio::time::sleep(delay).await;
            }
        }
        myself.cast(NextPayload)?;
        Ok(())
    }
}

/// Scan one delivery and publish its result; returns the panic message if the scanner panicked.
async fn process(g: &Group, delivery: Delivery, stop: &watch::Receiver<bool>) -> Option<String> {
    let worker = g.scanner.info();
    // Shared with the blocking scan, and kept for the children it unpacks.
    let event: Arc<PayloadEvent> = match decode(g, &delivery.data) {
        Ok(Some(e)) => Arc::new(e),
        Ok(None) => return filtered_out(g, delivery).await,
        Err(reason) => {
            if let Err(e) = delivery.dead_letter(&reason).await {
                tracing::error!(worker = %worker.name, error = %e, "cannot set an undecodable event aside");
            }
            return None;
        }
    };
    if !g.dispatch.wants_event(&event) {
        return filtered_out(g, delivery).await;
    }
    let started = Utc::now();
    let summary = event.summary();
    let given_up = delivery.attempt > g.max_deliver;
    let Scanned {
        outcome,
        output,
        panic,
        ..
    } = if given_up {
        let why = format!(
            "gave up after {} deliveries: the scan never completed (worker stopped or timed out each time)",
            g.max_deliver
        );
        Scanned::failed(OutcomeStatus::Error, why)
    } else {
        // A service the scan needs (clamd, exiftool, the blob store) is away:
        // the error goes on record once, then this slot keeps the payload,
        // without spending a delivery, and tries again with backoff until
        // the service is back (its result replaces the error) or the node stops.
        let mut outage = 0u32;
        loop {
            let scanned = match attempt(g, &event, &delivery).await {
                Some(s) => s,
                None => return filtered_out(g, delivery).await,
            };
            if !scanned.retry {
                break scanned;
            }
            if outage == 0 {
                let record = ResultEvent::new(
                    summary.clone(),
                    worker.clone(),
                    scanned.outcome,
                    scanned.output.data,
                    started,
                    &g.node,
                );
                if let Err(e) = publish_result_fitting(g.transport.as_ref(), &record).await {
                    tracing::warn!(worker = %worker.name, error = %e, "cannot publish result; payload handed back");
                    let _ = delivery.nak(Duration::from_secs(1)).await;
                    return None;
                }
            }
            outage += 1;
            let delay = trawl_core::Backoff::SERVICE.delay(outage);
            tracing::warn!(worker = %worker.name, payload_id = %summary.id, attempt = outage, ?delay, "a service the scan needs is unavailable; trying again");
            if !wait_out(&delivery, delay, stop).await {
                let _ = delivery.nak(Duration::ZERO).await;
                return None;
            }
        }
    };
    let counter = match outcome.status {
        OutcomeStatus::Ok | OutcomeStatus::Skipped => &g.metrics.results_ok,
        OutcomeStatus::Error => &g.metrics.results_error,
        OutcomeStatus::Timeout => &g.metrics.results_timeout,
    };
    Metrics::add(counter, 1);
    let ScanOutput {
        data,
        matches,
        children,
    } = output;
    let matched = !matches.is_empty();
    if matched {
        Metrics::add(&g.metrics.results_matched, 1);
    }
    if outcome.status != OutcomeStatus::Ok {
        tracing::warn!(worker = %worker.name, payload_id = %summary.id, path = summary.path.as_deref().unwrap_or(""), outcome = outcome.status.as_str(), message = outcome.message.as_deref().unwrap_or(""), "scan did not complete");
    }
    // Children are in the transport before the parent is acknowledged: a
    // crash in between unpacks the parent again, with the same child ids.
    for (i, child) in children.into_iter().enumerate() {
        let e = event.child(i, &child, &worker.name);
        if let Err(e) = g
            .transport
            .publish_payload(e, Bytes::from(child.data))
            .await
        {
            tracing::warn!(worker = %worker.name, error = %e, "cannot publish an unpacked file; payload handed back");
            let _ = delivery.nak(Duration::from_secs(1)).await;
            return panic;
        }
    }
    let mut result = ResultEvent::new(summary, worker.clone(), outcome, data, started, &g.node);
    result.matches = matches;
    if matched {
        result.payload_event = Some(Box::new(Arc::unwrap_or_clone(event)));
    }
    match publish_result_fitting(g.transport.as_ref(), &result).await {
        Ok(()) if given_up => {
            // The error result is stored; the payload itself is kept aside for inspection.
            let reason = result.outcome.message.as_deref().unwrap_or("gave up");
            if let Err(e) = delivery.dead_letter(reason).await {
                tracing::warn!(worker = %worker.name, error = %e, "cannot set the payload aside");
            }
        }
        Ok(()) => {
            if let Err(e) = delivery.ack().await {
                tracing::warn!(worker = %worker.name, error = %e, "ack failed; the payload will be redelivered and its result upserted");
            }
        }
        Err(e) => {
            tracing::warn!(worker = %worker.name, error = %e, "cannot publish result; payload handed back");
            let _ = delivery.nak(Duration::from_secs(1)).await;
        }
    }
    panic
}

/// Fetch the payload's bytes and scan them; `None` if the group's filter
/// leaves the payload out once its content is known.
async fn attempt(g: &Group, event: &Arc<PayloadEvent>, delivery: &Delivery) -> Option<Scanned> {
    Some(match g.transport.fetch_blob(&event.blob).await {
        Ok(bytes) if !g.dispatch.wants_content(event, &bytes) => return None,
        Ok(bytes) => scan(g, event.clone(), bytes, delivery).await,
        // Gone for good (past the store's retention) or corrupt: the error is the result.
        Err(e @ (TransportError::BlobMissing(_) | TransportError::BlobCorrupt { .. })) => {
            Scanned::failed(
                OutcomeStatus::Error,
                format!("payload bytes unavailable: {e}"),
            )
        }
        // The server is unreachable for now.
        Err(e) => Scanned {
            retry: true,
            ..Scanned::failed(
                OutcomeStatus::Error,
                format!("payload bytes unavailable: {e}; will retry"),
            )
        },
    })
}

/// Wait `delay` while telling the transport the payload is still in hand;
/// `false` if the node began to stop.
async fn wait_out(delivery: &Delivery, delay: Duration, stop: &watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    let pause = tokio::time::sleep(delay);
    tokio::pin!(pause);
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        let stopping = tokio::select! {
            _ = &mut pause => return true,
            // Stopping, or the node is gone.
            _ = stop.wait_for(|s| *s) => true,
            _ = progress.tick() => false,
        };
        if stopping {
            return false;
        }
        let _ = delivery.in_progress().await;
    }
}

/// The payload event a delivery is about: the message itself, or for a group
/// that waits for another's matches, the event inside a result that meets its
/// filter (`None`: not one to scan).
fn decode(g: &Group, data: &[u8]) -> Result<Option<PayloadEvent>, String> {
    if g.dispatch.after_matches_of().is_none() {
        return wire::decode(data)
            .map(Some)
            .map_err(|e| format!("undecodable payload event: {e}"));
    }
    let result: ResultEvent =
        wire::decode(data).map_err(|e| format!("undecodable result event: {e}"))?;
    Ok(result
        .payload_event
        .filter(|_| {
            result.outcome.status == OutcomeStatus::Ok && g.dispatch.wants_matches(&result.matches)
        })
        .map(|e| *e))
}

/// A payload this group's filter leaves out: acknowledged, no result.
async fn filtered_out(g: &Group, delivery: Delivery) -> Option<String> {
    Metrics::add(&g.metrics.filtered, 1);
    if let Err(e) = delivery.ack().await {
        tracing::warn!(worker = %g.scanner.info().name, error = %e, "ack of a filtered-out payload failed; it will be looked at again");
    }
    None
}
