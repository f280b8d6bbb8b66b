//! Actor tests: the real tree over the in-process transport and the real
//! SQLite store, with test scanners that panic, hang or go slowly.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ractor::ActorCell;
use trawl_connectors::SqliteConnector;
use trawl_core::{
    BlobRef, PayloadEvent, ScanError, ScanInput, ScanOutput, Scanner, SourceInfo, SourceKind,
    WorkerInfo,
};
use trawl_transport::{MemoryParams, MemoryTransport, Transport};

use super::*;

/// Scans by content: "panic" panics, "hang" sleeps past any timeout, anything else
/// takes `delay` and reports its length.
struct TestScanner {
    info: WorkerInfo,
    delay: Duration,
    calls: AtomicUsize,
    /// The thread of each scan, in order.
    threads: std::sync::Mutex<Vec<(std::thread::ThreadId, Option<String>)>>,
    inline_up_to: usize,
}

impl TestScanner {
    fn new(name: &str, delay: Duration) -> Arc<Self> {
        Self::inline(name, delay, 0)
    }

    fn inline(name: &str, delay: Duration, inline_up_to: usize) -> Arc<Self> {
        Arc::new(TestScanner {
            info: WorkerInfo::new(name, "1"),
            delay,
            calls: AtomicUsize::new(0),
            threads: Default::default(),
            inline_up_to,
        })
    }
}

impl Scanner for TestScanner {
    fn info(&self) -> WorkerInfo {
        self.info.clone()
    }

    fn scan(&self, input: &ScanInput<'_>) -> Result<ScanOutput, ScanError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.threads.lock().unwrap().push((
            std::thread::current().id(),
            std::thread::current().name().map(str::to_owned),
        ));
        match input.data {
            b"panic" => panic!("test scanner told to panic"),
            b"hang" => std::thread::sleep(Duration::from_secs(3)),
            _ => std::thread::sleep(self.delay),
        }
        Ok(ScanOutput::findings(
            serde_json::json!({ "len": input.data.len() }),
        ))
    }

    fn inline_up_to(&self) -> usize {
        self.inline_up_to
    }
}

fn worker(scanner: Arc<dyn Scanner>, concurrency: usize, timeout: Duration) -> WorkerSpec {
    WorkerSpec {
        scanner,
        concurrency,
        timeout,
        max_deliver: 3,
        dispatch: crate::Dispatch::default(),
        replay_slots: 1,
        dedup_ttl: None,
        dedup_min_size: None,
    }
}

async fn start(db: &Path, workers: Vec<WorkerSpec>) -> (Node, MemoryTransport) {
    let transport = MemoryTransport::new(MemoryParams::default());
    let node = Node::start(NodeSpec {
        name: "test-node".into(),
        transport: Arc::new(transport.clone()),
        sources: vec![],
        workers,
        connectors: vec![ConnectorSpec {
            connector: Box::new(SqliteConnector::open("local", db).unwrap()),
            batch_size: 50,
            flush_interval: Duration::from_millis(20),
        }],
        shutdown_grace: Duration::from_secs(10),
        listen: None,
    })
    .await
    .unwrap();
    (node, transport)
}

async fn publish(t: &MemoryTransport, name: &str, data: &[u8]) {
    let mut e = PayloadEvent::new_root(
        trawl_core::sha256_hex(data),
        data.len() as u64,
        BlobRef::Store(String::new()),
        SourceInfo {
            kind: SourceKind::Cli,
            sensor: "test".into(),
            path: Some(name.into()),
        },
    );
    e.meta.filename = Some(name.into());
    t.publish_payload(e, Bytes::copy_from_slice(data))
        .await
        .unwrap();
}

