//! ClamAV end to end: a real `clamd` per test with a signature database made
//! at test time (EICAR, and the md5 of a ClamAV test file), scanned through
//! its unix socket and TCP, and killed mid-run.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::*;

use trawl_testkit::{Clamd, CLAMAV_TEST_FILE as TEST_FILE};

fn node_config(dir: &Path, clamav: &str) -> PathBuf {
    node_config_on(dir, "type = \"memory\"", clamav)
}

fn node_config_on(dir: &Path, transport: &str, clamav: &str) -> PathBuf {
    inbox_node_config_on(
        dir,
        transport,
        &format!(
            "[workers.clamav]\ntype = \"clamav\"\ntimeout = \"20s\"\n{clamav}\n\
             [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n"
        ),
    )
}

fn clamav_rows(db: &Path) -> Vec<Row> {
    rows(db)
        .into_iter()
        .filter(|r| r.worker == "clamav")
        .collect()
}

#[test]
fn clamd_detections_over_unix_socket_and_tcp() {
    let clamd = Clamd::start();
    for endpoint in [
        format!("socket = \"{}\"", clamd.socket().display()),
        format!("address = \"127.0.0.1:{}\"", clamd.port),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = node_config(dir.path(), &endpoint);
        let inbox = dir.path().join("inbox");
        fs::write(inbox.join("eicar.com"), eicar()).unwrap();
        fs::copy(TEST_FILE, inbox.join("clam.exe")).unwrap();
        fs::write(inbox.join("clean.txt"), "nothing to see\n").unwrap();
        let node = start_node(&cfg);
        let db = dir.path().join("results.db");
        wait_for("3 clamav results", Duration::from_secs(60), || {
            clamav_rows(&db).len() >= 3
        });
        assert!(node.terminate().status.success());
        let rows = clamav_rows(&db);
        let by = |name: &str| {
            rows.iter()
                .find(|r| r.filename.as_deref() == Some(name))
                .unwrap()
        };
        assert_eq!(
            by("eicar.com").data["signature"],
            "Eicar-Test-Signature.UNOFFICIAL",
            "{endpoint}"
        );
        assert_eq!(
            by("clam.exe").data["signature"],
            "ClamAV-Test-File.UNOFFICIAL"
        );
        assert_eq!(by("clean.txt").data["infected"], false);
        assert!(rows.iter().all(|r| r.outcome == "ok"));
    }
}

#[test]
fn a_file_over_clamds_stream_limit_is_a_final_named_error() {
    let clamd = Clamd::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = node_config(
        dir.path(),
        &format!("socket = \"{}\"", clamd.socket().display()),
    );
    let inbox = dir.path().join("inbox");
    fs::write(inbox.join("big.bin"), noise(1, 3 * 1024 * 1024)).unwrap();
    fs::write(inbox.join("eicar.com"), eicar()).unwrap();
    let node = start_node(&cfg);
    let db = dir.path().join("results.db");
    wait_for("2 clamav results", Duration::from_secs(60), || {
        clamav_rows(&db).len() >= 2
    });
    // Not a clamd outage: nothing is retried, the node is free for the rest.
    std::thread::sleep(Duration::from_secs(2));
    assert!(node.terminate().status.success());
    let rows = clamav_rows(&db);
    let big = rows
        .iter()
        .find(|r| r.filename.as_deref() == Some("big.bin"))
        .unwrap();
    assert_eq!(big.outcome, "error");
    let why = big.message.as_deref().unwrap();
    assert!(
        why.contains("StreamMaxLength") && !why.contains("will retry"),
        "{why}"
    );
    let eicar_row = rows
        .iter()
        .find(|r| r.filename.as_deref() == Some("eicar.com"))
        .unwrap();
    assert_eq!(eicar_row.data["infected"], true);
}

#[test]
fn while_clamd_is_down_errors_are_recorded_then_replaced_by_scans() {
    errors_replaced_by_scans("type = \"memory\"");
}

#[test]
fn over_jetstream_errors_while_clamd_is_down_are_replaced_by_scans() {
    let nats = trawl_testkit::NatsServer::start();
    errors_replaced_by_scans(&format!(
        "type = \"jetstream\"\nservers = [\"{}\"]",
        nats.url()
    ));
}

/// ClamAV down: an error record per file at once; clamd back: each replaced by its verdict.
fn errors_replaced_by_scans(transport: &str) {
    let mut clamd = Clamd::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = node_config_on(
        dir.path(),
        transport,
        &format!("socket = \"{}\"", clamd.socket().display()),
    );
    let node = start_node(&cfg);
    clamd.kill();
    let inbox = dir.path().join("inbox");
    fs::write(inbox.join("eicar.com"), eicar()).unwrap();
    fs::write(inbox.join("clean.txt"), "fine\n").unwrap();
    let db = dir.path().join("results.db");
    wait_for(
        "error records while clamd is down",
        Duration::from_secs(30),
        || {
            let rows = clamav_rows(&db);
            rows.len() == 2 && rows.iter().all(|r| r.outcome == "error")
        },
    );
    let rows = clamav_rows(&db);
    assert!(
        rows[0].message.as_deref().unwrap().contains("will retry"),
        "{:?}",
        rows[0].message
    );
    // Longer than the deliveries of the default max_deliver would last:
    // waiting out an outage spends none of them.
    std::thread::sleep(Duration::from_secs(8));
    let rows = clamav_rows(&db);
    assert!(
        rows.iter()
            .all(|r| r.message.as_deref().unwrap().contains("will retry")),
        "still waiting for clamd, not given up: {rows:?}"
    );
    clamd.restart();
    wait_for("scans once clamd is back", Duration::from_secs(60), || {
        clamav_rows(&db).iter().all(|r| r.outcome == "ok")
    });
    assert!(node.terminate().status.success());
    let rows = clamav_rows(&db);
    assert_eq!(
        rows.len(),
        2,
        "the error records were replaced, not added to"
    );
    let eicar_row = rows
        .iter()
        .find(|r| r.filename.as_deref() == Some("eicar.com"))
        .unwrap();
    assert_eq!(eicar_row.data["infected"], true);
}
