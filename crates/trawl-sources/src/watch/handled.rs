//! Occurrences between their publish and their checkpoint: `after` is
//! applied and the occurrence recorded once the transport handled its tree.

use std::collections::HashMap;
use std::path::PathBuf;

use futures::StreamExt;
use trawl_transport::TransportError;

use super::{Checkpoint, Layout, Occurrence, SourceStats, Watch};

/// Occurrences between their publish and their checkpoint.
pub(super) struct Handled<'a> {
    watch: &'a Watch,
    /// Occurrences of each data file not yet handled: the file is moved or
    /// deleted only with the last of them.
    uses: HashMap<PathBuf, usize>,
    stats: &'a SourceStats,
}

impl<'a> Handled<'a> {
    pub(super) fn new(watch: &'a Watch, stats: &'a SourceStats) -> Self {
        Handled {
            watch,
            uses: HashMap::new(),
            stats,
        }
    }

    /// Record the payload id each ready occurrence will be published under,
    /// durably, before any is published.
    pub(super) fn begin_all(
        &mut self,
        checkpoint: &mut Checkpoint,
        ready: Vec<Occurrence>,
    ) -> std::io::Result<Vec<(Occurrence, String)>> {
        let begun = ready
            .into_iter()
            .map(|occ| {
                let id = checkpoint.begin(&occ.key, &occ.path)?;
                self.begin(&occ);
                Ok((occ, id))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        checkpoint.sync()?;
        Ok(begun)
    }

    fn begin(&mut self, occ: &Occurrence) {
        *self.uses.entry(occ.path.clone()).or_default() += 1;
    }

    /// Checkpoint an occurrence whose tree the transport handled, and any
    /// others done by now. Synced with the next pass: a crash before that
    /// publishes them again under the same ids, which only replaces results.
    pub(super) fn finish<F>(
        &mut self,
        checkpoint: &mut Checkpoint,
        layout: &mut dyn Layout,
        more: &mut futures::stream::FuturesUnordered<F>,
        first: (Occurrence, Result<(), TransportError>),
    ) -> std::io::Result<()>
    where
        F: std::future::Future<Output = (Occurrence, Result<(), TransportError>)>,
    {
        let mut done = Some(first);
        while let Some((occ, handled)) = done.take() {
            if handled.is_ok() {
                self.one(checkpoint, layout, &occ)?;
            }
            // The transport closed: left for the next run to publish again.
            done = futures::FutureExt::now_or_never(more.next()).flatten();
        }
        Ok(())
    }

    /// Where the layout's logs stand (behind every line whose occurrence is
    /// unhandled), and everything recorded so far, made durable.
    pub(super) fn save(checkpoint: &mut Checkpoint, layout: &dyn Layout) -> std::io::Result<()> {
        layout
            .marks()
            .iter()
            .try_for_each(|(name, value)| checkpoint.mark(name, value))?;
        checkpoint.sync()
    }

    fn one(
        &mut self,
        checkpoint: &mut Checkpoint,
        layout: &mut dyn Layout,
        occ: &Occurrence,
    ) -> std::io::Result<()> {
        let left = self.uses.get_mut(&occ.path).map_or(0, |n| {
            *n -= 1;
            *n
        });
        if left == 0 {
            self.uses.remove(&occ.path);
        }
        if self.watch.apply_after(occ, left > 0) {
            checkpoint.record(&occ.key, &occ.path)?;
        } else {
            checkpoint.forget(&occ.key);
        }
        layout.handled(&occ.key);
        self.stats.handled(&self.watch.name);
        Ok(())
    }
}
