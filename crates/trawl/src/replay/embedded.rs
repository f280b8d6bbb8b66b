//! `trawl replay` in the embedded mode: the payloads `[node] archive` kept,
//! scanned again in this process by the config's worker groups and stored
//! by its connectors, beside the original results.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use toml::Value;
use trawl_config::{Component, Config};

use super::StartArgs;

pub(super) async fn replay(
    mut config: Config,
    args: &StartArgs,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    sha256: Option<BTreeSet<String>>,
) -> Result<ExitCode> {
    let file = config.file.display().to_string();
    let Some(archive) = config.node.archive.take() else {
        bail!(
            "{file}: the embedded mode keeps payloads for replay only with [node] archive = \"DIR\" \
             (or `trawl scan --archive DIR`): set it and run the node, then replay what it kept; \
             or use JetStream"
        );
    };
    // Checked before anything is printed or scanned.
    trawl_sources::Archive::open_existing(&trawl_config::ArchiveConfig {
        max_age: None,
        max_bytes: None,
        ..archive.clone()
    })?;
    if !args.workers.is_empty() {
        if let Some(unknown) = args
            .workers
            .iter()
            .find(|w| !config.workers.contains_key(*w))
        {
            let known: Vec<&str> = config.workers.keys().map(String::as_str).collect();
            bail!(
                "no worker group {unknown:?} in {file} (groups: {})",
                known.join(", ")
            );
        }
        config.workers.retain(|name, _| args.workers.contains(name));
    }
    if config.workers.is_empty() {
        bail!("{file} has no worker group to scan with");
    }
    let id = ulid::Ulid::generate().to_string();
    let text = |t: DateTime<Utc>| Value::String(t.to_rfc3339());
    let strings =
        |v: &mut dyn Iterator<Item = String>| Value::Array(v.map(Value::String).collect());
    let mut params = toml::Table::new();
    // Already resolved against the config's folder: absolute, so that the
    // source does not resolve it a second time.
    let dir = std::path::absolute(&archive.dir)?;
    params.insert(
        "path".into(),
        Value::String(dir.to_string_lossy().into_owned()),
    );
    params.insert("replay_id".into(), Value::String(id.clone()));
    params.insert("since".into(), text(since));
    params.insert("until".into(), text(until));
    params.insert("sources".into(), strings(&mut args.sources.iter().cloned()));
    if let Some(set) = sha256 {
        params.insert("sha256".into(), strings(&mut set.into_iter()));
    }
    let source = Component::new(&config.file, "sources", "replay", "archive", params);
    // The node's own sources stay where they are: only the archive is read.
    config.sources = BTreeMap::from([("replay".to_owned(), source)]);
    println!("{id}");
    let summary = crate::scan::run_to_end(&config, true).await?;
    let m = summary.metrics;
    println!(
        "replay {id} done: {} payload(s) × {} group(s) in {:.2} s ({:.1} payloads/s), {} error(s)",
        summary.files,
        config.workers.len(),
        summary.seconds,
        summary.files as f64 / summary.seconds.max(1e-9),
        m.results_error + m.results_timeout
    );
    for (name, c) in &config.connectors {
        if c.component.kind != "sqlite" {
            continue;
        }
        let db = trawl_connectors::sqlite_database(&c.component)?;
        let gained: i64 = rusqlite::Connection::open(&db)
            .and_then(|conn| {
                conn.query_row(
                    "SELECT count(DISTINCT payload_id) FROM replay_new_matches WHERE replay_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
            })
            .unwrap_or_default();
        println!(
            "{gained} payload(s) gained matches against their previous result ({name}: sqlite3 {} \"SELECT * FROM replay_new_matches WHERE replay_id = '{id}'\")",
            db.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
