//! Results by content: a payload whose bytes a worker group scanned
//! shortly before, with the same worker version and ruleset, gets a copy of
//! that result instead of a scan.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use trawl_core::{wire, ResultEvent, WorkerInfo};

use crate::bounded::BoundedCache;
use crate::TransportError;

/// The key of a result by content: the worker's identity and the payload's sha256.
pub fn cache_key(worker: &WorkerInfo, sha256: &str) -> String {
    let mut parts = Vec::new();
    for part in [
        worker.name.as_str(),
        &worker.version,
        worker.ruleset.as_deref().unwrap_or(""),
        sha256,
    ] {
        parts.extend_from_slice(part.as_bytes());
        // Parts cannot run into each other.
        parts.push(0);
    }
    trawl_core::sha256_hex(&parts)
}

/// Results stored by [`cache_key`]. Callers judge their age by `started_at`.
#[async_trait]
pub trait ResultCache: Send + Sync {
    /// The smallest payload worth a lookup: below it, asking for a copy
    /// costs about what the scan it would save does.
    fn worth_from(&self) -> u64 {
        0
    }

    async fn get(&self, key: &str) -> Result<Option<ResultEvent>, TransportError>;
    async fn put(&self, key: &str, result: &ResultEvent) -> Result<(), TransportError>;
}

/// The cache of one process, bounded in bytes (oldest out first).
pub(crate) struct LocalResultCache(Mutex<BoundedCache>);

impl LocalResultCache {
    pub(crate) fn new(max_bytes: usize) -> Self {
        LocalResultCache(Mutex::new(BoundedCache::new(max_bytes)))
    }
}

#[async_trait]
impl ResultCache for LocalResultCache {
    async fn get(&self, key: &str) -> Result<Option<ResultEvent>, TransportError> {
        let hit = self.0.lock().expect("result cache lock").get(key);
        Ok(hit.and_then(|b| wire::decode(&b).ok()))
    }

    async fn put(&self, key: &str, result: &ResultEvent) -> Result<(), TransportError> {
        let encoded = Bytes::from(wire::encode(result)?);
        self.0
            .lock()
            .expect("result cache lock")
            .insert(key, encoded);
        Ok(())
    }
}
