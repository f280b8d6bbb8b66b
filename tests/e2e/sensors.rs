//! Sensor sources end to end: a corpus laid out by `tests/corpus/make_corpus.sh`
//! is replayed into a live folder the way Suricata and Zeek write it, while
//! `trawl node` watches; every extraction event must reach the store exactly
//! once with the sensor's metadata, across restarts and crashes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::harness::*;
use trawl_testkit::NatsServer;

const EVENTS: usize = 60;

/// A corpus built once per test run (same seed, same machine: same corpus).
fn corpus() -> &'static Path {
    static CORPUS: OnceLock<PathBuf> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let out =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sensor-corpus-{EVENTS}"));
        if !out.join("report.txt").exists() {
            let _ = fs::remove_dir_all(&out);
            let built = run(Command::new("bash")
                .arg(repo().join("tests/corpus/make_corpus.sh"))
                .args(["-n", &EVENTS.to_string(), "--no-apt", "-o"])
                .arg(&out));
            assert!(built.status.success(), "make_corpus.sh: {}", stderr(&built));
        }
        out
    })
}

/// One extraction event of the corpus manifest.
#[derive(Debug, Clone)]
struct Event {
    file_id: u64,
    fuid: String,
    /// The data file's name in Suricata's file-store (its stored sha256).
    stored_sha: String,
    src_ip: String,
}

