//! `trawl scan`: embedded mode. The in-process transport, the same actors and
//! workers as a node, results into SQLite and/or JSON lines.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use trawl_node::{Node, Snapshot};
use trawl_transport::{MemoryParams, MemoryTransport};

/// Results per write in runs over a backlog (`trawl scan`, an archive
/// replay), where results come faster than the flush interval. Each SQLite
/// commit rewrites every index page its rows touch, and result ids and
/// sha256s fall all over those indexes: on 10,000 files of 1 KiB,
/// `--workers hash,filetype` took 1.25 CPU-s in 500-row commits and 0.95 in
/// 2,000-row ones (5,000 gave the same). The flush interval still bounds how
/// long a result waits.
const BACKLOG_BATCH: i64 = 2000;

/// A connector's settings in a run over a backlog: stored within a tenth of
/// a second, as the progress bar counts, in commits of `BACKLOG_BATCH`.
pub(crate) fn for_backlog(connector: &mut toml::Table) {
    connector.insert("flush_interval".into(), "100ms".into());
    connector.insert("batch_size".into(), toml::Value::Integer(BACKLOG_BATCH));
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Files and folders to scan (folders recursively).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// YARA rules: a file, or a folder of *.yar / *.yara files.
    #[arg(long, default_value = "rules")]
    pub rules: PathBuf,
    /// YARA engine: auto (YARA-X where the rules compile there, libyara
    /// otherwise), yara-x or libyara.
    #[arg(long, default_value = "auto")]
    pub engine: trawl_scanners::yara::EngineChoice,
    /// Worker groups to run, comma-separated: any of hash, filetype, yara,
    /// pe, elf, exif, extract, clamav (each with its default settings).
    #[arg(long, value_delimiter = ',', default_value = "hash,filetype,yara")]
    pub workers: Vec<String>,
    /// Digests the hash worker computes, comma-separated: any of md5, sha1,
    /// sha256, sha512, ssdeep, tlsh [default: md5,sha1,sha256].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub hashes: Option<Vec<String>>,
    /// SQLite database the results go to.
    #[arg(long, default_value = "trawl.db")]
    pub db: PathBuf,
    /// Do not write SQLite (use with --jsonl).
    #[arg(long)]
    pub no_db: bool,
    /// Also write results as JSON lines to FILE, or to standard output with `-`.
    #[arg(long, value_name = "FILE")]
    pub jsonl: Option<String>,
    /// Follow symlinks found inside folders (loops are detected and reported).
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Files larger than this many bytes are recorded as errors, not read.
    #[arg(long, default_value_t = 512 * 1024 * 1024)]
    pub max_size: u64,
    /// Scans run at once per worker group (default: twice the number of CPUs).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Per-scan timeout, e.g. "30s".
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    /// Keep every file scanned (bytes and event) in this folder, so
    /// `trawl replay --archive DIR` can scan it again with other rules.
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
    /// No progress bar and no summary.
    #[arg(long, short)]
    pub quiet: bool,
}

/// What a finished scan did, for the summary and for `trawl bench`.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub unreadable: u64,
    pub metrics: Snapshot,
}

/// Build the equivalent node config, so `scan` validates exactly as a config file does.
fn config_for(args: &ScanArgs) -> Result<trawl_config::Config> {
    use toml::{Table, Value};
    let mut doc = Table::new();
    doc.insert("version".into(), Value::Integer(1));
    if let Some(dir) = &args.archive {
        let node = Table::from_iter([(
            "archive".to_owned(),
            Value::String(dir.to_string_lossy().into_owned()),
        )]);
        doc.insert("node".into(), Value::Table(node));
    }
    let mut workers = Table::new();
    for kind in &args.workers {
        let mut w = Table::new();
        w.insert("type".into(), Value::String(kind.clone()));
        w.insert("timeout".into(), Value::String(args.timeout.clone()));
        if let Some(n) = args.concurrency {
            w.insert("concurrency".into(), Value::Integer(n as i64));
        }
        if kind == "yara" {
            w.insert(
                "rules".into(),
                Value::String(args.rules.to_string_lossy().into_owned()),
            );
            w.insert("engine".into(), Value::String(args.engine.to_string()));
        }
        if let (Some(list), "hash") = (&args.hashes, kind.as_str()) {
            let list = list.iter().cloned().map(Value::String).collect();
            w.insert("algorithms".into(), Value::Array(list));
        }
        workers.insert(kind.clone(), Value::Table(w));
    }
    doc.insert("workers".into(), Value::Table(workers));
    let mut files = Table::new();
    files.insert("type".into(), "files".into());
    let paths = args.paths.iter().map(|p| p.to_string_lossy().into_owned());
    files.insert(
        "paths".into(),
        Value::Array(paths.map(Value::String).collect()),
    );
    files.insert("follow_symlinks".into(), args.follow_symlinks.into());
    files.insert(
        "max_size".into(),
        Value::Integer(args.max_size.min(i64::MAX as u64) as i64),
    );
    let sources = Table::from_iter([("cli".to_owned(), Value::Table(files))]);
    doc.insert("sources".into(), Value::Table(sources));
    let mut connectors = Table::new();
    if !args.no_db {
        let mut c = Table::new();
        c.insert("type".into(), "sqlite".into());
        c.insert(
            "path".into(),
            Value::String(args.db.to_string_lossy().into_owned()),
        );
        connectors.insert("sqlite".into(), Value::Table(c));
    }
    if let Some(path) = &args.jsonl {
        let mut c = Table::new();
        c.insert("type".into(), "jsonl".into());
        c.insert("path".into(), Value::String(path.clone()));
        connectors.insert("jsonl".into(), Value::Table(c));
    }
    for (_, c) in connectors.iter_mut() {
        if let Value::Table(c) = c {
            for_backlog(c);
        }
    }
    if connectors.is_empty() {
        bail!(
            "--no-db leaves nowhere to store results: add --jsonl FILE (or - for standard output)"
        );
    }
    doc.insert("connectors".into(), Value::Table(connectors));
    let text = toml::to_string(&doc).context("cannot build the scan config")?;
    Ok(trawl_config::parse(Path::new("<command line>"), &text)?)
}

