//! A folder watched for new complete files (`type = "dir"`).
//!
//! The folder is listed every `poll_interval`; a file is complete once its
//! size and modification time have not changed for `settle`. A checkpoint in
//! the node's data dir records what was published, so a restart neither
//! republishes nor skips.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use trawl_config::{Component, ConfigError};
use trawl_core::SourceKind;
use trawl_transport::TransportError;

use crate::registry::SourceFactory;
use crate::walk::{walk, WalkedFile};
use crate::{ingest_error_result, ingest_file, IngestError, Source, SourceContext, SourceError};

/// Files published at once (their transport acks awaited together).
const PUBLISH_AHEAD: usize = 8;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirParams {
    pub path: String,
    /// Quiet period after which an unchanged file counts as complete.
    #[serde(default = "default_settle")]
    pub settle: String,
    #[serde(default = "default_poll")]
    pub poll_interval: String,
    /// What to do with a file once published: `keep`, `delete` or `move:DIR`.
    #[serde(default = "default_after")]
    pub after: String,
    /// Larger files are recorded as errors, not read.
    #[serde(default = "default_max_size")]
    pub max_size: u64,
    #[serde(default)]
    pub follow_symlinks: bool,
}

fn default_settle() -> String {
    "2s".into()
}
fn default_poll() -> String {
    "1s".into()
}
fn default_after() -> String {
    "keep".into()
}
fn default_max_size() -> u64 {
    512 * 1024 * 1024
}

#[derive(Debug, Clone, PartialEq)]
enum After {
    Keep,
    Delete,
    Move(PathBuf),
}

pub(crate) struct DirFactory;

struct Checked {
    root: PathBuf,
    settle: Duration,
    poll: Duration,
    after: After,
}

fn checked(config: &Component) -> Result<(DirParams, Checked), ConfigError> {
    let p: DirParams = config.params()?;
    let dur = |key: &str, v: &str| {
        trawl_config::parse_duration(v).map_err(|e| config.error(format_args!("{key}: {e}")))
    };
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
    let c = Checked {
        root: config.resolve_path(&p.path),
        settle: dur("settle", &p.settle)?,
        poll: dur("poll_interval", &p.poll_interval)?,
        after,
    };
    Ok((p, c))
}

impl SourceFactory for DirFactory {
    fn check(&self, config: &Component) -> Result<(), ConfigError> {
        checked(config).map(|_| ())
    }

    fn build(&self, config: &Component, data_dir: &Path) -> Result<Arc<dyn Source>, ConfigError> {
        let (params, c) = checked(config)?;
        match std::fs::metadata(&c.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(config.error(format_args!(
                    "path: {} is a file, expected a directory",
                    c.root.display()
                )))
            }
            Err(e) => return Err(config.error(format_args!("path: {}: {e}", c.root.display()))),
        }
        Ok(Arc::new(DirSource {
            name: config.name.clone(),
            root: c.root,
            settle: c.settle,
            poll: c.poll,
            after: c.after,
            max_size: params.max_size,
            follow_symlinks: params.follow_symlinks,
            checkpoint: data_dir
                .join("sources")
                .join(format!("{}.checkpoint", config.name)),
        }))
    }
}

pub struct DirSource {
    name: String,
    root: PathBuf,
    settle: Duration,
    poll: Duration,
    after: After,
    max_size: u64,
    follow_symlinks: bool,
    checkpoint: PathBuf,
}

/// A file's identity for the checkpoint: same path, size and mtime = same file.
type Seen = (String, u64, u128);

fn seen_key(f: &WalkedFile) -> Seen {
    let mtime = f
        .modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (f.path.to_string_lossy().into_owned(), f.size, mtime)
}

struct Checkpoint {
    path: PathBuf,
    seen: HashSet<Seen>,
    file: std::fs::File,
}

impl Checkpoint {
    /// Load the checkpoint, dropping entries for files that are gone.
    fn open(path: &Path, present: &[WalkedFile]) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let recorded: HashSet<Seen> = text.lines().filter_map(parse_line).collect();
        let seen: HashSet<Seen> = present
            .iter()
            .map(seen_key)
            .filter(|k| recorded.contains(k))
            .collect();
        // Rewrite compacted, then append from there; rename keeps it whole on a crash.
        let tmp = path.with_extension("checkpoint.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            for k in &seen {
                f.write_all(format_line(k).as_bytes())?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            seen,
            file,
        })
    }

    /// Append a published file; [`Checkpoint::sync`] makes it durable. A
    /// crash before that republishes the file, which the transport drops as
    /// a duplicate by its ingest key.
    fn record(&mut self, key: Seen) -> std::io::Result<()> {
        self.file.write_all(format_line(&key).as_bytes())?;
        self.seen.insert(key);
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// The transport's duplicate key for one version of one file of this source.
fn ingest_key(source: &str, key: &Seen) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{source}\0{}", format_line(key)));
    format!("dir-{}", hex::encode(&digest[..16]))
}

fn format_line((path, size, mtime): &Seen) -> String {
    format!("{size}\t{mtime}\t{path}\n")
}

