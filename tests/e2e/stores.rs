//! One node writing to Elasticsearch, MongoDB and SQLite at once, through
//! an outage of one of them (servers speaking those protocols, see
//! tests/run.sh).

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use mongodb::bson::doc;
use serde_json::json;

use trawl_testkit::{es_client, es_count, StoreServer};

use crate::harness::*;

/// A node with a folder source, two workers and three stores at once.
#[test]
fn one_node_writes_to_elasticsearch_mongodb_and_sqlite_and_rides_out_an_outage() {
    let es = StoreServer::elasticsearch();
    let mongo = StoreServer::mongodb();
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    fs::create_dir_all(&inbox).unwrap();
    let cfg = inbox_node_config(
        dir.path(),
        &format!(
            "[workers.hash]\ntype = \"hash\"\n[workers.yara]\ntype = \"yara\"\nrules = \"{rules}\"\n\
             [connectors.search]\ntype = \"elasticsearch\"\nurls = [\"{es}\"]\ntimeout = \"1s\"\nflush_interval = \"100ms\"\n\
             [connectors.mongo]\ntype = \"mongodb\"\nuri = \"{mongo}\"\ntimeout = \"2s\"\nflush_interval = \"100ms\"\n\
             [connectors.local]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
            rules = repo().join("rules").display(),
            es = es.url(),
            mongo = mongo.mongodb_uri(),
        ),
    );
    let check = run(trawl().args(["config", "check", "--connect"]).arg(&cfg));
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(
        stdout(&check).contains("connectors.search: opensearch"),
        "{}",
        stdout(&check)
    );
    assert!(
        stdout(&check).contains("connectors.mongo: mongodb"),
        "{}",
        stdout(&check)
    );

    let node = Proc::spawn(
        trawl()
            .args(["node", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null()),
    );
    fs::write(inbox.join("eicar.com"), eicar()).unwrap();
    for i in 0..20 {
        fs::write(inbox.join(format!("f{i}")), noise(i, 2000)).unwrap();
    }
    let rt = rt();
    let client = es_client(&es.url());
    let es_total = || rt.block_on(es_count(&client, "trawl-*", json!({"match_all": {}})));
    wait_for(
        "first results in elasticsearch",
        Duration::from_secs(30),
        || es_total() >= 10,
    );
    // Elasticsearch stops answering mid-run; files keep coming.
    es.pause();
    for i in 20..40 {
        fs::write(inbox.join(format!("f{i}")), noise(i, 2000)).unwrap();
    }
    wait_for("sqlite to get everything", Duration::from_secs(30), || {
        rows(&dir.path().join("results.db")).len() == 82
    });
    std::thread::sleep(Duration::from_secs(2));
    es.resume();
    wait_for("elasticsearch to catch up", Duration::from_secs(60), || {
        es_total() >= 82
    });
    std::thread::sleep(Duration::from_secs(1));
    let out = node.terminate();
    assert!(out.status.success());
    assert_eq!(es_total(), 82, "41 files × 2 workers, each once");
    let eicar_sha = coreutils_digest_bytes(&eicar());
    assert_eq!(
        rt.block_on(es_count(
            &client,
            "trawl-yara",
            json!({"term": {"file.hash.sha256": eicar_sha}})
        )),
        1
    );
    rt.block_on(async {
        let m = mongodb::Client::with_uri_str(mongo.mongodb_uri())
            .await
            .unwrap();
        let db = m.database("trawl");
        for w in ["hash", "yara"] {
            let n = db
                .collection::<mongodb::bson::Document>(w)
                .count_documents(doc! {})
                .await
                .unwrap();
            assert_eq!(n, 41, "{w}");
        }
    });
}

fn coreutils_digest_bytes(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// `trawl bench-store` drains its results through the node's real connector
/// actor: every one of them is in the store when it prints its figure.
#[test]
fn bench_store_stores_every_result_it_times() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let cfg = dir.path().join("store.toml");
    fs::write(
        &cfg,
        format!(
            "version = 1\n[connectors.local]\ntype = \"sqlite\"\npath = {:?}\nbatch_size = 100\nflush_interval = \"50ms\"\n",
            db.display().to_string()
        ),
    )
    .unwrap();
    let out = run(trawl()
        .args(["bench-store", "--results", "300", "--config"])
        .arg(&cfg));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let row = stdout(&out)
        .lines()
        .find(|l| l.starts_with("connectors.local"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no figure for the store: {}", stdout(&out)));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[1..4], ["sqlite", "300", "100"], "{row}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (rows, workers): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT worker) FROM results",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, workers), (300, 3));
}
