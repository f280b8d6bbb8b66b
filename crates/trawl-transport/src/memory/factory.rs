use std::sync::Arc;

use async_trait::async_trait;
use trawl_config::{BuildError, Component, ConfigError};

use super::{MemoryParams, MemoryTransport};
use crate::{Transport, TransportFactory, TransportStatus};

pub(crate) struct MemoryFactory;

#[async_trait]
impl TransportFactory for MemoryFactory {
    fn check(&self, config: &Component) -> Result<(), ConfigError> {
        config.params::<MemoryParams>().map(drop)
    }

    fn in_process(&self) -> bool {
        true
    }

    async fn build(
        &self,
        config: &Component,
        _node: &str,
    ) -> Result<Arc<dyn Transport>, BuildError> {
        Ok(Arc::new(MemoryTransport::new(config.params()?)))
    }

    async fn status(
        &self,
        config: &Component,
        _node: &str,
    ) -> Result<Option<TransportStatus>, BuildError> {
        self.check(config)?;
        Ok(None)
    }
}
