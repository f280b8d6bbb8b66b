//! What a running node says of its work: its counters to `trawl status`
//! (announced over the transport) and to its own log, as one set of names.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use trawl_transport::{NodeState, Transport};

use crate::metrics::{Metrics, Snapshot};

/// How often the counters are announced for `trawl status`.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);
/// How often they are logged (`progress`).
const LOG_EVERY: Duration = Duration::from_secs(60);

impl Snapshot {
    /// The counters `trawl status` shows, named as the progress log names them.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        [
            ("published", self.source_published),
            ("folder_files", self.folder_files),
            ("folder_bytes", self.folder_bytes),
            ("over_high_water", self.over_high_water),
            ("results_ok", self.results_ok),
            ("results_error", self.results_error),
            ("results_timeout", self.results_timeout),
            ("matched", self.results_matched),
            ("stored", self.stored),
            ("store_retries", self.store_retries),
            ("store_refused", self.store_refused),
            ("restarts", self.restarts),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn log(&self) {
        tracing::info!(
            published = self.source_published,
            folder_files = self.folder_files,
            folder_bytes = self.folder_bytes,
            over_high_water = self.over_high_water,
            results_ok = self.results_ok,
            results_error = self.results_error,
            results_timeout = self.results_timeout,
            matched = self.results_matched,
            stored = self.stored,
            store_retries = self.store_retries,
            store_refused = self.store_refused,
            restarts = self.restarts,
            "progress"
        );
    }
}

/// Announce the node's counters now, and report them until aborted.
pub(crate) async fn report(node: String, metrics: Arc<Metrics>, transport: Arc<dyn Transport>) {
    let mut announce = tokio::time::interval(ANNOUNCE_EVERY);
    let start = tokio::time::Instant::now();
    let mut log = tokio::time::interval_at(start + LOG_EVERY, LOG_EVERY);
    for every in [&mut announce, &mut log] {
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = announce.tick() => announce_node(&node, &metrics, transport.as_ref()).await,
            _ = log.tick() => metrics.snapshot().log(),
        }
    }
}

/// One announcement; a transport that is away now hears the next one.
pub(crate) async fn announce_node(node: &str, metrics: &Metrics, transport: &dyn Transport) {
    let state = NodeState {
        node: node.to_owned(),
        counters: metrics.snapshot().counters(),
        at: chrono::Utc::now(),
    };
    if let Err(e) = transport.announce_node(&state).await {
        tracing::debug!(error = %e, "cannot announce the node's counters");
    }
}
