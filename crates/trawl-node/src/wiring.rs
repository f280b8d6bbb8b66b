//! From a validated config to a running node's parts, through the plugin registries.

use std::sync::Arc;

use trawl_config::{BuildError, Config, ConfigError};
use trawl_transport::{Transport, TransportStatus};

use crate::{ConnectorSpec, NodeSpec, WorkerSpec};

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct WiringError(#[from] BuildError);

impl From<ConfigError> for WiringError {
    fn from(e: ConfigError) -> Self {
        WiringError(e.into())
    }
}

/// The node's name: `[node] name`, else the host's.
pub fn node_name(config: &Config) -> String {
    config.node.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "trawl".to_owned())
    })
}

/// Validate every component's keys without connecting to anything.
pub fn check_config(config: &Config) -> Result<(), ConfigError> {
    let t = &config.transport;
    let transport = trawl_transport::builtin_transports();
    let transport = transport.get(t)?;
    transport.check(t)?;
    let sources = trawl_sources::builtin_sources();
    for c in config.sources.values() {
        sources.get(c)?.check(c)?;
    }
    let scanners = trawl_scanners::builtin_scanners();
    for w in config.workers.values() {
        scanners.get(&w.component)?.check(w)?;
        // A group defined on another node is taken on trust.
        let Some(waited) = w
            .filter
            .yara
            .as_ref()
            .and_then(|y| config.workers.get(&y.worker))
        else {
            continue;
        };
        if !scanners.get(&waited.component)?.reports_matches() {
            return Err(w.component.error(format_args!(
                "filter.yara.worker: {:?} is a {} group, which reports no rule matches",
                waited.component.name, waited.component.kind
            )));
        }
    }
    let connectors = trawl_connectors::builtin_connectors();
    for c in config.connectors.values() {
        connectors.get(&c.component)?.check(c)?;
    }
    if transport.in_process() {
        let kind = &t.kind;
        if !config.sources.is_empty() && config.workers.is_empty() {
            return Err(t.error(format_args!("type {kind:?} keeps events in this process, so this node needs at least one [workers.X]")));
        }
        if !config.workers.is_empty() && config.connectors.is_empty() {
            return Err(t.error(format_args!("type {kind:?} keeps results in this process, so this node needs at least one [connectors.X]")));
        }
    }
    Ok(())
}

/// Connect the transport the config names (retrying while its server is
/// away), keeping what is published in `[node] archive` if there is one.
pub async fn build_transport(config: &Config) -> Result<Arc<dyn Transport>, WiringError> {
    let transports = trawl_transport::builtin_transports();
    let t = &config.transport;
    let transport = transports.get(t)?.build(t, &node_name(config)).await?;
    archived(config, transport)
}

/// `transport`, keeping every payload published through it in the
/// config's `[node] archive` (as it is, with no archive).
pub fn archived(
    config: &Config,
    transport: Arc<dyn Transport>,
) -> Result<Arc<dyn Transport>, WiringError> {
    let Some(archive) = &config.node.archive else {
        return Ok(transport);
    };
    let archive = trawl_sources::Archive::open(archive).map_err(|e| BuildError::Component {
        key: "node.archive".into(),
        cause: e.into(),
    })?;
    Ok(Arc::new(crate::archive::Archiving {
        inner: transport,
        archive: Arc::new(archive),
    }))
}

/// What the transport's servers hold, for `trawl status` and `config check
/// --connect`: nothing on them is created or changed. `None` for a
/// transport with no server.
pub async fn transport_status(config: &Config) -> Result<Option<TransportStatus>, WiringError> {
    let transports = trawl_transport::builtin_transports();
    let t = &config.transport;
    Ok(transports.get(t)?.status(t, &node_name(config)).await?)
}

/// Reach the transport's replays, as `trawl replay` does; `None`: the
/// transport keeps no payloads to replay.
pub async fn transport_replays(
    config: &Config,
) -> Result<Option<Box<dyn trawl_transport::Replays>>, WiringError> {
    let transports = trawl_transport::builtin_transports();
    let t = &config.transport;
    Ok(transports.get(t)?.replays(t, &node_name(config)).await?)
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
            scanner: scanners.get(&w.component)?.build(w)?,
            concurrency: w.concurrency.get(),
            timeout: w.timeout,
            max_deliver: w.max_deliver,
            dispatch: crate::Dispatch::new(w.filter.clone()),
            replay_slots: w.replay_slots(),
            dedup_ttl: w.dedup_ttl,
            dedup_min_size: w.dedup_min_size,
        });
    }
    let registry = trawl_connectors::builtin_connectors();
    let mut connectors = Vec::new();
    for c in config.connectors.values() {
        connectors.push(ConnectorSpec {
            connector: registry.get(&c.component)?.build(c).await?,
            batch_size: c.batch_size.get(),
            flush_interval: c.flush_interval,
        });
    }
    let registry = trawl_sources::builtin_sources();
    let mut sources = Vec::new();
    for c in config.sources.values() {
        sources.push(registry.get(c)?.build(c, &config.node.data_dir)?);
    }
    Ok(NodeSpec {
        name: node_name(config),
        transport,
        sources,
        workers,
        connectors,
        shutdown_grace: config.node.shutdown_grace,
        listen: config.node.listen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> String {
        let config = trawl_config::parse(std::path::Path::new("n.toml"), text).unwrap();
        check_config(&config).unwrap_err().to_string()
    }

    #[test]
    fn an_unknown_type_of_any_kind_names_the_key_and_lists_the_known_ones() {
        for (text, expected) in [
            (
                "[transport]\ntype = 'kafka'\n",
                "n.toml: transport: unknown transport type \"kafka\" (known: jetstream, memory, rabbitmq)",
            ),
            (
                "[sources.s]\ntype = 'snort'\n",
                "n.toml: sources.s: unknown source type \"snort\" (known: archive, dir, files, suricata, zeek)",
            ),
            (
                "[workers.w]\ntype = 'clamd'\n",
                "n.toml: workers.w: unknown worker type \"clamd\" (known: clamav, elf, exif, extract, filetype, hash, pe, yara)",
            ),
            (
                "[connectors.c]\ntype = 'kafka'\n",
                "n.toml: connectors.c: unknown connector type \"kafka\" (known: elasticsearch, jsonl, mongodb, sqlite)",
            ),
        ] {
            assert_eq!(check(&format!("version = 1\n{text}")), expected);
        }
    }

    #[test]
    fn a_group_can_wait_only_for_a_group_that_reports_matches() {
        let e = check(
            "version = 1\n[workers.h]\ntype = 'hash'\nfilter = { yara = { worker = 'f' } }\n\
             [workers.f]\ntype = 'filetype'\n",
        );
        assert_eq!(
            e,
            "n.toml: workers.h: filter.yara.worker: \"f\" is a filetype group, which reports no rule matches"
        );
        let c = "version = 1\n[workers.h]\ntype = 'hash'\nfilter = { yara = { worker = 'av' } }\n\
                 [workers.av]\ntype = 'clamav'\n[connectors.c]\ntype = 'jsonl'\npath = '-'\n";
        let config = trawl_config::parse(std::path::Path::new("n.toml"), c).unwrap();
        check_config(&config).unwrap();
    }

    #[test]
    fn an_in_process_transport_needs_every_role_in_this_node() {
        let e = check("version = 1\n[sources.s]\ntype = 'dir'\npath = '/x'\n");
        assert!(e.contains("needs at least one [workers.X]"), "{e}");
    }
}
