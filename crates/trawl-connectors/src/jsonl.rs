//! JSON lines: one result per line, to a file or to standard output (`-`).
//! Lines are appended, so a redelivered result appears again; use a store
//! that upserts (SQLite, Elasticsearch, MongoDB) where that matters.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use async_trait::async_trait;
use serde::Deserialize;
use trawl_config::{ConfigError, ConnectorConfig};
use trawl_core::{Connector, ConnectorError, ResultEvent};

use crate::registry::{BuildError, ConnectorFactory};

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
            JsonlConnector::open(&config.component.name, &path).map_err(|source| {
                BuildError::Store {
                    key: config.component.key.clone(),
                    source,
                }
            })?
        };
        Ok(Box::new(connector))
    }
}

enum Sink {
    Stdout,
    File(BufWriter<File>),
}

pub struct JsonlConnector {
    name: String,
    sink: Sink,
}

impl JsonlConnector {
    pub fn stdout(name: &str) -> Self {
        JsonlConnector {
            name: name.to_owned(),
            sink: Sink::Stdout,
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
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| open_error(e.to_string()))?;
        Ok(JsonlConnector {
            name: name.to_owned(),
            sink: Sink::File(BufWriter::new(file)),
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
        let result = match &mut self.sink {
            Sink::Stdout => write_lines(&mut std::io::stdout().lock(), batch),
            Sink::File(f) => write_lines(f, batch).and_then(|_| f.get_ref().sync_data()),
        };
        result.map_err(|e| ConnectorError::Unavailable(format!("jsonl: {e}")))
    }
}
