//! trawl's connectors: where results are stored.

mod document;
mod elastic;
mod jsonl;
mod mongo;
mod registry;
pub mod sample;
mod sqlite;

pub use elastic::ElasticsearchConnector;
pub use jsonl::JsonlConnector;
pub use mongo::MongoConnector;
pub use registry::{builtin_connectors, BuildError, ConnectorFactory, ConnectorRegistry};
pub use sqlite::{SqliteConnector, SCHEMA};
