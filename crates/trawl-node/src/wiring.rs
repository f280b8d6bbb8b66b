//! From a validated config to a running node's parts, through the plugin registries.

use std::sync::Arc;

use trawl_config::{Config, ConfigError};
use trawl_transport::{MemoryParams, MemoryTransport, Transport};

use crate::{ConnectorSpec, NodeSpec, WorkerSpec};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WiringError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Scanner(#[from] trawl_scanners::BuildError),
    #[error(transparent)]
    Connector(#[from] trawl_connectors::BuildError),
}

const TRANSPORTS: &str = "memory";

/// Validate every component's keys without connecting to anything.
pub fn check_config(config: &Config) -> Result<(), ConfigError> {
    transport_params(config)?;
    let sources = trawl_sources::builtin_sources();
    for c in config.sources.values() {
        sources.check(c)?;
    }
    let scanners = trawl_scanners::builtin_scanners();
    for w in config.workers.values() {
        scanners.check(w)?;
    }
    let connectors = trawl_connectors::builtin_connectors();
    for c in config.connectors.values() {
        connectors.check(c)?;
    }
    if config.transport.kind == "memory" {
        // In-process events reach only this process: every role must be here.
        let t = &config.transport;
        if !config.sources.is_empty() && config.workers.is_empty() {
            return Err(t.error("type \"memory\" keeps events in this process, so this node needs at least one [workers.X]"));
        }
        if !config.workers.is_empty() && config.connectors.is_empty() {
            return Err(t.error("type \"memory\" keeps results in this process, so this node needs at least one [connectors.X]"));
        }
    }
    Ok(())
}

fn transport_params(config: &Config) -> Result<MemoryParams, ConfigError> {
    match config.transport.kind.as_str() {
        "memory" => config.transport.params(),
        other => Err(config.transport.error(format_args!(
            "unknown transport type {other:?} (known: {TRANSPORTS})"
        ))),
    }
}

pub fn build_transport(config: &Config) -> Result<Arc<dyn Transport>, WiringError> {
    Ok(Arc::new(MemoryTransport::new(transport_params(config)?)))
}

/// Build every part the config names: compile rules, open stores, check source folders.
pub async fn spec_from_config(
    config: &Config,
    transport: Arc<dyn Transport>,
) -> Result<NodeSpec, WiringError> {
    check_config(config)?;
    let scanners = trawl_scanners::builtin_scanners();
    let mut workers = Vec::new();
    for w in config.workers.values() {
        workers.push(WorkerSpec {
            scanner: scanners.build(w)?,
            concurrency: w.concurrency.get(),
            timeout: w.timeout,
            max_deliver: w.max_deliver,
        });
    }
    let registry = trawl_connectors::builtin_connectors();
    let mut connectors = Vec::new();
    for c in config.connectors.values() {
        connectors.push(ConnectorSpec {
            connector: registry.build(c).await?,
            batch_size: c.batch_size.get(),
            flush_interval: c.flush_interval,
        });
    }
    let registry = trawl_sources::builtin_sources();
    let mut sources = Vec::new();
    for c in config.sources.values() {
        sources.push(registry.build(c, &config.node.data_dir)?);
    }
    Ok(NodeSpec {
        name: config.node.name.clone(),
        transport,
        sources,
        workers,
        connectors,
        shutdown_grace: config.node.shutdown_grace,
    })
}