fn manifest() -> Vec<Event> {
    let text = fs::read_to_string(corpus().join("manifest.csv")).unwrap();
    let mut lines = text.lines();
    let header = split_csv(lines.next().unwrap());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let eve: BTreeMap<u64, String> = fs::read_to_string(corpus().join("suricata/eve.json"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["fileinfo"]["file_id"].as_u64().unwrap(),
                v["src_ip"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    lines
        .map(|l| {
            let f = split_csv(l);
            let file_id = f[col("file_id")].parse().unwrap();
            Event {
                file_id,
                fuid: f[col("fuid")].clone(),
                stored_sha: f[col("suricata_path")]
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned(),
                src_ip: eve[&file_id].clone(),
            }
        })
        .collect()
}

/// A CSV line with double-quoted fields (libmagic descriptions hold commas).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// What the store holds for the `hash` worker: one row per stored result.
struct Stored {
    path: String,
    sensor: String,
    outcome: String,
    flow: serde_json::Value,
    fields: serde_json::Value,
}

fn stored(db: &Path) -> Vec<Stored> {
    if !db.exists() {
        return Vec::new();
    }
    let conn = rusqlite::Connection::open(db).unwrap();
    let Ok(mut stmt) = conn.prepare(
        "SELECT path, sensor, outcome, coalesce(flow, 'null'), coalesce(fields, '{}') FROM results WHERE worker = 'hash'",
    ) else {
        return Vec::new();
    };
    let json = |s: String| serde_json::from_str(&s).unwrap();
    stmt.query_map([], |r| {
        Ok(Stored {
            path: r.get(0)?,
            sensor: r.get(1)?,
            outcome: r.get(2)?,
            flow: json(r.get(3)?),
            fields: json(r.get(4)?),
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Every Suricata event stored exactly once, joined by (data file, file_id),
/// with the flow from its eve line.
fn assert_suricata_complete(rows: &[Stored], sensor: &str) {
    let rows: Vec<&Stored> = rows.iter().filter(|r| r.sensor == sensor).collect();
    let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for r in &rows {
        assert_eq!(r.outcome, "ok", "{}", r.path);
        let name = r.path.rsplit('/').next().unwrap().to_owned();
        let id = r.fields["fileinfo"]["file_id"]
            .as_u64()
            .expect("file_id from the sensor");
        *seen.entry((name, id)).or_default() += 1;
    }
    for e in manifest() {
        let n = seen
            .get(&(e.stored_sha.clone(), e.file_id))
            .copied()
            .unwrap_or(0);
        assert_eq!(
            n, 1,
            "suricata event {} ({}) stored {n} times",
            e.file_id, e.stored_sha
        );
        let r = rows
            .iter()
            .find(|r| {
                r.path.ends_with(&e.stored_sha) && r.fields["fileinfo"]["file_id"] == e.file_id
            })
            .unwrap();
        assert_eq!(r.flow["src_ip"], e.src_ip.as_str());
    }
    assert_eq!(rows.len(), EVENTS);
}

/// Every Zeek event stored exactly once, joined by fuid, with its files.log metadata.
fn assert_zeek_complete(rows: &[Stored], sensor: &str) {
    let rows: Vec<&Stored> = rows.iter().filter(|r| r.sensor == sensor).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        assert_eq!(r.outcome, "ok", "{}", r.path);
        assert!(
            r.flow["src_ip"].is_string(),
            "flow from files.log: {}",
            r.path
        );
        assert!(
            r.fields["seen_bytes"].is_u64(),
            "files.log fields: {}",
            r.path
        );
        *seen
            .entry(r.fields["fuid"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for e in manifest() {
        assert_eq!(
            seen.get(&e.fuid).copied().unwrap_or(0),
            1,
            "zeek fuid {}",
            e.fuid
        );
    }
    assert_eq!(rows.len(), EVENTS);
}

fn replay(kind: &str, dest: &Path, delay: &str) -> Proc {
    Proc::spawn(
        Command::new("bash")
            .arg(repo().join("tests/corpus/make_corpus.sh"))
            .arg(format!("--replay-{kind}"))
            .arg(corpus())
            .arg(dest)
            .args(["--delay", delay])
            .stdout(Stdio::null()),
    )
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The sensors' folders exist before trawl starts, as on a sensor box.
        fs::create_dir_all(dir.path().join("suricata/filestore")).unwrap();
        fs::create_dir_all(dir.path().join("zeek/extract_files")).unwrap();
        Site { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn node(&self, transport: &str, sources: &str) -> PathBuf {
        let cfg = self.path("node.toml");
        fs::write(
            &cfg,
            format!(
                "version = 1\n[node]\nname = \"sensor-box\"\ndata_dir = \"state\"\nshutdown_grace = \"30s\"\n\
                 [transport]\n{transport}\n{sources}\n\
                 [workers.hash]\ntype = \"hash\"\n\
                 [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n"
            ),
        )
        .unwrap();
        cfg
    }

    /// Start a node; its log goes to `node.log`, appended across restarts.
    fn start(&self, cfg: &Path) -> Proc {
        Proc::logging_to(
            trawl()
                .args(["node", "--config"])
                .arg(cfg)
                .stdout(Stdio::null()),
            &self.path("node.log"),
        )
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("node.log")).unwrap_or_default()
    }

    /// SIGTERM and a clean exit.
    fn stop(&self, node: Proc) {
        let out = node.terminate();
        assert!(out.status.success(), "{}", self.log());
        assert!(!self.log().contains("panicked"), "{}", self.log());
    }

    fn rows(&self) -> Vec<Stored> {
        stored(&self.path("results.db"))
    }
}

const SURICATA_EVE: &str = "[sources.suricata]\ntype = \"suricata\"\npath = \"suricata/filestore\"\neve = \"suricata/eve.json\"\npoll_interval = \"100ms\"\n";
const SURICATA_SIDECARS: &str =
    "[sources.suricata]\ntype = \"suricata\"\npath = \"suricata/filestore\"\npoll_interval = \"100ms\"\n";
const ZEEK: &str = "[sources.zeek]\ntype = \"zeek\"\npath = \"zeek/extract_files\"\nfiles_log = \"zeek/files.log\"\npoll_interval = \"100ms\"\n";

/// Replay both sensors into the live folders while a node runs `cfg`,
/// `interrupt` it a third of the way in, start it again, and check that
/// every event of the corpus is stored exactly once with its metadata.
fn replay_through_an_interruption(
    site: &Site,
    cfg: &Path,
    interrupt: impl FnOnce(Proc),
    settle: Duration,
) {
    let node = site.start(cfg);
    let suricata = replay("suricata", &site.path("suricata"), "0.03");
    let zeek = replay("zeek", &site.path("zeek"), "0.03");
    wait_for("a third of the events", Duration::from_secs(60), || {
        site.rows().len() >= EVENTS * 2 / 3
    });
    interrupt(node);
    assert!(
        site.rows().len() < EVENTS * 2,
        "the interruption must come mid-replay"
    );
    let node = site.start(cfg);
    for r in [suricata, zeek] {
        let out = r.wait();
        assert!(
            out.status.success(),
            "replay: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for("every event stored", settle, || {
        site.rows().len() >= EVENTS * 2
    });
    std::thread::sleep(Duration::from_secs(1));
    site.stop(node);
    let rows = site.rows();
    assert_suricata_complete(&rows, "suricata");
    assert_zeek_complete(&rows, "zeek");
}

#[test]
fn suricata_and_zeek_replays_are_stored_once_each_across_a_restart() {
    let site = Site::new();
    let cfg = site.node("type = \"memory\"", &format!("{SURICATA_EVE}{ZEEK}"));
    // A clean restart in the middle of both replays.
    replay_through_an_interruption(&site, &cfg, |node| site.stop(node), Duration::from_secs(60));
}

#[test]
fn embedded_a_node_killed_mid_replay_loses_and_duplicates_nothing() {
    let site = Site::new();
    let cfg = site.node("type = \"memory\"", &format!("{SURICATA_EVE}{ZEEK}"));
    // What the killed process held in memory is published again, under the
    // same payload ids, by the next run: files are checkpointed only once
    // their results are stored.
    replay_through_an_interruption(&site, &cfg, Proc::kill9, Duration::from_secs(60));
}

#[test]
fn over_jetstream_a_node_killed_mid_replay_loses_and_duplicates_nothing() {
    let nats = NatsServer::start();
    let site = Site::new();
    let transport = format!("type = \"jetstream\"\nservers = [\"{}\"]", nats.url());
    let cfg = site.node(&transport, &format!("{SURICATA_SIDECARS}{ZEEK}"));
    // Work the killed node held is redelivered once its ack deadlines pass.
    replay_through_an_interruption(&site, &cfg, Proc::kill9, Duration::from_secs(150));
}

#[test]
fn a_burst_of_10000_files_is_stored_once_each() {
    let site = Site::new();
    fs::create_dir_all(site.path("burst")).unwrap();
    let cfg = site.node(
        "type = \"memory\"",
        "[sources.burst]\ntype = \"dir\"\npath = \"burst\"\nsettle = \"200ms\"\npoll_interval = \"100ms\"\nhigh_water_files = 5000\n",
    );
    let node = site.start(&cfg);
    for i in 0..10_000u32 {
        fs::write(site.path(&format!("burst/f{i:05}")), i.to_le_bytes()).unwrap();
    }
    wait_for("10,000 results", Duration::from_secs(120), || {
        site.rows().len() >= 10_000
    });
    std::thread::sleep(Duration::from_millis(500));
    site.stop(node);
    let log = site.log();
    let rows = site.rows();
    assert_eq!(rows.len(), 10_000);
    let paths: std::collections::BTreeSet<_> = rows.iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 10_000, "no file twice");
    assert!(
        log.contains("high-water mark"),
        "the backlog is reported: {log}"
    );
}
