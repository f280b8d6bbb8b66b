//! `trawl replay`: scan again what the sensors already saw, with the rules
//! loaded now, beside the original results.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use trawl_transport::{ReplayProgress, ReplayRequest, ReplayState, Replays};

mod embedded;

/// Rescan stored payloads through worker groups, with the rules they run
/// now. The first line printed is the replay's id; its results carry it
/// and are stored beside the originals.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ReplayArgs {
    #[command(subcommand)]
    command: Option<ReplayCommand>,
    #[command(flatten)]
    start: StartArgs,
}

#[derive(Args)]
struct StartArgs {
    /// A node config. Over JetStream only its [transport] is used; in the
    /// embedded mode its [node] archive is read, its worker groups scan and
    /// its connectors store.
    #[arg(long, short, required_unless_present = "archive")]
    config: Option<PathBuf>,
    /// Without a config: the archive `trawl scan --archive DIR` kept.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    archive: Option<PathBuf>,
    /// With --archive: the SQLite database the original results are in,
    /// and the replay's results go to.
    #[arg(long, default_value = "trawl.db", requires = "archive")]
    db: PathBuf,
    /// With --archive: the YARA rules to scan with (a file or a folder).
    #[arg(long, default_value = "rules", requires = "archive")]
    rules: PathBuf,
    /// With --archive: the YARA engine (auto, yara-x or libyara).
    #[arg(long, default_value = "auto", requires = "archive")]
    engine: trawl_scanners::yara::EngineChoice,
    /// Payloads stored from this time: RFC 3339 (2026-12-01T00:00:00Z) or
    /// an age (90m, 36h, 7d). Default: the oldest still stored.
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Payloads stored up to this time (same forms). Default: now.
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// Worker groups to scan them again, comma-separated. Default: every
    /// group that takes payloads from the stream.
    #[arg(long, value_delimiter = ',')]
    workers: Vec<String>,
    /// Only payloads these sources (sensor names) published, comma-separated.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<String>,
    /// Only payloads whose sha256 is listed in this file (one per line).
    #[arg(long, value_name = "FILE")]
    sha256: Option<PathBuf>,
    /// Show progress and return once every scan of the replay is done.
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand)]
enum ReplayCommand {
    /// List replays (range, groups, total, done, errors, state), or show one.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// One replay's id.
        id: Option<String>,
        /// With an id: follow the replay until it is done (reattach).
        #[arg(long, requires = "id")]
        wait: bool,
    },
    /// Stop a replay: its remaining payloads are not scanned.
    Cancel {
        #[arg(long, short)]
        config: PathBuf,
        id: String,
    },
}

/// How often progress is read.
const POLL: Duration = Duration::from_millis(500);
/// A replay does not wait for a server the way a node does.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The config of `trawl replay --archive DIR --db DB --rules R`: the
/// archive, yara (or `--workers`) with those rules, results into DB.
fn archive_config(dir: &Path, args: &StartArgs) -> Result<trawl_config::Config> {
    use toml::{Table, Value};
    let mut doc = Table::new();
    doc.insert("version".into(), Value::Integer(1));
    let path = |p: &Path| Value::String(p.to_string_lossy().into_owned());
    doc.insert(
        "node".into(),
        Value::Table(Table::from_iter([("archive".to_owned(), path(dir))])),
    );
    let kinds = if args.workers.is_empty() {
        vec!["yara".to_owned()]
    } else {
        args.workers.clone()
    };
    let mut workers = Table::new();
    for kind in kinds {
        let mut w = Table::from_iter([("type".to_owned(), Value::String(kind.clone()))]);
        if kind == "yara" {
            w.insert("rules".into(), path(&args.rules));
            w.insert("engine".into(), Value::String(args.engine.to_string()));
        }
        workers.insert(kind, Value::Table(w));
    }
    doc.insert("workers".into(), Value::Table(workers));
    let mut db = Table::from_iter([
        ("type".to_owned(), Value::from("sqlite")),
        ("path".to_owned(), path(&args.db)),
    ]);
    crate::scan::for_backlog(&mut db);
    doc.insert(
        "connectors".into(),
        Value::Table(Table::from_iter([("sqlite".to_owned(), Value::Table(db))])),
    );
    let text = toml::to_string(&doc).context("cannot build the replay config")?;
    Ok(trawl_config::parse(Path::new("<command line>"), &text)?)
}

