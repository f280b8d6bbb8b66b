use std::collections::BTreeMap;

use async_trait::async_trait;
use trawl_config::{ConfigError, ConnectorConfig};
use trawl_core::{Connector, ConnectorError};

/// Builds one kind of connector from its config.
#[async_trait]
pub trait ConnectorFactory: Send + Sync {
    /// Validate the connector's own keys without any IO.
    fn check(&self, config: &ConnectorConfig) -> Result<(), ConfigError>;

    /// Open the datastore. A local store that cannot be written fails here;
    /// a network store that is down only delays writes (they retry).
    async fn build(&self, config: &ConnectorConfig) -> Result<Box<dyn Connector>, BuildError>;

    /// Reach the datastore and say what answered (`trawl config check --connect`).
    async fn health(&self, config: &ConnectorConfig) -> Result<String, BuildError> {
        self.check(config)?;
        Ok("local file; nothing to connect to".into())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{key}: {source}")]
    Store { key: String, source: ConnectorError },
}

#[derive(Default)]
pub struct ConnectorRegistry {
    factories: BTreeMap<&'static str, Box<dyn ConnectorFactory>>,
}

impl ConnectorRegistry {
    pub fn add(&mut self, kind: &'static str, factory: impl ConnectorFactory + 'static) {
        self.factories.insert(kind, Box::new(factory));
    }

    fn factory(&self, config: &ConnectorConfig) -> Result<&dyn ConnectorFactory, ConfigError> {
        trawl_config::lookup(&self.factories, &config.component, "connector")
    }

    pub fn check(&self, config: &ConnectorConfig) -> Result<(), ConfigError> {
        self.factory(config)?.check(config)
    }

    pub async fn build(&self, config: &ConnectorConfig) -> Result<Box<dyn Connector>, BuildError> {
        self.factory(config)?.build(config).await
    }

    pub async fn health(&self, config: &ConnectorConfig) -> Result<String, BuildError> {
        self.factory(config)?.health(config).await
    }
}

pub fn builtin_connectors() -> ConnectorRegistry {
    let mut registry = ConnectorRegistry::default();
    registry.add("sqlite", crate::sqlite::SqliteFactory);
    registry.add("jsonl", crate::jsonl::JsonlFactory);
    registry.add("elasticsearch", crate::elastic::ElasticsearchFactory);
    registry.add("mongodb", crate::mongo::MongoFactory);
    registry
}
