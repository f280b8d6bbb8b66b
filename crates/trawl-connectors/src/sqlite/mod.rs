//! The embedded default store: one SQLite file that analysts query with plain SQL.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection};
use serde::Deserialize;
use trawl_config::{BuildError, ConfigError, ConnectorConfig};
use trawl_core::{Connector, ConnectorError, ResultEvent};

use crate::factory::ConnectorFactory;

/// The results table (documented in README.md). One row per result; `id` is
/// the deterministic result id, so a redelivered result replaces its row.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS results (
    id             TEXT PRIMARY KEY,
    payload_id     TEXT NOT NULL,
    root_id        TEXT NOT NULL,
    depth          INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    size           INTEGER NOT NULL,
    filename       TEXT,
    path           TEXT,
    source_kind    TEXT NOT NULL,
    sensor         TEXT NOT NULL,
    flow           TEXT,
    fields         TEXT,
    worker         TEXT NOT NULL,
    worker_version TEXT NOT NULL,
    ruleset        TEXT,
    outcome        TEXT NOT NULL,
    message        TEXT,
    data           TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    duration_ms    INTEGER NOT NULL,
    replay_id      TEXT,
    cached_from    TEXT,
    new_matches    TEXT,
    node           TEXT NOT NULL,
    stored_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_sha256 ON results(sha256);
CREATE INDEX IF NOT EXISTS results_worker_outcome ON results(worker, outcome);
CREATE INDEX IF NOT EXISTS results_filename ON results(filename);
CREATE VIEW IF NOT EXISTS yara_matches AS
    SELECT r.sha256, r.filename, r.path, r.worker, r.ruleset,
           json_extract(m.value, '$.rule') AS rule,
           json_extract(m.value, '$.namespace') AS namespace,
           json_extract(m.value, '$.tags') AS tags,
           r.started_at
    FROM results r, json_each(r.data, '$.matches') m
    WHERE r.outcome = 'ok';
-- Rules a replay's result lists that the payload's earlier result from
-- the same worker group did not.
CREATE VIEW IF NOT EXISTS replay_new_matches AS
    SELECT r.replay_id, r.payload_id, r.sha256, r.filename, r.path, r.worker, r.ruleset,
           json_extract(m.value, '$.rule') AS rule
    FROM results r, json_each(r.data, '$.matches') m
    WHERE r.replay_id IS NOT NULL AND r.outcome = 'ok'
      AND NOT EXISTS (
          SELECT 1 FROM results o, json_each(o.data, '$.matches') om
          WHERE o.payload_id = r.payload_id AND o.worker = r.worker
            AND o.replay_id IS NULL
            AND json_extract(om.value, '$.rule') = json_extract(m.value, '$.rule'));
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqliteParams {
    #[serde(default = "default_path")]
    path: String,
}

fn default_path() -> String {
    "trawl.db".into()
}

/// The database file a `type = "sqlite"` connector writes.
pub fn database(component: &trawl_config::Component) -> Result<std::path::PathBuf, ConfigError> {
    let params: SqliteParams = component.params()?;
    Ok(component.resolve_path(&params.path))
}

pub(crate) struct SqliteFactory;

#[async_trait]
impl ConnectorFactory for SqliteFactory {
    fn check(&self, config: &ConnectorConfig) -> Result<(), ConfigError> {
        config.component.params::<SqliteParams>().map(|_| ())
    }

    async fn build(&self, config: &ConnectorConfig) -> Result<Box<dyn Connector>, BuildError> {
        let path = database(&config.component)?;
        let connector = SqliteConnector::open(&config.component.name, &path)
            .map_err(|source| BuildError::component(&config.component, source))?;
        Ok(Box::new(connector))
    }
}

