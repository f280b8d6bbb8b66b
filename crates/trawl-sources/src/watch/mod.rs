//! The engine every folder-watching source shares (`dir`, `suricata`,
//! `zeek`): list the folder every `poll_interval`, ask the source's layout
//! which file occurrences are complete, publish them with their metadata,
//! apply `after`, checkpoint. The layouts differ only in what "complete"
//! means and where the metadata comes from.

mod after;
mod checkpoint;
mod filter;
mod handled;
mod keys;
mod params;
mod pass;
mod settling;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use trawl_config::{Component, ConfigError};
use trawl_core::{PayloadMeta, SourceKind};

pub(crate) use checkpoint::Checkpoint;
pub(crate) use keys::{file_key, line_key};
pub use params::WatchParams;
pub(crate) use settling::Settling;

use after::After;
use filter::Filter;
use handled::Handled;
use pass::Handling;

use crate::walk::WalkedFile;
use crate::{Source, SourceContext, SourceError};

/// How often a source whose folder is missing says so.
const ABSENT_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Files published at once (their transport acks awaited together).
const PUBLISH_AHEAD: usize = 8;

/// One sighting of a file that is ready to publish.
#[derive(Debug, Clone)]
pub(crate) struct Occurrence {
    /// The data file.
    pub path: PathBuf,
    /// Identity in the checkpoint (and the transport's duplicate key).
    pub key: String,
    pub meta: PayloadMeta,
    /// Files that belong to this occurrence (sidecars) and share its `after`.
    pub companions: Vec<PathBuf>,
}

/// What "complete" means for one kind of source, and where metadata comes from.
pub(crate) trait Layout: Send + 'static {
    fn kind(&self) -> SourceKind;

    /// Called once at start with the marks saved by [`Layout::marks`].
    fn resume(&mut self, _marks: &HashMap<String, String>) {}

    /// The occurrences complete now, given a fresh listing of the folder
    /// (already filtered by the include/exclude globs). Runs off the async
    /// threads; may read the source's logs.
    fn ready(&mut self, listing: &[WalkedFile], done: &Checkpoint, now: Instant)
        -> Vec<Occurrence>;

    /// An occurrence was published or recorded as an error.
    fn handled(&mut self, _key: &str) {}

    /// Where the layout's log readers stand, for the checkpoint.
    fn marks(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Counters a node reads to report on its sources.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Occurrences published (or recorded as errors).
    pub published: AtomicU64,
    /// Files and bytes in watched folders, summed over sources.
    pub folder_files: AtomicU64,
    pub folder_bytes: AtomicU64,
    /// Sources currently above their high-water mark.
    pub over_high_water: AtomicU64,
    /// Files recorded as unreadable instead of published.
    pub unreadable: AtomicU64,
    /// Sources whose work is done (a `files` source that read everything).
    pub finished: AtomicU64,
    /// Woken when `finished` grows.
    pub finished_changed: tokio::sync::Notify,
}

/// The checked settings shared by every watching source.
pub(crate) struct Watch {
    name: String,
    root: PathBuf,
    poll: Duration,
    after: After,
    max_size: u64,
    follow_symlinks: bool,
    filter: Filter,
    high_water_files: Option<u64>,
    high_water_bytes: Option<u64>,
}

