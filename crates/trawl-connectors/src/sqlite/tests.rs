use super::*;
use trawl_core::{
    BlobRef, Outcome, OutcomeStatus, PayloadEvent, SourceInfo, SourceKind, WorkerInfo,
};

fn result(worker: &str, filename: &str) -> ResultEvent {
    let mut p = PayloadEvent::new_root(
        "aa".repeat(32),
        12,
        BlobRef::Store(String::new()),
        SourceInfo {
            kind: SourceKind::Cli,
            sensor: "node".into(),
            path: Some(format!("/data/{filename}")),
        },
    );
    p.meta.filename = Some(filename.into());
    ResultEvent::new(
        p.summary(),
        WorkerInfo {
            name: worker.into(),
            version: "1".into(),
            ruleset: Some("r1".into()),
        },
        Outcome::ok(),
        serde_json::json!({"matches": [{"rule": "Eicar", "namespace": "default", "tags": ["av"]}]}),
        chrono::Utc::now(),
        "node",
    )
}

fn count(path: &Path, sql: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn writes_upsert_by_result_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let mut c = SqliteConnector::open("local", &db).unwrap();
    let batch = vec![result("yara", "a.exe"), result("hash", "b.exe")];
    c.write(&batch).await.unwrap();
    c.write(&batch).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM results"), 2);
    let mut changed = batch[0].clone();
    changed.outcome = Outcome::failed(OutcomeStatus::Error, "boom");
    c.write(&[changed]).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM results"), 2);
    assert_eq!(
        count(&db, "SELECT count(*) FROM results WHERE outcome = 'error'"),
        1
    );
}

#[tokio::test]
async fn yara_matches_view_lists_rules() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let mut c = SqliteConnector::open("local", &db).unwrap();
    c.write(&[result("yara", "a.exe")]).await.unwrap();
    let rule: String = Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT rule FROM yara_matches WHERE filename = 'a.exe'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rule, "Eicar");
}

#[test]
fn unusable_paths_fail_at_open_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let e = SqliteConnector::open("local", dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("is a directory"), "{e}");
    let missing = dir.path().join("no/such/dir/t.db");
    let e = SqliteConnector::open("local", &missing)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no/such/dir/t.db"), "{e}");
}
