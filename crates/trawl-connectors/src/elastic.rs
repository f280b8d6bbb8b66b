//! Elasticsearch (or OpenSearch): one index per worker by default, bulk
//! writes with `_id` = the result id, so a redelivered or replayed result
//! overwrites its document instead of adding one.

use std::time::Duration;

use async_trait::async_trait;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{MultiNodeConnectionPool, TransportBuilder};
use elasticsearch::indices::IndicesPutIndexTemplateParts;
use elasticsearch::{BulkParts, Elasticsearch};
use serde::Deserialize;
use serde_json::{json, Value};
use trawl_config::{BuildError, ConfigError, ConnectorConfig, NonZeroDuration};
use trawl_core::{Connector, ConnectorError, ResultEvent};

use crate::document::{bounded_document, check_pattern, error_document, mappings, target_name};
use crate::factory::ConnectorFactory;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EsParams {
    #[serde(default = "default_urls")]
    urls: Vec<String>,
    /// Index name pattern: `{worker}`, `{yyyy.MM.dd}`, `{yyyy.MM}`, `{yyyy}`.
    #[serde(default = "default_index")]
    index: String,
    /// Name of the index template created at start (covers `index`'s prefix).
    #[serde(default = "default_template")]
    template: String,
    username: Option<String>,
    password: Option<String>,
    /// An API key, `id:secret` or already base64-encoded.
    api_key: Option<String>,
    /// PEM CA certificate(s) for an https cluster with its own CA.
    ca_file: Option<String>,
    #[serde(default = "default_timeout")]
    timeout: NonZeroDuration,
    /// A document larger than this is stored as a trimmed error document.
    #[serde(default = "default_max_document")]
    max_document_bytes: usize,
}

fn default_urls() -> Vec<String> {
    vec!["http://127.0.0.1:9200".into()]
}
fn default_index() -> String {
    "trawl-{worker}".into()
}
fn default_template() -> String {
    "trawl".into()
}
fn default_timeout() -> NonZeroDuration {
    NonZeroDuration::from_secs(30)
}
fn default_max_document() -> usize {
    10 * 1024 * 1024
}

struct Checked {
    params: EsParams,
    urls: Vec<url::Url>,
    timeout: Duration,
    /// `index` up to its first placeholder, for the template's pattern.
    prefix: String,
}

