//! The keys every watching source shares, and how a kind adds its own.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use trawl_config::{Component, ConfigError, NonZeroDuration};

/// The keys every watching source takes; each kind adds its own (see
/// [`WatchParams::split`]).
#[derive(Debug, Clone, Deserialize)]
pub struct WatchParams {
    pub path: String,
    /// How often the folder is listed.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: NonZeroDuration,
    /// What to do with a file once published: `keep`, `delete` or `move:DIR`.
    #[serde(default = "default_after")]
    pub after: String,
    /// Larger files are recorded as errors, not read.
    #[serde(default = "default_max_size")]
    pub max_size: u64,
    #[serde(default)]
    pub follow_symlinks: bool,
    /// Globs on the path under `path`; a file must match one (if any are given).
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Files or bytes in the folder above which the source warns and reports it.
    pub high_water_files: Option<u64>,
    pub high_water_bytes: Option<u64>,
}

fn default_poll_interval() -> NonZeroDuration {
    NonZeroDuration::from_secs(1)
}
fn default_after() -> String {
    "keep".into()
}
fn default_max_size() -> u64 {
    512 * 1024 * 1024
}

/// The shared keys, and the rest for the kind.
#[derive(Deserialize)]
struct Split {
    #[serde(flatten)]
    shared: WatchParams,
    #[serde(flatten)]
    own: toml::Table,
}

impl WatchParams {
    /// A watching source's keys: the shared ones, and its kind's own `K`
    /// (which refuses keys it does not know).
    pub(crate) fn split<K: DeserializeOwned>(
        config: &Component,
    ) -> Result<(WatchParams, K), ConfigError> {
        let Split { shared, own } = config.params()?;
        let own = config.with_params(own).params()?;
        Ok((shared, own))
    }
}
