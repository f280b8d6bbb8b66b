//! The embedded mode's payload archive, what `trawl replay` reads there:
//! every payload's bytes content-addressed under `DIR/blobs/ab/cd/<sha256>`
//! (written once, atomically, synced), and its event in `DIR/events.db`.
//! Oldest payloads are evicted past `max_age` or `max_bytes`.

mod source;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};
use trawl_config::ArchiveConfig;
use trawl_core::{wire, PayloadEvent};

pub(crate) use source::ArchiveFactory;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    #[error("archive {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("archive index {path}: {reason}")]
    Index { path: PathBuf, reason: String },
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    id          TEXT PRIMARY KEY,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sensor      TEXT NOT NULL,
    ingested_at INTEGER NOT NULL,
    event       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ingested_at ON events(ingested_at);
CREATE INDEX IF NOT EXISTS events_sha256 ON events(sha256);
CREATE TABLE IF NOT EXISTS blobs (
    sha256    TEXT PRIMARY KEY,
    size      INTEGER NOT NULL
);
"#;

/// Puts between two eviction passes.
const EVICT_EVERY: u64 = 256;

pub struct Archive {
    dir: PathBuf,
    index: Mutex<Connection>,
    max_age: Option<Duration>,
    max_bytes: Option<u64>,
    puts: std::sync::atomic::AtomicU64,
}

/// What a replay takes from the archive.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Sensors (source names); empty: all.
    pub sources: Vec<String>,
    pub sha256: Option<BTreeSet<String>>,
}

impl Archive {
    /// Open (or create) the archive, and evict what is past its limits.
    pub fn open(config: &ArchiveConfig) -> Result<Archive, ArchiveError> {
        let dir = config.dir.clone();
        let io = |e: std::io::Error| ArchiveError::Io {
            path: dir.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir.join("blobs")).map_err(io)?;
        std::fs::create_dir_all(dir.join("tmp")).map_err(io)?;
        let db = dir.join("events.db");
        let index_error = |e: rusqlite::Error| ArchiveError::Index {
            path: db.clone(),
            reason: e.to_string(),
        };
        let conn = Connection::open(&db).map_err(index_error)?;
        // FULL: an event is on disk before the source's checkpoint moves.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )
        .and_then(|_| conn.execute_batch(SCHEMA))
        .map_err(index_error)?;
        let archive = Archive {
            dir,
            index: Mutex::new(conn),
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            puts: Default::default(),
        };
        archive.evict()?;
        Ok(archive)
    }

    /// Open an archive that must exist already (for replay).
    pub fn open_existing(config: &ArchiveConfig) -> Result<Archive, ArchiveError> {
        if !config.dir.join("events.db").is_file() {
            return Err(ArchiveError::Io {
                path: config.dir.clone(),
                reason: "no archive here (no events.db): is this the node's [node] archive?".into(),
            });
        }
        Archive::open(config)
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        let (a, b) = (
            &sha256[..2.min(sha256.len())],
            sha256.get(2..4).unwrap_or("__"),
        );
        self.dir.join("blobs").join(a).join(b).join(sha256)
    }

    fn io(&self, path: &Path, e: std::io::Error) -> ArchiveError {
        ArchiveError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }

    fn index_error(&self, e: rusqlite::Error) -> ArchiveError {
        ArchiveError::Index {
            path: self.dir.join("events.db"),
            reason: e.to_string(),
        }
    }

