//! `trawl replay` over a real nats-server: stored payloads scanned again
//! with new rules, beside their original results.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::brokers::Broker;
use crate::distributed::{count, Cluster};
use crate::harness::*;
use trawl_testkit::NatsServer;

const V1: &str = "rule Old { strings: $a = \"old-marker\" condition: $a }\n";
const NEW_RULE: &str = "rule New { strings: $b = \"new-marker\" condition: $b }\n";

fn yara_node(c: &Cluster, name: &str) -> Proc {
    c.node(
        name,
        &format!(
            "[workers.yara]\ntype = \"yara\"\nrules = \"{}\"\nconcurrency = 2\ntimeout = \"5s\"\n",
            c.path("rules.yar").display()
        ),
    )
}

/// Body of file `i`: some hold the old marker, some the new, all differ.
fn body(i: usize, size: usize) -> Vec<u8> {
    let mut data = noise(i as u64 + 1000, size);
    if i.is_multiple_of(5) {
        data.extend_from_slice(b" old-marker ");
    }
    if i.is_multiple_of(4) {
        data.extend_from_slice(b" new-marker ");
    }
    data
}

/// (filename, replay id or none) → (rules, ruleset, when stored). When is
/// `stored_at` and the row's place: one batch shares its `stored_at`.
type Results = BTreeMap<(String, Option<String>), Vec<(BTreeSet<String>, String, String)>>;

fn yara_results(db: &Path) -> Results {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT filename, replay_id, data, ruleset, stored_at || printf(' #%012d', rowid) FROM results WHERE worker = 'yara' AND outcome = 'ok'")
        .unwrap();
    let mut out = Results::new();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (file, replay, data, ruleset, stored) = row.unwrap();
        let data: serde_json::Value = serde_json::from_str(&data).unwrap();
        let rules = data["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["rule"].as_str().unwrap().to_owned())
            .collect();
        out.entry((file, replay))
            .or_default()
            .push((rules, ruleset, stored));
    }
    out
}

/// What the `yara` command line matches in each file of `dir`.
fn yara_cli(rules: &Path, dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new("yara")
        .arg("-r")
        .arg(rules)
        .arg(dir)
        .output()
        .expect("yara");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut hits: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (rule, path) = line.split_once(' ').unwrap();
        let name = Path::new(path).file_name().unwrap().to_string_lossy();
        hits.entry(name.into_owned())
            .or_default()
            .insert(rule.to_owned());
    }
    hits
}

