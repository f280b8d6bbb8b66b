//! The root supervisor: starts every part, restarts what fails with backoff,
//! gives up (and stops the node) on a part that keeps failing, and runs the
//! ordered shutdown.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use tokio::sync::watch;
use trawl_core::Backoff;
use trawl_sources::{Source, SourceContext};
use trawl_transport::{Transport, TransportError};

use crate::metrics::Metrics;
use crate::pool::{PoolActor, PoolArgs};
use crate::sink::{SinkActor, SinkArgs};
use crate::source::{SourceActor, SourceArgs};
use crate::{NodeSpec, ShutdownReport, Stop};

/// Failures of one part within this window that make the node give up.
const GIVE_UP_AFTER: usize = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Between restarts of a part that keeps failing.
const RESTART_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

pub(crate) struct NodeActor;

pub(crate) struct NodeArgs {
    pub spec: NodeSpec,
    pub metrics: Arc<Metrics>,
    pub outcome: Arc<Mutex<Option<String>>>,
    pub report: Arc<Mutex<ShutdownReport>>,
}

pub(crate) enum NodeMsg {
    Restart(Child),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Child {
    Source(usize),
    Pool(usize),
    Sink(usize),
}

pub(crate) struct NodeState {
    transport: Arc<dyn Transport>,
    sources: Vec<SourceArgs>,
    pools: Vec<PoolArgs>,
    sinks: Vec<SinkArgs>,
    cells: HashMap<Child, ActorCell>,
    by_id: HashMap<ActorId, Child>,
    failures: HashMap<Child, Vec<Instant>>,
    stop_sources: watch::Sender<bool>,
    stop_workers: watch::Sender<bool>,
    stop_sinks: watch::Sender<bool>,
    /// Set once every source has ended (only sources with an end do).
    intake_over: watch::Sender<bool>,
    grace: Duration,
    metrics: Arc<Metrics>,
    outcome: Arc<Mutex<Option<String>>>,
    report: Arc<Mutex<ShutdownReport>>,
}

impl NodeState {
    /// `child`'s config key, as `sources.NAME`.
    fn component(&self, child: Child) -> String {
        match child {
            Child::Source(i) => format!("sources.{}", self.sources[i].source.name()),
            Child::Pool(i) => format!("workers.{}", self.pools[i].name()),
            Child::Sink(i) => format!("connectors.{}", self.sinks[i].name()),
        }
    }

    async fn spawn(&mut self, child: Child, myself: &ActorRef<NodeMsg>) -> Result<(), SpawnErr> {
        let sup = myself.get_cell();
        let cell = match child {
            Child::Source(i) => {
                Actor::spawn_linked(None, SourceActor, self.sources[i].clone(), sup)
                    .await?
                    .0
                    .get_cell()
            }
            Child::Pool(i) => Actor::spawn_linked(None, PoolActor, self.pools[i].clone(), sup)
                .await?
                .0
                .get_cell(),
            Child::Sink(i) => Actor::spawn_linked(None, SinkActor, self.sinks[i].clone(), sup)
                .await?
                .0
                .get_cell(),
        };
        self.by_id.insert(cell.get_id(), child);
        self.cells.insert(child, cell);
        Ok(())
    }

    /// Start `child` as the node starts. A part that cannot reach the
    /// broker yet (a consumer the server was too busy to make) is started
    /// again later like one that failed; any other refusal stops the node
    /// with its reason.
    async fn start(&mut self, child: Child, myself: &ActorRef<NodeMsg>) -> Result<(), SpawnErr> {
        match self.spawn(child, myself).await {
            Err(e) if transient(&e) => {
                self.failed(child, why(&e), myself);
                Ok(())
            }
            started => started,
        }
    }

