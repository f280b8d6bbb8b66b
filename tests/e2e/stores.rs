//! The Elasticsearch and MongoDB connectors against real servers speaking
//! their protocols (an OpenSearch-API server and a MongoDB-wire server, see
//! tests/run.sh): typed round trips, idempotence, refused documents, outages.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use elasticsearch::http::transport::Transport;
use elasticsearch::{CountParts, Elasticsearch, SearchParts};
use mongodb::bson::doc;
use serde_json::{json, Value};
use trawl_config::ConnectorConfig;
use trawl_core::{Connector, ResultEvent};

use crate::harness::*;

/// A datastore server on a free loopback port, killed on drop.
pub struct StoreServer {
    child: Option<Child>,
    pub port: u16,
    cmd: Vec<String>,
    /// MongoDB's storage folder, kept across restarts.
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The OpenSearch-API server binary that the `osmem-server` package installs.
fn osmem_binary() -> PathBuf {
    let out = run(Command::new("python3").args([
        "-c",
        "import os, osmem_server; print(os.path.join(os.path.dirname(osmem_server.__file__), 'bin', 'osmem-server'))",
    ]));
    assert!(
        out.status.success(),
        "osmem-server is not installed (tests/run.sh installs it): {}",
        stderr(&out)
    );
    PathBuf::from(stdout(&out).trim())
}

impl StoreServer {
    pub fn elasticsearch() -> Self {
        let port = free_port();
        let cmd = vec![
            osmem_binary().display().to_string(),
            "-addr".into(),
            format!("127.0.0.1:{port}"),
            "-no-stdin-watch".into(),
        ];
        Self::start(cmd, port, tempfile::tempdir().unwrap())
    }

    pub fn mongodb() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let cmd = vec![
            "secantusd-py".into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--storage-path".into(),
            dir.path().join("db").display().to_string(),
            "--log-level".into(),
            "WARNING".into(),
        ];
        Self::start(cmd, port, dir)
    }

    fn start(cmd: Vec<String>, port: u16, dir: tempfile::TempDir) -> Self {
        let mut s = StoreServer {
            child: None,
            port,
            cmd,
            _dir: dir,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} (tests/run.sh installs it): {e}", self.cmd[0]));
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} did not start",
                self.cmd[0]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn mongodb_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Freeze the server: connections hang, as with a datastore that stopped answering.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port (and, for MongoDB, the same storage).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused server must be woken to die cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.stop();
    }
}

pub fn es_client(url: &str) -> Elasticsearch {
    Elasticsearch::new(Transport::single_node(url).unwrap())
}

fn connector_config(kind: &str, body: &str) -> ConnectorConfig {
    let text = format!("version = 1\n[connectors.store]\ntype = \"{kind}\"\n{body}\n");
    trawl_config::parse(Path::new("/etc/trawl/n.toml"), &text)
        .unwrap()
        .connectors["store"]
        .clone()
}

async fn connector(kind: &str, body: &str) -> Box<dyn Connector> {
    let config = connector_config(kind, body);
    let connectors = trawl_connectors::builtin_connectors();
    let factory = connectors.get(&config.component).unwrap();
    factory.build(&config).await.unwrap()
}

fn result(n: u32, worker: &str, data: Value) -> ResultEvent {
    trawl_connectors::sample::carved_result(n, worker, data)
}

fn batch(n: u32) -> Vec<ResultEvent> {
    (0..n)
        .flat_map(|i| {
            [
                result(
                    i,
                    "hash",
                    json!({"md5": format!("{i:032x}"), "sha256": format!("{i:064x}")}),
                ),
                trawl_connectors::sample::matched_result(i, "yara", "Suspicious_Thing", &["demo"]),
            ]
        })
        .collect()
}