fn replay(c: &Cluster, args: &[&str]) -> std::process::Child {
    trawl()
        .args(["replay", "--config"])
        .arg(c.path("sensor.toml"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

on_both_transports!(
    a_replay_rescans_with_reloaded_rules_beside_the_originals_while_live_files_go_first,
    a_scanner_killed_mid_replay_loses_and_duplicates_nothing,
    status_shows_each_nodes_ruleset_and_a_reload_that_failed,
);

fn a_replay_rescans_with_reloaded_rules_beside_the_originals_while_live_files_go_first(
    broker: &mut dyn Broker,
) {
    let c = Cluster::new(broker);
    fs::write(c.path("rules.yar"), V1).unwrap();
    let store = c.store();
    let scanner = yara_node(&c, "scanner");
    let sensor = c.sensor();
    let inbox = c.path("inbox");
    for i in 0..200 {
        fs::write(inbox.join(format!("f{i:03}")), body(i, 256 * 1024)).unwrap();
    }
    wait_for("200 results", Duration::from_secs(120), || {
        count(&c.db()) >= 200
    });

    // A new rule, picked up with no restart.
    fs::write(c.path("rules.yar"), format!("{V1}{NEW_RULE}")).unwrap();
    // Loaded once the change has held still for a look (every 2 s).
    std::thread::sleep(Duration::from_secs(5));
    fs::write(inbox.join("probe"), b"new-marker").unwrap();
    wait_for(
        "the probe matched by the new rule",
        Duration::from_secs(30),
        || {
            yara_results(&c.db())
                .get(&("probe".to_owned(), None))
                .is_some_and(|r| r[0].0.contains("New"))
        },
    );

    // The replay is put up while the scanner is away, and live files
    // arrive behind it: when the scanner is back, they go first.
    scanner.terminate();
    let out = replay(&c, &["--since", "1h", "--workers", "yara"])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let id = stdout(&out).lines().next().unwrap().trim().to_owned();
    assert_eq!(
        id.len(),
        26,
        "the first line is the replay id: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("201 payload(s)"), "{}", stderr(&out));
    for i in 0..10 {
        fs::write(inbox.join(format!("live{i}")), noise(5000 + i, 2000)).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let scanner = yara_node(&c, "scanner");
    // Reattached: follows the replay to its end.
    let out = run(trawl()
        .args(["replay", "status", "--config"])
        .arg(c.path("sensor.toml"))
        .args([id.as_str(), "--wait"]));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    // The files with the new marker, the probe aside, gained a match.
    assert!(text.contains("50 payload(s) gained matches"), "{text}");
    wait_for("every result", Duration::from_secs(30), || {
        count(&c.db()) >= 201 + 201 + 10
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&c.db()), 201 + 201 + 10, "no duplicates");

    let results = yara_results(&c.db());
    let cli = yara_cli(&c.path("rules.yar"), &inbox);
    let v1_ruleset = results[&("f000".to_owned(), None)][0].1.clone();
    let mut last_replayed = String::new();
    for i in 0..200 {
        let name = format!("f{i:03}");
        let original = &results[&(name.clone(), None)];
        let replayed = &results[&(name.clone(), Some(id.clone()))];
        assert_eq!(original.len(), 1, "{name}: one original");
        assert_eq!(replayed.len(), 1, "{name}: one replay result");
        assert_eq!(
            original[0].1, v1_ruleset,
            "{name}: the original is untouched"
        );
        assert_ne!(
            replayed[0].1, v1_ruleset,
            "{name}: the replay names the new ruleset"
        );
        let expected = cli.get(&name).cloned().unwrap_or_default();
        assert_eq!(
            replayed[0].0, expected,
            "{name}: the replay matches as yara does"
        );
        assert!(!original[0].0.contains("New"));
        last_replayed = last_replayed.max(replayed[0].2.clone());
    }
    // Live payloads are not queued behind the replay.
    for i in 0..10 {
        let live = &results[&(format!("live{i}"), None)];
        assert!(
            live[0].2 < last_replayed,
            "live{i} stored at {} before the replay's end {last_replayed}",
            live[0].2
        );
    }
    let status = run_status(&c, &[&id]);
    assert!(status.contains(&id) && status.contains("done"), "{status}");
    assert!(status.contains("201/201"), "{status}");

    // The view lists what the new rule found.
    let new: i64 = one(
        &c.db(),
        "SELECT count(DISTINCT payload_id) FROM replay_new_matches WHERE replay_id = ?1 AND rule = 'New'",
        [&id],
    );
    assert_eq!(new, 50);
    // Each replay result names what it found that its original did not.
    let named: i64 = one(
        &c.db(),
        "SELECT count(*) FROM results WHERE replay_id = ?1 AND new_matches = '[\"New\"]'",
        [&id],
    );
    assert_eq!(named, 50);

    sensor.terminate();
    scanner.terminate();
    store.terminate();
}

fn run_status(c: &Cluster, args: &[&str]) -> String {
    let out = run(trawl()
        .args(["replay", "status", "--config"])
        .arg(c.path("sensor.toml"))
        .args(args));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn a_scanner_killed_mid_replay_loses_and_duplicates_nothing(broker: &mut dyn Broker) {
    let c = Cluster::new(broker);
    fs::write(c.path("rules.yar"), format!("{V1}{NEW_RULE}")).unwrap();
    let store = c.store();
    let first = yara_node(&c, "scanner-a");
    let sensor = c.sensor();
    for i in 0..300 {
        fs::write(c.path("inbox").join(format!("f{i:03}")), body(i, 64 * 1024)).unwrap();
    }
    wait_for("300 results", Duration::from_secs(120), || {
        count(&c.db()) >= 300
    });

    // `--wait` follows the replay across the kill to its end.
    let waiting = replay(&c, &["--workers", "yara", "--wait"]);
    wait_for("replay under way", Duration::from_secs(60), || {
        count(&c.db()) > 310
    });
    first.kill9();
    let second = yara_node(&c, "scanner-b");
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let id = stdout(&out).lines().next().unwrap().trim().to_owned();
    assert!(stdout(&out).contains("done"), "{}", stdout(&out));
    wait_for("600 results", Duration::from_secs(60), || {
        count(&c.db()) >= 600
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&c.db()), 600, "no duplicates");
    let results = yara_results(&c.db());
    for i in 0..300 {
        let replayed = &results[&(format!("f{i:03}"), Some(id.clone()))];
        assert_eq!(replayed.len(), 1);
    }
    sensor.terminate();
    second.terminate();
    store.terminate();
}

#[test]
fn bad_replay_requests_are_refused_and_publish_nothing() {
    let nats = NatsServer::start();
    let c = Cluster::new(&nats);
    fs::write(c.path("rules.yar"), V1).unwrap();
    let scanner = yara_node(&c, "scanner");
    let sensor = c.sensor();
    fs::write(c.path("inbox").join("a"), b"old-marker").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let refused = |args: &[&str], says: &str| {
        let out = run(trawl()
            .args(["replay", "--config"])
            .arg(c.path("sensor.toml"))
            .args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?}: no replay id");
    };
    refused(&["--since", "1h", "--until", "2h"], "is after --until");
    refused(&["--workers", "nosuch"], "no worker group \"nosuch\"");
    refused(&["--since", "2999-01-01T00:00:00Z"], "is in the future");
    refused(&["--since", "yesterday"], "RFC 3339");
    let list = c.path("hashes");
    fs::write(&list, "not-a-hash\n").unwrap();
    refused(&["--sha256", list.to_str().unwrap()], "not a sha256");
    assert!(run_status(&c, &[]).contains("no replays"));

    // The embedded mode says what replay needs.
    let dir = tempfile::tempdir().unwrap();
    let embedded = inbox_node_config(dir.path(), "[workers.hash]\ntype = \"hash\"\n");
    let out = run(trawl().args(["replay", "--config"]).arg(&embedded));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("[node] archive"), "{}", stderr(&out));
    let out = run(trawl()
        .args(["replay", "--archive"])
        .arg(dir.path().join("no-archive")));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no archive here"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "no replay id");
    sensor.terminate();
    scanner.terminate();
}

#[test]
fn an_embedded_replay_rescans_the_archive_beside_the_originals() {
    let dir = tempfile::tempdir().unwrap();
    let (files, archive, db) = (
        dir.path().join("files"),
        dir.path().join("archive"),
        dir.path().join("trawl.db"),
    );
    fs::create_dir_all(&files).unwrap();
    for i in 0..40 {
        fs::write(files.join(format!("f{i:02}")), body(i, 20_000)).unwrap();
    }
    let (v1, v2) = (dir.path().join("v1.yar"), dir.path().join("v2.yar"));
    fs::write(&v1, V1).unwrap();
    fs::write(&v2, format!("{V1}{NEW_RULE}")).unwrap();
    let out = run(trawl()
        .args(["scan", "--workers", "yara", "--quiet", "--rules"])
        .arg(&v1)
        .arg("--db")
        .arg(&db)
        .arg("--archive")
        .arg(&archive)
        .arg(&files));
    assert!(out.status.success(), "{}", stderr(&out));
    // The files may go: the archive has their bytes.
    fs::rename(&files, dir.path().join("gone")).unwrap();

    let out = run(trawl()
        .args(["replay", "--since", "1h", "--archive"])
        .arg(&archive)
        .arg("--db")
        .arg(&db)
        .arg("--rules")
        .arg(&v2));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let id = text.lines().next().unwrap().trim().to_owned();
    assert_eq!(id.len(), 26, "{text}");
    assert!(text.contains("40 payload(s)"), "{text}");
    assert!(text.contains("10 payload(s) gained matches"), "{text}");

    let results = yara_results(&db);
    let cli = yara_cli(&v2, &dir.path().join("gone"));
    for i in 0..40 {
        let name = format!("f{i:02}");
        let original = &results[&(name.clone(), None)];
        let replayed = &results[&(name.clone(), Some(id.clone()))];
        assert_eq!((original.len(), replayed.len()), (1, 1), "{name}");
        assert!(
            !original[0].0.contains("New"),
            "{name}: the original is untouched"
        );
        assert_eq!(
            replayed[0].0,
            cli.get(&name).cloned().unwrap_or_default(),
            "{name}"
        );
        assert_ne!(
            replayed[0].1, original[0].1,
            "{name}: the new ruleset is named"
        );
    }
}

#[test]
fn a_node_with_an_archive_replays_from_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yar");
    fs::write(&rules, V1).unwrap();
    let cfg = inbox_node_config(
        dir.path(),
        &format!(
            "[workers.yara]\ntype = \"yara\"\nrules = \"{}\"\n[workers.hash]\ntype = \"hash\"\n\
             [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
            rules.display()
        ),
    );
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        text.replace("[node]\n", "[node]\narchive = \"archive\"\n"),
    )
    .unwrap();
    let db = dir.path().join("results.db");
    for i in 0..20 {
        fs::write(
            dir.path().join("inbox").join(format!("f{i:02}")),
            body(i, 5000),
        )
        .unwrap();
    }
    let node = start_node(&cfg);
    wait_for("40 results", Duration::from_secs(60), || count(&db) >= 40);
    node.terminate();
    fs::write(&rules, format!("{V1}{NEW_RULE}")).unwrap();

    let out = run(trawl()
        .args(["replay", "--workers", "yara", "--config"])
        .arg(&cfg));
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).lines().next().unwrap().trim().to_owned();
    assert!(
        stdout(&out).contains("5 payload(s) gained matches"),
        "{}",
        stdout(&out)
    );
    let results = yara_results(&db);
    let replayed = results
        .keys()
        .filter(|(_, r)| r.as_deref() == Some(id.as_str()))
        .count();
    assert_eq!(replayed, 20, "only the yara group, once per file");
    assert_eq!(count(&db), 60, "the originals stay");
    let out = run(trawl()
        .args(["replay", "--workers", "nosuch", "--config"])
        .arg(&cfg));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no worker group \"nosuch\""),
        "{}",
        stderr(&out)
    );
}

