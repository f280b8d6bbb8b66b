//! trawl's configuration: one TOML file per node.
//!
//! Parsing is split in two, as in quickwit: this crate reads the file, expands
//! `${VAR}` / `${VAR:-default}` in string values, checks the keys every
//! component shares and turns them into typed values. Each component's own
//! keys stay a [`toml::Table`] that its plugin deserializes (with
//! `deny_unknown_fields`) through [`Component::params`]. Nothing here does IO
//! beyond reading the file.

mod duration;
mod env;
mod registry;

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use trawl_core::SourceKind;

pub use duration::{DurationOrOff, NonZeroDuration};
pub use env::expand_env;
pub use registry::{BuildError, Registry};

/// The config format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            message: message.into(),
        }
    }
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub node: NodeConfig,
    pub transport: Component,
    pub sources: BTreeMap<String, Component>,
    pub workers: BTreeMap<String, WorkerConfig>,
    pub connectors: BTreeMap<String, ConnectorConfig>,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Appears in every event this node emits; `None`: the node takes its
    /// host's name.
    pub name: Option<String>,
    /// Where sources keep their checkpoints.
    pub data_dir: PathBuf,
    /// How long a shutdown waits for in-flight work before cutting it.
    pub shutdown_grace: Duration,
    /// Where every payload's bytes and event are kept for `trawl replay`
    /// (embedded mode); `None`: not kept.
    pub archive: Option<ArchiveConfig>,
    /// Where `GET /metrics` (Prometheus) and `GET /healthz` are served;
    /// `None`: nowhere.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[node] archive`, with its eviction limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveConfig {
    pub dir: PathBuf,
    /// Payloads older than this are evicted.
    pub max_age: Option<Duration>,
    /// Past this many bytes of payloads, the oldest are evicted.
    pub max_bytes: Option<u64>,
}

/// A named component: its `type` and its own keys, which its plugin checks.
#[derive(Debug, Clone)]
pub struct Component {
    /// The table path in the file, e.g. `workers.yara`, for error messages.
    pub key: String,
    pub name: String,
    pub kind: String,
    pub params: toml::Table,
    file: PathBuf,
}

impl Component {
    /// Deserialize this component's own keys into its plugin's params type.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        typed(self.params.clone()).map_err(|e| ConfigError::new(&self.file, at(&self.key, &e)))
    }

    /// A component a command makes (`trawl replay`'s source): `key` is
    /// `table.name`, and paths resolve against `file`'s folder.
    pub fn new(file: &Path, table: &str, name: &str, kind: &str, params: toml::Table) -> Self {
        Component {
            key: format!("{table}.{name}"),
            name: name.to_owned(),
            kind: kind.to_owned(),
            params,
            file: file.to_path_buf(),
        }
    }

    /// The same component with other keys of its own (for a plugin that
    /// takes its keys in parts).
    pub fn with_params(&self, params: toml::Table) -> Component {
        Component {
            params,
            ..self.clone()
        }
    }

    /// An error about this component, naming the file and the key.
    pub fn error(&self, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::new(&self.file, format!("{}: {message}", self.key))
    }

    /// Resolve a path given in this component relative to the config file's folder.
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        resolve(&self.file, path)
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub component: Component,
    /// Scans of this group that run at once on this node.
    pub concurrency: NonZeroUsize,
    pub timeout: Duration,
    /// Deliveries of one payload before it becomes an error result.
    pub max_deliver: u32,
    /// Which payloads the group scans; the others are acknowledged untouched.
    pub filter: WorkerFilter,
    /// The share of `concurrency` a replay may take (at least one slot);
    /// live payloads come first in every slot.
    pub replay_share: f64,
    /// How long a result stands for every payload with the same content
    /// (same worker version and ruleset): later copies get it without a
    /// scan. `None`: every payload is scanned.
    pub dedup_ttl: Option<Duration>,
    /// Payloads smaller than this are scanned without asking for a copy;
    /// `None`: where the results are kept decides (see `ResultCache::worth_from`).
    pub dedup_min_size: Option<u64>,
}

impl WorkerConfig {
    /// Slots that take a replay's payloads when no live payload waits.
    pub fn replay_slots(&self) -> usize {
        ((self.concurrency.get() as f64 * self.replay_share).floor() as usize).max(1)
    }
}

/// A worker group's `filter = { … }`: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFilter {
    /// Mime types from the content (or the sensor), `type/*` for a family.
    #[serde(default)]
    pub mime: Vec<String>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    /// Source kinds: `suricata`, `zeek`, `dir`, `cli`, `extracted`.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Deepest extraction level scanned (0: only files as carved).
    pub max_depth: Option<u32>,
    /// Scan only payloads that another worker group's YARA rules matched:
    /// the group then reads that group's results instead of every payload.
    pub yara: Option<YaraCondition>,
}

