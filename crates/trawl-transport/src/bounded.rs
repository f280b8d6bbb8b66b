//! A byte-bounded cache shared by the transports.

use bytes::Bytes;

/// Byte-bounded, first-in first-out cache of bytes by key (payload bytes
/// by sha256, encoded results by content key).
pub(crate) struct BoundedCache {
    capacity: usize,
    used: usize,
    order: std::collections::VecDeque<String>,
    entries: std::collections::HashMap<String, Bytes>,
}

impl BoundedCache {
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedCache {
            capacity,
            used: 0,
            order: Default::default(),
            entries: Default::default(),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        self.entries.get(key).cloned()
    }

    pub(crate) fn insert(&mut self, key: &str, data: Bytes) {
        if data.len() > self.capacity / 2 {
            return;
        }
        // A newer value takes the old one's place.
        if let Some(old) = self.entries.remove(key) {
            self.used -= old.len();
            self.order.retain(|k| k != key);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_recent_values_within_its_capacity() {
        let mut c = BoundedCache::new(100);
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
        c.insert("b", Bytes::from(vec![5; 10]));
        assert_eq!(c.get("b").unwrap()[0], 5, "replaced");
        assert_eq!(c.used, 50);
    }
}
