use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
}
