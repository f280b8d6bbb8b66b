//! `type = "archive"`: the payloads an archive kept, put up once more as
//! one replay (what `trawl replay` runs in the embedded mode); then the
//! source returns and its node's intake is done.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use trawl_config::{ArchiveConfig, Component, ConfigError};
use trawl_core::{Outcome, OutcomeStatus, ResultEvent, WorkerInfo};

use super::{Archive, Selection};
use crate::factory::SourceFactory;
use crate::ingest::INGEST_WORKER;
use crate::{Source, SourceContext, SourceError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchiveParams {
    /// The archive folder (a node's `[node] archive`).
    path: String,
    /// The replay's id: every payload and result carries it.
    replay_id: String,
    #[serde(default)]
    since: Option<DateTime<Utc>>,
    #[serde(default)]
    until: Option<DateTime<Utc>>,
    /// Only payloads these sources published.
    #[serde(default)]
    sources: Vec<String>,
    /// Only payloads with these sha256s.
    #[serde(default)]
    sha256: Option<Vec<String>>,
}

pub(crate) struct ArchiveFactory;

impl ArchiveFactory {
    fn params(config: &Component) -> Result<ArchiveParams, ConfigError> {
        let p: ArchiveParams = config.params()?;
        if ulid::Ulid::from_string(&p.replay_id).is_err() {
            return Err(config.error(format!("replay_id: {:?} is not a ULID", p.replay_id)));
        }
        Ok(p)
    }
}

impl SourceFactory for ArchiveFactory {
    fn check(&self, config: &Component) -> Result<(), ConfigError> {
        Self::params(config).map(drop)
    }

    fn build(&self, config: &Component, _data_dir: &Path) -> Result<Arc<dyn Source>, ConfigError> {
        let p = Self::params(config)?;
        let archive = Archive::open_existing(&ArchiveConfig {
            dir: config.resolve_path(&p.path),
            max_age: None,
            max_bytes: None,
        })
        .map_err(|e| config.error(e))?;
        Ok(Arc::new(ArchiveSource {
            name: config.name.clone(),
            archive,
            replay_id: p.replay_id,
            selection: Selection {
                since: p.since,
                until: p.until,
                sources: p.sources,
                sha256: p.sha256.map(|v| v.into_iter().collect()),
            },
        }))
    }
}

struct ArchiveSource {
    name: String,
    archive: Archive,
    replay_id: String,
    selection: Selection,
}

impl ArchiveSource {
    fn failed(&self, e: impl std::fmt::Display) -> SourceError {
        SourceError::Setup {
            name: self.name.clone(),
            reason: e.to_string(),
        }
    }
}

#[async_trait]
impl Source for ArchiveSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: SourceContext) -> Result<(), SourceError> {
        let events = self
            .archive
            .events(&self.selection)
            .map_err(|e| self.failed(e))?;
        let stats = &ctx.stats;
        stats
            .folder_files
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        stats.folder_bytes.fetch_add(
            events.iter().map(|e| e.size).sum::<u64>(),
            Ordering::Relaxed,
        );
        for mut event in events {
            if *ctx.shutdown.borrow() {
                break;
            }
            event.replay_id = Some(self.replay_id.clone());
            let sha256 = event.sha256.clone();
            let read = self.archive.read(&sha256).map_err(|e| self.failed(e))?;
            let published = match read {
                Some(data) => {
                    ctx.transport
                        .publish_payload(event, Bytes::from(data))
                        .await
                }
                None => {
                    // Evicted: the replay records it rather than skip it.
                    let r = ResultEvent::new(
                        event.summary(),
                        WorkerInfo::new(INGEST_WORKER, "1"),
                        Outcome::failed(
                            OutcomeStatus::Error,
                            format!("payload bytes {sha256} have aged out of the archive"),
                        ),
                        serde_json::Value::Null,
                        Utc::now(),
                        &ctx.node,
                    )
                    .in_replay(Some(&self.replay_id));
                    trawl_transport::publish_result_fitting(ctx.transport.as_ref(), &r).await
                }
            };
            published.map_err(|source| SourceError::Transport {
                name: self.name.clone(),
                source,
            })?;
            stats.handled(&self.name);
        }
        Ok(())
    }
}
