//! How a connector is made from its config: the connector kind's part of the
//! plugin contract (see `trawl_config::registry`).

use async_trait::async_trait;
use trawl_config::{BuildError, ConfigError, ConnectorConfig};
use trawl_core::Connector;

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

pub type ConnectorRegistry = trawl_config::Registry<dyn ConnectorFactory>;
