use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use trawl_core::{OutcomeStatus, WorkerInfo};

use trawl_sources::SourceStats;

/// Counters a node keeps about its own work; read for progress and summaries.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Results produced by this node's workers, by outcome.
    pub results_ok: AtomicU64,
    pub results_error: AtomicU64,
    pub results_timeout: AtomicU64,
    /// Results whose data reports at least one rule match.
    pub results_matched: AtomicU64,
    /// Results copied from an earlier scan of the same content (not scanned).
    pub results_cached: AtomicU64,
    /// Payloads a worker group's filter left out (acknowledged, not scanned).
    pub filtered: AtomicU64,
    /// Results confirmed by a datastore, summed over connectors.
    pub stored: AtomicU64,
    /// Payload bytes behind the stored results, summed over connectors.
    pub stored_bytes: AtomicU64,
    /// Actors restarted by their supervisor.
    pub restarts: AtomicU64,
    /// Write attempts a datastore refused for now (retried).
    pub store_retries: AtomicU64,
    /// Results a datastore refused even as an error record (dead-lettered).
    pub store_refused: AtomicU64,
    /// Shared by this node's sources.
    pub sources: Arc<SourceStats>,
    pub health: Health,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub results_ok: u64,
    pub results_error: u64,
    pub results_timeout: u64,
    pub results_matched: u64,
    pub results_cached: u64,
    pub filtered: u64,
    pub stored: u64,
    pub stored_bytes: u64,
    pub restarts: u64,
    pub store_retries: u64,
    pub store_refused: u64,
    /// Files published by sources (or recorded as unreadable).
    pub source_published: u64,
    /// Files and bytes in the watched folders.
    pub folder_files: u64,
    pub folder_bytes: u64,
    /// Sources above their folder's high-water mark.
    pub over_high_water: u64,
    /// Files recorded as unreadable instead of published.
    pub unreadable: u64,
}

impl Metrics {
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            results_ok: get(&self.results_ok),
            results_error: get(&self.results_error),
            results_timeout: get(&self.results_timeout),
            results_matched: get(&self.results_matched),
            results_cached: get(&self.results_cached),
            filtered: get(&self.filtered),
            stored: get(&self.stored),
            stored_bytes: get(&self.stored_bytes),
            restarts: get(&self.restarts),
            store_retries: get(&self.store_retries),
            store_refused: get(&self.store_refused),
            source_published: get(&self.sources.published),
            folder_files: get(&self.sources.folder_files),
            folder_bytes: get(&self.sources.folder_bytes),
            over_high_water: get(&self.sources.over_high_water),
            unreadable: get(&self.sources.unreadable),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A part of the node (`component`) restarted after it failed.
    pub(crate) fn restarted(&self, component: &str) {
        Metrics::add(&self.restarts, 1);
        metrics::counter!("trawl_restarts_total", "component" => component.to_owned()).increment(1);
    }
}

/// What stands between the node and its work right now, by component
/// (`transport`, `connectors.NAME`): `GET /healthz` answers 503 with these.
#[derive(Debug, Default)]
pub struct Health(Mutex<BTreeMap<String, String>>);

impl Health {
    pub(crate) fn failing(&self, component: &str, why: impl Into<String>) {
        self.lock().insert(component.to_owned(), why.into());
    }

    pub(crate) fn working(&self, component: &str) {
        self.lock().remove(component);
    }

    /// `component: why` for each problem; empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|(component, why)| format!("{component}: {why}"))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A worker group's series (labelled `group`), counted with the node's
/// totals so that the progress log and `/metrics` never disagree.
pub(crate) struct GroupSeries {
    node: Arc<Metrics>,
    group: String,
    ok: Counter,
    error: Counter,
    timeout: Counter,
    cached: Counter,
    filtered: Counter,
    set_aside: Counter,
    matched: Counter,
    retries: Counter,
    in_flight: Gauge,
    seconds: Histogram,
    /// The labels of the info series last set, zeroed when they change.
    info: Mutex<Vec<(&'static str, String)>>,
}

impl GroupSeries {
    pub(crate) fn new(node: Arc<Metrics>, group: &str) -> Self {
        let outcome = |outcome: &'static str| metrics::counter!("trawl_worker_payloads_total", "group" => group.to_owned(), "outcome" => outcome);
        let group_label = || [("group", group.to_owned())];
        GroupSeries {
            node,
            group: group.to_owned(),
            ok: outcome("ok"),
            error: outcome("error"),
            timeout: outcome("timeout"),
            cached: outcome("cached"),
            filtered: outcome("filtered"),
            set_aside: outcome("set_aside"),
            matched: metrics::counter!("trawl_worker_matched_total", &group_label()),
            retries: metrics::counter!("trawl_worker_retries_total", &group_label()),
            in_flight: metrics::gauge!("trawl_worker_in_flight", &group_label()),
            seconds: metrics::histogram!("trawl_worker_scan_seconds", &group_label()),
            info: Mutex::new(Vec::new()),
        }
    }