/// A node keeping an archive with `limits` (lines of `[node]`), run once
/// over `n` files of `size` bytes, then started again (the archive is
/// trimmed when opened); returns what an embedded replay then finds.
fn archived_after_restart(limits: &str, n: usize, size: usize, pause: Duration) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = inbox_node_config(
        dir.path(),
        "[workers.hash]\ntype = \"hash\"\n\
         [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
    );
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        text.replace(
            "[node]\n",
            &format!("[node]\narchive = \"archive\"\n{limits}"),
        ),
    )
    .unwrap();
    let db = dir.path().join("results.db");
    for i in 0..n {
        fs::write(
            dir.path().join("inbox").join(format!("f{i:02}")),
            noise(i as u64, size),
        )
        .unwrap();
        // Ingestion times apart, so "oldest" is well defined.
        std::thread::sleep(Duration::from_millis(20));
    }
    let node = start_node(&cfg);
    wait_for("results", Duration::from_secs(60), || count(&db) >= n);
    node.terminate();
    std::thread::sleep(pause);
    let again = start_node(&cfg);
    std::thread::sleep(Duration::from_secs(1));
    again.terminate();
    let out = run(trawl().args(["replay", "--config"]).arg(&cfg));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn the_archive_evicts_the_oldest_payloads_by_age_and_by_size() {
    let by_size = archived_after_restart("archive_max_bytes = 25000\n", 10, 10_000, Duration::ZERO);
    assert!(by_size.contains("done: 2 payload(s)"), "{by_size}");
    let by_age = archived_after_restart(
        "archive_max_age = \"2s\"\n",
        5,
        1000,
        Duration::from_secs(3),
    );
    assert!(by_age.contains("done: 0 payload(s)"), "{by_age}");
}

