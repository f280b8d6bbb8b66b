//! `trawl bench-store`: how fast each datastore of a config file takes
//! results. A results queue is filled first, then the node's real connector
//! actor (batching, flush interval, acks) drains it; the time to drain is
//! the figure, so scanning and the sensors play no part.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use trawl_core::ResultEvent;
use trawl_node::{ConnectorSpec, Node, NodeSpec};
use trawl_transport::{ConsumerOptions, MemoryParams, MemoryTransport, Transport};

#[derive(Args)]
pub struct BenchStoreArgs {
    /// Config file whose [connectors.X] are measured (its transport is not used).
    #[arg(long)]
    pub config: PathBuf,
    /// Results written to each connector.
    #[arg(long, default_value_t = 20_000)]
    pub results: usize,
    /// Measure only this connector (by its table key's name).
    #[arg(long)]
    pub connector: Option<String>,
}

/// Results as the workers emit them: hash, filetype and yara in turn, each
/// for a carved file with a flow and HTTP fields.
fn synthetic(n: usize) -> Vec<ResultEvent> {
    (0..n)
        .map(|i| {
            let file = (i / 3) as u32;
            let (worker, data) = match i % 3 {
                0 => (
                    "hash",
                    json!({"md5": format!("{i:032x}"), "sha1": format!("{i:040x}"), "sha256": format!("{file:064x}"),
                           "sha512": format!("{i:0128x}"), "ssdeep": "96:abcdefghijklmnop:qrstuvwxyz"}),
                ),
                1 => (
                    "filetype",
                    json!({"mime": "application/x-dosexec", "description": "PE32 executable", "extension": "exe"}),
                ),
                _ => (
                    "yara",
                    json!({"match_count": 1, "matches": [{"rule": "Win32_Packed", "namespace": "pe", "tags": ["packer"],
                           "meta": {"author": "bench"}, "strings": [{"identifier": "$a", "offset": 64, "length": 4, "data": "UPX!"}]}]}),
                ),
            };
            let mut result = trawl_connectors::sample::carved_result(file, worker, data);
            if worker == "yara" {
                result.matches = vec![trawl_core::RuleMatch::new("Win32_Packed", ["packer"])];
            }
            result
        })
        .collect()
}

pub async fn run(args: BenchStoreArgs) -> Result<ExitCode> {
    let config = trawl_config::load(&args.config)?;
    trawl_node::check_config(&config)?;
    let registry = trawl_connectors::builtin_connectors();
    let results = synthetic(args.results);
    let mut measured = 0;
    println!(
        "{:<24} {:<14} {:>8} {:>7} {:>9} {:>10} {:>10}",
        "connector", "type", "results", "batch", "flush", "seconds", "results/s"
    );
    for c in config.connectors.values() {
        if args
            .connector
            .as_ref()
            .is_some_and(|n| *n != c.component.name)
        {
            continue;
        }
        measured += 1;
        let connector = registry
            .get(&c.component)?
            .build(c)
            .await
            .with_context(|| c.component.key.clone())?;
        let memory = MemoryTransport::new(MemoryParams {
            queue_depth: args.results + 1,
            ..MemoryParams::default()
        });
        // The connector's queue exists before it is filled, as a stream would.
        let _queue = memory
            .results(
                &c.component.name,
                ConsumerOptions::new(u32::MAX, Duration::from_secs(30), 1),
            )
            .await?;
        for r in &results {
            memory.publish_result(r).await?;
        }
        let spec = NodeSpec {
            name: "bench-store".into(),
            transport: Arc::new(memory.clone()),
            sources: Vec::new(),
            workers: Vec::new(),
            connectors: vec![ConnectorSpec {
                connector,
                batch_size: c.batch_size.get(),
                flush_interval: c.flush_interval,
            }],
            shutdown_grace: Duration::from_secs(60),
            listen: None,
        };
        let start = Instant::now();
        let node = Node::start(spec).await?;
        let metrics = node.metrics().clone();
        loop {
            // Read before the count: a result is counted before it is
            // acknowledged, so with nothing left unacknowledged the count
            // read next is final.
            let all_taken = memory.unacked() == 0;
            let stored = metrics.snapshot().stored as usize;
            if stored >= results.len() {
                break;
            }
            // The rest were set aside (the log says why): not waited for.
            if all_taken {
                bail!(
                    "{}: {} of {} results were set aside, not stored (see the log)",
                    c.component.key,
                    results.len() - stored,
                    results.len()
                );
            }
            if start.elapsed() > Duration::from_secs(600) {
                bail!(
                    "{}: not all results stored after 10 minutes (is the datastore up?)",
                    c.component.key
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        node.shutdown().await?;
        println!(
            "{:<24} {:<14} {:>8} {:>7} {:>9} {:>10.2} {:>10.0}",
            c.component.key,
            c.component.kind,
            results.len(),
            c.batch_size.get(),
            humantime::format_duration(c.flush_interval).to_string(),
            secs,
            results.len() as f64 / secs
        );
    }
    if measured == 0 {
        bail!("{}: no connector to measure", args.config.display());
    }
    Ok(ExitCode::SUCCESS)
}
