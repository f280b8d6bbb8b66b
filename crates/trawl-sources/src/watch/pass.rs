//! One pass over the folder: list it, ask the layout what is complete,
//! record and publish each occurrence, and follow each tree until the
//! transport has handled it.

use std::sync::Arc;
use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use trawl_core::SourceKind;
use trawl_transport::TransportError;

use super::{Checkpoint, FolderSize, Layout, Occurrence, SourceStats, Watch, PUBLISH_AHEAD};
use crate::ingest::record_unreadable;
use crate::walk::{walk, Walked};
use crate::{ingest_file, IngestError, Origin, SourceContext, SourceError};

impl Watch {
    fn origin(&self, kind: SourceKind, occ: &Occurrence, payload_id: &str) -> Origin {
        Origin {
            kind,
            sensor: self.name.clone(),
            meta: occ.meta.clone(),
            ingest_key: Some(format!("{}-{}", kind.as_str(), occ.key)),
            payload_id: Some(payload_id.to_owned()),
        }
    }

    /// Publish one occurrence (or an error record for it), waiting out
    /// transport outages: the folder is not read further meanwhile.
    /// `false` if shutdown came first.
    async fn publish(
        &self,
        ctx: &SourceContext,
        kind: SourceKind,
        occ: &Occurrence,
        payload_id: &str,
    ) -> Result<bool, SourceError> {
        let mut shutdown = ctx.shutdown.clone();
        if *shutdown.borrow() {
            return Ok(false);
        }
        let origin = self.origin(kind, occ, payload_id);
        let mut attempt = 0u32;
        loop {
            let read = ingest_file(
                ctx.transport.as_ref(),
                &occ.path,
                &origin,
                self.max_size,
                self.follow_symlinks,
            );
            let sent = match read.await {
                Ok(()) => Ok(()),
                // Too large for the transport (a sensor's huge metadata) is
                // final for this file, like an unreadable one.
                Err(IngestError::Transport(e)) if !matches!(e, TransportError::TooLarge { .. }) => {
                    Err(e)
                }
                Err(e) => {
                    tracing::warn!(source = %self.name, path = %occ.path.display(), error = %e, "file not ingested");
                    record_unreadable(ctx, &origin, &occ.path, &e.to_string()).await
                }
            };
            match sent {
                Ok(()) => return Ok(true),
                Err(TransportError::Closed) => {
                    return Err(SourceError::Transport {
                        name: self.name.clone(),
                        source: TransportError::Closed,
                    })
                }
                Err(e) => {
                    attempt += 1;
                    let delay = trawl_core::Backoff::SERVICE.delay(attempt);
                    tracing::warn!(source = %self.name, error = %e, attempt, ?delay, "transport unavailable; holding the folder until it is back");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return Ok(false),
                    }
                }
            }
        }
    }

    fn high_water(&self, was: FolderSize, files: u64, bytes: u64) -> FolderSize {
        let over = self.high_water_files.is_some_and(|m| files > m)
            || self.high_water_bytes.is_some_and(|m| bytes > m);
        if over && !was.over {
            tracing::error!(source = %self.name, path = %self.root.display(), files, bytes,
                high_water_files = ?self.high_water_files, high_water_bytes = ?self.high_water_bytes,
                "folder above its high-water mark: trawl is falling behind the sensor (or `after = \"keep\"` lets it fill)");
        } else if !over && was.over {
            tracing::info!(source = %self.name, files, bytes, "folder back below its high-water mark");
        }
        FolderSize { files, bytes, over }
    }
}

/// A published occurrence, resolving once its tree is handled.
pub(super) type Handling =
    futures::future::BoxFuture<'static, (Occurrence, Result<(), TransportError>)>;

impl Watch {
    /// List the folder and ask the layout what is complete: blocking work
    /// (the listing, the layout's log reading), done off the async threads.
    pub(super) async fn list(
        self: Arc<Self>,
        mut layout: Box<dyn Layout>,
        checkpoint: Checkpoint,
    ) -> Result<(Box<dyn Layout>, Checkpoint, Walked, Vec<Occurrence>), tokio::task::JoinError>
    {
        let watch = self;
        tokio::task::spawn_blocking(move || {
            let mut listed = walk(std::slice::from_ref(&watch.root), watch.follow_symlinks);
            listed.files.retain(|f| {
                f.path
                    .strip_prefix(&watch.root)
                    .is_ok_and(|rel| watch.filter.wants(rel))
            });
            for issue in &listed.issues {
                tracing::warn!(source = %watch.name, path = %issue.path.display(), reason = %issue.reason, "cannot list");
            }
            let ready = layout.ready(&listed.files, &checkpoint, Instant::now());
            (layout, checkpoint, listed, ready)
        })
        .await
    }

    /// The folder's size after a listing, in the gauges and against the
    /// high-water mark.
    pub(super) fn track(
        &self,
        stats: &SourceStats,
        was: FolderSize,
        listed: &Walked,
    ) -> FolderSize {
        let now = self.high_water(was, listed.files.len() as u64, listed.bytes());
        stats.folder(&self.name, was, now);
        now
    }

    /// Publish what `begin_all` recorded, several at once to hide the
    /// transport's round trip (each is checkpointed on its own, so order does
    /// not matter), and wait for each tree in `handling`. Stops early at
    /// shutdown or on a transport error.
    pub(super) async fn publish_all(
        &self,
        ctx: &SourceContext,
        kind: SourceKind,
        begun: Vec<(Occurrence, String)>,
        handling: &mut FuturesUnordered<Handling>,
    ) -> Result<(), SourceError> {
        let mut published = futures::stream::iter(begun)
            .map(|(occ, id)| async move {
                let sent = self.publish(ctx, kind, &occ, &id).await;
                (occ, id, sent)
            })
            .buffer_unordered(PUBLISH_AHEAD);
        while let Some((occ, id, sent)) = published.next().await {
            if !sent? {
                break;
            }
            let transport = ctx.transport.clone();
            handling.push(Box::pin(async move {
                let handled = transport.handled(&id).await;
                (occ, handled)
            }));
        }
        Ok(())
    }
}
