//! The `trawl` command line.

mod allocator;
mod bench;
mod bench_store;
mod log;
mod replay;
mod scan;
mod ui;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

/// trawl: picks up files carved by network sensors (or any folder), scans them
/// with YARA, hashes and file-type detection, and stores what it finds.
#[derive(Parser)]
#[command(name = "trawl", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing syntax, e.g. "info" or "trawl_node=debug"); RUST_LOG also works.
    #[arg(long, global = true, env = "TRAWL_LOG")]
    log: Option<String>,
    /// Log lines as JSON objects instead of text.
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Scan files and folders on this machine, no server needed; results go to SQLite.
    Scan(scan::ScanArgs),
    /// Run a long-lived node (sources, worker groups, connectors) from a config file.
    Node {
        /// The node's TOML config (see config/standalone.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check YARA rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Time `trawl scan` against the `yara` command line on a corpus and print the figures.
    Bench(bench::BenchArgs),
    /// Measure how fast each datastore of a config file stores results
    /// (results/s from a pre-filled queue, with batch size and flush interval).
    BenchStore(bench_store::BenchStoreArgs),
    /// Rescan stored payloads (a time range, some sources or hashes) with
    /// the rules loaded now; `replay status` and `replay cancel` follow one.
    Replay(replay::ReplayArgs),
    /// Serve a results page over a SQLite store: search, a page per file,
    /// an overview, and the same as JSON under /api/.
    Ui(ui::UiArgs),
    /// Show the JetStream streams and each consumer's backlog (per worker group and connector).
    Status {
        /// A node config whose [transport] is JetStream.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file; with --connect, also reach the transport and
    /// every datastore it names and say what answered.
    Check {
        file: PathBuf,
        /// Connect to the NATS servers and datastores (health check).
        #[arg(long)]
        connect: bool,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Compile every rule file and report errors with file and line.
    Check(RulesCheck),
}

#[derive(Args)]
struct RulesCheck {
    /// A rules file, or a folder searched for *.yar / *.yara.
    path: PathBuf,
    /// The engine to compile with: auto (YARA-X where the rules compile
    /// there, libyara otherwise, as the yara worker chooses), yara-x or libyara.
    #[arg(long, default_value = "auto")]
    engine: trawl_scanners::yara::EngineChoice,
}

/// Rust code allocates from mimalloc (see `allocator`); glibc's malloc
/// serves the C libraries, libyara and SQLite. It keeps a heap per scan
/// thread and gives back only the free memory at a heap's end, so freed
/// pages are returned from every heap ten times a second. glibc's own mmap
/// threshold is left to adapt: fixed at 256 KiB (from when payload buffers
/// came from glibc), it made libyara map and unmap a 572 KiB block for
/// every scan, and the TLB flushes that followed took the 1 KiB corpus with
/// one plain rule on libyara from 0.5 s to 0.9 s.
fn freed_memory_returned() {
    #[cfg(target_env = "gnu")]
    {
        const EVERY: std::time::Duration = std::time::Duration::from_millis(100);
        let trim = || loop {
            std::thread::sleep(EVERY);
            // SAFETY: malloc_trim takes each heap's lock; it frees nothing in use.
            unsafe {
                libc::malloc_trim(0);
            }
        };
        if let Err(e) = std::thread::Builder::new().name("trim".into()).spawn(trim) {
            eprintln!("trawl: warning: freed memory stays with the heaps: {e}");
        }
    }
}

fn main() -> ExitCode {
    freed_memory_returned();
    tls_provider_chosen();
    let cli = Cli::parse();
    // A node's log is a service log; a command's warnings are read by the
    // person who ran it, so they come without timestamps and module paths.
    let service = matches!(cli.command, Command::Node { .. });
    let default_level = if service { "info" } else { "warn" };
    log::init(cli.log.as_deref(), default_level, cli.log_json, service);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trawl: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trawl: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// NATS, MongoDB, Elasticsearch and AMQP connections all build their TLS
/// configs from rustls' process-wide provider. rustls picks one by itself only
/// while exactly one is compiled in, and a dependency that turns on a second
/// would make every TLS connection panic; naming ring here rules that out.
fn tls_provider_chosen() {
    // Err means a provider is already installed, which is all this wants.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Scan(args) => scan::run(args).await,
        Command::Node { config } => run_node(&config).await,
        Command::Config(ConfigCommand::Check { file, connect }) => {
            config_check(&file, connect).await
        }
        Command::Rules(RulesCommand::Check(args)) => rules_check(&args.path, args.engine),
        Command::Bench(args) => bench::run(args).await,
        Command::BenchStore(args) => bench_store::run(args).await,
        Command::Status { config } => status(&config).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Ui(args) => ui::run(args).await,
    }
}

/// `status` and `config check --connect` report; they do not wait for a
/// server the way a node does.
const STATUS_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn status(file: &Path) -> Result<ExitCode> {
    let config = trawl_config::load(file)?;
    let kind = &config.transport.kind;
    let connect = tokio::time::timeout(
        STATUS_CONNECT_TIMEOUT,
        trawl_node::transport_status(&config),
    );
    let Ok(streams) = connect.await else {
        anyhow::bail!(
            "{}: cannot reach the {kind:?} transport within {STATUS_CONNECT_TIMEOUT:?} (servers down, or wrong credentials?)",
            file.display()
        );
    };
    let Some(status) = streams? else {
        anyhow::bail!(
            "{}: transport is {kind:?}, which keeps no streams to report on",
            file.display(),
        );
    };
    let streams = &status.streams;
    println!(
        "{:<22} {:>10} {:>14} {:<32} {:<32}",
        "stream", "messages", "bytes", "first", "last"
    );
    for s in streams {
        println!(
            "{:<22} {:>10} {:>14} {:<32} {:<32}",
            s.name,
            s.messages,
            s.bytes,
            s.first.as_deref().unwrap_or("-"),
            s.last.as_deref().unwrap_or("-")
        );
    }
    println!(
        "\n{:<22} {:<28} {:>10} {:>12} {:>12} {:>8}",
        "stream", "consumer", "pending", "ack pending", "redelivered", "members"
    );
    for s in streams {
        for c in &s.consumers {
            let members = c.members.map_or("-".to_owned(), |n| n.to_string());
            println!(
                "{:<22} {:<28} {:>10} {:>12} {:>12} {:>8}",
                s.name, c.name, c.pending, c.ack_pending, c.redelivered, members
            );
        }
    }
    if !status.nodes.is_empty() {
        // The same names as a node's `progress` log line.
        let columns = [
            ("published", "published"),
            ("results_ok", "ok"),
            ("results_error", "error"),
            ("results_timeout", "timeout"),
            ("matched", "matched"),
            ("stored", "stored"),
            ("store_retries", "retries"),
            ("store_refused", "refused"),
            ("restarts", "restarts"),
        ];
        print!("\n{:<20}", "node");
        for (_, title) in columns {
            print!(" {title:>10}");
        }
        println!(" {:<20}", "seen");
        for n in &status.nodes {
            print!("{:<20}", n.node);
            for (key, _) in columns {
                match n.counters.get(key) {
                    Some(v) => print!(" {v:>10}"),
                    None => print!(" {:>10}", "-"),
                }
            }
            println!(" {}", n.at.format("%Y-%m-%dT%H:%M:%SZ"));
        }
    }
    if !status.groups.is_empty() {
        println!(
            "\n{:<20} {:<16} {:<34} {:<20} rules",
            "node", "group", "ruleset", "seen"
        );
        for g in &status.groups {
            let rules = match &g.rules_error {
                Some(e) => format!("NOT RELOADED: {e}"),
                None => "ok".to_owned(),
            };
            println!(
                "{:<20} {:<16} {:<34} {:<20} {rules}",
                g.node,
                g.group,
                g.ruleset.as_deref().unwrap_or("-"),
                g.at.format("%Y-%m-%dT%H:%M:%SZ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn config_check(file: &Path, connect: bool) -> Result<ExitCode> {
    let config = trawl_config::load(file)?;
    trawl_node::check_config(&config)?;
    println!(
        "{}: ok ({} source(s), {} worker group(s), {} connector(s), transport {})",
        file.display(),
        config.sources.len(),
        config.workers.len(),
        config.connectors.len(),
        config.transport.kind
    );
    if !connect {
        return Ok(ExitCode::SUCCESS);
    }
    let mut healthy = true;
    let reach = tokio::time::timeout(
        STATUS_CONNECT_TIMEOUT,
        trawl_node::transport_status(&config),
    )
    .await;
    match reach {
        Ok(Ok(Some(_))) => println!("transport: reached {:?}", config.transport.kind),
        Ok(Ok(None)) => println!("transport: in-process; nothing to connect to"),
        Ok(Err(e)) => {
            healthy = false;
            println!("transport: FAILED: {e}");
        }
        Err(_) => {
            healthy = false;
            println!("transport: FAILED: no answer within {STATUS_CONNECT_TIMEOUT:?}");
        }
    }
    let connectors = trawl_connectors::builtin_connectors();
    for c in config.connectors.values() {
        let health = async { connectors.get(&c.component)?.health(c).await };
        let answer = tokio::time::timeout(STATUS_CONNECT_TIMEOUT, health).await;
        match answer {
            Ok(Ok(what)) => println!("{}: {what}", c.component.key),
            Ok(Err(e)) => {
                healthy = false;
                println!("{}: FAILED: {e}", c.component.key);
            }
            Err(_) => {
                healthy = false;
                println!(
                    "{}: FAILED: no answer within {STATUS_CONNECT_TIMEOUT:?}",
                    c.component.key
                );
            }
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn rules_check(path: &Path, engine: trawl_scanners::yara::EngineChoice) -> Result<ExitCode> {
    match trawl_scanners::yara::compile(path, engine) {
        Ok(compiled) => {
            println!(
                "{}: ok ({} rules in {} file(s), ruleset {}, engine {})",
                path.display(),
                compiled.rule_count,
                compiled.files.len(),
                compiled.hash,
                compiled.engine.name()
            );
            if let Some(why) = &compiled.fallback {
                println!("libyara is used because {why}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(trawl_scanners::yara::RulesError::Compile(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "trawl: error: {} problem(s) in {}",
                problems.len(),
                path.display()
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

async fn run_node(file: &Path) -> Result<ExitCode> {
    let config = trawl_config::load(file)?;
    let transport = trawl_node::build_transport(&config).await?;
    let spec = trawl_node::spec_from_config(&config, transport)
        .await
        .with_context(|| format!("node {}", trawl_node::node_name(&config)))?;
    let mut node = trawl_node::Node::start(spec).await?;
    tracing::info!(node = %trawl_node::node_name(&config), config = %file.display(), "running; stop with Ctrl-C or SIGTERM");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = term.recv() => tracing::info!("terminated; shutting down"),
        failed = node.stopped() => return Err(failed.into()),
    }
    let report = node.shutdown().await?;
    if report.unfinished > 0 {
        eprintln!(
            "trawl: warning: shutdown grace period ran out with {} message(s) unhandled",
            report.unfinished
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
