use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use trawl_config::{Component, ConfigError};

use crate::Source;

/// Builds one kind of source from its config.
pub trait SourceFactory: Send + Sync {
    fn check(&self, config: &Component) -> Result<(), ConfigError>;

    /// `data_dir` is where the source keeps its checkpoint.
    fn build(&self, config: &Component, data_dir: &Path) -> Result<Arc<dyn Source>, ConfigError>;
}

#[derive(Default)]
pub struct SourceRegistry {
    factories: BTreeMap<&'static str, Box<dyn SourceFactory>>,
}

impl SourceRegistry {
    pub fn add(&mut self, kind: &'static str, factory: impl SourceFactory + 'static) {
        self.factories.insert(kind, Box::new(factory));
    }

    fn factory(&self, config: &Component) -> Result<&dyn SourceFactory, ConfigError> {
        trawl_config::lookup(&self.factories, config, "source")
    }

    pub fn check(&self, config: &Component) -> Result<(), ConfigError> {
        self.factory(config)?.check(config)
    }

    pub fn build(
        &self,
        config: &Component,
        data_dir: &Path,
    ) -> Result<Arc<dyn Source>, ConfigError> {
        self.factory(config)?.build(config, data_dir)
    }
}

pub fn builtin_sources() -> SourceRegistry {
    let mut registry = SourceRegistry::default();
    registry.add("dir", crate::dir::DirFactory);
    registry.add("suricata", crate::suricata::SuricataFactory);
    registry.add("zeek", crate::zeek::ZeekFactory);
    registry
}
