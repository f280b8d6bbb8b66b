//! A worker group on this node: a pool actor supervising `concurrency` slot
//! actors that share the group's subscription. Each slot scans one payload at
//! a time off the async threads, publishes the result, then acknowledges.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;
use trawl_core::{
    wire, Backoff, OutcomeStatus, PayloadEvent, Reload, ResultEvent, ScanOutput, Scanner,
};
use trawl_transport::{
    cache_key, publish_result_fitting, ConsumerOptions, Delivery, GroupState, ResultCache,
    Subscription, Transport, TransportError,
};

use crate::metrics::{GroupSeries, Metrics};
use crate::scan::{scan, ScanThread, Scanned, PROGRESS_EVERY};
use crate::WorkerSpec;

/// Extra time past the scanner's own timeout before the slot stops waiting for it.
pub(crate) const HARD_TIMEOUT_MARGIN: Duration = Duration::from_secs(2);
/// Ack deadline past the hard scan limit, for publishing the result and acking.
const ACK_WAIT_MARGIN: Duration = Duration::from_secs(10);
/// How often a group tells `trawl status` what it runs, unchanged.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(60);
/// How often a group looks whether its rule files changed.
const RULES_LOOK_EVERY: Duration = Duration::from_secs(2);
/// Between pulls that failed in a row.
const PULL_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// Results each slot may have on their way (published, then their payload
/// acknowledged) while it scans the next payloads.
const SETTLING_PER_SLOT: usize = 8;
/// How long a stopping group waits for its results on their way.
const SETTLE_PATIENCE: Duration = Duration::from_secs(10);

/// What every slot of a group shares.
pub(crate) struct Group {
    pub(crate) scanner: Arc<dyn Scanner>,
    pub(crate) timeout: Duration,
    max_deliver: u32,
    dispatch: crate::Dispatch,
    transport: Arc<dyn Transport>,
    node: String,
    series: GroupSeries,
    dedup: Option<Dedup>,
    /// A permit per result on its way; all of them when none is.
    settling: Arc<tokio::sync::Semaphore>,
    settling_permits: u32,
}

/// Results copied for payloads whose content the group scanned shortly
/// before; one scan at a time per content, so copies wait for the first.
struct Dedup {
    ttl: Duration,
    /// Smaller payloads are scanned without a lookup.
    min_size: u64,
    cache: Arc<dyn ResultCache>,
    flights: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The right to scan one content, held until its result is remembered.
struct Flight<'a> {
    dedup: &'a Dedup,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut flights = self.dedup.flights.lock().expect("flights lock");
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::strong_count(f) == 1)
        {
            flights.remove(&self.key);
        }
    }
}