/// An RFC 3339 time, or an age before now (`90m`, `7d`).
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: give an RFC 3339 time or an age such as 90m or 7d"))?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{text:?}: give an RFC 3339 time or an age such as 90m or 7d"))?;
    let age = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        "w" => chrono::Duration::try_weeks(n),
        _ => None,
    }
    .ok_or_else(|| format!("{text:?}: an age is a number and one of s, m, h, d, w"))?;
    Ok(Utc::now() - age)
}

fn sha256_list(path: &Path) -> Result<BTreeSet<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--sha256 {}", path.display()))?;
    let mut set = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let h = line.trim().to_ascii_lowercase();
        if h.is_empty() || h.starts_with('#') {
            continue;
        }
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "{}:{}: not a sha256: {:?}",
                path.display(),
                i + 1,
                line.trim()
            );
        }
        set.insert(h);
    }
    if set.is_empty() {
        bail!("{}: no sha256 listed", path.display());
    }
    Ok(set)
}

async fn connect(file: &Path) -> Result<Box<dyn Replays>> {
    let config = trawl_config::load(file)?;
    let kind = config.transport.kind.clone();
    let reach = tokio::time::timeout(CONNECT_TIMEOUT, trawl_node::transport_replays(&config));
    let Ok(replays) = reach.await else {
        bail!(
            "{}: cannot reach the {kind:?} transport within {CONNECT_TIMEOUT:?} (servers down, or wrong credentials?)",
            file.display()
        );
    };
    match replays? {
        Some(r) => Ok(r),
        None => bail!(
            "{}: transport {kind:?} keeps no payloads once they are scanned, so there is nothing to replay from: use JetStream",
            file.display()
        ),
    }
}

