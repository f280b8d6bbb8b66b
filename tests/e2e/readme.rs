//! Every command README.md shows, run as a new user runs it: in a fresh
//! clone of this repository, with `trawl` (and `cargo run --release --`)
//! standing for the binary under test, the placeholders README uses filled
//! in, and real servers where the configs name them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use trawl_testkit::{free_port, listening, NatsServer, StoreServer};

use crate::harness::{eicar, repo, rows, run, stderr, stdout, trawl, wait_for, Proc};

/// README's commands, in its order: a command added there without a run
/// here fails `readme_shows_exactly_the_commands_run_here`.
const SHOWN: &[&str] = &[
    "cargo run --release -- scan /path/to/files --rules rules/",
    "trawl ui --db trawl.db --listen 127.0.0.1:8080",
    "trawl config check config/standalone.toml",
    "trawl node --config config/standalone.toml",
    "trawl node --config config/store.toml",
    "trawl node --config config/scanner.toml",
    "trawl node --config config/sensor.toml",
    "trawl status --config config/store.toml",
    "trawl replay --config config/sensor.toml --since 7d --workers yara --wait",
    "trawl replay status --config config/sensor.toml",
    "trawl replay status --config config/sensor.toml ID --wait",
    "trawl replay cancel --config config/sensor.toml ID",
    "trawl replay --config config/standalone.toml --since 1d --workers yara",
    "trawl replay --archive DIR --db trawl.db --rules new-rules/ --since 7d",
];

/// The `trawl` and `cargo run` lines of README's shell blocks, comments cut.
fn readme_commands() -> Vec<String> {
    let text = fs::read_to_string(repo().join("README.md")).unwrap();
    let mut in_block = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let line = line.split(" #").next().unwrap().trim();
        if in_block && (line.starts_with("trawl ") || line.starts_with("cargo run")) {
            out.push(line.to_owned());
        }
    }
    out
}

#[test]
fn readme_shows_exactly_the_commands_run_here() {
    assert_eq!(readme_commands(), SHOWN);
}