fn status_shows_each_nodes_ruleset_and_a_reload_that_failed(broker: &mut dyn Broker) {
    let c = Cluster::new(broker);
    fs::write(c.path("rules.yar"), V1).unwrap();
    let scanner = yara_node(&c, "scanner-1");
    let status = || {
        let out = run(trawl()
            .args(["status", "--config"])
            .arg(c.path("scanner-1.toml")));
        // Empty until the node has made the streams.
        stdout(&out)
    };
    let row = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("scanner-1") && l.contains(" yara "))
            .map(str::to_owned)
    };
    wait_for("the group announced", Duration::from_secs(30), || {
        row(&status()).is_some()
    });
    let first = row(&status()).unwrap();
    assert!(first.ends_with(" ok"), "{first}");
    let v1_hash = first.split_whitespace().nth(2).unwrap().to_owned();
    assert_eq!(v1_hash.len(), 32, "{first}");

    fs::write(
        c.path("rules.yar"),
        format!("{V1}rule Broken {{ condition: $x }}\n"),
    )
    .unwrap();
    wait_for("the failed reload shown", Duration::from_secs(30), || {
        row(&status()).is_some_and(|r| r.contains("NOT RELOADED") && r.contains("rules.yar:2"))
    });
    assert!(
        row(&status()).unwrap().contains(&v1_hash),
        "the old ruleset runs on"
    );

    fs::write(c.path("rules.yar"), format!("{V1}{NEW_RULE}")).unwrap();
    wait_for("the new ruleset shown", Duration::from_secs(30), || {
        row(&status()).is_some_and(|r| r.ends_with(" ok") && !r.contains(&v1_hash))
    });
    scanner.terminate();
}

