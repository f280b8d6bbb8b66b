//! What a node tells its operators over HTTP (`[node] listen`):
//! `GET /metrics` in Prometheus' text format, and `GET /healthz`, 200 while
//! the transport and the connectors answer, 503 with the reasons otherwise.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use trawl_transport::Transport;

use crate::metrics::Metrics;

/// How often the transport is asked for its consumer groups' backlog, which
/// also tells whether it answers.
const PROBE_EVERY: Duration = Duration::from_secs(10);
/// A transport that takes longer than this to answer counts as away.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Where scan and write durations fall, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    // The cause is part of the message, not a source: it reads once.
    #[error("node.listen: cannot listen on {addr}: {reason}")]
    Listen {
        addr: SocketAddr,
        reason: std::io::Error,
    },
    #[error("node.listen: cannot record metrics: {0}")]
    Recorder(String),
}

/// The process's recorder: one node runs per process, and its name labels
/// every series.
static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Serves a node's metrics and health until the returned task is aborted.
pub(crate) struct Telemetry {
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
}

impl Telemetry {
    /// Take the address and start recording; series registered before this
    /// are not recorded, so it comes before the node's parts are built.
    pub(crate) async fn bind(addr: SocketAddr, node: &str) -> Result<Self, TelemetryError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|reason| TelemetryError::Listen { addr, reason })?;
        let handle = match RECORDER.get() {
            Some(handle) => handle.clone(),
            None => {
                let recorder = PrometheusBuilder::new()
                    .add_global_label("node", node)
                    .set_buckets(&BUCKETS)
                    .map_err(|e| TelemetryError::Recorder(e.to_string()))?
                    .build_recorder();
                let handle = recorder.handle();
                metrics::set_global_recorder(recorder)
                    .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
                describe();
                RECORDER.get_or_init(|| handle).clone()
            }
        };
        Ok(Telemetry { listener, handle })
    }

    pub(crate) fn serve(
        self,
        metrics: Arc<Metrics>,
        transport: Arc<dyn Transport>,
    ) -> JoinHandle<()> {
        let probing = probe(metrics.clone(), transport);
        let upkeep = self.handle.clone();
        let app = Router::new()
            .route("/metrics", get(render))
            .route("/healthz", get(healthz))
            .with_state(Served {
                handle: self.handle,
                metrics,
                rendered: Arc::default(),
            });
        // One task: aborting it stops the endpoint and the probe together.
        tokio::spawn(async move {
            // Drops histogram samples already rendered, so memory stays flat
            // however rarely Prometheus scrapes.
            let mut tidy = tokio::time::interval(Duration::from_secs(5));
            let serve = axum::serve(self.listener, app);
            tokio::select! {
                done = serve => if let Err(e) = done {
                    tracing::error!(error = %e, "metrics and health endpoint stopped");
                },
                _ = probing => {}
                _ = async { loop { tidy.tick().await; upkeep.run_upkeep(); } } => {}
            }
        })
    }
}

/// The `# HELP` line of every series.
fn describe() {
    use metrics::{
        describe_counter as counter, describe_gauge as gauge, describe_histogram as histogram, Unit,
    };
    counter!(
        "trawl_source_files_total",
        "Files a source handled: published, or recorded as unreadable"
    );
    counter!(
        "trawl_source_bytes_total",
        Unit::Bytes,
        "Bytes of the files a source published"
    );
    counter!(
        "trawl_source_unreadable_total",
        "Files a source could not read, recorded as error results"
    );
    gauge!(
        "trawl_source_backlog_files",
        "Files in a watched folder at its last listing"
    );
    gauge!(
        "trawl_source_backlog_bytes",
        Unit::Bytes,
        "Bytes in a watched folder at its last listing"
    );
    counter!("trawl_worker_payloads_total", "Payloads a worker group finished, by outcome (ok, error, timeout, cached: an earlier result of the same content, filtered: left out by the group's filter)");
    counter!(
        "trawl_worker_matched_total",
        "Results with at least one rule match"
    );
    counter!("trawl_worker_retries_total", "Attempts at a payload after its first: redeliveries and waits for a service the scan needs");
    gauge!("trawl_worker_in_flight", "Payloads being scanned now");
    histogram!(
        "trawl_worker_scan_seconds",
        Unit::Seconds,
        "How long one scan took"
    );
    gauge!(
        "trawl_worker_info",
        "What a worker group runs: its version and ruleset (1 for the current ones)"
    );
    counter!(
        "trawl_connector_results_total",
        "Results a datastore confirmed"
    );
    counter!(
        "trawl_connector_refused_total",
        "Results a datastore refused even as error records (set aside)"
    );
    counter!(
        "trawl_connector_retries_total",
        "Writes that failed because the datastore was away (retried)"
    );
    histogram!(
        "trawl_connector_write_seconds",
        Unit::Seconds,
        "How long one batch write took"
    );
    gauge!(
        "trawl_consumer_pending",
        "Messages a consumer group has not been given yet"
    );
    gauge!(
        "trawl_consumer_ack_pending",
        "Messages a consumer group was given and has not acknowledged"
    );
    counter!(
        "trawl_restarts_total",
        "Parts of the node restarted after they failed"
    );
}

#[derive(Clone)]
struct Served {
    handle: PrometheusHandle,
    metrics: Arc<Metrics>,
    rendered: Rendered,
}

/// The last text rendered, and when.
type Rendered = Arc<std::sync::Mutex<Option<(Instant, String)>>>;

/// Scrapes this close together get the same text: a burst of scrapers
/// (many Prometheus servers, or a hostile client) costs one rendering.
const RENDER_REUSE: Duration = Duration::from_millis(250);

async fn render(State(s): State<Served>) -> String {
    let mut last = s.rendered.lock().unwrap_or_else(|e| e.into_inner());
    match &*last {
        Some((at, text)) if at.elapsed() < RENDER_REUSE => text.clone(),
        _ => {
            let text = s.handle.render();
            *last = Some((Instant::now(), text.clone()));
            text
        }
    }
}

async fn healthz(State(s): State<Served>) -> (StatusCode, String) {
    let problems = s.metrics.health.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            problems.iter().map(|p| format!("{p}\n")).collect(),
        )
    }
}

/// Ask the transport for its consumer groups now and then: their backlog
/// goes to `trawl_consumer_pending`, and a transport that does not answer
/// makes the node unhealthy until it does.
async fn probe(metrics: Arc<Metrics>, transport: Arc<dyn Transport>) {
    let mut every = tokio::time::interval(PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match tokio::time::timeout(PROBE_TIMEOUT, transport.status()).await {
            Ok(Ok(status)) => {
                metrics.health.working("transport");
                for stream in status.iter().flat_map(|s| &s.streams) {
                    for c in &stream.consumers {
                        let labels = [
                            ("stream", stream.name.clone()),
                            ("consumer", c.name.clone()),
                        ];
                        metrics::gauge!("trawl_consumer_pending", &labels).set(c.pending as f64);
                        metrics::gauge!("trawl_consumer_ack_pending", &labels)
                            .set(c.ack_pending as f64);
                    }
                }
            }
            Ok(Err(e)) => metrics.health.failing("transport", e.to_string()),
            Err(_) => metrics
                .health
                .failing("transport", format!("no answer within {PROBE_TIMEOUT:?}")),
        }
    }
}