pub async fn es_count(es: &Elasticsearch, index: &str, query: Value) -> u64 {
    es.indices()
        .refresh(elasticsearch::indices::IndicesRefreshParts::Index(&[index]))
        .send()
        .await
        .unwrap();
    let resp = es
        .count(CountParts::Index(&[index]))
        .body(json!({"query": query}))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    v["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("count answer: {v}"))
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn elasticsearch_round_trip_is_typed_idempotent_and_keeps_refused_documents() {
    let server = StoreServer::elasticsearch();
    rt().block_on(async {
        let mut c = connector("elasticsearch", &format!("urls = [\"{}\"]", server.url())).await;
        let es = es_client(&server.url());
        let results = batch(20);
        c.write(&results).await.unwrap();
        // Delivered again (a redelivery or a replay of the same results).
        c.write(&results).await.unwrap();
        assert_eq!(
            es_count(&es, "trawl-hash", json!({"match_all": {}})).await,
            20
        );
        assert_eq!(
            es_count(&es, "trawl-yara", json!({"match_all": {}})).await,
            20
        );
        let sha = format!("{:064x}", 7);
        assert_eq!(
            es_count(&es, "trawl-*", json!({"term": {"file.hash.sha256": sha}})).await,
            2
        );
        // `source.ip` is an address, so a CIDR query works.
        let cidr = es_count(
            &es,
            "trawl-hash",
            json!({"term": {"source.ip": "192.0.2.0/28"}}),
        )
        .await;
        assert_eq!(cidr, 15, "192.0.2.1 … 192.0.2.15");
        assert_eq!(
            es_count(
                &es,
                "trawl-yara",
                json!({"term": {"rule.name": "Suspicious_Thing"}})
            )
            .await,
            20
        );
        assert_eq!(
            es_count(
                &es,
                "trawl-hash",
                json!({"term": {"url.domain": "host3.example"}})
            )
            .await,
            1
        );
        let mapping: Value = es
            .indices()
            .get_mapping(elasticsearch::indices::IndicesGetMappingParts::Index(&[
                "trawl-hash",
            ]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let props = &mapping["trawl-hash"]["mappings"]["properties"];
        assert_eq!(props["source"]["properties"]["ip"]["type"], "ip");
        assert_eq!(
            props["file"]["properties"]["hash"]["properties"]["sha256"]["type"],
            "keyword"
        );
        assert_eq!(props["@timestamp"]["type"], "date");

        // One document the mapping refuses and one too large do not block the rest.
        let mut odd = result(900, "hash", json!({"md5": "x"}));
        odd.payload.flow.as_mut().unwrap().src_ip = Some("not-an-address".into());
        let huge = result(901, "hash", json!({"blob": "x".repeat(2 * 1024 * 1024)}));
        let fine = result(902, "hash", json!({"md5": "y"}));
        let mut small = connector(
            "elasticsearch",
            &format!(
                "urls = [\"{}\"]\nmax_document_bytes = 1048576",
                server.url()
            ),
        )
        .await;
        small
            .write(&[odd.clone(), huge.clone(), fine.clone()])
            .await
            .unwrap();
        assert_eq!(
            es_count(&es, "trawl-hash", json!({"match_all": {}})).await,
            23
        );
        let search: Value = es
            .search(SearchParts::Index(&["trawl-hash"]))
            .body(json!({"query": {"term": {"trawl.trimmed": true}}, "size": 10}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let hits = search["hits"]["hits"].as_array().unwrap();
        let why: BTreeMap<String, String> = hits
            .iter()
            .map(|h| {
                (
                    h["_id"].as_str().unwrap().to_owned(),
                    h["_source"]["trawl"]["store_error"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect();
        assert!(why[&odd.id].contains("refused by the datastore"), "{why:?}");
        assert!(why[&huge.id].contains("over max_document_bytes"), "{why:?}");
        assert_eq!(why.len(), 2);
    });
}

#[test]
fn elasticsearch_outage_is_retryable_and_writes_resume() {
    let server = StoreServer::elasticsearch();
    rt().block_on(async {
        let body = format!("urls = [\"{}\"]\ntimeout = \"1s\"", server.url());
        let mut c = connector("elasticsearch", &body).await;
        server.pause();
        let err = c.write(&batch(2)).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        server.resume();
        // The first write after the pause may still meet its 1 s timeout on
        // a loaded machine: writes resume, perhaps after a retry.
        let mut failures = 0;
        while let Err(e) = c.write(&batch(2)).await {
            assert!(e.is_retryable(), "{e}");
            failures += 1;
            assert!(failures < 5, "writes never resumed: {e}");
        }
        assert_eq!(
            es_count(
                &es_client(&server.url()),
                "trawl-*",
                json!({"match_all": {}})
            )
            .await,
            4
        );

        // Several node URLs, one of them down: retried writes reach the live one.
        let dead = format!("http://127.0.0.1:{}", free_port());
        let body = format!(
            "urls = [\"{dead}\", \"{}\"]\ntimeout = \"1s\"",
            server.url()
        );
        let mut c = connector("elasticsearch", &body).await;
        let more: Vec<ResultEvent> = (100..110)
            .map(|i| result(i, "hash", json!({"md5": "m"})))
            .collect();
        let mut failures = 0;
        while let Err(e) = c.write(&more).await {
            assert!(e.is_retryable(), "{e}");
            failures += 1;
            assert!(failures < 5, "never reached the live node");
        }
        let live = es_client(&server.url());
        assert_eq!(
            es_count(&live, "trawl-hash", json!({"match_all": {}})).await,
            12
        );
    });
}

#[test]
fn mongodb_round_trip_is_idempotent_indexed_and_survives_a_restart() {
    let mut server = StoreServer::mongodb();
    rt().block_on(async {
        let body = format!("uri = \"{}\"\ntimeout = \"2s\"", server.mongodb_uri());
        let mut c = connector("mongodb", &body).await;
        let results = batch(10);
        c.write(&results).await.unwrap();
        c.write(&results).await.unwrap();
        let client = mongodb::Client::with_uri_str(server.mongodb_uri())
            .await
            .unwrap();
        let db = client.database("trawl");
        let hash = db.collection::<mongodb::bson::Document>("hash");
        assert_eq!(hash.count_documents(doc! {}).await.unwrap(), 10);
        let sha = format!("{:064x}", 3);
        let found = hash
            .find_one(doc! {"file.hash.sha256": &sha})
            .await
            .unwrap()
            .expect("found by sha256");
        assert_eq!(
            found.get_document("source").unwrap().get_str("ip").unwrap(),
            "192.0.2.4"
        );
        assert!(found.get_datetime("@timestamp").is_ok(), "a real date");
        let yara = db.collection::<mongodb::bson::Document>("yara");
        assert_eq!(
            yara.count_documents(doc! {"rule.name": "Suspicious_Thing"})
                .await
                .unwrap(),
            10
        );
        let indexes = hash.list_index_names().await.unwrap();
        for field in ["file.hash.sha256", "file.name", "rule.name", "@timestamp"] {
            assert!(indexes.contains(&format!("trawl_{field}")), "{indexes:?}");
        }

        // Down: retryable. Back (same storage): the write lands once.
        server.stop();
        let more = batch(12);
        let err = c.write(&more).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        server.restart();
        let start = Instant::now();
        while let Err(e) = c.write(&more).await {
            assert!(start.elapsed() < Duration::from_secs(30), "{e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let client = mongodb::Client::with_uri_str(server.mongodb_uri())
            .await
            .unwrap();
        let hash = client
            .database("trawl")
            .collection::<mongodb::bson::Document>("hash");
        assert_eq!(hash.count_documents(doc! {}).await.unwrap(), 12);

        // Too large for max_document_bytes: a trimmed document says why.
        let mut small = connector("mongodb", &format!("{body}\nmax_document_bytes = 4096")).await;
        let huge = result(77, "hash", json!({"blob": "x".repeat(10_000)}));
        small.write(std::slice::from_ref(&huge)).await.unwrap();
        let stored = hash
            .find_one(doc! {"_id": &huge.id})
            .await
            .unwrap()
            .unwrap();
        let trawl = stored.get_document("trawl").unwrap();
        assert!(trawl.get_bool("trimmed").unwrap());
        assert!(trawl
            .get_str("store_error")
            .unwrap()
            .contains("over max_document_bytes"));
    });
}

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
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
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
