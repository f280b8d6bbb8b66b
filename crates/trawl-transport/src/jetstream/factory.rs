use std::sync::Arc;

use async_trait::async_trait;
use trawl_config::{BuildError, Component, ConfigError};

use super::replay::JetStreamReplays;
use super::{JetStreamParams, JetStreamTransport};
use crate::{Replays, Transport, TransportFactory, TransportStatus};

pub(crate) struct JetStreamFactory;

impl JetStreamFactory {
    fn params(config: &Component) -> Result<JetStreamParams, ConfigError> {
        let params: JetStreamParams = config.params()?;
        params.validate().map_err(|e| config.error(e))?;
        Ok(params)
    }
}

#[async_trait]
impl TransportFactory for JetStreamFactory {
    fn check(&self, config: &Component) -> Result<(), ConfigError> {
        Self::params(config).map(drop)
    }

    async fn build(
        &self,
        config: &Component,
        node: &str,
    ) -> Result<Arc<dyn Transport>, BuildError> {
        let params = Self::params(config)?;
        let transport = JetStreamTransport::connect(&params, node)
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
        let streams = async {
            JetStreamTransport::attach(&params, node)
                .await?
                .status()
                .await
        };
        streams
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
        let t = JetStreamTransport::attach(&params, node)
            .await
            .map_err(|e| BuildError::component(config, e))?;
        Ok(Some(Box::new(JetStreamReplays { t })))
    }
}