    /// Count a failure of `child` and start it again after a backoff, or
    /// stop the node when it keeps failing.
    fn failed(&mut self, child: Child, reason: String, myself: &ActorRef<NodeMsg>) {
        let now = Instant::now();
        let failures = self.failures.entry(child).or_default();
        failures.retain(|t| now.duration_since(*t) < FAILURE_WINDOW);
        failures.push(now);
        let n = failures.len();
        if n >= GIVE_UP_AFTER {
            let why =
                format!("{child:?} failed {n} times within {FAILURE_WINDOW:?}; last: {reason}");
            tracing::error!(%why, "giving up");
            *self.outcome.lock().expect("outcome") = Some(why.clone());
            myself.stop(Some(why));
            return;
        }
        let delay = RESTART_BACKOFF.delay(n as u32);
        tracing::warn!(?child, %reason, ?delay, "part of the node stopped; restarting");
        self.metrics.restarted(&self.component(child));
        let myself = myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = myself.cast(NodeMsg::Restart(child));
        });
    }

    async fn stop_all(&mut self, which: fn(&Child) -> bool) {
        let cells: Vec<ActorCell> = self
            .cells
            .iter()
            .filter(|(c, _)| which(c))
            .map(|(_, cell)| cell.clone())
            .collect();
        for cell in cells {
            // Any other error means the actor has already stopped.
            if let Err(ractor::RactorErr::Timeout) =
                cell.stop_and_wait(None, Some(self.grace)).await
            {
                tracing::warn!(actor = %cell.get_id(), "did not stop within the grace period; killed");
                cell.kill();
            }
        }
    }
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        let NodeArgs {
            spec,
            metrics,
            outcome,
            report,
        } = args;
        let (stop_sources, sources_rx) = watch::channel(false);
        let (stop_workers, workers_rx) = watch::channel(false);
        let (stop_sinks, sinks_rx) = watch::channel(false);
        let (intake_over, intake_rx) = watch::channel(false);
        let node = spec.name.clone();
        let transport = spec.transport.clone();
        let sinks = spec
            .connectors
            .into_iter()
            .map(|c| {
                SinkArgs::new(
                    c,
                    transport.clone(),
                    metrics.clone(),
                    sinks_rx.clone(),
                    intake_rx.clone(),
                )
            })
            .collect();
        let pools = spec
            .workers
            .into_iter()
            .map(|w| {
                PoolArgs::new(
                    w,
                    &node,
                    transport.clone(),
                    metrics.clone(),
                    workers_rx.clone(),
                )
            })
            .collect();
        let sources = spec
            .sources
            .into_iter()
            .map(|source: Arc<dyn Source>| SourceArgs {
                source,
                ctx: SourceContext {
                    transport: transport.clone(),
                    node: node.clone(),
                    shutdown: sources_rx.clone(),
                    stats: metrics.sources.clone(),
                },
            })
            .collect();
        let mut state = NodeState {
            transport,
            sources,
            pools,
            sinks,
            cells: HashMap::new(),
            by_id: HashMap::new(),
            failures: HashMap::new(),
            stop_sources,
            stop_workers,
            stop_sinks,
            intake_over,
            grace: spec.shutdown_grace,
            metrics,
            outcome,
            report,
        };
        // Consumers first, so that no event is published before its readers exist.
        for i in 0..state.sinks.len() {
            state.start(Child::Sink(i), &myself).await?;
        }
        for i in 0..state.pools.len() {
            state.start(Child::Pool(i), &myself).await?;
        }
        for i in 0..state.sources.len() {
            state.start(Child::Source(i), &myself).await?;
        }
        tracing::info!(
            sources = state.sources.len(),
            worker_groups = state.pools.len(),
            connectors = state.sinks.len(),
            "node started"
        );
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        message: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NodeMsg::Restart(child) => {
                if !state.cells.contains_key(&child) {
                    tracing::info!(?child, "restarting");
                    // A part that cannot start now (the broker is away) is
                    // one more failure, not the end of the node.
                    if let Err(e) = state.spawn(child, &myself).await {
                        state.failed(child, why(&e), &myself);
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeMsg>,
        event: SupervisionEvent,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match &event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.clone().unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            _ => return Ok(()),
        };
        let Some(child) = state.by_id.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.cells.remove(&child);
        if matches!(child, Child::Source(_)) && Stop::of(&reason) == Some(Stop::Done) {
            // The source counted itself finished before it stopped.
            let ended = state.metrics.sources.finished.load(Ordering::Relaxed);
            if ended >= state.sources.len() as u64 {
                let _ = state.intake_over.send(true);
            }
            return Ok(());
        }
        state.failed(child, reason, &myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<NodeMsg>,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        // Sources first, then let queued work finish, then workers, then connectors.
        let _ = state.stop_sources.send(true);
        state.stop_all(|c| matches!(c, Child::Source(_))).await;
        state.transport.drain(state.grace).await;
        let _ = state.stop_workers.send(true);
        state.stop_all(|c| matches!(c, Child::Pool(_))).await;
        let unfinished = state.transport.drain(state.grace).await;
        let _ = state.stop_sinks.send(true);
        state.stop_all(|c| matches!(c, Child::Sink(_))).await;
        state.transport.close();
        if unfinished > 0 {
            tracing::warn!(
                unfinished,
                "shutdown cut work short: these messages were not handled"
            );
        }
        state.report.lock().expect("report").unfinished = unfinished;
        tracing::info!("node stopped");
        Ok(())
    }
}

/// What stopped a part from starting (ractor's own words call a returned
/// error a panic).
fn why(e: &SpawnErr) -> String {
    match e {
        SpawnErr::StartupFailed(why) => format!("cannot start: {why}"),
        other => other.to_string(),
    }
}

/// Whether a part failed to start only because the broker did not answer
/// in time: worth another try, unlike a refusal or a bad setting.
fn transient(e: &SpawnErr) -> bool {
    matches!(e, SpawnErr::StartupFailed(why)
        if matches!(why.downcast_ref::<TransportError>(), Some(TransportError::Unavailable(_))))
}
