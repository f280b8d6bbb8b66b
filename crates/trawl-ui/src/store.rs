//! What the page reads from the SQLite store, opened read-only per request
//! (a node may be writing it meanwhile; this never writes).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, Row};
use serde::Serialize;
use serde_json::Value;

use crate::UiError;

/// Files on one page of search results.
pub const PAGE: usize = 50;

/// One file as found: a payload a sensor carved or an archive gave up.
#[derive(Debug, Serialize)]
pub struct Hit {
    pub payload_id: String,
    pub sha256: String,
    pub filename: Option<String>,
    pub size: i64,
    /// When its first scan started (RFC 3339).
    pub time: String,
    pub mime: Option<String>,
    pub rules: Vec<String>,
    pub sensor: String,
    pub flow: Option<Value>,
    /// 0 for a carved file, more for a member of an archive.
    pub depth: i64,
    /// Results that are not `ok` (errors, timeouts).
    pub problems: i64,
}

#[derive(Debug, Serialize)]
pub struct SearchPage {
    pub query: String,
    pub page: usize,
    pub total: usize,
    pub hits: Vec<Hit>,
}

/// One worker's result for one sighting of the file.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub worker: String,
    pub worker_version: String,
    pub ruleset: Option<String>,
    pub outcome: String,
    pub message: Option<String>,
    pub data: Value,
    pub started_at: String,
    pub duration_ms: i64,
    pub node: String,
    pub replay_id: Option<String>,
    /// Rules a replay's result lists that the original did not.
    pub new_matches: Option<Value>,
}

/// The file as one sensor saw it once (the same bytes may be seen often).
#[derive(Debug, Serialize)]
pub struct Sighting {
    pub payload_id: String,
    pub root_id: String,
    pub depth: i64,
    pub filename: Option<String>,
    pub path: Option<String>,
    pub sensor: String,
    pub source_kind: String,
    pub flow: Option<Value>,
    /// What the sensor logged beside the file (HTTP host and URL, SMTP…).
    pub fields: Option<Value>,
    pub findings: Vec<Finding>,
}

/// A payload in the archive tree of a sighting.
#[derive(Debug, Serialize)]
pub struct Member {
    pub payload_id: String,
    pub sha256: String,
    pub filename: Option<String>,
    pub depth: i64,
    pub size: i64,
}

#[derive(Debug, Serialize)]
pub struct FileView {
    pub sha256: String,
    pub size: i64,
    pub sightings: Vec<Sighting>,
    /// Every payload of the archive trees the file was seen in (an archive
    /// or a member of one), root first.
    pub lineage: Vec<Member>,
}

#[derive(Debug, Serialize)]
pub struct Count {
    pub key: String,
    pub count: i64,
}

#[derive(Debug, Serialize)]
pub struct WorkerOutcome {
    pub worker: String,
    pub outcome: String,
    pub count: i64,
}

