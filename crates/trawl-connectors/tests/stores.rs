//! The Elasticsearch and MongoDB connectors against real servers speaking
//! their protocols (an OpenSearch-API server and a MongoDB-wire server, see
//! tests/run.sh): typed round trips, idempotence, refused documents, outages.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use elasticsearch::SearchParts;
use mongodb::bson::doc;
use serde_json::{json, Value};
use trawl_config::ConnectorConfig;
use trawl_core::{Connector, ResultEvent};
use trawl_testkit::{es_client, es_count, free_port, StoreServer};

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

fn rt() -> tokio::runtime::Runtime {
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