/// `filter.yara = { worker, rules, tags }`: any match of the named group
/// whose rule name fits one of `rules` (`*` wildcards) and carries one of
/// `tags`; an empty list does not restrict.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YaraCondition {
    #[serde(default = "default_yara_worker")]
    pub worker: String,
    #[serde(default)]
    pub rules: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_yara_worker() -> String {
    "yara".into()
}

impl WorkerFilter {
    pub fn is_empty(&self) -> bool {
        *self == WorkerFilter::default()
    }
}

#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    pub component: Component,
    pub batch_size: NonZeroUsize,
    pub flush_interval: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    node: Option<toml::Table>,
    transport: Option<toml::Table>,
    #[serde(default)]
    sources: BTreeMap<String, toml::Table>,
    #[serde(default)]
    workers: BTreeMap<String, toml::Table>,
    #[serde(default)]
    connectors: BTreeMap<String, toml::Table>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
    data_dir: Option<String>,
    shutdown_grace: Option<NonZeroDuration>,
    archive: Option<String>,
    archive_max_age: Option<NonZeroDuration>,
    archive_max_bytes: Option<std::num::NonZeroU64>,
    listen: Option<std::net::SocketAddr>,
}

/// Every component: its `type`, and the rest for its plugin.
#[derive(Deserialize)]
struct RawComponent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    params: toml::Table,
}

#[derive(Deserialize)]
struct RawWorker {
    concurrency: Option<NonZeroUsize>,
    timeout: Option<NonZeroDuration>,
    max_deliver: Option<NonZeroU32>,
    replay_share: Option<f64>,
    dedup_ttl: Option<DurationOrOff>,
    dedup_min_size: Option<u64>,
    #[serde(default)]
    filter: WorkerFilter,
    #[serde(flatten)]
    component: RawComponent,
}

#[derive(Deserialize)]
struct RawConnector {
    batch_size: Option<NonZeroUsize>,
    flush_interval: Option<NonZeroDuration>,
    #[serde(flatten)]
    component: RawComponent,
}

/// Read, expand and validate a config file (no network, no plugin IO).
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::new(file, format!("cannot read config: {e}")))?;
    parse(file, &text)
}

/// Validate config text as if it were read from `file`.
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let err = |m: String| ConfigError::new(file, m);
    let raw: RawConfig = toml::from_str(text).map_err(|e| err(one_line(&e.to_string())))?;
    if raw.version != CONFIG_VERSION {
        return Err(err(format!(
            "version: this trawl reads config version {CONFIG_VERSION}, the file says {}",
            raw.version
        )));
    }
    let component = |key: String, name: &str, raw: RawComponent| Component {
        key,
        name: name.to_owned(),
        kind: raw.kind,
        params: raw.params,
        file: file.to_path_buf(),
    };

    let n: RawNode = match raw.node {
        Some(table) => expanded(file, "node", table)?,
        None => RawNode::default(),
    };
    if n.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(err("node.name: must not be empty".into()));
    }
    let node = NodeConfig {
        name: n.name,
        data_dir: resolve(file, n.data_dir.as_deref().unwrap_or("trawl-data")),
        shutdown_grace: n
            .shutdown_grace
            .map_or(Duration::from_secs(30), Duration::from),
        archive: match n.archive {
            Some(dir) => Some(ArchiveConfig {
                dir: resolve(file, &dir),
                max_age: n.archive_max_age.map(NonZeroDuration::get),
                max_bytes: n.archive_max_bytes.map(std::num::NonZeroU64::get),
            }),
            None if n.archive_max_age.is_some() || n.archive_max_bytes.is_some() => {
                return Err(err(
                    "node.archive_max_age and archive_max_bytes limit [node] archive, which is not set"
                        .into(),
                ))
            }
            None => None,
        },
        listen: n.listen,
    };

    let transport = raw.transport.unwrap_or_else(|| {
        toml::Table::from_iter([("type".to_owned(), toml::Value::from("memory"))])
    });
    let transport = component(
        "transport".into(),
        "transport",
        expanded(file, "transport", transport)?,
    );

    let mut sources = BTreeMap::new();
    for (name, table) in raw.sources {
        let key = format!("sources.{name}");
        let raw = expanded(file, &key, table)?;
        sources.insert(name.clone(), component(key, &name, raw));
    }

    let mut workers = BTreeMap::new();
    for (name, table) in raw.workers {
        let key = format!("workers.{name}");
        let w: RawWorker = expanded(file, &key, table)?;
        check_filter(&key, &w.filter).map_err(err)?;
        let replay_share = w.replay_share.unwrap_or(0.5);
        if !(replay_share > 0.0 && replay_share <= 1.0) {
            return Err(err(format!(
                "{key}.replay_share: {replay_share} is not a share: give more than 0 and at most 1"
            )));
        }
        workers.insert(
            name.clone(),
            WorkerConfig {
                concurrency: w.concurrency.unwrap_or_else(default_concurrency),
                timeout: w.timeout.map_or(Duration::from_secs(60), Duration::from),
                max_deliver: w.max_deliver.map_or(5, NonZeroU32::get),
                filter: w.filter,
                replay_share,
                dedup_ttl: match w.dedup_ttl {
                    Some(DurationOrOff(ttl)) => ttl.map(NonZeroDuration::get),
                    None => Some(Duration::from_secs(3600)),
                },
                dedup_min_size: w.dedup_min_size,
                component: component(key, &name, w.component),
            },
        );
    }
    check_waits(&workers).map_err(err)?;

    let mut connectors = BTreeMap::new();
    for (name, table) in raw.connectors {
        let key = format!("connectors.{name}");
        let c: RawConnector = expanded(file, &key, table)?;
        connectors.insert(
            name.clone(),
            ConnectorConfig {
                batch_size: c
                    .batch_size
                    .unwrap_or(NonZeroUsize::new(500).expect("non-zero")),
                flush_interval: c
                    .flush_interval
                    .map_or(Duration::from_secs(1), Duration::from),
                component: component(key, &name, c.component),
            },
        );
    }

    Ok(Config {
        file: file.to_path_buf(),
        node,
        transport,
        sources,
        workers,
        connectors,
    })
}