pub struct SqliteConnector {
    name: String,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteConnector {
    /// Open (or create) the database and its schema.
    pub fn open(name: &str, path: &Path) -> Result<Self, ConnectorError> {
        let open_error = |reason: String| ConnectorError::Open {
            target: path.display().to_string(),
            reason,
        };
        if path.is_dir() {
            return Err(open_error(
                "is a directory, expected a database file".into(),
            ));
        }
        crate::make_folder_for(path)
            .map_err(|e| open_error(format!("cannot make its folder: {e}")))?;
        let conn = Connection::open(path).map_err(|e| open_error(e.to_string()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .and_then(|_| conn.execute_batch(SCHEMA))
        .and_then(|_| migrate(&conn))
        .map_err(|e| open_error(e.to_string()))?;
        Ok(SqliteConnector {
            name: name.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }
}

/// Columns added since the first schema, for databases written by older versions.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for column in ["fields", "cached_from", "new_matches"] {
        let present = conn
            .prepare("SELECT 1 FROM pragma_table_info('results') WHERE name = ?1")?
            .exists([column])?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE results ADD COLUMN {column} TEXT"))?;
        }
    }
    Ok(())
}

/// A result flattened to the table's columns, built before leaving the async thread.
struct Row {
    id: String,
    payload_id: String,
    root_id: String,
    depth: u32,
    sha256: String,
    size: i64,
    filename: Option<String>,
    path: Option<String>,
    source_kind: &'static str,
    sensor: String,
    flow: Option<String>,
    fields: Option<String>,
    worker: String,
    worker_version: String,
    ruleset: Option<String>,
    outcome: &'static str,
    message: Option<String>,
    data: String,
    started_at: String,
    duration_ms: i64,
    replay_id: Option<String>,
    cached_from: Option<String>,
    new_matches: Option<String>,
    node: String,
}

impl From<&ResultEvent> for Row {
    fn from(r: &ResultEvent) -> Self {
        let p = &r.payload;
        Row {
            id: r.id.clone(),
            payload_id: p.id.clone(),
            root_id: p.root_id.clone(),
            depth: p.depth,
            sha256: p.sha256.clone(),
            size: p.size.min(i64::MAX as u64) as i64,
            filename: p.filename.clone(),
            path: p.path.clone(),
            source_kind: p.source_kind.as_str(),
            sensor: p.sensor.clone(),
            flow: p
                .flow
                .as_ref()
                .map(|f| serde_json::to_string(f).unwrap_or_default()),
            fields: (!p.fields.is_empty())
                .then(|| serde_json::to_string(&p.fields).unwrap_or_default()),
            worker: r.worker.name.clone(),
            worker_version: r.worker.version.clone(),
            ruleset: r.worker.ruleset.clone(),
            outcome: r.outcome.status.as_str(),
            message: r.outcome.message.clone(),
            data: r.data.to_string(),
            started_at: r.started_at.to_rfc3339(),
            duration_ms: r.duration_ms.min(i64::MAX as u64) as i64,
            replay_id: r.replay_id.clone(),
            cached_from: r.cached_from.clone(),
            new_matches: r
                .new_matches
                .as_ref()
                .map(|m| serde_json::to_string(m).unwrap_or_default()),
            node: r.node.clone(),
        }
    }
}

fn store(conn: &mut Connection, rows: &[Row]) -> rusqlite::Result<()> {
    let stored_at = chrono::Utc::now().to_rfc3339();
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO results (id, payload_id, root_id, depth, sha256, size, filename, path,
                source_kind, sensor, flow, fields, worker, worker_version, ruleset, outcome, message,
                data, started_at, duration_ms, replay_id, cached_from, new_matches, node, stored_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)",
        )?;
        for r in rows {
            stmt.execute(params![
                r.id,
                r.payload_id,
                r.root_id,
                r.depth,
                r.sha256,
                r.size,
                r.filename,
                r.path,
                r.source_kind,
                r.sensor,
                r.flow,
                r.fields,
                r.worker,
                r.worker_version,
                r.ruleset,
                r.outcome,
                r.message,
                r.data,
                r.started_at,
                r.duration_ms,
                r.replay_id,
                r.cached_from,
                r.new_matches,
                r.node,
                stored_at,
            ])?;
        }
    }
    tx.commit()
}

#[async_trait]
impl Connector for SqliteConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: &[ResultEvent]) -> Result<(), ConnectorError> {
        let rows: Vec<Row> = batch.iter().map(Row::from).collect();
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            store(&mut conn, &rows)
        })
        .await
        .map_err(|e| ConnectorError::Unavailable(format!("sqlite writer stopped: {e}")))?
        .map_err(|e| match e.sqlite_error_code() {
            // Only these are about the rows themselves; the caller narrows
            // the batch down to the one refused.
            Some(
                rusqlite::ErrorCode::TooBig
                | rusqlite::ErrorCode::ConstraintViolation
                | rusqlite::ErrorCode::TypeMismatch,
            ) => ConnectorError::Rejected(e.to_string()),
            // The file itself (busy, full, read-only, unreadable, corrupt):
            // the results wait in the transport until it is writable again.
            _ => ConnectorError::Unavailable(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests;
