//! MongoDB: one collection per worker by default, documents keyed by the
//! result id (`_id`), so a redelivered or replayed result replaces its
//! document instead of adding one.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use mongodb::bson::{self, doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use serde::Deserialize;
use trawl_config::{BuildError, ConfigError, ConnectorConfig, NonZeroDuration};
use trawl_core::{Connector, ConnectorError, ResultEvent};

use crate::document::{bounded_document, check_pattern, error_document, target_name};
use crate::factory::ConnectorFactory;

/// MongoDB's duplicate-key error: the result is already stored.
const DUPLICATE_KEY: i32 = 11000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MongoParams {
    /// Connection string, with credentials and TLS options as MongoDB documents them.
    #[serde(default = "default_uri")]
    uri: String,
    #[serde(default = "default_database")]
    database: String,
    /// Collection name pattern: `{worker}`, `{yyyy.MM.dd}`, `{yyyy.MM}`, `{yyyy}`.
    #[serde(default = "default_collection")]
    collection: String,
    /// How long a write waits for a reachable server before it is retried.
    #[serde(default = "default_timeout")]
    timeout: NonZeroDuration,
    /// A document larger than this is stored as a trimmed error document
    /// (MongoDB's own limit is 16 MiB).
    #[serde(default = "default_max_document")]
    max_document_bytes: usize,
}

fn default_uri() -> String {
    "mongodb://127.0.0.1:27017".into()
}
fn default_database() -> String {
    "trawl".into()
}
fn default_collection() -> String {
    "{worker}".into()
}
fn default_timeout() -> NonZeroDuration {
    NonZeroDuration::from_secs(10)
}
fn default_max_document() -> usize {
    15 * 1024 * 1024
}

fn checked(config: &ConnectorConfig) -> Result<(MongoParams, Duration), ConfigError> {
    let c = &config.component;
    let params: MongoParams = c.params()?;
    if !params.uri.starts_with("mongodb://") && !params.uri.starts_with("mongodb+srv://") {
        return Err(c.error("uri: expected mongodb://… or mongodb+srv://…"));
    }
    check_pattern(&params.collection).map_err(|e| c.error(format_args!("collection: {e}")))?;
    let timeout = params.timeout.get();
    Ok((params, timeout))
}

pub(crate) struct MongoFactory;

#[async_trait]
impl ConnectorFactory for MongoFactory {
    fn check(&self, config: &ConnectorConfig) -> Result<(), ConfigError> {
        checked(config).map(|_| ())
    }

    async fn build(&self, config: &ConnectorConfig) -> Result<Box<dyn Connector>, BuildError> {
        let connector = MongoConnector::connect(config).await?;
        match connector.ping().await {
            Ok(()) => tracing::info!(connector = %connector.name, "mongodb ready"),
            Err(e) => {
                tracing::warn!(connector = %connector.name, error = %e, "mongodb not ready at start; writes will retry")
            }
        }
        Ok(Box::new(connector))
    }

    async fn health(&self, config: &ConnectorConfig) -> Result<String, BuildError> {
        let connector = MongoConnector::connect(config).await?;
        let store = |source| BuildError::component(&config.component, source);
        connector.ping().await.map_err(store)?;
        Ok(format!("mongodb database {}", connector.database))
    }
}

pub struct MongoConnector {
    name: String,
    client: Client,
    database: String,
    collection: String,
    max_document_bytes: usize,
    /// Collections whose indexes exist.
    indexed: HashSet<String>,
}

fn unavailable(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Unavailable(e.to_string())
}

impl MongoConnector {
    async fn connect(config: &ConnectorConfig) -> Result<Self, BuildError> {
        let comp = &config.component;
        let (p, timeout) = checked(config)?;
        // Parsing the string does not connect (unless it is an SRV record).
        let mut options = ClientOptions::parse(&p.uri)
            .await
            .map_err(|e| comp.error(format_args!("uri: {e}")))?;
        options.server_selection_timeout.get_or_insert(timeout);
        options.connect_timeout.get_or_insert(timeout);
        options.app_name.get_or_insert_with(|| "trawl".into());
        let client =
            Client::with_options(options).map_err(|e| comp.error(format_args!("uri: {e}")))?;
        Ok(MongoConnector {
            name: comp.name.clone(),
            client,
            database: p.database,
            collection: p.collection,
            max_document_bytes: p.max_document_bytes,
            indexed: HashSet::new(),
        })
    }

