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

/// Make the folder a local store file goes in when it is missing (a
/// first run from a fresh checkout has no `var/`), readable by its owner
/// and group only, as a service's data folder is.
pub(crate) fn make_folder_for(path: &std::path::Path) -> std::io::Result<()> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if parent.is_dir() {
        return Ok(());
    }
    if parent.exists() {
        return Err(std::io::Error::other(format!(
            "{} is a file, not a folder",
            parent.display()
        )));
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o750);
    builder.create(parent)
}

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