/// (filename, worker, outcome, message) for every stored result, sorted.
fn rows(db: &Path) -> Vec<(String, String, String, Option<String>)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT filename, worker, outcome, message FROM results ORDER BY filename, worker")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn slots(node: &Node) -> Vec<ActorCell> {
    node.root
        .get_cell()
        .get_children()
        .into_iter()
        .flat_map(|c| c.get_children())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_payload_gets_one_result_per_worker_group() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let a = TestScanner::new("a", Duration::ZERO);
    let b = TestScanner::new("b", Duration::ZERO);
    let (node, t) = start(
        &db,
        vec![
            worker(a.clone(), 2, Duration::from_secs(5)),
            worker(b.clone(), 1, Duration::from_secs(5)),
        ],
    )
    .await;
    for i in 0..30 {
        publish(&t, &format!("f{i:02}"), format!("data {i}").as_bytes()).await;
    }
    t.wait_idle().await;
    node.shutdown().await.unwrap();
    let rows = rows(&db);
    assert_eq!(rows.len(), 60);
    for i in 0..30 {
        let name = format!("f{i:02}");
        let mine: Vec<_> = rows.iter().filter(|r| r.0 == name).collect();
        assert_eq!(mine.len(), 2, "{name}: {mine:?}");
        assert!(mine.iter().all(|r| r.2 == "ok"));
    }
    assert_eq!(a.calls.load(Ordering::SeqCst), 30);
    assert_eq!(b.calls.load(Ordering::SeqCst), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_scan_is_an_error_result_and_its_slot_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let s = TestScanner::new("t", Duration::ZERO);
    let (node, t) = start(&db, vec![worker(s, 1, Duration::from_secs(5))]).await;
    publish(&t, "before", b"1").await;
    publish(&t, "boom", b"panic").await;
    publish(&t, "after", b"2").await;
    t.wait_idle().await;
    let restarts = node.metrics().snapshot().restarts;
    node.shutdown().await.unwrap();
    assert_eq!(restarts, 1, "the failed slot was restarted once");
    let rows = rows(&db);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let boom = rows.iter().find(|r| r.0 == "boom").unwrap();
    assert_eq!(boom.2, "error");
    assert!(
        boom.3
            .as_deref()
            .unwrap()
            .contains("scanner panicked: test scanner told to panic"),
        "{boom:?}"
    );
    assert!(rows.iter().filter(|r| r.0 != "boom").all(|r| r.2 == "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_slots_mid_run_leaves_no_file_without_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let s = TestScanner::new("slow", Duration::from_millis(30));
    let (node, t) = start(&db, vec![worker(s, 2, Duration::from_secs(5))]).await;
    let publisher = {
        let t = t.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                publish(&t, &format!("f{i:02}"), format!("x{i}").as_bytes()).await;
            }
        })
    };
    // Kill a busy slot a few times while the run goes on.
    let mut killed = 0;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(70)).await;
        if let Some(slot) = slots(&node).first() {
            slot.kill();
            killed += 1;
        }
    }
    publisher.await.unwrap();
    wait_until("every payload acknowledged", || t.unacked() == 0).await;
    let m = node.metrics().snapshot();
    assert_eq!(slots(&node).len(), 2, "the pool is back to full strength");
    node.shutdown().await.unwrap();
    assert_eq!(killed, 4);
    assert_eq!(m.restarts, 4, "every killed slot was restarted");
    let rows = rows(&db);
    let mut names: Vec<_> = rows.iter().map(|r| r.0.clone()).collect();
    names.dedup();
    assert_eq!(names.len(), 40, "one result per file");
    assert_eq!(rows.len(), 40, "and no duplicates");
    assert!(rows.iter().all(|r| r.2 == "ok"), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_that_never_returns_is_a_timeout_result() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let s = TestScanner::new("t", Duration::ZERO);
    let (node, t) = start(&db, vec![worker(s, 1, Duration::from_millis(100))]).await;
    publish(&t, "stuck", b"hang").await;
    publish(&t, "fine", b"ok").await;
    t.wait_idle().await;
    node.shutdown().await.unwrap();
    let rows = rows(&db);
    assert_eq!(rows.len(), 2);
    let stuck = rows.iter().find(|r| r.0 == "stuck").unwrap();
    assert_eq!(stuck.2, "timeout", "{stuck:?}");
    assert_eq!(rows.iter().find(|r| r.0 == "fine").unwrap().2, "ok");
}

/// What a scanner keeps per thread (a YARA-X scanner) exists once per slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_scans_on_one_thread_and_on_a_new_one_after_a_scan_overran() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let s = TestScanner::new("t", Duration::ZERO);
    let (node, t) = start(&db, vec![worker(s.clone(), 1, Duration::from_millis(100))]).await;
    for i in 0..5 {
        publish(&t, &format!("a{i}"), format!("a{i}").as_bytes()).await;
    }
    t.wait_idle().await;
    publish(&t, "stuck", b"hang").await;
    publish(&t, "next", b"next").await;
    t.wait_idle().await;
    node.shutdown().await.unwrap();
    let scans = s.threads.lock().unwrap().clone();
    assert_eq!(scans.len(), 7, "{scans:?}");
    assert!(
        scans
            .iter()
            .all(|(_, name)| name.as_deref() == Some("scan-t")),
        "the slot's own thread, named for its worker: {scans:?}"
    );
    assert!(
        scans[..6].iter().all(|(id, _)| *id == scans[0].0),
        "one thread up to the scan that overran: {scans:?}"
    );
    assert_ne!(
        scans[6].0, scans[0].0,
        "the overrun one is left to finish alone"
    );
    let rows = rows(&db);
    assert_eq!(rows.iter().find(|r| r.0 == "stuck").unwrap().2, "timeout");
    assert_eq!(rows.iter().find(|r| r.0 == "next").unwrap().2, "ok");
}

