//! JSON lines: one result per line, to a file or to standard output (`-`).
//! Lines are appended, so a redelivered result appears again; use a store
//! that upserts (SQLite, Elasticsearch, MongoDB) where that matters.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use async_trait::async_trait;
use serde::Deserialize;
use trawl_config::{BuildError, ConfigError, ConnectorConfig};
use trawl_core::{Connector, ConnectorError, ResultEvent};

use crate::factory::ConnectorFactory;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlParams {
    /// A file to append to, or `-` for standard output.
    path: String,
}

pub(crate) struct JsonlFactory;

#[async_trait]
impl ConnectorFactory for JsonlFactory {
    fn check(&self, config: &ConnectorConfig) -> Result<(), ConfigError> {
        config.component.params::<JsonlParams>().map(|_| ())
    }

    async fn build(&self, config: &ConnectorConfig) -> Result<Box<dyn Connector>, BuildError> {
        let params: JsonlParams = config.component.params()?;
        let connector = if params.path == "-" {
            JsonlConnector::stdout(&config.component.name)
        } else {
            let path = config.component.resolve_path(&params.path);
            JsonlConnector::open(&config.component.name, &path)
                .map_err(|source| BuildError::component(&config.component, source))?
        };
        Ok(Box::new(connector))
    }
}

enum Output {
    /// `closed`: the reader went away (`trawl scan --jsonl - | head`).
    Stdout { closed: bool },
    /// `durable`: a regular file, synced after each batch (devices and pipes cannot be).
    File { out: BufWriter<File>, durable: bool },
}

pub struct JsonlConnector {
    name: String,
    output: Output,
}

impl JsonlConnector {
    pub fn stdout(name: &str) -> Self {
        JsonlConnector {
            name: name.to_owned(),
            output: Output::Stdout { closed: false },
        }
    }

    pub fn open(name: &str, path: &Path) -> Result<Self, ConnectorError> {
        let open_error = |reason: String| ConnectorError::Open {
            target: path.display().to_string(),
            reason,
        };
        if path.is_dir() {
            return Err(open_error("is a directory, expected a file".into()));
        }
        crate::make_folder_for(path)
            .map_err(|e| open_error(format!("cannot make its folder: {e}")))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| open_error(e.to_string()))?;
        let durable = file
            .metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false);
        Ok(JsonlConnector {
            name: name.to_owned(),
            output: Output::File {
                out: BufWriter::new(file),
                durable,
            },
        })
    }
}

fn write_lines(out: &mut impl Write, batch: &[ResultEvent]) -> std::io::Result<()> {
    for r in batch {
        serde_json::to_writer(&mut *out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

#[async_trait]
impl Connector for JsonlConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: &[ResultEvent]) -> Result<(), ConnectorError> {
        let result = match &mut self.output {
            Output::Stdout { closed: true } => Ok(()),
            Output::Stdout { closed } => match write_lines(&mut std::io::stdout().lock(), batch) {
                // As a command line tool does when its reader goes away: stop
                // writing there, once and said; the other stores still get
                // every result.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    tracing::warn!(connector = %self.name, "standard output is closed: results are no longer written to it");
                    *closed = true;
                    Ok(())
                }
                other => other,
            },
            Output::File { out, durable } => write_lines(out, batch).and_then(|_| {
                if *durable {
                    out.get_ref().sync_data()
                } else {
                    Ok(())
                }
            }),
        };
        result.map_err(|e| ConnectorError::Unavailable(format!("jsonl: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trawl_core::{BlobRef, Outcome, PayloadEvent, SourceInfo, SourceKind, WorkerInfo};

    fn result() -> ResultEvent {
        let p = PayloadEvent::new_root(
            "ab".repeat(32),
            1,
            BlobRef::Store(String::new()),
            SourceInfo {
                kind: SourceKind::Cli,
                sensor: "s".into(),
                path: None,
            },
        );
        ResultEvent::new(
            p.summary(),
            WorkerInfo::new("hash", "1"),
            Outcome::ok(),
            serde_json::json!({"k": 1}),
            chrono::Utc::now(),
            "n",
        )
    }

    #[tokio::test]
    async fn appends_one_line_per_result_to_files_and_devices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut c = JsonlConnector::open("j", &path).unwrap();
        c.write(&[result(), result()]).await.unwrap();
        c.write(&[result()]).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["data"]["k"], 1);

        // A character device cannot be synced; writing to it must still succeed.
        let mut null = JsonlConnector::open("j", Path::new("/dev/null")).unwrap();
        null.write(&[result()]).await.unwrap();
    }
}
