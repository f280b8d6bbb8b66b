//! trawl's connectors: where results are stored.

mod document;
mod elastic;
mod factory;
mod jsonl;
mod mongo;
pub mod sample;
mod sqlite;

pub use elastic::ElasticsearchConnector;
pub use factory::{ConnectorFactory, ConnectorRegistry};
pub use jsonl::JsonlConnector;
pub use mongo::MongoConnector;

/// Every connector this build carries, by `type`.
pub fn builtin_connectors() -> ConnectorRegistry {
    let mut registry = ConnectorRegistry::new("connector");
    registry.add("sqlite", Box::new(sqlite::SqliteFactory));
    registry.add("jsonl", Box::new(jsonl::JsonlFactory));
    registry.add("elasticsearch", Box::new(elastic::ElasticsearchFactory));
    registry.add("mongodb", Box::new(mongo::MongoFactory));
    registry
}
pub use sqlite::{database as sqlite_database, SqliteConnector, SCHEMA};
