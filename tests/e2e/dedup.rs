//! Identical files scanned once per worker group: later copies get the
//! earlier result, marked `cached_from`.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::distributed::{count, Cluster};
use crate::harness::*;
use trawl_testkit::NatsServer;

const GROUPS: &str = "[workers.hash]\ntype = \"hash\"\nconcurrency = 4\n\
                      [workers.yara]\ntype = \"yara\"\nrules = \"RULES\"\nconcurrency = 4\n";

fn groups() -> String {
    GROUPS.replace("RULES", &repo().join("rules").display().to_string())
}

/// [`groups`], looking up payloads of every size.
fn groups_any_size() -> String {
    groups().replace("concurrency = 4\n", "concurrency = 4\ndedup_min_size = 0\n")
}

fn source(name: &str) -> String {
    format!(
        "[sources.{name}]\ntype = \"dir\"\npath = \"inbox-{name}\"\nsettle = \"200ms\"\npoll_interval = \"100ms\"\n"
    )
}

/// 250 files in each of two sensors' folders, 5 distinct contents (one EICAR).
fn drop_copies(dir: &Path) {
    let distinct: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            if i == 0 {
                eicar()
            } else {
                noise(i, 3000 * i as usize)
            }
        })
        .collect();
    for sensor in ["a", "b"] {
        let inbox = dir.join(format!("inbox-{sensor}"));
        fs::create_dir_all(&inbox).unwrap();
        for i in 0..250 {
            fs::write(inbox.join(format!("{sensor}{i:03}")), &distinct[i % 5]).unwrap();
        }
    }
}

/// Per worker: results, those copied, and copies whose original is not a
/// scanned result of the same worker and content.
fn tally(db: &Path, worker: &str) -> (i64, i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let q = |sql: &str| -> i64 { conn.query_row(sql, [worker], |r| r.get(0)).unwrap() };
    (
        q("SELECT count(*) FROM results WHERE worker = ?1"),
        q("SELECT count(*) FROM results WHERE worker = ?1 AND cached_from IS NOT NULL"),
        q(
            "SELECT count(*) FROM results c WHERE c.worker = ?1 AND c.cached_from IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM results o WHERE o.id = c.cached_from
                 AND o.worker = c.worker AND o.sha256 = c.sha256 AND o.cached_from IS NULL
                 AND o.data = c.data)",
        ),
    )
}

fn assert_scanned_once_each(db: &Path) {
    for worker in ["hash", "yara"] {
        let (results, copies, orphans) = tally(db, worker);
        assert_eq!(results, 500, "{worker}: a result per file");
        assert_eq!(copies, 495, "{worker}: 5 scans, the rest copied");
        assert_eq!(orphans, 0, "{worker}: each copy names its scanned original");
    }
    let eicar_hits: i64 = one(
        db,
        "SELECT count(*) FROM yara_matches WHERE rule = 'EICAR_Test_File'",
        [],
    );
    assert_eq!(eicar_hits, 100, "copies keep their matches");
}

#[test]
fn embedded_identical_files_from_two_sensors_are_scanned_once_per_group() {
    let dir = tempfile::tempdir().unwrap();
    drop_copies(dir.path());
    let cfg = dir.path().join("node.toml");
    fs::write(
        &cfg,
        format!(
            "version = 1\n[node]\nname = \"n\"\ndata_dir = \"state\"\n{}{}{}\
             [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
            source("a"),
            source("b"),
            groups()
        ),
    )
    .unwrap();
    let db = dir.path().join("results.db");
    let node = start_node(&cfg);
    wait_for("1000 results", Duration::from_secs(120), || {
        count(&db) >= 1000
    });
    std::thread::sleep(Duration::from_millis(500));
    node.terminate();
    assert_scanned_once_each(&db);
}

#[test]
fn over_jetstream_identical_files_from_two_sensors_are_scanned_once_per_group() {
    let nats = NatsServer::start();
    let c = Cluster::new(&nats);
    drop_copies(c.path("").as_path());
    let store = c.store();
    let scanner = c.node("scanner", &groups_any_size());
    std::thread::sleep(Duration::from_secs(1));
    let a = c.node("sensor-a", &source("a"));
    let b = c.node("sensor-b", &source("b"));
    wait_for("1000 results", Duration::from_secs(120), || {
        count(&c.db()) >= 1000
    });
    std::thread::sleep(Duration::from_millis(500));
    for n in [a, b, scanner, store] {
        n.terminate();
    }
    assert_scanned_once_each(&c.db());
}

#[test]
fn dedup_ttl_zero_scans_every_copy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = inbox_node_config(
        dir.path(),
        "[workers.hash]\ntype = \"hash\"\ndedup_ttl = \"0\"\n\
         [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
    );
    for i in 0..20 {
        fs::write(dir.path().join("inbox").join(format!("f{i}")), b"same").unwrap();
    }
    let db = dir.path().join("results.db");
    let node = start_node(&cfg);
    wait_for("20 results", Duration::from_secs(60), || count(&db) >= 20);
    node.terminate();
    assert_eq!(tally(&db, "hash"), (20, 0, 0));
}

/// Over JetStream a lookup costs two round trips to the server, more than
/// scanning a small payload: by default only payloads of 64 KiB and more
/// are looked up.
#[test]
fn over_jetstream_small_payloads_are_scanned_every_time() {
    let nats = NatsServer::start();
    let c = Cluster::new(&nats);
    let inbox = c.path("inbox-a");
    fs::create_dir_all(&inbox).unwrap();
    let (small, large) = (noise(1, 1024), noise(2, 100 * 1024));
    for i in 0..20 {
        fs::write(inbox.join(format!("small{i:02}")), &small).unwrap();
        fs::write(inbox.join(format!("large{i:02}")), &large).unwrap();
    }
    let store = c.store();
    let scanner = c.node(
        "scanner",
        "[workers.hash]\ntype = \"hash\"\nconcurrency = 4\n",
    );
    std::thread::sleep(Duration::from_secs(1));
    let sensor = c.node("sensor-a", &source("a"));
    wait_for("40 results", Duration::from_secs(120), || {
        count(&c.db()) >= 40
    });
    std::thread::sleep(Duration::from_millis(500));
    for n in [sensor, scanner, store] {
        n.terminate();
    }
    let conn = rusqlite::Connection::open(c.db()).unwrap();
    let copies = |size: usize| -> (i64, i64) {
        conn.query_row(
            "SELECT count(*), count(cached_from) FROM results WHERE worker = 'hash' AND size = ?1",
            [size as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    assert_eq!(copies(1024), (20, 0), "small copies are each scanned");
    assert_eq!(copies(100 * 1024), (20, 19), "large copies are looked up");
}