impl Watch {
    /// Check the shared keys; `build` also needs the folder to exist.
    pub(crate) fn check(config: &Component, p: &WatchParams) -> Result<Watch, ConfigError> {
        let after = match p.after.as_str() {
            "keep" => After::Keep,
            "delete" => After::Delete,
            other => match other.strip_prefix("move:") {
                Some(dir) if !dir.is_empty() => After::Move(config.resolve_path(dir)),
                _ => {
                    return Err(config.error(format_args!(
                        "after: expected \"keep\", \"delete\" or \"move:DIR\", found {other:?}"
                    )))
                }
            },
        };
        Ok(Watch {
            name: config.name.clone(),
            root: config.resolve_path(&p.path),
            poll: p.poll_interval.get(),
            after,
            max_size: p.max_size,
            follow_symlinks: p.follow_symlinks,
            filter: Filter::new(config, p)?,
            high_water_files: p.high_water_files,
            high_water_bytes: p.high_water_bytes,
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The source, ready to run. A folder that does not exist yet is waited
    /// for (Suricata makes `filestore/` with its first file); a file where
    /// the folder should be is an error.
    pub(crate) fn build(
        self,
        config: &Component,
        data_dir: &Path,
        layout: impl Fn() -> Box<dyn Layout> + Send + Sync + 'static,
    ) -> Result<Arc<dyn Source>, ConfigError> {
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(config.error(format_args!(
                    "path: {} is a file, expected a directory",
                    self.root.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(source = %config.name, path = %self.root.display(), "folder does not exist yet; watching for it");
            }
            Err(e) => return Err(config.error(format_args!("path: {}: {e}", self.root.display()))),
        }
        Ok(Arc::new(WatchSource {
            watch: Arc::new(self),
            checkpoint: data_dir
                .join("sources")
                .join(format!("{}.checkpoint", config.name)),
            layout: Box::new(layout),
        }))
    }
}

/// A watching source: the shared settings and how to make its layout. Each
/// run starts a fresh layout from the checkpoint, so a restart after a
/// failure rebuilds its state from disk.
pub(crate) struct WatchSource {
    watch: Arc<Watch>,
    checkpoint: PathBuf,
    layout: Box<dyn Fn() -> Box<dyn Layout> + Send + Sync>,
}

/// The folder as last listed, for the high-water mark.
#[derive(Default, Clone, Copy)]
struct FolderSize {
    files: u64,
    bytes: u64,
    over: bool,
}

impl SourceStats {
    /// One occurrence `source` handled: published, or recorded as unreadable.
    pub(crate) fn handled(&self, source: &str) {
        self.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("trawl_source_files_total", "source" => source.to_owned()).increment(1);
    }

    /// One file `source` could not read, recorded as an error result.
    pub(crate) fn unreadable(&self, source: &str) {
        self.unreadable.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("trawl_source_unreadable_total", "source" => source.to_owned())
            .increment(1);
    }

    /// `source`'s folder now holds `now` (it held `was`).
    fn folder(&self, source: &str, was: FolderSize, now: FolderSize) {
        update_gauge(&self.folder_files, was.files, now.files);
        update_gauge(&self.folder_bytes, was.bytes, now.bytes);
        if now.over != was.over {
            update_gauge(&self.over_high_water, was.over as u64, now.over as u64);
        }
        let label = [("source", source.to_owned())];
        metrics::gauge!("trawl_source_backlog_files", &label).set(now.files as f64);
        metrics::gauge!("trawl_source_backlog_bytes", &label).set(now.bytes as f64);
    }
}

fn update_gauge(gauge: &AtomicU64, old: u64, new: u64) {
    if new >= old {
        gauge.fetch_add(new - old, Ordering::Relaxed);
    } else {
        gauge.fetch_sub(old - new, Ordering::Relaxed);
    }
}

#[async_trait]
impl Source for WatchSource {
    fn name(&self) -> &str {
        &self.watch.name
    }

    async fn run(&self, mut ctx: SourceContext) -> Result<(), SourceError> {
        let w = self.watch.clone();
        let setup = |reason: String| SourceError::Setup {
            name: w.name.clone(),
            reason,
        };
        let mut layout = (self.layout)();
        let cp_path = self.checkpoint.clone();
        let mut checkpoint = tokio::task::spawn_blocking(move || Checkpoint::open(&cp_path))
            .await
            .map_err(|e| setup(e.to_string()))?
            .map_err(|e| setup(format!("checkpoint {}: {e}", self.checkpoint.display())))?;
        layout.resume(checkpoint.marks());
        let kind = layout.kind();
        tracing::info!(source = %w.name, kind = kind.as_str(), path = %w.root.display(), known = checkpoint.len(), "watching folder");
        let stats = ctx.stats.clone();
        let mut folder = FolderSize::default();
        // Published occurrences whose trees the transport has not yet
        // handled; each is checkpointed (and `after` applied) once it has.
        let mut handling: FuturesUnordered<Handling> = FuturesUnordered::new();
        let mut state = Handled::new(&w, &stats);
        let checkpoint_error = |checkpoint: &Checkpoint, e: std::io::Error| {
            setup(format!("checkpoint {}: {e}", checkpoint.path().display()))
        };
        let mut absent_since: Option<Instant> = None;
        let result = loop {
            if *ctx.shutdown.borrow() {
                break Ok(());
            }
            if !w.root.is_dir() {
                // Not there yet (or gone): look again next pass, saying so now
                // and then; what the pipeline finishes meanwhile is still
                // checkpointed below.
                if absent_since.is_none_or(|t| t.elapsed() >= ABSENT_REPORT_EVERY) {
                    tracing::warn!(source = %w.name, path = %w.root.display(), "folder does not exist; waiting for it");
                    absent_since = Some(Instant::now());
                }
            } else {
                absent_since = None;
                let (back_layout, back_cp, listed, ready) = w
                    .clone()
                    .list(layout, checkpoint)
                    .await
                    .map_err(|e| setup(format!("folder listing stopped: {e}")))?;
                layout = back_layout;
                checkpoint = back_cp;
                folder = w.track(&stats, folder, &listed);
                // Each occurrence's payload id is on disk before it is published.
                let begun = match state.begin_all(&mut checkpoint, ready) {
                    Ok(b) => b,
                    Err(e) => break Err(checkpoint_error(&checkpoint, e)),
                };
                let failed = w.publish_all(&ctx, kind, begun, &mut handling).await;
                if let Err(e) = Handled::save(&mut checkpoint, &*layout) {
                    break Err(checkpoint_error(&checkpoint, e));
                }
                if let Err(e) = failed {
                    break Err(e);
                }
            }
            // Until the next pass, checkpoint what the pipeline finishes.
            let next_pass = tokio::time::sleep(w.poll);
            tokio::pin!(next_pass);
            let waited = loop {
                tokio::select! {
                    _ = &mut next_pass => break Ok(()),
                    _ = ctx.shutdown.changed() => break Ok(()),
                    Some(done) = handling.next() => {
                        if let Err(e) = state.finish(&mut checkpoint, &mut *layout, &mut handling, done) {
                            break Err(checkpoint_error(&checkpoint, e));
                        }
                    }
                }
            };
            if let Err(e) = waited {
                break Err(e);
            }
        };
        // A clean stop checkpoints what the pipeline still finishes; what it
        // does not is published again, under the same ids, by the next run.
        if result.is_ok() {
            while let Some(done) = handling.next().await {
                if done.1.is_err() {
                    break;
                }
                if let Err(e) = state.finish(&mut checkpoint, &mut *layout, &mut handling, done) {
                    tracing::error!(source = %w.name, error = %e, "cannot checkpoint at stop");
                    break;
                }
            }
            if let Err(e) = Handled::save(&mut checkpoint, &*layout) {
                tracing::error!(source = %w.name, error = %e, "cannot checkpoint at stop");
            }
        }
        stats.folder(&w.name, folder, FolderSize::default());
        result
    }
}
