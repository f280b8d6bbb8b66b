//! The quiet period (`settle`): a file unchanged for that long counts as
//! complete.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::walk::WalkedFile;

/// First sightings of files still changing, for quiet-period completion.
#[derive(Default)]
pub(crate) struct Settling {
    since: HashMap<(PathBuf, u64, SystemTime), Instant>,
}

impl Settling {
    /// Whether `file` has been unchanged (or untouched) for `quiet`.
    pub(crate) fn settled(&mut self, file: &WalkedFile, now: Instant, quiet: Duration) -> bool {
        let since = *self
            .since
            .entry((file.path.clone(), file.size, file.modified))
            .or_insert(now);
        let age = SystemTime::now()
            .duration_since(file.modified)
            .unwrap_or_default();
        now.duration_since(since) >= quiet || age >= quiet
    }

    /// Forget files that changed or went away.
    pub(crate) fn retain(&mut self, listing: &[WalkedFile]) {
        let current: std::collections::HashSet<_> = listing
            .iter()
            .map(|f| (f.path.clone(), f.size, f.modified))
            .collect();
        self.since.retain(|k, _| current.contains(k));
    }
}
