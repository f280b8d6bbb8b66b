//! This node's recently fetched payload bytes, and fetches under way
//! shared by every worker group that asks for the same bytes, so that a
//! stored payload crosses the network once per node rather than once per
//! group.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::bounded::BoundedCache;
use crate::TransportError;

/// Payloads up to this size travel inside their event by default: inline
/// bytes are carried once per worker group, stored ones once per node.
pub(crate) fn default_inline_limit() -> usize {
    64 * 1024
}

/// Bytes of recently read stored payloads a node keeps by default.
pub(crate) fn default_blob_cache() -> usize {
    64 * 1024 * 1024
}

/// How this node's worker groups got stored payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobReads {
    /// Read from the broker.
    pub from_store: u64,
    /// Served by this node's cache or by a read another group had under way.
    pub shared: u64,
}

/// A shared fetch's failure, kept apart so that "gone" stays distinct from
/// "unreachable for now" for every caller.
#[derive(Clone)]
enum FetchFailed {
    Missing(String),
    Corrupt(String, String),
    Unavailable(String),
}

impl From<TransportError> for FetchFailed {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::BlobMissing(k) => FetchFailed::Missing(k),
            TransportError::BlobCorrupt { key, why } => FetchFailed::Corrupt(key, why),
            TransportError::Unavailable(why) => FetchFailed::Unavailable(why),
            e => FetchFailed::Unavailable(e.to_string()),
        }
    }
}

impl From<FetchFailed> for TransportError {
    fn from(e: FetchFailed) -> Self {
        match e {
            FetchFailed::Missing(k) => TransportError::BlobMissing(k),
            FetchFailed::Corrupt(key, why) => TransportError::BlobCorrupt { key, why },
            FetchFailed::Unavailable(why) => TransportError::Unavailable(why),
        }
    }
}

type Shared = Arc<OnceCell<Result<Bytes, FetchFailed>>>;

pub(crate) struct Fetched {
    cache: Mutex<BoundedCache>,
    /// Fetches under way, by key, each shared by everyone waiting for it.
    inflight: Mutex<HashMap<String, Shared>>,
    asked: AtomicU64,
    from_store: AtomicU64,
}

impl Fetched {
    /// Keeping up to `capacity` bytes of recent fetches.
    pub(crate) fn new(capacity: usize) -> Self {
        Fetched {
            cache: Mutex::new(BoundedCache::new(capacity)),
            inflight: Mutex::default(),
            asked: AtomicU64::new(0),
            from_store: AtomicU64::new(0),
        }
    }

    /// The bytes under `key`: cached, being fetched by another caller, or
    /// fetched now with `fetch`.
    pub(crate) async fn get<F, Fut>(&self, key: &str, fetch: F) -> Result<Bytes, TransportError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, TransportError>>,
    {
        self.asked.fetch_add(1, Ordering::Relaxed);
        if let Some(hit) = self.cache.lock().expect("cache lock").get(key) {
            return Ok(hit);
        }
        let cell = self
            .inflight
            .lock()
            .expect("inflight lock")
            .entry(key.to_owned())
            .or_default()
            .clone();
        let fetched = cell
            .get_or_init(|| async move {
                self.from_store.fetch_add(1, Ordering::Relaxed);
                let data = fetch().await?;
                self.cache
                    .lock()
                    .expect("cache lock")
                    .insert(key, data.clone());
                Ok(data)
            })
            .await
            .clone();
        self.inflight.lock().expect("inflight lock").remove(key);
        fetched.map_err(TransportError::from)
    }

    /// Log how stored payload bytes reached this node's worker groups.
    pub(crate) fn report(&self) {
        let reads = self.reads();
        tracing::info!(
            from_store = reads.from_store,
            shared = reads.shared,
            "stored payloads read by this node's worker groups"
        );
    }

    /// How stored payload bytes reached this node's worker groups so far.
    pub(crate) fn reads(&self) -> BlobReads {
        let from_store = self.from_store.load(Ordering::Relaxed);
        BlobReads {
            from_store,
            shared: self
                .asked
                .load(Ordering::Relaxed)
                .saturating_sub(from_store),
        }
    }
}