/// A scan cheaper than a hand-off to another thread runs where the pool
/// does, and is guarded there as on its thread: a panic is an error result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_up_to_the_scanners_inline_size_are_scanned_without_a_hand_off() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let s = TestScanner::inline("t", Duration::ZERO, 5);
    let (node, t) = start(&db, vec![worker(s.clone(), 1, Duration::from_secs(5))]).await;
    publish(&t, "small", b"tiny").await;
    t.wait_idle().await;
    publish(&t, "boom", b"panic").await;
    t.wait_idle().await;
    publish(&t, "large", b"larger than five").await;
    t.wait_idle().await;
    let restarts = node.metrics().snapshot().restarts;
    node.shutdown().await.unwrap();
    let scans = s.threads.lock().unwrap().clone();
    let names: Vec<_> = scans.iter().map(|(_, n)| n.as_deref()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names[..2].iter().all(|n| *n != Some("scan-t")),
        "five bytes or fewer: not on the slot's thread: {names:?}"
    );
    assert_eq!(names[2], Some("scan-t"), "more: on the slot's thread");
    assert_eq!(restarts, 1, "the slot whose scan panicked was restarted");
    let rows = rows(&db);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let boom = rows.iter().find(|r| r.0 == "boom").unwrap();
    assert_eq!(boom.2, "error");
    assert!(
        boom.3.as_deref().unwrap().contains("scanner panicked"),
        "{boom:?}"
    );
    assert!(rows.iter().filter(|r| r.0 != "boom").all(|r| r.2 == "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_queued_work_before_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let s = TestScanner::new("slow", Duration::from_millis(10));
    let (node, t) = start(&db, vec![worker(s, 1, Duration::from_secs(5))]).await;
    for i in 0..20 {
        publish(&t, &format!("f{i:02}"), format!("{i}").as_bytes()).await;
    }
    let report = node.shutdown().await.unwrap();
    assert_eq!(report.unfinished, 0);
    assert_eq!(rows(&db).len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_whose_scans_never_finish_becomes_an_error_after_max_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let s = TestScanner::new("t", Duration::from_millis(300));
    let mut spec = worker(s.clone(), 1, Duration::from_secs(5));
    spec.max_deliver = 1;
    let (node, t) = start(&db, vec![spec]).await;
    publish(&t, "doomed", b"x").await;
    // The one allowed delivery dies with its slot in the middle of the scan.
    wait_until("the scan started", || s.calls.load(Ordering::SeqCst) == 1).await;
    slots(&node)[0].kill();
    t.wait_idle().await;
    node.shutdown().await.unwrap();
    let rows = rows(&db);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].2, "error");
    assert!(
        rows[0]
            .3
            .as_deref()
            .unwrap()
            .starts_with("gave up after 1 deliveries"),
        "{rows:?}"
    );
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        1,
        "not scanned again past the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_store_refuses_is_isolated_and_the_rest_of_its_batch_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let (node, t) = start(
        &db,
        vec![worker(
            TestScanner::new("w", Duration::ZERO),
            2,
            Duration::from_secs(5),
        )],
    )
    .await;
    // The store refuses two results outright: one whose findings it will
    // not take (its error record is fine), one it refuses in any form.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER no_findings BEFORE INSERT ON results
               WHEN NEW.filename = 'bad-findings' AND NEW.outcome = 'ok'
               BEGIN SELECT RAISE(ABORT, 'findings refused'); END;
             CREATE TRIGGER never BEFORE INSERT ON results
               WHEN NEW.filename = 'never'
               BEGIN SELECT RAISE(ABORT, 'refused in any form'); END;",
        )
        .unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
    for name in names
        .iter()
        .map(String::as_str)
        .chain(["bad-findings", "never"])
    {
        publish(&t, name, name.as_bytes()).await;
    }
    tokio::time::timeout(Duration::from_secs(20), t.wait_idle())
        .await
        .expect("every result acknowledged: none wedges its batch");
    let stored = rows(&db);
    assert_eq!(stored.len(), 21, "{stored:?}");
    assert!(stored.iter().all(|r| r.0 != "never"));
    let bad = stored.iter().find(|r| r.0 == "bad-findings").unwrap();
    assert_eq!(bad.2, "error");
    assert!(
        bad.3.as_deref().unwrap().contains("findings refused"),
        "{bad:?}"
    );
    assert_eq!(node.metrics().snapshot().store_refused, 1);
    node.shutdown().await.unwrap();
}