pub async fn run(mut args: ScanArgs) -> Result<ExitCode> {
    // A path named on the command line that cannot be read is the user's
    // mistake, told at once and in the exit code (as `yara` and `rg` do);
    // the others are still scanned. Files found inside folders that cannot
    // be read stay error results.
    let (readable, unreadable): (Vec<PathBuf>, Vec<PathBuf>) = std::mem::take(&mut args.paths)
        .into_iter()
        .partition(|p| match cannot_read(p) {
            Some(why) => {
                eprintln!("trawl: error: {}: {why}", p.display());
                false
            }
            None => true,
        });
    args.paths = readable;
    if args.paths.is_empty() {
        return Ok(ExitCode::from(2));
    }
    let summary = scan(&args).await?;
    if !args.quiet {
        print_summary(&args, &summary);
    }
    Ok(if unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Why `path` cannot be read, if it cannot.
fn cannot_read(path: &Path) -> Option<std::io::Error> {
    match std::fs::metadata(path) {
        Err(e) => Some(e),
        Ok(m) if m.is_dir() => std::fs::read_dir(path).err(),
        Ok(_) => std::fs::File::open(path).err(),
    }
}

/// Run one embedded scan to completion.
pub async fn scan(args: &ScanArgs) -> Result<Summary> {
    if args.workers.is_empty() {
        bail!("--workers is empty: name at least one worker type (e.g. hash,filetype,yara)");
    }
    run_to_end(&config_for(args)?, !args.quiet).await
}

/// Run an embedded node whose sources end (`files`, `archive`) until
/// everything they published is stored.
pub async fn run_to_end(config: &trawl_config::Config, progress: bool) -> Result<Summary> {
    let memory = MemoryTransport::new(MemoryParams::default());
    let transport = trawl_node::archived(config, Arc::new(memory.clone()))?;
    let spec = trawl_node::spec_from_config(config, transport).await?;
    let per_file = (spec.workers.len() * spec.connectors.len()).max(1) as u64;

    let start = Instant::now();
    let node = Node::start(spec).await?;
    let bar = progress.then(progress_bar).flatten();
    crate::log::above(bar.clone());
    let ticker = bar.clone().map(|bar| {
        let metrics = node.metrics().clone();
        tokio::spawn(async move {
            loop {
                let m = metrics.snapshot();
                // Until the files are listed the total is unknown, not zero.
                if m.folder_files > 0 {
                    bar.set_length(m.folder_files);
                }
                bar.set_position(m.stored / per_file);
                let secs = bar.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!(
                    "{:.1}/{:.1} MB, {:.0} files/s",
                    (m.stored_bytes / per_file) as f64 / 1e6,
                    m.folder_bytes as f64 / 1e6,
                    bar.position() as f64 / secs
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    // Intake is the `files` source; the scan is over once it has read
    // everything and the in-process transport holds nothing unhandled.
    node.sources_finished().await;
    memory.wait_idle().await;
    let metrics = node.metrics().clone();
    node.shutdown().await?;
    if let Some(t) = ticker {
        t.abort();
    }
    crate::log::above(None);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let m = metrics.snapshot();
    Ok(Summary {
        files: m.folder_files,
        bytes: m.folder_bytes,
        seconds: start.elapsed().as_secs_f64(),
        unreadable: m.unreadable,
        metrics: m,
    })
}

fn progress_bar() -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::no_length();
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} files, {msg}, ETA {eta}",
        )
        .expect("valid template"),
    );
    Some(bar)
}

fn print_summary(args: &ScanArgs, s: &Summary) {
    let m = &s.metrics;
    let secs = s.seconds.max(1e-9);
    let lines = [
        format!(
            "scanned {} files ({:.1} MB) in {:.2} s: {:.1} files/s, {:.1} MB/s",
            s.files,
            s.bytes as f64 / 1e6,
            s.seconds,
            s.files as f64 / secs,
            s.bytes as f64 / 1e6 / secs
        ),
        format!(
            "results: {} ok ({} copied from identical files), {} errors, {} timeouts; {} with rule matches; {} file(s) unreadable",
            m.results_ok, m.results_cached, m.results_error, m.results_timeout, m.results_matched, s.unreadable
        ),
        match (&args.no_db, &args.jsonl) {
            (false, _) => format!(
                "stored in {} (try: sqlite3 {} \"SELECT filename, rule FROM yara_matches\")",
                args.db.display(),
                args.db.display()
            ),
            (true, Some(p)) => format!("stored as JSON lines in {p}"),
            (true, None) => String::new(),
        },
    ];
    // Keep standard output for results when they stream there.
    let to_stderr = args.jsonl.as_deref() == Some("-");
    for line in lines.iter().filter(|l| !l.is_empty()) {
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}
