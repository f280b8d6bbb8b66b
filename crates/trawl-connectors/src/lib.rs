//! trawl's connectors: where results are stored.

mod jsonl;
mod registry;
mod sqlite;

pub use jsonl::JsonlConnector;
pub use registry::{builtin_connectors, BuildError, ConnectorFactory, ConnectorRegistry};
pub use sqlite::{SqliteConnector, SCHEMA};