/// A result that is not `ok`.
#[derive(Debug, Serialize)]
pub struct Problem {
    pub time: String,
    pub worker: String,
    pub outcome: String,
    pub sha256: String,
    pub filename: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Overview {
    pub files: i64,
    pub results: i64,
    /// Files per hour (`YYYY-MM-DDTHH`), the last 48 hours that had any.
    pub per_hour: Vec<Count>,
    pub top_rules: Vec<Count>,
    pub outcomes: Vec<WorkerOutcome>,
    pub problems: Vec<Problem>,
}

/// The store, opened afresh for each request.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

/// `q` as a LIKE pattern that matches it anywhere, its wildcards literal.
fn anywhere(q: &str) -> String {
    let escaped = q
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

fn json(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

/// The payloads a query names: by any of its digests, a rule it matched,
/// its mime type, sensor or flow address exactly, or part of its name.
const HITS: &str = r"
WITH hits AS (
    SELECT DISTINCT payload_id FROM results
    WHERE ?1 = ''
       OR sha256 = ?2 OR json_extract(data, '$.md5') = ?2 OR json_extract(data, '$.sha1') = ?2
       OR filename LIKE ?3 ESCAPE '\'
       OR sensor = ?1 OR json_extract(data, '$.mime') = ?2
       OR json_extract(flow, '$.src_ip') = ?1 OR json_extract(flow, '$.dest_ip') = ?1
       OR EXISTS (SELECT 1 FROM json_each(results.data, '$.matches') m
                  WHERE json_extract(m.value, '$.rule') = ?1)
)";

impl Store {
    /// The store at `path`, which must exist and be trawl's.
    pub fn open(path: &Path) -> Result<Self, UiError> {
        let store = Store {
            path: path.to_owned(),
        };
        // Preparing checks that the table exists without reading it.
        store
            .connect()?
            .prepare("SELECT 1 FROM results LIMIT 1")
            .map_err(|e| UiError::NotAStore(path.to_owned(), e))?;
        Ok(store)
    }

    fn connect(&self) -> Result<Connection, UiError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| UiError::Open(self.path.clone(), e))?;
        // A node's write holds the file briefly: wait for it rather than fail.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| UiError::Open(self.path.clone(), e))?;
        Ok(conn)
    }

    pub fn search(&self, query: &str, page: usize) -> Result<SearchPage, UiError> {
        let conn = self.connect()?;
        let q = query.trim();
        let lower = q.to_ascii_lowercase();
        let like = anywhere(q);
        let page = page.max(1);
        let total: i64 = conn.query_row(
            &format!("{HITS} SELECT COUNT(*) FROM hits"),
            params![q, lower, like],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare(&format!(
            "{HITS}
            SELECT r.payload_id, MAX(r.sha256), MAX(r.filename), MAX(r.size), MIN(r.started_at) AS t,
                   MAX(r.sensor), MAX(r.flow), MAX(r.depth),
                   MAX(CASE WHEN r.worker = 'filetype' AND r.outcome = 'ok'
                            THEN json_extract(r.data, '$.mime') END),
                   SUM(r.outcome != 'ok')
            FROM results r JOIN hits h ON h.payload_id = r.payload_id
            WHERE r.replay_id IS NULL
            GROUP BY r.payload_id
            ORDER BY t DESC, r.payload_id
            LIMIT ?4 OFFSET ?5"
        ))?;
        let offset = i64::try_from((page - 1) * PAGE).unwrap_or(i64::MAX);
        let limit = PAGE as i64;
        let mut hits = stmt
            .query_map(params![q, lower, like, limit, offset], |r| {
                Ok(Hit {
                    payload_id: r.get(0)?,
                    sha256: r.get(1)?,
                    filename: r.get(2)?,
                    size: r.get(3)?,
                    time: r.get(4)?,
                    sensor: r.get(5)?,
                    flow: json(r.get(6)?),
                    depth: r.get(7)?,
                    mime: r.get(8)?,
                    problems: r.get(9)?,
                    rules: Vec::new(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut rules = conn.prepare(
            "SELECT DISTINCT json_extract(m.value, '$.rule')
             FROM results r, json_each(r.data, '$.matches') m
             WHERE r.payload_id = ?1 AND r.outcome = 'ok' AND r.replay_id IS NULL
             ORDER BY 1",
        )?;
        for hit in &mut hits {
            hit.rules = rules
                .query_map([&hit.payload_id], |r| r.get::<_, Option<String>>(0))?
                .filter_map(Result::transpose)
                .collect::<Result<_, _>>()?;
        }
        Ok(SearchPage {
            query: q.to_owned(),
            page,
            total: usize::try_from(total).unwrap_or(0),
            hits,
        })
    }

    /// Everything known of the file with this sha256, or `None`.
    pub fn file(&self, sha256: &str) -> Result<Option<FileView>, UiError> {
        let conn = self.connect()?;
        let sha256 = sha256.to_ascii_lowercase();
        let mut stmt = conn.prepare(
            "SELECT payload_id, root_id, depth, filename, path, sensor, source_kind, flow, fields,
                    size, worker, worker_version, ruleset, outcome, message, data, started_at,
                    duration_ms, node, replay_id, new_matches
             FROM results WHERE sha256 = ?1
             ORDER BY payload_id, replay_id IS NOT NULL, started_at, worker",
        )?;
        let mut rows = stmt.query([&sha256])?;
        let mut sightings: Vec<Sighting> = Vec::new();
        let mut size = 0;
        while let Some(r) = rows.next()? {
            size = r.get(9)?;
            let payload_id: String = r.get(0)?;
            if sightings.last().is_none_or(|s| s.payload_id != payload_id) {
                sightings.push(sighting(payload_id, r)?);
            }
            let finding = finding(r)?;
            if let Some(s) = sightings.last_mut() {
                s.findings.push(finding);
            }
        }
        if sightings.is_empty() {
            return Ok(None);
        }
        let mut lineage = Vec::new();
        let mut roots: Vec<&str> = sightings.iter().map(|s| s.root_id.as_str()).collect();
        roots.dedup();
        let mut members = conn.prepare(
            "SELECT payload_id, MAX(sha256), MAX(filename), MAX(depth), MAX(size) FROM results
             WHERE root_id = ?1 GROUP BY payload_id ORDER BY payload_id",
        )?;
        for root in roots {
            let tree = members
                .query_map([root], |r| {
                    Ok(Member {
                        payload_id: r.get(0)?,
                        sha256: r.get(1)?,
                        filename: r.get(2)?,
                        depth: r.get(3)?,
                        size: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            // A file seen on its own is no tree.
            if tree.len() > 1 {
                lineage.extend(tree);
            }
        }
        Ok(Some(FileView {
            sha256,
            size,
            sightings,
            lineage,
        }))
    }

    pub fn overview(&self) -> Result<Overview, UiError> {
        let conn = self.connect()?;
        let (files, results) = conn.query_row(
            "SELECT COUNT(DISTINCT payload_id), COUNT(*) FROM results",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let counts = |sql: &str| -> Result<Vec<Count>, UiError> {
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt.query_map([], |r| {
                Ok(Count {
                    key: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                    count: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        let mut per_hour = counts(
            "SELECT substr(started_at, 1, 13) AS h, COUNT(DISTINCT payload_id) FROM results
             WHERE replay_id IS NULL GROUP BY h ORDER BY h DESC LIMIT 48",
        )?;
        per_hour.reverse();
        let top_rules = counts(
            "SELECT json_extract(m.value, '$.rule') AS rule, COUNT(DISTINCT r.sha256) AS n
             FROM results r, json_each(r.data, '$.matches') m
             WHERE r.outcome = 'ok' AND r.replay_id IS NULL
             GROUP BY rule ORDER BY n DESC, rule LIMIT 10",
        )?;
        let mut stmt = conn.prepare(
            "SELECT worker, outcome, COUNT(*) FROM results WHERE replay_id IS NULL
             GROUP BY worker, outcome ORDER BY worker, outcome",
        )?;
        let outcomes = stmt
            .query_map([], |r| {
                Ok(WorkerOutcome {
                    worker: r.get(0)?,
                    outcome: r.get(1)?,
                    count: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut stmt = conn.prepare(
            "SELECT started_at, worker, outcome, sha256, filename, message FROM results
             WHERE outcome != 'ok' ORDER BY started_at DESC LIMIT 20",
        )?;
        let problems = stmt
            .query_map([], |r| {
                Ok(Problem {
                    time: r.get(0)?,
                    worker: r.get(1)?,
                    outcome: r.get(2)?,
                    sha256: r.get(3)?,
                    filename: r.get(4)?,
                    message: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Overview {
            files,
            results,
            per_hour,
            top_rules,
            outcomes,
            problems,
        })
    }
}

fn sighting(payload_id: String, r: &Row<'_>) -> rusqlite::Result<Sighting> {
    Ok(Sighting {
        payload_id,
        root_id: r.get(1)?,
        depth: r.get(2)?,
        filename: r.get(3)?,
        path: r.get(4)?,
        sensor: r.get(5)?,
        source_kind: r.get(6)?,
        flow: json(r.get(7)?),
        fields: json(r.get(8)?),
        findings: Vec::new(),
    })
}

fn finding(r: &Row<'_>) -> rusqlite::Result<Finding> {
    Ok(Finding {
        worker: r.get(10)?,
        worker_version: r.get(11)?,
        ruleset: r.get(12)?,
        outcome: r.get(13)?,
        message: r.get(14)?,
        data: json(r.get(15)?).unwrap_or(Value::Null),
        started_at: r.get(16)?,
        duration_ms: r.get(17)?,
        node: r.get(18)?,
        replay_id: r.get(19)?,
        new_matches: json(r.get(20)?),
    })
}
