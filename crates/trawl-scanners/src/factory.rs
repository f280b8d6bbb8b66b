//! How a worker group's scanner is made from its config: the scanner kind's
//! part of the plugin contract (see `trawl_config::registry`).

use std::sync::Arc;

use trawl_config::{BuildError, ConfigError, WorkerConfig};
use trawl_core::Scanner;

/// Builds one kind of scanner from its worker config.
pub trait ScannerFactory: Send + Sync {
    /// Validate the worker's own keys without any IO.
    fn check(&self, config: &WorkerConfig) -> Result<(), ConfigError>;

    /// Build the scanner (this may read and compile rules).
    fn build(&self, config: &WorkerConfig) -> Result<Arc<dyn Scanner>, BuildError>;

    /// Whether its results carry rule matches, so that other groups may
    /// scan what it matched (`filter.yara`).
    fn reports_matches(&self) -> bool {
        false
    }
}

pub type ScannerRegistry = trawl_config::Registry<dyn ScannerFactory>;

/// For scanners without keys of their own: any key is unknown.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}
