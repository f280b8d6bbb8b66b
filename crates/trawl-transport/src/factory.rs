//! How a transport is made from `[transport]`: the transport kind's part of
//! the plugin contract (see `trawl_config::registry`).

use std::sync::Arc;

use async_trait::async_trait;
use trawl_config::{BuildError, Component, ConfigError};

use crate::{Replays, Transport, TransportStatus};

/// Builds one kind of transport from its config.
#[async_trait]
pub trait TransportFactory: Send + Sync {
    /// Validate the transport's own keys without any IO.
    fn check(&self, config: &Component) -> Result<(), ConfigError>;

    /// Whether events stay inside this process, so every role (sources,
    /// worker groups, connectors) must run in the node that has them.
    fn in_process(&self) -> bool {
        false
    }

    /// Connect (retrying while the servers are away) and create what nodes
    /// need on them. `node` names this node in what it publishes.
    async fn build(&self, config: &Component, node: &str)
        -> Result<Arc<dyn Transport>, BuildError>;

    /// Reach what nodes created, creating or changing nothing, and report
    /// it (`trawl status`, `config check --connect`). `None`: there is no
    /// server to reach.
    async fn status(
        &self,
        config: &Component,
        node: &str,
    ) -> Result<Option<TransportStatus>, BuildError>;

    /// Reach what nodes created, to start and follow replays. `None`: the
    /// transport keeps no payloads once they are handled.
    async fn replays(
        &self,
        config: &Component,
        node: &str,
    ) -> Result<Option<Box<dyn Replays>>, BuildError> {
        let _ = (config, node);
        Ok(None)
    }
}

pub type TransportRegistry = trawl_config::Registry<dyn TransportFactory>;
