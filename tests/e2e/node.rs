use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::*;

fn config(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("node.toml");
    fs::write(
        &cfg,
        format!(
            r#"version = 1
[node]
name = "e2e"
data_dir = "state"
shutdown_grace = "20s"
[sources.inbox]
type = "dir"
path = "inbox"
settle = "300ms"
poll_interval = "100ms"
[workers.hash]
type = "hash"
[workers.yara]
type = "yara"
rules = "{}"
[connectors.local]
type = "sqlite"
path = "results.db"
flush_interval = "200ms"
"#,
            repo().join("rules").display()
        ),
    )
    .unwrap();
    fs::create_dir_all(dir.join("inbox")).unwrap();
    cfg
}

fn terminate(node: Proc) -> std::process::Output {
    node.terminate()
}

fn count(db: &Path) -> usize {
    rows(db).len()
}

#[test]
fn node_watches_a_folder_stores_results_and_restarts_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let db = dir.path().join("results.db");
    let inbox = dir.path().join("inbox");
    fs::write(inbox.join("before-start.bin"), noise(1, 5000)).unwrap();

    let node = start_node(&cfg);
    fs::write(inbox.join("eicar.com"), eicar()).unwrap();
    for i in 0..10 {
        fs::write(inbox.join(format!("f{i}")), noise(100 + i, 300)).unwrap();
    }
    wait_for("24 results", Duration::from_secs(30), || count(&db) == 24);
    let out = terminate(node);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rows = rows(&db);
    let eicar_hit = rows
        .iter()
        .find(|r| r.worker == "yara" && r.filename.as_deref() == Some("eicar.com"))
        .unwrap();
    assert_eq!(eicar_hit.data["matches"][0]["rule"], "EICAR_Test_File");

    // A restart publishes only what is new.
    let node = start_node(&cfg);
    fs::write(inbox.join("late.bin"), noise(7, 700)).unwrap();
    wait_for("26 results", Duration::from_secs(30), || count(&db) == 26);
    std::thread::sleep(Duration::from_millis(800));
    let out = terminate(node);
    assert!(out.status.success());
    let rows = crate::harness::rows(&db);
    assert_eq!(rows.len(), 26, "nothing republished after the restart");
    assert_eq!(
        rows.iter()
            .filter(|r| r.filename.as_deref() == Some("late.bin"))
            .count(),
        2
    );
}

#[test]
fn sigterm_lets_queued_files_finish() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let db = dir.path().join("results.db");
    let inbox = dir.path().join("inbox");
    for i in 0..200 {
        fs::write(inbox.join(format!("f{i:03}")), noise(i, 20_000)).unwrap();
    }
    let node = start_node(&cfg);
    // Stop as soon as the first results land: the rest is queued or in flight.
    wait_for("first results", Duration::from_secs(30), || count(&db) > 0);
    let out = terminate(node);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = rows(&db);
    let checkpoint = fs::read_to_string(dir.path().join("state/sources/inbox.checkpoint")).unwrap();
    // Handled files ("E" lines; "P" lines name files begun).
    let published = checkpoint.lines().filter(|l| l.starts_with("E\t")).count();
    assert!(published > 0);
    assert_eq!(
        rows.len(),
        published * 2,
        "every published file has both results"
    );
}

#[test]
fn a_folder_that_does_not_exist_yet_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let inbox = dir.path().join("inbox");
    fs::remove_dir(&inbox).unwrap();
    let check = run(trawl().args(["config", "check"]).arg(&cfg));
    assert!(check.status.success(), "{}", stderr(&check));
    let node = start_node(&cfg);
    std::thread::sleep(Duration::from_millis(500));
    // As Suricata makes filestore/ with its first file.
    fs::create_dir_all(&inbox).unwrap();
    fs::write(inbox.join("first.bin"), noise(3, 1000)).unwrap();
    let db = dir.path().join("results.db");
    wait_for("the first file's results", Duration::from_secs(30), || {
        count(&db) >= 2
    });
    let out = terminate(node);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("waiting for it"),
        "the wait is reported"
    );
}

/// The rule names a yara result lists.
fn rules_of(row: &Row) -> Vec<String> {
    row.data["matches"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["rule"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn rules_reload_without_a_restart_and_a_broken_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yar");
    let v1 = "rule Old { strings: $a = \"old-marker\" condition: $a }\n";
    fs::write(&rules, v1).unwrap();
    let cfg = inbox_node_config(
        dir.path(),
        &format!(
            "[workers.yara]\ntype = \"yara\"\nrules = \"{}\"\n\
             [connectors.local]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
            rules.display()
        ),
    );
    let (db, inbox) = (dir.path().join("results.db"), dir.path().join("inbox"));
    let node = start_node(&cfg);
    let scanned = |name: &str, body: &str| -> Row {
        fs::write(inbox.join(name), body).unwrap();
        wait_for(name, Duration::from_secs(30), || {
            count(&db) > 0
                && rows(&db)
                    .iter()
                    .any(|r| r.filename.as_deref() == Some(name))
        });
        rows(&db)
            .into_iter()
            .find(|r| r.filename.as_deref() == Some(name))
            .unwrap()
    };
    let first = scanned("a.txt", "old-marker new-marker");
    assert_eq!(rules_of(&first), ["Old"]);

    // A broken file: the error is logged, the old rules go on.
    fs::write(
        &rules,
        format!("{v1}rule New {{\n  strings: $b = \"new-marker\"\n  condition: $c\n}}\n"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let during = scanned("b.txt", "old-marker new-marker");
    assert_eq!(rules_of(&during), ["Old"]);
    assert_eq!(during.ruleset, first.ruleset);

    // Fixed: loaded with no restart.
    fs::write(
        &rules,
        format!("{v1}rule New {{\n  strings: $b = \"new-marker\"\n  condition: $b\n}}\n"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let after = scanned("c.txt", "old-marker new-marker");
    assert_eq!(rules_of(&after), ["Old", "New"]);
    assert_ne!(after.ruleset, first.ruleset);

    // SIGHUP loads at once, and the node keeps running.
    fs::write(&rules, v1).unwrap();
    let pid = node.id();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(1500));
    let hup = scanned("d.txt", "old-marker new-marker");
    assert_eq!(rules_of(&hup), ["Old"]);
    assert_eq!(hup.ruleset, first.ruleset);

    let out = terminate(node);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("rules.yar:5: undefined string"),
        "the error names file and line: {log}"
    );
    assert!(log.contains("rules reloaded"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "a log written to a pipe has no colour codes"
    );
}

/// A node whose only source ends (a `files` source) stores its last
/// results as soon as they stop coming, not after its store's
/// flush_interval: with an hour's interval, they would land in an hour.
#[test]
fn once_every_source_has_ended_the_last_results_are_stored_without_waiting_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    fs::create_dir_all(dir.path().join("in")).unwrap();
    for i in 0..3 {
        fs::write(dir.path().join(format!("in/f{i}")), noise(40 + i, 2000)).unwrap();
    }
    fs::write(
        &cfg,
        r#"version = 1
[node]
name = "e2e"
data_dir = "state"
[sources.once]
type = "files"
paths = ["in"]
[workers.hash]
type = "hash"
[connectors.local]
type = "sqlite"
path = "results.db"
batch_size = 500
flush_interval = "1h"
"#,
    )
    .unwrap();
    let db = dir.path().join("results.db");
    let node = start_node(&cfg);
    wait_for("3 results", Duration::from_secs(30), || count(&db) == 3);
    let out = terminate(node);
    assert!(out.status.success(), "{}", stderr(&out));
}