/// A fresh clone of this repository, and README's placeholders.
struct Checkout {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// Placeholder → what stands for it here.
    fill: Vec<(&'static str, String)>,
    env: Vec<(&'static str, String)>,
}

impl Checkout {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("trawl");
        let out = run(Command::new("git")
            .args(["clone", "-q"])
            .arg(repo())
            .arg(&root));
        assert!(out.status.success(), "git clone: {}", stderr(&out));
        Checkout {
            _dir: dir,
            root,
            fill: Vec::new(),
            env: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// README's command `n`, as typed in the checkout.
    fn command(&self, n: usize) -> Command {
        let line = self
            .fill
            .iter()
            .fold(SHOWN[n].to_owned(), |l, (from, to)| l.replace(from, to));
        let args = line
            .strip_prefix("cargo run --release --")
            .or_else(|| line.strip_prefix("trawl"))
            .unwrap();
        let mut cmd = trawl();
        cmd.current_dir(&self.root)
            .args(args.split_whitespace())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Run README's command `n` to its end; it must succeed.
    fn ok(&self, n: usize) -> Output {
        let out = run(&mut self.command(n));
        assert!(
            out.status.success(),
            "{}: {}{}",
            SHOWN[n],
            stdout(&out),
            stderr(&out)
        );
        out
    }

    /// Start README's command `n` (a node).
    fn start(&self, n: usize) -> Proc {
        Proc::spawn(self.command(n).stdout(Stdio::null()))
    }
}

fn yara_rows(db: &Path) -> Vec<crate::harness::Row> {
    rows(db)
        .into_iter()
        .filter(|r| r.worker == "yara")
        .collect()
}

fn matched_eicar(row: &crate::harness::Row) -> bool {
    row.data["matches"][0]["rule"] == "EICAR_Test_File"
}

#[test]
fn the_embedded_commands_work_from_a_fresh_clone() {
    let mut c = Checkout::new();
    let files = c.path("../files");
    fs::create_dir_all(files.join("sub")).unwrap();
    fs::write(files.join("sub/eicar.com"), eicar()).unwrap();
    fs::write(files.join("notes.txt"), b"nothing to see").unwrap();
    c.fill = vec![
        ("/path/to/files", files.display().to_string()),
        ("DIR", "var/archive".into()),
        ("new-rules/", "rules/".into()),
    ];

    let scan = c.ok(0);
    let said = format!("{}{}", stdout(&scan), stderr(&scan));
    assert!(said.contains("2 files"), "the summary: {said}");
    let db = c.path("trawl.db");
    let hits: Vec<_> = yara_rows(&db).into_iter().filter(matched_eicar).collect();
    assert_eq!(hits.len(), 1, "the scan's results in trawl.db");

    let port = free_port();
    c.fill.push(("127.0.0.1:8080", format!("127.0.0.1:{port}")));
    let ui = c.start(1);
    wait_for("the results page", Duration::from_secs(30), || {
        listening(port)
    });
    let (status, page) = crate::ui::get(port, "/?q=EICAR_Test_File");
    assert_eq!(status, 200);
    assert!(
        page.contains("1 file(s)") && page.contains("eicar.com"),
        "{page}"
    );
    drop(ui);

    assert!(stdout(&c.ok(2)).contains("ok"));

    let node = c.start(3);
    let stored = c.path("var/trawl.db");
    wait_for("the node's store", Duration::from_secs(30), || {
        stored.exists()
    });
    // The folder it watches for, made as README says.
    let inbox = c.path("var/inbox");
    fs::create_dir_all(&inbox).unwrap();
    fs::write(inbox.join("eicar.com"), eicar()).unwrap();
    wait_for("the node's results", Duration::from_secs(60), || {
        yara_rows(&stored).iter().any(matched_eicar)
    });
    // Rescanned from the node's archive while the node runs.
    c.ok(12);
    wait_for("the replay's result", Duration::from_secs(30), || {
        yara_rows(&stored).len() == 2
    });
    let out = node.terminate();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(yara_rows(&stored).iter().all(matched_eicar));
    let lines = fs::read_to_string(c.path("var/results.jsonl")).unwrap();
    let replayed = lines
        .lines()
        .filter(|l| l.contains("\"replay_id\""))
        .count();
    assert_eq!(
        (lines.lines().count(), replayed),
        (4, 1),
        "the node's three results and the replay's, as JSON lines: {lines}"
    );

    // The node's archive, rescanned into the scan's database.
    c.ok(13);
    let all = yara_rows(&db);
    assert_eq!(all.len(), 3, "the scan's two results and the replay's");
    assert_eq!(all.iter().filter(|r| matched_eicar(r)).count(), 2);
}

#[test]
fn the_distributed_commands_work_from_a_fresh_clone() {
    let nats = NatsServer::start();
    let es = StoreServer::elasticsearch();
    let mongo = StoreServer::mongodb();
    let mut c = Checkout::new();
    let sensors = c.path("../sensors");
    let filestore = sensors.join("suricata/filestore");
    let extract = sensors.join("zeek/extract_files");
    fs::create_dir_all(&filestore).unwrap();
    fs::create_dir_all(&extract).unwrap();
    c.env = vec![
        ("TRAWL_NATS", nats.url()),
        ("TRAWL_ES", es.url()),
        ("TRAWL_MONGO", mongo.mongodb_uri()),
        ("TRAWL_SURICATA_FILESTORE", filestore.display().to_string()),
        (
            "TRAWL_SURICATA_EVE",
            sensors.join("suricata/eve.json").display().to_string(),
        ),
        ("TRAWL_ZEEK_EXTRACT", extract.display().to_string()),
        (
            "TRAWL_ZEEK_FILES_LOG",
            sensors.join("zeek/files.log").display().to_string(),
        ),
    ];
    let nodes = [c.start(4), c.start(5), c.start(6)];

    // A file each sensor carved, with the metadata it logs.
    let sha = trawl_core::sha256_hex(&eicar());
    fs::create_dir_all(filestore.join(&sha[..2])).unwrap();
    fs::write(filestore.join(&sha[..2]).join(&sha), eicar()).unwrap();
    let fileinfo = serde_json::json!({
        "event_type": "fileinfo", "src_ip": "10.0.0.1", "dest_ip": "10.0.0.2", "proto": "TCP",
        "fileinfo": {"filename": "dropper.com", "sha256": sha, "stored": true, "state": "CLOSED"},
    });
    fs::write(sensors.join("suricata/eve.json"), format!("{fileinfo}\n")).unwrap();
    fs::write(extract.join("extract-1-HTTP-FA"), b"a page zeek carved").unwrap();
    let logged = serde_json::json!({"fuid": "FA", "filename": "index.html",
        "extracted": "extract-1-HTTP-FA", "id.orig_h": "10.1.1.1"});
    fs::write(sensors.join("zeek/files.log"), format!("{logged}\n")).unwrap();

    let db = c.path("var/trawl.db");
    wait_for("both files' yara results", Duration::from_secs(90), || {
        yara_rows(&db).len() == 2
    });
    assert_eq!(
        yara_rows(&db).iter().filter(|r| matched_eicar(r)).count(),
        1
    );

    let status = stdout(&c.ok(7));
    assert!(status.contains("TRAWL_PAYLOADS"), "{status}");

    let replay = stdout(&c.ok(8));
    let id = replay.lines().next().unwrap().trim().to_owned();
    assert!(
        !id.is_empty() && !id.contains(' '),
        "the id comes first: {replay}"
    );
    c.fill = vec![("ID", id.clone())];
    wait_for("the replay's results", Duration::from_secs(60), || {
        yara_rows(&db).len() == 4
    });
    assert!(stdout(&c.ok(9)).contains(&id));
    c.ok(10);
    let cancel = run(&mut c.command(11));
    assert!(
        format!("{}{}", stdout(&cancel), stderr(&cancel)).contains(&id),
        "cancel names the replay: {}{}",
        stdout(&cancel),
        stderr(&cancel)
    );
    for node in nodes {
        let out = node.terminate();
        assert!(out.status.success(), "{}", stderr(&out));
    }
}
