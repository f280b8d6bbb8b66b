//! trawl's configuration: one TOML file per node.
//!
//! Parsing is split in two, as in quickwit: this crate reads the file, expands
//! `${VAR}` / `${VAR:-default}` in string values, checks the keys every
//! component shares and turns them into typed values. Each component's own
//! keys stay a [`toml::Table`] that its plugin deserializes (with
//! `deny_unknown_fields`) through [`Component::params`]. Nothing here does IO
//! beyond reading the file.

mod env;
mod registry;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

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
    /// Appears in every event this node emits.
    pub name: String,
    /// Where sources keep their checkpoints.
    pub data_dir: PathBuf,
    /// How long a shutdown waits for in-flight work before cutting it.
    pub shutdown_grace: Duration,
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
        T::deserialize(toml::Value::Table(self.params.clone()))
            .map_err(|e| self.error(e.to_string().trim_end()))
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
    pub filter: DispatchFilter,
}

/// A worker group's `filter = { … }`: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchFilter {
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

impl DispatchFilter {
    pub fn is_empty(&self) -> bool {
        *self == DispatchFilter::default()
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
    #[serde(default)]
    node: RawNode,
    #[serde(default)]
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
    shutdown_grace: Option<String>,
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
    let mut raw: RawConfig = toml::from_str(text).map_err(|e| err(one_line(&e.to_string())))?;
    if raw.version != CONFIG_VERSION {
        return Err(err(format!(
            "version: this trawl reads config version {CONFIG_VERSION}, the file says {}",
            raw.version
        )));
    }

    let expand = |key: &str, value: &mut String| {
        *value = expand_env(value).map_err(|e| err(format!("{key}: {e}")))?;
        Ok::<_, ConfigError>(())
    };
    let expand_table = |key: &str, table: &mut toml::Table| {
        env::expand_table(table).map_err(|e| err(format!("{key}: {e}")))
    };

    let node = {
        let n = &mut raw.node;
        for (key, value) in [
            ("node.name", &mut n.name),
            ("node.data_dir", &mut n.data_dir),
            ("node.shutdown_grace", &mut n.shutdown_grace),
        ] {
            if let Some(v) = value {
                expand(key, v)?;
            }
        }
        let name = n.name.clone().unwrap_or_else(default_node_name);
        if name.trim().is_empty() {
            return Err(err("node.name: must not be empty".into()));
        }
        NodeConfig {
            name,
            data_dir: n
                .data_dir
                .as_deref()
                .map(|d| resolve(file, d))
                .unwrap_or_else(|| resolve(file, "trawl-data")),
            shutdown_grace: duration(file, "node.shutdown_grace", n.shutdown_grace.as_deref())?
                .unwrap_or(Duration::from_secs(30)),
        }
    };

    let mut transport_table = raw.transport.take().unwrap_or_else(|| {
        let mut t = toml::Table::new();
        t.insert("type".into(), "memory".into());
        t
    });
    expand_table("transport", &mut transport_table)?;
    let transport = component(file, "transport", "transport", transport_table)?;

    let mut sources = BTreeMap::new();
    for (name, mut table) in raw.sources {
        let key = format!("sources.{name}");
        expand_table(&key, &mut table)?;
        sources.insert(name.clone(), component(file, &key, &name, table)?);
    }

    let mut workers = BTreeMap::new();
    for (name, mut table) in raw.workers {
        let key = format!("workers.{name}");
        expand_table(&key, &mut table)?;
        let concurrency =
            take_usize(file, &key, &mut table, "concurrency")?.unwrap_or_else(default_concurrency);
        let timeout =
            take_duration(file, &key, &mut table, "timeout")?.unwrap_or(Duration::from_secs(60));
        let max_deliver = take_usize(file, &key, &mut table, "max_deliver")?
            .map_or(5, |n| n.get().min(u32::MAX as usize) as u32);
        let filter = take_filter(file, &key, &mut table)?;
        workers.insert(
            name.clone(),
            WorkerConfig {
                component: component(file, &key, &name, table)?,
                concurrency,
                timeout,
                max_deliver,
                filter,
            },
        );
    }

    for (name, w) in &workers {
        let Some(y) = &w.filter.yara else { continue };
        // Groups that wait for each other's matches (A on B on … on A) never scan.
        let mut chain = vec![name.as_str()];
        let mut next = Some(y.worker.as_str());
        while let Some(waits_for) = next {
            if chain.contains(&waits_for) {
                chain.push(waits_for);
                return Err(ConfigError::new(
                    file,
                    format!(
                        "{}.filter.yara.worker: groups that wait for each other's matches never scan anything: {}",
                        w.component.key,
                        chain.join(" waits for ")
                    ),
                ));
            }
            chain.push(waits_for);
            next = workers
                .get(waits_for)
                .and_then(|o| o.filter.yara.as_ref())
                .map(|o| o.worker.as_str());
        }
        // A group defined on another node is taken on trust.
        if let Some(other) = workers
            .get(&y.worker)
            .filter(|o| o.component.kind != "yara")
        {
            return Err(ConfigError::new(
                file,
                format!(
                    "{}.filter.yara.worker: {:?} is a {} group; only yara groups report rule matches",
                    w.component.key, y.worker, other.component.kind
                ),
            ));
        }
    }

    let mut connectors = BTreeMap::new();
    for (name, mut table) in raw.connectors {
        let key = format!("connectors.{name}");
        expand_table(&key, &mut table)?;
        let batch_size = take_usize(file, &key, &mut table, "batch_size")?
            .unwrap_or(NonZeroUsize::new(500).expect("non-zero"));
        let flush_interval = take_duration(file, &key, &mut table, "flush_interval")?
            .unwrap_or(Duration::from_secs(1));
        connectors.insert(
            name.clone(),
            ConnectorConfig {
                component: component(file, &key, &name, table)?,
                batch_size,
                flush_interval,
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

fn component(
    file: &Path,
    key: &str,
    name: &str,
    mut table: toml::Table,
) -> Result<Component, ConfigError> {
    let kind = match table.remove("type") {
        Some(toml::Value::String(s)) if !s.is_empty() => s,
        Some(other) => {
            return Err(ConfigError::new(
                file,
                format!("{key}.type: expected a string, found {}", other.type_str()),
            ))
        }
        None => return Err(ConfigError::new(file, format!("{key}: missing key `type`"))),
    };
    Ok(Component {
        key: key.to_owned(),
        name: name.to_owned(),
        kind,
        params: table,
        file: file.to_path_buf(),
    })
}

fn take_filter(
    file: &Path,
    key: &str,
    table: &mut toml::Table,
) -> Result<DispatchFilter, ConfigError> {
    let Some(value) = table.remove("filter") else {
        return Ok(DispatchFilter::default());
    };
    let filter: DispatchFilter = value.try_into().map_err(|e: toml::de::Error| {
        ConfigError::new(file, format!("{key}.filter: {}", e.message()))
    })?;
    const KINDS: [&str; 5] = ["suricata", "zeek", "dir", "cli", "extracted"];
    if let Some(bad) = filter.sources.iter().find(|s| !KINDS.contains(&s.as_str())) {
        return Err(ConfigError::new(
            file,
            format!(
                "{key}.filter.sources: unknown source kind {bad:?} (known: {})",
                KINDS.join(", ")
            ),
        ));
    }
    if let Some(bad) = filter.mime.iter().find(|m| !m.contains('/')) {
        return Err(ConfigError::new(
            file,
            format!("{key}.filter.mime: {bad:?} is not a mime type (e.g. \"application/pdf\" or \"image/*\")"),
        ));
    }
    Ok(filter)
}

fn take_usize(
    file: &Path,
    key: &str,
    table: &mut toml::Table,
    field: &str,
) -> Result<Option<NonZeroUsize>, ConfigError> {
    match table.remove(field) {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if n > 0 => Ok(NonZeroUsize::new(n as usize)),
        Some(v) => Err(ConfigError::new(
            file,
            format!("{key}.{field}: expected a positive integer, found {v}"),
        )),
    }
}

fn take_duration(
    file: &Path,
    key: &str,
    table: &mut toml::Table,
    field: &str,
) -> Result<Option<Duration>, ConfigError> {
    match table.remove(field) {
        None => Ok(None),
        Some(toml::Value::String(s)) => duration(file, &format!("{key}.{field}"), Some(&s)),
        Some(v) => Err(ConfigError::new(
            file,
            format!("{key}.{field}: expected a duration such as \"30s\", found {v}"),
        )),
    }
}

fn duration(file: &Path, key: &str, value: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    value
        .map(|v| {
            parse_duration(v).map_err(|e| {
                ConfigError::new(
                    file,
                    format!("{key}: {e} (expected a duration such as \"30s\" or \"500ms\")"),
                )
            })
        })
        .transpose()
}

/// Parse a human duration ("30s", "1m 30s", "500ms"); zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("invalid duration {text:?}: must be more than zero"));
    }
    Ok(d)
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

fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "trawl".to_owned())
}

/// Twice the CPUs: while one slot publishes and fetches, another scans.
fn default_concurrency() -> NonZeroUsize {
    let cpus = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    cpus.saturating_mul(NonZeroUsize::new(2).expect("non-zero"))
}

#[cfg(test)]
mod tests;
