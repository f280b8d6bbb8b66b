use std::sync::Arc;

use async_trait::async_trait;
use trawl_config::{BuildError, Component, ConfigError};

use super::replay::RabbitReplays;
use super::{RabbitParams, RabbitTransport};
use crate::{Replays, Transport, TransportFactory, TransportStatus};

pub(crate) struct RabbitFactory;

impl RabbitFactory {
    fn params(config: &Component) -> Result<RabbitParams, ConfigError> {
        let params: RabbitParams = config.params()?;
        params.validate().map_err(|e| config.error(e))?;
        Ok(params)
    }
}

#[async_trait]
impl TransportFactory for RabbitFactory {
    fn check(&self, config: &Component) -> Result<(), ConfigError> {
        Self::params(config).map(drop)
    }

    async fn build(
        &self,
        config: &Component,
        node: &str,
    ) -> Result<Arc<dyn Transport>, BuildError> {
        let params = Self::params(config)?;
        let transport = RabbitTransport::connect(&params, node)
            .await
            .map_err(|e| BuildError::component(config, e))?;
        Ok(Arc::new(transport))
    }

    async fn status(
        &self,
        config: &Component,
        node: &str,
    ) -> Result<Option<TransportStatus>, BuildError> {
        let params = Self::params(config)?;
        let status = async { RabbitTransport::attach(&params, node).await?.status().await };
        status
            .await
            .map(Some)
            .map_err(|e| BuildError::component(config, e))
    }

    async fn replays(
        &self,
        config: &Component,
        node: &str,
    ) -> Result<Option<Box<dyn Replays>>, BuildError> {
        let params = Self::params(config)?;
        let t = RabbitTransport::attach(&params, node)
            .await
            .map_err(|e| BuildError::component(config, e))?;
        Ok(Some(Box::new(RabbitReplays::new(t))))
    }
}