    async fn ping(&self) -> Result<(), ConnectorError> {
        self.client
            .database(&self.database)
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    fn collection(&self, name: &str) -> Collection<Document> {
        self.client.database(&self.database).collection(name)
    }

    /// The indexes analysts' searches need, made once per collection.
    async fn ensure_indexes(&mut self, name: &str) -> Result<(), ConnectorError> {
        if self.indexed.contains(name) {
            return Ok(());
        }
        let models = [
            "file.hash.sha256",
            "file.name",
            "rule.name",
            "@timestamp",
            "source.ip",
        ]
        .into_iter()
        .map(|field| {
            IndexModel::builder()
                .keys(doc! {field: 1})
                .options(
                    IndexOptions::builder()
                        .name(format!("trawl_{field}"))
                        .build(),
                )
                .build()
        });
        self.collection(name)
            .create_indexes(models)
            .await
            .map_err(unavailable)?;
        self.indexed.insert(name.to_owned());
        Ok(())
    }

    fn bson(&self, r: &ResultEvent) -> Document {
        let (json, _) = bounded_document(&self.name, r, self.max_document_bytes);
        with_id(r, json)
    }
}

/// What BSON cannot hold, made so it can: integers are signed 64-bit, so a
/// larger one (an ELF entry point of 0xffff…) is kept exactly as its decimal
/// text; keys are C strings, so a NUL in a sensor's key becomes U+FFFD.
fn bson_safe(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) if n.as_u64().is_some_and(|u| u > i64::MAX as u64) => {
            *value = serde_json::Value::String(n.to_string());
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(bson_safe),
        serde_json::Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (k.replace('\0', "\u{fffd}"), v))
                    .collect();
            }
            map.values_mut().for_each(bson_safe);
        }
        _ => {}
    }
}

/// A JSON document as BSON, with `_id` and a real date for `@timestamp`.
fn with_id(r: &ResultEvent, mut json: serde_json::Value) -> Document {
    bson_safe(&mut json);
    let mut d = bson::to_document(&json).unwrap_or_else(|e| {
        // Not expected once made safe; the record says so rather than vanish.
        let mut error = error_document(r, &format!("cannot convert the document to BSON: {e}"));
        bson_safe(&mut error);
        bson::to_document(&error).unwrap_or_default()
    });
    d.insert("_id", r.id.clone());
    d.insert(
        "@timestamp",
        bson::DateTime::from_millis(r.started_at.timestamp_millis()),
    );
    d
}

#[async_trait]
impl Connector for MongoConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn reachable(&mut self) -> Result<(), ConnectorError> {
        self.ping().await
    }

    async fn write(&mut self, batch: &[ResultEvent]) -> Result<(), ConnectorError> {
        let mut by_collection: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, r) in batch.iter().enumerate() {
            let name = target_name(&self.collection, r);
            match by_collection.iter_mut().find(|(n, _)| *n == name) {
                Some((_, list)) => list.push(i),
                None => by_collection.push((name, vec![i])),
            }
        }
        for (name, members) in by_collection {
            self.ensure_indexes(&name).await?;
            let coll = self.collection(&name);
            let docs: Vec<Document> = members.iter().map(|&i| self.bson(&batch[i])).collect();
            // New results are the common case: one round trip inserts them;
            // ones stored before are replaced below.
            let failed = match coll.insert_many(&docs).ordered(false).await {
                Ok(_) => continue,
                Err(e) => match *e.kind {
                    ErrorKind::InsertMany(ref failure) if failure.write_concern_error.is_none() => {
                        failure.write_errors.clone().unwrap_or_default()
                    }
                    _ => return Err(unavailable(e)),
                },
            };
            // Stored before (a redelivery or replay): replaced in two round
            // trips. Not atomic, but the results are only acknowledged after
            // both, so a failure in between is redelivered and written again.
            let mut again = Vec::new();
            for we in failed {
                let r = &batch[members[we.index]];
                if we.code == DUPLICATE_KEY {
                    again.push(docs[we.index].clone());
                } else {
                    tracing::warn!(connector = %self.name, result = %r.id, code = we.code, message = %we.message, "document refused; storing an error document instead");
                    again.push(with_id(
                        r,
                        error_document(r, &format!("refused by the datastore: {}", we.message)),
                    ));
                }
            }
            let ids: Vec<bson::Bson> = again.iter().filter_map(|d| d.get("_id").cloned()).collect();
            coll.delete_many(doc! {"_id": {"$in": ids}})
                .await
                .map_err(unavailable)?;
            coll.insert_many(&again)
                .ordered(false)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_past_i64_and_nul_keys_convert_to_bson() {
        let mut v = serde_json::json!({
            "entry_point": u64::MAX,
            "small": 7,
            "fields": {"a\0b": [u64::MAX, -1]},
        });
        bson_safe(&mut v);
        let d = bson::to_document(&v).unwrap();
        assert_eq!(d.get_str("entry_point").unwrap(), "18446744073709551615");
        let int = |b: &bson::Bson| match b {
            bson::Bson::Int32(n) => Some(i64::from(*n)),
            bson::Bson::Int64(n) => Some(*n),
            _ => None,
        };
        assert_eq!(int(d.get("small").unwrap()), Some(7));
        let fields = d.get_document("fields").unwrap();
        let list = fields.get_array("a\u{fffd}b").unwrap();
        assert_eq!(list[0].as_str(), Some("18446744073709551615"));
        assert_eq!(int(&list[1]), Some(-1));
    }
}