/// The table at `key`, `${VAR}` expanded in its strings, then typed.
fn expanded<T: DeserializeOwned>(
    file: &Path,
    key: &str,
    mut table: toml::Table,
) -> Result<T, ConfigError> {
    let err = |m: String| ConfigError::new(file, m);
    env::expand_table(&mut table).map_err(|e| err(format!("{key}: {e}")))?;
    typed(table).map_err(|e| err(at(key, &e)))
}

fn typed<T: DeserializeOwned>(table: toml::Table) -> Result<T, toml::de::Error> {
    T::deserialize(toml::Value::Table(table))
}

/// A typing error of the table at `key`, as `key.field: reason`.
fn at(key: &str, e: &toml::de::Error) -> String {
    // toml names the field on a last line: "in `filter.mime`".
    let text = e.to_string();
    let text = text.trim_end();
    match text.rsplit_once("\nin `") {
        Some((reason, field)) => format!(
            "{key}.{}: {}",
            field.trim_end_matches('`'),
            reason.trim_end()
        ),
        None => format!("{key}: {text}"),
    }
}

fn check_filter(key: &str, filter: &WorkerFilter) -> Result<(), String> {
    let known = SourceKind::KNOWN.map(SourceKind::as_str);
    if let Some(bad) = filter.sources.iter().find(|s| !known.contains(&s.as_str())) {
        return Err(format!(
            "{key}.filter.sources: unknown source kind {bad:?} (known: {})",
            known.join(", ")
        ));
    }
    if let Some(bad) = filter.mime.iter().find(|m| !m.contains('/')) {
        return Err(format!("{key}.filter.mime: {bad:?} is not a mime type (e.g. \"application/pdf\" or \"image/*\")"));
    }
    Ok(())
}

/// Groups that wait for each other's matches (A on B on … on A) never scan.
fn check_waits(workers: &BTreeMap<String, WorkerConfig>) -> Result<(), String> {
    for (name, w) in workers {
        let Some(y) = &w.filter.yara else { continue };
        let mut chain = vec![name.as_str()];
        let mut next = Some(y.worker.as_str());
        while let Some(waits_for) = next {
            if chain.contains(&waits_for) {
                chain.push(waits_for);
                return Err(format!(
                    "{}.filter.yara.worker: groups that wait for each other's matches never scan anything: {}",
                    w.component.key,
                    chain.join(" waits for ")
                ));
            }
            chain.push(waits_for);
            next = workers
                .get(waits_for)
                .and_then(|o| o.filter.yara.as_ref())
                .map(|o| o.worker.as_str());
        }
    }
    Ok(())
}

fn resolve(file: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    match file.parent() {
        Some(dir) if !p.is_absolute() && !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

fn one_line(message: &str) -> String {
    // toml's errors draw a multi-line snippet; keep the location and the reason.
    let lines: Vec<&str> = message.lines().map(str::trim).collect();
    let location = lines.first().copied().unwrap_or_default();
    let reason = lines.last().copied().unwrap_or_default();
    if lines.len() > 1 {
        format!("{location}: {reason}")
    } else {
        location.to_owned()
    }
}

/// Twice the CPUs: while one slot publishes and fetches, another scans.
fn default_concurrency() -> NonZeroUsize {
    let cpus = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    cpus.saturating_mul(NonZeroUsize::new(2).expect("non-zero"))
}

#[cfg(test)]
mod tests;
