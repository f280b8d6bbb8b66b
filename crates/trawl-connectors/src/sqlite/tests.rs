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
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let under_a_file = dir.path().join("file/t.db");
    let e = SqliteConnector::open("local", &under_a_file)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("file/t.db") && e.contains("is a file, not a folder"),
        "{e}"
    );
}

#[test]
fn a_missing_folder_is_made_for_the_database() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("var/lib/t.db");
    SqliteConnector::open("local", &db).unwrap();
    assert!(db.is_file());
    let mode = std::fs::metadata(dir.path().join("var"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
}
