//! trawl's actor tree (ractor): one node = sources, worker pools and
//! connectors under a root supervisor, wired from a typed config.
//!
//! ```text
//! NodeActor ── SourceActor (one per source)
//!           ── PoolActor (one per worker group) ── SlotActor × concurrency
//!           ── SinkActor (one per connector)
//! ```

mod archive;
mod dispatch;
mod metrics;
mod pool;
mod report;
mod scan;
mod sink;
mod source;
mod supervisor;
mod telemetry;
mod wiring;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;
use trawl_core::{Connector, Scanner};
use trawl_sources::Source;
use trawl_transport::Transport;

pub use dispatch::Dispatch;
pub use metrics::{Health, Metrics, Snapshot};
pub use telemetry::TelemetryError;
pub use wiring::{
    archived, build_transport, check_config, node_name, spec_from_config, transport_replays,
    transport_status, WiringError,
};

use supervisor::{NodeActor, NodeArgs, NodeMsg};

/// One worker group on this node.
pub struct WorkerSpec {
    pub scanner: Arc<dyn Scanner>,
    pub concurrency: usize,
    pub timeout: Duration,
    pub max_deliver: u32,
    /// Which payloads the group scans; the rest are acknowledged untouched.
    pub dispatch: crate::Dispatch,
    /// Slots (of `concurrency`) that take a replay's payloads while no live
    /// payload waits.
    pub replay_slots: usize,
    /// How long a result stands for later payloads with the same content;
    /// `None`: each is scanned.
    pub dedup_ttl: Option<Duration>,
    /// Smaller payloads are scanned without a lookup; `None`: the result
    /// cache's own [`worth_from`](trawl_transport::ResultCache::worth_from).
    pub dedup_min_size: Option<u64>,
}

/// One connector on this node.
pub struct ConnectorSpec {
    pub connector: Box<dyn Connector>,
    pub batch_size: usize,
    pub flush_interval: Duration,
}

/// Everything a node runs, already built (rules compiled, stores opened).
pub struct NodeSpec {
    pub name: String,
    pub transport: Arc<dyn Transport>,
    pub sources: Vec<Arc<dyn Source>>,
    pub workers: Vec<WorkerSpec>,
    pub connectors: Vec<ConnectorSpec>,
    /// How long shutdown waits for in-flight work.
    pub shutdown_grace: Duration,
    /// Where metrics and health are served; `None`: nowhere.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("cannot start the node: {0}")]
    Start(String),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// A part of the node kept failing and its supervisor gave up.
    #[error("node stopped: {0}")]
    Escalated(String),
}

/// What a shutdown left undone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Messages still unhandled when the grace period ran out (in-process transport only).
    pub unfinished: usize,
}

/// A running node.
pub struct Node {
    root: ActorRef<NodeMsg>,
    handle: JoinHandle<()>,
    metrics: Arc<Metrics>,
    outcome: Arc<std::sync::Mutex<Option<String>>>,
    report: Arc<std::sync::Mutex<ShutdownReport>>,
    /// How many sources it runs.
    sources: usize,
    /// Serves metrics and health, while the node runs.
    telemetry: Option<JoinHandle<()>>,
    /// Announces and logs the counters, while the node runs.
    reporter: JoinHandle<()>,
    name: String,
    transport: Arc<dyn Transport>,
}

impl Node {
    pub async fn start(spec: NodeSpec) -> Result<Node, NodeError> {
        let metrics = Arc::new(Metrics::default());
        let outcome = Arc::new(std::sync::Mutex::new(None));
        let report = Arc::new(std::sync::Mutex::new(ShutdownReport::default()));
        let sources = spec.sources.len();
        let telemetry = match spec.listen {
            Some(addr) => Some(telemetry::Telemetry::bind(addr, &spec.name).await?),
            None => None,
        };
        let transport = spec.transport.clone();
        let name = spec.name.clone();
        let args = NodeArgs {
            spec,
            metrics: metrics.clone(),
            outcome: outcome.clone(),
            report: report.clone(),
        };
        let (root, handle) = Actor::spawn(None, NodeActor, args)
            .await
            .map_err(|e| NodeError::Start(e.to_string()))?;
        let telemetry = telemetry.map(|t| t.serve(metrics.clone(), transport.clone()));
        let reporter = tokio::spawn(report::report(
            name.clone(),
            metrics.clone(),
            transport.clone(),
        ));
        Ok(Node {
            root,
            handle,
            metrics,
            outcome,
            report,
            sources,
            telemetry,
            reporter,
            name,
            transport,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Resolves when the node stops by itself (a part failed for good).
    pub async fn stopped(&mut self) -> NodeError {
        let _ = (&mut self.handle).await;
        let reason = self.outcome.lock().expect("outcome").clone();
        NodeError::Escalated(reason.unwrap_or_else(|| "stopped".into()))
    }

    /// Stop sources, let in-flight work finish (up to the grace period), flush
    /// connectors and stop.
    pub async fn shutdown(self) -> Result<ShutdownReport, NodeError> {
        Stop::Shutdown.stop(&self.root);
        let _ = self.handle.await;
        if let Some(serving) = &self.telemetry {
            serving.abort();
        }
        self.reporter.abort();
        // The final counts, for `trawl status` after the node is gone.
        let last = report::announce_node(&self.name, &self.metrics, self.transport.as_ref());
        let _ = tokio::time::timeout(Duration::from_secs(2), last).await;
        let report = self.report.lock().expect("report").clone();
        match self.outcome.lock().expect("outcome").clone() {
            Some(reason) if Stop::of(&reason) != Some(Stop::Shutdown) => {
                Err(NodeError::Escalated(reason))
            }
            _ => Ok(report),
        }
    }

    /// Resolves once every source of the node has done its work (only
    /// sources with an end, such as `files`, ever are).
    pub async fn sources_finished(&self) {
        let stats = &self.metrics.sources;
        loop {
            let changed = stats.finished_changed.notified();
            if stats.finished.load(std::sync::atomic::Ordering::Relaxed) >= self.sources as u64 {
                return;
            }
            changed.await;
        }
    }
}

/// Why a part of the node stopped on purpose (ractor carries stop reasons as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A source with an end did all its work.
    Done,
    /// The node was asked to stop.
    Shutdown,
}

impl Stop {
    const fn as_str(self) -> &'static str {
        match self {
            Stop::Done => "done",
            Stop::Shutdown => "shutdown",
        }
    }

    fn of(reason: &str) -> Option<Stop> {
        [Stop::Done, Stop::Shutdown]
            .into_iter()
            .find(|s| s.as_str() == reason)
    }

    fn stop<M: Send + 'static>(self, actor: &ActorRef<M>) {
        actor.stop(Some(self.as_str().into()));
    }
}

#[cfg(test)]
mod tests;
