//! From a validated config to a running node's parts, through the plugin registries.

use std::sync::Arc;

use trawl_config::{Config, ConfigError};
use trawl_transport::{
    JetStreamParams, JetStreamTransport, MemoryParams, MemoryTransport, Transport,
};

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
    #[error("transport: {0}")]
    Transport(#[from] trawl_transport::TransportError),
}

const TRANSPORTS: &str = "memory, jetstream";

/// A transport's params, checked without connecting.
enum TransportParams {
    Memory(MemoryParams),
    JetStream(Box<JetStreamParams>),
}

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

fn transport_params(config: &Config) -> Result<TransportParams, ConfigError> {
    let t = &config.transport;
    match t.kind.as_str() {
        "memory" => Ok(TransportParams::Memory(t.params()?)),
        "jetstream" => {
            let params: JetStreamParams = t.params()?;
            params.validate().map_err(|e| t.error(e))?;
            Ok(TransportParams::JetStream(Box::new(params)))
        }
        other => Err(t.error(format_args!(
            "unknown transport type {other:?} (known: {TRANSPORTS})"
        ))),
    }
}

/// Connect the transport the config names (retrying while its server is away).
pub async fn build_transport(config: &Config) -> Result<Arc<dyn Transport>, WiringError> {
    Ok(match transport_params(config)? {
        TransportParams::Memory(p) => Arc::new(MemoryTransport::new(p)),
        TransportParams::JetStream(p) => {
            Arc::new(JetStreamTransport::connect(&p, &config.node.name).await?)
        }
    })
}

/// Attach to the JetStream streams a config names, for `trawl status` and
/// `config check --connect`: nothing on the server is created or changed.
pub async fn jetstream(config: &Config) -> Result<Option<JetStreamTransport>, WiringError> {
    match transport_params(config)? {
        TransportParams::JetStream(p) => Ok(Some(
            JetStreamTransport::attach(&p, &config.node.name).await?,
        )),
        TransportParams::Memory(_) => Ok(None),
    }
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
            dispatch: trawl_scanners::Dispatch::new(w.filter.clone()),
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