pub async fn run(args: ReplayArgs) -> Result<ExitCode> {
    match args.command {
        Some(ReplayCommand::Status { config, id, wait }) => {
            let replays = connect(&config).await?;
            match id {
                Some(id) if wait => follow(replays.as_ref(), &id).await,
                Some(id) => {
                    print_table(&[replays.progress(&id).await?]);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    let all = replays.list().await?;
                    if all.is_empty() {
                        println!("no replays");
                    } else {
                        print_table(&all);
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Some(ReplayCommand::Cancel { config, id }) => {
            let replays = connect(&config).await?;
            let p = replays.cancel(&id).await?;
            println!(
                "replay {id} cancelled after {} of {} scans",
                p.done,
                p.scans()
            );
            Ok(ExitCode::SUCCESS)
        }
        None => start(args.start).await,
    }
}

async fn start(args: StartArgs) -> Result<ExitCode> {
    let now = Utc::now();
    let since = args.since.unwrap_or(DateTime::UNIX_EPOCH);
    let until = args.until.unwrap_or(now);
    // A little slack: `--until now` typed a moment ago is not in the future.
    let future = now + chrono::Duration::seconds(5);
    for (flag, t) in [("--since", since), ("--until", until)] {
        if t > future {
            bail!("{flag} {} is in the future", t.to_rfc3339());
        }
    }
    if since > until {
        bail!(
            "--since {} is after --until {}",
            since.to_rfc3339(),
            until.to_rfc3339()
        );
    }
    let sha256 = args.sha256.as_deref().map(sha256_list).transpose()?;
    let config = match (&args.config, &args.archive) {
        (Some(file), _) => trawl_config::load(file)?,
        (None, Some(dir)) => archive_config(dir, &args)?,
        (None, None) => unreachable!("clap requires --config or --archive"),
    };
    let in_process = trawl_transport::builtin_transports()
        .get(&config.transport)?
        .in_process();
    if in_process {
        return embedded::replay(config, &args, since, until, sha256).await;
    }
    let config = config.file;
    let replays = connect(&config).await?;
    let record = replays
        .start(&ReplayRequest {
            since,
            until,
            groups: args.workers,
            sources: args.sources,
            sha256,
        })
        .await?;
    println!("{}", record.id);
    eprintln!(
        "replay {}: {} payload(s) from {} to {} through {}",
        record.id,
        record.total,
        record.since.to_rfc3339(),
        record.until.to_rfc3339(),
        record.groups.join(", ")
    );
    if !args.wait {
        eprintln!(
            "follow it with: trawl replay status --config {} {} --wait",
            config.display(),
            record.id
        );
        return Ok(ExitCode::SUCCESS);
    }
    follow(replays.as_ref(), &record.id).await
}

/// Show `id`'s progress until it is complete, then its summary.
async fn follow(replays: &dyn Replays, id: &str) -> Result<ExitCode> {
    let bar = (std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::no_length();
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} scans, {per_sec}, ETA {eta}",
            )
            .expect("valid template"),
        );
        bar
    });
    crate::log::above(bar.clone());
    let started = Instant::now();
    let mut said = Instant::now();
    let progress = loop {
        let p = replays.progress(id).await?;
        if let Some(bar) = &bar {
            bar.set_length(p.scans());
            bar.set_position(p.done);
        } else if said.elapsed() >= Duration::from_secs(10) {
            eprintln!("replay {id}: {}/{} scans", p.done, p.scans());
            said = Instant::now();
        }
        if p.complete() || p.record.state == ReplayState::Cancelled {
            break p;
        }
        tokio::time::sleep(POLL).await;
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    crate::log::above(None);
    if progress.record.state == ReplayState::Cancelled {
        println!(
            "replay {id} was cancelled after {} of {} scans",
            progress.done,
            progress.scans()
        );
        return Ok(ExitCode::FAILURE);
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let gained = replays.new_matches(id).await?;
    println!(
        "replay {id} done: {} payload(s) × {} group(s) = {} scans ({:.1} scans/s while followed), {} error(s)",
        progress.record.total,
        progress.record.groups.len(),
        progress.scans(),
        progress.scans() as f64 / secs,
        progress.errors
    );
    println!(
        "{gained} payload(s) gained matches against their previous result; list them with \
         sqlite3 DB \"SELECT * FROM replay_new_matches WHERE replay_id = '{id}'\", \
         or in Elasticsearch/MongoDB: trawl.replay_id:{id} and trawl.replay.new_matches:*"
    );
    Ok(ExitCode::SUCCESS)
}

fn print_table(all: &[ReplayProgress]) {
    println!(
        "{:<26} {:<10} {:<20} {:<20} {:<20} {:>8} {:>10} {:>7}",
        "id", "state", "since", "until", "groups", "total", "done", "errors"
    );
    let short = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    for p in all {
        let state = if p.complete() {
            "done"
        } else {
            p.record.state.as_str()
        };
        println!(
            "{:<26} {:<10} {:<20} {:<20} {:<20} {:>8} {:>10} {:>7}",
            p.record.id,
            state,
            short(p.record.since),
            short(p.record.until),
            p.record.groups.join(","),
            p.record.total,
            format!("{}/{}", p.done, p.scans()),
            p.errors
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let t = parse_time("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-01T10:00:00+00:00");
        let before = Utc::now();
        let age = before - parse_time("90m").unwrap();
        assert!((age.num_seconds() - 5400).abs() < 5, "{age}");
        let age = before - parse_time("7d").unwrap();
        assert_eq!((age + chrono::Duration::seconds(5)).num_days(), 7);
        for bad in ["", "7", "7x", "m", "yesterday", "99999999999999999999d"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