    /// Keep `event` and its bytes; returns once both are on disk.
    pub fn put(&self, event: &PayloadEvent, data: &[u8]) -> Result<(), ArchiveError> {
        let path = self.blob_path(&event.sha256);
        if !path.exists() {
            self.write_blob(&path, data)?;
        }
        let encoded = wire::encode(event).map_err(|e| ArchiveError::Index {
            path: self.dir.join("events.db"),
            reason: e.to_string(),
        })?;
        {
            let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            index
                .execute(
                    "INSERT OR IGNORE INTO blobs (sha256, size) VALUES (?1, ?2)",
                    params![event.sha256, data.len() as i64],
                )
                .and_then(|_| {
                    index.execute(
                        "INSERT OR REPLACE INTO events (id, sha256, size, sensor, ingested_at, event)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![
                            event.id,
                            event.sha256,
                            event.size as i64,
                            event.source.sensor,
                            event.ingested_at.timestamp_millis(),
                            encoded
                        ],
                    )
                })
                .map_err(|e| self.index_error(e))?;
        }
        let puts = self.puts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if puts % EVICT_EVERY == EVICT_EVERY - 1 {
            self.evict()?;
        }
        Ok(())
    }

    /// Written under a temporary name, synced, then renamed into place: a
    /// crash leaves the blob whole or absent.
    fn write_blob(&self, path: &Path, data: &[u8]) -> Result<(), ArchiveError> {
        let parent = path.parent().expect("blob paths have a folder");
        std::fs::create_dir_all(parent).map_err(|e| self.io(parent, e))?;
        let tmp = self
            .dir
            .join("tmp")
            .join(ulid::Ulid::generate().to_string());
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.io(&tmp, e))?;
        f.write_all(data)
            .and_then(|_| f.sync_all())
            .map_err(|e| self.io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| self.io(path, e))?;
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(parent, e))
    }

    /// Drop the oldest payloads past `max_age` and `max_bytes`, and the
    /// bytes no payload refers to any more; returns how many payloads went.
    pub fn evict(&self) -> Result<u64, ArchiveError> {
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = 0u64;
        if let Some(age) = self.max_age {
            let cutoff = Utc::now() - chrono::Duration::from_std(age).unwrap_or_default();
            gone += index
                .execute(
                    "DELETE FROM events WHERE ingested_at < ?1",
                    [cutoff.timestamp_millis()],
                )
                .map_err(|e| self.index_error(e))? as u64;
        }
        self.drop_orphans(&index)?;
        if let Some(max) = self.max_bytes {
            loop {
                let (total, events): (i64, i64) = index
                    .query_row(
                        "SELECT (SELECT coalesce(sum(size), 0) FROM blobs), (SELECT count(*) FROM events)",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .map_err(|e| self.index_error(e))?;
                if total as u64 <= max || events == 0 {
                    break;
                }
                // About as many of the oldest as the excess takes, at least one.
                let average = (total / events).max(1);
                let batch = ((total - max as i64) / average).clamp(1, 1000);
                gone += index
                    .execute(
                        "DELETE FROM events WHERE id IN
                             (SELECT id FROM events ORDER BY ingested_at, id LIMIT ?1)",
                        [batch],
                    )
                    .map_err(|e| self.index_error(e))? as u64;
                self.drop_orphans(&index)?;
            }
        }
        if gone > 0 {
            tracing::info!(archive = %self.dir.display(), payloads = gone, "evicted the oldest payloads from the archive");
        }
        Ok(gone)
    }

    fn drop_orphans(&self, index: &Connection) -> Result<(), ArchiveError> {
        let orphans: Vec<String> = index
            .prepare("SELECT sha256 FROM blobs WHERE sha256 NOT IN (SELECT sha256 FROM events)")
            .and_then(|mut s| {
                s.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(|e| self.index_error(e))?;
        for sha256 in orphans {
            let path = self.blob_path(&sha256);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(&path, e)),
            }
            index
                .execute("DELETE FROM blobs WHERE sha256 = ?1", [&sha256])
                .map_err(|e| self.index_error(e))?;
        }
        Ok(())
    }

    /// The payload events `selection` names, oldest first.
    pub fn events(&self, selection: &Selection) -> Result<Vec<PayloadEvent>, ArchiveError> {
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let since = selection.since.map_or(i64::MIN, |t| t.timestamp_millis());
        let until = selection.until.map_or(i64::MAX, |t| t.timestamp_millis());
        let rows: Vec<Vec<u8>> = index
            .prepare(
                "SELECT event FROM events WHERE ingested_at >= ?1 AND ingested_at <= ?2
                 ORDER BY ingested_at, id",
            )
            .and_then(|mut s| {
                s.query_map([since, until], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<Vec<u8>>>>()
            })
            .map_err(|e| self.index_error(e))?;
        Ok(rows
            .iter()
            .filter_map(|b| wire::decode::<PayloadEvent>(b).ok())
            .filter(|e| {
                selection.sources.is_empty() || selection.sources.contains(&e.source.sensor)
            })
            .filter(|e| {
                selection
                    .sha256
                    .as_ref()
                    .is_none_or(|set| set.contains(&e.sha256))
            })
            .collect())
    }

    /// A payload's bytes; `None` once evicted.
    pub fn read(&self, sha256: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        let path = self.blob_path(sha256);
        match std::fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(&path, e)),
        }
    }

    /// Payloads and bytes kept.
    pub fn usage(&self) -> Result<(u64, u64), ArchiveError> {
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index
            .query_row(
                "SELECT (SELECT count(*) FROM events), (SELECT coalesce(sum(size), 0) FROM blobs)",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(|e| self.index_error(e))
    }
}

#[cfg(test)]
mod tests;