    /// A payload scanned (or given up on) with this outcome.
    pub(crate) fn scanned(&self, status: OutcomeStatus, matched: bool) {
        let (total, series) = match status {
            OutcomeStatus::Ok | OutcomeStatus::Skipped => (&self.node.results_ok, &self.ok),
            OutcomeStatus::Error => (&self.node.results_error, &self.error),
            OutcomeStatus::Timeout => (&self.node.results_timeout, &self.timeout),
        };
        Metrics::add(total, 1);
        series.increment(1);
        self.matches(matched);
    }

    /// A payload given an earlier scan's result of the same content.
    pub(crate) fn copied(&self, matched: bool) {
        Metrics::add(&self.node.results_ok, 1);
        Metrics::add(&self.node.results_cached, 1);
        self.cached.increment(1);
        self.matches(matched);
    }

    fn matches(&self, matched: bool) {
        if matched {
            Metrics::add(&self.node.results_matched, 1);
            self.matched.increment(1);
        }
    }

    /// A payload the group's filter left out.
    pub(crate) fn filtered(&self) {
        Metrics::add(&self.node.filtered, 1);
        self.filtered.increment(1);
    }

    /// A delivery that decodes to no payload event, set aside unscanned.
    pub(crate) fn set_aside(&self) {
        self.set_aside.increment(1);
    }

    /// Another attempt at a payload: a redelivery, or a wait for a service.
    pub(crate) fn retried(&self) {
        self.retries.increment(1);
    }

    /// A scan slot of the group restarted.
    pub(crate) fn restarted(&self) {
        self.node.restarted(&format!("workers.{}", self.group));
    }

    /// Counts a scan in flight until dropped, then times it.
    pub(crate) fn scanning(&self) -> Scanning<'_> {
        self.in_flight.increment(1.0);
        Scanning {
            series: self,
            since: Instant::now(),
        }
    }

    /// What the group runs, as an info series (value 1).
    pub(crate) fn runs(&self, info: &WorkerInfo) {
        let labels = vec![
            ("group", self.group.clone()),
            ("version", info.version.clone()),
            ("ruleset", info.ruleset.clone().unwrap_or_default()),
        ];
        let mut last = self.info.lock().unwrap_or_else(|e| e.into_inner());
        if *last != labels {
            if !last.is_empty() {
                metrics::gauge!("trawl_worker_info", &*last).set(0.0);
            }
            metrics::gauge!("trawl_worker_info", &labels).set(1.0);
            *last = labels;
        }
    }
}

pub(crate) struct Scanning<'a> {
    series: &'a GroupSeries,
    since: Instant,
}

impl Drop for Scanning<'_> {
    fn drop(&mut self) {
        self.series.in_flight.decrement(1.0);
        self.series.seconds.record(self.since.elapsed());
    }
}

/// A connector's series (labelled `connector`), counted with the node's totals.
#[derive(Clone)]
pub(crate) struct ConnectorSeries {
    node: Arc<Metrics>,
    component: String,
    written: Counter,
    refused: Counter,
    retries: Counter,
    seconds: Histogram,
}

impl ConnectorSeries {
    pub(crate) fn new(node: Arc<Metrics>, connector: &str) -> Self {
        let label = || [("connector", connector.to_owned())];
        ConnectorSeries {
            node,
            component: format!("connectors.{connector}"),
            written: metrics::counter!("trawl_connector_results_total", &label()),
            refused: metrics::counter!("trawl_connector_refused_total", &label()),
            retries: metrics::counter!("trawl_connector_retries_total", &label()),
            seconds: metrics::histogram!("trawl_connector_write_seconds", &label()),
        }
    }

    /// One write to the store took `took` and ended with `failed`'s reason,
    /// if the store is away (it is retried).
    pub(crate) fn wrote(&self, took: Duration, away: Option<String>) {
        self.seconds.record(took);
        if away.is_some() {
            Metrics::add(&self.node.store_retries, 1);
            self.retries.increment(1);
        }
        self.reached(away);
    }

    /// The store answered, or is away for the reason given.
    pub(crate) fn reached(&self, away: Option<String>) {
        match away {
            None => self.node.health.working(&self.component),
            Some(why) => self.node.health.failing(&self.component, why),
        }
    }

    /// `n` results confirmed by the store, behind `bytes` of payloads.
    pub(crate) fn stored(&self, n: u64, bytes: u64) {
        Metrics::add(&self.node.stored, n);
        Metrics::add(&self.node.stored_bytes, bytes);
        self.written.increment(n);
    }

    /// A result set aside: undecodable, or refused by the store even as an
    /// error record.
    pub(crate) fn set_aside(&self) {
        Metrics::add(&self.node.store_refused, 1);
        self.refused.increment(1);
    }
}