fn parse_line(line: &str) -> Option<Seen> {
    let mut parts = line.splitn(3, '\t');
    let size = parts.next()?.parse().ok()?;
    let mtime = parts.next()?.parse().ok()?;
    Some((parts.next()?.to_owned(), size, mtime))
}

impl DirSource {
    /// Publish one file, waiting out transport outages (the folder is not
    /// read further meanwhile); `false` if shutdown came first.
    async fn publish(
        &self,
        ctx: &SourceContext,
        file: &WalkedFile,
        key: &Seen,
    ) -> Result<bool, SourceError> {
        let mut shutdown = ctx.shutdown.clone();
        if *shutdown.borrow() {
            return Ok(false);
        }
        let mut attempt = 0u32;
        loop {
            let sent = match ingest_file(
                ctx.transport.as_ref(),
                &file.path,
                SourceKind::Dir,
                &self.name,
                self.max_size,
                Some(ingest_key(&self.name, key)),
            )
            .await
            {
                Ok(()) => Ok(()),
                Err(IngestError::Transport(e)) => Err(e),
                Err(e) => {
                    tracing::warn!(source = %self.name, path = %file.path.display(), error = %e, "file not ingested");
                    let r = ingest_error_result(
                        &file.path,
                        SourceKind::Dir,
                        &self.name,
                        &ctx.node,
                        &e.to_string(),
                    );
                    ctx.transport.publish_result(&r).await
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
                    let delay = trawl_core::retry_delay(attempt);
                    tracing::warn!(source = %self.name, error = %e, attempt, ?delay, "transport unavailable; holding the folder until it is back");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return Ok(false),
                    }
                }
            }
        }
    }

    fn apply_after(&self, path: &Path) -> std::io::Result<()> {
        match &self.after {
            After::Keep => Ok(()),
            After::Delete => std::fs::remove_file(path),
            After::Move(dir) => {
                let rel = path.strip_prefix(&self.root).unwrap_or(path);
                let dest = dir.join(rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::rename(path, dest)
            }
        }
    }
}

#[async_trait]
impl Source for DirSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, mut ctx: SourceContext) -> Result<(), SourceError> {
        let setup = |reason: String| SourceError::Setup {
            name: self.name.clone(),
            reason,
        };
        let list = |root: PathBuf, follow: bool| async move {
            tokio::task::spawn_blocking(move || walk(&[root], follow))
                .await
                .unwrap_or_default()
        };
        let first = list(self.root.clone(), self.follow_symlinks).await;
        let mut checkpoint = Checkpoint::open(&self.checkpoint, &first.files)
            .map_err(|e| setup(format!("checkpoint {}: {e}", self.checkpoint.display())))?;
        tracing::info!(source = %self.name, path = %self.root.display(), known = checkpoint.seen.len(), "watching folder");
        // First sighting of each (path, size, mtime) still settling.
        let mut settling: HashMap<Seen, Instant> = HashMap::new();
        loop {
            if *ctx.shutdown.borrow() {
                return Ok(());
            }
            let listed = list(self.root.clone(), self.follow_symlinks).await;
            for issue in &listed.issues {
                tracing::warn!(source = %self.name, path = %issue.path.display(), reason = %issue.reason, "cannot list");
            }
            let now = Instant::now();
            let current: HashSet<Seen> = listed.files.iter().map(seen_key).collect();
            settling.retain(|k, _| current.contains(k));
            let mut ready = Vec::new();
            for file in &listed.files {
                let key = seen_key(file);
                if checkpoint.seen.contains(&key) {
                    continue;
                }
                let since = *settling.entry(key.clone()).or_insert(now);
                let age = SystemTime::now()
                    .duration_since(file.modified)
                    .unwrap_or_default();
                if now.duration_since(since) >= self.settle || age >= self.settle {
                    ready.push((file.clone(), key));
                }
            }
            // Several publishes in flight hide the transport's round trip;
            // results come back in order, so the checkpoint stays a prefix.
            let shared = &ctx;
            let mut published = futures::stream::iter(ready)
                .map(|(file, key)| async move {
                    let sent = self.publish(shared, &file, &key).await;
                    (file, key, sent)
                })
                .buffered(PUBLISH_AHEAD);
            while let Some((file, key, sent)) = published.next().await {
                if !sent? {
                    break;
                }
                settling.remove(&key);
                let kept = match self.after {
                    After::Keep => true,
                    _ => match self.apply_after(&file.path) {
                        Ok(()) => false,
                        Err(e) => {
                            tracing::error!(source = %self.name, path = %file.path.display(), error = %e, "cannot apply `after`; keeping the file");
                            true
                        }
                    },
                };
                if kept {
                    checkpoint.record(key).map_err(|e| {
                        setup(format!("checkpoint {}: {e}", checkpoint.path.display()))
                    })?;
                }
            }
            drop(published);
            checkpoint
                .sync()
                .map_err(|e| setup(format!("checkpoint {}: {e}", checkpoint.path.display())))?;
            if *ctx.shutdown.borrow() {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = ctx.shutdown.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
