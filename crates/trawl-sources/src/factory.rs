//! How a source is made from its config: the source kind's part of the
//! plugin contract (see `trawl_config::registry`).

use std::path::Path;
use std::sync::Arc;

use trawl_config::{Component, ConfigError};

use crate::Source;

/// Builds one kind of source from its config.
pub trait SourceFactory: Send + Sync {
    /// Validate the source's own keys without any IO.
    fn check(&self, config: &Component) -> Result<(), ConfigError>;

    /// `data_dir` is where the source keeps its checkpoint.
    fn build(&self, config: &Component, data_dir: &Path) -> Result<Arc<dyn Source>, ConfigError>;
}

pub type SourceRegistry = trawl_config::Registry<dyn SourceFactory>;