fn checked(config: &ConnectorConfig) -> Result<Checked, ConfigError> {
    let c = &config.component;
    let params: EsParams = c.params()?;
    if params.urls.is_empty() {
        return Err(c.error("urls: give at least one node URL"));
    }
    let urls = params
        .urls
        .iter()
        .map(|u| url::Url::parse(u).map_err(|e| c.error(format_args!("urls: {u:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    check_pattern(&params.index).map_err(|e| c.error(format_args!("index: {e}")))?;
    let prefix = params.index.split('{').next().unwrap_or("").to_lowercase();
    if prefix.is_empty() {
        return Err(c.error("index: must start with a fixed prefix, e.g. \"trawl-{worker}\""));
    }
    if params.username.is_some() != params.password.is_some() {
        return Err(c.error("username and password go together"));
    }
    if params.api_key.is_some() && params.username.is_some() {
        return Err(c.error("api_key: use either api_key or username/password"));
    }
    let timeout = params.timeout.get();
    Ok(Checked {
        params,
        urls,
        timeout,
        prefix,
    })
}

pub(crate) struct ElasticsearchFactory;

#[async_trait]
impl ConnectorFactory for ElasticsearchFactory {
    fn check(&self, config: &ConnectorConfig) -> Result<(), ConfigError> {
        checked(config).map(|_| ())
    }

    async fn build(&self, config: &ConnectorConfig) -> Result<Box<dyn Connector>, BuildError> {
        let mut connector = ElasticsearchConnector::new(config)?;
        // An unreachable cluster at start is an outage like any other: the
        // node starts, results wait in the transport, writes retry.
        match connector.prepare().await {
            Ok(version) => {
                connector.template_ready = true;
                tracing::info!(connector = %connector.name, version, "elasticsearch ready")
            }
            Err(e) => {
                tracing::warn!(connector = %connector.name, error = %e, "elasticsearch not ready at start; writes will retry")
            }
        }
        Ok(Box::new(connector))
    }

    async fn health(&self, config: &ConnectorConfig) -> Result<String, BuildError> {
        let connector = ElasticsearchConnector::new(config)?;
        connector
            .version()
            .await
            .map_err(|source| BuildError::component(&config.component, source))
    }
}

pub struct ElasticsearchConnector {
    name: String,
    client: Elasticsearch,
    index: String,
    template: String,
    prefix: String,
    max_document_bytes: usize,
    template_ready: bool,
    /// Node URLs configured.
    nodes: usize,
}

fn unavailable(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Unavailable(e.to_string())
}

impl ElasticsearchConnector {
    fn new(config: &ConnectorConfig) -> Result<Self, BuildError> {
        let c = checked(config)?;
        let comp = &config.component;
        let p = c.params;
        let nodes = c.urls.len();
        let pool = MultiNodeConnectionPool::round_robin(c.urls, None);
        let mut builder = TransportBuilder::new(pool)
            .timeout(c.timeout)
            .disable_proxy();
        if let (Some(user), Some(pass)) = (&p.username, &p.password) {
            builder = builder.auth(Credentials::Basic(user.clone(), pass.clone()));
        }
        if let Some(key) = &p.api_key {
            builder = builder.auth(match key.split_once(':') {
                Some((id, secret)) => Credentials::ApiKey(id.to_owned(), secret.to_owned()),
                None => Credentials::EncodedApiKey(key.clone()),
            });
        }
        if let Some(ca) = &p.ca_file {
            let path = comp.resolve_path(ca);
            let pem = std::fs::read(&path)
                .map_err(|e| comp.error(format_args!("ca_file: {}: {e}", path.display())))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| comp.error(format_args!("ca_file: {}: {e}", path.display())))?;
            builder = builder.cert_validation(CertificateValidation::Full(cert));
        }
        let transport = builder
            .build()
            .map_err(|e| comp.error(format_args!("cannot set up the client: {e}")))?;
        Ok(ElasticsearchConnector {
            name: comp.name.clone(),
            client: Elasticsearch::new(transport),
            index: p.index,
            template: p.template,
            prefix: c.prefix,
            max_document_bytes: p.max_document_bytes,
            template_ready: false,
            nodes,
        })
    }

    /// Send a request, moving on to the next node when one cannot be
    /// reached: the pool takes nodes in turn, so without this every other
    /// request would go to a node that is down.
    async fn failover<F, Fut>(
        &self,
        send: F,
    ) -> Result<elasticsearch::http::response::Response, ConnectorError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<
            Output = Result<elasticsearch::http::response::Response, elasticsearch::Error>,
        >,
    {
        let mut last = None;
        for _ in 0..self.nodes {
            match send().await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    tracing::debug!(connector = %self.name, error = %e, "node unreachable; trying the next");
                    last = Some(e);
                }
            }
        }
        Err(unavailable(
            last.map_or_else(|| "no node".into(), |e| e.to_string()),
        ))
    }

    /// The cluster's name and version: the health check.
    async fn version(&self) -> Result<String, ConnectorError> {
        let resp = self.failover(|| self.client.info().send()).await?;
        let status = resp.status_code();
        if !status.is_success() {
            return Err(ConnectorError::Unavailable(format!(
                "GET / answered {status}"
            )));
        }
        let info: Value = resp.json().await.map_err(unavailable)?;
        Ok(format!(
            "{} {} (cluster {})",
            info["version"]["distribution"]
                .as_str()
                .unwrap_or("elasticsearch"),
            info["version"]["number"].as_str().unwrap_or("?"),
            info["cluster_name"].as_str().unwrap_or("?")
        ))
    }

    /// Health check, then the index template, so new indices get typed fields.
    async fn prepare(&self) -> Result<String, ConnectorError> {
        let version = self.version().await?;
        let body = json!({
            "index_patterns": [format!("{}*", self.prefix)],
            "priority": 200,
            "template": {"mappings": mappings()},
            "_meta": {"managed_by": "trawl"},
        });
        let resp = self
            .failover(|| async {
                self.client
                    .indices()
                    .put_index_template(IndicesPutIndexTemplateParts::Name(&self.template))
                    .body(body.clone())
                    .send()
                    .await
            })
            .await?;
        let status = resp.status_code();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(ConnectorError::Unavailable(format!(
                "index template {}: {status}: {text}",
                self.template
            )));
        }
        Ok(version)
    }

    /// Bulk-index `docs` (`(index, id, source)`); returns the items to retry
    /// later and the items the cluster refused for good, with the reason.
    async fn bulk(
        &self,
        docs: &[(String, String, String)],
    ) -> Result<Vec<(usize, String, bool)>, ConnectorError> {
        let mut body = Vec::with_capacity(docs.len() * 2);
        for (index, id, source) in docs {
            body.push(json!({"index": {"_index": index, "_id": id}}).to_string());
            body.push(source.clone());
        }
        let resp = self
            .failover(|| {
                self.client
                    .bulk(BulkParts::None)
                    .body(body.clone())
                    .filter_path(&["errors", "items.*.status", "items.*.error"])
                    .send()
            })
            .await?;
        let status = resp.status_code();
        if status.as_u16() == 429
            || status.is_server_error()
            || status.as_u16() == 401
            || status.as_u16() == 403
        {
            let text = resp.text().await.unwrap_or_default();
            return Err(ConnectorError::Unavailable(format!(
                "bulk answered {status}: {text}"
            )));
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(ConnectorError::Rejected(format!(
                "bulk answered {status}: {text}"
            )));
        }
        let reply: Value = resp.json().await.map_err(unavailable)?;
        let mut failed = Vec::new();
        if reply["errors"].as_bool() == Some(true) {
            for (i, item) in reply["items"].as_array().into_iter().flatten().enumerate() {
                let op = item.as_object().and_then(|o| o.values().next());
                let code = op.and_then(|o| o["status"].as_u64()).unwrap_or(0);
                if (200..300).contains(&code) {
                    continue;
                }
                let reason = op
                    .map(|o| {
                        o["error"]["reason"]
                            .as_str()
                            .unwrap_or("refused")
                            .to_owned()
                    })
                    .unwrap_or_else(|| "refused".into());
                let retryable = code == 429 || code >= 500;
                failed.push((i, format!("{code}: {reason}"), retryable));
            }
        }
        Ok(failed)
    }
}

