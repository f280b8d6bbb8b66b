use std::collections::BTreeMap;
use std::sync::Arc;

use trawl_config::{ConfigError, WorkerConfig};
use trawl_core::Scanner;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Rules that do not compile, with file and line.
    #[error("{0}")]
    Rules(String),
}

/// Builds one kind of scanner from its worker config.
pub trait ScannerFactory: Send + Sync {
    /// Validate the worker's own keys without any IO.
    fn check(&self, config: &WorkerConfig) -> Result<(), ConfigError>;

    /// Build the scanner (this may read and compile rules).
    fn build(&self, config: &WorkerConfig) -> Result<Arc<dyn Scanner>, BuildError>;
}

#[derive(Default)]
pub struct ScannerRegistry {
    factories: BTreeMap<&'static str, Box<dyn ScannerFactory>>,
}

impl ScannerRegistry {
    pub fn add(&mut self, kind: &'static str, factory: impl ScannerFactory + 'static) {
        self.factories.insert(kind, Box::new(factory));
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.factories.keys().copied()
    }

    fn factory(&self, config: &WorkerConfig) -> Result<&dyn ScannerFactory, ConfigError> {
        trawl_config::lookup(&self.factories, &config.component, "worker")
    }

    pub fn check(&self, config: &WorkerConfig) -> Result<(), ConfigError> {
        self.factory(config)?.check(config)
    }

    pub fn build(&self, config: &WorkerConfig) -> Result<Arc<dyn Scanner>, BuildError> {
        self.factory(config)?.build(config)
    }
}

pub fn builtin_scanners() -> ScannerRegistry {
    let mut registry = ScannerRegistry::default();
    registry.add("hash", crate::hash::HashFactory);
    registry.add("filetype", crate::filetype::FiletypeFactory);
    registry.add("yara", crate::yara::YaraFactory);
    registry.add("pe", crate::executable::PE_FACTORY);
    registry.add("elf", crate::executable::ELF_FACTORY);
    registry.add("clamav", crate::clamav::ClamavFactory);
    registry.add("exif", crate::exif::ExifFactory);
    registry.add("extract", crate::extract::ExtractFactory);
    registry
}

/// For scanners without keys of their own: any key is unknown.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_lists_known_ones() {
        let c = trawl_config::parse(
            std::path::Path::new("n.toml"),
            "version = 1\n[workers.x]\ntype = 'clamd'\n",
        )
        .unwrap();
        let e = builtin_scanners()
            .check(&c.workers["x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers.x") && e.contains("clamd"), "{e}");
        assert!(
            e.contains("clamav, elf, exif, extract, filetype, hash, pe, yara"),
            "{e}"
        );
    }

    #[test]
    fn keyless_scanners_reject_stray_keys() {
        let c = trawl_config::parse(
            std::path::Path::new("n.toml"),
            "version = 1\n[workers.h]\ntype = 'hash'\nalgos = ['md5']\n",
        )
        .unwrap();
        let e = builtin_scanners()
            .check(&c.workers["h"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("algos"), "{e}");
    }
}
