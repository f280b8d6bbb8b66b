//! The plugin contract shared by the four component kinds (sources,
//! transports, worker groups' scanners, connectors): a factory per `type`,
//! registered by name. Each kind's factory trait lives with its plugins;
//! this module only finds the factory a component names.

use std::collections::BTreeMap;
use std::error::Error;

use crate::{Component, ConfigError};

/// The factories of one component kind, by `type`.
pub struct Registry<F: ?Sized> {
    /// The kind's name in messages: "source", "transport", "worker", "connector".
    what: &'static str,
    factories: BTreeMap<&'static str, Box<F>>,
}

impl<F: ?Sized> Registry<F> {
    pub fn new(what: &'static str) -> Self {
        Registry {
            what,
            factories: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, kind: &'static str, factory: Box<F>) {
        self.factories.insert(kind, factory);
    }

    /// The registered types, in order.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.factories.keys().copied()
    }

    /// The factory `component.kind` names; an unknown type is an error that
    /// lists the known ones.
    pub fn get(&self, component: &Component) -> Result<&F, ConfigError> {
        self.factories
            .get(component.kind.as_str())
            .map(Box::as_ref)
            .ok_or_else(|| {
                let known: Vec<&str> = self.kinds().collect();
                component.error(format_args!(
                    "unknown {} type {:?} (known: {})",
                    self.what,
                    component.kind,
                    known.join(", ")
                ))
            })
    }
}

/// Why a component could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Its keys are wrong: nothing was attempted.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Its keys are right, but what they name cannot be had: rules that do
    /// not compile, a store that cannot be opened, a server that cannot be reached.
    /// The cause is told in the message, not chained as a source: a
    /// report of the chain would tell it twice.
    #[error("{key}: {cause}")]
    Component {
        key: String,
        cause: Box<dyn Error + Send + Sync>,
    },
}

impl BuildError {
    pub fn component(
        component: &Component,
        source: impl Into<Box<dyn Error + Send + Sync>>,
    ) -> Self {
        BuildError::Component {
            key: component.key.clone(),
            cause: source.into(),
        }
    }
}