#[async_trait]
impl Connector for ElasticsearchConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn reachable(&mut self) -> Result<(), ConnectorError> {
        let answer = self.client.ping().send().await.map_err(unavailable)?;
        match answer.status_code() {
            s if s.is_success() => Ok(()),
            s => Err(ConnectorError::Unavailable(format!("answered {s}"))),
        }
    }

    async fn write(&mut self, batch: &[ResultEvent]) -> Result<(), ConnectorError> {
        if !self.template_ready {
            // The cluster may have been down at start: without the template
            // the first documents would create untyped indices.
            self.prepare().await?;
            self.template_ready = true;
        }
        let docs: Vec<(String, String, String)> = batch
            .iter()
            .map(|r| {
                let index = target_name(&self.index, r);
                let (_, source) = bounded_document(&self.name, r, self.max_document_bytes);
                (index, r.id.clone(), source)
            })
            .collect();
        let failed = self.bulk(&docs).await?;
        if failed.iter().any(|(_, _, retryable)| *retryable) {
            // Indexing is idempotent by _id: the whole batch is retried.
            let (_, reason, _) = failed.iter().find(|f| f.2).expect("checked above");
            return Err(ConnectorError::Unavailable(format!(
                "{} of {} documents not indexed for now ({reason})",
                failed.len(),
                docs.len()
            )));
        }
        if failed.is_empty() {
            return Ok(());
        }
        // Refused by mapping or size: store why instead, so nothing vanishes.
        let trimmed: Vec<(String, String, String)> = failed
            .iter()
            .map(|(i, reason, _)| {
                let r = &batch[*i];
                tracing::warn!(connector = %self.name, result = %r.id, worker = %r.worker.name, %reason, "document refused; storing an error document instead");
                let (index, id, _) = &docs[*i];
                (index.clone(), id.clone(), error_document(r, &format!("refused by the datastore: {reason}")).to_string())
            })
            .collect();
        let still = self.bulk(&trimmed).await?;
        if let Some((_, reason, retryable)) = still.first() {
            let msg = format!("error documents refused too: {reason}");
            return Err(if *retryable {
                ConnectorError::Unavailable(msg)
            } else {
                ConnectorError::Rejected(msg)
            });
        }
        Ok(())
    }
}
