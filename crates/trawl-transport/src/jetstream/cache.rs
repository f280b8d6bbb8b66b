//! This node's recently fetched payload bytes, and fetches under way
//! shared by every group that asks for the same bytes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OnceCell;

/// Byte-bounded, first-in first-out cache of payload bytes by sha256.
pub(super) struct BlobCache {
    capacity: usize,
    used: usize,
    order: std::collections::VecDeque<String>,
    entries: std::collections::HashMap<String, Bytes>,
}

impl BlobCache {
    pub(super) fn new(capacity: usize) -> Self {
        BlobCache {
            capacity,
            used: 0,
            order: Default::default(),
            entries: Default::default(),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<Bytes> {
        self.entries.get(key).cloned()
    }

    pub(super) fn insert(&mut self, key: &str, data: Bytes) {
        if data.len() > self.capacity / 2 || self.entries.contains_key(key) {
            return;
        }
        while self.used + data.len() > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.entries.remove(&old) {
                self.used -= gone.len();
            }
        }
        self.used += data.len();
        self.order.push_back(key.to_owned());
        self.entries.insert(key.to_owned(), data);
    }
}

/// Fetches under way, by sha256, each shared by everyone waiting for it.
pub(super) type Inflight =
    std::sync::Mutex<HashMap<String, Arc<OnceCell<Result<Bytes, FetchFailed>>>>>;

/// A shared fetch's failure, kept apart so that "gone" stays distinct from
/// "unreachable for now" for every caller.
#[derive(Clone)]
pub(super) enum FetchFailed {
    Missing(String),
    Corrupt(String, String),
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_cache_keeps_recent_bytes_within_its_capacity() {
        let mut c = BlobCache::new(100);
        c.insert("a", Bytes::from(vec![1; 40]));
        c.insert("b", Bytes::from(vec![2; 40]));
        assert_eq!(c.get("a").unwrap().len(), 40);
        c.insert("c", Bytes::from(vec![3; 40]));
        assert!(c.get("a").is_none(), "oldest evicted");
        assert!(c.get("b").is_some() && c.get("c").is_some());
        assert_eq!(c.used, 80);
        c.insert("huge", Bytes::from(vec![4; 60]));
        assert!(
            c.get("huge").is_none(),
            "over half the capacity is not cached"
        );
    }
}