impl Dedup {
    async fn enter(&self, key: &str) -> Flight<'_> {
        let lock = self
            .flights
            .lock()
            .expect("flights lock")
            .entry(key.to_owned())
            .or_default()
            .clone();
        Flight {
            dedup: self,
            key: key.to_owned(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// The result stored under `key`, if still within the ttl.
    async fn fresh(&self, key: &str) -> Option<ResultEvent> {
        let hit = match self.cache.get(key).await {
            Ok(hit) => hit?,
            // The payload is scanned instead.
            Err(e) => {
                tracing::debug!(error = %e, "result cache unavailable");
                return None;
            }
        };
        let age = (Utc::now() - hit.started_at).to_std().unwrap_or_default();
        (age < self.ttl).then_some(hit)
    }

    /// Keeps `result` for identical payloads, without the sensor's event,
    /// which belongs to this payload alone (set aside while it is stored,
    /// where a copy of the whole result cost as much as the storing).
    async fn remember(&self, result: &mut ResultEvent) {
        let key = cache_key(&result.worker, &result.payload.sha256);
        let event = result.payload_event.take();
        if let Err(e) = self.cache.put(&key, result).await {
            tracing::debug!(error = %e, "cannot remember a result for identical payloads");
        }
        result.payload_event = event;
    }
}

#[derive(Clone)]
pub(crate) struct PoolArgs {
    group: Arc<Group>,
    concurrency: usize,
    replay_slots: usize,
    stop: watch::Receiver<bool>,
}

impl PoolArgs {
    pub(crate) fn name(&self) -> String {
        self.group.scanner.info().name
    }

    pub fn new(
        spec: WorkerSpec,
        node: &str,
        transport: Arc<dyn Transport>,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let dedup = spec.dedup_ttl.and_then(|ttl| {
            let cache = transport.result_cache()?;
            Some(Dedup {
                ttl,
                min_size: spec.dedup_min_size.unwrap_or_else(|| cache.worth_from()),
                cache,
                flights: Default::default(),
            })
        });
        let concurrency = spec.concurrency.max(1);
        let settling_permits = concurrency * SETTLING_PER_SLOT;
        PoolArgs {
            group: Arc::new(Group {
                settling: Arc::new(tokio::sync::Semaphore::new(settling_permits)),
                settling_permits: settling_permits as u32,
                dedup,
                series: GroupSeries::new(metrics, &spec.scanner.info().name),
                scanner: spec.scanner,
                timeout: spec.timeout,
                max_deliver: spec.max_deliver,
                dispatch: spec.dispatch,
                transport,
                node: node.to_owned(),
            }),
            concurrency,
            replay_slots: spec.replay_slots.clamp(1, spec.concurrency.max(1)),
            stop,
        }
    }
}

pub(crate) struct PoolActor;

pub(crate) struct PoolState {
    slot: SlotArgs,
    slots: HashSet<ActorId>,
    /// The group's replays, and its slots that take from them.
    replay: Option<Arc<dyn Subscription>>,
    replay_slots: HashSet<ActorId>,
    reloads: tokio::task::JoinHandle<()>,
}

impl PoolState {
    /// A slot; it also takes replayed payloads if `replays`.
    async fn spawn_slot(
        &mut self,
        myself: &ActorRef<()>,
        replays: bool,
    ) -> Result<(), ActorProcessingErr> {
        let args = SlotArgs {
            replay: self.replay.clone().filter(|_| replays),
            ..self.slot.clone()
        };
        let (slot, _) = Actor::spawn_linked(None, SlotActor, args, myself.get_cell()).await?;
        self.slots.insert(slot.get_id());
        if replays {
            self.replay_slots.insert(slot.get_id());
        }
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
        let (subscription, replay) = match g.dispatch.after_matches_of() {
            // Replays go to the groups that read the payloads; this one
            // then scans what they match in the replay.
            Some(worker) => (g.transport.results_of(&name, worker, options).await?, None),
            None => {
                let replay_options = ConsumerOptions {
                    prefetch: args.replay_slots,
                    ..options.clone()
                };
                (
                    g.transport.payloads(&name, options).await?,
                    g.transport.replays(&name, replay_options).await?,
                )
            }
        };
        let mut state = PoolState {
            slot: SlotArgs {
                group: args.group.clone(),
                subscription,
                replay: None,
                stop: args.stop.clone(),
            },
            slots: HashSet::new(),
            replay,
            replay_slots: HashSet::new(),
            reloads: tokio::spawn(reload_rules(args.group.clone())),
        };
        for i in 0..args.concurrency {
            state.spawn_slot(&myself, i < args.replay_slots).await?;
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
        let replays = state.replay_slots.remove(&cell.get_id());
        if !state.slots.remove(&cell.get_id()) || *state.slot.stop.borrow() {
            return Ok(());
        }
        if why.is_empty() {
            // A slot stops cleanly only when the transport closed: nothing to restart.
            return Ok(());
        }
        // A slot's failure belongs to one payload, already recorded: restart at once.
        tracing::warn!(worker = %state.slot.group.scanner.info().name, reason = %why, "scan slot stopped; restarting it");
        state.slot.group.series.restarted();
        state.spawn_slot(&myself, replays).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<()>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        state.reloads.abort();
        myself.stop_children_and_wait(None, None).await;
        let g = &state.slot.group;
        let settled = g.settling.acquire_many(g.settling_permits);
        if tokio::time::timeout(SETTLE_PATIENCE, settled)
            .await
            .is_err()
        {
            tracing::warn!(worker = %g.scanner.info().name, "results still on their way at stop; their payloads will be delivered again");
        }
        Ok(())
    }
}

/// Keep the group's rules current: look at their files every
/// [`RULES_LOOK_EVERY`], and load them whatever their state on SIGHUP.
/// What the group runs is announced at start, on every change and every
/// [`ANNOUNCE_EVERY`], for `trawl status`.
async fn reload_rules(g: Arc<Group>) {
    let scanner = g.scanner.clone();
    let mut rules_error: Option<String> = None;
    let mut announced = None::<tokio::time::Instant>;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; rules reload when their files change"))
        .ok();
    let mut look = tokio::time::interval(RULES_LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let force = tokio::select! {
            _ = look.tick() => false,
            Some(()) = async { hangup.as_mut()?.recv().await } => true,
        };
        let s = scanner.clone();
        // Compiling a large ruleset takes seconds: off the async threads.
        let Ok(reload) = tokio::task::spawn_blocking(move || s.reload(force)).await else {
            continue;
        };
        let worker = scanner.info().name;
        let changed = match reload {
            Reload::Unchanged => false,
            Reload::Loaded { ruleset, rules } => {
                tracing::info!(%worker, %ruleset, rules, "rules reloaded; scans from now on use them");
                rules_error = None;
                true
            }
            Reload::Failed { errors } => {
                for error in &errors {
                    tracing::error!(%worker, %error, "rules do not compile");
                }
                tracing::error!(%worker, ruleset = scanner.info().ruleset.as_deref().unwrap_or(""), "rules not reloaded; scanning goes on with the previous ones");
                rules_error = Some(trawl_core::problems_in_brief(&errors));
                true
            }
        };
        if changed || announced.is_none_or(|at| at.elapsed() >= ANNOUNCE_EVERY) {
            let info = scanner.info();
            g.series.runs(&info);
            let state = GroupState {
                node: g.node.clone(),
                group: info.name,
                version: info.version,
                ruleset: info.ruleset,
                rules_error: rules_error.clone(),
                at: Utc::now(),
            };
            match g.transport.announce(&state).await {
                Ok(()) => announced = Some(tokio::time::Instant::now()),
                Err(e) => tracing::debug!(error = %e, "cannot announce the group's state"),
            }
        }
    }
}

#[derive(Clone)]
pub(crate) struct SlotArgs {
    group: Arc<Group>,
    subscription: Arc<dyn Subscription>,
    /// Replayed payloads, taken only while no live one waits.
    replay: Option<Arc<dyn Subscription>>,
    stop: watch::Receiver<bool>,
}

pub(crate) struct SlotActor;

pub(crate) struct SlotState {
    args: SlotArgs,
    /// Pulls that failed in a row.
    pull_failures: u32,
    thread: ScanThread,
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
            thread: ScanThread::new(args.group.scanner.info().name),
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
            Some(next) = async { Some(state.replay.as_ref()?.next().await) } => next,
        };
        match next {
            Ok(Some(delivery)) => {
                slot.pull_failures = 0;
                if let Some(panic) =
                    process(&state.group, &mut slot.thread, delivery, &state.stop).await
                {
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
async fn process(
    g: &Arc<Group>,
    thread: &mut ScanThread,
    mut delivery: Delivery,
    stop: &watch::Receiver<bool>,
) -> Option<String> {
    let mut worker = g.scanner.info();
    // Shared with the blocking scan, and kept for the children it unpacks.
    let event: Arc<PayloadEvent> = match decode(g, &delivery.data) {
        Ok(Some(e)) => Arc::new(e),
        Ok(None) => return filtered_out(g, delivery).await,
        Err(reason) => {
            g.series.set_aside();
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
    let replay = event.replay_id.clone();
    let given_up = delivery.attempt > g.max_deliver;
    if delivery.attempt > 1 {
        g.series.retried();
    }
    // Content this group scanned shortly before: its result, copied. A
    // replay scans again whatever was scanned before.
    let dedup = g
        .dedup
        .as_ref()
        .filter(|d| replay.is_none() && !given_up && event.size >= d.min_size);
    let _flight = match dedup {
        Some(d) => {
            let key = cache_key(&worker, &event.sha256);
            let flight = d.enter(&key).await;
            if let Some(hit) = d.fresh(&key).await {
                let copy = copied(g, &event, summary, hit, started);
                settle(g, delivery, copy, false, stop).await;
                return None;
            }
            Some(flight)
        }
        None => None,
    };
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
            let scanned = match attempt(g, thread, &event, &delivery).await {
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
                )
                .in_replay(replay.as_deref());
                delivery = publish_held(&worker.name, "result", delivery, None, stop, || {
                    publish_result_fitting(g.transport.as_ref(), &record)
                })
                .await?;
            }
            outage += 1;
            g.series.retried();
            let delay = trawl_core::Backoff::SERVICE.delay(outage);
            tracing::warn!(worker = %worker.name, payload_id = %summary.id, attempt = outage, ?delay, "a service the scan needs is unavailable; trying again");
            delivery = wait_out(delivery, delay, None, stop).await?;
        }
    };
    let ScanOutput {
        data,
        matches,
        children,
        ruleset,
    } = output;
    // The rules the scan ran with, even if others were loaded since.
    if ruleset.is_some() {
        worker.ruleset = ruleset;
    }
    let matched = !matches.is_empty();
    g.series.scanned(outcome.status, matched);
    if outcome.status != OutcomeStatus::Ok {
        tracing::warn!(worker = %worker.name, payload_id = %summary.id, path = summary.path.as_deref().unwrap_or(""), outcome = outcome.status.as_str(), message = outcome.message.as_deref().unwrap_or(""), "scan did not complete");
    }
    // Children are in the transport before the parent is acknowledged: a
    // crash in between unpacks the parent again, with the same child ids.
    // A replay leaves them out: they were stored when first unpacked and
    // are replayed from there.
    let children = if replay.is_some() {
        Vec::new()
    } else {
        children
    };
    // A result with unpacked files is not copied: copies would have none.
    let copyable = children.is_empty() && outcome.status == OutcomeStatus::Ok;
    for (i, child) in children.into_iter().enumerate() {
        let e = event.child(i, &child, &worker.name);
        let data = Bytes::from(child.data);
        let published = publish_held(&worker.name, "unpacked file", delivery, None, stop, || {
            g.transport.publish_payload(e.clone(), data.clone())
        })
        .await;
        let Some(d) = published else {
            return panic;
        };
        delivery = d;
    }
    let mut result = ResultEvent::new(summary, worker.clone(), outcome, data, started, &g.node)
        .in_replay(replay.as_deref());
    result.new_matches = event.replay_previous.get(&worker.name).map(|before| {
        matches
            .iter()
            .map(|m| m.rule.clone())
            .filter(|rule| !before.contains(rule))
            .collect()
    });
    result.matches = matches;
    if matched {
        result.payload_event = Some(Box::new(Arc::unwrap_or_clone(event)));
    }
    if let Some(d) = dedup.filter(|_| copyable) {
        d.remember(&mut result).await;
    }
    settle(g, delivery, result, given_up, stop).await;
    panic
}

/// [`finish`] off the slot, which takes its next payload meanwhile: results
/// on their way together may leave together (a network transport sends
/// them as one message). Bounded by the group's permits.
async fn settle(
    g: &Arc<Group>,
    delivery: Delivery,
    result: ResultEvent,
    given_up: bool,
    stop: &watch::Receiver<bool>,
) {
    let Ok(permit) = g.settling.clone().acquire_owned().await else {
        return;
    };
    let g = g.clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        finish(&g, delivery, &result, given_up, &stop).await;
        drop(permit);
    });
}

/// `hit`'s findings as this payload's result.
fn copied(
    g: &Group,
    event: &Arc<PayloadEvent>,
    summary: trawl_core::PayloadSummary,
    hit: ResultEvent,
    started: chrono::DateTime<Utc>,
) -> ResultEvent {
    g.series.copied(!hit.matches.is_empty());
    let mut copy = ResultEvent::new(summary, hit.worker, hit.outcome, hit.data, started, &g.node);
    copy.cached_from = Some(hit.id);
    copy.matches = hit.matches;
    if !copy.matches.is_empty() {
        copy.payload_event = Some(Box::new(PayloadEvent::clone(event)));
    }
    copy
}

/// Publish the payload's result, then acknowledge it (or, past
/// `max_deliver`, set it aside).
async fn finish(
    g: &Group,
    delivery: Delivery,
    result: &ResultEvent,
    given_up: bool,
    stop: &watch::Receiver<bool>,
) {
    let worker = &result.worker;
    // A payload that has had its last delivery: its record is the reason.
    let last = given_up.then(|| result.outcome.message.as_deref().unwrap_or("gave up"));
    let published = publish_held(&worker.name, "result", delivery, last, stop, || {
        publish_result_fitting(g.transport.as_ref(), result)
    })
    .await;
    let Some(delivery) = published else {
        return;
    };
    if let Some(reason) = last {
        // The error result is stored; the payload itself is kept aside for inspection.
        if let Err(e) = delivery.dead_letter(reason).await {
            tracing::warn!(worker = %worker.name, error = %e, "cannot set the payload aside; the transport offers it again once its ack deadline passes");
        }
    } else if let Err(e) = delivery.ack().await {
        tracing::warn!(worker = %worker.name, error = %e, "ack failed; the payload will be redelivered and its result upserted");
    }
}

/// Run `send` (a publish for this payload) until it succeeds. While the
/// transport is unavailable (a server restarting, a stream electing its
/// leader) the slot keeps the payload in progress and tries again with
/// backoff rather than handing it back: each hand-back spends one of its
/// deliveries, and an outage of a few seconds would turn scans that
/// completed into "gave up" records. The delivery back once published,
/// `None` once it is handed back ([`hand_back`], with `last` when this is
/// its last delivery): the node is stopping, or the transport refused for
/// good.
async fn publish_held<F, Fut>(
    worker: &str,
    what: &str,
    mut delivery: Delivery,
    last: Option<&str>,
    stop: &watch::Receiver<bool>,
    send: F,
) -> Option<Delivery>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), TransportError>>,
{
    let mut failures = 0u32;
    loop {
        let e = match send().await {
            Ok(()) => return Some(delivery),
            Err(e) => e,
        };
        if !matches!(e, TransportError::Unavailable(_)) {
            tracing::warn!(worker, error = %e, "cannot publish the {what}; payload handed back");
            hand_back(delivery, Duration::from_secs(1), last).await;
            return None;
        }
        failures += 1;
        let delay = trawl_core::Backoff::SERVICE.delay(failures);
        tracing::warn!(worker, error = %e, attempt = failures, ?delay, "cannot publish the {what}; trying again");
        delivery = wait_out(delivery, delay, last, stop).await?;
    }
}

/// Fetch the payload's bytes and scan them; `None` if the group's filter
/// leaves the payload out once its content is known.
async fn attempt(
    g: &Group,
    thread: &mut ScanThread,
    event: &Arc<PayloadEvent>,
    delivery: &Delivery,
) -> Option<Scanned> {
    Some(match g.transport.fetch_blob(&event.blob).await {
        Ok(bytes) if !g.dispatch.wants_content(event, &bytes) => return None,
        Ok(bytes) => {
            let _scanning = g.series.scanning();
            scan(g, thread, event.clone(), bytes, delivery).await
        }
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

/// Wait `delay` while telling the transport the payload is still in hand.
/// The delivery back when the wait is over, `None` once handed back (see
/// [`hand_back`]) because the node began to stop.
async fn wait_out(
    delivery: Delivery,
    delay: Duration,
    last: Option<&str>,
    stop: &watch::Receiver<bool>,
) -> Option<Delivery> {
    let mut stop = stop.clone();
    let pause = tokio::time::sleep(delay);
    tokio::pin!(pause);
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        let stopping = tokio::select! {
            _ = &mut pause => return Some(delivery),
            // Stopping, or the node is gone.
            _ = stop.wait_for(|s| *s) => true,
            _ = progress.tick() => false,
        };
        if stopping {
            hand_back(delivery, Duration::ZERO, last).await;
            return None;
        }
        let _ = delivery.in_progress().await;
    }
}

/// Give the payload back to be delivered again after `delay`. On its last
/// delivery (`last` holds why it is the last) it is set aside now instead:
/// handed back, it would come again only to be given up once more. Either
/// failing, the transport offers it again once its ack deadline passes (a
/// set-aside that failed is tried again then).
async fn hand_back(delivery: Delivery, delay: Duration, last: Option<&str>) {
    let (what, handed) = match last {
        None => ("hand the payload back", delivery.nak(delay).await),
        Some(why) => {
            let why = format!("{why} (its record could not be stored)");
            ("set the payload aside", delivery.dead_letter(&why).await)
        }
    };
    if let Err(e) = handed {
        tracing::warn!(error = %e, "cannot {what}; the transport offers it again once its ack deadline passes");
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
    g.series.filtered();
    if let Err(e) = delivery.ack().await {
        tracing::warn!(worker = %g.scanner.info().name, error = %e, "ack of a filtered-out payload failed; it will be looked at again");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use trawl_core::{BlobRef, Outcome, SourceInfo, SourceKind, WorkerInfo};

    /// A result cache that keeps what it is given, in order.
    #[derive(Default)]
    struct Kept(std::sync::Mutex<Vec<(String, ResultEvent)>>);

    #[async_trait::async_trait]
    impl ResultCache for Kept {
        async fn get(&self, _: &str) -> Result<Option<ResultEvent>, TransportError> {
            Ok(None)
        }

        async fn put(&self, key: &str, result: &ResultEvent) -> Result<(), TransportError> {
            let mut kept = self.0.lock().unwrap();
            kept.push((key.to_owned(), result.clone()));
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_remembered_result_keeps_its_payload_event_and_its_copy_has_none() {
        let cache = Arc::new(Kept::default());
        let dedup = Dedup {
            ttl: Duration::from_secs(60),
            min_size: 0,
            cache: cache.clone(),
            flights: Default::default(),
        };
        let event = PayloadEvent::new_root(
            "ab".repeat(32),
            1,
            BlobRef::Store(String::new()),
            SourceInfo {
                kind: SourceKind::Cli,
                sensor: "t".into(),
                path: None,
            },
        );
        let mut result = ResultEvent::new(
            event.summary(),
            WorkerInfo::new("yara", "1"),
            Outcome::ok(),
            serde_json::Value::Null,
            Utc::now(),
            "n",
        );
        result.payload_event = Some(Box::new(event.clone()));

        dedup.remember(&mut result).await;

        assert_eq!(
            result.payload_event.as_deref(),
            Some(&event),
            "the result goes on with the event groups that filter on matches scan"
        );
        let kept = cache.0.lock().unwrap();
        let [(key, copy)] = kept.as_slice() else {
            panic!("one result kept, got {}", kept.len());
        };
        assert_eq!(key, &cache_key(&result.worker, &event.sha256));
        assert!(copy.payload_event.is_none(), "a copy is for other payloads");
        assert_eq!(copy.id, result.id);
    }
}