#[test]
fn a_payload_whose_bytes_aged_out_gets_an_error_and_a_cancelled_replay_stops() {
    let nats = NatsServer::start();
    let c = Cluster::new(&nats);
    fs::write(c.path("rules.yar"), V1).unwrap();
    let store = c.store();
    let scanner = yara_node(&c, "scanner");
    let sensor = c.sensor();
    for i in 0..20 {
        fs::write(c.path("inbox").join(format!("f{i:02}")), body(i, 64 * 1024)).unwrap();
    }
    wait_for("20 results", Duration::from_secs(60), || {
        count(&c.db()) >= 20
    });

    // One payload's bytes leave the store (as past max_bytes or max_age);
    // a fresh scanner has nothing of them cached.
    scanner.terminate();
    let sha = coreutils_digest("sha256sum", &c.path("inbox").join("f00"));
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let blobs = js.get_object_store("TRAWL_BLOBS").await.unwrap();
        blobs.delete(&sha).await.unwrap();
    });
    let scanner = yara_node(&c, "scanner");
    let out = replay(&c, &["--workers", "yara", "--wait"])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).lines().next().unwrap().trim().to_owned();
    assert!(stdout(&out).contains("1 error(s)"), "{}", stdout(&out));
    wait_for("40 results", Duration::from_secs(60), || {
        count(&c.db()) >= 40
    });
    let (outcome, message): (String, String) = rusqlite::Connection::open(c.db())
        .unwrap()
        .query_row(
            "SELECT outcome, message FROM results WHERE filename = 'f00' AND replay_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(outcome, "error");
    assert!(message.contains("aged out"), "{message}");

    // Cancelled while no scanner runs: nothing of it is scanned later.
    scanner.terminate();
    let out = replay(&c, &["--workers", "yara"])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).lines().next().unwrap().trim().to_owned();
    let cancel = run(trawl()
        .args(["replay", "cancel", "--config"])
        .arg(c.path("sensor.toml"))
        .arg(&id));
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    assert!(stdout(&cancel).contains("cancelled"), "{}", stdout(&cancel));
    assert!(run_status(&c, &[&id]).contains("cancelled"));
    let again = run(trawl()
        .args(["replay", "cancel", "--config"])
        .arg(c.path("sensor.toml"))
        .arg(&id));
    assert_eq!(again.status.code(), Some(2), "cancelled already");
    let scanner = yara_node(&c, "scanner");
    std::thread::sleep(Duration::from_secs(5));
    let of_cancelled: i64 = one(
        &c.db(),
        "SELECT count(*) FROM results WHERE replay_id = ?1",
        [&id],
    );
    assert_eq!(of_cancelled, 0);
    sensor.terminate();
    scanner.terminate();
    store.terminate();
}
