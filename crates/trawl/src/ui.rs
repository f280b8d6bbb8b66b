//! `trawl ui`: the results page over a SQLite store, from its path or from
//! the config of the node that writes it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args)]
pub struct UiArgs {
    /// The SQLite store to show (what `trawl scan` and the sqlite connector write).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    db: Option<PathBuf>,
    /// A node config: its sqlite connector's store is shown.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where to serve the page; keep it on loopback unless a proxy in front
    /// of it asks who is reading (the page has no login).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

/// The store a config's sqlite connector writes.
fn configured_store(file: &std::path::Path) -> Result<PathBuf> {
    let config = trawl_config::load(file)?;
    let mut stores = config
        .connectors
        .values()
        .filter(|c| c.component.kind == "sqlite");
    let Some(first) = stores.next() else {
        bail!(
            "{}: no sqlite connector: the results page reads the embedded store (give --db FILE)",
            file.display()
        );
    };
    if stores.next().is_some() {
        bail!(
            "{}: more than one sqlite connector: give --db FILE",
            file.display()
        );
    }
    Ok(trawl_connectors::sqlite_database(&first.component)?)
}

pub async fn run(args: UiArgs) -> Result<ExitCode> {
    let db = match (args.db, args.config) {
        (Some(db), _) => db,
        (None, Some(file)) => configured_store(&file)?,
        (None, None) => unreachable!("clap requires --db or --config"),
    };
    let store =
        trawl_ui::Store::open(&db).with_context(|| format!("trawl ui --db {}", db.display()))?;
    eprintln!(
        "trawl ui: {} on http://{}/ (Ctrl-C to stop)",
        db.display(),
        args.listen
    );
    tokio::select! {
        served = trawl_ui::serve(store, args.listen) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}
