//! Files and folders named once (`type = "files"`), what `trawl scan` reads:
//! every file under `paths` is published, or recorded as unreadable, once;
//! then the source returns and its node's intake is done.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use trawl_config::{Component, ConfigError};
use trawl_core::SourceKind;

use crate::factory::SourceFactory;
use crate::ingest::record_unreadable;
use crate::{publish_file, walk, Origin, ReadAhead, Source, SourceContext, SourceError};

/// Files read ahead of the publisher, and the bytes they may hold.
const READ_AHEAD: usize = 8;
const READ_AHEAD_BYTES: u64 = 64 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesParams {
    /// Files and folders (read recursively).
    paths: Vec<String>,
    /// Follow symlinks found inside folders (loops are detected and reported).
    #[serde(default)]
    follow_symlinks: bool,
    /// Larger files are recorded as errors, not read.
    #[serde(default = "default_max_size")]
    max_size: u64,
}

fn default_max_size() -> u64 {
    512 * 1024 * 1024
}

pub(crate) struct FilesFactory;

impl FilesFactory {
    fn params(config: &Component) -> Result<FilesParams, ConfigError> {
        let p: FilesParams = config.params()?;
        if p.paths.is_empty() {
            return Err(config.error("paths: name at least one file or folder"));
        }
        Ok(p)
    }
}

impl SourceFactory for FilesFactory {
    fn check(&self, config: &Component) -> Result<(), ConfigError> {
        Self::params(config).map(drop)
    }

    fn build(&self, config: &Component, _data_dir: &Path) -> Result<Arc<dyn Source>, ConfigError> {
        let p = Self::params(config)?;
        Ok(Arc::new(FilesSource {
            name: config.name.clone(),
            paths: p.paths.iter().map(|x| config.resolve_path(x)).collect(),
            follow_symlinks: p.follow_symlinks,
            max_size: p.max_size,
        }))
    }
}

struct FilesSource {
    name: String,
    paths: Vec<PathBuf>,
    follow_symlinks: bool,
    max_size: u64,
}

impl FilesSource {
    /// Record a file that cannot be read as an error result, and say so.
    async fn unreadable(
        &self,
        ctx: &SourceContext,
        origin: &Origin,
        path: &Path,
        reason: &str,
    ) -> Result<(), SourceError> {
        tracing::warn!(source = %self.name, "{}: {reason}", path.display());
        record_unreadable(ctx, origin, path, reason)
            .await
            .map_err(|source| self.transport_error(source))
    }

    fn transport_error(&self, source: trawl_transport::TransportError) -> SourceError {
        SourceError::Transport {
            name: self.name.clone(),
            source,
        }
    }
}

#[async_trait]
impl Source for FilesSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: SourceContext) -> Result<(), SourceError> {
        let (paths, follow) = (self.paths.clone(), self.follow_symlinks);
        let walked = tokio::task::spawn_blocking(move || walk(&paths, follow))
            .await
            .map_err(|e| SourceError::Setup {
                name: self.name.clone(),
                reason: format!("listing stopped: {e}"),
            })?;
        if walked.skipped_symlinks > 0 {
            tracing::info!(
                source = %self.name,
                count = walked.skipped_symlinks,
                "symlinks not followed (set follow_symlinks, or --follow-symlinks)"
            );
        }
        let stats = &ctx.stats;
        stats
            .folder_files
            .fetch_add(walked.files.len() as u64, Ordering::Relaxed);
        stats
            .folder_bytes
            .fetch_add(walked.bytes(), Ordering::Relaxed);
        let origin = Origin::new(SourceKind::Cli, &ctx.node);
        for issue in &walked.issues {
            self.unreadable(&ctx, &origin, &issue.path, &issue.reason)
                .await?;
        }
        let paths = walked.files.iter().map(|f| f.path.clone()).collect();
        let mut reads = ReadAhead::new(paths, self.max_size, READ_AHEAD, READ_AHEAD_BYTES);
        while let Some((path, read)) = reads.next().await {
            if *ctx.shutdown.borrow() {
                break;
            }
            match read {
                Ok(file) => publish_file(ctx.transport.as_ref(), file, &origin)
                    .await
                    .map_err(|source| self.transport_error(source))?,
                Err(e) => {
                    self.unreadable(&ctx, &origin, &path, &e.to_string())
                        .await?
                }
            }
            stats.handled(&self.name);
        }
        Ok(())
    }
}
